r"""Train and evaluate NIN: `python launch.py --config=experiments/default.py:digits --workdir=DIR`.

An ablation config (experiments/ablate_*.py) runs every arm x seed and writes a report.

Thin on purpose: flags, process set-up (TensorFlow kept off the accelerators, jax.distributed on
several hosts), then `nin_jax.train.train_and_evaluate`. Relaunching with the same --workdir
resumes from the latest checkpoint there.
"""
import os
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
  # TensorFlow only feeds the input pipeline; it must not take GPU/TPU memory from JAX.
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU")

  import jax
  if flags.FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes only
    jax.distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                               flags.FLAGS.process_id)
  elif flags.FLAGS.multihost:
    jax.distributed.initialize()

  from nin_jax import checkpointing, sweep, train
  checkpointing.quiet_orbax_logs()
  from nin_jax.errors import NinError
  config = flags.FLAGS.config
  if flags.FLAGS.arm and "ablation" not in config:
    sys.exit("error: --arm needs an ablation config, such as experiments/ablate_head.py")
  try:
    if "ablation" in config:  # every arm x seed, then the report
      sweep.run_sweep(config, flags.FLAGS.workdir, only_arms=flags.FLAGS.arm,
                      overwrite=flags.FLAGS.overwrite)
    else:
      train.train_and_evaluate(config, flags.FLAGS.workdir, overwrite=flags.FLAGS.overwrite)
  except NinError as e:  # bad input or a run that cannot go on: one line, no traceback
    sys.exit(f"error: {e}")


def parse_flags(argv):
  """absl's parsing, with every flag or config-file error as one line and a non-zero exit."""
  try:
    remaining = flags.FLAGS(argv)
    if flags.FLAGS.config is None:
      sys.exit("error: --config is required, for example --config=experiments/default.py:digits")
    "ablation" in flags.FLAGS.config  # the config file is loaded lazily: load it here
    return remaining
  except AttributeError as e:  # a --config.x.y override that names no field
    name, _, hint = _one_line(e).replace("'", "").replace('"', '').partition(" Did you mean")
    sys.exit(f"error: --config has no field {name!r}" + (f"; did you mean{hint}" if hint else ""))
  except (flags.Error, OSError, KeyError, TypeError, ValueError) as e:
    sys.exit(f"error: {_one_line(e)}")


def _one_line(error):
  """The gist of an error whose text may span lines or carry a traceback of the config file."""
  lines = [line.strip() for line in str(error).replace("\\n", "\n").splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]  # the config file's own exception
  return " ".join(lines).replace("\\'", "'")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
