"""Preemption: SIGTERM or SIGINT ends a run at a checkpoint of the step reached, with one line and
exit status 128 + the signal; the relaunch equals an uninterrupted run bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, final_params, flatten, launch_here, xla_flags

from nin_jax import checkpointing, metrics, preemption, train

# 2 epochs of the digits (44 steps), a checkpoint every 3 steps, dropout and crops on.
RUN = ["--config=experiments/default.py:digits", "--config.num_epochs=2",
       "--config.checkpoint_every_steps=3", "--config.log_every_steps=1",
       "--config.eval_every_steps=0"]
STOPPED = (r"^stopped by {signal} at step (\d+) of 44, checkpoint saved in \S+/checkpoints; "
           r"relaunch the same command to resume$")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run's parameters."""
  workdir = tmp_path_factory.mktemp("reference")
  result = launch_here(*RUN, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  return flatten(final_params(workdir))


def _logged_steps(workdir):
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _check_stopped(result, workdir, signum):
  """The stopped launch: its status, its last line, and a checkpoint of the last step logged."""
  import re
  assert result.returncode == 128 + signum, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  match = re.match(STOPPED.format(signal=signal.Signals(signum).name), last)
  assert match, last
  step = int(match.group(1))
  assert 0 < step < 44
  assert checkpointing.steps_on_disk(workdir)[-1] == step
  assert _logged_steps(workdir)[-1] == step
  return step


def _check_resumes_like_the_reference(workdir, step, reference):
  resumed = launch_here(*RUN, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"Resuming from checkpoint step {step} in" in resumed.stderr
  actual = flatten(final_params(workdir))
  for name in reference:
    assert actual[name].tobytes() == reference[name].tobytes(), (step, name)
  assert _logged_steps(workdir) == list(range(1, 45))  # each step once, ascending


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_launch_process_stops_at_a_checkpoint(tmp_path, reference, signum):
  # A real process, as a scheduler signals it (preemption.stop_on_signals in launch.py's main)
  workdir = tmp_path / "w"
  process = subprocess.Popen([sys.executable, "launch.py", *RUN, f"--workdir={workdir}"],
                             cwd=REPO, env=dict(os.environ, XLA_FLAGS=xla_flags(4)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (workdir / "metrics.jsonl").exists() or len(_logged_steps(workdir)) < 4:
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=300)
  step = _check_stopped(subprocess.CompletedProcess([], process.returncode, "", stderr), workdir,
                        signum)
  _check_resumes_like_the_reference(workdir, step, reference)


def _signal_self(signum):
  os.kill(os.getpid(), signum)  # the handler runs in the main thread before the next bytecode


@pytest.mark.parametrize("where", ["before_first_checkpoint", "between_checkpoints",
                                   "during_evaluation", "during_checkpoint_write"])
def test_a_signal_at_any_point_of_a_run_leaves_a_checkpoint_of_the_step_reached(
    tmp_path, reference, monkeypatch, where):
  """The signal sent by the run itself at a chosen point (launch.py's main in this process),
  then a second one while the last checkpoint is written: it must not damage that checkpoint."""
  signum = signal.SIGINT if where == "between_checkpoints" else signal.SIGTERM
  write, evaluate, save = (metrics.MetricsWriter.write, train.evaluate_splits,
                           checkpointing.save)
  at = {"before_first_checkpoint": 2, "between_checkpoints": 7}.get(where)

  def write_then_signal(self, record):
    write(self, record)
    if record["step"] == at:
      _signal_self(signum)

  def evaluate_with_signal(*args, **kwargs):
    _signal_self(signum)
    return evaluate(*args, **kwargs)

  def save_with_signals(manager, step, state, *, force=False):
    saved = save(manager, step, state, force=force)  # the write goes on in the background
    if where == "during_checkpoint_write" and step == 9:
      _signal_self(signum)
    if preemption.received() is not None and force:  # the preempted run's own checkpoint
      _signal_self(signum)
    return saved

  monkeypatch.setattr(metrics.MetricsWriter, "write", write_then_signal)
  monkeypatch.setattr(checkpointing, "save", save_with_signals)
  args = [*RUN]
  if where == "during_evaluation":
    monkeypatch.setattr(train, "evaluate_splits", evaluate_with_signal)
    args.append("--config.eval_every_steps=5")
  workdir = tmp_path / "w"
  result = launch_here(*args, f"--workdir={workdir}")
  step = _check_stopped(result, workdir, signum)
  assert step == {"before_first_checkpoint": 3, "between_checkpoints": 8,
                  "during_evaluation": 6, "during_checkpoint_write": 10}[where]
  assert "received again: the checkpoint is finished first" in result.stderr
  monkeypatch.undo()
  _check_resumes_like_the_reference(workdir, step, reference)


SWEEP = ["--config=experiments/ablate_head.py:digits", "--arm=gap,fc",
         "--config.ablation.num_seeds=1", "--config.ablation.devices_per_run=2",
         "--config.ablation.runs_at_once=2", "--config.num_epochs=0.5",
         "--config.log_every_steps=1", "--config.eval_every_steps=0",
         "--config.checkpoint_every_steps=4"]


def test_a_sweep_on_two_device_groups_stops_every_run_at_a_checkpoint_and_resumes(
    tmp_path, monkeypatch):
  """SIGTERM while both runs train side by side (devices [0, 1] and [2, 3]): each checkpoints
  the step it reached, no new run starts, and the relaunch finishes both as an uninterrupted
  sweep does."""
  # Over 20 s: the sweep three times (uninterrupted, stopped, resumed), each compiled for 2 groups.
  import re
  reference = launch_here(*SWEEP, f"--workdir={tmp_path / 'reference'}")
  assert reference.returncode == 0, reference.stderr[-2000:]
  write = metrics.MetricsWriter.write

  def write_then_signal(self, record):
    write(self, record)
    if record["step"] == 3:  # the first run to log step 3 sends it (from its thread)
      _signal_self(signal.SIGTERM)

  monkeypatch.setattr(metrics.MetricsWriter, "write", write_then_signal)
  workdir = tmp_path / "sweep"
  stopped = launch_here(*SWEEP, f"--workdir={workdir}")
  monkeypatch.undo()
  assert stopped.returncode == 143, stopped.stderr[-2000:]
  last = stopped.stderr.strip().splitlines()[-1]
  match = re.match(r"^stopped by SIGTERM: (.+) checkpointed; relaunch the same command to resume "
                   r"the sweep$", last)
  assert match, last
  steps = dict(re.findall(r"(\w+/seed_0) at step (\d+)", match.group(1)))
  assert sorted(steps) == ["fc/seed_0", "gap/seed_0"], last
  for run, step in steps.items():
    assert 0 < int(step) < 8  # 0.5 epoch: 8 steps
    assert checkpointing.steps_on_disk(workdir / run)[-1] == int(step), run
    assert _logged_steps(workdir / run)[-1] == int(step), run
  assert not (workdir / "report.md").exists()  # no report of a sweep that stopped

  resumed = launch_here(*SWEEP, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  for run, step in steps.items():
    assert re.search(rf"Resuming from checkpoint step {step} in \S+/{run}/checkpoints",
                     resumed.stderr), run
    expected = flatten(final_params(tmp_path / "reference" / run))
    actual = flatten(final_params(workdir / run))
    for name in expected:
      assert actual[name].tobytes() == expected[name].tobytes(), (run, name)
    assert _logged_steps(workdir / run) == list(range(1, 9)), run
  assert (workdir / "report.md").exists()


def test_a_signal_after_the_last_step_lets_the_run_finish_and_says_so(tmp_path, monkeypatch):
  """A signal during the final evaluation: nothing is left to train, so the run writes its
  summary and exits 0, with one line that says the signal came too late to stop anything."""
  evaluate = train.evaluate_splits

  def evaluate_with_signal(*args, **kwargs):  # with eval_every_steps=0: the final evaluation only
    _signal_self(signal.SIGTERM)
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(train, "evaluate_splits", evaluate_with_signal)
  result = launch_here(*RUN, f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "SIGTERM came after training had ended: finished, nothing to resume")
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["finished"] and summary["step"] == 44


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_benchmark_cleanly(tmp_path, signum):
  """`python -m nin_jax.benchmark` has nothing to checkpoint: a signal while it writes its JPEGs
  ends it at once with one line and 128 + the signal, its temporary files removed (TFDS's too)
  and no --out."""
  temporary = tmp_path / "tmp"
  temporary.mkdir()
  out = tmp_path / "benchmark.json"

  def ours():
    return list(temporary.iterdir())

  process = subprocess.Popen(
      [sys.executable, "-m", "nin_jax.benchmark", "--models=imagenet_streamed",
       "--dtypes=float32", "--steps=2", f"--out={out}"], cwd=REPO, text=True,
      env=dict(os.environ, TMPDIR=str(temporary), XLA_FLAGS=xla_flags(1)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while not list(temporary.glob("*/*")):  # its data folder: the JPEGs are being written
    assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
    time.sleep(0.05)
  process.send_signal(signum)
  stderr = process.communicate(timeout=120)[1]
  assert process.returncode == 128 + signum, stderr[-2000:]
  assert stderr.strip().splitlines()[-1] == (
      f"stopped by {signal.Signals(signum).name}: nothing measured is written (--out is written "
      "once every row is); rerun the command")
  assert not out.exists() and not ours()
