"""A run's metrics, written twice: `metrics.jsonl` (one JSON object a line, for scripts and the
ablation report) and TensorBoard event files (`tensorboard --logdir <workdir>`). Only the chief
process (index 0) writes."""
import json
import logging

from etils import epath

from nin_jax import files


class MetricsWriter:
  """Appends records such as {"step": 20, "loss": 0.31, ...} to `workdir/metrics.jsonl`.

  A resumed run continues the file from its checkpoint's step: on opening, the log is cut back
  to its readable records of steps <= `first_step` (rewritten atomically), so a line cut by a
  kill and the records of steps the resumed run will repeat are gone, and the log never holds
  two records of one step. TensorBoard's event files are appended to as they are.
  Raises StorageError (one line) when a write fails, e.g. on a full disk.
  """

  def __init__(self, workdir, first_step: int = 0, enabled: bool = True):
    self._jsonl = self._tensorboard = None
    if enabled:
      from flax.metrics import tensorboard  # TensorFlow's summary writer underneath
      self._path = epath.Path(workdir) / "metrics.jsonl"
      if self._path.exists():
        kept = [r for r in read(workdir) if r.get("step", 0) <= first_step]
        files.write_text(self._path, "".join(json.dumps(r) + "\n" for r in kept))
      self._jsonl = self._path.open("a")
      self._tensorboard = tensorboard.SummaryWriter(str(workdir))

  def write(self, record: dict):
    if self._jsonl is None:
      return
    try:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
    except OSError as e:
      raise files.write_failure(f"the metrics of step {record['step']}", self._path, e) from None
    try:
      for name, value in record.items():
        if name != "step":
          self._tensorboard.scalar(name, value, record["step"])
      self._tensorboard.flush()
    except Exception as e:  # TensorFlow raises its own errors (ResourceExhaustedError: disk full)
      raise files.write_failure(f"the TensorBoard events of step {record['step']}",
                                self._path.parent, e) from None

  def close(self):
    if self._jsonl is not None:
      jsonl, self._jsonl = self._jsonl, None
      try:
        jsonl.close()
        self._tensorboard.close()
      except Exception:  # noqa: BLE001 -- a failed write has been reported by `write` already
        pass

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


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
