r"""Train and evaluate NIN: `python launch.py --config=experiments/default.py:digits --workdir=DIR`.

An ablation config (experiments/ablate_*.py) runs every arm x seed and writes a report.

Thin on purpose: flags, process set-up (jax.distributed on several hosts; TensorFlow, where a
run needs it, is hidden from the accelerators by nin_jax.data.tensorflow()), then
`nin_jax.train.train_and_evaluate`. Relaunching with the same --workdir resumes from the latest
checkpoint there.
"""
import logging
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is noise here

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the summary go here.",
                    required=True)
flags.DEFINE_list("arm", None, "For an ablation config: run only these arms (comma-separated), "
                  "for example --arm=fc, so that several machines can share a sweep.")
flags.DEFINE_bool("overwrite", False, "Start over in a --workdir that holds a run of another "
                  "config (its checkpoints, metrics and summary are deleted).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with no arguments, as "
                  "on a Cloud TPU pod slice (it finds its peers itself).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs "
                    "outside Cloud TPU (GPU clusters, CPU processes on one machine).")
flags.DEFINE_integer("num_processes", None, "With --coordinator_address: how many processes.")
flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's index.")
# lock_config: a misspelled --config.key is an error, not a silently ignored flag.
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a variant: "
                                "experiments/default.py:digits", lock_config=True)


def main(argv):
  del argv
  from nin_jax import preemption
  # From the start: a signal during start-up or compilation stops the run after its first step,
  # at a checkpoint. jax.distributed.initialize then takes SIGTERM over (nin_jax/preemption.py).
  with preemption.stop_on_signals():
    _main()
    signum = preemption.received()
  if signum is not None:  # it came after the last training step: the run or sweep is complete
    print(f"{preemption.signal_name(signum)} came after training had ended: finished, nothing "
          "to resume", file=sys.stderr, flush=True)


def _main():
  # TensorFlow only feeds the input pipeline and gs:// paths, and must not take GPU/TPU memory
  # from JAX: nin_jax.data.tensorflow() hides the accelerators from it wherever it is first
  # needed, and runs that need none never import it.
  import jax
  FLAGS = flags.FLAGS
  try:
    if FLAGS.coordinator_address:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes only
      jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id)
    elif FLAGS.multihost:
      jax.distributed.initialize()
  except Exception as e:  # noqa: BLE001 -- jax raises ValueError, RuntimeError, XlaRuntimeError
    how = ("--multihost is for a Cloud TPU pod slice, where JAX finds its peers itself; elsewhere "
           "pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I, or neither "
           "for one host" if FLAGS.multihost else
           f"is process 0 running and is {FLAGS.coordinator_address} reachable from here?")
    sys.exit(f"error: jax.distributed.initialize failed ({_one_line(e)[:300]}); {how}")

  from nin_jax import provenance
  settings = ", ".join(f"{k}={v}" for k, v in provenance.environment().items())
  try:  # the devices JAX_PLATFORMS, CUDA_VISIBLE_DEVICES... name must exist: before any write
    jax.devices()
  except RuntimeError as e:
    sys.exit(f"error: JAX cannot start its devices ({_one_line(e)[:300]}); the environment "
             f"settings that choose them here: {settings or 'none'}")
  from nin_jax import checkpointing, files, preemption
  checkpointing.quiet_orbax_logs()
  if settings:  # each run's provenance records them too
    logging.info("Environment settings that can change results or devices: %s", settings)
  from nin_jax.errors import NinError
  config = flags.FLAGS.config
  try:
    _run(config)
  except preemption.Preempted as e:  # one line; 128 + the signal's number (143: SIGTERM)
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_status)
  except NinError as e:  # bad input or a run that cannot go on: one line, no traceback
    sys.exit(f"error: {e}")
  except OSError as e:  # a file system refusing: disk full, no permission, a read-only mount
    failure = files.write_failure("a file", e.filename or files.resolve(FLAGS.workdir), e)
    sys.exit(f"error: {failure}; fix that, then relaunch the same command (a run resumes from "
             "its last checkpoint, if it has one)")
  except Exception as e:  # noqa: BLE001 -- a bug: one line here, the whole traceback in a file
    import tempfile
    import traceback
    with tempfile.NamedTemporaryFile("w", prefix="nin_jax_traceback_", suffix=".txt",
                                     delete=False) as f:
      traceback.print_exc(file=f)
    sys.exit(f"error: unexpected {type(e).__name__}: {_one_line(e)[:300]} (a bug in nin-jax: "
             f"please report it with the traceback, saved in {f.name})")


def _run(config):
  """The run or sweep that launch.py's flags and `config` ask for."""
  from nin_jax import files, sweep, train
  FLAGS = flags.FLAGS
  # Every path the user typed, resolved once, here: relative to where the command was started.
  workdir = files.resolve(FLAGS.workdir)
  config.data_dir = files.resolve(config.data_dir)
  config.npz_path = files.resolve(config.npz_path)
  files.check_reachable(workdir, "--workdir")
  if not files.is_remote(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
    sys.exit(f"error: --workdir={workdir} is a file, not a folder; pick another --workdir")
  files.check_reachable(config.data_dir, "--config.data_dir")
  files.check_reachable(config.npz_path, "--config.npz_path")
  if "ablation" in config:  # every arm x seed, then the report
    sweep.run_sweep(config, workdir, only_arms=FLAGS.arm, overwrite=FLAGS.overwrite)
  else:
    train.train_and_evaluate(config, workdir, overwrite=FLAGS.overwrite)


def parse_flags(argv):
  """absl's parsing, with every flag or config-file error as one line and a non-zero exit."""
  try:
    remaining = flags.FLAGS(argv)
    if flags.FLAGS.config is None:
      sys.exit("error: --config is required, for example --config=experiments/default.py:digits")
    "ablation" in flags.FLAGS.config  # the config file is loaded lazily: load it here
    _check_flag_combinations(flags.FLAGS)
    return remaining
  except AttributeError as e:  # a --config.x.y override that names no field
    if "get_config" in str(e):
      sys.exit("error: the --config file defines no get_config(variant) function; a config "
               "file returns an ml_collections.ConfigDict from it (see experiments/default.py)")
    name, _, hint = _one_line(e).replace("'", "").replace('"', '').partition(" Did you mean")
    sys.exit(f"error: --config has no field {name!r}" + (f"; did you mean{hint}" if hint else ""))
  except (flags.Error, OSError, KeyError, TypeError, ValueError) as e:
    sys.exit(f"error: {_one_line(e)}")
  except Exception as e:  # noqa: BLE001 -- the config file's own code failed (SyntaxError, ...)
    where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
    sys.exit(f"error: the --config file failed to load{where}: {type(e).__name__}: "
             f"{_one_line(e)[:300]}")


def _check_flag_combinations(FLAGS):
  """Flags that only work together, or not at all: one line each, before anything starts."""
  multi = ("--coordinator_address", "--num_processes", "--process_id")
  given = [name for name in multi if getattr(FLAGS, name[2:]) is not None]
  if given and len(given) < 3:
    missing = [name for name in multi if name not in given]
    sys.exit(f"error: {', '.join(given)} needs {' and '.join(missing)} as well: "
             "a multi-process run takes all three (--coordinator_address=HOST:PORT of process 0, "
             "--num_processes=N, --process_id=0..N-1)")
  if given and FLAGS.multihost:
    sys.exit("error: --multihost and --coordinator_address exclude each other: --multihost finds "
             "its peers on a Cloud TPU pod slice; elsewhere give the coordinator, not both")
  if given and not 0 <= FLAGS.process_id < FLAGS.num_processes:
    sys.exit(f"error: --process_id={FLAGS.process_id} must be in 0..{FLAGS.num_processes - 1} "
             f"for --num_processes={FLAGS.num_processes}")
  if FLAGS.arm and "ablation" not in FLAGS.config:
    sys.exit("error: --arm needs an ablation config, such as experiments/ablate_head.py")
  if not FLAGS.workdir.strip():
    sys.exit("error: --workdir is empty; give a folder, for example --workdir=/tmp/nin_digits")


def _one_line(error):
  """The gist of an error whose text may span lines or carry a traceback of the config file."""
  lines = [line.strip() for line in str(error).replace("\\n", "\n").splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]  # the config file's own exception
    # nin-jax's own errors (a bad config string, experiments/default.py) read as written
    lines = [re.sub(r"^nin_jax\.errors\.\w+: ", "", line) for line in lines]
  return " ".join(lines).replace("\\'", "'")


if __name__ == "__main__":
  from nin_jax import preemption
  with preemption.stop_on_signals():  # already while the flags and the config file load
    app.run(main, flags_parser=parse_flags)
