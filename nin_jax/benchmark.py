"""Train-step speed: `python -m nin_jax.benchmark [--out=benchmark.json]`; sweep throughput:
`python -m nin_jax.benchmark --sweep=experiments/ablate_head.py:digits`.

For the paper's CIFAR-10 NIN at batch 128 and the 224-pixel NiN at batch 16, each in float32 and
in bfloat16 (`model.dtype`, --dtypes), it measures the real train step of nin_jax.train (the
pmapped step, SGD with momentum and weight decay, augmentation on the device) and prints one table:

  * step time: the median of --steps steps after compilation; images/s; compile time;
  * achieved FLOP/s, with the FLOPs of the compiled step from XLA's cost analysis, and that as a
    fraction of the matmul peak of the row's dtype, measured in the same run with a large jnp.dot;
  * peak host memory (and device memory where the device reports it);
  * the share of step time spent on input: the real pipeline (the epoch's indices on the device,
    gather, crops and flips on the device) against a constant batch of indices;
  * the PyTorch peer (../shared/peer/torch_nin.py, channels_last) run in the same command, in
    float32 and, for the bfloat16 rows, with its forward under torch.autocast
    (nin_jax/peer_bfloat16.py), and the ratio of images/s to the peer in the same dtype; bfloat16
    rows also give their ratio to nin-jax's own float32. torch is not a dependency of nin-jax:
    without it the peer is skipped.

The header names the CPU and its bfloat16 instructions (placement.cpu_bfloat16_flags): without
them XLA computes bfloat16 convolutions and matmuls in float32, and so does PyTorch's oneDNN
(slower still).

Shared machines are noisy: compare ratios from one run, not absolute times across runs.
"""
import collections
import functools
import glob
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import flax.linen as nn
import numpy as np
from absl import app, flags

from nin_jax import data, files, models, preemption, train
from nin_jax.placement import AXIS, Placement, cpu_bfloat16_flags

flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after compilation).")
flags.DEFINE_string("out", "benchmark.json", "Where to write the table as JSON.")
flags.DEFINE_string("peer", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peer",
                                         "torch_nin.py"), "The PyTorch peer script.")
flags.DEFINE_list("models", ["cifar", "imagenet", "imagenet_streamed"],
                  "Which of cifar, imagenet, imagenet_streamed (the 224-pixel NiN fed by the "
                  "streaming pipeline from JPEGs written for the run).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes (model.dtype) to time; "
                  "parameters, gradients, optimizer, logits and loss stay float32.")
flags.DEFINE_integer("batch", None, "Global batch of every model (default: per model, see "
                     "SETUPS), e.g. 1024 on an accelerator.")
flags.DEFINE_bool("breakdown", False, "Also time each layer of the CIFAR NIN alone.")
flags.DEFINE_integer("microbatch_size", None, "Per-device micro-batch of the train step "
                     "(config.microbatch_size); default: per model on CPU, see SETUPS, and 0 "
                     "(off) on GPU and TPU; 0 = off.")
flags.DEFINE_string("sweep", None, "Measure sweep throughput instead: this ablation config "
                    "(experiments/ablate_head.py:digits), one run at a time against placed.")
flags.DEFINE_integer("sweep_seeds", 2, "With --sweep: seeds per arm.")
flags.DEFINE_float("sweep_epochs", 10.0, "With --sweep: epochs per run.")
flags.DEFINE_list("runs_at_once", ["1", "auto"], "With --sweep: the settings of "
                  "ablation.runs_at_once to compare (auto: the sweep's own choice).")
flags.DEFINE_list("members", ["1", "3"], "With --sweep: members (seeds) per compiled step to time "
                  "with jax.vmap, against one model a step.")
flags.DEFINE_bool("profile", False, "Also print where the CIFAR step's time goes, op by op, "
                  "from a jax.profiler trace.")

# name: (preset, classes, batch, image shape, peer arch, micro-batch). The micro-batches are the
# fastest measured on 2 CPU cores: 8 and 16 run the CIFAR step equally fast, but 16 compiles in
# half the time (16 unrolled micro-batches of 8 took 10.6 s to compile).
SETUPS = {
    "cifar": ("nin_cifar", 10, 128, (32, 32, 3), "cifar", 16),
    "imagenet": ("nin_imagenet", 1000, 16, (224, 224, 3), "imagenet", 8),
    "imagenet_streamed": ("nin_imagenet", 1000, 16, (224, 224, 3), "imagenet", 8),
}
# Dense bfloat16 peaks of the devices whose input needs the streamed row works out (vendor data
# sheets): an H200 (989 TFLOP/s; 1,979 is with 2:4 sparsity), a TPU v4 host (4 chips of 275),
# a TPU v5e host (8 chips of 197).
ACCELERATOR_PEAKS = {"H200": 989e12, "TPU v4 host (4 chips)": 4 * 275e12,
                     "TPU v5e host (8 chips)": 8 * 197e12}
# The share of that peak a well-fed convnet step reaches: an assumption, not a measurement (no
# accelerator here); the table also gives the bound at 100%.
ASSUMED_UTILISATION = 0.4


def _median_seconds(fn, steps):
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak_flops(size=2048, steps=20, dtype="float32"):
  """FLOP/s of a large square jnp.dot in `dtype` on device 0: the practical peak to compare
  with. The fastest of `steps` runs: a peak, and the figure least disturbed by a busy machine."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, a))
  fastest = min(_median_seconds(lambda: dot(a, a), 1) for _ in range(steps))
  return 2 * size ** 3 / fastest


def _optimizer_config():
  config = ml_collections.ConfigDict(dict(
      learning_rate=0.01, momentum=0.9, nesterov=False, weight_decay=1e-4, bias_lr_multiplier=1.0,
      classifier_lr_multiplier=1.0, grad_clip_norm=0.0, schedule="constant", decay_epochs=(),
      decay_factor=0.1, warmup_epochs=0.0))
  return config


def measure(name, steps, microbatch_size=None, profile=False, dtype="float32", batch_size=None):
  """One row of the table: the train step of SETUPS[name] with compute dtype `dtype`."""
  preset, classes, default_batch, shape, _, default_microbatch = SETUPS[name]
  batch_size = batch_size or default_batch
  if microbatch_size is None:  # micro-batches pay on CPU caches; accelerators want whole batches
    microbatch_size = default_microbatch if jax.devices()[0].platform == "cpu" else 0
  num_devices = jax.local_device_count()
  model = models.NIN(num_classes=classes, preset=preset, dtype=dtype)
  model_variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  learning_rate_fn = lambda step: 0.01  # noqa: E731
  tx = train.create_optimizer(_optimizer_config(), model_variables["params"], learning_rate_fn)
  state = train.create_train_state(model_variables, tx, jax.random.PRNGKey(1))
  augment = ml_collections.ConfigDict(dict(crop_padding=4, flip=True))
  placement = Placement.everywhere()
  p_train_step = placement.map(train.train_step, model=model, tx=tx,
                               learning_rate_fn=learning_rate_fn, augment_config=augment,
                               microbatch_size=microbatch_size)
  dataset = data.load_synthetic(shape, classes, num_train=batch_size * 8, num_test=1)
  dataset.x_train = dataset.x_train.astype(np.float32) / 255  # as preprocessing leaves it
  on_device = placement.replicate({"image": dataset.x_train, "label": dataset.y_train})

  def indices(step):
    return data.train_indices(dataset, step, batch_size, 0, 1, placement)

  constant = placement.shard(indices(0))

  start = time.perf_counter()
  compiled = p_train_step.lower(state, on_device, constant).compile()
  compile_s = time.perf_counter() - start
  flops = compiled.cost_analysis()["flops"] * num_devices  # pmap reports one replica

  def run_constant():
    nonlocal state
    state, metrics = p_train_step(state, on_device, constant)
    return metrics

  jax.block_until_ready(run_constant())  # warm up
  step_s = _median_seconds(run_constant, steps)
  ops = profile_ops(run_constant, compiled.as_text()) if profile else None

  # The real input path, as train.py runs it: the epoch's indices on the devices, each step
  # picking its row by its step count; gather and augmentation on the device.
  table = placement.shard(data.epoch_indices(dataset, 0, batch_size, 0, 1, placement))
  def run_pipeline():
    nonlocal state
    state, metrics = p_train_step(state, on_device, table)
    return metrics

  jax.block_until_ready(run_pipeline())
  pipeline_s = _median_seconds(run_pipeline, steps)
  device_memory = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  return {"model": name, "dtype": dtype, "preset": preset, "batch": batch_size,
          "devices": num_devices,
          "platform": jax.devices()[0].platform, "microbatch_size": microbatch_size,
          "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "images_per_s": batch_size / step_s, "step_gflop": flops / 1e9,
          "achieved_gflop_per_s": flops / step_s / 1e9,
          "input_share": max(0.0, (pipeline_s - step_s) / pipeline_s),
          "device_peak_mb": device_memory and device_memory / 2 ** 20, "ops": ops}


def measure_streamed(steps, dtype="float32", batch_size=None, microbatch_size=None,
                     crop="resize_crop"):
  """The row of the 224-pixel NiN fed by the real streaming pipeline (nin_jax/streaming.py):
  JPEGs of 300-500 pixels a side written here in TFDS's format (imagenet2012, nin_jax/local_tfds),
  read, decoded, cropped (`crop`: experiments/imagenet.py's resize_crop by default) and flipped
  on the host, put on the devices ahead; against the same step on one constant batch.

  Also the host's decode rate alone (the pipeline with no training beside it): images/s."""
  from experiments import default
  from nin_jax import local_tfds, streaming
  preset, classes, default_batch, shape, _, default_microbatch = SETUPS["imagenet_streamed"]
  batch_size = batch_size or default_batch
  if microbatch_size is None:
    microbatch_size = default_microbatch if jax.devices()[0].platform == "cpu" else 0
  num_images = batch_size * (steps + 3)
  with tempfile.TemporaryDirectory() as data_dir:
    local_tfds.write(data_dir, "imagenet2012", num_train=num_images, num_test=1, min_size=300,
                     max_size=500, modes=("RGB",))
    jpeg_bytes = sum(os.path.getsize(f) for f in glob.glob(f"{data_dir}/**/*-train.tfrecord*",
                                                           recursive=True))
    config = default.get_config("imagenet")
    config.data_dir, config.batch_size, config.streaming.crop = data_dir, batch_size, crop
    config.model.dtype, config.microbatch_size = dtype, microbatch_size
    placement = Placement.everywhere()
    dataset = data.load_dataset(config, placement)

    # The host alone: decode, crop, flip, normalise; timed from the first batch on (TensorFlow's
    # start-up and the first shuffle buffer's reading, seconds, are not a rate).
    host_batches = dataset.train_batches(0, steps + 3, parts=1)
    next(host_batches)
    start = time.perf_counter()
    decoded = sum(b["label"].size for b in host_batches)
    decode_rate = decoded / (time.perf_counter() - start)

    model = models.NIN(num_classes=classes, axis_name=AXIS, **config.model)
    model_variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    learning_rate_fn = lambda step: 0.01  # noqa: E731
    tx = train.create_optimizer(_optimizer_config(), model_variables["params"], learning_rate_fn)
    state = train.create_train_state(model_variables, tx, jax.random.PRNGKey(1))
    p_train_step = placement.map(train.train_step, model=model, tx=tx,
                                 learning_rate_fn=learning_rate_fn, augment_config=config.augment,
                                 microbatch_size=microbatch_size)
    batches = streaming.ahead(map(placement.shard, dataset.train_batches(
        0, steps + 3, parts=1)))
    constant = next(batches)
    start = time.perf_counter()
    compiled = p_train_step.lower(state, {}, constant).compile()
    compile_s = time.perf_counter() - start
    flops = compiled.cost_analysis()["flops"] * jax.local_device_count()

    def run(batch):
      nonlocal state
      state, metrics = p_train_step(state, {}, batch)
      return metrics

    jax.block_until_ready(run(constant))
    jax.block_until_ready(run(next(batches)))
    # Interleaved, a constant step then a fed one: a busy machine's drift hits both alike.
    times = [(_median_seconds(lambda: run(constant), 1),
              _median_seconds(lambda: run(next(batches)), 1)) for _ in range(steps)]
    step_s, pipeline_s = np.median(times, axis=0)
  train_flops_per_image = flops / batch_size
  needs = {name: {"images_per_s_at_peak": peak / train_flops_per_image,
                  "images_per_s": ASSUMED_UTILISATION * peak / train_flops_per_image}
           for name, peak in ACCELERATOR_PEAKS.items()}
  return {"model": "imagenet_streamed", "dtype": dtype, "preset": preset, "batch": batch_size,
          "devices": jax.local_device_count(), "platform": jax.devices()[0].platform,
          "microbatch_size": microbatch_size, "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "images_per_s": batch_size / pipeline_s, "step_gflop": flops / 1e9,
          "achieved_gflop_per_s": flops / pipeline_s / 1e9,
          "input_share": max(0.0, (pipeline_s - step_s) / pipeline_s),
          "pipeline_step_ms": 1e3 * pipeline_s, "crop": crop, "decode_images_per_s": decode_rate,
          "jpeg_kb": jpeg_bytes / num_images / 1024, "accelerator_needs": needs,
          "device_peak_mb": None, "ops": None}


def profile_ops(run_step, hlo_text, steps=3):
  """Time per compiled op (summed over the threads that ran it) in `steps` traced steps, grouped
  by op kind and output shape: a convolution's forward, input-gradient and weight-gradient ops
  are told apart by their output shapes (activations vs kernel)."""
  from jax.profiler import ProfileData
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        jax.block_until_ready(run_step())
    [trace] = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    planes = ProfileData.from_file(trace).planes
  totals = collections.Counter()
  for plane in planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):  # the threads that run compiled ops
        continue
      for event in line.events:
        if "Execute" in event.name or "Await" in event.name:  # the executor, not an op
          continue
        defined = re.search(r"%" + re.escape(event.name) + r" = (\(?[a-z]\w*\[[\d,]*\])", hlo_text)
        kind = re.sub(r"[.\d]+$", "", event.name)
        totals[(kind, defined.group(1).lstrip("(") if defined else "?")] += event.duration_ns
  total = sum(totals.values())
  return [{"op": kind, "output": shape, "ms_per_step": ns / steps / 1e6, "share": ns / total,
           # a fusion that converts between dtypes: bfloat16 <-> float32 traffic
           "converts": "convert" in kind}
          for (kind, shape), ns in totals.most_common()]


def layer_breakdown(steps):
  """Forward + backward time of each layer of the CIFAR NIN at batch 128, alone, at its real
  shapes (gradients for weights always, for inputs except the first layer): where a step's time
  goes, and how close each layer kind gets to the matmul peak."""
  rows = []
  x = jax.random.normal(jax.random.PRNGKey(0), (128, 32, 32, 3))
  for index, block in enumerate(models.PRESETS["nin_cifar"]):
    widths = [w or 10 for w in block.widths]
    for i, width in enumerate(widths):
      size = block.kernel if i == 0 else 1
      # the layers as models.MLPConv builds them: a k x k nn.Conv, then nn.Dense for 1 x 1
      layer = (nn.Conv(width, (size, size), padding=[(block.padding,) * 2] * 2) if i == 0
               else nn.Dense(width))
      params = layer.init(jax.random.PRNGKey(1), x)["params"]
      def loss(p, h, layer=layer):
        return jnp.sum(jax.nn.relu(layer.apply({"params": p}, h)))
      grad = jax.jit(jax.grad(loss, argnums=(0,) if index == i == 0 else (0, 1)))
      flops = grad.lower(params, x).compile().cost_analysis()["flops"]
      jax.block_until_ready(grad(params, x))
      seconds = _median_seconds(lambda: grad(params, x), steps)
      kind = f"{size}x{size} conv" if i == 0 else "1x1 (dense)"
      rows.append({"layer": f"block{index + 1} {kind} {x.shape[-1]}->{width} @{x.shape[1]}px",
                   "ms": 1e3 * seconds, "gflop": flops / 1e9,
                   "gflop_per_s": flops / seconds / 1e9})
      x = jax.nn.relu(layer.apply({"params": params}, x))
    if block.pool:
      x = models.POOLS[block.pool](x)
  return rows


def run_peer(script, name, steps, dtype="float32", batch_size=None):
  """The peer's JSON line for SETUPS[name]: its float32 step, or with dtype="bfloat16" the same
  step with its forward under torch.autocast (nin_jax/peer_bfloat16.py); {"error": ...} where it
  could not run (no script, no torch)."""
  arch, batch = SETUPS[name][4], batch_size or SETUPS[name][2]
  if not os.path.exists(script):
    return {"error": f"no peer script at {script}"}
  wrapper = [os.path.join(os.path.dirname(__file__), "peer_bfloat16.py")] if dtype != "float32" else []
  result = subprocess.run([sys.executable, *wrapper, script, "--arch", arch, "--batch",
                           str(batch), "--steps", str(steps), "--channels-last"],
                          capture_output=True, text=True)
  if result.returncode:
    return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def load_config(spec):
  """The ConfigDict of 'path/to/config.py[:variant]', as launch.py's --config reads it."""
  import importlib.util
  path, _, variant = spec.partition(":")
  loader = importlib.util.spec_from_file_location("benchmark_config", files.resolve(path))
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  return module.get_config(variant)


def measure_sweep(config, runs_at_once):
  """Wall time of `config`'s sweep from nothing (compilations included) at one setting of
  ablation.runs_at_once; runs per hour and images per second summed over its runs."""
  from nin_jax import sweep
  config = config.copy_and_resolve_references()
  config.ablation.runs_at_once = 0 if runs_at_once == "auto" else int(runs_at_once)
  per_run, at_once = sweep.placement_of(config.ablation)
  train._compiled.clear()  # every setting compiles for itself, as a fresh launch does
  train._on_device.clear()
  data._loaded.clear()
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    sweep.run_sweep(config, workdir)
    wall = time.perf_counter() - start
    summaries = [json.load(open(p)) for p in glob.glob(f"{workdir}/*/seed_*/summary.json")]
  images = sum(s["step"] for s in summaries) * config.batch_size
  return {"runs_at_once": at_once, "devices_per_run": per_run, "runs": len(summaries),
          "wall_s": wall, "runs_per_hour": 3600 * len(summaries) / wall,
          "images_per_s": images / wall}


def measure_members(config, counts, steps):
  """Member-steps per second of `config`'s run with M members (seeds) in one compiled step
  (`jax.vmap` over the train state and the batch), on one device, for M in `counts`."""
  placement = Placement.local(jax.local_devices()[:1])
  config = train.with_native_dtype(config, placement.local_devices[0].platform)
  dataset = data.load_dataset(config, placement)
  model = models.NIN(num_classes=dataset.num_classes, axis_name=AXIS, **config.model)
  learning_rate_fn = train.create_learning_rate_fn(config.optimizer, 100, 10_000)
  on_device = placement.replicate({"image": dataset.x_train, "label": dataset.y_train})
  static = dict(model=model, learning_rate_fn=learning_rate_fn, augment_config=config.augment,
                microbatch_size=config.microbatch_size)
  def state(seed):
    model_variables = model.init(jax.random.PRNGKey(seed),
                                 jnp.zeros((1, *dataset.x_train.shape[1:])), train=False)
    static["tx"] = train.create_optimizer(config.optimizer, model_variables["params"],
                                          learning_rate_fn)
    return train.create_train_state(model_variables, static["tx"], jax.random.PRNGKey(seed))
  def members_step(states, dataset_on_device, batches, **static):
    return jax.vmap(lambda s, b: train.train_step(s, dataset_on_device, b, **static))(
        states, batches)
  rows = []
  for count in counts:
    states = [state(seed) for seed in range(count)]
    batches = [data.train_indices(dataset, 0, config.batch_size, seed, 1, placement)
               for seed in range(count)]
    if count == 1:  # the plain step, as a run trains
      step, current = placement.map(train.train_step, **static), states[0]
      batch = placement.shard(batches[0])
    else:
      step = placement.map(members_step, **static)
      current = jax.tree.map(lambda *x: jnp.stack(x), *states)
      batch = placement.shard({"index": np.stack([b["index"] for b in batches], axis=1)})
    def run():
      nonlocal current
      current, metrics = step(current, on_device, batch)
      return metrics
    jax.block_until_ready(run())
    seconds = _median_seconds(run, steps)
    rows.append({"members": count, "step_ms": 1e3 * seconds, "member_steps_per_s": count / seconds})
  return rows


def sweep_main():
  """`--sweep`: sweep throughput, one run at a time against placed, and members per step."""
  config = load_config(flags.FLAGS.sweep)
  config.ablation.num_seeds = flags.FLAGS.sweep_seeds
  config.num_epochs = flags.FLAGS.sweep_epochs
  config.log_every_steps = min(config.log_every_steps, 20)
  rows = [measure_sweep(config, setting) for setting in flags.FLAGS.runs_at_once]
  base = config.copy_and_resolve_references()
  del base["ablation"]
  members = measure_members(base, [int(m) for m in flags.FLAGS.members], flags.FLAGS.steps)
  report = {"config": flags.FLAGS.sweep, "seeds": config.ablation.num_seeds,
            "epochs": config.num_epochs, "batch": config.batch_size, "jax": jax.__version__,
            "platform": jax.devices()[0].platform, "devices": jax.local_device_count(),
            "cpu_count": os.cpu_count(), "sweep": rows, "members": members}
  files.write_json(files.resolve(flags.FLAGS.out), report)
  print(f"{flags.FLAGS.sweep}: {rows[0]['runs']} runs of {config.num_epochs:g} epochs (batch "
        f"{config.batch_size}); {jax.devices()[0].platform} x {jax.local_device_count()}, "
        f"{os.cpu_count()} cores; wall time from nothing, compilations included")
  print("| runs at once | devices per run | wall s | runs/hour | images/s summed | speed-up |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['runs_at_once']} | {r['devices_per_run']} | {r['wall_s']:.0f} "
          f"| {r['runs_per_hour']:.0f} | {r['images_per_s']:.0f} "
          f"| {r['images_per_s'] / rows[0]['images_per_s']:.2f}x |")
  print(f"\nMembers (seeds) in one compiled step (jax.vmap), {config.dataset} train step, batch "
        f"{config.batch_size}, one device:")
  print("| members | step ms | member-steps/s | vs one model |\n|---|---|---|---|")
  for r in members:
    print(f"| {r['members']} | {r['step_ms']:.1f} | {r['member_steps_per_s']:.1f} "
          f"| {r['member_steps_per_s'] / members[0]['member_steps_per_s']:.2f}x |")


def cpu_name():
  """The CPU's model name from /proc/cpuinfo, or the platform's word for it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.partition(":")[2].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or platform.machine()


def main(argv):
  del argv
  if flags.FLAGS.sweep:
    return sweep_main()
  unknown = set(flags.FLAGS.dtypes) - set(models.DTYPES)
  if unknown or not flags.FLAGS.dtypes:
    raise app.UsageError(f"--dtypes={','.join(flags.FLAGS.dtypes)}: choose from "
                         f"{','.join(models.DTYPES)}")
  platform = jax.devices()[0].platform
  if flags.FLAGS.batch is not None and flags.FLAGS.batch < 1:
    raise app.UsageError(f"--batch={flags.FLAGS.batch}: give a positive global batch, or leave it "
                         "out for each model's own")
  for name in flags.FLAGS.models:
    if name not in SETUPS:
      raise app.UsageError(f"--models: unknown model {name!r}; choose from {','.join(SETUPS)}")
    batch = flags.FLAGS.batch or SETUPS[name][2]
    per_device, micro = batch // jax.local_device_count(), flags.FLAGS.microbatch_size
    if micro is None:
      micro = SETUPS[name][5] if platform == "cpu" else 0
    if per_device * jax.local_device_count() != batch or (micro and per_device % micro):
      raise app.UsageError(
          f"--batch={batch} for {name}: it must divide by the "
          f"{jax.local_device_count()} devices, and the per-device batch {per_device} by the "
          f"micro-batch {micro} (--microbatch_size=0 turns micro-batches off)")
  peaks = {dtype: matmul_peak_flops(dtype=dtype) for dtype in flags.FLAGS.dtypes}
  rows, peers = [], {}
  for name in flags.FLAGS.models:
    for dtype in flags.FLAGS.dtypes:
      if name == "imagenet_streamed":
        row = measure_streamed(flags.FLAGS.steps, dtype, flags.FLAGS.batch,
                               flags.FLAGS.microbatch_size)
      else:
        row = measure(name, flags.FLAGS.steps, flags.FLAGS.microbatch_size,
                      profile=flags.FLAGS.profile and name == "cifar", dtype=dtype,
                      batch_size=flags.FLAGS.batch)
      row["fraction_of_matmul_peak"] = row["achieved_gflop_per_s"] * 1e9 / peaks[dtype]
      # the peer is PyTorch on this host's CPU: a yardstick for the CPU step only
      peer = (run_peer(flags.FLAGS.peer, name, flags.FLAGS.steps, dtype, flags.FLAGS.batch)
              if platform == "cpu" else {"error": f"the CPU peer is not run beside {platform}"})
      peers[name, dtype] = peer
      row["peer_images_per_s"] = peer.get("images_per_s")
      row["ratio_vs_peer"] = (row["images_per_s"] / peer["images_per_s"]
                              if peer.get("images_per_s") else None)
      row["peer"] = peer
      rows.append(row)
  for row in rows:
    own = [r for r in rows if r["model"] == row["model"] and r["dtype"] == "float32"]
    row["ratio_vs_own_float32"] = (row["images_per_s"] / own[0]["images_per_s"]
                                   if own and row["dtype"] != "float32" else None)
  host_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  device = (f"{cpu_name()}, bfloat16 instructions: "
            f"{', '.join(cpu_bfloat16_flags() or ()) or 'none'}" if platform == "cpu"
            else jax.devices()[0].device_kind)
  report = {"matmul_peak_gflop_per_s": {d: p / 1e9 for d, p in peaks.items()},
            "host_peak_mb": host_peak_mb, "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "device": device, "rows": rows}
  files.write_json(files.resolve(flags.FLAGS.out), report)

  def fmt(value, pattern):
    return "–" if value is None else pattern.format(value)
  print(f"{platform} x {jax.local_device_count()} ({device}), {os.cpu_count()} cores; matmul "
        "peak (jnp.dot 2048^2) " + ", ".join(f"{d} {p / 1e9:.1f}" for d, p in peaks.items())
        + f" GFLOP/s; host peak memory {host_peak_mb:.0f} MB (whole process)")
  print("| model | dtype | batch | micro-batch | step ms | images/s | compile s | GFLOP/step "
        "| GFLOP/s | of peak | input share | device MB | peer | peer images/s | ratio vs peer "
        "| vs own float32 |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    peer_kind = "float32" if r["dtype"] == "float32" else "autocast bf16"
    print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['microbatch_size'] or '–'} "
          f"| {r['step_ms']:.1f} | {r['images_per_s']:.1f} "
          f"| {r['compile_s']:.1f} | {r['step_gflop']:.2f} | {r['achieved_gflop_per_s']:.1f} "
          f"| {100 * r['fraction_of_matmul_peak']:.0f}% | {100 * r['input_share']:.1f}% "
          f"| {fmt(r['device_peak_mb'], '{:.0f}')} | {peer_kind} "
          f"| {fmt(r['peer_images_per_s'], '{:.1f}')} | {fmt(r['ratio_vs_peer'], '{:.2f}x')} "
          f"| {fmt(r['ratio_vs_own_float32'], '{:.2f}x')} |")
  for r in rows:
    if r["model"] == "imagenet_streamed":
      cores = os.cpu_count()
      print(f"\nStreamed input ({r['dtype']}): {r['batch']} JPEGs a step (300-500 px, "
            f"{r['jpeg_kb']:.0f} KB average; ImageNet's average ~110 KB), crop {r['crop']}; "
            f"step {r['pipeline_step_ms']:.0f} ms fed by the pipeline against {r['step_ms']:.0f} "
            f"ms on a constant batch: input share {100 * r['input_share']:.1f}%. The host alone "
            f"decodes {r['decode_images_per_s']:.0f} images/s on {cores} cores "
            f"({r['decode_images_per_s'] / cores:.0f} a core).")
      per_image = r["step_gflop"] / r["batch"]
      print(f"What a device would need: the step's {per_image:.1f} GFLOP an image (XLA's count, "
            f"forward and backward) at {100 * ASSUMED_UTILISATION:.0f}% of the device's dense "
            "bfloat16 peak (an assumption; at 100% in brackets), at batch 256:")
      print("| device | peak TFLOP/s | images/s needed | steps/s of 256 | cores at this host's "
            "rate a core |\n|---|---|---|---|---|")
      for device_name, need in r["accelerator_needs"].items():
        rate = need["images_per_s"]
        print(f"| {device_name} | {ACCELERATOR_PEAKS[device_name] / 1e12:.0f} | {rate:,.0f} "
              f"({need['images_per_s_at_peak']:,.0f}) | {rate / 256:.0f} "
              f"| {rate / (r['decode_images_per_s'] / cores):,.0f} |")
  for r in rows:
    if "error" in r["peer"]:
      print(f"peer ({r['model']}, {r['dtype']}): {r['peer']['error']}")
  for r in rows:
    if r["ops"]:
      total = sum(o["ms_per_step"] for o in r["ops"])
      converts = sum(o["ms_per_step"] for o in r["ops"] if o["converts"])
      print(f"\nWhere the {r['model']} {r['dtype']} step's time goes (op time summed over "
            f"threads, {total:.0f} ms per step, {100 * converts / total:.0f}% of it in ops that "
            "convert between dtypes; top 15 ops):")
      print("| op | output | ms/step | share |\n|---|---|---|---|")
      for o in r["ops"][:15]:
        print(f"| {o['op']} | {o['output']} | {o['ms_per_step']:.1f} | {100 * o['share']:.1f}% |")
  if flags.FLAGS.breakdown:
    layers = layer_breakdown(flags.FLAGS.steps)
    report["layers"] = layers
    files.write_json(files.resolve(flags.FLAGS.out), report)
    total = sum(r["ms"] for r in layers)
    peak = peaks["float32"] if "float32" in peaks else matmul_peak_flops()
    print("\n| layer (CIFAR NIN, batch 128, forward + backward alone) | ms | share | GFLOP "
          "| GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|")
    for r in layers:
      print(f"| {r['layer']} | {r['ms']:.0f} | {100 * r['ms'] / total:.0f}% | {r['gflop']:.1f} "
            f"| {r['gflop_per_s']:.0f} | {100 * r['gflop_per_s'] * 1e9 / peak:.0f}% |")


def _main_ended_by_signals(argv):
  """`main`, which SIGTERM or SIGINT ends cleanly: a measurement has nothing to resume (rerun
  it), so the command unwinds at once (temporary data and workdirs removed, the PyTorch peer's
  process killed, --out not written) and exits with 128 + the signal, one line saying so."""
  # Every temporary file of the run (the benchmark's, TFDS's, TensorFlow's) under one folder,
  # removed at the end whatever the signal interrupted (even a folder half made).
  root = tempfile.mkdtemp(prefix="nin_jax_benchmark_")
  tempfile.tempdir = root

  def stopped():
    shutil.rmtree(root, ignore_errors=True)
    print(f"stopped by {preemption.signal_name(ended[0])}: nothing measured is written (--out "
          "is written once every row is); rerun the command", file=sys.stderr, flush=True)

  try:
    with preemption.end_on_signals(on_stuck=stopped) as ended:
      try:
        main(argv)
      except BaseException:
        if not ended:
          raise
      else:
        if ended:  # held by a library until the end, within the grace: the table was written
          logging.warning("%s came as the benchmark ended: its table is complete",
                          preemption.signal_name(ended[0]))
        return
  finally:
    tempfile.tempdir = None
    shutil.rmtree(root, ignore_errors=True)
  stopped()
  sys.exit(128 + ended[0])


if __name__ == "__main__":
  app.run(_main_ended_by_signals)
