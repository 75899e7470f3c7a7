"""Checks a config before anything is compiled or written; each problem is one ConfigError line
that names the field and says how to fix it."""
import jax

from nin_jax import data, models
from nin_jax.errors import ConfigError

SCHEDULES = ("constant", "step", "cosine")


def _require(condition, message):
  if not condition:
    raise ConfigError(message)


def _choice(config, key, choices):
  value = _get(config, key)
  _require(value in choices, f"--config.{key}={value!r} is not one of {list(choices)}")


def _get(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _positive(config, *keys, allow_zero=False):
  for key in keys:
    value = _get(config, key)
    ok = value is not None and (value >= 0 if allow_zero else value > 0)
    _require(ok, f"--config.{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def validate(config):
  """Raises ConfigError for the first problem found in `config` (a run's config)."""
  _choice(config, "dataset", data.SOURCES)
  _choice(config, "preprocess", data.PREPROCESSORS)
  _choice(config, "model.preset", models.PRESETS)
  _choice(config, "model.head", models.HEADS)
  _choice(config, "optimizer.schedule", SCHEDULES)
  _choice(config, "model.dtype", ("float32", "bfloat16"))
  _positive(config, "batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
            "checkpoint_every_steps", "keep_checkpoints", "optimizer.learning_rate",
            "model.init_stddev", "optimizer.decay_factor")
  _positive(config, "eval_every_steps", "stuck_loss_steps", "stuck_loss_tolerance",
            "optimizer.weight_decay", "optimizer.grad_clip_norm", "optimizer.warmup_epochs",
            "optimizer.bias_lr_multiplier", "optimizer.classifier_lr_multiplier",
            "augment.crop_padding", "microbatch_size", allow_zero=True)
  _require(0 <= config.optimizer.momentum < 1,
           f"--config.optimizer.momentum={config.optimizer.momentum} must be in [0, 1)")
  if config.model.num_1x1 is not None:
    _positive(config, "model.num_1x1", allow_zero=True)
  if config.model.dropout is not None:
    _require(0 <= config.model.dropout < 1,
             f"--config.model.dropout={config.model.dropout} must be in [0, 1)")
  decay = list(config.optimizer.decay_epochs)
  _require(decay == sorted(decay) and all(e > 0 for e in decay),
           f"--config.optimizer.decay_epochs={tuple(decay)} must be positive and ascending")
  if config.dataset == "npz":
    _require(config.npz_path, "dataset 'npz' needs a file: --config.npz_path=/path/to/data.npz")
  if config.dataset == "synthetic":
    _positive(config, "synthetic.num_classes", "synthetic.num_train", "synthetic.num_test")
    shape = tuple(config.synthetic.image_shape)
    _require(len(shape) == 3 and min(shape) > 0,
             f"--config.synthetic.image_shape={shape} must be (height, width, channels) > 0")
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    _require(_get(config, key) % devices == 0,
             f"--config.{key}={_get(config, key)} does not divide by the {devices} devices; "
             f"use a multiple of {devices}")
  per_device = config.batch_size // devices
  _require(not config.microbatch_size or per_device % config.microbatch_size == 0,
           f"--config.microbatch_size={config.microbatch_size} does not divide the per-device "
           f"batch of {per_device} ({config.batch_size} over {devices} devices); use a divisor "
           f"of {per_device}, or 0 for the whole batch at once")


def validate_ablation(config):
  """Checks the `ablation` section of a sweep config."""
  ablation = config.ablation
  _require(ablation.num_seeds >= 1, f"--config.ablation.num_seeds={ablation.num_seeds} must be >= 1")
  _require(len(ablation.arm_values) >= 1, "--config.ablation.arm_values is empty")
  try:
    _get(config, ablation.field)
  except (KeyError, AttributeError):
    raise ConfigError(f"--config.ablation.field={ablation.field!r} names no config field") from None
