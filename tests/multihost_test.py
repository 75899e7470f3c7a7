"""Multi-host for real, on loopback: 2 processes x 2 CPU devices, jax.distributed with a
127.0.0.1 coordinator and gloo collectives -- the code path of a Cloud TPU pod slice."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
from conftest import REPO, xla_flags, final_params, flatten, run_launch

RUN = ["--config=experiments/default.py:digits", "--config.num_epochs=0.5",
       "--config.log_every_steps=5", "--config.eval_every_steps=0",
       "--config.checkpoint_every_steps=4", "--config.model.dropout=0.0"]


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_two_processes(workdir):
  env = dict(os.environ, XLA_FLAGS=xla_flags(2))
  address = f"127.0.0.1:{free_port()}"
  processes = [subprocess.Popen(
      [sys.executable, "launch.py", *RUN, f"--workdir={workdir}", f"--coordinator_address={address}",
       "--num_processes=2", f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  logs = [p.communicate(timeout=300)[1] for p in processes]
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-3000:]
  return logs


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
  logs = launch_two_processes(tmp_path / "two")
  # Each process loads only its own shard: 719 + 719 of the 1,438 training digits.
  shards = [re.search(r"Data: digits, (\d+) train and (\d+) test examples on this host", log)
            for log in logs]
  assert [int(m.group(1)) for m in shards] == [719, 719]
  assert sum(int(m.group(2)) for m in shards) == 359
  for i, log in enumerate(logs):
    assert f"Devices: 4 (2 local, process {i} of 2)" in log

  # One process with 4 devices, the same 2 data parts.
  one = run_launch(*RUN, "--config.data_shards=2", f"--workdir={tmp_path / 'one'}", devices=4)
  assert one.returncode == 0, one.stderr[-3000:]
  a, b = flatten(final_params(tmp_path / "two")), flatten(final_params(tmp_path / "one"))
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=2e-5, err_msg=name)
  two_summary = json.loads((tmp_path / "two" / "summary.json").read_text())
  one_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
  assert two_summary["test_accuracy"] == one_summary["test_accuracy"]

  # Both processes restore the checkpoint they wrote together.
  relaunch = launch_two_processes(tmp_path / "two")
  for log in relaunch:
    assert "Resuming from checkpoint step 11" in log
  again = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert again["test_accuracy"] == two_summary["test_accuracy"] and again["step"] == 11
