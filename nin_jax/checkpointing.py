"""Orbax checkpoints of the whole train state, kept in `<workdir>/checkpoints/<step>/`.

The state holds params, model state (BatchNorm's running averages; {} without), optimizer state,
step and the base RNG key. The data position needs no entry of its own: the batch of a step is a
function of (seed, step) (see data.train_indices).
"""
import asyncio
import logging
import sys
import threading

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath

from nin_jax import files
from nin_jax import placement as placement_lib
from nin_jax.errors import CheckpointError


class _QuietOrbax(logging.Filter):
  """Orbax logs every step of every save at INFO; keep its warnings only.

  Its errors go too: a failed background write is logged by orbax's threads (and by asyncio) as
  several long tracebacks, while `save` and `finish` below re-raise that same failure as one line
  that names the step, the cause and the checkpoints kept.
  """

  def filter(self, record):
    if "orbax" in record.pathname:
      return record.levelno == logging.WARNING
    return not (record.name == "asyncio" and record.levelno >= logging.ERROR)


def quiet_orbax_logs():
  """Orbax's INFO logs and the error noise of a failed background write off; see _QuietOrbax."""
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
  # When one write of a checkpoint fails, tensorstore completes the other writes' futures after
  # orbax closed their event loop, and reports an "Event loop is closed" traceback for each as
  # unraisable. The failure itself reaches the user as one line from `save`.
  default_hook = sys.unraisablehook

  def unraisablehook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      default_hook(unraisable)

  sys.unraisablehook = unraisablehook


def create_manager(workdir, *, every_steps: int, keep: int, placement=None,
                   record: dict | None = None) -> ocp.CheckpointManager:
  """Orbax's manager for `<workdir>/checkpoints`. A run placed on one host's devices
  (`placement.is_local`) in a multi-process job is written by this process alone: orbax's
  barriers then span this process only, under a key of the run's own. `record` (JSON-able: what
  trained the run, {"config": ..., "dataset": ...}) is written into every checkpoint's metadata
  (orbax's per-step custom metadata); `recorded` reads it back."""
  # Every `every_steps` steps exactly (orbax would also save the first step by default), and
  # cleanup_tmp_directories: a write cut short by a kill leaves a tmp folder; drop it at start.
  directory = epath.Path(workdir) / "checkpoints"
  kwargs, registry = dict(create=True), None
  if placement is not None and placement.is_local and jax.process_count() > 1:
    directory.mkdir(parents=True, exist_ok=True)  # orbax's create=True needs every process
    me = jax.process_index()
    _signal_keys_of_this_process(me)
    this_process = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me},
        barrier_sync_key_prefix=f"{epath.Path(workdir).parent.name}_{epath.Path(workdir).name}")
    kwargs = dict(create=False, multiprocessing_options=this_process)
    handler = _ThisProcessHandler(this_process)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
      registry.add("default", args, handler)
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
      max_to_keep=keep, cleanup_tmp_directories=True, **kwargs)
  is_local = bool(placement is not None and placement.is_local)
  manager = (_LocalRunManager if is_local else ocp.CheckpointManager)(
      directory, options=options, handler_registry=registry)
  manager.is_local = is_local
  manager.record = record
  return manager


def recorded(workdir) -> tuple[int, dict] | None:
  """(step, record) of the newest checkpoint in `<workdir>/checkpoints` whose metadata holds the
  record `create_manager` was given; None when none does (no checkpoint, or all written before
  checkpoints carried one, or their metadata files unreadable)."""
  steps = steps_on_disk(workdir)
  if not steps:
    return None
  # a manager that knows the item's handler and creates nothing: orbax warns otherwise (a
  # read-only manager says so in three lines, an unknown item in one more per step)
  manager = ocp.CheckpointManager(epath.Path(workdir) / "checkpoints",
                                  item_handlers=ocp.StandardCheckpointHandler(),
                                  options=ocp.CheckpointManagerOptions(create=False))
  try:
    for step in reversed(steps):
      try:
        record = manager.metadata(step).custom_metadata
      except Exception:  # noqa: BLE001 -- a damaged or missing metadata file: try older ones
        continue
      if isinstance(record, dict) and isinstance(record.get("config"), dict):
        return step, record
    return None
  finally:
    manager.close()


class _LocalRunManager(ocp.CheckpointManager):
  """The manager of a run placed on some devices of one host. Orbax's own manager asks JAX's
  preemption service at every save decision whether the hosts reached a preemption sync point,
  with the step of the run asking; several runs of a sweep, at different steps, would then feed
  that service steps that mean nothing together (seen: the sync point reached by one run's
  manager, the notice lost, every run training to its end). Here the training loop decides
  (nin_jax/preemption.py, whose one watcher per process asks the service)."""

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class _WrittenByThisProcess:
  """Orbax's NumpyHandler (and ScalarHandler, its subclass) writes an array's data on process 0
  only, whatever the manager's primary host: a run that host 1 of a sweep trained got
  checkpoints with no data in them, which no relaunch could read (seen in this project's
  2-process sweep stopped by SIGTERM). A placed run's state is this process's alone (see save),
  so this process writes it. The loop is orbax 0.12.8's `_background_serialize` without that
  condition (requirements.txt pins the version; multihost_test's sweep resume holds it)."""

  async def _background_serialize(self, values, infos, args=None):
    from orbax.checkpoint._src.serialization import ocdbt_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils
    writes = []
    for value, info, arg in zip(values, infos, args):
      await info.await_path_creation()
      spec = ts_utils.build_array_write_spec(
          info=info, arg=arg, global_shape=value.shape, local_shape=value.shape,
          dtype=value.dtype, use_ocdbt=info.is_ocdbt_checkpoint,
          process_index=ocdbt_utils.get_process_index_for_subdir(
              use_ocdbt=info.is_ocdbt_checkpoint,
              override_ocdbt_process_id=self._override_ocdbt_process_id),
          metadata_key=self._metadata_key)
      writes.append(self._open_and_write(value, spec.json, info.ts_context))
    await asyncio.gather(*writes)


class _ThisProcessNumpyHandler(_WrittenByThisProcess, ocp.type_handlers.NumpyHandler):
  pass


class _ThisProcessScalarHandler(_WrittenByThisProcess, ocp.type_handlers.ScalarHandler):
  pass


class _ThisProcessHandler(ocp.StandardCheckpointHandler):
  """The item handler of a run placed on one host's devices in a multi-process job: its
  metadata (`_METADATA`, written by the handler's primary host, process 0 unless told) and its
  arrays' data written by this process, which alone trains the run."""

  def __init__(self, multiprocessing_options):
    super().__init__(multiprocessing_options=multiprocessing_options)
    from orbax.checkpoint._src.serialization import type_handler_registry as registry
    mine = {ocp.type_handlers.NumpyHandler: _ThisProcessNumpyHandler(),
            ocp.type_handlers.ScalarHandler: _ThisProcessScalarHandler()}
    handlers = [(t, mine.get(type(h), h)) for t, h in registry._DEFAULT_TYPE_HANDLERS]
    # StandardCheckpointHandler keeps its PyTreeCheckpointHandler in _impl and takes no registry
    self._impl = ocp.PyTreeCheckpointHandler(
        multiprocessing_options=multiprocessing_options,
        type_handler_registry=registry.create_type_handler_registry(*handlers))


def _signal_keys_of_this_process(process_index: int):
  """Orbax names the signals of a save (`awaitable_signals_contract_<operation>/...`, in
  jax.distributed's key-value store, which every process shares) by a per-process counter of
  operations. Hosts saving runs of their own (a sweep) then use the same names for different
  saves: one host deleted or waited for the other's keys, and a write hung 5 minutes and failed
  with DEADLINE_EXCEEDED (seen in this project's 2-process sweep test). Suffixing the process
  index, as orbax's own per-process directory creation does, keeps each host's keys its own.
  Every manager of such a process is placed, so the process's saves all agree on the names."""
  from orbax.checkpoint._src.futures import future
  suffix = f"_process_{process_index}"
  contract = future.AwaitableSignalsContract
  if not contract.awaitable_signals_contract_prefix.endswith(suffix):
    contract.awaitable_signals_contract_prefix += suffix


def restore_latest(manager: ocp.CheckpointManager, state, workdir):
  """The newest readable checkpoint, restored into the structure (and shardings) of `state`.

  An unreadable checkpoint (a truncated or damaged file) is skipped with a warning that names it,
  and moved to `<workdir>/damaged_checkpoints/` so that its step can be written again; the next
  older one is tried. Returns `state` itself only when there is no checkpoint at all: with
  checkpoints present but none readable, it raises rather than silently start from scratch.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  damaged = []
  if _host_local(manager):  # restored as numpy, as it was saved (see save)
    state = jax.device_get(state)
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
  if jax.process_index() == 0 or getattr(manager, "is_local", False):
    destination.mkdir(parents=True, exist_ok=True)
    for step in steps:
      (epath.Path(manager.directory) / str(step)).rename(destination / f"step_{step}")
    logging.warning("Moved damaged checkpoint steps %s to %s", steps, destination)
  manager.reload()


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False):
  """Saves `state` (at `step`: a Python int, so the device need not be waited for) if its step is
  due, or `force`. The write finishes in the background. A step already saved (a finished run
  relaunched) is left as it is.

  Raises StorageError (one line: the step whose write failed, the cause, the checkpoints kept)
  when this write or the previous background one fails, e.g. on a full disk. Orbax then keeps
  the older checkpoints (it deletes old ones only after a write succeeds), and a relaunch once
  space is freed resumes from the newest of them.
  """
  if step == manager.latest_step():
    return False
  if not force and not manager.should_save(step):
    return False
  _wait(manager)  # the previous write: its failure is reported with its own step
  if _host_local(manager):
    # A run placed on this host's devices: orbax refuses arrays of one host when several
    # processes run, so its state is written from host memory (small: the NIN models' ~1M
    # parameters and momentum).
    state = jax.device_get(state)
  elif jax.process_count() > 1:
    state = placement_lib.to_global(state)  # orbax writes global arrays
  if not getattr(manager, "is_local", False):
    try:
      return manager.save(step, args=ocp.args.StandardSave(state), force=force,
                          custom_metadata=getattr(manager, "record", None))
    except Exception as e:  # orbax/tensorstore wrap OSError in ValueError and others
      raise _write_failure(manager, step, e) from None
  # Runs side by side in one process: one checkpoint write at a time, to its end. Concurrent
  # writes of several managers failed in CI (orbax 0.12.8: FileNotFoundError for a step's
  # array_metadatas/process_0 while other runs were saving); a NIN state is a few MB.
  with _placed_writes:
    try:
      saved = manager.save(step, args=ocp.args.StandardSave(state), force=force,
                           custom_metadata=getattr(manager, "record", None))
    except Exception as e:  # noqa: BLE001
      raise _write_failure(manager, step, e) from None
    _wait(manager)
  return saved


_placed_writes = threading.Lock()


def _host_local(manager):
  """Whether `manager` belongs to a run placed on this host's devices in a multi-process job."""
  return getattr(manager, "is_local", False) and jax.process_count() > 1


def finish(manager: ocp.CheckpointManager):
  """Waits for the background write in flight and closes `manager`; raises as `save` does."""
  try:
    _wait(manager)
  finally:
    try:
      manager.close()  # waits again: a failed write would raise a second time, raw
    except Exception:  # noqa: BLE001 -- that failure was raised by _wait just now
      pass


def _wait(manager):
  in_flight = manager.latest_step()  # orbax lists a step as soon as its write starts
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _write_failure(manager, in_flight, e) from None


def _write_failure(manager, step, error):
  failure = files.write_failure(f"checkpoint step {step}", manager.directory, error)
  # what is on disk, finished: orbax's own list can already omit steps due for deletion
  directory = epath.Path(manager.directory)
  kept = sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and int(p.name) != step)
  failure.args = (f"{failure}. Checkpoints kept: "
                  f"{'steps ' + str(kept) if kept else 'none'}; free space (or fix the "
                  "cause) and relaunch the same command to resume"
                  f"{' from step ' + str(max(kept)) if kept else ''}",)
  return failure


def restore_params(workdir):
  """The params of the latest checkpoint in `workdir`, as saved, without building a train state."""
  return restore_variables(workdir)["params"]


def restore_variables(workdir):
  """The model's variables in the latest checkpoint in `workdir`, as model.apply takes them:
  {"params": ..., **model_state} ("batch_stats" too for a model with BatchNorm). Raises
  FileNotFoundError when there is no checkpoint."""
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
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    return {"params": restored["params"], **restored["model_state"]}
  finally:
    manager.close()


def steps_on_disk(workdir) -> list[int]:
  """The steps of the finished checkpoints in `<workdir>/checkpoints`, read from the folder
  names (orbax writes a step into a temporary folder and renames it when complete)."""
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
