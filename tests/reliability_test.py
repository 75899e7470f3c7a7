"""Reliability: kill -9 and resume bit for bit, damaged checkpoints, NaN guard, bad configs,
workdir safety."""
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, xla_flags, digits_config, final_params, flatten, launch_here, run_launch

from nin_jax import data, train, checks
from nin_jax import workdir as run_workdir
from nin_jax.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError

# 2 epochs of the digits (44 steps), a checkpoint every 3 steps, dropout and crops on.
KILL_RUN = ["--config=experiments/default.py:digits", "--config.num_epochs=2",
            "--config.checkpoint_every_steps=3", "--config.log_every_steps=1",
            "--config.eval_every_steps=0"]


def _steps_logged(workdir):
  path = workdir / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


def test_kill_9_at_random_steps_then_relaunch_is_bit_identical(tmp_path):
  # Over 20 s: 3 launch.py processes, killed (a kill needs a real process); the reference and the
  # relaunches run launch.py in this process, on the same 4 devices.
  reference = launch_here(*KILL_RUN, f"--workdir={tmp_path / 'reference'}")
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = flatten(final_params(tmp_path / "reference"))
  env = dict(os.environ, XLA_FLAGS=xla_flags(4))
  trials = random.Random(0).sample(range(2, 40), 3)
  for kill_after in trials:
    workdir = tmp_path / f"killed_at_{kill_after}"
    process = subprocess.Popen([sys.executable, "launch.py", *KILL_RUN, f"--workdir={workdir}"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _steps_logged(workdir) < kill_after and process.poll() is None:
      assert time.time() < deadline
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _steps_logged(workdir)
    assert killed_at < 44, "the run finished before it could be killed"
    resumed = launch_here(*KILL_RUN, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    actual = flatten(final_params(workdir))
    for name in expected:
      assert actual[name].tobytes() == expected[name].tobytes(), (kill_after, killed_at, name)
    # the log: every line readable, each step once, ascending, as in the uninterrupted run
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 45)), killed_at
    print(f"killed after step {killed_at}; resumed run bit-identical")


def _checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _truncate_largest_file(directory):
  largest = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(largest.stat().st_size // 3)


def test_damaged_latest_checkpoint_falls_back_to_the_newest_valid_one(tmp_path, caplog):
  config = digits_config(checkpoint_every_steps=4, keep_checkpoints=5)
  train.train_and_evaluate(config, tmp_path / "straight")
  workdir = tmp_path / "damaged"
  train.train_and_evaluate(config, workdir, stop_at_step=10)  # checkpoints 4, 8, 10
  assert _checkpoint_steps(workdir) == [4, 8, 10]
  _truncate_largest_file(workdir / "checkpoints" / "10")
  # an interrupted write leaves a temporary folder behind; it must not count either
  (workdir / "checkpoints" / "12.orbax-checkpoint-tmp-1234").mkdir()
  with caplog.at_level("WARNING"):
    summary = train.train_and_evaluate(config, workdir)
  assert "Checkpoint step 10" in caplog.text and "unreadable, skipped" in caplog.text
  assert summary["finished"]
  assert (workdir / "damaged_checkpoints" / "step_10").is_dir()
  a, b = flatten(final_params(tmp_path / "straight")), flatten(final_params(workdir))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_no_silent_restart_when_every_checkpoint_is_damaged(tmp_path):
  config = digits_config(checkpoint_every_steps=4)
  train.train_and_evaluate(config, tmp_path, stop_at_step=8)
  for step in _checkpoint_steps(tmp_path):
    _truncate_largest_file(tmp_path / "checkpoints" / str(step))
  with pytest.raises(CheckpointError, match="can be read; move that folder aside"):
    train.train_and_evaluate(config, tmp_path)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  config = digits_config(num_epochs=4.0, checkpoint_every_steps=2, log_every_steps=50,
                         keep_checkpoints=100)
  config.optimizer.learning_rate = 1e4
  config.optimizer.classifier_lr_multiplier = 1.0
  with pytest.raises(NonFiniteLossError, match=r"(loss|grad_norm) is (nan|inf) at step (\d+)") as e:
    train.train_and_evaluate(config, tmp_path)
  bad_step = int(e.value.args[0].split(" at step ")[1].split(";")[0])
  steps = _checkpoint_steps(tmp_path)
  assert steps and max(steps) < bad_step
  params = flatten(final_params(tmp_path))
  assert all(np.isfinite(p).all() for p in params.values())


BAD_CONFIGS = [
    ({"dataset": "cifar11"}, "dataset"),
    ({"preprocess": "zca"}, "preprocess"),
    ({"model.preset": "nin_cifra"}, "model.preset"),
    ({"model.head": "gpa"}, "model.head"),
    ({"optimizer.schedule": "linear"}, "optimizer.schedule"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 66}, "does not divide by the 4 devices"),
    ({"eval_batch_size": 130}, "eval_batch_size=130 does not divide"),
    ({"num_epochs": -1.0}, "num_epochs"),
    ({"optimizer.learning_rate": 0.0}, "learning_rate"),
    ({"optimizer.momentum": 1.0}, "momentum"),
    ({"optimizer.weight_decay": -1e-4}, "weight_decay"),
    ({"model.num_1x1": -1}, "num_1x1"),
    ({"model.dropout": 1.0}, "dropout"),
    ({"augment.crop_padding": -2}, "crop_padding"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"optimizer.decay_epochs": (30, 20)}, "decay_epochs"),
    ({"dataset": "npz"}, "npz_path"),
    ({"model.init_stddev": 0.0}, "init_stddev"),
    ({"microbatch_size": 5}, "microbatch_size=5 does not divide the per-device batch of 16"),
    ({"microbatch_size": -8}, "microbatch_size"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS,
                         ids=[next(iter(o)) + "=" + str(next(iter(o.values()))) for o, _ in BAD_CONFIGS])
def test_bad_config_is_one_clear_error(overrides, message, tmp_path):
  config = digits_config(**overrides)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    checks.validate(config)
  # and train_and_evaluate refuses it before writing anything
  with pytest.raises(ConfigError):
    train.train_and_evaluate(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, message", [
    (["--config.model.haed=fc"], "error: --config has no field 'haed'; did you mean head"),
    (["--config.batch_size=abc"], "error: flag --config.batch_size=abc: invalid literal"),
    (["--config.num_epochs=soon"], "error: flag --config.num_epochs=soon"),
    (["--config.data_dir=/no/such/dir", "--config.dataset=cifar10"],
     "error: data_dir '/no/such/dir' does not exist"),
    (["--arm=fc"], "error: --arm needs an ablation config"),
])
def test_bad_flags_are_one_line_and_non_zero(args, message, tmp_path):
  result = launch_here("--config=experiments/default.py:digits", f"--workdir={tmp_path / 'w'}",
                       *args)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_config_file_errors_are_one_line(tmp_path):
  for config, message in [("experiments/nope.py", "No such file or directory"),
                          ("experiments/default.py:digitz", "unknown variant 'digitz'")]:
    result = launch_here(f"--config={config}", f"--workdir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


@pytest.mark.parametrize("changes, message", [
    ({"x_train": np.zeros((20, 6, 6), np.uint8)}, "must be uint8 NHWC"),
    ({"y_test": np.array(["a"] * 7)}, "must be a 1-D integer array"),
    ({"x_test": np.zeros((5, 6, 6, 3), np.uint8)}, "5 images but y_test 7"),
])
def test_more_bad_npz_files(tmp_path, changes, message):
  from data_test import write_npz
  path = write_npz(tmp_path / "bad.npz", **changes)
  with pytest.raises(DataError, match=message):
    data.load_dataset(digits_config(dataset="npz", npz_path=path))


def test_workdir_with_another_config_is_refused_unless_overwrite(tmp_path):
  train.train_and_evaluate(digits_config(), tmp_path, stop_at_step=3)
  other = digits_config(batch_size=128)
  other.optimizer.learning_rate = 0.2
  with pytest.raises(ConfigError, match=r"another config: batch_size \(64 there, 128 now\), "
                                        r"optimizer\.learning_rate"):
    train.train_and_evaluate(other, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 64  # untouched
  # fields that change how the run is observed or run, not what it trains, may change on resume
  train.train_and_evaluate(digits_config(log_every_steps=2), tmp_path, stop_at_step=4)
  (change,) = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").open()]
  assert change["step"] == 3 and change["changed"] == {"log_every_steps": [5, 2]}
  summary = train.train_and_evaluate(other, tmp_path, overwrite=True)
  assert summary["finished"] and summary["step"] == round(0.5 * (1438 // 128))  # from step 0
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 128


def test_second_concurrent_launch_is_refused(tmp_path):
  tmp_path.mkdir(exist_ok=True)
  held = run_workdir.lock(tmp_path)  # as a first launch would
  try:  # a process of its own: a lock is held per process
    result = run_launch("--config=experiments/default.py:digits", f"--workdir={tmp_path}",
                        timeout=120)
  finally:
    held.close()
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: workdir {tmp_path} is in use by pid {os.getpid()}"), last
  assert not (tmp_path / "checkpoints").exists()


def test_each_file_a_resume_reads_removed_or_emptied_in_turn_still_resumes(tmp_path, caplog):
  """A run stopped at step 8 (checkpoints 4 and 8), then every file of its workdir but the older
  checkpoint's data, one at a time, removed or emptied: each relaunch resumes and ends with the
  uninterrupted run's parameters. What trained the checkpoints has a second copy in each checkpoint's metadata
  (config.json, dataset.json); a damaged checkpoint falls back to the one before."""
  # Over 20 s: ~40 relaunches of 3 steps each, in this process, on one device.
  import shutil
  import jax
  from nin_jax.placement import Placement
  one = Placement.local(jax.devices()[:1])
  config = digits_config(checkpoint_every_steps=4, keep_checkpoints=5)
  train.train_and_evaluate(config, tmp_path / "straight", placement=one)
  expected = flatten(final_params(tmp_path / "straight"))
  stopped = tmp_path / "stopped"
  train.train_and_evaluate(config, stopped, placement=one, stop_at_step=8)
  # Every file but those of the older checkpoint's items: a resume reads those only where the
  # newest is damaged, a case each file of checkpoint 8 makes (its step-level metadata, which
  # orbax reads for every step it lists, stays in).
  files = sorted(f for f in (p.relative_to(stopped) for p in stopped.rglob("*") if p.is_file())
                 if f.parts[:3] != ("checkpoints", "4", "default"))
  assert {"config.json", "dataset.json", "metrics.jsonl"} <= {str(f) for f in files}
  assert sum(1 for f in files if f.parts[:2] == ("checkpoints", "8")) >= 3
  assert any(f.parts[:2] == ("checkpoints", "4") for f in files)
  for name in files:
    for how in ("removed", "emptied"):
      workdir = tmp_path / "cases" / f"{str(name).replace('/', '_')}_{how}"
      shutil.copytree(stopped, workdir)
      if how == "removed":
        (workdir / name).unlink()
      else:
        (workdir / name).write_bytes(b"")
      caplog.clear()
      summary = train.train_and_evaluate(config, workdir, placement=one)
      assert summary["finished"] and summary["step"] == 11, (name, how)
      actual = flatten(final_params(workdir))
      for leaf in expected:
        assert actual[leaf].tobytes() == expected[leaf].tobytes(), (name, how, leaf)
      if str(name) in ("config.json", "dataset.json"):
        assert f"{name} is {'missing' if how == 'removed' else 'unreadable'}: using the copy in " \
               "checkpoint step 8" in caplog.text, (name, how)
        assert json.loads((workdir / name).read_text())  # written again


def test_another_micro_batch_is_another_run_only_with_batchnorm():
  """Micro-batches give the same update to float rounding, unless BatchNorm normalises each with
  its own statistics: then another micro-batch size is another training, and refused."""
  for norm, differs in (("none", {}), ("batch", {"microbatch_size": (0, 16)})):
    saved = json.loads(digits_config(**{"model.norm": norm}).to_json())  # as config.json holds it
    relaunch = digits_config(**{"model.norm": norm, "microbatch_size": 16}).to_dict()
    assert run_workdir.differing_fields(saved, relaunch) == differs, norm


def test_a_relaunch_may_change_how_a_run_is_evaluated_and_the_run_records_it(tmp_path, caplog):
  """After an evaluation ran out of memory, a smaller eval_batch_size (and another stuck-loss
  patience) on the relaunch: the run resumes, ends bit-identical to the uninterrupted run, and
  config_changes.jsonl and the log say what changed, at which step; config.json holds the new
  values. A field that changes the training is still refused. The uninterrupted run's evaluation
  batch is the largest a config takes: a batch beyond a split is the split in one batch (taken at
  its word, 2**31 - 1 took all host memory)."""
  import jax
  from nin_jax import checks
  from nin_jax.placement import Placement
  one = Placement.local(jax.devices()[:1])
  straight = train.train_and_evaluate(digits_config(eval_batch_size=checks.MAX_INT),
                                      tmp_path / "straight", placement=one)
  train.train_and_evaluate(digits_config(), tmp_path / "run", placement=one, stop_at_step=4)
  changed = digits_config(eval_batch_size=32, stuck_loss_steps=50)
  with caplog.at_level(logging.WARNING):
    summary = train.train_and_evaluate(changed, tmp_path / "run", placement=one)
  assert summary["finished"] and summary["test_accuracy"] == straight["test_accuracy"]
  a, b = flatten(final_params(tmp_path / "straight")), flatten(final_params(tmp_path / "run"))
  assert all(a[k].tobytes() == b[k].tobytes() for k in a)
  assert ("Resuming with other settings that do not change what is trained: eval_batch_size "
          "(128 there, 32 now), stuck_loss_steps (200 there, 50 now); recorded in") in caplog.text
  (change,) = [json.loads(line) for line in (tmp_path / "run" / "config_changes.jsonl").open()]
  assert change["step"] == 4 and change["changed"] == {
      "eval_batch_size": [128, 32], "stuck_loss_steps": [200, 50]}
  assert json.loads((tmp_path / "run" / "config.json").read_text())["eval_batch_size"] == 32
  with pytest.raises(ConfigError, match=r"another config: optimizer\.momentum \(0\.9 there, "
                                        r"0\.5 now\)"):
    train.train_and_evaluate(digits_config(**{"optimizer.momentum": 0.5, "eval_batch_size": 32}),
                             tmp_path / "run", placement=one)
