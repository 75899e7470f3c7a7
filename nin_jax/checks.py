"""Config checks: a run's config before anything is compiled or written; each problem is one
ConfigError line that names the field and says how to fix it."""
import functools
import logging
import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_flags import config_path

from nin_jax import config_string, data, models, streaming
from nin_jax import placement as placement_lib
from nin_jax.errors import ConfigError

SCHEDULES = ("constant", "step", "cosine")
# Integer fields count in int32 on the devices and in TensorFlow (steps, seeds, sizes).
MAX_INT = 2**31 - 1
# More 1x1 layers per block than any NIN study trains (the paper: 2; NIN_REFERENCE.md); a larger
# number is a typo, and a huge one took all memory just to describe the model (measured: 10**12).
MAX_NUM_1X1 = 64
# Sections whose fields are not training fields: checked by validate_ablation.
NOT_TRAINING = ("ablation",)


def _require(condition, message):
  if not condition:
    raise ConfigError(message)


def _choice(config, key, choices):
  value = config_string.get(config, key)
  _require(value in choices or value is None and config_string.get(_defaults(), key) is None,
           f"--config.{key}={value!r} is not one of {list(choices)}")


def _positive(config, *keys):
  """After check_fields: the numbers `keys` name must also be > 0."""
  for key in keys:
    value = config_string.get(config, key)
    _require(value > 0, f"--config.{key}={value} must be > 0")


def _describe(kind):
  return {bool: "true or false", int: "an integer", float: "a number", str: "text",
          tuple: "a tuple such as (100, 150)"}.get(kind, kind.__name__)


def _of_type(value, kind) -> bool:
  if kind is bool:
    return isinstance(value, (bool, np.bool_))
  if isinstance(value, (bool, np.bool_)):
    return False  # True is an int to Python, never a size, a step or a rate here
  if kind is int:
    return isinstance(value, numbers.Integral)
  if kind is float:
    return isinstance(value, numbers.Real) and math.isfinite(value)
  if kind is tuple:
    return isinstance(value, (tuple, list))
  return isinstance(value, kind)


@functools.cache
def _defaults():
  """experiments/default.py's config, which every config file builds on: the fields' types."""
  from experiments import default  # nin_jax is imported by the configs, not the other way round
  return default.get_config()


def check_fields(config):
  """Raises ConfigError unless every field of `config` is a field of experiments/default.py's
  config, of the type its default has there (a placeholder's declared type; None only where the
  default is None, "unset"), and every number is finite, >= 0 (no nin-jax field is negative; a
  tuple's elements: by its own check in validate()) and, for an integer, at most MAX_INT.
  Sections named in NOT_TRAINING are skipped. Narrower ranges are validate()'s; this comes
  first, so that they compare numbers with numbers."""
  defaults = _defaults()
  known = list(config_string.field_paths(defaults))
  for key in config_string.field_paths(config):
    if key.split(".")[0] in NOT_TRAINING:
      continue
    value = config_string.get(config, key)
    if key not in known:
      close = config_string.nearest_field(key, known)
      raise ConfigError(f"--config.{key} is not a nin-jax config field" +
                        (f"; did you mean {close}?" if close else
                         " (experiments/default.py lists them all); remove it"))
    kind = config_path.get_type(key, defaults)
    if issubclass(kind, ml_collections.ConfigDict):
      _require(isinstance(value, ml_collections.ConfigDict),
               f"--config.{key}={value!r} replaces a section of the config; set its fields, "
               f"such as --config.{config_string.first_field(key, known)}")
      continue
    if value is None and config_string.get(defaults, key) is None:
      continue  # unset: the preset's or the default's choice
    unset = " (or None: unset)" if config_string.get(defaults, key) is None else ""
    _require(_of_type(value, kind), f"--config.{key}={value!r} must be " +
             ("a finite number" if kind is float else _describe(kind)) + unset)
    for number in (value if kind is tuple else [value]):  # a tuple's range: its own check below
      if isinstance(number, numbers.Real) and not isinstance(number, (bool, np.bool_)):
        _require(math.isfinite(number), f"--config.{key}={value!r} must be finite")
        _require(number >= 0 or kind is tuple, f"--config.{key}={value!r} must be >= 0")
        _require(kind is float or number <= MAX_INT,
                 f"--config.{key}={value!r} is beyond {MAX_INT:,}, the largest integer nin-jax "
                 "counts in (int32 on the devices)")


def validate(config, num_devices: int | None = None):
  """Raises ConfigError for the first problem found in `config` (a run's config), trained on
  `num_devices` devices (default: every device of every host): a field of the wrong type or out of
  its range (check_fields, then each field's own range), a combination that cannot work, data or
  a model that cannot fit."""
  check_fields(config)
  _require(config.dataset in data.SOURCES or data.is_streamed(config.dataset),
           f"--config.dataset={config.dataset!r} is not one of {list(data.SOURCES)} (or a TFDS "
           "config of a streamed one, such as imagenette/320px-v2)")
  _choice(config, "preprocess", data.PREPROCESSORS)
  for field, table in models.CONFIG_CHOICES.items():
    _choice(config, f"model.{field}", table)
  _choice(config, "optimizer.schedule", SCHEDULES)
  _positive(config, "batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
            "checkpoint_every_steps", "keep_checkpoints", "optimizer.learning_rate",
            "model.init_stddev", "optimizer.decay_factor")
  # every other number: >= 0 (check_fields); validation_examples against the data's size too
  # |loss - ln(classes)| below it counts as stuck: a band as wide as ln(classes) (2.3 for 10) would
  # stop runs that learn
  _require(config.stuck_loss_tolerance < 1,
           f"--config.stuck_loss_tolerance={config.stuck_loss_tolerance} must be below 1 (a loss "
           "within it of ln(classes) counts as stuck; the default is 1e-3)")
  _require(config.optimizer.label_smoothing < 1,
           f"--config.optimizer.label_smoothing={config.optimizer.label_smoothing} must be in "
           "[0, 1): the share of each target spread over the classes (0.1 is usual)")
  _require(0 <= config.optimizer.momentum < 1,
           f"--config.optimizer.momentum={config.optimizer.momentum} must be in [0, 1)")
  _require(config.model.num_1x1 is None or config.model.num_1x1 <= MAX_NUM_1X1,
           f"--config.model.num_1x1={config.model.num_1x1}: at most {MAX_NUM_1X1} 1x1 layers per "
           "block (the paper uses 2)")
  if config.model.dropout is not None:
    _require(0 <= config.model.dropout < 1,
             f"--config.model.dropout={config.model.dropout} must be in [0, 1)")
  _require(config.optimizer.decay_factor <= 1,
           f"--config.optimizer.decay_factor={config.optimizer.decay_factor} multiplies the rate "
           "at each decay epoch: use a factor in (0, 1], such as 0.1")
  decay = list(config.optimizer.decay_epochs)
  _require(all(_of_type(e, float) for e in decay),
           f"--config.optimizer.decay_epochs={tuple(decay)} must be numbers of epochs, "
           "for example '(200, 230)'")
  _require(all(a < b for a, b in zip(decay, decay[1:])) and all(e > 0 for e in decay),
           f"--config.optimizer.decay_epochs={tuple(decay)} must be positive and strictly "
           "ascending")
  hidden = list(config.model.fc_hidden)
  _require(all(_of_type(w, int) and w > 0 for w in hidden),
           f"--config.model.fc_hidden={tuple(hidden)} must be positive layer widths, "
           "for example '(512,)'")
  warmup, epochs = config.optimizer.warmup_epochs, config.num_epochs
  _require(warmup < epochs, f"--config.optimizer.warmup_epochs={warmup} must be shorter than "
           f"--config.num_epochs={epochs}")
  if config.optimizer.schedule == "step":
    _require(all(e > warmup for e in decay),
             f"--config.optimizer.decay_epochs={tuple(decay)} must come after the warm-up "
             f"(--config.optimizer.warmup_epochs={warmup}); decay epochs count from the start "
             "of the run")
    late = [e for e in decay if e >= epochs]
    if late:
      logging.warning("--config.optimizer.decay_epochs %s are at or beyond the run's %s "
                      "epochs: those decays never happen", tuple(late), epochs)
  if config.dataset == "npz":
    _require(config.npz_path, "dataset 'npz' needs a file: --config.npz_path=/path/to/data.npz")
  else:  # the file would be ignored: the run trains on the dataset named
    _require(not config.npz_path, f"--config.npz_path={config.npz_path} is set but "
             f"--config.dataset={config.dataset}: add --config.dataset=npz to train on the file")
  _positive(config, "synthetic.num_classes", "synthetic.num_train", "synthetic.num_test")
  shape = tuple(config.synthetic.image_shape)
  _require(len(shape) == 3 and all(_of_type(n, int) for n in shape) and min(shape) > 0,
           f"--config.synthetic.image_shape={shape} must be (height, width, channels) > 0")
  _choice(config, "streaming.crop", streaming.CROPS)
  _positive(config, "streaming.image_size", "streaming.shuffle_buffer")
  for key in ("streaming.min_area", "streaming.eval_crop_fraction"):
    value = config_string.get(config, key)
    _require(0 < value <= 1, f"--config.{key}={value} must be in (0, 1]")
  if data.is_streamed(config.dataset):
    _streaming(config)
  devices = num_devices or jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    _require(config_string.get(config, key) % devices == 0,
             f"--config.{key}={config_string.get(config, key)} does not divide by the {devices} "
             "devices; "
             f"use a multiple of {devices}")
  image_shape = data.image_shape(config)
  if image_shape:  # npz files are checked once loaded
    data.check_fits(config, image_shape)
    check_model_fits(_model(config), image_shape, config)
  per_device = config.batch_size // devices
  _require(not config.microbatch_size or per_device % config.microbatch_size == 0,
           f"--config.microbatch_size={config.microbatch_size} does not divide the per-device "
           f"batch of {per_device} ({config.batch_size} over {devices} devices); use a divisor "
           f"of {per_device}, or 0 for the whole batch at once")


def _streaming(config):
  """What a streamed dataset (nin_jax/streaming.py) can and cannot do."""
  _require(config.preprocess == "mean_std",
           f"--config.preprocess={config.preprocess} needs the whole training split in memory; "
           f"{config.dataset} is streamed and normalised with ImageNet's per-channel mean and "
           "std: use --config.preprocess=mean_std")
  native = {"imagenet_resized/32x32": 32, "imagenet_resized/64x64": 64}.get(config.dataset)
  if native and native != config.streaming.image_size:
    logging.warning("--config.streaming.image_size=%d resizes the %d x %d images of %s: for "
                    "their own size set --config.streaming.image_size=%d, with "
                    "--config.streaming.crop=resize_crop --config.streaming.eval_crop_fraction=1"
                    " (flips only) or crop=random_resized (zoomed crops)",
                    config.streaming.image_size, native, native, config.dataset, native)
  _require(not config.augment.crop_padding,
           f"--config.augment.crop_padding={config.augment.crop_padding} is the in-memory "
           f"sources' shift; {config.dataset} is cropped by --config.streaming.crop "
           "(random_resized or resize_crop): set --config.augment.crop_padding=0")


def _model(config):
  # spatial sizes and parameter counts depend on neither the classes nor the dtype
  return models.NIN(num_classes=10, **{**config.model, "dtype": "float32"})


def block_shapes(model, image_shape):
  """[(input shape, output shape)] of every mlpconv block of `model` for one image of
  `image_shape` (H, W, C), worked out by jax.eval_shape: no FLOPs, no memory."""
  return _trace(model, image_shape)[0]


def _trace(model, image_shape):
  """(block_shapes, the number of parameters) of `model` on `image_shape` images, from one
  jax.eval_shape of its init."""
  shapes = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, models.MLPConv) and context.method_name == "__call__":
      shapes.append((tuple(args[0].shape), tuple(out.shape)))
    return out

  def forward(x):
    with nn.intercept_methods(record):
      return model.init(jax.random.PRNGKey(0), x, train=False)

  variables = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return shapes, sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


def _num_params_if_fits(model, image_shape) -> int | None:
  """`model`'s number of parameters on `image_shape` images, or None when a block's feature map
  would be empty there."""
  try:
    shapes, count = _trace(model, image_shape)
  except (TypeError, ValueError):  # shape inference refused: a negative size
    return None
  return count if all(min(shape[1:3]) >= 1 for pair in shapes for shape in pair) else None


def _memory_bytes():
  """The first local device's memory (its `bytes_limit`), or the host's available memory where
  the device does not say (CPU)."""
  try:
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  except Exception:  # noqa: BLE001 -- backends without memory statistics raise or return None
    limit = None
  return limit or placement_lib.host_available_bytes()


def check_model_fits(model, image_shape, config):
  """Raises ConfigError when some block of `model` would get or give an empty feature map for
  `image_shape` images, naming the preset's smallest usable (square) input size; or when its
  float32 parameters, momentum and gradients would not fit in a device's memory (a huge
  fc_hidden width, or the labels of an npz file that make a huge number of classes)."""
  count = _num_params_if_fits(model, image_shape)
  if count is not None:
    needed, limit = 3 * 4 * count, _memory_bytes()
    _require(limit is None or needed <= limit,
             f"the model ({config.model.preset}, head {config.model.head}, fc_hidden "
             f"{tuple(config.model.fc_hidden)}, {model.num_classes:,} classes) has {count:,} "
             f"parameters: {needed / 1e9:.1f} GB as float32 weights, momentum and gradients, "
             f"more than the {limit / 1e9:.1f} GB of memory a device has here; narrow "
             "--config.model.fc_hidden, or check the labels (num_classes is the largest + 1)")
    return
  channels = image_shape[-1]
  low, high = 1, 1024  # smallest fitting size, by bisection: fitting is monotone in the size
  if _num_params_if_fits(model, (high, high, channels)) is None:
    smallest = "more than 1024 x 1024"
  else:
    while low < high:
      middle = (low + high) // 2
      fits = _num_params_if_fits(model, (middle, middle, channels)) is not None
      low, high = (low, middle) if fits else (middle + 1, high)
    smallest = f"{low} x {low}"
  raise ConfigError(f"--config.model.preset={config.model.preset} cannot take "
                    f"{image_shape[0]} x {image_shape[1]} images ({config.dataset}): a block's "
                    f"feature map would be empty; its smallest input is {smallest}. Pick a preset "
                    "sized for the data (nin_digits: 8 x 8, nin_cifar: 32 x 32, nin_imagenet: "
                    "224 x 224)")


def validate_ablation(config):
  """Checks the `ablation` section of a sweep config."""
  ablation = config.ablation
  local = jax.local_device_count()
  for key in ("num_seeds", "devices_per_run", "runs_at_once"):
    _require(_of_type(ablation[key], int) and 0 <= ablation[key] <= MAX_INT,
             f"--config.ablation.{key}={ablation[key]!r} must be an integer >= 0")
  per_run = ablation.devices_per_run
  _require(not per_run or local % per_run == 0,
           f"--config.ablation.devices_per_run={per_run} must divide this host's {local} devices "
           f"(or be 0: automatic)")
  _require(ablation.num_seeds >= 1,
           f"--config.ablation.num_seeds={ablation.num_seeds} must be >= 1")
  _require(_of_type(config.seed, int) and 0 <= config.seed <= MAX_INT - ablation.num_seeds + 1,
           f"--config.seed={config.seed!r}: a sweep's first seed must be an integer from 0 to "
           f"{MAX_INT - ablation.num_seeds + 1:,} (its runs take it and the "
           f"--config.ablation.num_seeds - 1 = {ablation.num_seeds - 1} after it)")
  _require(all(isinstance(arm, (tuple, list)) and len(arm) == 2 and isinstance(arm[0], str)
               and all(isinstance(o, (tuple, list)) and len(o) == 2 and isinstance(o[0], str)
                       for o in arm[1]) for arm in ablation.arms) and len(ablation.arms) >= 1,
           "--config.ablation.arms must be ((name, ((dotted field, value), ...)), ...); write "
           "it with experiments/default.py's ablation({name: {field: value}}, num_seeds)")
  # the arms' names and the fields they set: sweep.arms and sweep.expand, before any run
