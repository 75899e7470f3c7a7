"""A run's metrics, written twice: `metrics.jsonl` (one JSON object a line, for scripts and the
ablation report) and TensorBoard event files (`tensorboard --logdir <workdir>`). Only the chief
process (index 0) writes."""
import json

from etils import epath


class MetricsWriter:
  """Appends records such as {"step": 20, "loss": 0.31, ...}; a resumed run continues the file."""

  def __init__(self, workdir, enabled: bool = True):
    self._jsonl = self._tensorboard = None
    if enabled:
      from flax.metrics import tensorboard  # TensorFlow's summary writer underneath
      self._jsonl = (epath.Path(workdir) / "metrics.jsonl").open("a")
      self._tensorboard = tensorboard.SummaryWriter(str(workdir))

  def write(self, record: dict):
    if self._jsonl is None:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in record.items():
      if name != "step":
        self._tensorboard.scalar(name, value, record["step"])
    self._tensorboard.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._tensorboard.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


def read(workdir) -> list[dict]:
  """The records of `workdir/metrics.jsonl`, oldest first; [] when there is none."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
