"""Training: device-count invariance, exact resume, the stuck-at-ln(C) guard, per-layer lr."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import digits_config, final_params, flatten, launch_here, run_launch

from nin_jax import train
from nin_jax.errors import NonFiniteLossError, TrainingStuckError

SHORT_RUN = ["--config=experiments/default.py:digits", "--config.num_epochs=0.5",
             "--config.eval_every_steps=0", "--config.log_every_steps=5"]


def test_one_device_and_four_devices_give_the_same_parameters(tmp_path):
  # Over 20 s: a launch.py process with 1 device (a process's device count is fixed at start),
  # then the same launch in this 4-device process.
  # Dropout masks are drawn per device by design, so this comparison runs without dropout;
  # augmentation stays on: its randomness follows the example, not the device.
  args = SHORT_RUN + ["--config.model.dropout=0.0"]
  for devices, launch in ((1, lambda *a: run_launch(*a, devices=1)), (4, launch_here)):
    result = launch(*args, f"--workdir={tmp_path / str(devices)}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Devices: {devices} ({devices} local" in result.stderr
  one, four = flatten(final_params(tmp_path / "1")), flatten(final_params(tmp_path / "4"))
  init = flatten(jax.device_get(_initial_params()))
  for name in one:
    np.testing.assert_allclose(one[name], four[name], rtol=1e-4, atol=2e-5, err_msg=name)
  # ... and training moved them far more than that tolerance.
  moved = max(np.abs(one[n] - init[n]).max() for n in one)
  assert moved > 1e-2


def test_micro_batches_give_the_same_update_as_the_whole_batch():
  """config.microbatch_size is a speed setting: averaging the micro-batches' gradients must give
  the whole batch's update (without dropout, whose masks are drawn per micro-batch)."""
  # Over 20 s: the CIFAR network's train step, compiled whole and in micro-batches.
  import jax.numpy as jnp
  import ml_collections
  from nin_jax import data, models
  from nin_jax.placement import Placement
  model = models.NIN(num_classes=10, preset="nin_cifar", dropout=0.0)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  config = digits_config().optimizer
  tx = train.create_optimizer(config, params, lambda step: 0.1)
  state = train.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                           rng=jax.random.PRNGKey(1))
  placement = Placement.local(jax.local_devices()[:1])
  dataset = data.load_synthetic((32, 32, 3), 10, num_train=16, num_test=1, placement=placement)
  on_device = placement.replicate({"image": dataset.x_train.astype(np.float32) / 255,
                                   "label": dataset.y_train})
  batch = data.train_indices(dataset, 0, 16, 0, 1, placement)
  augment = ml_collections.ConfigDict(dict(crop_padding=4, flip=True))
  results = {}
  for size in (0, 4):
    step = placement.map(train.train_step, model=model, tx=tx, learning_rate_fn=lambda step: 0.1,
                         augment_config=augment, microbatch_size=size)
    results[size] = jax.device_get(step(state, on_device, batch))
  (whole, whole_metrics), (micro, micro_metrics) = results[0], results[4]
  for name in ("loss", "accuracy", "grad_norm"):
    np.testing.assert_allclose(micro_metrics[name], whole_metrics[name], rtol=1e-5, err_msg=name)
  moved = 0.0
  for (path, a), b, before in zip(jax.tree_util.tree_leaves_with_path(micro.params),
                                  jax.tree.leaves(whole.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    moved = max(moved, float(np.abs(b - before).max()))
  assert moved > 1e-4  # the step changed the parameters by far more than the tolerance


def _initial_params():
  from nin_jax import models
  import jax.numpy as jnp
  model = models.NIN(num_classes=10, preset="nin_digits", dropout=0.0, init_stddev=0.1)
  init_rng, _ = jax.random.split(jax.random.PRNGKey(0))
  return model.init(init_rng, jnp.zeros((1, 8, 8, 1)), train=False)["params"]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  config = digits_config(checkpoint_every_steps=4, keep_checkpoints=2)  # dropout and crops on
  straight = train.train_and_evaluate(config, tmp_path / "straight")
  first = train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=6)
  assert first["step"] == 6 and not first["finished"]
  second = train.train_and_evaluate(config, tmp_path / "resumed")
  assert second["step"] == straight["step"] == 11 and second["finished"]
  a, b = flatten(final_params(tmp_path / "straight")), flatten(final_params(tmp_path / "resumed"))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert second["test_accuracy"] == straight["test_accuracy"]
  # every 4 steps and at the end, keeping the last 2
  kept = sorted(int(p.name) for p in (tmp_path / "straight" / "checkpoints").iterdir()
                if p.name.isdigit())
  assert kept == [8, 11]


def test_stuck_loss_stops_the_run_with_a_message(tmp_path):
  # The trap of NIN_REFERENCE.md: the authors' N(0, 0.05^2) init with the class-map layer at
  # the full learning rate kills the class-map ReLUs.
  config = digits_config(num_epochs=20.0, stuck_loss_steps=50, log_every_steps=10)
  config.model.init_stddev = 0.05
  config.optimizer.learning_rate = 0.1
  config.optimizer.classifier_lr_multiplier = 1.0
  with pytest.raises(TrainingStuckError, match=r"stuck at ln\(10\) = 2\.3026 for 50 steps") as e:
    train.train_and_evaluate(config, tmp_path)
  assert "classifier_lr_multiplier=0.1" in str(e.value)


def test_loss_guard_counts_consecutive_steps_only():
  guard = train.LossGuard(num_classes=10, patience_steps=3, tolerance=1e-3)
  chance = math.log(10)
  def window(*losses):
    return [{"loss": loss, "grad_norm": 1.0} for loss in losses]
  guard.update(0, window(chance, chance, 1.0, chance, chance))  # interrupted: no stop
  with pytest.raises(TrainingStuckError, match="step 6"):
    guard.update(5, window(chance + 5e-4))
  with pytest.raises(NonFiniteLossError, match="loss is nan at step 8"):
    train.LossGuard(10, 0, 1e-3).update(6, window(1.0, float("nan")))
  with pytest.raises(NonFiniteLossError, match="grad_norm is inf at step 7"):
    train.LossGuard(10, 0, 1e-3).update(6, [{"loss": 1.0, "grad_norm": float("inf")}])


def test_learning_rate_multipliers_follow_the_authors_files():
  params = {"mlpconv1": {"conv": {"kernel": 0, "bias": 0}},
            "mlpconv3": {"classifier": {"kernel": 0, "bias": 0}}}
  factors = train.learning_rate_multipliers(params, bias=2.0, classifier=0.1)
  assert factors["mlpconv1"]["conv"] == {"kernel": 1.0, "bias": 2.0}
  assert factors["mlpconv3"]["classifier"] == {"kernel": 0.1, "bias": pytest.approx(0.2)}


def test_weight_decay_applies_to_weights_not_biases():
  config = digits_config()
  config.optimizer.momentum = 0.0
  params = {"layer": {"kernel": np.ones(2, np.float32), "bias": np.ones(2, np.float32)}}
  tx = train.create_optimizer(config.optimizer, params, lambda step: 1.0)
  zero = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["layer"]["kernel"], -config.optimizer.weight_decay)
  np.testing.assert_allclose(updates["layer"]["bias"], 0.0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_momentum_is_optax_sgds_nesterov_or_heavy_ball(nesterov):
  # Without decay, clipping or rate multipliers the optimizer is SGD with momentum: optax.sgd's,
  # Nesterov's with optimizer.nesterov (the modern recipe's); the two differ from the 2nd step.
  config = digits_config()
  opt = config.optimizer
  opt.weight_decay, opt.grad_clip_norm, opt.bias_lr_multiplier = 0.0, 0.0, 1.0
  opt.classifier_lr_multiplier, opt.momentum, opt.nesterov = 1.0, 0.9, nesterov
  params = {"layer": {"kernel": np.ones(3, np.float32)}}
  ours = train.create_optimizer(opt, params, lambda step: 0.1)
  reference = optax.sgd(0.1, momentum=0.9, nesterov=nesterov)
  ours_state, reference_state = ours.init(params), reference.init(params)
  gradients = np.array([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0], [2.0, 0.0, 1.0]], np.float32)
  seen = []
  for grad in gradients:
    grads = {"layer": {"kernel": grad}}
    update, ours_state = ours.update(grads, ours_state, params)
    expected, reference_state = reference.update(grads, reference_state, params)
    np.testing.assert_allclose(update["layer"]["kernel"], expected["layer"]["kernel"], rtol=1e-6)
    seen.append(np.asarray(update["layer"]["kernel"]))
  # The 2nd step by hand: heavy ball -lr * (g2 + m g1); Nesterov -lr * (g2 + m (g2 + m g1)).
  g1, g2 = gradients[0].astype(np.float64), gradients[1].astype(np.float64)
  by_hand = g2 + 0.9 * (g2 + 0.9 * g1) if nesterov else g2 + 0.9 * g1
  np.testing.assert_allclose(seen[1], -0.1 * by_hand, rtol=1e-6)


def test_step_schedule_divides_by_ten_at_the_given_epochs():
  config = digits_config()
  config.optimizer.schedule = "step"
  config.optimizer.decay_epochs = (2, 3)
  lr = train.create_learning_rate_fn(config.optimizer, steps_per_epoch=10, total_steps=40)
  base = config.optimizer.learning_rate
  assert [float(lr(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx(
      [base, base, base / 10, base / 10, base / 100])


def test_a_run_with_a_validation_split_evaluates_it_beside_the_test_set(tmp_path):
  import json
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.plugins.hparams import plugin_data_pb2
  from nin_jax import metrics
  config = digits_config(validation_examples=288, eval_every_steps=4)
  summary = train.train_and_evaluate(config, tmp_path)
  assert summary["validation_examples"] == 288 and summary["steps_per_epoch"] == 1150 // 64
  assert summary["validation_error_percent"] == pytest.approx(
      100 * (1 - summary["validation_accuracy"]))
  # an accuracy over 288 examples: a whole number of them right
  assert summary["validation_accuracy"] * 288 == pytest.approx(
      round(summary["validation_accuracy"] * 288))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evaluated = [r for r in records if "test_accuracy" in r]
  assert [r["step"] for r in evaluated] == [4, 8]  # 0.5 epoch = 8 steps of 17 per epoch
  assert all("validation_accuracy" in r and "validation_loss" in r for r in evaluated)
  assert evaluated[-1]["validation_accuracy"] == summary["validation_accuracy"]
  # provenance: the code, versions and config the run came from
  saved = json.loads((tmp_path / "summary.json").read_text())["provenance"]
  assert saved["versions"]["jax"] == jax.__version__ and saved["config"]["seed"] == config.seed
  assert saved["config"]["validation_examples"] == 288 and saved["platform"] == "cpu"
  # TensorBoard's HParams dashboard: the finished run's final errors, read back
  values = {}
  for event in event_file_loader.EventFileLoader(str(tmp_path / metrics.HPARAMS_FILE)).Load():
    for value in event.summary.value:
      if value.tag in (metrics.TEST_ERROR_TAG, metrics.VALIDATION_ERROR_TAG):
        values[value.tag] = float(value.tensor.float_val[0] if value.tensor.float_val else
                                  value.simple_value)
      elif value.metadata.plugin_data.plugin_name == "hparams":
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        if data.HasField("session_start_info"):
          values["seed"] = data.session_start_info.hparams["seed"].number_value
  assert values == pytest.approx({metrics.TEST_ERROR_TAG: summary["test_error_percent"],
                                  metrics.VALIDATION_ERROR_TAG: summary["validation_error_percent"],
                                  "seed": 0.0}, abs=1e-4)


def test_label_smoothing_trains_against_smoothed_targets_and_zero_is_the_plain_loss():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 10))
  labels = jnp.array([0, 3, 9, 3, 1])
  plain = -jax.nn.log_softmax(logits)[jnp.arange(5), labels]
  np.testing.assert_allclose(train.cross_entropy(logits, labels), plain, rtol=1e-6)
  # a = 0.1 over 10 classes: 0.91 on the label, 0.01 on each other class (Szegedy et al. 2016)
  targets = np.full((5, 10), 0.01)
  targets[np.arange(5), np.asarray(labels)] = 0.91
  smoothed = -(targets * jax.nn.log_softmax(logits)).sum(axis=1)
  np.testing.assert_allclose(train.cross_entropy(logits, labels, 0.1), smoothed, rtol=1e-6)
  # uniform logits are ln(classes) whatever the targets: the stuck-loss guard's plateau holds
  np.testing.assert_allclose(train.cross_entropy(jnp.zeros((5, 10)), labels, 0.1),
                             np.log(10), rtol=1e-6)
