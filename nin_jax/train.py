"""Training and evaluation: `train_and_evaluate(config, workdir)`, top to bottom.

Sections: setup · data · model and optimizer · restore · the steps · the loop · summary.

Device mapping lives in one place, nin_jax/placement.py: a run trains on every device of every
host (a single run: the global batch split over them), or on a group of one host's devices (a
run of a sweep that trains several at once). The dataset is put on the devices once; a step
receives only example indices, and gathers and augments on the device.

Runs that compile the same program share it (`compiled_once`): the seeds of an arm differ only in
the train state's keys and the data order, neither of which is part of the program.
"""
import collections
import contextlib
import functools
import json
import logging
import math
import threading
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax import lax

from nin_jax import (checkpointing, checks, data, files, metrics, models, preemption, provenance,
                     streaming)
from nin_jax import workdir as run_workdir
from nin_jax.errors import ConfigError, NonFiniteLossError, TrainingStuckError
from nin_jax import placement as placement_lib
from nin_jax.placement import AXIS, CPU_BFLOAT16_FLAGS, Placement, native_bfloat16


@flax.struct.dataclass
class TrainState:
  """What a run carries from step to step; its checkpoints hold all of it.

  The model's variables are `params` (what the optimizer trains) and `model_state`, its other
  variable collections, which the forward pass updates: {} for model.norm="none",
  {"batch_stats": BatchNorm's running means and variances} for "batch". A new such collection
  needs no new field. `variables(state)` is what model.apply takes.
  """
  step: jax.Array
  params: flax.core.FrozenDict
  opt_state: optax.OptState
  rng: jax.Array  # base key; a step's randomness is derived from (rng, step), so resume is exact
  model_state: dict = flax.struct.field(default_factory=dict)


def variables(state: TrainState) -> dict:
  """The model's variables in `state`, {"params": ..., **state.model_state}, for model.apply."""
  return {"params": state.params, **state.model_state}


def create_train_state(model_variables: dict, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  """The state at step 0: `model_variables` as model.init returns them ("params" and any other
  collections, which become `model_state`), `tx`'s initial state, and the base key `rng`."""
  params = model_variables["params"]
  model_state = {k: v for k, v in model_variables.items() if k != "params"}
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), rng=rng,
                    model_state=model_state)


# ----------------------------------------------------------------------------------------------
# Schedules and optimizer.
# ----------------------------------------------------------------------------------------------

def create_learning_rate_fn(opt: ml_collections.ConfigDict, steps_per_epoch: int,
                            total_steps: int):
  """Learning rate (float32 scalar) as a function of the step count; durations are in epochs.

  Epochs count from the start of the run, warm-up included: with `warmup_epochs=5` and
  `decay_epochs=(10, 15)` the rate rises linearly from 0 over epochs 0-5, holds, and is divided
  by `decay_factor` from the first step of epoch 10 and again from epoch 15. Cosine decays from
  the end of the warm-up to 0 at step `total_steps`, the end of the run (as in the flax ImageNet
  example and big_vision). `optax.join_schedules` hands the joined schedule the steps counted from
  its boundary, so the schedule after the warm-up is built on that shifted count here.
  The linear warm-up from 0 follows Goyal et al. 2017 (5 epochs there and in the modern recipe);
  cosine to 0 is SGDR's (Loshchilov & Hutter 2017) without restarts.

  Raises ConfigError: an unknown `schedule`, or two `decay_epochs` on the same step.
  """
  warmup_steps = round(opt.warmup_epochs * steps_per_epoch)
  if opt.schedule == "constant":
    main = optax.constant_schedule(opt.learning_rate)
  elif opt.schedule == "step":
    # The paper's recipe: divide by 10 at fixed epochs (NIN_REFERENCE.md, CIFAR-10 recipe).
    boundaries = [round(epoch * steps_per_epoch) - warmup_steps for epoch in opt.decay_epochs]
    if len(set(boundaries)) < len(boundaries):  # a dict keyed by step would merge them
      raise ConfigError(f"--config.optimizer.decay_epochs={tuple(opt.decay_epochs)} fall on the "
                        f"same step at {steps_per_epoch} steps per epoch; space them further")
    main = optax.piecewise_constant_schedule(
        opt.learning_rate, {boundary: opt.decay_factor for boundary in boundaries})
  elif opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(opt.learning_rate, max(1, total_steps - warmup_steps))
  else:
    raise ConfigError(f"unknown schedule {opt.schedule!r}; choose constant, step or cosine")
  if not warmup_steps:
    return main
  warmup = optax.linear_schedule(0.0, opt.learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def learning_rate_multipliers(params, *, bias: float, classifier: float):
  """Per-parameter learning-rate factors, as in the authors' files: biases at 2x, and the
  class-map layer at 0.1x (its ReLU dies at the full rate: NIN_REFERENCE.md). They multiply.
  With model.norm="batch" the layers have no bias and BatchNorm's offset (`bias`) takes its
  place, and its rate; the class-map layer's BatchNorm (`classifier_bn`) is part of that layer."""
  def factor(path, _):
    names = [getattr(p, "key", "") for p in path]
    in_classifier = "classifier" in names or "classifier_bn" in names
    return (bias if names[-1] == "bias" else 1.0) * (classifier if in_classifier else 1.0)
  return jax.tree_util.tree_map_with_path(factor, params)


def is_weight(params):
  """A pytree of bool shaped like `params`: True for the leaves named `kernel` (the convolution
  and dense weights), False for biases and BatchNorm's scale and offset, which are not decayed
  (the paper decays weights only; so does the modern recipe, where the Torch NIN+BN decayed every
  parameter)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def create_optimizer(opt: ml_collections.ConfigDict, params, learning_rate_fn):
  """The SGD optimizer (an optax.GradientTransformation) of the paper's and the modern recipe.

  In order: the gradient clipped to global norm `grad_clip_norm` (0: not clipped); weight decay
  `weight_decay` added on the kernels only (is_weight); every update scaled by its layer's rate
  multiplier (learning_rate_multipliers: biases `bias_lr_multiplier`, the class-map layer
  `classifier_lr_multiplier`, so a layer's decay is scaled with it, as Caffe's per-layer rates
  did); momentum `momentum`, Nesterov's with `nesterov` (the Keras reproduction's,
  NIN_REFERENCE.md); then the rate `learning_rate_fn(step)`. With the paper's fields this is the
  authors' SGD with momentum 0.9 (NIN_REFERENCE.md, CIFAR-10 recipe).
  """
  multipliers = learning_rate_multipliers(params, bias=opt.bias_lr_multiplier,
                                          classifier=opt.classifier_lr_multiplier)
  return optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm else optax.identity(),
      optax.add_decayed_weights(opt.weight_decay, mask=is_weight),
      optax.stateless(lambda updates, _: jax.tree.map(jnp.multiply, updates, multipliers)),
      optax.trace(decay=opt.momentum, nesterov=opt.nesterov),
      optax.scale_by_learning_rate(learning_rate_fn),
  )


# ----------------------------------------------------------------------------------------------
# The steps: pure functions of (state, batch); cross-device averaging happens here, in one place.
# ----------------------------------------------------------------------------------------------

def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """float32 [N]: the cross-entropy of `logits` [N, classes] against integer `labels` [N], the
  targets smoothed by `label_smoothing` (optax.smooth_labels: (1 - a) * one-hot + a / classes;
  Szegedy et al. 2016); 0, the paper's, is the plain one-hot loss. 0 <= label_smoothing < 1
  (checks.py refuses other values in a config)."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state, dataset, batch, *, model, tx, learning_rate_fn, augment_config,
               microbatch_size=0, label_smoothing=0.0):
  """One SGD step; returns (state, metrics). In-memory sources: the examples `batch["index"]` of
  `dataset` (the device-resident {"image": float32 NHWC, "label": int32}), gathered and augmented
  here; the indices are int32 [per_device], or the whole epoch's [steps_per_epoch, per_device]
  (data.epoch_indices), of which the step takes row `state.step % steps_per_epoch`. Streamed
  sources: `batch` holds the host-augmented {"image": float32 [per_device, H, W, C], "label"} and
  `dataset` is empty. `label_smoothing`: of the training loss's targets (cross_entropy); the
  evaluation loss stays the plain one.

  Across devices: the gradients and metrics are averaged (pmean). With model.norm="batch",
  BatchNorm averages its batch statistics over the devices too (the model's axis_name is AXIS),
  so the step normalises as one big batch would, and the new running averages in
  `state.model_state` come out the same on every device (no pmean of them is needed).
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  augment_rng, dropout_rng = jax.random.split(step_rng)
  device = placement_lib.device_index()
  if "index" in batch:  # in-memory source
    index = batch["index"]
    if index.ndim == 2:
      index = lax.dynamic_index_in_dim(index, state.step % index.shape[0], keepdims=False)
    per_device = index.shape[0]
    labels = jnp.take(dataset["label"], index, axis=0)
    images = data.augment(augment_rng, jnp.take(dataset["image"], index, axis=0),
                          device * per_device + jnp.arange(per_device),
                          augment_config.crop_padding, augment_config.flip)
  else:  # streamed: augmented on the host (nin_jax/streaming.py)
    images, labels = batch["image"], batch["label"]
    per_device = labels.shape[0]
  # Dropout masks differ per device and per step.
  dropout_rng = jax.random.fold_in(dropout_rng, device)

  mutable = list(state.model_state)  # the collections the forward pass updates: batch_stats

  def loss_fn(params, images, labels, rng):
    logits, model_state = model.apply({"params": params, **state.model_state}, images, train=True,
                                      rngs={"dropout": rng}, mutable=mutable)
    return cross_entropy(logits, labels, label_smoothing).mean(), (logits, model_state)

  # Micro-batches: the gradient of the batch mean is the mean of the micro-batches' gradients, so
  # the update is the same (up to float summation order); only the dropout masks are drawn per
  # micro-batch. Why: on CPU, a micro-batch's activations stay in the 32 MB cache instead of
  # streaming 100 MB tensors through memory, and two micro-batches' ops run side by side on two
  # cores (docs/speed.md). A Python loop, unrolled into the compiled step: XLA on CPU ran a
  # lax.scan over micro-batches at 16 s per CIFAR step, against 1.4 s unrolled.
  # With BatchNorm a micro-batch is normalised with its own statistics (over the devices' same
  # micro-batch), so micro-batches then change the update, as a smaller batch would. Each
  # micro-batch updates the running averages from the step's starting state, and the new state
  # is their mean: one momentum update per step, whatever the micro-batch size.
  size = microbatch_size or per_device
  count = per_device // size
  if count * size != per_device:  # checks.py says this for configs; here, for direct callers
    raise ValueError(f"microbatch_size {size} does not divide the per-device batch {per_device}")
  grads, losses, logits, model_states = None, [], [], []
  for i in range(count):
    part = slice(i * size, (i + 1) * size)
    (loss, (part_logits, part_state)), part_grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, images[part], labels[part],
        jax.random.fold_in(dropout_rng, i) if count > 1 else dropout_rng)
    grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
    losses.append(loss)
    logits.append(part_logits)
    model_states.append(part_state)
  grads = jax.tree.map(lambda g: g / count, grads)
  model_state = jax.tree.map(lambda *parts: sum(parts) / count, *model_states)
  loss, logits = jnp.mean(jnp.stack(losses)), jnp.concatenate(logits)
  grads = lax.pmean(grads, AXIS)  # equal per-device batches: the mean of means is the mean
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = lax.pmean({"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                       "grad_norm": optax.tree.norm(grads)}, AXIS)
  metrics["learning_rate"] = learning_rate_fn(state.step)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       model_state=model_state), metrics


def eval_step(model_variables, dataset, batch, *, model):
  """Sums over the examples of `batch` where `batch["mask"]` is 1: `batch["index"]` of `dataset`
  (in-memory sources), or `batch["image"]` and `batch["label"]` (streamed, `dataset` empty).
  `model_variables`: `variables(state)`, params and model state (BatchNorm's running averages:
  an example's logits do not depend on the others in its batch)."""
  if "index" in batch:
    images = jnp.take(dataset["image"], batch["index"], axis=0)
    labels = jnp.take(dataset["label"], batch["index"], axis=0)
  else:
    images, labels = batch["image"], batch["label"]
  logits = model.apply(model_variables, images, train=False)
  mask = batch["mask"]
  return lax.psum({"correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
                   "loss": jnp.sum(cross_entropy(logits, labels) * mask),
                   "count": jnp.sum(mask)}, AXIS)


def evaluate(p_eval_step, model_variables, split_data, batches, num_total,
             placement: Placement):
  """Accuracy and loss (mean cross-entropy) of `model_variables` (`variables(state)`: params and
  model state) over one split of `num_total` examples over all hosts: `batches` (this host's,
  `dataset.eval_batches`), of examples in `split_data` ({"image", "label"} on the devices; {}
  for a streamed dataset). Returns {"accuracy": float in [0, 1], "loss": float}."""
  totals = None
  for batch in streaming.ahead(map(placement.shard, batches)):  # put on the devices ahead
    sums = p_eval_step(model_variables, split_data, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  assert int(totals["count"]) == num_total, totals  # each example once
  # in float64 from the exact integer counts: two runs with the same number of errors must get
  # the same accuracy to the last bit (float32 division differed at 1e-7, and the report's
  # paired test read that noise as a real difference)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count}


def evaluate_splits(p_eval_step, model_variables, device_data, dataset, batch_size,
                    placement: Placement) -> dict[str, dict]:
  """`evaluate` on the test split and, when the run holds one out, the validation split:
  {"test": {"accuracy", "loss"}, ["validation": {...}]}."""
  splits = {"test": dataset.num_test_examples}
  if dataset.num_validation_examples:
    splits["validation"] = dataset.num_validation_examples
  return {split: evaluate(p_eval_step, model_variables, device_data[split],
                          dataset.eval_batches(split, batch_size, placement), num_total,
                          placement)
          for split, num_total in splits.items()}


# ----------------------------------------------------------------------------------------------
# What runs share: compiled programs and the dataset on the devices.
# ----------------------------------------------------------------------------------------------

class _CompileOnce:
  """A jitted/pmapped function whose first call (the compilation) runs under a lock, so that runs
  started together compile it once: the others wait, then find it in JAX's cache."""

  def __init__(self, fn):
    self.fn, self.lock, self.compiled = fn, threading.Lock(), False

  def __call__(self, *args):
    if not self.compiled:
      with self.lock:
        out = self.fn(*args)
        self.compiled = True
        return out
    return self.fn(*args)


_compiled: collections.OrderedDict = collections.OrderedDict()
_compiled_lock = threading.Lock()


def compiled_once(key, build):
  """`build()`, made once per `key` and kept for every run that asks again (the 256 newest)."""
  with _compiled_lock:
    if key in _compiled:
      _compiled.move_to_end(key)
    else:
      _compiled[key] = build()
      while len(_compiled) > 256:
        _compiled.popitem(last=False)
    return _compiled[key]


def program_key(config) -> str:
  """What a run's compiled steps depend on: its config without the seed and the bookkeeping."""
  fields = {k: v for k, v in config.to_dict().items()
            if k != "seed" and k not in run_workdir.BOOKKEEPING}
  return json.dumps(fields, sort_keys=True, default=str)


_on_device: dict = {}  # (dataset id, placement) -> (dataset, arrays): one dataset at a time


def put_dataset(dataset, placement: Placement, name: str):
  """{"train", "test"[, "validation"]: {"image", "label"}}: `dataset`'s splits on each of the
  placement's devices, once per (dataset, devices) however many runs train there; copies of any
  other dataset are dropped. Raises DataError (one line) when they do not fit a device's free
  memory.
  Size: the preprocessed float32 images, e.g. 614 MiB for CIFAR-10 (60,000 x 32 x 32 x 3 x 4 B),
  0.4 MiB for the digits. A streamed dataset has nothing on the devices: {} for each split."""
  if isinstance(dataset, streaming.StreamingDataset):
    return {"train": {}, "test": {}, "validation": {}}
  key = (id(dataset), placement)
  with _compiled_lock:
    if key not in _on_device:
      for other in [k for k, (kept, _) in _on_device.items() if kept is not dataset]:
        del _on_device[other]
      arrays = {"train": {"image": dataset.x_train, "label": dataset.y_train},
                "test": {"image": dataset.x_test, "label": dataset.y_test}}
      if dataset.num_validation_examples:
        arrays["validation"] = {"image": dataset.x_validation, "label": dataset.y_validation}
      size = sum(a.nbytes for a in jax.tree.leaves(arrays))
      placement.check_fits(size, f"the {name} dataset ({dataset.x_train.dtype} images "
                           f"{dataset.x_train.shape} + {dataset.x_test.shape})",
                           "nin-jax keeps the preprocessed dataset on every device: use devices "
                           "with more memory")
      _on_device[key] = (dataset, placement.replicate(arrays))  # the dataset kept: its id too
    return _on_device[key][1]


# ----------------------------------------------------------------------------------------------
# Guards on the loss.
# ----------------------------------------------------------------------------------------------

class LossGuard:
  """Stops a run whose loss or gradients are not finite, or whose loss sits at ln(num_classes).

  The second is NIN's known failure: with the ReLU on the class maps, a loss stuck at the value of
  all-equal logits means every class map died and no gradient can revive it (NIN_REFERENCE.md,
  "The failure everybody hits"). Counts consecutive steps; `patience_steps=0` turns it off.
  """

  def __init__(self, num_classes, patience_steps, tolerance):
    self.chance_loss = math.log(num_classes)
    self.num_classes = num_classes
    self.patience_steps = patience_steps
    self.tolerance = tolerance
    self.run = 0

  def update(self, first_step, window):
    """`window`: the metrics of steps first_step, first_step + 1, ... (step n's update is n+1)."""
    for step, step_metrics in enumerate(window, start=first_step + 1):
      for name in ("loss", "grad_norm"):
        value = float(step_metrics[name])
        if not math.isfinite(value):
          raise NonFiniteLossError(
              f"{name} is {value} at step {step}; the run stopped and its last checkpoint (from "
              "before this step) is kept. Lower --config.optimizer.learning_rate or set "
              "--config.optimizer.grad_clip_norm, then relaunch with a new --workdir.",
              step=step, loss=float(step_metrics["loss"]))
      loss = float(step_metrics["loss"])
      self.run = self.run + 1 if abs(loss - self.chance_loss) < self.tolerance else 0
      if self.patience_steps and self.run >= self.patience_steps:
        raise TrainingStuckError(
            f"loss stuck at ln({self.num_classes}) = {self.chance_loss:.4f} for {self.run} steps "
            f"(step {step}): every class map is zero after its ReLU, so no gradient flows "
            "(docs/models.md, 'The loss stuck at ln(10)'). Change one of: "
            "--config.optimizer.classifier_lr_multiplier=0.1 (the authors' 0.1x lr on the "
            "class-map layer), a lower --config.optimizer.learning_rate, "
            "--config.preprocess=gcn_zca, or --config.model.relu_on_class_maps=False.",
            step=step, loss=loss)


# ----------------------------------------------------------------------------------------------
# train_and_evaluate
# ----------------------------------------------------------------------------------------------

def count_params(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def flops_per_image(model, model_variables, image_shape):
  """FLOPs of one image's forward pass, as XLA's cost analysis counts the compiled function.
  `model_variables`: `variables(state)`."""
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  compiled = forward.lower(model_variables, jnp.zeros((1, *image_shape))).compile()
  return float(compiled.cost_analysis()["flops"])


def with_native_dtype(config: ml_collections.ConfigDict, platform: str):
  """`config`, or a copy with model.dtype=native resolved for devices of `platform` ("cpu",
  "gpu", "tpu"): models.native_dtype of placement.native_bfloat16. Whatever builds a model
  from a config that may say native calls this first (a NIN takes no native)."""
  if config.model.dtype != models.NATIVE:
    return config
  config = config.copy_and_resolve_references()
  config.model.dtype = models.native_dtype(models.NATIVE, native_bfloat16(platform))
  return config


def _without_x64(train_fn):
  """`train_fn` run with JAX's 64-bit mode off (`jax.enable_x64(False)`, this thread only):
  JAX_ENABLE_X64=1, common in scientific Python set-ups, made numpy's float64 inputs and
  constants float64 in the step, and the same digits run ended at another test accuracy. The
  paper's recipe and every figure here are float32 (`model.dtype`); one warning says so."""
  @functools.wraps(train_fn)
  def wrapped(*args, **kwargs):
    if jax.config.jax_enable_x64:
      logging.warning("JAX_ENABLE_X64 (jax_enable_x64) is on in this process: ignored for "
                      "training, which computes in float32 (model.dtype) as without it")
    with jax.enable_x64(False):
      return train_fn(*args, **kwargs)
  return wrapped


@_without_x64
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None, overwrite: bool = False,
                       placement: Placement | None = None, stop: threading.Event | None = None,
                       progress_bar: bool = True, hparams: dict | None = None) -> dict:
  """Trains, evaluates, checkpoints into `workdir`; resumes from its latest checkpoint.

  `stop_at_step` ends this process early (a job-time limit, a test of resuming); relaunching
  with the same workdir continues. `overwrite` starts over in a workdir that holds another run.
  `placement`: where it trains (default: every device of every host). `stop`: when set (by a
  sweep whose other run failed), the run checkpoints the step it reached and returns.
  `hparams`: what TensorBoard's HParams dashboard shows of a finished run ({"arm": ..., "seed":
  ..., swept field: value}; default {"seed": config.seed}), beside its final errors.
  Returns the summary also written to `summary.json`. Raises a NinError subclass (one line for
  the user) for a config, data, workdir or checkpoint that cannot work, and
  `preemption.Preempted` after a preemption notice (SIGTERM/SIGINT inside
  `preemption.stop_on_signals`, or JAX's preemption service): the step reached is checkpointed,
  the write complete, no evaluation run; a relaunch resumes there.
  """
  placement = placement or Placement.everywhere()
  checks.validate(config, placement.num_devices)  # before anything is compiled or written
  start_time = time.time()
  workdir = epath.Path(files.resolve(workdir))
  is_chief = placement.is_chief
  name = f"{workdir.parent.name}/{workdir.name}: " if placement.is_local else ""

  def info(message, *args):
    logging.info("%s" + message, name, *args)  # a name is not a format: a % in an arm name

  # --- Setup: devices and batch shapes ---------------------------------------------------------
  info("Devices: %s", placement.describe())
  platform = placement.local_devices[0].platform
  if config.model.dtype == models.NATIVE:  # resolved here, so config.json says what it ran in
    config = with_native_dtype(config, platform)
    info("model.dtype=native: %s on %s", config.model.dtype, platform)
  if config.model.dtype == "bfloat16" and native_bfloat16(platform) is False:
    logging.warning("%smodel.dtype=bfloat16 on a CPU without bfloat16 arithmetic (no %s flag): "
                    "XLA computes it in float32 with conversions, slower than "
                    "--config.model.dtype=float32 (docs/mixed_precision.md)", name,
                    "/".join(CPU_BFLOAT16_FLAGS))

  # --- Data ------------------------------------------------------------------------------------
  dataset = data.load_dataset(config, placement)
  # Every host runs the same number of steps, so count epochs on the global batch.
  parts = placement.num_parts(config.data_shards)
  steps_per_epoch = placement_lib.steps_per_epoch(dataset.num_train_examples, config.batch_size,
                                                  parts)
  if steps_per_epoch < 1:
    held_out = (f" ({dataset.num_validation_examples} more held out for validation: "
                "--config.validation_examples)" if dataset.num_validation_examples else "")
    raise ConfigError(f"batch_size {config.batch_size} exceeds the {dataset.num_train_examples} "
                      f"training examples{held_out}; lower --config.batch_size")
  total_steps = round(config.num_epochs * steps_per_epoch)
  if total_steps < 1:
    raise ConfigError(f"--config.num_epochs={config.num_epochs} is less than one step of "
                      f"{steps_per_epoch} per epoch; train for at least {1 / steps_per_epoch:.3g} "
                      "epochs")
  if total_steps > checks.MAX_INT:  # the step counter is int32 on the devices (optax, orbax)
    raise ConfigError(f"--config.num_epochs={config.num_epochs} is {total_steps:,} steps of "
                      f"{steps_per_epoch} per epoch, more than the {checks.MAX_INT:,} a run "
                      f"counts; train for at most {checks.MAX_INT // steps_per_epoch:,} epochs")
  info("Data: %s, %d train, %d validation and %d test examples on this host; %d steps/epoch, "
       "%d steps", config.dataset, *(dataset.num_local(split) for split in
                                     ("train", "validation", "test")),
       steps_per_epoch, total_steps)
  # A batch beyond the largest evaluated split is that split in one batch (2**31 - 1, taken at its
  # word, took all host memory padding the 359 test digits: measured)
  largest = max(dataset.num_test_examples, dataset.num_validation_examples)
  eval_batch_size = min(config.eval_batch_size, placement.round_up(largest))
  model = models.NIN(num_classes=dataset.num_classes, axis_name=AXIS, **config.model)
  image_shape = tuple(dataset.image_shape)
  if data.image_shape(config) != image_shape:  # validate() could not know them
    checks.check_model_fits(model, image_shape, config)
  learning_rate_fn = create_learning_rate_fn(config.optimizer, steps_per_epoch, total_steps)
  device_data = put_dataset(dataset, placement, config.dataset)

  # --- Workdir: one launch at a time, one config per workdir; before any compilation ----------
  lock = None
  identity = {"dataset": config.dataset, "num_classes": dataset.num_classes,
              "num_train_examples": dataset.num_train_examples,
              "num_validation_examples": dataset.num_validation_examples,
              "num_test_examples": dataset.num_test_examples}
  # What trained the checkpoints, in each checkpoint too: a second copy of config.json and
  # dataset.json, which a resume reads when they are lost (nin_jax/workdir.py)
  record = {"config": json.loads(config.to_json_best_effort()), "dataset": identity}
  if is_chief:
    workdir.mkdir(parents=True, exist_ok=True)
    lock = run_workdir.lock(workdir)  # held until this process ends
    changes = run_workdir.check_or_clear(workdir, config, overwrite)
    if changes:
      step = max(checkpointing.steps_on_disk(workdir), default=0)
      run_workdir.record_changes(workdir, changes, step)
    run_workdir.check_dataset(workdir, identity)
    files.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

  # --- Model and optimizer ---------------------------------------------------------------------
  m = config.model
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  key = (program_key(config), dataset.num_classes, steps_per_epoch, placement)
  # One init for runs on any devices: it runs where its inputs are, on the default device (a
  # placed sweep of 4 runs compiled it 4 times side by side, 3.3 s each for the digits on CPU)
  init = compiled_once(("init", key[:2]), lambda: _CompileOnce(
      jax.jit(functools.partial(model.init, train=False))))
  model_variables = init(init_rng, jnp.zeros((1, *image_shape)))
  num_params = count_params(model_variables["params"])  # trained parameters; not batch_stats
  tx = create_optimizer(config.optimizer, model_variables["params"], learning_rate_fn)
  state = create_train_state(model_variables, tx, train_rng)
  # On the run's devices, replicated, as the step returns it (and restored straight there): in
  # the one device's sharding that init leaves, the first step compiled apart from the others
  # (the digits' train step twice per launch, 4.5 s on CPU, measured). On several processes the
  # state stays as init leaves it, the form orbax restores multi-process checkpoints into; pmap
  # compiles the step once there all the same (measured: 2 processes on loopback).
  if not placement.spans_hosts:
    state = placement.replicate(state)
  info("Model: %s, head %s, %s parameters", m.preset, m.head, f"{num_params:,}")

  # --- Restore -------------------------------------------------------------------------------
  manager = checkpointing.create_manager(workdir, every_steps=config.checkpoint_every_steps,
                                         keep=config.keep_checkpoints, placement=placement,
                                         record=record)
  state = checkpointing.restore_latest(manager, state, workdir)
  if not placement.spans_hosts:  # on the run's devices, whatever form it was restored in
    state = placement.replicate(state)
  first_step = int(state.step)

  # --- The steps: compiled once for all runs of the same program on these devices -------------
  p_train_step = compiled_once(("train", key), lambda: _CompileOnce(placement.map(
      train_step, model=model, tx=tx, learning_rate_fn=learning_rate_fn,
      augment_config=config.augment, microbatch_size=config.microbatch_size,
      label_smoothing=config.optimizer.label_smoothing)))
  p_eval_step = compiled_once(("eval", key),
                              lambda: _CompileOnce(placement.map(eval_step, model=model)))
  last_step = total_steps if stop_at_step is None else min(total_steps, stop_at_step)
  last_step = max(first_step, last_step)  # a finished run relaunched: nothing left to do

  def train_batches(first, last):  # what each step takes, on the devices
    if isinstance(dataset, streaming.StreamingDataset):  # a batch of images a step, put ahead
      yield from streaming.ahead(map(placement.shard, dataset.train_batches(first, last, parts)))
      return
    for step in range(first, last):  # the epoch's indices, put once an epoch
      if step == first or step % steps_per_epoch == 0:
        table = placement.shard(data.epoch_indices(
            dataset, step // steps_per_epoch, config.batch_size, config.seed, parts, placement))
      yield table

  # --- The loop --------------------------------------------------------------------------------
  guard = LossGuard(dataset.num_classes, config.stuck_loss_steps, config.stuck_loss_tolerance)
  pending, window_start, window_time = [], first_step, time.time()
  evaluation, evaluated_step, throughputs = None, None, []
  preempted = False
  batches = train_batches(first_step, last_step)
  # On any exit, finish the checkpoint writes in flight: a stopped run keeps its last good state.
  with (_finishing(manager),
        _progress_bar(first_step, total_steps, disable=not (is_chief and progress_bar)) as progress,
        metrics.MetricsWriter(workdir, first_step, enabled=is_chief) as writer):
    for step, batch in zip(range(first_step, last_step), batches):
      state, step_metrics = p_train_step(state, device_data["train"], batch)
      pending.append(step_metrics)
      if stop is not None and stop.is_set():  # another run of the sweep failed: this step is
        last_step = step + 1                  # the last, checked and logged before its checkpoint
      if preemption.should_stop(step + 1, all_hosts=placement.spans_hosts):
        last_step, preempted = step + 1, True  # this step's checkpoint, then Preempted
      done = step + 1 == last_step
      # a preempted run has seconds left: its checkpoint first, no evaluation before it
      is_eval = config.eval_every_steps and not preempted and (
          (step + 1) % config.eval_every_steps == 0 or done)
      is_checkpoint = manager.should_save(step + 1)
      if (step + 1) % config.log_every_steps == 0 or done or is_eval or is_checkpoint:
        window = jax.device_get(pending)
        # Before any checkpoint of this state: a NaN state must never replace a good checkpoint.
        guard.update(window_start, window)
        images_per_s = len(window) * config.batch_size / (time.time() - window_time)
        record = {"step": step + 1, "epoch": (step + 1) / steps_per_epoch,
                  "images_per_s": round(images_per_s, 1),
                  **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
        if done and is_eval:  # the training is kept whatever the evaluation meets (a cut file)
          checkpointing.save(manager, step + 1, state, force=True)
        if is_eval:
          evaluation = evaluate_splits(p_eval_step, variables(state), device_data, dataset,
                                       eval_batch_size, placement)
          evaluated_step = step + 1
          record.update({f"{split}_{k}": v for split, result in evaluation.items()
                         for k, v in result.items()})
        writer.write(record)
        throughputs.append(images_per_s)
        progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_s:.0f}")
        progress.update(len(window))
        pending, window_start, window_time = [], step + 1, time.time()
        checkpointing.save(manager, step + 1, state)
      if done:
        break
    checkpointing.save(manager, last_step, state, force=True)  # finished (_finishing) before
                                                                # the summary's evaluation
  if preempted:  # the checkpoint is complete (_finishing waited for it)
    if lock:
      lock.close()
    signum = preemption.received()
    raise preemption.Preempted(
        f"{name}stopped by {preemption.signal_name(signum)} at step {last_step} of "
        f"{total_steps}, checkpoint saved in {manager.directory}; relaunch the same command to "
        "resume", signum, step=last_step)

  # --- Summary ---------------------------------------------------------------------------------
  if evaluated_step != last_step:
    evaluation = evaluate_splits(p_eval_step, variables(state), device_data, dataset,
                                 eval_batch_size, placement)
  test, held_out = evaluation["test"], evaluation.get("validation")
  summary = {"dataset": config.dataset, "model": m.preset, "head": m.head,
             "num_params": num_params, "step": int(state.step), "total_steps": total_steps,
             "finished": int(state.step) == total_steps,
             "test_accuracy": test["accuracy"], "test_error_percent": 100 * (1 - test["accuracy"]),
             "test_loss": test["loss"],
             "validation_examples": dataset.num_validation_examples,
             "validation_accuracy": held_out and held_out["accuracy"],
             "validation_error_percent": held_out and 100 * (1 - held_out["accuracy"]),
             "validation_loss": held_out and held_out["loss"],
             "wall_time_s": round(time.time() - start_time, 1),
             "flops_per_image": compiled_once(("flops", key), lambda: flops_per_image(
                 model, variables(state), image_shape)),
             # the first window of a process includes compilation: leave it out where we can
             "train_images_per_s": float(np.median(throughputs[1:] or throughputs or [0.0])),
             "steps_per_epoch": steps_per_epoch, "devices": placement.num_devices,
             "device_ids": [d.id for d in placement.local_devices],
             "platform": placement.local_devices[0].platform, "seed": config.seed,
             # the code, versions, device and resolved config: the report compares them
             "provenance": provenance.record(config, placement)}
  if first_step == last_step:  # nothing trained by this launch: keep the training figures
    earlier = files.read_json(workdir / "summary.json", "run summary") or {}
    for key in ("wall_time_s", "train_images_per_s", "provenance"):  # what trained it
      summary[key] = earlier.get(key, summary[key])
  if is_chief:
    files.write_json(workdir / "summary.json", summary)
    if summary["finished"]:
      metrics.write_hparams(
          workdir, hparams or {"seed": config.seed},
          {metrics.TEST_ERROR_TAG: summary["test_error_percent"],
           metrics.VALIDATION_ERROR_TAG: summary["validation_error_percent"]},
          trial_id=f"{workdir.parent.name}/{workdir.name}", step=summary["step"])
    if lock:
      lock.close()
  info("Summary: test accuracy %.2f%% (error %.2f%%), %s parameters, %.1f s, step %d/%d",
               100 * summary["test_accuracy"], summary["test_error_percent"],
               f"{num_params:,}", summary["wall_time_s"], summary["step"], total_steps)
  return summary


@contextlib.contextmanager
def _finishing(manager):
  """Waits for the checkpoint write in flight on the way out, and reports its failure; when the
  loop itself failed, that error is the one the user sees."""
  try:
    yield
  except BaseException:
    try:
      checkpointing.finish(manager)
    except Exception as e:  # the loop's error matters more; say this one in a log line
      logging.warning("%s", e)
    raise
  checkpointing.finish(manager)


def _progress_bar(first_step, total_steps, disable):
  import tqdm  # comes with tensorflow-datasets
  return tqdm.tqdm(initial=first_step, total=total_steps, disable=disable, unit="step",
                   dynamic_ncols=True, mininterval=2)
