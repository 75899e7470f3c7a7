"""Orbax checkpoints of the whole train state, kept in `<workdir>/checkpoints/<step>/`.

The state holds params, optimizer state, step and the base RNG key. The data position needs no
entry of its own: the batch of a step is a function of (seed, step) (see data.train_batch).
"""
import logging

import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath


class _QuietOrbax(logging.Filter):
  """Orbax logs every step of every save at INFO; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logs():
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())


def create_manager(workdir, *, every_steps: int, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=keep,
                                         create=True)
  return ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=options)


def restore_latest(manager: ocp.CheckpointManager, state):
  """The latest checkpoint, restored into the structure (and shardings) of `state`; else `state`."""
  step = manager.latest_step()
  if step is None:
    return state
  logging.info("Resuming from checkpoint at step %d in %s", step, manager.directory)
  return manager.restore(step, args=ocp.args.StandardRestore(state))


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False):
  """Saves `state` (at `step`: a Python int, so the device need not be waited for) if its step is
  due, or `force`. The write finishes in the background. A step already saved (a finished run
  relaunched) is left as it is.
  """
  if step == manager.latest_step():
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_params(workdir):
  """The params of the latest checkpoint in `workdir`, as saved, without building a train state."""
  manager = ocp.CheckpointManager(epath.Path(workdir) / "checkpoints")
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: has this run started?")
    return manager.restore(step, args=ocp.args.StandardRestore())["params"]
  finally:
    manager.close()
