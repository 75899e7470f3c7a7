"""A stand-in for a TFDS image dataset, written locally in TFDS's own on-disk format.

The streamed datasets (imagenet2012, imagenette) cannot be downloaded here; this writes one of
them under its real name into a data_dir, through TFDS's own builder (a subclass of the real one
with its downloads replaced), so `tfds.builder(name, data_dir=...)` and everything after it run
exactly as on the real data: the tests, the benchmark's input row, and a first try of the
pipeline (docs/imagenet.md).

Images: JPEGs of varying sizes, as ImageNet's are, with grayscale and CMYK ones among them (ImageNet
holds both; TFDS's imagenet2012 builder converts its 22 CMYK files, other copies may not). Each
class has its own colour plus noise, so a model can learn it.

  python -m nin_jax.local_tfds --data_dir=/tmp/tfds --name=imagenette --num_train=200
"""
import io
import sys

import numpy as np

MODES = ("RGB", "L", "CMYK")
# The TFDS builders whose features (a JPEG image of any size, a class label) this writes.
BUILDERS = ("imagenette", "imagenet2012")


def jpeg(rng, label, num_classes, size, mode="RGB", quality=90):
  """JPEG bytes of a `size` (height, width) image of class `label`: the class's hue plus noise."""
  from PIL import Image
  hue = np.array([label / num_classes, 1 - label / num_classes, (label % 3) / 2]) * 255
  pixels = np.clip(hue + rng.normal(0, 40, (*size, 3)), 0, 255).astype(np.uint8)
  image = Image.fromarray(pixels, "RGB").convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


def write(data_dir, name="imagenette", num_train=48, num_test=21, min_size=24, max_size=80,
          seed=0, modes=MODES):
  """Writes TFDS dataset `name` (imagenette, imagenet2012, or one of their builder configs,
  imagenette/320px-v2: their features and label names) with `num_train` "train" and `num_test`
  "validation" JPEGs of min_size..max_size pixels a side, cycling through `modes`, into
  `data_dir`. Returns the builder that wrote it.

  Raises ValueError (one line) for another dataset, or when data_dir already holds a prepared
  `name` (TFDS would keep it and write nothing)."""
  import tensorflow_datasets as tfds

  builder_name, _, config_name = name.partition("/")
  if builder_name not in BUILDERS:
    raise ValueError(f"local_tfds writes {' or '.join(BUILDERS)} (a config too, such as "
                     f"imagenette/320px-v2), not {name!r}")
  existing = tfds.builder(name, data_dir=str(data_dir))
  if existing.is_prepared():
    raise ValueError(f"{existing.data_dir} already holds a prepared {name}; delete it or pick "
                     "another --data_dir")
  rng = np.random.default_rng(seed)
  base = tfds.builder_cls(builder_name)
  num_classes = existing.info.features["label"].num_classes

  class Local(base, skip_registration=True):
    def _split_generators(self, dl_manager):
      return {"train": self._images(num_train), "validation": self._images(num_test)}

    def _images(self, count):
      for i in range(count):
        label = int(rng.integers(num_classes))
        size = tuple(int(v) for v in rng.integers(min_size, max_size + 1, 2))
        image = jpeg(rng, label, num_classes, size, modes[i % len(modes)])
        yield f"{count}_{i}", {"image": io.BytesIO(image), "label": label} | (
            {"file_name": f"{i}.JPEG"} if "file_name" in self.info.features else {})

  Local.name = base.name
  builder = Local(config=config_name or None, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(data_dir)))
  return builder


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  try:
    builder = write(f.data_dir, f.name, f.num_train, f.num_test, f.min_size, f.max_size, f.seed)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {f.name} ({f.num_train} train, {f.num_test} validation JPEGs) to "
        f"{builder.data_dir}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into.", required=True)
  flags.DEFINE_string("name", "imagenette", "imagenette or imagenet2012.")
  flags.DEFINE_integer("num_train", 200, "Training JPEGs.")
  flags.DEFINE_integer("num_test", 50, "Validation JPEGs.")
  flags.DEFINE_integer("min_size", 24, "Smallest side, pixels.")
  flags.DEFINE_integer("max_size", 80, "Largest side, pixels.")
  flags.DEFINE_integer("seed", 0, "Seed of the images, sizes and labels.")
  app.run(main)
