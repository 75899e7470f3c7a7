"""Orbax checkpoints of the whole train state, kept in `<workdir>/checkpoints/<step>/`.

The state holds params, optimizer state, step and the base RNG key. The data position needs no
entry of its own: the batch of a step is a function of (seed, step) (see data.train_batch).
"""
import logging

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath

from nin_jax.errors import CheckpointError


class _QuietOrbax(logging.Filter):
  """Orbax logs every step of every save at INFO; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logs():
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())


def create_manager(workdir, *, every_steps: int, keep: int) -> ocp.CheckpointManager:
  # Every `every_steps` steps exactly (orbax would also save the first step by default), and
  # cleanup_tmp_directories: a write cut short by a kill leaves a tmp folder; drop it at start.
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
      max_to_keep=keep, create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=options)


def restore_latest(manager: ocp.CheckpointManager, state, workdir):
  """The newest readable checkpoint, restored into the structure (and shardings) of `state`.

  An unreadable checkpoint (a truncated or damaged file) is skipped with a warning that names it,
  and moved to `<workdir>/damaged_checkpoints/` so that its step can be written again; the next
  older one is tried. Returns `state` itself only when there is no checkpoint at all: with
  checkpoints present but none readable, it raises rather than silently start from scratch.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  damaged = []
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      logging.warning("Checkpoint step %d in %s is unreadable, skipped (%s: %s)", step,
                      manager.directory, type(e).__name__, str(e).splitlines()[0][:200])
      damaged.append(step)
      continue
    if damaged:
      _move_aside(manager, damaged, epath.Path(workdir) / "damaged_checkpoints")
    logging.info("Resuming from checkpoint step %d in %s", step, manager.directory)
    return restored
  if steps:
    raise CheckpointError(f"none of the {len(steps)} checkpoints in {manager.directory} "
                          f"(steps {steps}) can be read; move that folder aside to start over")
  return state


def _move_aside(manager, steps, destination):
  if jax.process_index() == 0:
    destination.mkdir(parents=True, exist_ok=True)
    for step in steps:
      (epath.Path(manager.directory) / str(step)).rename(destination / f"step_{step}")
    logging.warning("Moved damaged checkpoint steps %s to %s", steps, destination)
  manager.reload()


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False):
  """Saves `state` (at `step`: a Python int, so the device need not be waited for) if its step is
  due, or `force`. The write finishes in the background. A step already saved (a finished run
  relaunched) is left as it is.
  """
  if step == manager.latest_step():
    return False
  if jax.process_count() > 1:
    # pmap's replicated outputs live on this host's devices only; orbax writes global arrays.
    state = jax.tree.map(ocp.utils.fully_replicated_host_local_array_to_global_array, state)
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_params(workdir):
  """The params of the latest checkpoint in `workdir`, as saved, without building a train state."""
  manager = ocp.CheckpointManager(epath.Path(workdir) / "checkpoints",
                                  item_handlers=ocp.StandardCheckpointHandler())
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: has this run started?")
    # Restore onto this process's first device, whatever devices and hosts wrote it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step))
    return manager.restore(step, args=ocp.args.StandardRestore(target))["params"]
  finally:
    manager.close()
