"""Faults that new users hit (issue 9): paths as people type them, schedules with warm-up, run
files cut by a kill, logs after a crash, shapes and preprocessing that cannot work, flags that
need other flags, unreachable remote paths, a full disk, a failing input step.

The .npz layouts are in data_test.py and the statistics' edge cases in report_test.py."""
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import REPO, digits_config, launch_here, run_launch, xla_flags
from data_test import write_npz
from report_test import write_fake_sweep

from nin_jax import (cam, checkpointing, checks, data, files, metrics, models, report, sweep,
                     train)
from nin_jax import workdir as run_workdir
from nin_jax.errors import ConfigError, StorageError

QUICK = ["--config.num_epochs=0.5", "--config.log_every_steps=5", "--config.eval_every_steps=0",
         "--config.checkpoint_every_steps=4"]


def launch_in(cwd, *args, devices=1, env=None, timeout=600):
  """`python launch.py ARGS` started in `cwd`, as a user in another folder would."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices), **(env or {}))
  return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def last_line(result):
  return result.stderr.strip().splitlines()[-1]


# 1. Paths --------------------------------------------------------------------------------------

def test_paths_are_resolved_once_at_the_entry_point(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert files.resolve("runs/a") == os.path.join(os.getcwd(), "runs/a")
  assert files.resolve("~/runs") == str(tmp_path / "home" / "runs")
  assert files.resolve("gs://bucket/runs") == "gs://bucket/runs"
  assert files.resolve(None) is None and files.resolve("") == ""
  # a local path as a URL, in each form RFC 8089 allows; file://tmp/x would be host 'tmp' (it
  # trained into ./tmp/x before)
  for url in ("file:///data/my%20runs", "file:/data/my%20runs", "file://localhost/data/my%20runs"):
    assert files.resolve(url) == "/data/my runs", url
  with pytest.raises(ConfigError, match=r"names the host 'tmp'.*file:///tmp/x \(three slashes\)"):
    files.resolve("file://tmp/x")
  with pytest.raises(ConfigError, match=r"reads local paths and gs:// .*, not s3://"):
    files.check_reachable("s3://bucket/runs", "--workdir")  # was probed as a bucket: 'no network'


@pytest.mark.parametrize("path, message", [
    # each was a folder of its own, trained into unnoticed: a literal '$HOME', a name ending in
    # '\r' (a script with Windows line ends) or a space, 'C:\\Users\\me' under the current folder
    ("$HOME/runs", r"holds \$HOME, a shell variable left unexpanded"),
    ("${DATA}/digits.npz", r"holds \$\{DATA\}"),
    ("runs/exp1\r", r"a line end or a tab"),
    ("runs/exp1 ", r"begins or ends with a space"),
    ("C:\\Users\\me\\runs", r"looks like a Windows path.*/mnt/c/Users"),
    ("runs\\exp1", r"looks like a Windows path"),
])
def test_paths_typed_in_other_conventions_are_one_line(path, message):
  with pytest.raises(ConfigError, match=message):
    files.resolve(path)


def test_relative_workdir_and_npz_path_train_checkpoint_and_resume(tmp_path, monkeypatch):
  """The instance: --workdir=runs/a made every checkpoint save fail and the run die."""
  # Over 20 s: a launch.py process started from another folder, as a user would, then the
  # relaunch from there in this process.
  write_npz(tmp_path / "d.npz", x_train=np.random.default_rng(0).integers(
      0, 256, (64, 8, 8, 1), np.uint8), y_train=np.arange(64) % 4,
      x_test=np.zeros((7, 8, 8, 1), np.uint8))
  args = ["--config=" + str(REPO / "experiments/default.py") + ":digits", "--workdir=runs/a",
          "--config.dataset=npz", "--config.npz_path=d.npz", "--config.batch_size=16",
          "--config.num_epochs=3", "--config.log_every_steps=3", "--config.eval_every_steps=0",
          "--config.checkpoint_every_steps=4"]
  first = launch_in(tmp_path, *args, devices=4)  # as many devices as the relaunch below
  assert first.returncode == 0, first.stderr[-3000:]
  run = tmp_path / "runs" / "a"
  steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [4, 8, 12]
  saved = json.loads((run / "config.json").read_text())
  assert saved["npz_path"] == str(tmp_path / "d.npz")  # absolute in the saved config
  trained = json.loads((run / "summary.json").read_text())
  again = launch_here(*args, cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resuming from checkpoint step 12 in {run / 'checkpoints'}" in again.stderr
  evaluated = json.loads((run / "summary.json").read_text())  # a relaunch only re-evaluates:
  for key in ("wall_time_s", "train_images_per_s", "test_accuracy"):  # its training figures stay
    assert evaluated[key] == trained[key], key

  # the CAM command and the report take relative folders too (in this process: the same
  # entry functions their `main`s call, without two more interpreter start-ups)
  monkeypatch.chdir(tmp_path)
  assert cam.write_figure("runs/a", 4, "cam.png") == tmp_path / "cam.png"
  with pytest.raises(ConfigError, match="--out folder .*no/such does not exist"):
    cam.write_figure("runs/a", 4, "no/such/cam.png")
  assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"
  (tmp_path / "sweep").mkdir()
  write_fake_sweep(tmp_path / "sweep", {"gap": [1.0, 2.0], "fc": [2.0, 3.0]})
  assert report.write_report("sweep") == tmp_path / "sweep" / "report.md"
  assert (tmp_path / "sweep" / "report.md").exists()


def test_relative_data_dir_is_resolved_in_its_error(tmp_path):
  result = launch_here(f"--config={REPO / 'experiments/default.py'}", "--workdir=w",
                       "--config.data_dir=no/such", cwd=tmp_path)
  assert result.returncode == 1
  assert last_line(result).startswith(f"error: data_dir '{tmp_path / 'no/such'}' does not exist")


# 2. Schedules with warm-up ---------------------------------------------------------------------

def schedule(kind, **fields):
  config = digits_config(**{"optimizer.schedule": kind, "optimizer.learning_rate": 1.0,
                            **{f"optimizer.{k}": v for k, v in fields.items()}})
  return train.create_learning_rate_fn(config.optimizer, steps_per_epoch=10, total_steps=200)


def test_step_schedule_with_warm_up_decays_at_the_epochs_of_the_run():
  """The instance: warm-up 5, decay (10, 15), 20 epochs: the rate was still 1 at epoch 10."""
  rate = schedule("step", warmup_epochs=5.0, decay_epochs=(10, 15), decay_factor=0.1)
  # by hand: step s < 50 is warm-up, s / 50; then 1 until step 100, 0.1 until 150, then 0.01
  expected = {0: 0.0, 1: 0.02, 25: 0.5, 49: 0.98, 50: 1.0, 99: 1.0, 100: 0.1, 149: 0.1,
              150: 0.01, 199: 0.01}
  for step, value in expected.items():
    assert float(rate(step)) == pytest.approx(value, rel=1e-6, abs=1e-9), step


def test_cosine_with_warm_up_reaches_zero_at_the_end_of_the_run():
  """The instance: cosine after a 5-epoch warm-up ended at 0.147x the base rate."""
  rate = schedule("cosine", warmup_epochs=5.0)
  # by hand: after the warm-up, (1 + cos(pi * (s - 50) / 150)) / 2
  for step in (50, 51, 125, 190, 199):
    assert float(rate(step)) == pytest.approx((1 + np.cos(np.pi * (step - 50) / 150)) / 2,
                                              rel=1e-5, abs=1e-7), step
  assert float(rate(200)) == 0.0
  assert float(rate(199)) == pytest.approx(1.1e-4, rel=0.01)  # the last update's rate
  without = schedule("cosine")
  assert float(without(0)) == 1.0 and float(without(100)) == pytest.approx(0.5)
  assert float(without(200)) == 0.0


def test_constant_schedule_with_warm_up():
  rate = schedule("constant", warmup_epochs=2.0)
  assert [float(rate(s)) for s in (0, 10, 19, 20, 199)] == pytest.approx([0, 0.5, 0.95, 1, 1])


@pytest.mark.parametrize("fields, message", [
    ({"optimizer.warmup_epochs": 0.5}, "warmup_epochs=0.5 must be shorter than"),
    ({"optimizer.schedule": "step", "optimizer.warmup_epochs": 0.2,
      "optimizer.decay_epochs": (0.1, 0.4)}, "must come after the warm-up"),
])
def test_schedules_that_cannot_work_are_refused(fields, message):
  with pytest.raises(ConfigError, match=message):
    checks.validate(digits_config(**fields))


# 3. Run files written in place ----------------------------------------------------------------

def test_an_empty_summary_means_not_finished_with_one_warning(tmp_path, caplog):
  """The instance: an empty summary.json (a launch killed while writing it) crashed the sweep."""
  write_fake_sweep(tmp_path, {"gap": [1.0, 2.0, 3.0], "fc": [2.0, 3.0, 4.0]})
  (tmp_path / "fc" / "seed_1" / "summary.json").write_text("")
  (tmp_path / "gap" / "seed_2" / "summary.json").write_text('{"finished": tr')
  with caplog.at_level(logging.WARNING):
    assert not sweep.is_finished(tmp_path / "fc" / "seed_1")
    assert sweep.is_finished(tmp_path / "fc" / "seed_0")
    report.write_report(tmp_path)
  assert caplog.text.count("Unreadable run summary") >= 2
  summary = json.loads((tmp_path / "report.json").read_text())
  assert [a["seeds_finished"] for a in summary["arms"]] == [[0, 1], [0, 2]]
  assert [c["seeds"] for c in summary["comparisons"]] == [[0]]


def test_unreadable_sweep_json_is_one_line(tmp_path):
  write_fake_sweep(tmp_path, {"gap": [1.0, 2.0]})
  (tmp_path / "sweep.json").write_text("")
  # `python -m nin_jax.report DIR`'s main, in this process (sweep_test runs the command itself)
  with pytest.raises(SystemExit) as exit_:
    report.main(["report", str(tmp_path)])
  assert str(exit_.value.code).startswith(f"error: {tmp_path / 'sweep.json'} is unreadable")


def test_an_unreadable_config_json_resumes_only_what_it_can_match(tmp_path, caplog):
  (tmp_path / "config.json").write_text("")
  with caplog.at_level(logging.WARNING):
    run_workdir.check_or_clear(tmp_path, digits_config(), overwrite=False)  # nothing to resume
  assert "Unreadable run config" in caplog.text
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # a checkpoint that holds no copy
  with pytest.raises(ConfigError, match="config.json is unreadable and no checkpoint in "
                                        r"\S+ holds a copy") as error:
    run_workdir.check_or_clear(tmp_path, digits_config(), overwrite=False)
  assert "--overwrite" not in str(error.value)  # it would delete the checkpoints


def test_every_run_and_sweep_file_is_written_through_the_atomic_writer():
  """No module writes a run file in place: write_text/savefig/open(.., 'w') go through files."""
  for path in (REPO / "nin_jax").glob("*.py"):
    if path.name == "files.py":
      continue
    text = path.read_text()
    for pattern in (r"(?<!files)\.write_text\(", r"(?<!files)\.write_bytes\(", r"\.savefig\(",
                    r"open\(\"w\"\)", r", \"w\"\)"):
      assert not re.search(pattern, text), f"{path.name} writes with {pattern}"


# 4. Append-only logs after a crash ------------------------------------------------------------

def test_a_resumed_run_cuts_the_log_back_to_its_checkpoint(tmp_path, caplog):
  """The instance: a cut last line, then the resumed run appended onto it, steps going back."""
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(5, 35, 5)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 35, "lo')
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in metrics.read(tmp_path)] == [5, 10, 15, 20, 25, 30]
  assert "skipped 1 unreadable line(s)" in caplog.text
  with metrics.MetricsWriter(tmp_path, first_step=20) as writer:  # resumed from checkpoint 20
    writer.write({"step": 25, "loss": 0.5})
  text = (tmp_path / "metrics.jsonl").read_text()
  assert [json.loads(line)["step"] for line in text.splitlines()] == [5, 10, 15, 20, 25]
  assert json.loads(text.splitlines()[-1])["loss"] == 0.5


def test_a_log_with_repeated_steps_reads_each_step_once_the_latest_wins(tmp_path):
  records = [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.0}, {"step": 5, "loss": 1.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert metrics.read(tmp_path) == [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 2.0}]


# 6. Shapes that cannot work --------------------------------------------------------------------

def test_a_preset_too_big_for_the_images_is_refused_with_its_smallest_input(tmp_path):
  """The instance: 8x8 digits with nin_imagenet crashed in the first step's max-pool gradient,
  after writing the workdir, so the corrected relaunch was refused."""
  # by hand: conv 11/4 -> 8 needs 39 pixels; 8 -> pool 4 -> pool 2 -> pool 1 -> last block 1
  with pytest.raises(ConfigError, match=r"nin_imagenet cannot take 8 x 8 images \(digits\).* "
                                        r"smallest input is 39 x 39"):
    checks.validate(digits_config(**{"model.preset": "nin_imagenet"}))
  model = models.NIN(num_classes=10, **digits_config(**{"model.preset": "nin_imagenet"}).model)
  assert checks.block_shapes(model, (39, 39, 3))[-1][1] == (1, 1, 1, 10)
  result = launch_here("--config=experiments/default.py:digits", f"--workdir={tmp_path / 'w'}",
                       "--config.model.preset=nin_imagenet")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "smallest input is 39 x 39" in last_line(result)
  assert not (tmp_path / "w").exists()


def test_npz_images_too_small_for_the_preset_are_refused(tmp_path):
  # by hand, ceil-mode pools: 3 -> 1 -> 0 fails; 4 -> 2 -> 1 reaches the last block
  path = write_npz(tmp_path / "small.npz", x_train=np.zeros((20, 3, 3, 3), np.uint8),
                   x_test=np.zeros((7, 3, 3, 3), np.uint8))
  config = digits_config(dataset="npz", npz_path=path, **{"model.preset": "nin_cifar"})
  with pytest.raises(ConfigError, match=r"nin_cifar cannot take 3 x 3 images \(npz\).*"
                                        r"smallest input is 4 x 4"):
    checks.validate(config)


# 7. Preprocessing that cannot fit -------------------------------------------------------------

def test_zca_on_images_too_large_is_refused_before_any_work():
  def config(shape):
    return digits_config(dataset="synthetic", preprocess="gcn_zca",
                         **{"synthetic.image_shape": shape, "model.preset": "nin_cifar"})
  with pytest.raises(ConfigError, match=r"gcn_zca on 64x64x3 images needs a 12,288 x 12,288 "
                                        r"covariance \(1\.2 GB\).*--config\.preprocess=mean_std"):
    checks.validate(config((64, 64, 3)))
  checks.validate(config((32, 32, 3)))  # CIFAR's 3,072: fine
  checks.validate(config((64, 64, 1)))  # 4,096: the limit


# 8. Flags that need other flags ----------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--coordinator_address=127.0.0.1:1234"],
     "error: --coordinator_address needs --num_processes and --process_id as well"),
    (["--num_processes=2", "--process_id=0"],
     "error: --num_processes, --process_id needs --coordinator_address as well"),
    (["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
     "error: --process_id=2 must be in 0..1"),
    (["--multihost", "--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=0"],
     "error: --multihost and --coordinator_address exclude each other"),
    (["--multihost"], "error: jax.distributed.initialize failed (coordinator_address should be "
                      "defined.); --multihost is for a Cloud TPU pod slice"),
    (["--workdir="], "error: --workdir is empty"),
])
def test_flags_that_need_other_flags_are_one_line(args, message, tmp_path):
  # processes of their own: jax.distributed must not start in the test process (all but
  # --multihost are refused while the flags are parsed, before JAX is imported: ~1 s each)
  result = run_launch("--config=experiments/default.py:digits", f"--workdir={tmp_path / 'w'}",
                      *args, devices=1, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert last_line(result).startswith(message), last_line(result)
  assert not (tmp_path / "w").exists()


# 9. Remote paths that cannot be reached --------------------------------------------------------

def test_an_unreachable_gs_workdir_is_one_line(tmp_path):
  """No network here (and none in CI): TensorFlow's GCS file system fails; one line says why."""
  # a process of its own: TensorFlow's GCS client, whose output a test process cannot capture
  result = run_launch("--config=experiments/default.py:digits",
                      "--workdir=gs://nin-jax-no-such-bucket-7f3a/run", devices=1, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  line = last_line(result)
  assert line.startswith("error: --workdir=gs://nin-jax-no-such-bucket-7f3a/run"), line
  assert "no network" in line and "no such bucket" in line and "credentials" in line


# 10. Disk full during a checkpoint write --------------------------------------------------------

def test_a_full_disk_is_one_line_and_the_run_resumes_once_space_is_freed(tmp_path):
  """A 1.2 MB tmpfs holds one digits checkpoint (~0.9 MB), not two: the write of step 20 fails.
  Mounted in a private mount namespace (unshare), so the test needs no privileges of its own."""
  # Over 20 s: two launch.py processes in a private mount namespace around a 1.2 MB tmpfs.
  mount = tmp_path / "small_disk"
  mount.mkdir()
  workdir = mount / "run"
  launch = (f"{sys.executable} {REPO / 'launch.py'} --config=experiments/default.py:digits "
            f"--workdir={workdir} --config.num_epochs=1 --config.checkpoint_every_steps=10 "
            "--config.log_every_steps=5 --config.eval_every_steps=0")
  script = textwrap.dedent(f"""\
      mount -t tmpfs -o size=1200k tmpfs {mount}
      {launch} 2> {tmp_path / 'full.log'}; echo "first exit $?"
      mount -o remount,size=64m {mount}
      {launch} 2> {tmp_path / 'freed.log'}; echo "second exit $?"
      cat {workdir / 'summary.json'}
      """)
  result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, XLA_FLAGS=xla_flags(1)))
  out = result.stdout
  full = (tmp_path / "full.log").read_text()
  assert "first exit 1" in out, (out, result.stderr, full[-3000:])
  assert full.strip().splitlines()[-1] == (
      f"error: writing checkpoint step 20 to {workdir / 'checkpoints'} failed: the disk is full "
      "(No space left on device). Checkpoints kept: steps [10]; free space (or fix the cause) "
      "and relaunch the same command to resume from step 10")
  assert "Traceback" not in full and "Event loop is closed" not in full
  freed = (tmp_path / "freed.log").read_text()
  assert "second exit 0" in out, freed[-3000:]
  assert "Resuming from checkpoint step 10" in freed
  assert json.loads(out[out.index("{"):])["finished"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "summary.json"
  files.write_json(target, {"finished": True})
  (tmp_path / "blocker").mkdir()
  with pytest.raises(StorageError, match=r"writing blocker to .* failed: IsADirectoryError"):
    files.write_text(tmp_path / "blocker", "x")  # a write that cannot land
  assert json.loads(target.read_text()) == {"finished": True}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "summary.json"]


def test_a_workdir_that_cannot_be_created_is_one_line(tmp_path):
  (tmp_path / "a_file").write_text("")
  result = launch_here("--config=experiments/default.py:digits", f"--workdir={tmp_path / 'a_file'}")
  assert result.returncode == 1 and last_line(result) == (
      f"error: --workdir={tmp_path / 'a_file'} is a file, not a folder; pick another --workdir")
  # a process of its own: launch.py's one line for an OSError, as a user sees it
  result = run_launch("--config=experiments/default.py:digits",
                      f"--workdir={tmp_path / 'a_file' / 'run'}", devices=1, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert last_line(result).startswith("error: writing a file to "), last_line(result)


# 11. A failing input step (indices are drawn on the main thread, once per epoch) ----------------

def _within(seconds, function):
  """Runs `function` in a thread; fails the test if it has not returned after `seconds`."""
  outcome = {}

  def target():
    try:
      outcome["value"] = function()
    except BaseException as e:  # noqa: BLE001 -- handed to the test
      outcome["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still waiting after {seconds} s"
  return outcome


def test_an_error_drawing_the_indices_stops_training(tmp_path, monkeypatch):
  real = data.train_indices

  def failing(dataset, step, *args, **kwargs):
    if step == 6:
      raise MemoryError("cannot allocate the batch of step 6")
    return real(dataset, step, *args, **kwargs)

  monkeypatch.setattr(data, "train_indices", failing)
  outcome = _within(300, lambda: train.train_and_evaluate(digits_config(), tmp_path))
  assert isinstance(outcome.get("error"), MemoryError), outcome
  assert "step 6" in str(outcome["error"])


# Found by searching public trackers for how users break such code ------------------------------

def test_a_url_with_one_slash_is_refused_not_made_a_local_folder():
  """pathlib turns gs://b into gs:/b; resolved as local, a run would train to ./gs:/b unnoticed."""
  with pytest.raises(ConfigError, match=r"did you mean 'gs://bucket/run'"):
    files.resolve("gs:/bucket/run")
  assert files.resolve("run:1") == os.path.join(os.getcwd(), "run:1")  # a colon alone is fine


@pytest.mark.parametrize("fields, message", [
    ({"optimizer.schedule": "step", "optimizer.decay_epochs": (30, 30)}, "strictly ascending"),
    ({"optimizer.schedule": "step", "optimizer.decay_epochs": ("abc",)}, "must be numbers"),
    ({"optimizer.decay_factor": 10.0}, "decay_factor=10.0 multiplies"),
    ({"num_epochs": float("inf")}, "num_epochs=inf must be a finite"),
    ({"model.head": "fc", "model.fc_hidden": (-8,)}, "fc_hidden=(-8,) must be positive"),
])
def test_values_the_flag_parser_accepts_but_cannot_work(fields, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    checks.validate(digits_config(**fields))


def test_decay_epochs_on_the_same_step_and_runs_shorter_than_a_step_are_refused(tmp_path):
  config = digits_config(**{"optimizer.schedule": "step", "optimizer.decay_epochs": (3, 3.01)})
  with pytest.raises(ConfigError, match=r"fall on the same step at 22 steps per epoch"):
    train.train_and_evaluate(config, tmp_path / "a")
  with pytest.raises(ConfigError, match=r"num_epochs=0.01 is less than one step"):
    train.train_and_evaluate(digits_config(num_epochs=0.01), tmp_path / "b")
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("contents, message", [
    ("x = 1\n", "error: the --config file defines no get_config(variant) function"),
    ("def get_config(v=''):\n  return 3 ×\n", "error: the --config file failed to load (line 2): "
                                              "SyntaxError"),
    ("def get_config(v=''):\n  return undefined_name\n", "error: the --config file failed to "
                                                        "load: NameError"),
])
def test_a_broken_config_file_is_one_line(contents, message, tmp_path):
  (tmp_path / "my_config.py").write_text(contents)
  result = launch_here(f"--config={tmp_path / 'my_config.py'}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert last_line(result).startswith(message), last_line(result)


def test_a_cut_tfds_shard_is_one_line(tmp_path):
  from data_test import TinyMnist
  TinyMnist(data_dir=str(tmp_path)).download_and_prepare()
  shard = next(tmp_path.rglob("mnist-train.tfrecord*"))
  shard.write_bytes(shard.read_bytes()[:100])
  with pytest.raises(Exception) as error:
    data.load_dataset(digits_config(dataset="mnist", data_dir=str(tmp_path)))
  assert type(error.value).__name__ == "DataError"
  assert "cannot be read" in str(error.value) and "prepare it again" in str(error.value)


def test_a_workdir_with_glob_characters_is_refused(tmp_path):
  """Orbax merges a checkpoint's per-process folders with a glob that includes the folder."""
  with pytest.raises(ConfigError, match=r"glob character .* rename it"):
    files.resolve(tmp_path / "a[lr=0.1]")
  result = launch_here("--config=experiments/default.py:digits",
                       f"--workdir={tmp_path / 'b[lr=0.1]'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "glob character" in last_line(result)
  assert not (tmp_path / "b[lr=0.1]").exists()


def test_a_sweep_relaunched_with_another_config_is_refused_before_any_run(tmp_path):
  """Finished runs were skipped whatever their config: a changed sweep passed them off as its
  own."""
  from experiments import ablate_head
  config = ablate_head.get_config("digits")
  config.ablation.num_seeds = 1
  old = sweep.expand(config)[1]  # fc, seed 0, as an earlier launch trained it
  old.config.num_epochs = 0.5
  (tmp_path / old.subdir).mkdir(parents=True)
  (tmp_path / old.subdir / "config.json").write_text(old.config.to_json())
  (tmp_path / old.subdir / "summary.json").write_text('{"finished": true}')
  with pytest.raises(ConfigError, match=r"fc/seed_0 holds a run with another config: "
                                        r"num_epochs \(0\.5 there, 60\.0 now\)"):
    sweep.run_sweep(config, tmp_path)
  assert not (tmp_path / "gap").exists()  # refused before the first run


def test_float32_noise_in_old_summaries_is_not_a_finding():
  """Two seeds, each 10 of 359 digits apart, stored through float32: -2.785515785 and
  -2.785514295. The paired t-test read the noise as spread (p = 1.7e-7)."""
  a = [10.0, 12.0]
  b = [12.785515785, 14.785514295]
  assert report.paired_t_test(a, b)[2] == pytest.approx(0.5)  # the sign test's 2 * 0.5^2


def test_npz_test_labels_that_no_training_example_has_are_refused(tmp_path):
  path = write_npz(tmp_path / "d.npz", y_test=np.array([0, 1, 2, 3, 0, 1, 10]))
  with pytest.raises(Exception, match=r"y_test holds labels \[10\] that no training example"):
    data.load_npz(path)


def test_the_checkpoints_named_as_kept_are_those_on_disk(tmp_path):
  """Relaunched on a full disk with keep_checkpoints=1, the line said 'kept: none' while steps 5
  and 10 were on disk: orbax's own list omits steps it means to delete."""
  manager = checkpointing.create_manager(tmp_path, every_steps=5, keep=1)
  for name in ("5", "10", "15.orbax-checkpoint-tmp"):
    (tmp_path / "checkpoints" / name).mkdir()
  error = checkpointing._write_failure(manager, 15, OSError(28, "No space left on device"))
  assert str(error) == (f"writing checkpoint step 15 to {tmp_path / 'checkpoints'} failed: the "
                        "disk is full (No space left on device). Checkpoints kept: steps [5, 10]; "
                        "free space (or fix the cause) and relaunch the same command to resume "
                        "from step 10")
  manager.close()


def test_jax_enable_x64_does_not_change_a_run_and_provenance_records_it(tmp_path, monkeypatch,
                                                                        caplog):
  """JAX_ENABLE_X64=1 (set in many scientific Python set-ups): the same run, bit for bit, one
  warning line, and the setting in the run's provenance."""
  import jax
  from conftest import final_params, flatten
  from nin_jax.placement import Placement
  one = Placement.local(jax.devices()[:1])
  config = digits_config(num_epochs=0.25)
  train.train_and_evaluate(config, tmp_path / "plain", placement=one)
  monkeypatch.setenv("JAX_ENABLE_X64", "1")
  jax.config.update("jax_enable_x64", True)  # what the variable does when JAX is imported
  try:
    with caplog.at_level(logging.WARNING):
      train.train_and_evaluate(config, tmp_path / "x64", placement=one)
  finally:
    jax.config.update("jax_enable_x64", False)
  a, b = flatten(final_params(tmp_path / "plain")), flatten(final_params(tmp_path / "x64"))
  assert all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)
  assert "JAX_ENABLE_X64 (jax_enable_x64) is on in this process: ignored for training" in \
      caplog.text
  summary = json.loads((tmp_path / "x64" / "summary.json").read_text())
  assert summary["provenance"]["environment"]["JAX_ENABLE_X64"] == "1"
  assert "JAX_ENABLE_X64" not in json.loads(
      (tmp_path / "plain" / "summary.json").read_text())["provenance"]["environment"]


def test_devices_the_environment_names_but_this_machine_lacks_are_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="tpu")
  result = subprocess.run([sys.executable, "launch.py", "--config=experiments/default.py:digits",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"error: JAX cannot start its devices \(Unable to initialize backend 'tpu'.*"
                      r"\); the environment settings that choose them here: .*JAX_PLATFORMS=tpu.*",
                      last), last
  assert not (tmp_path / "run").exists()
