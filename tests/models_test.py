"""Architectures: parameter counts, shapes, the GAP head, the depth ablation."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nin_jax import models
from nin_jax.errors import ConfigError


def init(model, image_shape):
  """`model`'s parameters for images of `image_shape`, initialised by one compiled program: op by
  op, each layer's random normal compiled apart (7 s of the CIFAR network's, measured)."""
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((2, *image_shape)))
  return variables["params"]


def compiled(function, *args):
  """`function(*args)` compiled as one program, each bfloat16 result rounded to bfloat16 as op by
  op (XLA may otherwise keep some in float32: xla_allow_excess_precision). Op by op, every op of
  the CIFAR network compiles apart: the bfloat16 gradient test took 63 s so, 24 s compiled
  (measured); the relative errors of its gradients agree with op by op's to 0.01."""
  return jax.jit(function).lower(*args).compile(
      compiler_options={"xla_allow_excess_precision": False})(*args)


def ordered_layers(block):
  """A block's layers in network order: conv, cccp1, cccp2, ..., classifier."""
  def position(name):
    return 0 if name == "conv" else 10 ** 6 if name == "classifier" else int(name[4:])
  return [block[name] for name in sorted(block, key=position)]


def num_params(model, image_shape):
  shapes = jax.eval_shape(lambda: init(model, image_shape))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("num_classes, expected", [(10, 966_986), (100, 984_356)])
def test_nin_cifar_has_the_authors_parameter_count(num_classes, expected):
  model = models.NIN(num_classes=num_classes, preset="nin_cifar")
  assert num_params(model, (32, 32, 3)) == expected


def test_nin_cifar_layer_sizes_match_the_authors_files():
  model = models.NIN(num_classes=10, preset="nin_cifar")
  params = jax.eval_shape(lambda: init(model, (32, 32, 3)))
  per_layer = [sum(int(np.prod(p.shape)) for p in layer.values())
               for block in params.values() for layer in ordered_layers(block)]
  # conv1, cccp1, cccp2, conv2, cccp3, cccp4, conv3, cccp5, cccp6 (NIN_REFERENCE.md)
  assert per_layer == [14_592, 30_880, 15_456, 460_992, 37_056, 37_056, 331_968, 37_056, 1_930]


@pytest.mark.parametrize("head, expected", [("gap", 966_986), ("fc", 1_087_946),
                                            ("fc_dropout", 1_087_946)])
def test_head_parameter_counts_as_documented_in_readme(head, expected):
  # FC heads drop the class-map layer (1,930) and add a dense 8*8*192 -> 10 (122,890).
  model = models.NIN(num_classes=10, preset="nin_cifar", head=head)
  assert num_params(model, (32, 32, 3)) == expected


@pytest.mark.parametrize("preset, image_shape, num_classes", [
    ("nin_cifar", (32, 32, 3), 10), ("nin_digits", (8, 8, 1), 10),
    ("nin_imagenet", (224, 224, 3), 1000)])
@pytest.mark.parametrize("head", models.HEADS)
def test_logits_shape(preset, image_shape, num_classes, head):
  model = models.NIN(num_classes=num_classes, preset=preset, head=head)
  logits = jax.eval_shape(lambda: model.apply({"params": init(model, image_shape)},
                                              jnp.zeros((2, *image_shape)), train=False))
  assert logits.shape == (2, num_classes)


def test_nin_imagenet_matches_the_caffe_zoo_size():
  # NIN_REFERENCE.md: 7.6 M parameters.
  model = models.NIN(num_classes=1000, preset="nin_imagenet")
  assert num_params(model, (224, 224, 3)) == 7_595_176


def test_ceil_mode_pooling_sizes():
  x = jnp.zeros((1, 32, 32, 4))
  assert models.max_pool(x).shape == (1, 16, 16, 4)       # 32 -> 16, not 15
  assert models.avg_pool(models.max_pool(x)).shape == (1, 8, 8, 4)
  assert models.max_pool(jnp.zeros((1, 54, 54, 1))).shape == (1, 27, 27, 1)


def test_gap_score_is_the_spatial_mean_of_the_class_maps():
  model = models.NIN(num_classes=10, preset="nin_digits")
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  params = init(model, (8, 8, 1))
  logits, state = model.apply({"params": params}, x, train=False,
                              capture_intermediates=True, mutable=["intermediates"])
  class_maps = state["intermediates"]["mlpconv2"]["__call__"][0]
  assert class_maps.shape == (3, 4, 4, 10)  # 8 x 8 digits, pooled once
  np.testing.assert_allclose(logits, class_maps.mean(axis=(1, 2)), rtol=1e-6)
  assert float(class_maps.min()) >= 0  # the paper's ReLU on the class maps


def flax_max_pool(x):
  padding = (models._ceil_pool_padding(x.shape[1]), models._ceil_pool_padding(x.shape[2]))
  return nn.max_pool(x, (3, 3), (2, 2), padding)


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 15, 17, 3), (1, 54, 54, 2)])
@pytest.mark.parametrize("with_ties", [False, True])
def test_max_pool_gradient_matches_flax_max_pool(shape, with_ties):
  """The custom max-pool gradient routes each output's gradient to the same input as XLA's own
  (the first maximum of the window), ties after a ReLU included."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  if with_ties:
    x = jnp.round(jax.nn.relu(x))  # many equal maxima, as after a ReLU
  def value_and_pullback(pool, x, dy):  # compiled as one program, not op by op
    y, pullback = jax.vjp(pool, x)
    return y, pullback(dy)[0]

  dy = jax.random.normal(jax.random.PRNGKey(1), models.max_pool(x).shape)
  y, dx = jax.jit(functools.partial(value_and_pullback, models.max_pool))(x, dy)
  y_ref, dx_ref = jax.jit(functools.partial(value_and_pullback, flax_max_pool))(x, dy)
  np.testing.assert_array_equal(y, y_ref)
  assert float(jnp.abs(dx_ref).max()) > 0.1
  # equal up to the order in which overlapping windows' gradients are summed
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


def reference_logits(params, x, blocks, num_classes):
  """A plain formulation of NIN (GAP head, eval mode): every layer a lax convolution, the 1 x 1
  ones included, pools by lax.reduce_window -- what the optimised model must compute."""
  for index, block in enumerate(blocks):
    layers = params[f"mlpconv{index + 1}"]
    for i, layer in enumerate(ordered_layers(layers)):
      kernel = layer["kernel"]
      if kernel.ndim == 2:
        kernel = kernel[None, None]
      pad = block.padding if i == 0 else 0
      stride = block.stride if i == 0 else 1
      x = jax.nn.relu(jax.lax.conv_general_dilated(
          x, kernel, (stride, stride), [(pad, pad)] * 2,
          dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest") + layer["bias"])
    if block.pool == "max":
      pads = [(0, 0), models._ceil_pool_padding(x.shape[1]), models._ceil_pool_padding(x.shape[2]),
              (0, 0)]
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads)
  return x.mean(axis=(1, 2))


def test_optimised_model_matches_a_plain_formulation_in_logits_and_gradients():
  # Over 20 s: the CIFAR network's gradients in two formulations, each compiled.
  model = models.NIN(num_classes=10, preset="nin_cifar")
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  labels = jnp.arange(4)
  params = init(model, (32, 32, 3))

  def loss(apply, params):
    logits = apply(params)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  def fast(p):
    return model.apply({"params": p}, x, train=False)

  def plain(p):
    return reference_logits(p, x, models.PRESETS["nin_cifar"], 10)

  with jax.default_matmul_precision("highest"):  # each side compiled as one program
    np.testing.assert_allclose(jax.jit(fast)(params), jax.jit(plain)(params), rtol=1e-4,
                               atol=1e-6)
    grads_fast = jax.jit(jax.grad(lambda p: loss(fast, p)))(params)
    grads_plain = jax.jit(jax.grad(lambda p: loss(plain, p)))(params)
  assert float(jnp.abs(fast(params)).max()) > 1e-3  # not a comparison of zeros
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_fast),
                          jax.tree.leaves(grads_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_bfloat16_compute_keeps_float32_weights_and_logits():
  # Over 20 s: the CIFAR network compiled in both dtypes, bfloat16 emulated on this CPU.
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  f32 = models.NIN(num_classes=10, preset="nin_cifar")
  bf16 = models.NIN(num_classes=10, preset="nin_cifar", dtype="bfloat16")
  params = init(f32, (32, 32, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init(bf16, (32, 32, 3))))
  low = compiled(functools.partial(bf16.apply, train=False), {"params": params}, x)
  high = compiled(functools.partial(f32.apply, train=False), {"params": params}, x)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, high, rtol=0.1, atol=0.02 * float(jnp.abs(high).max()))


@pytest.mark.parametrize("head, scale", [("gap", 1.6), ("fc", 1.3)])
def test_bfloat16_gradients_match_a_float32_reference(head, scale):
  # Over 20 s: the CIFAR network's forward and backward compiled in float32 and in bfloat16, which
  # this CPU emulates.
  # What mixed precision promises (docs/mixed_precision.md): the function and gradients of
  # float32 to bfloat16 precision (8 significant bits), so that an SGD step points the same
  # way. The mean cross-entropy in train mode (the same dropout masks: the same key); gradients
  # compared leaf by leaf. Rounding flips the ReLU masks of pre-activations near zero, so the
  # error grows toward the input: measured here up to 0.05 (gap) and 0.2 (fc) relative error in
  # the first block, as with flax's own all-bfloat16 layers (0.23); a wrong formulation (a
  # transposed kernel, a lost bias, a bfloat16 gradient of the master weights) is far outside.
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 32, 32, 3))
  labels = jnp.arange(8) % 10
  f32 = models.NIN(num_classes=10, preset="nin_cifar", head=head)
  bf16 = models.NIN(num_classes=10, preset="nin_cifar", head=head, dtype="bfloat16")
  params = init(f32, (32, 32, 3))
  # The authors' N(0, 0.05^2) init leaves the class maps near zero (logits ~0.02); `scale`
  # gives logits of std ~1 to 3, with a gradient in every layer worth comparing.
  params = jax.tree.map(lambda p: p * scale if p.ndim > 1 else p + 0.01, params)

  def loss(model, p):
    logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  with jax.default_matmul_precision("highest"):
    (loss32, logits32), grads32 = compiled(
        jax.value_and_grad(functools.partial(loss, f32), has_aux=True), params)
  (loss16, logits16), grads16 = compiled(
      jax.value_and_grad(functools.partial(loss, bf16), has_aux=True), params)
  assert logits16.dtype == loss16.dtype == jnp.float32
  assert 0.5 < float(jnp.std(logits32)) < 5  # logits that differ, softmax not saturated
  np.testing.assert_allclose(logits16, logits32, atol=0.02 * float(jnp.abs(logits32).max()))
  assert abs(float(loss16) - float(loss32)) < 0.01 * float(loss32)
  for (path, low), high in zip(jax.tree_util.tree_leaves_with_path(grads16),
                               jax.tree.leaves(grads32)):
    name = jax.tree_util.keystr(path)
    assert low.dtype == jnp.float32, name  # gradients of the float32 master weights
    assert float(jnp.linalg.norm(high)) > 0, name  # every layer learns
    low, high = np.ravel(low), np.ravel(high)
    error = np.linalg.norm(low - high) / np.linalg.norm(high)
    cosine = low @ high / (np.linalg.norm(low) * np.linalg.norm(high))
    assert error < 0.3 and cosine > 0.95, f"{name}: relative error {error:.3f}, cosine {cosine:.3f}"


@pytest.mark.parametrize("num_1x1", [0, 1, 2, 3])
def test_depth_ablation_keeps_shapes_and_counts_layers(num_1x1):
  model = models.NIN(num_classes=10, preset="nin_cifar", num_1x1=num_1x1)
  params = jax.eval_shape(lambda: init(model, (32, 32, 3)))
  assert [len(block) for block in params.values()] == [num_1x1 + 1] * 3
  assert params["mlpconv3"]["classifier"]["kernel"].shape[-1] == 10
  if num_1x1 == 2:
    assert num_params(model, (32, 32, 3)) == 966_986  # the paper's own network


@pytest.mark.parametrize("num_1x1", [0, 1, 2])
def test_fc_heads_at_every_depth_keep_the_body_without_the_class_map_layer(num_1x1):
  """The FC body is the GAP body minus its class-map layer: at depth 0 that layer is the last
  k x k conv itself, which an FC head keeps at the preset's width (192), not num_classes."""
  model = models.NIN(num_classes=10, preset="nin_cifar", head="fc", num_1x1=num_1x1)
  fc = jax.eval_shape(lambda: init(model, (32, 32, 3)))
  last = fc["mlpconv3"]
  assert last["conv"]["kernel"].shape == (3, 3, 192, 192)
  assert len(last) == max(1, num_1x1)  # the conv, and the 1 x 1 layers but the class maps
  assert fc["classifier"]["kernel"].shape == (8 * 8 * 192, 10)
  assert [len(fc[f"mlpconv{i}"]) for i in (1, 2)] == [num_1x1 + 1] * 2


def test_unknown_names_are_config_errors():
  with pytest.raises(ConfigError, match="preset"):
    models.NIN(num_classes=10, preset="nin_cifra")
  with pytest.raises(ConfigError, match="head"):
    models.NIN(num_classes=10, preset="nin_cifar", head="gpa")


def test_he_init_draws_kernels_of_variance_two_over_fan_in_and_normal_keeps_the_authors():
  he = init(models.NIN(num_classes=10, preset="nin_cifar", initializer="he"), (32, 32, 3))
  paper = init(models.NIN(num_classes=10, preset="nin_cifar"), (32, 32, 3))
  for block, layer, fan_in in (("mlpconv1", "conv", 5 * 5 * 3), ("mlpconv2", "conv", 5 * 5 * 96),
                               ("mlpconv2", "cccp1", 192)):
    kernel = np.asarray(he[block][layer]["kernel"])
    # flax's he_normal: N(0, 2 / fan_in) truncated at 2 std, rescaled to keep that variance
    assert abs(kernel.var() / (2 / fan_in) - 1) < 0.05, (block, layer, kernel.var() * fan_in)
    assert np.abs(kernel).max() <= 2 * np.sqrt(2 / fan_in) / 0.87962566 + 1e-6
    assert abs(np.asarray(paper[block][layer]["kernel"]).std() / 0.05 - 1) < 0.05
