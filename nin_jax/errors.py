"""Errors that `launch.py` reports as one line and a non-zero exit, without a traceback.

Each message says what is wrong and how to fix it.
"""


class NinError(Exception):
  """Bad input or a run that cannot go on."""


class ConfigError(NinError, ValueError):
  """A config or flag value that cannot work."""


class DataError(NinError, ValueError):
  """Data that cannot be used as asked."""


class DivergedError(NinError, RuntimeError):
  """The training itself failed (a result of its settings, not of the machine): `step`, the step
  it was seen at; `loss`, the loss there (float; NaN or Inf where that is what failed). A run
  alone stops with it; in a sweep it is that run's result (nin_jax/sweep.py)."""

  def __init__(self, message: str, step: int, loss: float):
    super().__init__(message)
    self.step, self.loss = step, loss


class TrainingStuckError(DivergedError):
  """The loss sits at ln(num_classes): the class-map ReLUs died (NIN_REFERENCE.md)."""


class NonFiniteLossError(DivergedError):
  """The loss (or the gradient norm) became NaN or Inf."""


class CheckpointError(NinError, RuntimeError):
  """Checkpoints exist but none can be restored."""


class StorageError(NinError, OSError):
  """A file or checkpoint could not be written (disk full, no permission, unreachable store)."""


def one_line(error: BaseException, limit: int | None = 300) -> str:
  """An exception's text on one line (whitespace collapsed), cut to `limit` characters."""
  return " ".join(str(error).split())[:limit]
