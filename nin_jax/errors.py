"""Errors that `launch.py` reports as one line and a non-zero exit, without a traceback.

Each message says what is wrong and how to fix it.
"""


class NinError(Exception):
  """Bad input or a run that cannot go on."""


class ConfigError(NinError, ValueError):
  """A config or flag value that cannot work."""


class DataError(NinError, ValueError):
  """Data that cannot be used as asked."""


class TrainingStuckError(NinError, RuntimeError):
  """The loss sits at ln(num_classes): the class-map ReLUs died (NIN_REFERENCE.md)."""


class NonFiniteLossError(NinError, RuntimeError):
  """The loss became NaN or Inf."""


class CheckpointError(NinError, RuntimeError):
  """Checkpoints exist but none can be restored."""


class StorageError(NinError, OSError):
  """A file or checkpoint could not be written (disk full, no permission, unreachable store)."""
