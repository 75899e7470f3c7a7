"""Guards on a run's workdir: one launch at a time, and one config per workdir."""
import fcntl
import json
import logging
import os

from etils import epath

from nin_jax import checkpointing, files
from nin_jax.errors import ConfigError

# Fields that change neither what is trained nor the compiled programs (train.program_key).
BOOKKEEPING = {"data_dir", "download", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "keep_checkpoints"}
# Every field that changes how a run is observed or run, not what it trains (the update, the
# data order, the model): a relaunch may change these, and check_or_clear says which. The
# evaluation's batch and crop, the stuck-loss guard, and the micro-batch (the same update to
# float rounding: tests/train_test.py), the usual fixes after running out of memory. Not the
# micro-batch of a model with BatchNorm: each micro-batch is normalised with its own statistics
# (train.train_step), so another size is another update, as another batch size would be.
RESUMABLE = BOOKKEEPING | {"eval_batch_size", "microbatch_size", "stuck_loss_steps",
                           "stuck_loss_tolerance", "streaming.eval_crop_fraction"}
CHANGES_FILE = "config_changes.jsonl"
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json", "config.json", "dataset.json",
             CHANGES_FILE)


class WorkdirInUseError(ConfigError):
  """Another launch holds the workdir's lock."""


def lock(workdir):
  """Takes `workdir/.lock` for this process's lifetime (the OS drops it if the process dies).

  Returns the open lock file; keep it referenced. Object stores (gs://) have no locks: there the
  guard is skipped.
  """
  path = epath.Path(workdir)
  if "://" in os.fspath(workdir):
    return None
  handle = open(path / ".lock", "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise WorkdirInUseError(f"workdir {workdir} is in use by {holder}; wait for that launch to "
                            "finish, or pick another --workdir") from None
  handle.seek(0)
  handle.truncate()
  handle.write(f"pid {os.getpid()}\n")
  handle.flush()
  return handle


def flatten(tree, prefix=""):
  """{"model": {"head": "gap"}} -> {"model.head": "gap"}: nested dicts to dotted keys."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _compare(saved: dict, config: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
  """The fields where `saved` and `config` differ, {dotted name: (saved value, new value)}: those
  that change what is trained, and the RESUMABLE ones."""
  old = flatten(saved)
  new = flatten(json.loads(json.dumps(config)))  # tuples -> lists
  changes = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
             if old.get(k) != new.get(k)}
  resumable = RESUMABLE - ({"microbatch_size"} if new.get("model.norm") == "batch" else set())
  return ({k: v for k, v in changes.items() if k not in resumable},
          {k: v for k, v in changes.items() if k in resumable})


def differing_fields(saved: dict, config: dict) -> dict[str, tuple]:
  """{dotted name: (saved value, new value)} where they differ in what is trained (RESUMABLE
  fields aside)."""
  return _compare(saved, config)[0]


def _shown(fields: dict[str, tuple]) -> str:
  return ", ".join(f"{k} ({old!r} there, {new!r} now)" for k, (old, new) in fields.items())


def record_changes(workdir, changes: dict[str, tuple], step: int):
  """Says in the log, and appends to `<workdir>/config_changes.jsonl` (one JSON object a line:
  {"time": ISO 8601 UTC, "step": the step resumed from, "changed": {field: [before, after]}}),
  that a relaunch changed `changes` (RESUMABLE fields) of the run in `workdir`."""
  import datetime
  logging.warning("Resuming with other settings that do not change what is trained: %s; "
                  "recorded in %s", _shown(changes), epath.Path(workdir) / CHANGES_FILE)
  line = json.dumps({"time": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"), "step": step, "changed": {k: list(v) for k, v in changes.items()}})
  path = epath.Path(workdir) / CHANGES_FILE
  before = path.read_text() if path.exists() else ""
  files.write_text(path, before + line + "\n")  # atomic: a cut write keeps the older lines


def check_or_clear(workdir, config, overwrite: bool) -> dict[str, tuple]:
  """Refuses a workdir that holds a run of another config, unless `overwrite` (then clears it).

  Raises ConfigError naming the fields that differ in what is trained. Returns the RESUMABLE
  fields that differ from the run's ({} for a new run): the caller records them
  (`record_changes`) when it resumes.
  """
  path = epath.Path(workdir)
  if overwrite:
    for name in RUN_FILES:
      target = path / name
      if target.is_dir():
        target.rmtree()
      elif target.exists():
        target.unlink()
    for events in path.glob("events.out.tfevents.*"):
      events.unlink()
    return {}
  old = _saved_or_recorded(path, "config.json", "run config", "config")
  if old is None:
    return {}  # nothing to resume: this launch writes its own config.json
  if not (checkpointing.steps_on_disk(path) or (path / "summary.json").exists()):
    return {}  # a launch that failed before training anything: this one writes its config.json
  fields, settings = _compare(old, config.to_dict())
  if fields:
    raise ConfigError(f"workdir {workdir} holds a run with another config: "
                      f"{_shown(dict(list(fields.items())[:6]))}. Relaunch with that config to "
                      "resume it, pick a new --workdir, or pass --overwrite to start over in "
                      "this one")
  return settings


def check_dataset(workdir, identity: dict):
  """Refuses to resume a run on other data than it trained on, then records `identity` (the
  dataset's name and its splits' sizes) in the workdir's dataset.json.

  data_dir is a bookkeeping field (the same data may move from a local copy to gs://), so the
  config alone cannot tell that a relaunch points at another dataset under the same name (a
  stand-in, another TFDS version); its sizes can. Raises ConfigError (one line) when the
  workdir holds a checkpoint trained on data of other sizes."""
  path = epath.Path(workdir)
  saved = _saved_or_recorded(path, "dataset.json", "run dataset", "dataset", required=False)
  if saved is not None and checkpointing.steps_on_disk(path):
    differ = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k, v) != v}
    if differ:
      shown = ", ".join(f"{k} {old} there, {new} now" for k, (old, new) in differ.items())
      raise ConfigError(f"workdir {workdir} was trained on other data than --config.data_dir "
                        f"holds now ({shown}); point --config.data_dir at the data it trained "
                        "on, pick a new --workdir, or pass --overwrite to start over")
  files.write_json(path / "dataset.json", identity)


def _saved_or_recorded(path, name: str, what: str, key: str, required: bool = True
                       ) -> dict | None:
  """What `path/name` (config.json, dataset.json) says trained the run in `path`, read from the
  newest checkpoint's copy (checkpointing.recorded) where that file is missing or unreadable,
  with one warning line. None where neither exists and there is no checkpoint. Where checkpoints
  exist but no copy says what trained them: raises ConfigError (one line) if `required`, else
  warns and returns None (dataset.json: runs older than it resume unchecked, as before)."""
  if not checkpointing.steps_on_disk(path):
    saved = files.read_json(path / name, what)
    return saved if isinstance(saved, dict) else None
  saved = files.read_json(path / name, what, warn=False)  # the line below says what happens
  if isinstance(saved, dict):
    return saved
  state = "unreadable" if (path / name).exists() else "missing"
  copy = checkpointing.recorded(path)
  if copy is None or not isinstance(copy[1].get(key), dict):
    if not required:
      logging.warning("%s is %s and no checkpoint holds a copy: the %s is not checked",
                      path / name, state, what)
      return None
    raise ConfigError(f"{path / name} is {state} and no checkpoint in {path / 'checkpoints'} "
                      f"holds a copy, so they cannot be matched to a {key}; put {name} back "
                      "(from a backup), or pick another --workdir")
  step, record = copy
  logging.warning("%s is %s: using the copy in checkpoint step %d (a launch that resumes "
                  "writes the file again)", path / name, state, step)
  return record[key]
