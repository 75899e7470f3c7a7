"""Streaming input for TFDS image datasets that do not fit in memory: ImageNet and its kin.

The in-memory sources (nin_jax/data.py) hold a whole dataset as arrays; ImageNet's 1.28 million
JPEGs (~140 GB as float32 at 224 x 224) cannot be held. Here each host reads its share of the
TFDS files, decodes, crops and flips on its CPU, and hands the train step finished batches.

Why tf.data: TFDS stores prepared datasets as TFRecord files, which tf.data reads sequentially
at disk or GCS speed; its JPEG decoding, crops and resizes run in C++ threads outside Python's
GIL, and it is the pipeline of the flax ImageNet example and big_vision. Grain would need the
files in ArrayRecord format (`tfds.data_source`), which imagenet2012 prepared the usual way is not.

Determinism: the examples and augmentation of step s are a function of (seed, s), as for the
in-memory sources, so a resumed run ends bit-identical to an uninterrupted one, on any number of
hosts with the same `data_shards`:
  * the training split falls into `parts` contiguous ranges (placement.part_bounds), each read as
    its own TFDS slice `train[start:end]`; host h reads only the parts it feeds (data.py's layout);
  * in epoch e, part p is read with its files in an order drawn from (seed, e, p) and shuffled in
    a buffer seeded by the same; step e * steps_per_epoch + i takes its records i * per_part ..
    (i + 1) * per_part - 1, and a global batch is the parts' records side by side;
  * each example's crop and flip come from stateless random ops seeded by (seed, step, position
    in the global batch), never from thread timing;
  * a resumed run rebuilds epoch e's stream and skips the records before its step: they are read
    but not decoded (docs/imagenet.md, for what that costs);
  * TensorFlow's global seed (tf.random.set_seed, which anything in the process may call) is
    pinned to TF's default while a stream is built: tf.data pairs it with every op seed
    (tensorflow/tensorflow#26179), and a set one changed every step's examples.

Evaluation: host h reads its contiguous range of the split (Placement.host_range), resized and
centre-cropped; batches are padded and masked so every example counts exactly once.
"""
import collections
import contextlib
import dataclasses
import logging
import math
import re
import threading

import numpy as np

from nin_jax import files
from nin_jax.errors import ConfigError, DataError
from nin_jax.placement import Placement, host_available_bytes, part_bounds, steps_per_epoch

# The datasets streamed: data.STREAMING_DATASETS. TFDS's `validation` split serves as the test set:
# ImageNet's test labels are not public, and the papers (NIN_REFERENCE.md's 59.36% top-1 too)
# report on validation.
TEST_SPLIT = "validation"
# Per-channel mean and std of ImageNet's training images, in 0..255 RGB (the constants of
# torchvision and the flax ImageNet example); imagenette and imagenet_resized are ImageNet's
# images too. Fixed rather than fitted: fitting would read the whole training split once.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CROPS = ("random_resized", "resize_crop")


@dataclasses.dataclass
class StreamingDataset:
  """A TFDS dataset read from its files as training goes; what train.py needs of a dataset.

  The `validation_examples` held out for validation are the last ones of TFDS's training split
  (TFDS shuffles examples when it prepares a dataset: a random sample); training uses the rest.
  """
  builder: object  # tfds.core.DatasetBuilder
  config: object   # the run's ml_collections config: seed, batch_size, streaming, augment
  placement: Placement
  num_classes: int
  num_train_examples: int  # over all hosts
  num_test_examples: int
  num_validation_examples: int = 0

  @property
  def image_shape(self):
    size = self.config.streaming.image_size
    return (size, size, 3)

  def num_local(self, split: str) -> int:
    """This host's examples of `split` ("train", "validation", "test")."""
    total = {"train": self.num_train_examples, "validation": self.num_validation_examples,
             "test": self.num_test_examples}[split]
    start, end = self.placement.host_range(total)
    return end - start

  # --- Training ---------------------------------------------------------------------------------

  def train_batches(self, first_step: int, last_step: int, parts: int):
    """Yields, for each step first_step .. last_step - 1, this host's share of the global batch
    (config.batch_size over all hosts): {"image": float32 [local devices, per device, size,
    size, 3], normalised; "label": int32 [local devices, per device]}. Raises DataError (one
    line) when a file cannot be read."""
    steps = steps_per_epoch(self.num_train_examples, self.config.batch_size, parts)
    self._check_buffers_fit(parts)
    epoch, index = divmod(first_step, steps)
    if index:
      logging.info("Resuming at step %d, %d steps into epoch %d: reading (not decoding) the %d "
                   "records before it on this host first", first_step, index, epoch,
                   index * self.config.batch_size // self.placement.process_count)
    # The next epoch's stream starts (filling its shuffle buffer, a few seconds' reading) this
    # many steps before this one ends: two buffers in memory only for the last 10% of an epoch.
    warm_up = max(2, steps // 10)
    step, upcoming = first_step, None
    while step < last_step:
      current = upcoming or self._epoch(epoch, index, parts, steps)
      upcoming = None
      for batch in _readable(current, self.builder):
        yield {k: self.placement.per_device(v) for k, v in batch.items()}
        step += 1
        if step == last_step:
          return
        if (upcoming is None and step >= (epoch + 1) * steps - warm_up
            and (epoch + 1) * steps < last_step):
          upcoming = self._epoch(epoch + 1, 0, parts, steps)
      if step != (epoch + 1) * steps:  # the files held fewer records than TFDS's info says
        raise DataError(f"TFDS dataset {self.builder.name!r} in {str(self.builder.data_dir)!r} "
                        f"ran out of training records at step {step} of epoch {epoch} (expected "
                        f"{steps} steps): its files hold fewer than dataset_info.json counts; "
                        "prepare it again or copy it again")
      epoch, index = epoch + 1, 0

  def _check_buffers_fit(self, parts):
    """Raises DataError (one line) when this host's shuffle buffers, two per part it reads near
    an epoch's end, would not fit in its available memory; logs their size otherwise."""
    split = self.builder.info.splits["train"]
    record_bytes = split.num_bytes / max(1, split.num_examples)  # ~110 KB for ImageNet
    parts_here = parts // self.placement.process_count
    buffered = self._buffer_size(parts)
    size = 2 * parts_here * buffered * record_bytes
    available = host_available_bytes()
    logging.info("Shuffle buffers: up to %.0f MiB of host memory (2 x %d parts x %d records of "
                 "%.0f KB)", size / 2**20, parts_here, buffered, record_bytes / 1024)
    if available is not None and size > 0.8 * available:
      raise DataError(f"the shuffle buffers need {size / 2**30:.1f} GiB (2 x {parts_here} data "
                      f"parts on this host x {buffered} records (--config.streaming.shuffle_buffer="
                      f"{self.config.streaming.shuffle_buffer}) of {record_bytes / 1024:.0f}"
                      f" KB) but the host has {available / 2**30:.1f} GiB available; lower "
                      "--config.streaming.shuffle_buffer, or --config.data_shards")

  def _buffer_size(self, parts):
    """Records in each part's shuffle buffer: config.streaming.shuffle_buffer, or the whole part
    when smaller (a buffer never holds more; TF crashed on a buffer of 10^10)."""
    return min(self.config.streaming.shuffle_buffer, math.ceil(self.num_train_examples / parts))

  def _epoch(self, epoch, first_index, parts, steps):
    """tf.data.Dataset of this host's batches of steps epoch * steps + first_index ..."""
    tf = files.tensorflow()
    per_part = self.config.batch_size // parts
    per_host = parts // self.placement.process_count
    streams = []
    with _default_global_seed():  # the seeded ops take their seeds when built
      for part in range(self.placement.process_index * per_host,
                        (self.placement.process_index + 1) * per_host):
        start, end = part_bounds(self.num_train_examples, parts, part)
        seed = _seed(self.config.seed, epoch, part)
        records = self._read(f"train[{start}:{end}]", shuffle_seed=seed)
        records = records.shuffle(self._buffer_size(parts), seed=seed,
                                  reshuffle_each_iteration=False)
        first = first_index * per_part
        records = records.take(steps * per_part).skip(first).enumerate(start=first)

        def example(k, record, part=part):
          step = tf.cast(epoch * steps, tf.int64) + k // per_part
          position = part * per_part + k % per_part  # in the global batch
          return self._train_example(record, step, position), tf.cast(record["label"], tf.int32)

        streams.append(records.map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True).batch(per_part, drop_remainder=True))
    batches = tf.data.Dataset.zip(tuple(streams)).map(
        lambda *part_batches: {"image": tf.concat([b[0] for b in part_batches], 0),
                               "label": tf.concat([b[1] for b in part_batches], 0)})
    return batches.prefetch(2).with_options(_options(warm_start=True)).as_numpy_iterator()

  def _train_example(self, record, step, position):
    """float32 [size, size, 3]: the record's image decoded, cropped (config.streaming.crop),
    flipped (config.augment.flip) and normalised; randomness from (seed, step, position)."""
    tf = files.tensorflow()
    s = self.config.streaming
    size = s.image_size
    seed = tf.stack([tf.constant(self.config.seed, tf.int64),
                     step * self.config.batch_size + tf.cast(position, tf.int64)])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    raw = record["image"]
    if s.crop == "random_resized":
      # Inception's crop (Szegedy et al. 2015), as the flax ImageNet example and big_vision take
      # it: a box of `min_area`..100% of the image, aspect 3/4..4/3, decoded alone, resized.
      def window(shape):
        begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=crop_seed,
            min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(s.min_area, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        return begin[0], begin[1], box[0], box[1]
      image = tf.image.resize(_decode_window(raw, window), [size, size], antialias=True)
    else:  # "resize_crop": the Caffe recipe: the whole image warped to a square, a random crop
      scaled = round(size / s.eval_crop_fraction)
      # Bilinear without antialiasing, as Caffe's OpenCV warp: with it the host decoded 137
      # instead of 256 images/s on 2 cores (~100 KB JPEGs to 256 x 256, measured).
      image = tf.image.resize(_decode(raw), [scaled, scaled], antialias=False)
      image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
    if self.config.augment.flip:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return _normalise(image)

  # --- Evaluation -------------------------------------------------------------------------------

  def eval_batches(self, split: str, batch_size: int, placement: Placement):
    """Yields this host's examples of `split` ("test" or "validation") in fixed-size batches of
    batch_size / hosts: {"image": float32 [local devices, per device, size, size, 3], "label",
    "mask": 1.0 for a real example, 0.0 for padding}. Every host yields the same number of
    batches (the collectives need it), so each example counts exactly once over the hosts."""
    tf = files.tensorflow()
    per_host = batch_size // placement.process_count
    total = self.num_test_examples if split == "test" else self.num_validation_examples
    num_batches = placement.num_eval_batches(total, per_host)
    start, end = placement.host_range(total)
    if split == "validation":  # the tail of TFDS's train split
      start, end = start + self.num_train_examples, end + self.num_train_examples
    tfds_split = TEST_SPLIT if split == "test" else "train"
    records = self._read(f"{tfds_split}[{start}:{end}]") if end > start else None
    size = self.config.streaming.image_size
    yielded = 0
    if records is not None:
      examples = records.map(lambda r: (self._eval_example(r["image"]),
                                        tf.cast(r["label"], tf.int32)),
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      batches = examples.batch(per_host).prefetch(2).with_options(_options())
      for image, label in _readable(batches.as_numpy_iterator(), self.builder):
        yield _padded(image, label, per_host, placement)
        yielded += 1
    empty = (np.zeros((0, size, size, 3), np.float32), np.zeros((0,), np.int32))
    for _ in range(yielded, num_batches):
      yield _padded(*empty, per_host, placement)

  def _eval_example(self, raw):
    """float32 [size, size, 3]: the centre size x size of the image resized as its training
    crop sees it: for "resize_crop" warped to a square of size / eval_crop_fraction (Caffe's
    centre 224 of 256 x 256); for "random_resized" its shorter side resized to that (the flax
    ImageNet example's centre crop)."""
    tf = files.tensorflow()
    s = self.config.streaming
    size, scaled = s.image_size, round(s.image_size / s.eval_crop_fraction)
    image = _decode(raw)
    if s.crop == "resize_crop":  # as in training: no antialiasing
      resized = tf.constant([scaled, scaled])
      image = tf.image.resize(image, resized, antialias=False)
    else:
      shape = tf.cast(tf.shape(image)[:2], tf.float32)
      resized = tf.maximum(tf.cast(tf.round(shape * scaled / tf.reduce_min(shape)), tf.int32),
                           size)
      image = tf.image.resize(image, resized, antialias=True)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    return _normalise(image[top:top + size, left:left + size])

  def _read(self, split, shuffle_seed=None):
    """The undecoded records of `split` (a TFDS split string): files in the order drawn from
    `shuffle_seed`, or in order when None."""
    import tensorflow_datasets as tfds
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=_options(),
                                  try_autocache=False)
    try:
      return self.builder.as_dataset(
          split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
          decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:  # a missing file shows up here; a cut one when it is read
      raise _unreadable(self.builder, e) from None


def _seed(seed, epoch, part):
  """A 31-bit seed for tf.data drawn from (seed, epoch, part)."""
  return int(np.random.SeedSequence([seed, epoch, part]).generate_state(1)[0] >> 1)


def _options(warm_start=False):
  tf = files.tensorflow()
  options = tf.data.Options()
  options.deterministic = True  # parallel maps keep their order: the batch of a step is fixed
  if warm_start:  # start reading when the iterator is made, not at its first batch
    options.experimental_warm_start = True
  return options


# tensorflow.python.framework.random_seed.DEFAULT_GRAPH_SEED: the global seed TF pairs with op
# seeds when none was set.
_TF_DEFAULT_GLOBAL_SEED = 87654321
_global_seed_lock = threading.Lock()


@contextlib.contextmanager
def _default_global_seed():
  """TF's global seed as if never set, while a stream is built (the runs of a sweep build
  theirs in threads: one at a time); a global seed set before is set again after (which also
  restarts TF's count for ops built without a seed)."""
  tf = files.tensorflow()
  with _global_seed_lock:
    global_seed = tf.compat.v1.get_seed(1)[0]  # (global, op) as an op seeded 1 would get them
    if global_seed == _TF_DEFAULT_GLOBAL_SEED:
      yield
      return
    tf.random.set_seed(_TF_DEFAULT_GLOBAL_SEED)
    try:
      yield
    finally:
      tf.random.set_seed(global_seed)


def _decode(raw):
  """uint8 [h, w, 3] of an encoded image: JPEG (grayscale and CMYK ones too), PNG, GIF, BMP."""
  tf = files.tensorflow()
  return tf.io.decode_image(raw, channels=3, expand_animations=False)


def _decode_window(raw, window):
  """The box `window(shape) -> (top, left, height, width)` of an encoded image, decoding only
  that box when it is a JPEG (ImageNet's 110 KB average JPEG: most of the decode skipped)."""
  tf = files.tensorflow()

  def jpeg():
    top, left, height, width = window(tf.image.extract_jpeg_shape(raw))
    return tf.image.decode_and_crop_jpeg(raw, tf.stack([top, left, height, width]), channels=3)

  def other():
    image = _decode(raw)
    top, left, height, width = window(tf.shape(image))
    return image[top:top + height, left:left + width]

  return tf.cond(tf.io.is_jpeg(raw), jpeg, other)


def _normalise(image):
  tf = files.tensorflow()
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(IMAGENET_MEAN_RGB)) / tf.constant(IMAGENET_STD_RGB)


def _padded(image, label, per_host, placement):
  count = len(label)
  pad = per_host - count
  image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), np.float32)])
  label = np.concatenate([label, np.zeros(pad, np.int32)])
  mask = (np.arange(per_host) < count).astype(np.float32)
  return {k: placement.per_device(v)
          for k, v in (("image", image), ("label", label), ("mask", mask))}


def _readable(iterator, builder):
  """`iterator`, with a file that turns out cut or missing, or an image that does not decode,
  as one DataError line."""
  tf = files.tensorflow()
  try:
    yield from iterator
  except tf.errors.OpError as e:
    raise _unreadable(builder, e) from None


def _unreadable(builder, error):
  tf = files.tensorflow()
  what = ("an image in it does not decode" if isinstance(error, tf.errors.InvalidArgumentError)
          else "a file is missing or cut")
  # TF's messages open with its graph's names ({{function_node __wrapped__IteratorGetNext...}})
  cause = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error))
  return DataError(f"TFDS dataset {builder.name!r} in {str(builder.data_dir)!r} cannot be read "
                   f"({type(error).__name__}: {files.one_line(cause, 200)}); {what}: prepare it "
                   "again (delete that folder, then download_and_prepare) or copy it again")


def open_dataset(builder, config, placement: Placement | None = None) -> StreamingDataset:
  """The streaming dataset of TFDS `builder` (prepared: data.tfds_builder checks that, as for the
  in-memory TFDS sources), opened (its files are read as training goes). Raises DataError when it
  lacks a split, ConfigError when config.validation_examples leaves too few training
  examples."""
  placement = placement or Placement.everywhere()
  splits = builder.info.splits
  if TEST_SPLIT not in splits or "train" not in splits:
    raise DataError(f"TFDS dataset {config.dataset!r} in {str(builder.data_dir)!r} has splits "
                    f"{sorted(splits)}; nin-jax needs 'train' and {TEST_SPLIT!r}")
  num_train = splits["train"].num_examples
  held_out = config.validation_examples
  if held_out and not 0 < held_out < num_train:
    raise ConfigError(f"--config.validation_examples={held_out} must be below the {num_train} "
                      "training examples (0: no validation split)")
  return StreamingDataset(builder, config, placement,
                          builder.info.features["label"].num_classes, num_train - held_out,
                          splits[TEST_SPLIT].num_examples, held_out)


def ahead(iterator, size=2):
  """`iterator`'s items `size` ahead of the consumer: for batches put on the devices
  (placement.shard, asynchronous), the copy of the next batches overlaps this step."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
