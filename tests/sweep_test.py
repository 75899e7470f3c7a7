"""Ablation sweeps: arm expansion, resuming a half-finished sweep, the report, CAM figures."""
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from experiments import ablate_depth, ablate_head, ablate_head_depth, default
from nin_jax import cam, checkpointing, metrics, report, sweep, train
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
    # each arm's learning rates explicit: the class-map layer of GAP at the authors' 0.1x, the
    # FC heads' dense classifier (no ReLU after it) at the rate of every other layer
    assert run.config.optimizer.classifier_lr_multiplier == (0.1 if run.arm == "gap" else 1.0)
    # everything else as in the base config
    other = run.config.to_dict()
    base = config.to_dict()
    del base["ablation"]
    for key in ("model", "optimizer", "seed"):
      other.pop(key), base.pop(key)
    assert other == base
    assert {k: v for k, v in run.config.optimizer.items() if k != "classifier_lr_multiplier"} == {
        k: v for k, v in config.optimizer.items() if k != "classifier_lr_multiplier"}
  # the paper's reading where it is open: both FC rates, on request
  both = ablate_head.get_config("digits,both_fc_rates")
  assert {a: o["optimizer.classifier_lr_multiplier"] for a, o in sweep.arms(both).items()} == {
      "gap": 0.1, "fc": 1.0, "fc_dropout": 1.0, "fc_slow_classifier": 0.1,
      "fc_dropout_slow_classifier": 0.1}


def test_depth_ablation_arms_and_arm_selection():
  config = ablate_depth.get_config("digits")
  assert list(sweep.arms(config)) == ["num_1x1_0", "num_1x1_1", "num_1x1_2", "num_1x1_3"]
  runs = sweep.expand(config, only_arms=["num_1x1_0"])
  assert [(r.arm, r.config.model.num_1x1) for r in runs] == [("num_1x1_0", 0)] * 3
  with pytest.raises(ConfigError, match="unknown arm"):
    sweep.expand(config, only_arms=["num_1x1_9"])


def test_paper_numbers_are_the_papers_head_ablation():
  # NIN_REFERENCE.md's head ablation; the report shows them beside a cifar10 sweep only
  # (tests/report_test.py), whatever dataset the config started from
  assert dict(ablate_head.get_config("").ablation.paper_test_error) == {
      "gap": 10.41, "fc": 11.59, "fc_dropout": 10.88}


def only(config, *arms, num_seeds):
  """`config`'s sweep cut down to `arms`, with `num_seeds` seeds."""
  config.ablation = default.ablation({a: sweep.arms(config)[a] for a in arms}, num_seeds)
  return config


def tiny_sweep_config():
  config = only(ablate_head.get_config("digits"), "gap", "fc", num_seeds=2)
  config.num_epochs = 0.5  # 8 steps: 1,150 training digits, 288 held out for validation
  config.log_every_steps = 5
  config.eval_every_steps = 5
  config.checkpoint_every_steps = 4
  return config


@pytest.fixture(scope="module")
def half_finished_then_resumed(tmp_path_factory):
  """A sweep with one run finished and one stopped at step 6, then relaunched."""
  # Over 20 s: 4 short runs and a report, shared by the 4 tests that inspect them.
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
  assert steps == [4, 5, 6, 8]  # 0.5 epoch: 8 steps of 64 of the 1,150 not held out


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
  assert "| gap | model.head=gap, optimizer.classifier_lr_multiplier=0.1 | 2/2 |" in result.stdout
  assert "| test | gap − fc | 2 |" in result.stdout
  assert "| validation | gap − fc | 2 |" in result.stdout
  # what the convolutions computed in, from the runs' provenance (model.precision)
  assert ("Convolutions and matmuls computed in: float32 (HIGHEST; XLA:CPU computes float32 at "
          "any precision) (gap, fc).") in result.stdout
  assert report["precision"] == {"gap": "float32 (HIGHEST; XLA:CPU computes float32 at any "
                                        "precision)", "fc": "float32 (HIGHEST; XLA:CPU computes "
                                        "float32 at any precision)"}


def test_each_run_writes_tensorboard_and_json_lines_metrics(half_finished_then_resumed):
  workdir, _ = half_finished_then_resumed
  run = workdir / "gap/seed_1"
  assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
  last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
  assert {"step", "epoch", "loss", "accuracy", "learning_rate", "images_per_s",
          "test_accuracy", "validation_accuracy"} <= set(last)
  # TensorBoard's HParams dashboard: each run's arm, seed and swept fields, read back
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.plugins.hparams import plugin_data_pb2

  def plugin_data(path):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "hparams":
          yield plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)

  start = next(d.session_start_info for d in plugin_data(run / metrics.HPARAMS_FILE)
               if d.HasField("session_start_info"))
  assert {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
          for k, v in start.hparams.items()} == {
      "arm": "gap", "seed": 1.0, "model.head": "gap", "optimizer.classifier_lr_multiplier": 0.1}
  experiment = next(d.experiment for d in plugin_data(workdir / metrics.HPARAMS_CONFIG_FILE))
  assert [h.name for h in experiment.hparam_infos] == [
      "arm", "seed", "model.head", "optimizer.classifier_lr_multiplier"]
  assert [m.name.tag for m in experiment.metric_infos] == [metrics.VALIDATION_ERROR_TAG,
                                                           metrics.TEST_ERROR_TAG]


def test_class_activation_map_figure(half_finished_then_resumed, tmp_path):
  workdir, _ = half_finished_then_resumed
  out = cam.write_figure(workdir / "gap/seed_0", num_images=4, out=tmp_path / "cam.png")
  assert out.read_bytes()[:8] == PNG_MAGIC
  with pytest.raises(ConfigError, match="need a GAP model"):
    cam.write_figure(workdir / "fc/seed_0", num_images=4, out=tmp_path / "fc.png")


def test_report_command_on_a_folder_that_is_no_sweep(tmp_path):
  # `python -m nin_jax.report DIR`'s main, in this process (the command itself: above)
  with pytest.raises(SystemExit) as exit_:
    report.main(["report", str(tmp_path)])
  message = exit_.value.code
  assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message


# Placement: several runs at once, each on its own devices --------------------------------------

def _short_sweep(**ablation):
  config = ablate_head.get_config("digits")
  config.num_epochs = 0.5  # 8 steps of 64; dropout and crops on
  config.log_every_steps = 5
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 4
  only(config, "fc_dropout", num_seeds=4)
  config.ablation.update(ablation)
  return config


def _summaries(workdir):
  return {path.parent.name: json.loads(path.read_text())
          for path in sorted(workdir.glob("*/seed_*/summary.json"))}


def test_placed_sweep_equals_one_at_a_time_and_a_run_alone(tmp_path):
  """4 runs at once, one per device, against the same sweep one run at a time, and the run that
  trained on device 3 against the same run launched alone on a one-device machine."""
  # Over 20 s: the same 4-run sweep twice (placed, one at a time) and one launch.py process alone.
  import jax
  sweep.run_sweep(_short_sweep(devices_per_run=1, runs_at_once=4), tmp_path / "placed")
  sweep.run_sweep(_short_sweep(devices_per_run=1, runs_at_once=1), tmp_path / "serial")
  placed, serial = _summaries(tmp_path / "placed"), _summaries(tmp_path / "serial")
  assert len(placed) == 4 and placed.keys() == serial.keys()
  assert sorted(s["device_ids"][0] for s in placed.values()) == [0, 1, 2, 3]  # side by side
  assert {s["device_ids"][0] for s in serial.values()} == {0}
  for seed in placed:
    for key in ("test_accuracy", "test_loss", "step", "finished"):
      assert placed[seed][key] == serial[seed][key], (seed, key)
  on_device_3 = next(seed for seed, s in placed.items() if s["device_ids"] == [3])
  alone = subprocess.run(
      [sys.executable, "launch.py", "--config=experiments/default.py:digits",
       "--config.num_epochs=0.5", "--config.log_every_steps=5", "--config.eval_every_steps=0",
       "--config.model.head=fc_dropout", "--config.optimizer.classifier_lr_multiplier=1.0",
       "--config.validation_examples=288", f"--config.seed={on_device_3[len('seed_'):]}",
       f"--workdir={tmp_path / 'alone'}"], cwd=REPO, capture_output=True, text=True,
      timeout=600, env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
  assert alone.returncode == 0, alone.stderr[-3000:]
  solo = json.loads((tmp_path / "alone" / "summary.json").read_text())
  assert solo["devices"] == 1 and solo["device_ids"] == [0] and len(jax.devices()) == 4
  # Equal to float rounding, not to the bit: XLA compiles a one-device process's step a little
  # differently from a step on device 3 of four (parameters 6e-8 apart, measured; the code before
  # issue 11 did the same), so the losses agree to ~1e-7 and the accuracies exactly.
  for key in ("test_accuracy", "validation_accuracy"):
    assert solo[key] == placed[on_device_3][key], key
  for key in ("test_loss", "validation_loss"):
    assert solo[key] == pytest.approx(placed[on_device_3][key], rel=1e-6), key
  alone_params = checkpointing.restore_params(tmp_path / "alone")
  placed_params = checkpointing.restore_params(tmp_path / "placed" / "fc_dropout" / on_device_3)
  for a, b in zip(jax.tree.leaves(alone_params), jax.tree.leaves(placed_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_placed_runs_on_two_device_groups_equal_one_at_a_time(tmp_path):
  """devices_per_run=2: two runs at once on devices [0, 1] and [2, 3], each splitting its batch."""
  # Over 20 s: the same 2-run sweep twice.
  sweep.run_sweep(_short_sweep(devices_per_run=2, runs_at_once=2, num_seeds=2), tmp_path / "p")
  sweep.run_sweep(_short_sweep(devices_per_run=2, runs_at_once=1, num_seeds=2), tmp_path / "s")
  placed, serial = _summaries(tmp_path / "p"), _summaries(tmp_path / "s")
  assert sorted(s["device_ids"] for s in placed.values()) == [[0, 1], [2, 3]]
  for seed in placed:
    assert placed[seed]["test_loss"] == serial[seed]["test_loss"], seed


def test_a_diverging_arm_is_a_result_the_others_finish_and_a_relaunch_does_not_retry_it(
    tmp_path, caplog):
  """Learning rates 0.05 and 1e4 side by side: the 1e4 runs reach a NaN loss, which is their
  result (step, loss, why in diverged.json; the report counts them); the 0.05 runs finish in
  the same launch, and a relaunch trains nothing."""
  config = _short_sweep(devices_per_run=1, runs_at_once=4, num_seeds=2)
  config.ablation.arms = default.ablation(
      sweep.arm_set("optimizer.learning_rate", (0.05, 1e4)), num_seeds=2).arms
  sweep.run_sweep(config, tmp_path)
  for seed in (0, 1):
    good = tmp_path / "learning_rate_0.05" / f"seed_{seed}" / "summary.json"
    assert json.loads(good.read_text())["finished"]
    record = metrics.diverged(tmp_path / "learning_rate_10000.0" / f"seed_{seed}")
    assert record["reason"] == "NonFiniteLossError" and record["loss"] == "nan"
    assert 1 <= record["step"] <= 8 and "loss is nan" in record["message"]
    assert not (tmp_path / "learning_rate_10000.0" / f"seed_{seed}" / "summary.json").exists()
  arms = {a["arm"]: a for a in json.loads((tmp_path / "report.json").read_text())["arms"]}
  assert arms["learning_rate_0.05"]["seeds_finished"] == [0, 1]
  assert arms["learning_rate_0.05"]["seeds_diverged"] == []
  assert arms["learning_rate_10000.0"]["seeds_finished"] == []
  assert [d["seed"] for d in arms["learning_rate_10000.0"]["seeds_diverged"]] == [0, 1]
  text = (tmp_path / "report.md").read_text()
  assert "| learning_rate_10000.0 | optimizer.learning_rate=10000.0 | 0/2 (2 diverged) |" in text
  assert "Diverged: 2 run(s), a result of their setting" in text
  assert "Seeds per arm: 2, seeds 0–1 (`config.seed` and the ones after it" in text
  assert re.search(r"- learning_rate_10000.0 seed 0: NonFiniteLossError at step \d+ \(loss nan\)",
                   text)

  caplog.clear()
  with caplog.at_level(logging.INFO):
    sweep.run_sweep(config, tmp_path)
  assert ("Sweep: 4 runs, 2 finished earlier, 2 diverged earlier (not retried: "
          "learning_rate_10000.0/seed_0, learning_rate_10000.0/seed_1; delete a run's "
          "diverged.json to retry it); this host (0 of 1) trains 0") in caplog.text


def test_a_run_that_fails_for_another_reason_stops_the_others_at_a_checkpoint(tmp_path):
  """A failure that is not the training's (here a run's metrics file cannot be written) stops
  the sweep: the run names itself and the others stop where they are, each with a checkpoint to
  resume from."""
  # Over 20 s: 4 runs side by side, compiled for two learning rates.
  config = _short_sweep(devices_per_run=1, runs_at_once=4, num_seeds=2)
  config.ablation.arms = default.ablation(
      sweep.arm_set("optimizer.learning_rate", (0.05, 0.04)), num_seeds=2).arms
  config.num_epochs = 20.0  # long enough that the good runs are still running
  broken = tmp_path / "learning_rate_0.04" / "seed_1"
  broken.mkdir(parents=True)
  (broken / "metrics.jsonl").mkdir()  # a folder where its metrics file goes: met when it starts
  with pytest.raises(OSError, match=r"learning_rate_0.04/seed_1/metrics.jsonl"):
    sweep.run_sweep(config, tmp_path)
  for arm, seed in [("learning_rate_0.05", 0), ("learning_rate_0.05", 1),
                    ("learning_rate_0.04", 0)]:
    run = tmp_path / arm / f"seed_{seed}"
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["finished"] and summary["step"] < summary["total_steps"]
    assert checkpointing.steps_on_disk(run)[-1] == summary["step"]
    assert metrics.diverged(run) is None


def test_hosts_share_the_runs_left_and_half_done_runs_stay_where_their_checkpoints_are():
  F = sweep.FINISHED
  # a shared workdir: every host sees the same; finished runs are skipped, the rest dealt out
  assert sweep.share(np.array([[F, 4, 0, 0, 0]] * 2)) == [[1, 3], [2, 4]]
  # per-host folders: run 1 half done on host 1 only, run 0 finished on host 0 only
  assert sweep.share(np.array([[F, 0, 0, 0], [0, 8, 0, 0]])) == [[2, 3], [1]]
  # relaunched on one host: everything left is its own; on three, as even as can be
  assert sweep.share(np.array([[F, 4, 0, 0]])) == [[1, 2, 3]]
  assert [len(s) for s in sweep.share(np.zeros((3, 7), int))] == [3, 2, 2]


def test_device_memory_too_small_for_the_dataset_is_one_line():
  import jax
  from nin_jax.errors import DataError
  from nin_jax.placement import Placement
  with pytest.raises(DataError, match=r"needs 953,674,316 MiB on each device but host memory "
                                      r"has [\d,]+ MiB free; .*more memory") as error:
    Placement.local(jax.devices()[:1]).check_fits(10 ** 15, "the cifar10 dataset",
                                                  "use devices with more memory")
  assert "\n" not in str(error.value)


def test_automatic_placement_is_one_device_a_run_and_one_run_a_device_here():
  from nin_jax import checks
  config = ablate_head.get_config("digits")
  checks.validate_ablation(config)
  assert sweep.placement_of(config.ablation) == (1, 4)  # automatic: one run per CPU device here


# Arms that set several fields, grids -------------------------------------------------------------

def test_a_grid_is_every_combination_with_readable_names():
  config = ablate_head_depth.get_config("digits")
  all_arms = sweep.arms(config)
  heads, depths = ("gap", "fc", "fc_dropout"), (0, 1, 2)
  assert list(all_arms) == [f"{h}-num_1x1_{d}" for h in heads for d in depths]
  runs = {r.subdir: r for r in sweep.expand(config)}
  assert len(runs) == 27
  run = runs["fc_dropout-num_1x1_1/seed_2"].config
  assert (run.model.head, run.model.num_1x1, run.seed) == ("fc_dropout", 1, 2)
  assert run.optimizer.classifier_lr_multiplier == 1.0  # the head's own rates come along
  assert runs["gap-num_1x1_0/seed_0"].config.optimizer.classifier_lr_multiplier == 0.1
  assert sweep.grid({"a": {"x": 1}, "b": {"x": 2}}, {"c": {"y": 3}}) == {
      "a-c": {"x": 1, "y": 3}, "b-c": {"x": 2, "y": 3}}
  with pytest.raises(ConfigError, match=r"grid axes both set \['model.head'\]"):
    sweep.grid(sweep.arm_set("model.head", ("gap",)), sweep.arm_set("model.head", ("fc",)))


@pytest.mark.parametrize("arms, message", [
    ({"gap": {"model.haed": "gap"}},
     r"^arm 'gap' of the ablation: the config has no field 'model.haed'; "
     r"did you mean model.head\?$"),
    ({"fast": {"optimizer.learning_rate": "fast"}},
     r"^arm 'fast' of the ablation: optimizer.learning_rate cannot take 'fast'"),
    ({"s": {"seed": 3}}, r"^arm 's' sets \['seed'\]: a sweep sets the seed itself"),
    ({"a/b": {"model.head": "fc"}}, r"^arm name 'a/b' cannot be a folder name"),
    ({"m": {"model": {"head": "fc"}}},
     r"^arm 'm' of the ablation: model is a section of the config, not a field"),
    ({"typo": {"model.head": "gpa"}},  # the field's own check, naming the run it is in
     r"^run typo/seed_0: --config.model.head='gpa' is not one of \['gap', 'fc', 'fc_dropout'\]$"),
])
def test_a_bad_arm_is_one_line_before_anything_runs(tmp_path, arms, message):
  config = ablate_head.get_config("digits")
  config.ablation = default.ablation({"fc": {"model.head": "fc"}, **arms}, num_seeds=1)
  with pytest.raises(ConfigError, match=message) as error:
    sweep.run_sweep(config, tmp_path / "sweep")
  assert "\n" not in str(error.value)
  assert not (tmp_path / "sweep").exists()  # nothing written, nothing trained


def test_a_bad_value_of_a_field_the_arms_set_is_refused_though_no_run_takes_it(tmp_path):
  config = ablate_head.get_config("digits,model.head=gpa")  # every arm sets model.head
  with pytest.raises(ConfigError, match=r"^the sweep's config before its arms: "
                                        r"--config.model.head='gpa' is not one of"):
    sweep.run_sweep(config, tmp_path / "sweep")
  assert not (tmp_path / "sweep").exists()


def test_a_misspelled_arm_field_from_the_command_line_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=experiments/ablate_head.py:digits",
       "--config.ablation.arms=(('gap', (('model.head', 'gap'),)), "
       "('x', (('model.heads', 'fc'),)))",
       f"--workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: arm 'x' of the ablation: the config has no field 'model.heads'; did you mean "
      "model.head?")
  assert not (tmp_path / "w").exists()


def test_arm_values_of_every_kind_make_arms_that_run():
  config = ablate_head.get_config("digits")
  config.ablation = default.ablation(
      {**sweep.arm_set("model.fc_hidden", ((), (64, 32))),
       **sweep.arm_set("optimizer.learning_rate", (0.05,))}, num_seeds=1,
      paper_test_error={"learning_rate_0.05": 1.0})  # a name with a dot, and a paper value
  runs = {r.arm: r for r in sweep.expand(config)}
  assert list(runs) == ["fc_hidden_none", "fc_hidden_64x32", "learning_rate_0.05"]
  assert runs["fc_hidden_64x32"].config.model.fc_hidden == (64, 32)
  assert dict(config.ablation.paper_test_error) == {"learning_rate_0.05": 1.0}
  listed = default.ablation({"wide": {"model.fc_hidden": [64]}}, num_seeds=1)
  config.ablation = listed
  assert sweep.arms(config) == {"wide": {"model.fc_hidden": (64,)}}  # hashable, as the run's
  with pytest.raises(ConfigError, match=r"the grid names two arms 'a-b-c'"):
    sweep.grid({"a": {"x": 1}, "a-b": {"x": 2}}, {"b-c": {"y": 1}, "c": {"y": 2}})


def test_a_sweep_takes_its_seeds_from_the_config_seed_and_counts_each_once():
  """`--config.seed=5` gives seeds 5, 6, 7 (not 0, 1, 2 again: pooled with a first sweep they
  would count the same runs twice); the default stays 0 .. num_seeds - 1."""
  from nin_jax import checks
  config = ablate_head.get_config("digits")
  config.ablation.num_seeds = 3
  assert sorted({run.seed for run in sweep.expand(config)}) == [0, 1, 2]
  config.seed = 5
  runs = sweep.expand(config)
  assert sorted({run.seed for run in runs}) == [5, 6, 7] == sweep.seeds(config)
  assert all(run.config.seed == run.seed and run.subdir.endswith(f"/seed_{run.seed}")
             for run in runs)
  assert len({(run.arm, run.seed) for run in runs}) == len(runs)
  config.seed = -1  # (a float or a string: ml_collections refuses it for an int field)
  with pytest.raises(ConfigError, match=r"--config.seed=-1: a sweep's first seed must be an "
                                        r"integer from 0 to 2,147,483,645"):
    checks.validate_ablation(config)
  config.seed = 2**31 - 1  # a seed of its own, but its sweep's last seed would pass int32
  with pytest.raises(ConfigError, match=r"its runs take it and the --config.ablation.num_seeds - 1 "
                                        r"= 2 after it"):
    checks.validate_ablation(config)
