"""Ablation sweeps: arm expansion, resuming a half-finished sweep, the report, CAM figures."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from experiments import ablate_depth, ablate_head
from nin_jax import cam, sweep, train
from nin_jax.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_head_ablation_expands_to_arms_times_seeds():
  config = ablate_head.get_config("digits")
  runs = sweep.expand(config)
  assert [r.subdir for r in runs] == [f"{arm}/seed_{s}" for arm in ("gap", "fc", "fc_dropout")
                                      for s in range(3)]
  for run in runs:
    assert "ablation" not in run.config
    assert run.config.model.head == run.arm and run.config.seed == run.seed
    # everything else as in the base config
    other = run.config.to_dict()
    base = config.to_dict()
    del base["ablation"]
    for key in ("model", "seed"):
      other.pop(key), base.pop(key)
    assert other == base


def test_depth_ablation_arms_and_arm_selection():
  config = ablate_depth.get_config("digits")
  assert list(sweep.arms(config)) == ["num_1x1_0", "num_1x1_1", "num_1x1_2", "num_1x1_3"]
  runs = sweep.expand(config, only_arms=["num_1x1_0"])
  assert [(r.arm, r.config.model.num_1x1) for r in runs] == [("num_1x1_0", 0)] * 3
  with pytest.raises(ConfigError, match="unknown arm"):
    sweep.expand(config, only_arms=["num_1x1_9"])


def test_paper_numbers_only_where_the_paper_has_them():
  assert dict(ablate_head.get_config("").ablation.paper_test_error) == {
      "gap": 10.41, "fc": 11.59, "fc_dropout": 10.88}
  assert dict(ablate_head.get_config("digits").ablation.paper_test_error) == {}


def tiny_sweep_config():
  config = ablate_head.get_config("digits")
  config.ablation.arm_values = ("gap", "fc")
  config.ablation.num_seeds = 2
  config.num_epochs = 0.5  # 11 steps
  config.log_every_steps = 5
  config.eval_every_steps = 5
  config.checkpoint_every_steps = 4
  return config


@pytest.fixture(scope="module")
def half_finished_then_resumed(tmp_path_factory):
  """A sweep with one run finished and one stopped at step 6, then relaunched."""
  workdir = tmp_path_factory.mktemp("sweep")
  config = tiny_sweep_config()
  runs = {r.subdir: r for r in sweep.expand(config)}
  train.train_and_evaluate(runs["gap/seed_0"].config, workdir / "gap/seed_0")
  train.train_and_evaluate(runs["fc/seed_0"].config, workdir / "fc/seed_0", stop_at_step=6)
  finished_summary = workdir / "gap/seed_0/summary.json"
  before = (finished_summary.stat().st_mtime_ns, finished_summary.read_text(),
            (workdir / "gap/seed_0/metrics.jsonl").read_text())
  sweep.run_sweep(config, workdir)
  return workdir, before


def test_relaunched_sweep_skips_finished_runs_and_resumes_half_done_ones(
    half_finished_then_resumed):
  workdir, (mtime, summary_text, metrics_text) = half_finished_then_resumed
  finished = workdir / "gap/seed_0"
  assert (finished / "summary.json").stat().st_mtime_ns == mtime  # not run again
  assert (finished / "summary.json").read_text() == summary_text
  assert (finished / "metrics.jsonl").read_text() == metrics_text
  for subdir in ("gap/seed_0", "gap/seed_1", "fc/seed_0", "fc/seed_1"):
    assert sweep.is_finished(workdir / subdir), subdir
  # the half-done run continued from the checkpoint written when it stopped at step 6, not
  # from 0: logged at checkpoints (every 4), logs (every 5) and ends, no step twice
  steps = [json.loads(line)["step"] for line in
           (workdir / "fc/seed_0/metrics.jsonl").read_text().splitlines()]
  assert steps == [4, 5, 6, 8, 10, 11]


def test_report_from_a_tiny_sweep(half_finished_then_resumed):
  workdir, _ = half_finished_then_resumed
  for name in ("report.md", "report.csv", "report.json"):
    assert (workdir / name).stat().st_size > 0
  for name in ("test_error_vs_epoch.png", "test_error_bars.png"):
    assert (workdir / name).read_bytes()[:8] == PNG_MAGIC
  report = json.loads((workdir / "report.json").read_text())
  assert [a["arm"] for a in report["arms"]] == ["gap", "fc"]
  for arm in report["arms"]:
    summaries = [json.loads((workdir / arm["arm"] / f"seed_{s}/summary.json").read_text())
                 for s in (0, 1)]
    errors = [s["test_error_percent"] for s in summaries]
    assert arm["test_error_mean"] == pytest.approx(np.mean(errors))
    assert arm["test_error_std"] == pytest.approx(np.std(errors, ddof=1))
    assert arm["num_params"] == summaries[0]["num_params"] and arm["flops_per_image"] > 0
  assert len((workdir / "report.csv").read_text().splitlines()) == 3
  # rebuilt from disk by its own command
  result = subprocess.run([sys.executable, "-m", "nin_jax.report", str(workdir)], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| gap | 2/2 |" in result.stdout and "| gap − fc | 2 |" in result.stdout


def test_each_run_writes_tensorboard_and_json_lines_metrics(half_finished_then_resumed):
  workdir, _ = half_finished_then_resumed
  run = workdir / "gap/seed_1"
  assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
  last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
  assert {"step", "epoch", "loss", "accuracy", "learning_rate", "images_per_s",
          "test_accuracy"} <= set(last)


def test_class_activation_map_figure(half_finished_then_resumed, tmp_path):
  workdir, _ = half_finished_then_resumed
  out = cam.write_figure(workdir / "gap/seed_0", num_images=4, out=tmp_path / "cam.png")
  assert out.read_bytes()[:8] == PNG_MAGIC
  with pytest.raises(ConfigError, match="need a GAP model"):
    cam.write_figure(workdir / "fc/seed_0", num_images=4, out=tmp_path / "fc.png")


def test_report_command_on_a_folder_that_is_no_sweep(tmp_path):
  result = subprocess.run([sys.executable, "-m", "nin_jax.report", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
