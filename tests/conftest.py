"""Every test sees 4 CPU devices, as a 4-chip host would: set before JAX is imported."""
import atexit
import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock



def pytest_xdist_auto_num_workers(config):
  """Workers for `-n auto` (pyproject.toml): one per core, at most 4. Most of a test's time is
  single-threaded Python, tracing and XLA compilation, so on 2 cores two workers keep both busy
  (the suite ran 1.3 cores on average in one process, measured); each worker holds ~4 GB (JAX,
  TensorFlow where a test needs it, 4 simulated devices), so not one per core on a large host."""
  return max(1, min(len(os.sched_getaffinity(0)), 4))


def xla_flags(devices):
  """XLA_FLAGS for `devices` simulated CPU devices. On a busy 2-core machine the threads of an
  all-reduce can reach it far apart; XLA:CPU's default rendezvous timeout then aborted the process
  (once in three tries here). 300 s still ends a real deadlock well inside the tests' timeouts."""
  return (f"--xla_force_host_platform_device_count={devices} "
          "--xla_cpu_collective_call_terminate_timeout_seconds=300 "
          "--xla_cpu_collective_timeout_seconds=300 "
          "--xla_cpu_collective_call_warn_stuck_timeout_seconds=60")


os.environ["XLA_FLAGS"] = xla_flags(4)
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# JAX's persistent compilation cache, shared by this session and every process its tests start
# (they inherit the environment): most tests compile one of a few small programs, and without it
# each launch.py process compiled them anew. New for each session unless a cache is given (set
# JAX_COMPILATION_CACHE_DIR to keep one across sessions); entries of every size and compile time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="nin_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import numpy as np  # noqa: E402

from experiments import default  # noqa: E402
from nin_jax import checkpointing, config_string  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def digits_config(**overrides):
  """experiments/default.py:digits, shortened; `overrides` use dotted keys: model.head='fc'."""
  config = default.get_config("digits")
  config.num_epochs = 0.5  # 11 steps of 64
  config.log_every_steps = 5
  config.eval_every_steps = 0
  return set_fields(config, overrides)


set_fields = config_string.set_fields  # `config` with {"model.head": "fc"} set: dotted keys


def run_launch(*args, devices=4, timeout=600):
  """`python launch.py ARGS` in a fresh process with `devices` CPU devices."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
  return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def launch_here(*args, cwd=None, timeout=600):
  """`python launch.py ARGS` run in this process, as launch.py's `app.run` runs it: its flag
  parsing (`parse_flags`), then `main`, on this process's 4 devices. For tests of what launch.py
  says and writes: a process costs ~8 s of imports and tracing (a digits launch with a warm
  compilation cache, measured) that this one has paid once. What only a process shows stays on
  `run_launch`: its device count, output outside Python (TensorFlow's), locks (held per
  process), kill -9, jax.distributed.

  As a new process would, each call starts without the datasets earlier calls loaded (the
  compiled steps stay: they are a function of the config alone). Past `timeout` seconds the
  worker process is ended with every thread's traceback, as `run_launch` ends its process.

  Returns a CompletedProcess as `run_launch` does: returncode 1 and the message last in stderr
  for sys.exit("error: ..."), as Python prints it; stderr also holds what Python code wrote to
  sys.stderr and the log records that reach the root logger. An exception that escapes `main`
  fails the test, as a process would die with a traceback."""
  import faulthandler
  import launch
  from absl import flags
  from absl import logging as absl_logging
  from nin_jax import data, provenance, train
  assert not {"--multihost", "--coordinator_address"} & {a.split("=")[0] for a in map(str, args)}, (
      "jax.distributed cannot start in the test process: use run_launch")
  for cache in (data._loaded, train._on_device):
    cache.clear()
  for function in (data._epoch_order, provenance.git_state, provenance.changed_files):
    function.cache_clear()
  log = io.StringIO()
  handler = logging.StreamHandler(log)
  handler.addFilter(checkpointing._QuietOrbax())  # as launch.main quiets absl's own handler
  root, absl_logger = logging.getLogger(), logging.getLogger("absl")
  levels = root.level, absl_logger.level
  absl_filters, unraisablehook = list(absl_logging.get_absl_handler().filters), sys.unraisablehook
  root.addHandler(handler)
  argv = ["launch.py", *map(str, args)]
  code = 0
  faulthandler.dump_traceback_later(timeout, exit=True)
  try:
    # ml_collections reads the --config.x overrides from sys.argv itself
    with (contextlib.chdir(cwd or REPO), mock.patch.object(sys, "argv", argv),
          contextlib.redirect_stderr(log)):
      flags.FLAGS.unparse_flags()  # every flag back to its default, as in a new process
      # ml_collections loads the config file as module "config_config" and would run a new file
      # into the namespace of the last one: a file without get_config would inherit it
      sys.modules.pop("config_config", None)
      try:
        remaining = launch.parse_flags(argv)
        flags.FLAGS.verbosity = 0  # what app.run sets: INFO, for absl's logger and the root one
        root.setLevel(logging.INFO)
        launch.main(remaining)
      except SystemExit as e:
        code = e.code
  finally:
    faulthandler.cancel_dump_traceback_later()
    root.removeHandler(handler)
    root.setLevel(levels[0])
    absl_logger.setLevel(levels[1])
    absl_logging.get_absl_handler().filters[:] = absl_filters  # launch.main's quieting, undone
    sys.unraisablehook = unraisablehook
    flags.FLAGS.unparse_flags()
    for name in [name for name in flags.FLAGS if name.startswith("config.")]:
      delattr(flags.FLAGS, name)  # the overrides ml_collections defined for this argv
    sys.modules.pop("config_config", None)
  if isinstance(code, str):  # Python prints the message and exits with 1
    log.write(code + "\n")
    code = 1
  return subprocess.CompletedProcess(["launch.py", *args], code or 0, "", log.getvalue())


def final_params(workdir):
  return checkpointing.restore_params(workdir)


def flatten(tree, prefix=""):
  """{'a/b/kernel': array} for comparing trees leaf by leaf with clear failure messages."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flatten(value, f"{prefix}{key}/"))
    return out
  return {prefix.rstrip("/"): np.asarray(tree)}
