"""Network In Network (Lin, Chen & Yan, ICLR 2014) in Flax linen.

Two ideas, two modules:
  * `MLPConv`: a k x k convolution followed by 1 x 1 convolutions, each with ReLU -- a small MLP
    shared across every spatial position.
  * the head: `gap` averages one feature map per class over space (no parameters); `fc` and
    `fc_dropout` are the fully connected heads the paper compares it with (section 4.6).

How the FC heads attach (the paper does not say): the body is the same mlpconv stack, minus the
last 1 x 1 layer of the last block (the class-map layer, which only a GAP head needs). The FC head
flattens the remaining feature maps (8 x 8 x 192 for `nin_cifar`) and maps them to logits with
dense layer(s); `fc_dropout` applies dropout 0.5 before each dense layer.

The ablation axes are data, declared once here: architectures (`BlockSpec` tuples in `PRESETS`),
heads (`HEADS`), normalisations (`NORMS`), compute dtypes and precisions; `POOLS` holds the
pooling layers that a preset's blocks name.
`CHOICES` maps each `NIN` field that picks from a table to its table: the config checks take the
allowed values from there, and `config.model` is `NIN`'s own fields (experiments/default.py
builds it from them), so a model is `NIN(num_classes=..., **config.model)` and a new axis is a
field and a table here plus a line in a config. Parameter counts: tests/models_test.py.

Normalisation (`norm`): "none" is the paper. "batch" puts BatchNorm between every convolution and
its ReLU -- the k x k conv, each 1 x 1 cccp layer and the class-map layer too -- and between each
hidden dense layer of the FC heads and its ReLU; not after the FC classifier (its outputs are the
logits). This is the layout of the Torch NIN+BN reproduction in NIN_REFERENCE.md (92% against 88%
without BN: szagoruyko/cifar.torch, models/nin.lua, whose `Block` is conv -> BN -> ReLU for every
layer, `Block(192, 10, 1, 1)` before the 8 x 8 average included); only that layout: its model
averages after the second block (here the paper's max pool) and draws N(0, 0.05^2) weights. Its
BN epsilon is 1e-3; here 1e-5, Torch's and PyTorch's default. A layer followed by BN has no bias (use_bias=False): BN
subtracts the batch mean, so a bias would be cancelled, and BN's own offset (`bias`, beta) takes
its role. BatchNorm's running averages are the variables collection "batch_stats".
"""
import dataclasses
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from nin_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Head:
  """How the last block's output becomes logits.

  class_maps: the GAP head: the last layer emits one map per class (the class-map layer, named
    `classifier`) and a class's score is its map's spatial mean; no parameters of its own.
    Otherwise an FC head: the body does without the class-map layer, and the remaining feature
    maps are flattened into dense layers (`fc_hidden`, then `classifier`).
  dropout: the rate of the dropout on the class maps before their average (a GAP head), or
    before each dense layer (an FC head); 0: none.
  """
  class_maps: bool
  dropout: float = 0.0


# The paper's section 4.6 compares these three on the same mlpconv body (NIN_REFERENCE.md).
HEADS = {"gap": Head(class_maps=True), "fc": Head(class_maps=False),
         "fc_dropout": Head(class_maps=False, dropout=0.5)}
# The paper | BatchNorm before each ReLU (see the module docstring): momentum 0.9, epsilon 1e-5.
NORMS = {"none": None,
         "batch": functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=jnp.float32)}
# Kernel initialisers (`NIN.initializer`), given init_stddev. "normal": the authors' N(0, stddev^2)
# (NIN_REFERENCE.md); "he": He et al. 2015's N(0, 2 / fan_in), truncated at 2 std as flax's
# he_normal is (fan_in = k * k * input channels), for ReLU networks; it ignores init_stddev.
INITS = {"normal": nn.initializers.normal, "he": lambda stddev: nn.initializers.he_normal()}
# Compute dtypes (`NIN.dtype`); parameters, logits and the loss are float32 with either.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The precision of every convolution and matmul with float32 operands (`NIN.precision`), named as
# JAX's jax_default_matmul_precision names them. JAX's own default (lax.Precision.DEFAULT) is not
# float32 on accelerators: one bfloat16 pass on TPU, TensorFloat-32 on NVIDIA GPUs since Ampere;
# "tensorfloat32" (HIGH) is three bfloat16 passes on TPU, TF32 on GPU; "float32" (HIGHEST) is full
# float32 everywhere. XLA:CPU computes float32 whatever is asked. bfloat16 operands
# (dtype="bfloat16") are bfloat16 products at any of them.
PRECISIONS = {"float32": lax.Precision.HIGHEST, "tensorfloat32": lax.Precision.HIGH,
              "default": lax.Precision.DEFAULT}
# model.dtype="native" (the modern recipe's): bfloat16 where the platform computes bfloat16
# natively, float32 elsewhere. The training resolves it (native_dtype) before it builds the
# model, so a NIN is never built with it and a run's config.json records what it computed in.
NATIVE = "native"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One mlpconv block and what follows it."""
  widths: tuple[int, ...]   # first: the k x k conv; the rest: the 1 x 1 convs. 0 = num_classes.
  kernel: int
  stride: int = 1
  padding: int = 0
  pool: str | None = None   # 'max' or 'avg', 3 x 3 stride 2, ceil mode (as in cuda-convnet/Caffe)
  dropout: float = 0.0      # after the pool
  # The preset's k x k width where `with_num_1x1(0)` made the k x k conv the class-map layer: an
  # FC head, which does without that layer, keeps the conv at this width instead.
  kxk_width: int = 0


# Widths of 0 stand for num_classes: the last block of a GAP model emits one map per class.
PRESETS: dict[str, tuple[BlockSpec, ...]] = {
    # NIN_REFERENCE.md, "CIFAR-10 model (the authors' own files)": 966,986 parameters for 10 classes.
    "nin_cifar": (
        BlockSpec((192, 160, 96), kernel=5, padding=2, pool="max", dropout=0.5),
        BlockSpec((192, 192, 192), kernel=5, padding=2, pool="max", dropout=0.5),
        BlockSpec((192, 192, 0), kernel=3, padding=1),
    ),
    # NIN_REFERENCE.md, "ImageNet NIN (Caffe zoo)": 224 -> 54 -> 27 -> 13 -> 6, average 6 x 6.
    "nin_imagenet": (
        BlockSpec((96, 96, 96), kernel=11, stride=4, pool="max"),
        BlockSpec((256, 256, 256), kernel=5, padding=2, pool="max"),
        BlockSpec((384, 384, 384), kernel=3, padding=1, pool="max", dropout=0.5),
        BlockSpec((1024, 1024, 0), kernel=3, padding=1),
    ),
    # Sized for the embedded 8 x 8 digits: 8 -> 4, trains to >97% in well under a minute on 2 cores.
    "nin_digits": (
        BlockSpec((96, 96, 96), kernel=3, padding=1, pool="max", dropout=0.5),
        BlockSpec((96, 96, 0), kernel=3, padding=1),
    ),
}


def with_num_1x1(blocks: Sequence[BlockSpec], num_1x1: int) -> tuple[BlockSpec, ...]:
  """The same network with `num_1x1` 1 x 1 layers per block (the depth ablation).

  Each block keeps its k x k width and its output width (so the next block and the head see the
  same shapes); added 1 x 1 layers take the width of the preset's first 1 x 1 layer. With 0, the
  k x k conv emits the block's output width directly: a conventional CNN layer (in the last
  block of a GAP model, the class maps; an FC head keeps it at the preset's k x k width).
  """
  def resized(block):
    out = block.widths[-1]
    middle = block.widths[1] if len(block.widths) > 1 else out
    widths = (out,) if num_1x1 == 0 else (block.widths[0],) + (middle,) * (num_1x1 - 1) + (out,)
    return dataclasses.replace(block, widths=widths,
                               kxk_width=block.widths[0] if num_1x1 == 0 else 0)
  return tuple(resized(b) for b in blocks)


def _ceil_pool_padding(size: int, window: int = 3, stride: int = 2) -> tuple[int, int]:
  # cuda-convnet and Caffe round the pooled size up (32 -> 16, not 15); pad the far edge to match.
  out = math.ceil((size - window) / stride) + 1
  return (0, max(0, (out - 1) * stride + window - size))


def max_pool(x):
  """3 x 3 stride-2 ceil-mode max pooling; the same function and gradient as nn.max_pool.

  Why not nn.max_pool: XLA on CPU differentiates it with a reduce-window over (value, index)
  pairs, which took a fifth of the CIFAR train step (docs/speed.md). A 3 x 3 max is a max
  over 3 columns, then over 3 rows; each 1-D pool routes its gradient to the first maximum with
  three strided compares (forward and backward of a 16 x 32 x 32 x 96 batch: 36 ms -> 5 ms).
  Columns first, so that ties go where XLA sends them (the first maximum in row-major window
  order); tests/models_test.py checks it against nn.max_pool.
  """
  return _max_pool_1d(_max_pool_1d(x, 2), 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_1d(x, axis: int):
  window, strides, padding = [1] * 4, [1] * 4, [(0, 0)] * 4
  window[axis], strides[axis], padding[axis] = 3, 2, _ceil_pool_padding(x.shape[axis])
  return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding)


def _max_pool_1d_forward(x, axis):
  y = _max_pool_1d(x, axis)
  return y, (x, y)


def _max_pool_1d_backward(axis, residuals, dy):
  x, y = residuals
  padding = [(0, 0)] * 4
  padding[axis] = _ceil_pool_padding(x.shape[axis])
  padded = jnp.pad(x, padding, constant_values=-jnp.inf)
  out, size = y.shape[axis], padded.shape[axis]
  dx = jnp.zeros_like(padded)
  taken = jnp.zeros(y.shape, bool)  # the first maximum of each window gets the gradient
  zero = jnp.zeros((), dy.dtype)
  for i in range(3):
    element = lax.slice_in_dim(padded, i, i + 2 * out - 1, 2, axis)  # window element i, stride 2
    hit = (element == y) & ~taken
    taken = taken | hit
    back = [(0, 0, 0)] * 4  # to the stride-2 positions it came from: interior padding of 1
    back[axis] = (i, size - i - 2 * out + 1, 1)
    dx = dx + lax.pad(jnp.where(hit, dy, zero), zero, back)
  return (lax.slice_in_dim(dx, 0, x.shape[axis], axis=axis),)


_max_pool_1d.defvjp(_max_pool_1d_forward, _max_pool_1d_backward)


def avg_pool(x):
  """3 x 3 stride-2 ceil-mode average pooling, as Caffe's: divided by the window clipped to the
  padded input, not by the padding (count_include_pad=False is the closest flax equivalent)."""
  padding = (_ceil_pool_padding(x.shape[1]), _ceil_pool_padding(x.shape[2]))
  return nn.avg_pool(x, (3, 3), (2, 2), padding, count_include_pad=False)


# A block's `pool`: x [N, H, W, C] -> [N, ceil((H - 3) / 2) + 1, ..., C].
POOLS = {"max": max_pool, "avg": avg_pool}


def _cast_operands(inputs, kernel, bias, *, dtype):
  """nn.Conv / nn.Dense `promote_dtype`: the input and the kernel to `dtype`; the bias stays
  float32, so `y + bias` promotes the bfloat16 result to float32 (see layer_options)."""
  return (None if inputs is None else inputs.astype(dtype),
          None if kernel is None else kernel.astype(dtype), bias)


def native_dtype(dtype: str, native_bfloat16: bool | None) -> str:
  """The DTYPES name that `dtype` (a model.dtype value) computes in: for NATIVE, "bfloat16" where
  `native_bfloat16` (placement.native_bfloat16 of the platform: TPU, GPU, a CPU with bfloat16
  instructions) is True and "float32" where it is False or unknown (None), as a CPU without
  bfloat16 arithmetic computes bfloat16 in float32 plus conversions (docs/mixed_precision.md);
  any other value is returned as it is."""
  if dtype != NATIVE:
    return dtype
  return "bfloat16" if native_bfloat16 else "float32"


def computed_in(precision: str, dtype: str, platform: str) -> str:
  """What the convolutions and matmuls of a model with `precision` (PRECISIONS) and `dtype`
  (DTYPES) compute in on `platform` ("cpu", "gpu", "tpu"), for a run's provenance and the report.
  Sources: jax.lax.Precision's documentation (TPU passes, GPU TF32) and XLA:CPU, which computes
  float32 operands in float32 at every precision."""
  if dtype == "bfloat16":
    return "bfloat16 operands, float32 accumulation"
  lax_name = PRECISIONS[precision].name
  if platform == "cpu":
    return f"float32 ({lax_name}; XLA:CPU computes float32 at any precision)"
  if platform == "tpu":
    return {"float32": "float32 (HIGHEST: 6 bfloat16 passes)",
            "tensorfloat32": "3 bfloat16 passes (HIGH)",
            "default": "1 bfloat16 pass (DEFAULT)"}[precision]
  if precision == "float32":
    return "float32 (HIGHEST)"
  return f"TensorFloat-32 on NVIDIA Ampere and later, else float32 ({lax_name})"


def layer_options(dtype, precision: str = "float32") -> dict:
  """nn.Conv / nn.Dense keyword arguments for compute dtype `dtype` (jnp.float32 or bfloat16)
  and `precision` (a PRECISIONS name: the lax.Precision of the convolution or matmul).

  With bfloat16: the convolution or matmul takes the input and the float32 kernel (the master
  weights) cast to bfloat16 and returns bfloat16, which becomes float32 where the float32 bias
  is added (a layer without bias: where BatchNorm, in float32, takes it). So the layers between
  -- bias, ReLU, BatchNorm, pools, dropout -- run in float32, and in the backward pass the
  gradient is cast to bfloat16 once, where it enters the convolution's two backward ops, which
  then run in bfloat16 too. Why not flax's all-bfloat16 layers (bias, ReLU and pools in
  bfloat16): their bias and ReLU gradients became float32 <-> bfloat16 conversions, 19% of the
  CIFAR step's op time on a CPU, 1.2-1.3x slower (docs/mixed_precision.md).
  """
  if jnp.dtype(dtype) == jnp.float32:
    return {"dtype": jnp.float32, "precision": PRECISIONS[precision]}
  return {"dtype": jnp.dtype(dtype), "promote_dtype": _cast_operands,
          "precision": PRECISIONS[precision]}


def normalise(x, norm: str, *, train: bool, axis_name: str | None, name: str):
  """`x` [..., channels] as NORMS[norm] says: itself for "none"; for "batch", BatchNorm over all
  axes but the last, named `name`, with the batch's statistics when `train` (averaged over the
  devices of `axis_name`) and the running averages ("batch_stats") otherwise.

  The axis is used only when `train`: model.init, evaluation and class maps use the running
  averages and may run outside the device map, where no `axis_name` axis exists.
  """
  if NORMS[norm] is None:
    return x
  return NORMS[norm](use_running_average=not train, axis_name=axis_name if train else None,
                     name=name)(x)


class MLPConv(nn.Module):
  """A k x k convolution, then len(widths) - 1 1 x 1 convolutions; ReLU after each.

  `relu_on_last=False` leaves the last layer linear (one of the fixes for the dead class maps
  in NIN_REFERENCE.md, "The failure everybody hits"); the paper keeps the ReLU.
  `last_name` names the last layer, so that optimizers can address it (per-layer learning rates).
  `norm="batch"`: BatchNorm after each layer, before its ReLU, named `<layer>_bn`; the layers then
  have no bias (see the module docstring). `axis_name`: the device axis whose examples BatchNorm's
  training statistics span (None: this device's batch alone).
  """
  widths: Sequence[int]
  kernel: int
  stride: int = 1
  padding: int = 0
  relu_on_last: bool = True
  last_name: str | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.05)
  dtype: jnp.dtype = jnp.float32  # of the convolutions' operands (layer_options); params float32
  precision: str = "float32"  # PRECISIONS: of the convolutions (layer_options)
  norm: str = "none"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: [N, H, W, C] -> [N, H', W', widths[-1]]; `train` picks BatchNorm's statistics."""
    use_bias = NORMS[self.norm] is None
    for i, width in enumerate(self.widths):
      is_last = i == len(self.widths) - 1
      name = self.last_name if is_last and self.last_name else ("conv" if i == 0 else f"cccp{i}")
      if i == 0:
        x = nn.Conv(width, (self.kernel,) * 2, (self.stride,) * 2,
                    padding=[(self.padding,) * 2] * 2, use_bias=use_bias,
                    kernel_init=self.kernel_init, name=name,
                    **layer_options(self.dtype, self.precision))(x)
      else:
        # A 1 x 1 convolution is a dense layer over the channel axis at every position. Written as
        # one (positions x channels) @ (channels x width) matmul it runs ~2x faster on CPU than
        # XLA's convolution path (benchmark in docs/speed.md); the function is the same.
        x = nn.Dense(width, use_bias=use_bias, kernel_init=self.kernel_init, name=name,
                     **layer_options(self.dtype, self.precision))(x)
      x = normalise(x, self.norm, train=train, axis_name=self.axis_name,
                    name=f"{name}_bn")
      if self.relu_on_last or not is_last:
        x = nn.relu(x)
    return x


class NIN(nn.Module):
  """Stacked mlpconv blocks and a head. Input: NHWC float images [N, H, W, C]. Output: float32
  logits [N, num_classes]. Built from a config as `NIN(num_classes=..., **config.model)`; every
  field but num_classes and axis_name is a field of `config.model` (experiments/default.py)."""
  num_classes: int
  preset: str = "nin_cifar"           # PRESETS
  head: str = "gap"                   # HEADS
  num_1x1: int | None = None          # 1 x 1 layers per block (with_num_1x1); None: the preset's
  dropout: float | None = None        # rate after the pools that have dropout; None: the preset's
  fc_hidden: Sequence[int] = ()       # widths of hidden dense layers in the FC heads (ReLU)
  relu_on_class_maps: bool = True     # the paper's choice; see MLPConv
  init_stddev: float = 0.05           # the authors' N(0, 0.05^2); biases start at 0
  initializer: str = "normal"         # INITS: "normal" (N(0, init_stddev^2)) or "he"
  # Mixed precision (DTYPES): "bfloat16" runs every convolution and matmul, forward and backward,
  # in bfloat16 (layer_options); parameters (master weights), biases, the layers between
  # (ReLU, BatchNorm, pools, dropout) and the logits for the loss stay float32.
  dtype: str = "float32"
  # PRECISIONS, of every convolution and matmul of float32 operands: full float32, as the paper
  # trained (2013 GPUs had no TF32); JAX's own default is not float32 on accelerators.
  precision: str = "float32"
  norm: str = "none"                  # NORMS; "batch": BatchNorm before each ReLU
  # The device axis over which BatchNorm averages its training statistics: the pmap axis
  # (placement.AXIS) for a model trained in the mapped step; None for a model applied with
  # train=True outside any device map. Ignored when train=False and with norm="none".
  axis_name: str | None = None

  def __post_init__(self):
    # a tuple, whatever the config held (a list, read back from a run's config.json): a Module's
    # fields must hash, for jit's static arguments and flax's own caches
    object.__setattr__(self, "fc_hidden", tuple(self.fc_hidden))
    for field, table in CHOICES.items():
      if getattr(self, field) not in table:
        raise ConfigError(f"unknown model.{field} {getattr(self, field)!r}; choose one of "
                          f"{list(table)}")
    super().__post_init__()

  @property
  def blocks(self) -> tuple[BlockSpec, ...]:
    """The preset's blocks with this model's num_1x1 and dropout."""
    blocks = PRESETS[self.preset]
    if self.num_1x1 is not None:
      blocks = with_num_1x1(blocks, self.num_1x1)
    if self.dropout is not None:
      blocks = tuple(dataclasses.replace(b, dropout=self.dropout if b.dropout else 0.0)
                     for b in blocks)
    return blocks

  @nn.compact
  def __call__(self, x, *, train: bool):
    head, blocks = HEADS[self.head], self.blocks
    init = INITS[self.initializer](self.init_stddev)
    for index, block in enumerate(blocks):
      is_last = index == len(blocks) - 1
      widths = tuple(w or self.num_classes for w in block.widths)
      if is_last and not head.class_maps:
        # FC heads do without the class-map layer; where the k x k conv is that layer
        # (num_1x1=0), it stays at the preset's k x k width rather than num_classes
        widths = widths[:-1] or (block.kxk_width or widths[0],)
      class_maps = is_last and head.class_maps
      x = MLPConv(widths, block.kernel, block.stride, block.padding,
                  relu_on_last=self.relu_on_class_maps or not class_maps,
                  last_name="classifier" if class_maps else None,
                  kernel_init=init, dtype=DTYPES[self.dtype], precision=self.precision,
                  norm=self.norm, axis_name=self.axis_name,
                  name=f"mlpconv{index + 1}")(x, train=train)
      if block.pool:
        x = POOLS[block.pool](x)
      if block.dropout:
        x = nn.Dropout(block.dropout, deterministic=not train)(x)

    if head.dropout and head.class_maps:
      x = nn.Dropout(head.dropout, deterministic=not train)(x)
    if head.class_maps:
      # one map per class; the score is its spatial mean (summed in float32)
      return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate((*self.fc_hidden, self.num_classes)):
      if head.dropout:
        x = nn.Dropout(head.dropout, deterministic=not train)(x)
      is_last = i == len(self.fc_hidden)
      x = nn.Dense(width, use_bias=is_last or NORMS[self.norm] is None, kernel_init=init,
                   name="classifier" if is_last else f"fc{i + 1}",
                   **layer_options(DTYPES[self.dtype], self.precision))(x)
      if not is_last:
        x = normalise(x, self.norm, train=train, axis_name=self.axis_name, name=f"fc{i + 1}_bn")
        x = nn.relu(x)
    return x.astype(jnp.float32)


# The NIN fields that pick from a table, and the table: what the config checks allow.
CHOICES = {"preset": PRESETS, "head": HEADS, "norm": NORMS, "dtype": DTYPES,
           "precision": PRECISIONS, "initializer": INITS}
# What a config may name: the tables, and NATIVE for the dtype (resolved before NIN is built).
CONFIG_CHOICES = {**CHOICES, "dtype": (*DTYPES, NATIVE)}
