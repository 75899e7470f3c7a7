"""model.norm: BatchNorm before each ReLU (NIN+BN), its statistics across devices, its running
averages in the train state and the checkpoints; and runs without it as before."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import digits_config, flatten

from nin_jax import checkpointing, checks, data, models, train
from nin_jax.errors import ConfigError
from nin_jax.placement import AXIS, Placement

BATCH = {"model.norm": "batch"}
# nin_digits: (96, 96, 96) then (96, 96, 10 class maps); every layer gets a BatchNorm
DIGITS_BN_LAYERS = {("mlpconv1", "conv_bn"): 96, ("mlpconv1", "cccp1_bn"): 96,
                    ("mlpconv1", "cccp2_bn"): 96, ("mlpconv2", "conv_bn"): 96,
                    ("mlpconv2", "cccp1_bn"): 96, ("mlpconv2", "classifier_bn"): 10}


def _init(model, image_shape=(8, 8, 1)):
  return model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_batch_norm_variables_of_nin_digits():
  plain = _init(models.NIN(num_classes=10, axis_name=AXIS, **digits_config().model))
  normed = _init(models.NIN(num_classes=10, axis_name=AXIS, **digits_config(**BATCH).model))
  assert set(plain) == {"params"}
  assert set(normed) == {"params", "batch_stats"}
  stats = normed["batch_stats"]
  assert {(block, layer) for block in stats for layer in stats[block]} == set(DIGITS_BN_LAYERS)
  for (block, layer), width in DIGITS_BN_LAYERS.items():
    np.testing.assert_array_equal(stats[block][layer]["mean"], np.zeros(width, np.float32))
    np.testing.assert_array_equal(stats[block][layer]["var"], np.ones(width, np.float32))
    assert normed["params"][block][layer]["scale"].shape == (width,)
    assert normed["params"][block][layer]["bias"].shape == (width,)
    assert set(normed["params"][block][layer.removesuffix("_bn")]) == {"kernel"}  # no bias
  # each layer's bias (490 values) gives way to a BatchNorm scale and offset (2 x 490)
  widths = sum(DIGITS_BN_LAYERS.values())
  assert _count(normed["params"]) == _count(plain["params"]) + widths
  assert _count(stats) == 2 * widths
  # FC heads: BatchNorm before each hidden ReLU, none on the logits
  fc = _init(models.NIN(num_classes=10, preset="nin_digits", head="fc", fc_hidden=(32,),
                        norm="batch"))
  assert fc["batch_stats"]["fc1_bn"]["mean"].shape == (32,)
  assert set(fc["params"]["classifier"]) == {"kernel", "bias"}
  assert "classifier_bn" not in fc["params"]
  # the class-map layer's BatchNorm trains at the class-map layer's rate
  multipliers = train.learning_rate_multipliers(normed["params"], bias=2.0, classifier=0.1)
  assert multipliers["mlpconv2"]["classifier_bn"]["scale"] == pytest.approx(0.1)
  assert multipliers["mlpconv2"]["classifier_bn"]["bias"] == pytest.approx(0.2)


def test_norm_is_validated():
  with pytest.raises(ConfigError, match=r"model\.norm='layer' is not one of \['none', 'batch'\]"):
    checks.validate(digits_config(**{"model.norm": "layer"}), 4)


def _one_step(config, model, state, dataset, num_devices, batch_size, microbatch_size=0):
  placement = Placement.local(jax.local_devices()[:num_devices])
  on_device = placement.replicate({"image": dataset.x_train, "label": dataset.y_train})
  batch = placement.shard(data.train_indices(dataset, 0, batch_size, 0, 1, placement))
  tx = train.create_optimizer(config.optimizer, state.params, lambda step: 0.1)
  step = placement.map(train.train_step, model=model, tx=tx, learning_rate_fn=lambda step: 0.1,
                       augment_config=config.augment, microbatch_size=microbatch_size)
  return jax.device_get(step(state, on_device, batch)[0])


def test_batch_statistics_are_averaged_across_devices():
  """A step on 4 devices, each normalising with the statistics of the whole batch (16 examples
  over 4 devices), gives the new params and running averages of one device with all 16."""
  # Over 20 s: 4 train steps compiled for 1 and 4 devices and micro-batches.
  config = digits_config(**BATCH, **{"model.dropout": 0.0})  # dropout masks differ per device
  model = models.NIN(num_classes=10, axis_name=AXIS, **config.model)
  dataset = data.load_synthetic((8, 8, 1), 10, num_train=16, num_test=1)
  dataset.x_train = dataset.x_train.astype(np.float32) / 255
  model_variables = _init(model)
  tx = train.create_optimizer(config.optimizer, model_variables["params"], lambda step: 0.1)
  state = train.create_train_state(model_variables, tx, jax.random.PRNGKey(1))
  four = _one_step(config, model, state, dataset, 4, 16)
  one = _one_step(config, model, state, dataset, 1, 16)
  a, b = flatten(train.variables(four)), flatten(train.variables(one))
  assert a.keys() == b.keys() and any(k.startswith("batch_stats/") for k in a)
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)
  assert int(four.step) == 1
  # the running averages moved (momentum 0.9: a tenth of the way to the batch's statistics) ...
  before = flatten(train.variables(state))
  assert max(np.abs(a[k] - before[k]).max() for k in a if k.startswith("batch_stats/")) > 1e-3
  # ... and one device's quarter of the batch alone would have given other statistics
  quarter = flatten(train.variables(_one_step(config, model, state, dataset, 1, 4)))
  assert max(np.abs(a[k] - quarter[k]).max() for k in a if k.startswith("batch_stats/")) > 1e-4
  # micro-batches of 2: each normalised on its own (over the 4 devices' same micro-batch), and
  # the running averages are the mean of the micro-batches' updates. The first layer's input does
  # not depend on any normalisation, so its running mean is the whole batch's: the mean of equal
  # micro-batches' means.
  micro = flatten(train.variables(_one_step(config, model, state, dataset, 4, 16, 2)))
  first = "batch_stats/mlpconv1/conv_bn/mean"
  np.testing.assert_allclose(micro[first], a[first], rtol=1e-5, atol=1e-6)
  assert np.abs(micro[first] - before[first]).max() > 1e-3
  assert np.abs(micro["batch_stats/mlpconv2/conv_bn/mean"]
                - a["batch_stats/mlpconv2/conv_bn/mean"]).max() > 1e-6


def test_evaluation_uses_the_running_averages():
  """With train=False an image's logits do not depend on the rest of its batch."""
  model = models.NIN(num_classes=10, axis_name=AXIS, **digits_config(**BATCH).model)
  model_variables = _init(model)
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 100))
  # running averages away from init's 0 and 1, so that using them shows in the logits
  model_variables["batch_stats"] = jax.tree.map(
      lambda x: x + 0.5 * jax.random.uniform(next(keys), x.shape), model_variables["batch_stats"])
  images = jax.random.normal(jax.random.PRNGKey(3), (8, 8, 8, 1))
  alone = model.apply(model_variables, images[:1], train=False)
  in_batch = model.apply(model_variables, images, train=False)
  np.testing.assert_allclose(alone, in_batch[:1], rtol=1e-5, atol=1e-6)
  # training mode normalises with the batch's own statistics: there the batch matters
  plain = models.NIN(num_classes=10, **digits_config(**BATCH, **{"model.dropout": 0.0}).model)
  alone, _ = plain.apply(model_variables, images[:2], train=True, mutable=["batch_stats"])
  in_batch, _ = plain.apply(model_variables, images, train=True, mutable=["batch_stats"])
  assert np.abs(alone - in_batch[:2]).max() > 1e-3


def test_batch_norm_run_resumes_exactly(tmp_path):
  # Over 20 s: three runs with BatchNorm, a program of their own.
  config = digits_config(**BATCH, checkpoint_every_steps=4, keep_checkpoints=2)
  straight = train.train_and_evaluate(config, tmp_path / "straight")
  first = train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=6)
  assert first["step"] == 6 and not first["finished"]
  second = train.train_and_evaluate(config, tmp_path / "resumed")
  assert second["step"] == straight["step"] == 11 and second["finished"]
  a = flatten(checkpointing.restore_variables(tmp_path / "straight"))
  b = flatten(checkpointing.restore_variables(tmp_path / "resumed"))
  assert a.keys() == b.keys() and sum(k.startswith("batch_stats/") for k in a) == 12
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert second["test_accuracy"] == straight["test_accuracy"]
  # the running averages were trained, not left at init's 0 and 1 (accuracy after 11 steps says
  # little: 8% here, 13% without BN; after 5 epochs 85% with BN against 36% without)
  means = [v for k, v in a.items() if k.startswith("batch_stats/") and k.endswith("/mean")]
  assert max(np.abs(m).max() for m in means) > 1e-2
