"""Input: datasets as in-memory arrays, preprocessing fitted on the training split, batches.

The paper's datasets are small (CIFAR-10 is 150 MB as uint8, 614 MB as preprocessed float32), so
every source is loaded once into host memory as NHWC arrays, preprocessed there, and put on each
device (group) once (nin_jax/train.py). That keeps the input path simple and fast:
  * the batch of a step is a list of example indices, a function of (seed, step) alone -- a
    resumed run sees exactly the examples an uninterrupted one would, and the data position
    needs no state of its own;
  * the train step gathers those examples and augments them (random crop, flip: `augment`) on
    the device; the host does no per-step image work.

Sources (`config.dataset`): the TFDS datasets in `TFDS_DATASETS`; `digits`, the 1,797 8x8
handwritten digits that ship inside scikit-learn (no network); `npz`, your own arrays; and
`synthetic`, random images for speed measurement.

Several hosts: each host loads only its own contiguous shard of every split (`host_range`). The
training order does not depend on the number of hosts or devices: the examples fall into
`num_parts` contiguous parts (`config.data_shards`), each global batch takes the same number of
examples from every part, in a per-part order drawn from (seed, epoch, part), and host h feeds the
parts it holds. So 2 hosts x 2 devices train exactly as 1 host x 4 devices with the same parts.
Preprocessing statistics are summed over all hosts, so every host normalises alike.
"""
import dataclasses
import functools
import json
import logging
import math
import threading
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from nin_jax import files
from nin_jax import placement as placement_lib
from nin_jax.placement import Placement, part_bounds, steps_per_epoch
from nin_jax.errors import ConfigError, DataError

# Image shapes (H, W, C) as TFDS stores them, to check a config before anything is loaded.
TFDS_IMAGE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
                     "svhn_cropped": (32, 32, 3), "mnist": (28, 28, 1)}
TFDS_DATASETS = tuple(TFDS_IMAGE_SHAPES)
# Streamed from their files as training goes, not loaded: nin_jax/streaming.py. Also with a TFDS
# builder config or version, as TFDS names them: imagenette/320px-v2, imagenet2012:5.1.0,
# imagenet_resized/16x16 (`is_streamed`).
STREAMING_DATASETS = ("imagenet2012", "imagenette", "imagenet_resized/32x32",
                      "imagenet_resized/64x64")
SOURCES = TFDS_DATASETS + STREAMING_DATASETS + ("digits", "npz", "synthetic")


def is_streamed(name: str) -> bool:
  """Whether dataset `name` is streamed: one of STREAMING_DATASETS, or one of their TFDS builders
  with another config or version (imagenette/160px-v2, imagenet2012:5.0.0)."""
  builder = name.partition(":")[0].partition("/")[0]
  return name in STREAMING_DATASETS or builder in {n.partition("/")[0] for n in STREAMING_DATASETS}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass
class Dataset:
  """One host's shard of a dataset: NHWC images (uint8 as loaded, float32 once preprocessed)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  num_train_examples: int  # over all hosts: every host must count the same steps per epoch
  num_test_examples: int   # over all hosts: the evaluation counts each exactly once
  # Training examples held out for validation (`hold_out_validation`); empty when none.
  x_validation: np.ndarray | None = None
  y_validation: np.ndarray | None = None
  num_validation_examples: int = 0  # over all hosts

  @property
  def image_shape(self):
    return self.x_train.shape[1:]

  def num_local(self, split: str) -> int:
    """This host's examples of `split` ("train", "validation", "test")."""
    images = {"train": self.x_train, "validation": self.x_validation, "test": self.x_test}[split]
    return 0 if images is None else len(images)

  def eval_batches(self, split: str, batch_size: int, placement: Placement):
    """`eval_indices` batches over this host's examples of `split`, of batch_size / hosts."""
    per_host = batch_size // placement.process_count
    total = self.num_test_examples if split == "test" else self.num_validation_examples
    return eval_indices(self.num_local(split), per_host,
                        placement.num_eval_batches(total, per_host), placement)


# ----------------------------------------------------------------------------------------------
# Sources: each returns this host's shard as a Dataset of uint8 images and integer labels.
# ----------------------------------------------------------------------------------------------





def _sharded(x_train, y_train, x_test, y_test, num_classes, placement):
  """A Dataset of this host's shard of whole arrays."""
  train = slice(*(placement or Placement.everywhere()).host_range(len(x_train)))
  test = slice(*(placement or Placement.everywhere()).host_range(len(x_test)))
  return Dataset(x_train[train], y_train[train].astype(np.int32), x_test[test],
                 y_test[test].astype(np.int32), num_classes, len(x_train), len(x_test))


def image_shape(config):
  """(height, width, channels) of the images `config.dataset` holds, without loading them; None
  for an npz file whose header cannot be read (load_npz then says why)."""
  if config.dataset in TFDS_IMAGE_SHAPES:
    return TFDS_IMAGE_SHAPES[config.dataset]
  if config.dataset == "digits":
    return (8, 8, 1)
  if config.dataset == "synthetic":
    return tuple(config.synthetic.image_shape)
  if is_streamed(config.dataset):  # decoded and cropped to this size
    return (config.streaming.image_size, config.streaming.image_size, 3)
  if config.dataset == "npz":
    try:  # the .npy header inside the zip: the shape without reading the pixels
      with zipfile.ZipFile(config.npz_path) as archive, archive.open("x_train.npy") as f:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
        shape = read_header(f)[0]
      return tuple(shape[1:]) if len(shape) == 4 and shape[-1] in (1, 3, 4) else None
    except Exception:  # anything unreadable is load_npz's to explain
      return None
  return None


@functools.cache
def tfds_builder(name, data_dir, download):
  """The TFDS builder of dataset `name`, prepared in `data_dir` (downloaded first when `download`
  allows). Raises DataError (one line: the dataset, the data_dir and the fixes) when data_dir does
  not exist or the dataset is not prepared there."""
  files.check_reachable(data_dir, "--config.data_dir")  # before the 12 s of importing TensorFlow
  if data_dir and not _exists(data_dir):
    raise DataError(f"data_dir {data_dir!r} does not exist; create it, or fix --config.data_dir")
  files.tensorflow()  # before TFDS imports it
  import tensorflow_datasets as tfds  # heavy, and only the TFDS sources need it
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError, or a config or version TFDS does not know
    raise DataError(f"TFDS has no dataset {name!r} ({type(e).__name__}: "
                    f"{files.one_line(e, 300)}); check --config.dataset") from None
  manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
  if not builder.is_prepared():
    manual_dir = epath.Path(builder.data_dir_root) / "downloads" / "manual"
    if download and manual and not (manual_dir.is_dir() and any(manual_dir.iterdir())):
      raise DataError(  # before TFDS writes anything: it would fail on its own, in many lines
          f"TFDS cannot download {name!r} itself, and {str(manual_dir)!r} holds none of its "
          f"archives: put them there{_archives(builder)}, or prepare it elsewhere and pass "
          "--config.data_dir")
    if not download:
      raise DataError(
          f"TFDS dataset {name!r} is not prepared in data_dir {str(builder.data_dir_root)!r} and "
          "downloads are off. Fixes: run on the embedded digits (--config=experiments/default.py:"
          "digits, or --config.dataset=digits); or prepare it on a machine with internet "
          f"(python -c \"import tensorflow_datasets as t; t.builder('{name}', data_dir='DIR')"
          f".download_and_prepare()\"{_manual_step(builder) if manual else ''}) and copy DIR "
          "here, then pass "
          "--config.data_dir=DIR" + ("." if manual else
                                     "; or allow the download with --config.download=True."))
    try:
      builder.download_and_prepare()
    except Exception as e:  # network errors come in many types; all mean the same here
      raise DataError(f"TFDS dataset {name!r} could not be downloaded to "
                      f"{str(builder.data_dir_root)!r} ({type(e).__name__}: {files.one_line(e)}). "
                      "Prepare it on a "
                      "machine with internet and copy data_dir here, or use "
                      "--config.dataset=digits.") from None
  return builder


def _manual_step(builder):
  """For a dataset TFDS cannot download itself (imagenet2012): where its archives go first."""
  return (f", after putting the archives its TFDS page names{_archives(builder)} in "
          "DIR/downloads/manual")


def _archives(builder):
  return (" (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar)"
          if builder.name == "imagenet2012" else "")


def load_tfds(name, data_dir, download, placement=None):
  """This host's shard of the TFDS dataset `name` (data_dir, download: `tfds_builder`), whole
  splits in memory."""
  import tensorflow_datasets as tfds
  builder = tfds_builder(name, data_dir, download)
  splits = builder.info.splits

  def split(part):  # this host's share of the split only
    start, end = (placement or Placement.everywhere()).host_range(splits[part].num_examples)
    try:
      return tfds.as_numpy(builder.as_dataset(
          split=f"{part}[{start}:{end}]", batch_size=-1, as_supervised=True))
    except Exception as e:  # tf.errors.DataLossError, NotFoundError: a cut or missing shard
      raise DataError(f"TFDS dataset {name!r} in {str(builder.data_dir)!r} cannot be read "
                      f"({type(e).__name__}: {files.one_line(e, 200)}); a file is "
                      "missing or cut: prepare it again (delete that folder, then "
                      "download_and_prepare) or copy it again") from None

  return Dataset(*split("train"), *split("test"), builder.info.features["label"].num_classes,
                 splits["train"].num_examples, splits["test"].num_examples)


def _exists(path):
  from etils import epath  # understands gs:// as well as local paths
  return epath.Path(path).exists()


def load_digits(placement=None, test_fraction=0.2, split_seed=0):
  """The 1,797 8x8 digits of scikit-learn: real handwriting, no network, a fixed seeded split."""
  pixels, labels = _sklearn_digits()
  # Pixel values are 0..16; scale to the 0..255 of every other source.
  images = np.round(pixels.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)[..., None]
  labels = labels.astype(np.int32)
  order = np.random.default_rng(split_seed).permutation(len(images))
  num_test = int(round(len(images) * test_fraction))
  test, train = order[:num_test], order[num_test:]
  return _sharded(images[train], labels[train], images[test], labels[test], 10, placement)


def _sklearn_digits():
  """(pixels float64 [1797, 64] in 0..16, labels [1797]): scikit-learn's digits, read from the
  file `sklearn.datasets.load_digits` reads (its data/digits.csv.gz, one row of 64 pixels and the
  label per image), found without importing scikit-learn: that import took 3.1 s of every digits
  launch on these 2 cores (measured), longer than loading the rest of the run. Where the file is
  not where scikit-learn keeps it today, scikit-learn's own loader is used."""
  import gzip
  import importlib.util
  import os
  spec = importlib.util.find_spec("sklearn")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  if os.path.exists(path):
    with gzip.open(path, "rt") as f:
      table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)
  from sklearn import datasets
  digits = datasets.load_digits()
  return digits.data, digits.target


def load_npz(path, placement=None):
  """Your own data: an .npz (local or gs://) with the arrays x_train, y_train, x_test, y_test.

  Expected layout: images uint8 NHWC, shape (N, H, W, C), raw 0..255 pixels (nin-jax normalises
  them itself, `config.preprocess`), the same H, W, C in both splits; labels a 1-D integer array of
  0..num_classes-1, one per image; at least one example per split. num_classes is the largest
  label + 1. Write it with `numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)`.

  Raises DataError, one line saying what was found and the fix, when the path is empty or does not
  exist, the file cannot be read or lacks an array, or the arrays follow another convention:
  channels-first (NCHW) or grayscale (N, H, W) images, float or non-uint8 integer pixels, one-hot,
  float or 1-based labels, negative labels, images and labels of different counts, train and test
  images of different shapes, an empty split (see `_check_npz_arrays`).
  """
  from etils import epath  # understands gs:// as well as local paths
  if not path:
    raise DataError("dataset 'npz' needs a file: --config.npz_path=/path/to/data.npz")
  if not epath.Path(path).exists():
    if not str(path).endswith(".npz") and epath.Path(f"{path}.npz").exists():
      raise DataError(f"npz file {path!r} does not exist, but {path}.npz does (numpy.savez adds "
                      f"'.npz' to a name without it): --config.npz_path={path}.npz")
    raise DataError(f"npz file {path!r} does not exist; fix --config.npz_path")
  try:
    with epath.Path(path).open("rb") as handle:
      loaded = np.load(handle, allow_pickle=False)
      if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.save wrote a single .npy array
        raise DataError(f"npz file {path!r} holds one array {loaded.dtype} {loaded.shape}, not "
                        f"{list(NPZ_KEYS)}; write it with numpy.savez(path, x_train=..., ...)")
      with loaded as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
          raise DataError(f"npz file {path!r} lacks arrays {missing}; it needs {list(NPZ_KEYS)}")
        arrays = {k: f[k] for k in NPZ_KEYS}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, DataError):
      raise
    if "Object arrays cannot be loaded" in str(e):  # strings from a list or a pandas column
      raise DataError(f"npz file {path!r} holds an array of Python objects (class names from a "
                      "list or pandas?), which nin-jax does not unpickle; save integer labels: "
                      f"{_REMAP}") from None
    raise DataError(f"npz file {path!r} cannot be read ({e}); write it with numpy.savez") from None
  _check_npz_arrays(arrays)
  unseen = sorted(set(arrays["y_test"].tolist()) - set(arrays["y_train"].tolist()))
  if unseen:  # would silently add classes that no training example teaches
    raise DataError(f"npz y_test holds labels {unseen[:5]} that no training example has (y_train: "
                    f"{int(arrays['y_train'].min())}..{int(arrays['y_train'].max())}); check the "
                    "label mapping of the two splits")
  num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
  return _sharded(*(arrays[k] for k in NPZ_KEYS), num_classes, placement)


# The fix for labels that are not 0..num_classes-1 without gaps: one mapping for both splits.
_REMAP = ("classes = np.unique(np.concatenate([y_train, y_test])); y_train = "
          "np.searchsorted(classes, y_train); y_test = np.searchsorted(classes, y_test)")


def _check_npz_arrays(arrays):
  """Raises one DataError line, what was found and the fix, for arrays nin-jax cannot use as is."""
  for part in ("train", "test"):
    xk, yk = f"x_{part}", f"y_{part}"
    x, y = arrays[xk], arrays[yk]
    if x.size == 0 or y.size == 0:
      raise DataError(f"npz {part} split is empty ({xk} {x.shape}, {yk} {y.shape}); each split "
                      f"needs at least one example")
    # Images: uint8 NHWC, raw pixels.
    images = f"npz {xk} must be uint8 NHWC images, got {x.dtype} {x.shape}"
    if x.ndim == 3:
      raise DataError(f"{images}: grayscale without a channel axis; fix: {xk} = {xk}[..., None]")
    if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
      raise DataError(f"npz {xk} has shape {x.shape}: channels-first (NCHW); nin-jax needs NHWC: "
                      f"{xk} = {xk}.transpose(0, 2, 3, 1)")
    if x.ndim != 4:
      raise DataError(f"{images}; reshape to (N, H, W, C)")
    if x.dtype != np.uint8:
      if x.dtype.kind not in "fiu":
        raise DataError(f"{images}; save the 0..255 pixels as uint8")
      low, high = x.min(), x.max()
      found = f"{images} with values in [{low:.4g}, {high:.4g}]"
      if x.dtype.kind == "f" and 0 <= low and high <= 1:
        raise DataError(f"{found}; fix: {xk} = ({xk} * 255).round().astype(np.uint8)")
      if 0 <= low and high <= 255:
        fix = f"{xk}.round().astype(np.uint8)" if x.dtype.kind == "f" else f"{xk}.astype(np.uint8)"
        raise DataError(f"{found}; fix: {xk} = {fix}")
      if x.dtype.kind == "f":
        raise DataError(f"{found}: not raw pixels; nin-jax normalises images itself "
                        f"(config.preprocess) and wants the raw 0..255 pixels as uint8")
      raise DataError(f"{found}, outside 0..255; scale them to 0..255 and save as uint8")
    # Labels: 1-D integers, one per image, 0..num_classes-1.
    labels = f"npz {yk} must be a 1-D integer array, got {y.dtype} {y.shape}"
    if y.dtype.kind in "US":
      raise DataError(f"{labels}: class names such as {str(y.ravel()[0])!r}; fix: {_REMAP}")
    if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] == len(x) != 1:
      raise DataError(f"{labels}: a row of labels (MATLAB's layout); fix: {yk} = {yk}[0]")
    if y.ndim == 2 and y.shape[1] == 1:
      raise DataError(f"{labels}: a column of labels; fix: {yk} = {yk}[:, 0]")
    if y.ndim == 2 and y.dtype.kind in "fiub":
      binary = np.isin(y, (0, 1)).all()
      several = int((y.sum(axis=1) != 1).sum())
      if binary and several:
        raise DataError(f"{labels}: {several} rows hold several labels or none (multi-label); "
                        "nin-jax trains single-label classification: one class per image")
      found = "one-hot labels" if binary else "scores or probabilities per class"
      raise DataError(f"{labels}: {found}; fix: {yk} = {yk}.argmax(1)")
    if y.ndim == 1 and y.dtype.kind == "f":
      missing = int(np.isnan(y).sum())
      if missing:
        raise DataError(f"{labels}: {missing} NaN labels (unlabelled examples?); drop those "
                        f"examples from {xk} and {yk}")
      if np.all(np.isfinite(y) & (y == np.round(y))):
        raise DataError(f"{labels}: float labels that are whole numbers; fix: "
                        f"{yk} = {yk}.astype(np.int64)")
    if y.dtype.kind == "b" and y.ndim == 1:
      raise DataError(f"{labels}: true/false labels; fix: {yk} = {yk}.astype(np.int64)")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
      raise DataError(labels)
    if len(x) != len(y):
      raise DataError(f"npz {xk} has {len(x)} images but {yk} {len(y)} labels")
    if y.min() < 0:
      unlabelled = " (-1 often marks unlabelled examples: drop them)" if y.min() == -1 else ""
      raise DataError(f"npz {yk} holds negative labels (min {y.min()}){unlabelled}; labels must "
                      f"be 0..num_classes-1: {_REMAP}")
  x_train, x_test = arrays["x_train"], arrays["x_test"]
  if x_train.shape[1:] != x_test.shape[1:]:
    raise DataError(f"npz x_train has shape {x_train.shape} but x_test {x_test.shape}: train and "
                    f"test images need the same height, width and channels (NHWC)")
  every = np.concatenate([arrays["y_train"], arrays["y_test"]])
  low = int(every.min())
  if low >= 1:
    svhn = (" (or SVHN's .mat labels, 10 for the digit 0: y_train[y_train == 10] = 0; "
            "y_test[y_test == 10] = 0)" if (low, int(every.max())) == (1, 10) else "")
    raise DataError(f"npz labels start at {low}, no label 0 in y_train or y_test (1-based, as in "
                    f"MATLAB/SVHN); nin-jax needs 0..num_classes-1: y_train = y_train - {low}; "
                    f"y_test = y_test - {low}{svhn}")
  trained = np.unique(arrays["y_train"])  # test labels outside them: load_npz says so
  high = int(trained[-1])
  if len(trained) == 1:
    raise DataError(f"npz y_train labels are all {high}: one class, nothing to classify; a "
                    "classifier needs at least 2 classes")
  if len(trained) < high + 1:  # each missing label would be a class map that no example teaches
    missing = sorted(set(range(high + 1)) - set(trained.tolist()))
    ignore = " (255 or 65535 often marks 'ignore')" if high in (255, 65535) else ""
    raise DataError(f"npz y_train uses {len(trained)} of labels 0..{high}{ignore}: "
                    f"{len(missing):,} classes "
                    f"({', '.join(map(str, missing[:5]))}{'...' if len(missing) > 5 else ''}) have "
                    f"no example; number the classes without gaps: {_REMAP}")


def load_synthetic(image_shape, num_classes, num_train, num_test, placement=None, seed=0):
  """Random images and labels: nothing to learn, for measuring speed only."""
  rng = np.random.default_rng(seed)
  def part(n):
    return (rng.integers(0, 256, (n, *image_shape), dtype=np.uint8),
            rng.integers(0, num_classes, n, dtype=np.int32))
  return _sharded(*part(num_train), *part(num_test), num_classes, placement)


# ----------------------------------------------------------------------------------------------
# Preprocessing, fitted on the training split only.
# ----------------------------------------------------------------------------------------------

def sum_over_hosts(arrays, placement=None):
  """Sums a list of numpy arrays over the run's hosts (identity on one host)."""
  if (placement or Placement.everywhere()).process_count == 1:
    return arrays
  gathered = placement_lib.from_every_host([a.astype(np.float32) for a in arrays])
  return [g.astype(np.float64).sum(axis=0) for g in gathered]


def fit_mean_std(x_train, placement=None):
  """Per-channel mean and std of the training images (of all hosts); the normalising function."""
  pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
  count, total, squares = sum_over_hosts(
      [np.array([len(pixels)], np.float64), pixels.sum(0), (pixels ** 2).sum(0)], placement)
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean ** 2, 0)) + 1e-8
  return lambda x: ((x - mean) / std).astype(np.float32)


# GCN + ZCA fits a D x D covariance (D = height * width * channels) and its eigendecomposition,
# which grows as D^3: CIFAR-10's D = 3,072 took 31 s on 2 cores here, 64 x 64 x 1 (4,096) costs
# about 2.4x that, 64 x 64 x 3 (12,288: a 1.2 GB float64 covariance) about 64x. Beyond this,
# refuse rather than sit silent for an hour or run out of memory.
MAX_ZCA_DIMENSIONS = 4096


def check_fits(config, image_shape):
  """Refuses GCN + ZCA on images of more than MAX_ZCA_DIMENSIONS values (see there why), and a
  crop padding of the image's side or more (a crop could miss the image entirely; a huge one
  took all memory padding each batch). `image_shape`: (height, width, channels). Called before
  anything is compiled (checks.validate), and by `_load` once npz images are known."""
  side = min(image_shape[:2])
  if config.augment.crop_padding >= side:
    raise ConfigError(f"--config.augment.crop_padding={config.augment.crop_padding} must be "
                      f"smaller than the images' side of {side} pixels (the paper's shifts: 4 of "
                      "CIFAR's 32)")
  dimensions = math.prod(image_shape)
  if config.preprocess == "gcn_zca" and dimensions > MAX_ZCA_DIMENSIONS:
    raise ConfigError(
        f"--config.preprocess=gcn_zca on {'x'.join(map(str, image_shape))} images needs a "
        f"{dimensions:,} x {dimensions:,} covariance ({8 * dimensions ** 2 / 1e9:.1f} GB) and "
        f"its eigendecomposition; nin-jax fits ZCA up to {MAX_ZCA_DIMENSIONS:,} dimensions "
        "(CIFAR's 32x32x3 = 3,072 takes ~30 s). Use --config.preprocess=mean_std")


def global_contrast_normalize(x, scale=55.0, min_divisor=1e-8):
  """pylearn2's GCN as the maxout/NIN papers used it: per image, zero mean, L2 norm `scale`."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  flat = flat - flat.mean(axis=1, keepdims=True)
  norms = np.sqrt((flat ** 2).sum(axis=1, keepdims=True)) / scale
  return flat / np.maximum(norms, min_divisor)


def fit_gcn_zca(x_train, placement=None, filter_bias=0.1):
  """GCN then ZCA whitening (pylearn2's ZCA, filter_bias 0.1), fitted on the training split.

  Cost: a D x D covariance, D = height * width * channels, and its eigendecomposition (~D^3);
  MAX_ZCA_DIMENSIONS bounds D.
  """
  logging.info("Fitting GCN + ZCA whitening on %d images of %d dimensions (CIFAR-10's 3,072: "
               "~30 s on 2 CPU cores)", len(x_train), np.prod(x_train.shape[1:]))
  flat = global_contrast_normalize(x_train)
  count, total, products = sum_over_hosts(
      [np.array([len(flat)], np.float64), flat.sum(axis=0), flat.T @ flat], placement)
  mean = total / count
  eigenvalues, eigenvectors = np.linalg.eigh(products / count - np.outer(mean, mean))
  whiten = (eigenvectors / np.sqrt(eigenvalues + filter_bias)) @ eigenvectors.T
  def apply(x):
    return ((global_contrast_normalize(x) - mean) @ whiten).astype(np.float32).reshape(x.shape)
  return apply


PREPROCESSORS = {"mean_std": fit_mean_std, "gcn_zca": fit_gcn_zca}


DATA_FIELDS = ("dataset", "data_dir", "npz_path", "synthetic", "preprocess",
               "validation_examples")
_loaded: dict = {}  # the last dataset loaded: the runs of a sweep load it once
_loading = threading.Lock()


def load_dataset(config, placement: Placement | None = None) -> Dataset:
  """The dataset that `config` names, preprocessed, as this host's shard for `placement`
  (default: every host). The runs of a sweep share it: the last one loaded is kept, keyed by
  `DATA_FIELDS`, and threads that ask for it together load it once."""
  placement = placement or Placement.everywhere()
  if is_streamed(config.dataset):  # opened, not loaded: nothing to keep
    from nin_jax import streaming
    return streaming.open_dataset(
        tfds_builder(config.dataset, config.data_dir, config.download), config, placement)
  key = json.dumps([config.to_dict().get(k) for k in DATA_FIELDS] + [
      placement.process_index, placement.process_count], default=str)
  with _loading:
    if key not in _loaded:
      dataset = _load(config, placement)
      _loaded.clear()
      _loaded[key] = dataset
    return _loaded[key]


# The validation examples are the same for every run (every seed and arm of a sweep: they are
# compared on one validation set), whatever config.seed says.
VALIDATION_SEED = 0


def hold_out_validation(raw: Dataset, num_validation: int, placement: Placement) -> Dataset:
  """`raw` (a whole dataset, as one host loads it) without `num_validation` training examples,
  which become its validation split; then this host's shard of each split.

  The held-out examples are a fixed choice (VALIDATION_SEED), stratified by class: each class
  keeps its share of the training set, to within one example (scikit-learn's
  `train_test_split(stratify=...)`). Chosen before any preprocessing statistics are fitted, so
  normalisation and ZCA never see them. Raises ConfigError when there are too few training
  examples for the split or too few for one example of each class on each side.
  """
  from sklearn.model_selection import train_test_split  # a well-kept stratified split
  count = len(raw.x_train)
  if not raw.num_classes <= num_validation <= count - raw.num_classes:
    raise ConfigError(
        f"--config.validation_examples={num_validation} must leave one training example of "
        f"each of the {raw.num_classes} classes on either side: use {raw.num_classes}.."
        f"{count - raw.num_classes} of the {count} training examples (0: no validation split)")
  try:
    train, validation = train_test_split(
        np.arange(count), test_size=num_validation, stratify=raw.y_train,
        random_state=VALIDATION_SEED)
  except ValueError as e:  # a class with a single example cannot be split both ways
    raise ConfigError(f"--config.validation_examples={num_validation}: no stratified split of "
                      f"the training labels ({files.one_line(e, 200)}); use 0") from None
  train, validation = np.sort(train), np.sort(validation)  # the training order stays the source's
  held_out = _sharded(raw.x_train[train], raw.y_train[train], raw.x_test, raw.y_test,
                      raw.num_classes, placement)
  part = slice(*(placement or Placement.everywhere()).host_range(num_validation))
  return dataclasses.replace(
      held_out, x_validation=raw.x_train[validation][part],
      y_validation=raw.y_train[validation][part].astype(np.int32),
      num_validation_examples=num_validation)


def _load(config, placement):
  num_validation = config.get("validation_examples", 0)
  if num_validation:  # the held-out examples are chosen from the whole training split
    whole = _load_source(config, Placement(placement.devices, 0, 1))
    raw = hold_out_validation(whole, num_validation, placement)
  else:
    raw = _load_source(config, placement)
  check_fits(config, raw.image_shape)  # npz images are only known here, before ZCA is fitted
  if config.preprocess not in PREPROCESSORS:
    raise DataError(f"unknown preprocess {config.preprocess!r}; choose one of "
                    f"{sorted(PREPROCESSORS)}")
  normalize = PREPROCESSORS[config.preprocess](raw.x_train, placement)
  validation = {}
  if raw.num_validation_examples:
    validation = {"x_validation": normalize(raw.x_validation)}
  return dataclasses.replace(raw, x_train=normalize(raw.x_train), x_test=normalize(raw.x_test),
                             **validation)


def _load_source(config, placement):
  """The raw (uint8) dataset that `config.dataset` names, this host's shard for `placement`."""
  name = config.dataset
  if name in TFDS_DATASETS:
    raw = load_tfds(name, config.data_dir, config.download, placement)
  elif name == "digits":
    raw = load_digits(placement)
  elif name == "npz":
    raw = load_npz(config.npz_path, placement)
  elif name == "synthetic":
    s = config.synthetic
    raw = load_synthetic(tuple(s.image_shape), s.num_classes, s.num_train, s.num_test, placement)
  else:
    raise DataError(f"unknown dataset {name!r}; choose one of {SOURCES}")
  return raw


# ----------------------------------------------------------------------------------------------
# Batches: example indices into the device-resident dataset, shape [local_devices, per_device].
# ----------------------------------------------------------------------------------------------







@functools.lru_cache(maxsize=8)
def _epoch_order(seed, epoch, part, size):
  """The order of one part in one epoch, drawn once per epoch rather than once per step."""
  order = np.random.default_rng([seed, epoch, part]).permutation(size)
  order.flags.writeable = False  # shared between calls
  return order


def train_indices(dataset, step, batch_size, seed, parts, placement: Placement):
  """{"index": int32 [local devices, batch_size / parts * parts_per_host / local devices]}: the rows
  of this host's shard (`dataset.x_train`) that make its share of the global batch of step `step`
  (`batch_size` is the global batch).

  A function of (seed, step) alone, so a resumed run sees exactly the examples an uninterrupted
  one would. Each epoch visits every part in a fresh order drawn from (seed, epoch, part); the
  examples left over at the end of an epoch are skipped so that every step has the same shape.
  """
  per_part = batch_size // parts
  epoch, index = divmod(step, steps_per_epoch(dataset.num_train_examples, batch_size, parts))
  host_start = placement.host_range(dataset.num_train_examples)[0]
  parts_per_host = parts // placement.process_count
  rows = []
  for part in range(placement.process_index * parts_per_host,
                    (placement.process_index + 1) * parts_per_host):
    start, end = part_bounds(dataset.num_train_examples, parts, part)
    order = _epoch_order(seed, epoch, part, end - start)
    chosen = np.sort(order[index * per_part:(index + 1) * per_part])  # sorted: faster gather
    rows.append(chosen + start - host_start)
  return {"index": placement.per_device(np.concatenate(rows).astype(np.int32))}


def epoch_indices(dataset, epoch, batch_size, seed, parts, placement: Placement):
  """{"index": int32 [local devices, steps_per_epoch, per_device]}: `train_indices` of every step of
  epoch `epoch`, put on the devices once per epoch. The train step picks its row by its own step
  count, so no host array is handed to a step: on 2 CPU cores a step that received a fresh host
  array ran 1.5x slower beside two other runs (measured, docs/training.md, "Data on the device")."""
  steps = steps_per_epoch(dataset.num_train_examples, batch_size, parts)
  rows = [train_indices(dataset, step, batch_size, seed, parts, placement)["index"]
          for step in range(epoch * steps, (epoch + 1) * steps)]
  return {"index": np.stack(rows, axis=1)}




def eval_indices(num_examples, batch_size, num_batches, placement: Placement):
  """Fixed-size batches of indices 0 .. num_examples - 1 (this host's test shard), padded at the
  end; `mask` marks the real examples.

  Every host runs the same `num_batches` (collectives need it), so shards that end sooner are
  padded further; the mask makes each real example count exactly once.
  """
  padded = num_batches * batch_size
  if num_examples > padded:
    raise ValueError(f"{num_examples} examples do not fit {num_batches} batches of {batch_size}")
  index = np.zeros(padded, np.int32)
  index[:num_examples] = np.arange(num_examples)
  mask = (np.arange(padded) < num_examples).astype(np.float32)
  for i in range(num_batches):
    part = slice(i * batch_size, (i + 1) * batch_size)
    yield {"index": placement.per_device(index[part]),
           "mask": placement.per_device(mask[part])}


# ----------------------------------------------------------------------------------------------
# Augmentation, on the device inside the train step.
# ----------------------------------------------------------------------------------------------

def augment(rng, images, example_ids, crop_padding, flip):
  """Random crop after zero padding by `crop_padding` pixels, and random horizontal flips.

  Each example's randomness comes from (rng, its index in the global batch), so the result does
  not depend on how the batch is split over devices.
  """
  if not crop_padding and not flip:
    return images
  height, width = images.shape[1:3]
  p = crop_padding

  def one(example_id, image):
    crop_key, flip_key = jax.random.split(jax.random.fold_in(rng, example_id))
    if p:
      padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
      dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
      image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, image.shape[-1]))
    if flip:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image

  return jax.vmap(one)(example_ids, images)
