"""Class activation maps of a trained GAP model: the paper's Figure 4 view.

  python -m nin_jax.cam RUN_WORKDIR [--num_images=12] [--out=FILE.png]

RUN_WORKDIR is one run's folder (for a sweep: <workdir>/gap/seed_0). Each row shows a test image,
the feature map of the predicted class and, where the prediction is wrong, the map of the true
class. With a GAP head a class score is the mean of its map, so the map shows where the evidence
for that class lies. Half the rows are misclassified examples, where there are enough.
"""
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath

from nin_jax import checkpointing, data, files, models, streaming
from nin_jax.errors import ConfigError, NinError
from nin_jax.placement import Placement

# At 2 inches a row, 64 rows is a 14,000-pixel-tall PNG; matplotlib refuses far beyond it.
flags.DEFINE_integer("num_images", 12, "How many test images (rows).", lower_bound=1,
                     upper_bound=64)
flags.DEFINE_string("out", None, "PNG path; default RUN_WORKDIR/class_activation_maps.png.")


def class_maps(model, model_variables, images, batch_size=256):
  """Logits [N, classes] and the last mlpconv's output [N, h, w, classes] (one map per class)
  for `images` [N, H, W, C], `batch_size` images at a time (CIFAR-10's 10,000 test images at
  once would need ~8 GB of activations). `model_variables`: {"params": ..., **model state}, as
  checkpointing.restore_variables returns them."""
  @jax.jit
  def forward(batch):
    logits, state = model.apply(model_variables, batch, train=False,
                                capture_intermediates=True, mutable=["intermediates"])
    return logits, state["intermediates"][f"mlpconv{len(model.blocks)}"]["__call__"][0]
  parts = [jax.device_get(forward(jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
  return tuple(np.concatenate(column) for column in zip(*parts))


def pick_examples(predicted, labels, count):
  """Indices: up to half misclassified, the rest correct, in test-set order."""
  wrong, right = np.flatnonzero(predicted != labels), np.flatnonzero(predicted == labels)
  chosen_wrong = wrong[:count // 2]
  return np.sort(np.concatenate([chosen_wrong, right[:count - len(chosen_wrong)]]))


def test_examples(dataset, limit=512):
  """(images float32 NHWC, labels int32) of the test split: all of an in-memory dataset, the
  first `limit` of a streamed one (nin_jax/streaming.py: decoded and centre-cropped)."""
  if not isinstance(dataset, streaming.StreamingDataset):
    return dataset.x_test, dataset.y_test
  images, labels = [], []
  placement = Placement.everywhere()
  for batch in dataset.eval_batches("test", 16 * len(placement.local_devices), placement):
    real = batch["mask"].ravel() > 0
    images.append(batch["image"].reshape(-1, *batch["image"].shape[2:])[real])
    labels.append(batch["label"].ravel()[real])
    if sum(map(len, labels)) >= limit:
      break
  return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def write_figure(run_dir, num_images, out):
  run_dir = epath.Path(files.resolve(run_dir))
  if not run_dir.is_dir():
    raise ConfigError(f"run folder {run_dir} does not exist: give one run's workdir, such as "
                      "<sweep workdir>/gap/seed_0")
  out = epath.Path(files.resolve(out) or run_dir / "class_activation_maps.png")
  if not out.parent.is_dir():
    raise ConfigError(f"--out folder {out.parent} does not exist; create it or pick another")
  saved = files.read_json(run_dir / "config.json", "run config")
  if not isinstance(saved, dict):
    raise ConfigError(f"{run_dir} holds no readable config.json: give one run's folder, such as "
                      "<sweep workdir>/gap/seed_0")
  config = ml_collections.ConfigDict(saved)
  if not models.HEADS[config.model.head].class_maps:
    raise ConfigError(f"class activation maps need a GAP model; {run_dir} has head "
                      f"{config.model.head!r}")
  dataset = data.load_dataset(config)
  model = models.NIN(num_classes=dataset.num_classes, **config.model)
  try:
    model_variables = checkpointing.restore_variables(run_dir)
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
  x_test, y_test = test_examples(dataset)
  logits, maps = class_maps(model, model_variables, jnp.asarray(x_test))
  predicted = np.argmax(logits, -1)
  rows = pick_examples(predicted, y_test, num_images)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), squeeze=False)
  size = x_test.shape[1:3]
  for row, index in zip(axes, rows):
    image = x_test[index]
    if isinstance(dataset, streaming.StreamingDataset):  # its fixed normalisation, undone
      image = np.clip((image * streaming.IMAGENET_STD_RGB + streaming.IMAGENET_MEAN_RGB) / 255,
                      0, 1)
    else:  # fitted, whitened maybe: stretched to 0..1 per image
      image = (image - image.min()) / (np.ptp(image) + 1e-8)
    row[0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
    row[0].set_title(f"test #{index}, label {y_test[index]}", fontsize=8)
    for column, (cls, name) in enumerate([(predicted[index], "predicted"),
                                          (y_test[index], "true")], start=1):
      row[column].axis("off")
      if column == 2 and cls == predicted[index]:
        row[column].text(0.5, 0.5, "true = predicted", ha="center", va="center", fontsize=8)
        continue
      upsampled = jax.image.resize(maps[index, :, :, cls], size, "bilinear")
      row[column].imshow(upsampled, cmap="jet")
      row[column].set_title(f"{name} class {cls}: score {logits[index, cls]:.2f}", fontsize=8)
    row[0].axis("off")
  figure.suptitle("Class activation maps (GAP: score = mean of the map)", fontsize=10)
  figure.tight_layout()
  files.save_figure(figure, out, dpi=110)
  plt.close(figure)
  return out


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m nin_jax.cam RUN_WORKDIR [--num_images=12] [--out=PNG]")
  checkpointing.quiet_orbax_logs()
  try:
    files.check_reachable(argv[1], "RUN_WORKDIR")
    print(write_figure(argv[1], flags.FLAGS.num_images, flags.FLAGS.out))
  except NinError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
