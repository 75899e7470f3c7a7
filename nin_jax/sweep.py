"""Ablation sweeps: every arm x seed of a config with an `ablation` section, one after another.

A run lives in `<workdir>/<arm>/seed_<n>/`. Relaunching skips finished runs and resumes half-done
ones from their checkpoints, so a sweep survives preemption; `--arm` picks arms, so several
machines can share one sweep (a shared gs:// workdir, or copy the run folders together). Seed n
gives every arm the same data order and augmentation, so arms are compared pairwise.
"""
import dataclasses
import logging

import jax
import ml_collections
from etils import epath

from nin_jax import files, report, train, validation
from nin_jax import workdir as run_workdir
from nin_jax.errors import ConfigError


@dataclasses.dataclass
class Run:
  arm: str
  seed: int
  config: ml_collections.ConfigDict

  @property
  def subdir(self):
    return f"{self.arm}/seed_{self.seed}"


def arm_name(field: str, value) -> str:
  """'gap' for a head, 'num_1x1_2' for a number: a folder name that says what changed."""
  return value if isinstance(value, str) else f"{field.split('.')[-1]}_{value}"


def arms(config) -> dict[str, object]:
  """{arm name: the value the ablated field takes in it}, in the config's order."""
  ablation = config.ablation
  return {arm_name(ablation.field, value): value for value in ablation.arm_values}


def expand(config, only_arms=None) -> list[Run]:
  """The runs of a sweep: each arm (or those in `only_arms`) with seeds 0 .. num_seeds - 1."""
  all_arms = arms(config)
  unknown = set(only_arms or ()) - set(all_arms)
  if unknown:
    raise ConfigError(f"unknown arm(s) {sorted(unknown)}; this sweep has {list(all_arms)}")
  runs = []
  for name, value in all_arms.items():
    if only_arms and name not in only_arms:
      continue
    for seed in range(config.ablation.num_seeds):
      run_config = config.copy_and_resolve_references()
      with run_config.unlocked():
        del run_config["ablation"]
        *parents, leaf = config.ablation.field.split(".")
        node = run_config
        for parent in parents:
          node = node[parent]
        node[leaf] = value
        run_config.seed = seed
      runs.append(Run(name, seed, run_config))
  return runs


def is_finished(run_dir) -> bool:
  """Whether `run_dir` holds a finished run; an unreadable summary (one warning) means no."""
  summary = files.read_json(epath.Path(run_dir) / "summary.json", "run summary")
  return bool(isinstance(summary, dict) and summary.get("finished", False))


def run_sweep(config, workdir, only_arms=None, overwrite=False):
  """Runs what is left of the sweep, then writes the report from all runs on disk.

  `overwrite` starts every selected run over, finished ones included.
  """
  workdir = epath.Path(files.resolve(workdir))
  validation.validate_ablation(config)
  runs = expand(config, only_arms)
  for run in runs:  # every arm's config, before the first run starts
    validation.validate(run.config)
    if not overwrite:  # a finished run of another config must not pass as this sweep's
      run_workdir.check_or_clear(workdir / run.subdir, run.config, overwrite=False)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_json(workdir / "sweep.json", {
        "field": config.ablation.field, "arms": list(arms(config)),
        "num_seeds": config.ablation.num_seeds,
        "paper_test_error": dict(config.ablation.paper_test_error),
        "dataset": config.dataset})
  for index, run in enumerate(runs, start=1):
    run_dir = workdir / run.subdir
    if is_finished(run_dir) and not overwrite:
      logging.info("Run %d/%d %s: finished earlier, skipped", index, len(runs), run.subdir)
      continue
    logging.info("Run %d/%d %s", index, len(runs), run.subdir)
    train.train_and_evaluate(run.config, run_dir, overwrite=overwrite)
  if jax.process_index() == 0:
    return report.write_report(workdir)
