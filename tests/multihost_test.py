"""Multi-host for real, on loopback: 2 processes x 2 CPU devices, jax.distributed with a
127.0.0.1 coordinator and gloo collectives -- the code path of a Cloud TPU pod slice."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
from conftest import REPO, xla_flags, final_params, flatten, launch_here

RUN = ["--config=experiments/default.py:digits", "--config.num_epochs=0.5",
       "--config.log_every_steps=5", "--config.eval_every_steps=0",
       "--config.checkpoint_every_steps=4", "--config.model.dropout=0.0"]


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two_processes(workdir, args=RUN):
  """`launch.py ARGS` started as 2 processes x 2 devices (Popen, output piped); `workdir`: one
  for both, or a list of two."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(2))
  address = f"127.0.0.1:{free_port()}"
  workdirs = workdir if isinstance(workdir, list) else [workdir] * 2
  return [subprocess.Popen(
      [sys.executable, "launch.py", *args, f"--workdir={workdirs[i]}",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"], cwd=REPO,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]


def launch_two_processes(workdir, args=RUN):
  """`start_two_processes`, waited for; asserts both succeed; returns their logs (stderr)."""
  processes = start_two_processes(workdir, args)
  logs = [p.communicate(timeout=600)[1] for p in processes]
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-3000:]
  return logs


SWEEP = ["--config=experiments/ablate_head.py:digits", "--arm=gap,fc", "--config.num_epochs=0.5",
         "--config.log_every_steps=1", "--config.eval_every_steps=0",
         "--config.checkpoint_every_steps=4", "--config.ablation.num_seeds=2"]


def _results(workdir):
  """{run: (test accuracy, test loss)}: the loss to float32 rounding (XLA:CPU's sums may differ
  in the last bit between processes of another device count)."""
  return {str(p.parent.relative_to(workdir)): (s["test_accuracy"], round(s["test_loss"], 5))
          for p in sorted(workdir.glob("*/seed_*/summary.json"))
          for s in [json.loads(p.read_text())]}


def test_hosts_split_a_sweep_a_notice_stops_every_run_and_a_relaunch_resumes_each_once(tmp_path):
  """A sweep on 2 processes x 2 devices in per-host folders (no shared storage), copied
  together, is the reference. The same sweep in one folder, Ctrl-C (SIGINT, passed on as SIGTERM
  to JAX's preemption service) to host 1 while both hosts train: every run on either host stops
  with a checkpoint (status 130 on host 1, 143 on host 0), and the relaunch resumes each from its
  checkpoint and trains every run once; results and report equal the reference's."""
  # Over 20 s: three 2-process launches (per-host folders, stopped, relaunched): each process
  # imports JAX and compiles its steps.
  import signal
  import time
  from nin_jax import checkpointing, report
  launch_two_processes([tmp_path / "host0", tmp_path / "host1"], SWEEP)
  merged = tmp_path / "merged"
  shutil.copytree(tmp_path / "host0", merged)
  shutil.copytree(tmp_path / "host1", merged, dirs_exist_ok=True)
  reference = _results(merged)
  assert len(reference) == 4
  report.write_report(merged)

  shared = tmp_path / "shared"
  processes = start_two_processes(shared, SWEEP)
  # the notice as soon as every run has started (its config.json written): the runs then
  # compile and load for seconds (20 s here) before their first step of 8, so each of them
  # is in training when the notice reaches it, on either host
  deadline = time.time() + 300
  while len(list(shared.glob("*/seed_*/config.json"))) < 4:
    assert all(p.poll() is None for p in processes) and time.time() < deadline
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGINT)
  logs = [p.communicate(timeout=300)[1] for p in processes]
  hosts = [re.findall(r"Run \d+/\d+ (\S+) on cpu device", log) for log in logs]
  assert sorted(hosts[0] + hosts[1]) == sorted(reference) and all(hosts), hosts
  stopped = {}
  for process, log, mine, got in zip(processes, logs, hosts, ("SIGTERM", "SIGINT")):
    assert process.returncode == 128 + getattr(signal, got), log[-3000:]
    line = re.search(rf"^stopped by {got}: (.*) checkpointed; relaunch the same command to "
                     r"resume the sweep$", log, re.MULTILINE)
    assert line, log[-3000:]
    runs = dict((run, int(step)) for run, step in re.findall(r"(\S+) at step (\d+)", line.group(1)))
    assert sorted(runs) == sorted(mine), (runs, mine)
    stopped.update(runs)
  for run, step in stopped.items():
    assert checkpointing.steps_on_disk(shared / run)[-1] == step < 8, (run, step)

  logs = launch_two_processes(shared, SWEEP)
  resumed = {run: int(step) for log in logs for step, run in
             re.findall(r"Resuming from checkpoint step (\d+) in \S+/shared/(\S+)/checkpoints",
                        log)}
  assert resumed == stopped
  trained = [re.findall(r"Run \d+/\d+ (\S+) on cpu device", log) for log in logs]
  assert sorted(trained[0] + trained[1]) == sorted(reference)
  assert _results(shared) == reference
  tables = [json.loads((d / "report.json").read_text()) for d in (shared, merged)]
  for table in tables:  # the results, not how fast they came
    for arm in table["arms"]:
      del arm["train_images_per_s"], arm["wall_time_s"]
  assert tables[0] == tables[1] and tables[0]["comparisons"]


def test_two_processes_stopped_by_a_signal_to_one_stop_together_resume_and_end_as_one_would(
    tmp_path):
  """Two processes train one run, each on its own shard of the data. A preemption notice
  (SIGTERM) on one host: JAX's preemption service tells the other, both stop at the same step
  with a checkpoint of it (status 143), and the relaunch resumes there on both and ends as one
  process with 4 devices and the same 2 data parts does. (SIGINT on one host: the sweep test
  above.)"""
  # Over 20 s: 2 processes twice, and the same run in this process.
  import signal
  import time
  args = ["--config=experiments/default.py:digits", "--config.num_epochs=2",
          "--config.log_every_steps=1", "--config.eval_every_steps=0",
          "--config.checkpoint_every_steps=3", "--config.model.dropout=0.0"]
  workdir = tmp_path / "two"
  processes = start_two_processes(workdir, args)
  deadline = time.time() + 300
  log = workdir / "metrics.jsonl"
  while not log.exists() or len(log.read_text().splitlines()) < 4:
    assert all(p.poll() is None for p in processes) and time.time() < deadline
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)  # the host that writes nothing
  logs = [p.communicate(timeout=300)[1] for p in processes]
  # Each process loads only its own shard: 719 + 719 of the 1,438 training digits.
  shards = [re.search(r"Data: digits, (\d+) train, (\d+) validation and (\d+) test examples on "
                      r"this host", text) for text in logs]
  assert [int(m.group(1)) for m in shards] == [719, 719]
  assert [int(m.group(2)) for m in shards] == [0, 0]  # no validation split asked for
  assert sum(int(m.group(3)) for m in shards) == 359
  for i, text in enumerate(logs):
    assert f"Devices: 4 (2 local, process {i} of 2)" in text
  steps = []
  for process, text in zip(processes, logs):
    assert process.returncode == 143, text[-3000:]
    match = re.search(r"^stopped by SIGTERM at step (\d+) of 44, checkpoint saved in \S+; "
                      r"relaunch the same command to resume$", text, re.MULTILINE)
    assert match, text[-3000:]
    steps.append(int(match.group(1)))
  assert steps[0] == steps[1] and 4 <= steps[0] < 44, steps
  from nin_jax import checkpointing
  assert checkpointing.steps_on_disk(workdir)[-1] == steps[0]
  assert json.loads(log.read_text().splitlines()[-1])["step"] == steps[0]

  relaunch = launch_two_processes(workdir, args)
  for text in relaunch:
    assert f"Resuming from checkpoint step {steps[0]} in" in text
  assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 45))
  one = launch_here(*args, "--config.data_shards=2", f"--workdir={tmp_path / 'one'}")
  assert one.returncode == 0, one.stderr[-3000:]
  a, b = flatten(final_params(workdir)), flatten(final_params(tmp_path / "one"))
  # Gloo's all-reduce and the in-process one add in another order, and 44 steps of SGD carry that
  # rounding on (elementwise, up to 7.7e-5 on an AVX2-only host). Measured there, as a fraction
  # of each array's norm: at most 1.7e-3 for a bias and 8.3e-5 for a kernel; the same run with
  # the data in another order (data_shards=1) differs by at least 0.21 and 2.4e-3.
  for name in a:
    distance = np.linalg.norm(np.asarray(a[name]) - b[name]) / np.linalg.norm(b[name])
    assert distance < (1e-2 if name.endswith("bias") else 5e-4), (name, distance)
  two_summary = json.loads((workdir / "summary.json").read_text())
  one_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
  assert two_summary["test_accuracy"] == one_summary["test_accuracy"]
