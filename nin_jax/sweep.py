"""Ablation sweeps: every arm x seed of a config with an `ablation` section.

A run lives in `<workdir>/<arm>/seed_<n>/`. Relaunching skips finished runs and resumes half-done
ones from their checkpoints, so a sweep survives preemption. Seed n gives every arm the same data
order and augmentation, so arms are compared pairwise.

A run whose training diverges (a NaN or Inf loss, or the loss stuck at ln C: `DivergedError`) is
a result of its setting, not a failure of the sweep: its `diverged.json` records the step, the
loss and why, the other runs go on, the report counts it per arm, and a relaunch does not train
it again (delete that file to retry it). Any other failure (a full disk, a lost device, a bug)
stops every run of this host at a checkpoint and is raised.

Filling the machine. This host's devices are cut into groups of `ablation.devices_per_run`, and
`ablation.runs_at_once` runs train at the same time, each on a group (several share a group when
there are more runs at once than groups), in threads of this process: a step releases Python's
lock while it runs, and the runs of one arm share their compiled program (train.compiled_once) and
the dataset on the devices (train.put_dataset). A run's result does not depend on where, or beside
what, it trained: its batches, augmentation and dropout come from (seed, step) alone.

Several hosts (jax.distributed, e.g. a TPU pod slice): each host trains its own share of the runs
on its own devices; nothing crosses hosts inside a step. The share is worked out at launch from
what every host sees on disk (`share`), so a relaunch after preemption, on any number of hosts,
finishes every run once and resumes half-done runs where their checkpoints are. With a shared
workdir (gs://) the report covers every run; with per-host folders, copy them together and run
`python -m nin_jax.report DIR`. `--arm` still picks arms by hand.
"""
import dataclasses
import logging
import math
import queue
import threading
import time
import zlib

import jax
import ml_collections
import numpy as np
from etils import epath

from nin_jax import checkpointing, checks, config_string, files, metrics, preemption, train
from nin_jax import workdir as run_workdir
from nin_jax.errors import ConfigError, DivergedError, NinError
from nin_jax import placement as placement_lib
from nin_jax.placement import Placement

FINISHED = -1  # a progress table's mark, not a step: the run has its summary
DIVERGED = -2  # in a progress table: the run's training diverged (its diverged.json); a result
# On CPU a small model's step leaves cores idle between its ops, so runs overlap well: runs at
# once on a CPU host, the fastest measured on 2 cores (docs/scale.md). CPU
# devices (--xla_force_host_platform_device_count) all share the same cores.
CPU_RUNS_AT_ONCE = 3


@dataclasses.dataclass
class Run:
  arm: str
  seed: int
  config: ml_collections.ConfigDict
  overrides: dict = dataclasses.field(default_factory=dict)  # what the arm sets

  @property
  def hparams(self) -> dict:
    """What TensorBoard's HParams dashboard shows of this run."""
    return {"arm": self.arm, "seed": self.seed, **self.overrides}

  @property
  def subdir(self):
    return f"{self.arm}/seed_{self.seed}"


def arm_name(field: str, value) -> str:
  """'gap' for a head, 'num_1x1_2' for a number, 'fc_hidden_64x32' for a tuple: a folder name
  that says what changed."""
  if isinstance(value, str):
    return value
  if isinstance(value, (tuple, list)):
    value = "x".join(map(str, value)) or "none"
  return f"{field.split('.')[-1]}_{value}"


# Characters an arm's name (a folder of the sweep, an item of --arm=a,b) cannot hold.
_NOT_IN_NAMES = set("/\\*?[]{},:;'\"$") | set(" \t\n")  # files.resolve refuses $ in paths


def arm_set(field: str, values) -> dict[str, dict]:
  """One axis of a sweep: {arm name: {field: value}} for each of `values` (`arm_name` names
  them). For arms that set several fields, write the dict yourself: {"fc": {"model.head": "fc",
  "optimizer.classifier_lr_multiplier": 1.0}}."""
  return {arm_name(field, value): {field: value} for value in values}


def grid(*axes: dict) -> dict[str, dict]:
  """The product of several axes ({arm name: {dotted field: value}} each, e.g. from `arm_set`):
  one arm per combination, named by its parts joined with '-' ('fc-num_1x1_0'), setting the
  fields of all its parts. Raises ConfigError when two axes set the same field."""
  arms_so_far = {"": {}}
  for axis in axes:
    combined = {}
    for name, overrides in arms_so_far.items():
      for part, more in axis.items():
        clash = sorted(set(overrides) & set(more))
        if clash:
          raise ConfigError(f"grid axes both set {clash}; each field belongs to one axis")
        joined = f"{name}-{part}" if name else part
        if joined in combined:
          raise ConfigError(f"the grid names two arms {joined!r}; rename an arm of an axis")
        combined[joined] = {**overrides, **more}
    arms_so_far = combined
  return arms_so_far


def arms(config) -> dict[str, dict]:
  """{arm name: {dotted field: value it sets}}, in the config's order, from `config.ablation.arms`:
  ((name, ((dotted field, value), ...)), ...) as experiments/default.py's `ablation` writes it
  from arm sets and grids."""
  all_arms = {}
  for name, overrides in config.ablation.arms:
    if name in all_arms:
      raise ConfigError(f"the ablation names the arm {name!r} twice; rename one")
    # lists as tuples, as a ConfigDict keeps them: hashable, and equal to the run's value
    all_arms[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides}
  for name in all_arms:  # each arm is a folder of the sweep's workdir and an item of --arm
    if not name or name.startswith(".") or set(name) & _NOT_IN_NAMES:
      raise ConfigError(f"arm name {name!r} cannot be a folder name and an item of --arm: use "
                        "letters, digits, '_', '-' and '.'")
  return all_arms


def swept_fields(all_arms: dict[str, dict]) -> list[str]:
  """The dotted fields that some arm sets, in first-seen order."""
  return list(dict.fromkeys(key for overrides in all_arms.values() for key in overrides))


def seeds(config) -> list[int]:
  """The seeds of a sweep: `config.seed`, `config.seed` + 1, ..., num_seeds of them (seed 0 ..
  num_seeds - 1 by default). `--config.seed=5` gives other seeds, never copies of the first
  sweep's; more seeds for a report: a larger `--config.ablation.num_seeds` (the finished runs
  are kept)."""
  return list(range(config.seed, config.seed + config.ablation.num_seeds))


def expand(config, only_arms=None) -> list[Run]:
  """The runs of a sweep: each arm (or those in `only_arms`) with each of `seeds(config)`.
  Raises ConfigError (one line) for an unknown arm, or an arm that sets a field the config
  lacks, with a value of the wrong type, or the seed (seeds are the sweep's)."""
  all_arms = arms(config)
  unknown = set(only_arms or ()) - set(all_arms)
  if unknown:
    raise ConfigError(f"unknown arm(s) {sorted(unknown)}; this sweep has {list(all_arms)}")
  runs = []
  for name, overrides in all_arms.items():
    reserved = sorted({"seed", "ablation"} & {key.split(".")[0] for key in overrides})
    if reserved:
      raise ConfigError(f"arm {name!r} sets {reserved}: a sweep sets the seed itself "
                        "(--config.ablation.num_seeds); remove it from the arm")
    base = config.copy_and_resolve_references()
    with base.unlocked():
      del base["ablation"]
    try:
      config_string.set_fields(base, overrides)
    except ConfigError as e:
      raise ConfigError(f"arm {name!r} of the ablation: {e}") from None
    if only_arms and name not in only_arms:
      continue
    for seed in seeds(config):
      run_config = base.copy_and_resolve_references()
      run_config.seed = seed
      runs.append(Run(name, seed, run_config, overrides))
  return runs


def is_finished(run_dir) -> bool:
  """Whether `run_dir` holds a finished run; an unreadable summary (one warning) means no."""
  summary = files.read_json(epath.Path(run_dir) / "summary.json", "run summary")
  return bool(isinstance(summary, dict) and summary.get("finished", False))


def progress(run_dir) -> int:
  """FINISHED, DIVERGED, or the newest checkpoint step in `run_dir` (0: none), as this host
  sees it."""
  if is_finished(run_dir):
    return FINISHED
  if metrics.diverged(run_dir) is not None:
    return DIVERGED
  return max(checkpointing.steps_on_disk(run_dir), default=0)


def share(table: np.ndarray) -> list[list[int]]:
  """Which runs each host trains: `table[h, r]` is run r's `progress` as host h sees it.

  A run finished on any host is done. A half-done run goes to the host that holds its newest
  checkpoint when not every host sees it (per-host folders); the others are dealt out, each to
  the host with the fewest so far (the lowest index on a tie). Every host computes the same
  answer from the same table. Returns one sorted list of run indices per host.
  """
  hosts, num_runs = table.shape
  shares = [[] for _ in range(hosts)]
  free = []
  for r in range(num_runs):
    if (table[:, r] < 0).any():  # FINISHED or DIVERGED: done
      continue
    newest = table[:, r].max()
    holders = np.flatnonzero(table[:, r] == newest)
    if newest > 0 and len(holders) < hosts:
      shares[int(holders[0])].append(r)
    else:
      free.append(r)
  for r in free:
    shares[min(range(hosts), key=lambda h: (len(shares[h]), h))].append(r)
  return [sorted(s) for s in shares]


def placement_of(ablation) -> tuple[int, int]:
  """(devices per run, runs at once) on this host; 0 in the config means automatic.

  Automatic: one device per run -- the paper's models at the paper's batch fit one device of
  every platform (CIFAR NIN: 1M parameters, 128 images a step) -- and one run per device on
  GPU and TPU; on CPU, where a small model's step leaves cores idle, CPU_RUNS_AT_ONCE runs (at
  least one per device group).
  """
  per_run = ablation.devices_per_run or 1
  groups = len(placement_lib.device_groups(per_run))
  if ablation.runs_at_once:
    return per_run, ablation.runs_at_once
  platform = jax.local_devices()[0].platform
  return per_run, max(groups, CPU_RUNS_AT_ONCE) if platform == "cpu" else groups


def run_sweep(config, workdir, only_arms=None, overwrite=False):
  """Runs this host's share of what is left of the sweep, then (process 0) writes the report
  from all runs on disk. `overwrite` starts every selected run over, finished ones included.

  Several hosts: a host that cannot start (a bad config, a run folder of another config) stops
  every host with one line at launch, and a failed run on one host lets the others finish theirs
  before every host stops (the failing one with the error); none waits forever."""
  workdir = epath.Path(files.resolve(workdir))
  runs, seen, error = [], None, None
  try:
    checks.validate_ablation(config)
    per_run, at_once = placement_of(config.ablation)
    runs = expand(config, only_arms)
    given = config.copy_and_resolve_references()
    with given.unlocked():
      del given["ablation"]
    try:  # the config as given, too: a bad value of a field that every arm sets is still a typo
      checks.validate(given, per_run)
    except ConfigError as e:
      raise ConfigError(f"the sweep's config before its arms: {e}") from None
    for run in runs:  # every arm's config, before the first run starts
      try:
        checks.validate(run.config, per_run)
      except ConfigError as e:  # the field may be one the arm sets: say which run it is
        raise ConfigError(f"run {run.subdir}: {e}") from None
      if not overwrite:  # a finished run of another config must not pass as this sweep's
        run_workdir.check_or_clear(workdir / run.subdir, run.config, overwrite=False)
    workdir.mkdir(parents=True, exist_ok=True)  # every host: per-host folders each need theirs
    all_arms, chosen = arms(config), seeds(config)
    files.write_json(workdir / "sweep.json", {
        "field": ", ".join(swept_fields(all_arms)), "swept": swept_fields(all_arms),
        "arms": list(all_arms), "overrides": all_arms, "num_seeds": config.ablation.num_seeds,
        "seeds": chosen,
        "paper_test_error": dict(config.ablation.paper_test_error),
        "dataset": config.dataset})
    if jax.process_index() == 0:  # TensorBoard's HParams dashboard: arms x seeds side by side
      fields = swept_fields(all_arms)
      metrics.write_hparams_config(workdir, {
          "arm": list(all_arms), "seed": chosen,
          **{field: list(dict.fromkeys(o[field] for o in all_arms.values() if field in o))
             for field in fields}}, [metrics.VALIDATION_ERROR_TAG, metrics.TEST_ERROR_TAG])
    seen = np.array([0 if overwrite else progress(workdir / run.subdir) for run in runs], np.int64)
  except Exception as e:  # noqa: BLE001 -- raised below, once every host knows
    error = e
  table = _gather(runs, seen, error)
  mine = [runs[r] for r in share(table)[jax.process_index()]]
  done = int((table == FINISHED).any(axis=0).sum())
  gone = [runs[r].subdir for r in range(len(runs)) if (table[:, r] == DIVERGED).any()]
  logging.info("Sweep: %d runs, %d finished earlier%s; this host (%d of %d) trains %d, %d at "
               "once on groups of %d device(s)", len(runs), done,
               f", {len(gone)} diverged earlier (not retried: {', '.join(gone)}; delete a run's "
               f"{metrics.DIVERGED_FILE} to retry it)" if gone else "", jax.process_index(),
               jax.process_count(), len(mine), min(at_once, len(mine)), per_run)
  logging.info("Seeds %d..%d of every arm: --config.seed=%d and the %d after it "
               "(--config.ablation.num_seeds=%d)", chosen[0], chosen[-1], config.seed,
               len(chosen) - 1, len(chosen))
  if runs:  # a --config value of a swept field is not what a run trains with: say so
    logging.info("The arms set %s; each run takes its arm's value, whatever the config says",
                 ", ".join(swept_fields({run.arm: run.overrides for run in runs})))
  try:
    train_placed(mine, workdir, per_run, at_once, overwrite)
  except Exception as e:  # noqa: BLE001 -- the other hosts finish their runs first
    error = e
  # the report waits for every host's runs; a preempted host has seconds left, it goes
  if jax.process_count() > 1 and not isinstance(error, preemption.Preempted):
    import orbax.checkpoint as ocp
    ocp.multihost.sync_global_processes("nin_jax_sweep_finished", timeout=7 * 24 * 3600,
                                        processes=set(range(jax.process_count())))
  if error is not None:
    raise error
  if jax.process_index() == 0:
    # imported here: scipy.stats (the report's tests) took 2.2 s of every launch, sweep or not
    from nin_jax import report
    return report.write_report(workdir)


def _gather(runs, seen, error) -> np.ndarray:
  """The progress table of every host (`share`'s input); on one host, its own row. Raises this
  host's `error`, or one ConfigError line when another host could not start or was given
  another sweep (other --arm, seeds or config)."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return seen[None]
  names = "\n".join(run.subdir for run in runs).encode()
  header = np.array([error is not None, len(runs), zlib.crc32(names)], np.int64)
  headers = placement_lib.from_every_host(header).reshape(-1, 3)  # at launch only
  if error is not None:
    raise error
  failed = np.flatnonzero(headers[:, 0])
  if len(failed):
    raise ConfigError(f"host(s) {failed.tolist()} could not start the sweep (their logs say "
                      "why); fix that and relaunch every host")
  if (headers[:, 1:] != headers[0, 1:]).any():
    raise ConfigError(f"the hosts were given different sweeps (runs per host: "
                      f"{headers[:, 1].tolist()}): launch every host with the same --config, "
                      "overrides and --arm")
  return placement_lib.from_every_host(seen).reshape(jax.process_count(), -1)


def train_placed(runs, workdir, devices_per_run, runs_at_once, overwrite=False):
  """Trains `runs`, `runs_at_once` at a time, each on a group of `devices_per_run` of this
  host's devices. When a run fails, the others checkpoint the step they reached and stop, and
  the first failure is raised (a NinError names its run). On a preemption notice every run that
  trains checkpoints the step it reached, none starts, and `preemption.Preempted` names them."""
  groups = placement_lib.device_groups(devices_per_run)
  jobs = queue.SimpleQueue()
  for index, run in enumerate(runs, start=1):
    jobs.put((index, run))
  stop, failures, preempted = threading.Event(), [], []

  def worker(slot):
    placement = Placement.local(groups[slot % len(groups)])
    while not stop.is_set() and preemption.received() is None:  # no new run once preempted
      try:
        index, run = jobs.get_nowait()
      except queue.Empty:
        return
      logging.info("Run %d/%d %s on %s", index, len(runs), run.subdir, placement.describe())
      started = time.time()
      # trained again: no record
      (workdir / run.subdir / metrics.DIVERGED_FILE).unlink(missing_ok=True)
      try:
        summary = train.train_and_evaluate(run.config, workdir / run.subdir, overwrite=overwrite,
                                           placement=placement, stop=stop,
                                           progress_bar=len(threads) == 1,
                                           hparams=run.hparams)
      except preemption.Preempted as e:  # checkpointed; the other runs stop on the notice too
        preempted.append((run, e))
        return
      except DivergedError as e:  # that setting diverges: a result, the other runs go on
        files.write_json(workdir / run.subdir / metrics.DIVERGED_FILE, {
            "step": e.step, "loss": e.loss if math.isfinite(e.loss) else str(e.loss),
            "reason": type(e).__name__, "message": str(e)})
        logging.warning("Run %s diverged at step %d (loss %.4g): a result of the sweep, counted "
                        "in its report; the other runs go on", run.subdir, e.step, e.loss)
        continue
      except BaseException as e:  # noqa: BLE001 -- raised in the main thread below
        logging.error("Run %s failed: %s: %s", run.subdir, type(e).__name__,
                      files.one_line(e, 300))
        failures.append((run, e))
        stop.set()
        return
      if summary["finished"]:
        logging.info("Run %s finished in %.0f s: test error %.2f%%", run.subdir,
                     time.time() - started, summary["test_error_percent"])

  threads = [threading.Thread(target=worker, args=(slot,), name=f"run-slot-{slot}")
             for slot in range(min(runs_at_once, len(runs)))]
  with preemption.watch_all_hosts():  # a notice to any host reaches this host's runs
    for thread in threads:
      thread.start()
    try:
      while any(thread.is_alive() for thread in threads):
        for thread in threads:
          thread.join(timeout=0.5)
    except BaseException:  # Ctrl-C outside launch.py's handlers: every run checkpoints
      stop.set()
      for thread in threads:
        thread.join()
      raise
  if failures:
    run, error = failures[0]
    if isinstance(error, NinError):
      error.args = (f"run {run.subdir}: {error}",)
    raise error
  if preempted:
    signum = preempted[0][1].signum
    stopped = ", ".join(f"{run.subdir} at step {e.step}" for run, e in preempted)
    raise preemption.Preempted(
        f"stopped by {preemption.signal_name(signum)}: {stopped} checkpointed; relaunch the "
        "same command to resume the sweep", signum)
