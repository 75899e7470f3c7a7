"""A run's metrics, written twice: `metrics.jsonl` (one JSON object a line, for scripts and the
ablation report) and TensorBoard event files (`tensorboard --logdir <workdir>`). Only the chief
process (index 0) writes.

A finished run also gets its hparams and final errors in TensorBoard's HParams dashboard
(`write_hparams`), and a sweep's folder the list of swept fields and metrics
(`write_hparams_config`); `tensorboard --logdir <sweep workdir>` then shows arms x seeds in one
table. These event files are built from TensorBoard's own protos, without TensorFlow.
"""
import contextlib
import json
import logging
import os
import socket
import struct
import time

from etils import epath

from nin_jax import files

TEST_ERROR_TAG = "hparams/final_test_error_percent"
VALIDATION_ERROR_TAG = "hparams/final_validation_error_percent"
METRIC_DISPLAY_NAMES = {VALIDATION_ERROR_TAG: "validation error (%)",
                        TEST_ERROR_TAG: "test error (%)"}
# One file each, at a fixed name, replaced whole when written again: the HParams plugin keeps the
# first hparams it reads for a run, so a second file (a relaunched run) would hide newer values.
# "tfevents" in the name is what TensorBoard looks for; digits sort first, so these files are read
# after the timestamped ones of the training run.
HPARAMS_FILE = "events.out.tfevents.hparams"
HPARAMS_CONFIG_FILE = "events.out.tfevents.hparams_config"


class MetricsWriter:
  """Appends records such as {"step": 20, "loss": 0.31, ...} to `workdir/metrics.jsonl`, and each
  value as a TensorBoard scalar to an event file of this launch in `workdir`.

  A resumed run continues the file from its checkpoint's step: on opening, the log is cut back
  to its readable records of steps <= `first_step` (rewritten atomically), so a line cut by a
  kill and the records of steps the resumed run will repeat are gone, and the log never holds
  two records of one step. Each launch writes its own event file; TensorBoard merges a folder's
  files (its default data server keeps the later file's value of a step repeated after a resume;
  the legacy loader shows both), and a record cut by a kill ends that file's reading.
  The events are framed here, as `_write_events` does, not by TensorFlow's summary writer:
  importing TensorFlow took 12 s of every launch here (measured), for runs that need it nowhere
  else (data.tensorflow).
  Raises StorageError (one line) when a write fails, e.g. on a full disk.
  """

  def __init__(self, workdir, first_step: int = 0, enabled: bool = True):
    self._jsonl = self._events = None
    if enabled:
      self._path = epath.Path(workdir) / "metrics.jsonl"
      if self._path.exists():
        kept = [r for r in read(workdir) if r.get("step", 0) <= first_step]
        files.write_text(self._path, "".join(json.dumps(r) + "\n" for r in kept))
      # epath's open is a context manager on some backends (gs:// through TensorFlow): entered
      self._files = contextlib.ExitStack()
      self._jsonl = self._files.enter_context(self._path.open("a"))
      # TensorFlow's name pattern, which TensorBoard looks for; the pid keeps launches apart, and
      # the nanosecond clock keeps a process's files in the order they were written (TensorBoard
      # reads a run's files sorted by name)
      self._events_path = epath.Path(workdir) / (
          f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}."
          f"{time.time_ns():020d}.v2")
      self._events = self._files.enter_context(self._events_path.open("ab"))
      self._append_events([], 0, first=True)

  def write(self, record: dict):
    if self._jsonl is None:
      return
    try:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
    except Exception as e:  # OSError; tf.errors.OpError on gs:// (not an OSError)
      raise files.write_failure(f"the metrics of step {record['step']}", self._path, e) from None
    from tensorboard.plugins.scalar import summary_v2 as scalar_summary
    self._append_events([scalar_summary.scalar_pb(name, float(value))
                         for name, value in record.items() if name != "step"], record["step"])

  def _append_events(self, summaries, step, first=False):
    try:
      self._events.write(_event_records(summaries, step, first))
      self._events.flush()
    except Exception as e:  # OSError; tf.errors.OpError on gs:// (not an OSError)
      raise files.write_failure(f"the TensorBoard events of step {step}", self._events_path,
                                e) from None

  def close(self):
    if self._jsonl is not None:
      self._jsonl = self._events = None
      try:
        self._files.close()
      except Exception:  # noqa: BLE001 -- a failed write has been reported by `write` already
        pass

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


DIVERGED_FILE = "diverged.json"


def diverged(run_dir) -> dict | None:
  """The record of a run of a sweep whose training diverged (`DivergedError`: a NaN or Inf loss,
  or the loss stuck at ln C): {"step", "loss", "reason", "message"}; None for any other run."""
  record = files.read_json(epath.Path(run_dir) / DIVERGED_FILE, "diverged-run record")
  return record if isinstance(record, dict) and "step" in record else None


def read(workdir) -> list[dict]:
  """The records of `workdir/metrics.jsonl`, oldest first; [] when there is none.

  Unreadable lines (a line cut by a kill, say) are skipped and counted in one warning line. Where
  a step appears twice (a log written by nin-jax before it cut logs back on resume), the later
  record wins, so steps come out ascending and once each.
  """
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  records, bad = {}, 0
  for line in path.read_bytes().decode(errors="replace").splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      records[int(record["step"])] = record
    except (ValueError, KeyError, TypeError):
      bad += 1
  if bad:
    logging.warning("%s: skipped %d unreadable line(s)", path, bad)
  return [records[step] for step in sorted(records)]


# ---------------------------------------------------------------------------------------------
# TensorBoard HParams
# ---------------------------------------------------------------------------------------------
def write_hparams(run_dir, hparams: dict, final_metrics: dict, trial_id: str, step: int,
                  start_time_secs: float | None = None):
  """Writes `run_dir/events.out.tfevents.hparams`: one finished HParams session.

  The file holds the session's start (the hparams, grouped under `trial_id`), a scalar summary
  per metric at `step`, and the session's end (status success). The run folder is the session;
  its other event files (the training curves) stay its own. Written again (a finished run
  relaunched), the file is replaced whole, so the dashboard shows one session with the new values.

  Args:
    run_dir: the run's folder (local or gs://), made if missing.
    hparams: {name: value}; bool, int, float and str kept, anything else (lists, tuples, None)
      as its str; numpy scalars as Python numbers. Use the names given to `write_hparams_config`.
    final_metrics: {scalar tag: value}, e.g. {TEST_ERROR_TAG: 1.67} (percent); None values are
      left out (the dashboard shows a blank).
    trial_id: the session group's name; sessions sharing one are shown as one row, with their
      metrics averaged (e.g. the arm's name groups its seeds; the run's name keeps them apart).
    step: the training step the metrics were measured at.
    start_time_secs: when the run started (seconds since the epoch); now if None.

  Raises StorageError (one line) when the file cannot be written.
  """
  from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
  from tensorboard.plugins.scalar import summary_v2 as scalar_summary
  start = summary_v2.hparams_pb({k: _hparam_value(v) for k, v in hparams.items()},
                                trial_id=trial_id, start_time_secs=start_time_secs)
  scalars = [scalar_summary.scalar_pb(tag, float(value))
             for tag, value in final_metrics.items() if value is not None]
  end = _hparams_summary("_hparams_/session_end_info", plugin_data_pb2.HParamsPluginData(
      session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS,
                                                      end_time_secs=time.time())))
  _write_events(epath.Path(run_dir) / HPARAMS_FILE, [start, *scalars, end], step,
                "the TensorBoard hparams")


def write_hparams_config(sweep_dir, hparams_domains: dict, metric_tags: list):
  """Writes `sweep_dir/events.out.tfevents.hparams_config`: the HParams dashboard's columns.

  Args:
    sweep_dir: the sweep's folder, above its runs' folders (local or gs://), made if missing.
    hparams_domains: {hparam name: the values it takes in the sweep}, shown as discrete domains
      (tensorboard sorts them).
      Values are converted as in `write_hparams`; a domain mixing ints and floats becomes
      floats, one mixing other types becomes strs. An empty list (or None) gives no domain.
    metric_tags: the scalar tags of `write_hparams`'s `final_metrics`, e.g. [TEST_ERROR_TAG];
      shown under their METRIC_DISPLAY_NAMES ("test error (%)"), others under their tag.

  Raises StorageError (one line) when the file cannot be written.
  """
  from tensorboard.plugins.hparams import summary_v2
  hparams = [summary_v2.HParam(name, _domain(values) if values else None)
             for name, values in hparams_domains.items()]
  metrics = [summary_v2.Metric(tag, display_name=METRIC_DISPLAY_NAMES.get(tag, tag))
             for tag in metric_tags]
  config = summary_v2.hparams_config_pb(hparams=hparams, metrics=metrics,
                                        time_created_secs=time.time())
  _write_events(epath.Path(sweep_dir) / HPARAMS_CONFIG_FILE, [config], 0,
                "the TensorBoard hparams config")


def _hparam_value(value):
  """`value` as the HParams plugin takes it: bool, int, float or str."""
  if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars
    value = value.item()
  return value if isinstance(value, (bool, int, float, str)) else str(value)


def _domain(values):
  from tensorboard.plugins.hparams import summary_v2
  values = list(dict.fromkeys(_hparam_value(v) for v in values))
  if all(isinstance(v, bool) for v in values):
    return summary_v2.Discrete(values, dtype=bool)
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    dtype = int if all(isinstance(v, int) for v in values) else float
    return summary_v2.Discrete(list(dict.fromkeys(map(dtype, values))), dtype=dtype)
  return summary_v2.Discrete(list(dict.fromkeys(map(str, values))), dtype=str)


def _hparams_summary(tag, plugin_data):
  """A summary holding HParams plugin data, as tensorboard's summary_v2._summary_pb makes it
  (whose session-end counterpart, summary.session_end_pb, needs TensorFlow)."""
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.plugins.hparams import metadata
  summary = summary_pb2.Summary()
  summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data),
                    tensor=metadata.NULL_TENSOR)
  return summary


def _event_records(summaries, step: int, first: bool = False) -> bytes:
  """`summaries` (tensorboard Summary protos) at `step` as TFRecord-framed Event records, the
  framing of TensorBoard's event files; `first`: the file-version record that starts a file."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  now = time.time()
  events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2",
                            source_metadata=event_pb2.SourceMetadata(writer="nin_jax.metrics"))
            ] if first else []
  events += [event_pb2.Event(wall_time=now, step=step, summary=s) for s in summaries]
  records = []
  for event in events:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    records.append(header + struct.pack("<I", masked_crc32c(header)) + data
                   + struct.pack("<I", masked_crc32c(data)))
  return b"".join(records)


def _write_events(path, summaries, step: int, what: str):
  """`summaries` (tensorboard Summary protos) at `step`, as an event file at `path` (atomic).

  The TFRecord framing that tensorboard's EventFileWriter uses, without that writer: it opens
  its file through `tensorboard.compat.tf`, which imports TensorFlow where it is installed, and
  writes from a background thread that would report a full disk late.
  """
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise files.write_failure(what, path.parent, e) from None
  files.write_bytes(path, _event_records(summaries, step, first=True))
