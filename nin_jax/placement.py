"""Where a run trains: the one seam between a step and the devices.

Two kinds of placement:
  * `Placement.everywhere()`: every device of every host, the global batch split over them. A
    single run: data parallelism, over the hosts of `jax.distributed` too.
  * `Placement.local(devices)`: some devices of this host, this process alone. A sweep trains
    several runs at once this way (nin_jax/sweep.py), each on its own group of devices; no
    collective of such a run leaves its group, so hosts that split a sweep never wait on each
    other inside a step.

A step is mapped with `jax.pmap` over the placement's devices: the batch (example indices) split
on axis 0, the train state and the dataset passed replicated (`in_axes=None`), the state coming
back replicated (`out_axes=None`). Current JAX implements pmap as jit over shard_map on a
one-axis mesh; `replicate` puts arrays there with that mesh's replicated sharding, so passing
them costs nothing per step (measured: a 600 MB array passed as numpy took 1.1 s a step, as
`replicate`d 0.5 ms).
"""
import dataclasses
import functools
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nin_jax.errors import ConfigError, DataError

AXIS = "batch"  # the pmapped device axis

# CPU instruction-set flags (Linux /proc/cpuinfo) that do bfloat16 arithmetic: x86's AVX512-BF16
# and AMX-BF16, Arm's BF16. Without one, XLA computes a bfloat16 model's convolutions and matmuls
# in float32 with conversions around them (docs/mixed_precision.md).
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str] | None:
  """{field: value} of the first processor in `cpuinfo` ("model name", "flags" on x86;
  "Features" on Arm), or None where it cannot be read (not Linux)."""
  fields = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        if not key.strip() and fields:  # a blank line ends the first processor
          break
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return None
  return fields


def cpu_flags(names, cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...] | None:
  """Which of the instruction-set flags `names` this host's CPU has (() for none), or None where
  `cpuinfo` cannot be read (not Linux)."""
  fields = cpu_info(cpuinfo) or {}
  present = fields.get("flags", fields.get("Features"))  # x86 | Arm
  if present is None:  # no cpuinfo, or no flags in it: unknown
    return None
  return tuple(flag for flag in names if flag in present.split())


def cpu_bfloat16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...] | None:
  """The CPU_BFLOAT16_FLAGS this host's CPU has (() for none), or None where `cpuinfo` cannot be
  read (not Linux): the facts behind `native_bfloat16`, and the benchmark's header."""
  return cpu_flags(CPU_BFLOAT16_FLAGS, cpuinfo)


def native_bfloat16(platform: str) -> bool | None:
  """Whether devices of `platform` ("cpu", "gpu", "tpu") compute in bfloat16 natively: True on
  TPU and GPU (GPUs before NVIDIA's Ampere generation, V100 and T4, emulate it: not checked),
  on CPU whether it has a CPU_BFLOAT16_FLAGS flag (None: unknown)."""
  if platform != "cpu":
    return True
  flags = cpu_bfloat16_flags()
  return None if flags is None else bool(flags)


@dataclasses.dataclass(frozen=True)
class Placement:
  """devices: this process's devices that the run uses, or None for every device of every host.
  process_index, process_count: this process's place among the processes the run spans."""
  devices: tuple | None
  process_index: int
  process_count: int

  @classmethod
  def everywhere(cls) -> "Placement":
    return cls(None, jax.process_index(), jax.process_count())

  @classmethod
  def local(cls, devices) -> "Placement":
    """A run on `devices` (of this process), trained by this process alone."""
    return cls(tuple(devices), 0, 1)

  @property
  def local_devices(self) -> tuple:
    return self.devices or tuple(jax.local_devices())

  @property
  def num_devices(self) -> int:
    """Devices over all the run's hosts: the global batch is split over this many."""
    return len(self.devices) if self.devices else jax.device_count()

  @property
  def is_chief(self) -> bool:
    """Whether this process writes the run's files."""
    return self.process_index == 0

  @property
  def is_local(self) -> bool:
    """A run of a sweep, on some devices of this process only."""
    return self.devices is not None

  @property
  def spans_hosts(self) -> bool:
    """A run over the devices of several processes: its state and steps are global arrays, and
    its hosts must agree (on preemption, say) before they stop."""
    return not self.is_local and self.process_count > 1

  def round_up(self, size: int) -> int:
    """`size` rounded up to a multiple of the run's devices (a batch they can split)."""
    return -(-size // self.num_devices) * self.num_devices

  def describe(self) -> str:
    platform = self.local_devices[0].platform
    if self.is_local:
      return (f"{platform} device(s) {[d.id for d in self.devices]} of process "
              f"{jax.process_index()}")
    return (f"{self.num_devices} ({len(self.local_devices)} local, process {self.process_index} "
            f"of {self.process_count}), platform {platform}")

  def map(self, step_fn, **static):
    """`step_fn(replicated, dataset, batch)` over the devices: the first two arguments replicated,
    the batch split on axis 0; outputs replicated."""
    return jax.pmap(functools.partial(step_fn, **static), axis_name=AXIS,
                    in_axes=(None, None, 0), out_axes=None, devices=self.devices)

  def replicate(self, tree):
    """A copy of `tree` (arrays) on each of this process's devices of the run, as `map` wants
    its replicated arguments."""
    mesh = Mesh(np.array(self.local_devices), (AXIS,))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))

  def shard(self, batch):
    """`batch` (arrays [local devices, ...]) split over this process's devices of the run, as
    `map` wants its batch argument. Put it ahead, not per step (train.py puts an epoch's
    indices at once): a host array handed to the step itself waits for the device (measured:
    40 ms a digits step against 25 ms with the indices put ahead)."""
    mesh = Mesh(np.array(self.local_devices), (AXIS,))
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(AXIS)))

  # --- How data is laid out over the run's hosts and devices ----------------------------------

  def host_range(self, num_examples: int) -> tuple[int, int]:
    """[start, end): the contiguous slice of a split of `num_examples` that this host loads."""
    return part_bounds(num_examples, self.process_count, self.process_index)

  def num_parts(self, data_shards: int) -> int:
    """Parts of the training order: `data_shards`, or one per host of the run when 0. Raises
    ConfigError unless it is a multiple of the hosts."""
    parts = data_shards or self.process_count
    if parts % self.process_count:
      raise ConfigError(f"--config.data_shards={parts} must be a multiple of the "
                        f"{self.process_count} hosts")
    return parts

  def per_device(self, array):
    """This host's `array` [n, ...] as [local devices, n / local devices, ...], the layout `map`
    splits over the devices (n must divide)."""
    return array.reshape(len(self.local_devices), -1, *array.shape[1:])

  def num_eval_batches(self, num_examples: int, per_host: int) -> int:
    """Batches of `per_host` that every host runs over a split of `num_examples` (over all
    hosts): the same number on each (collectives need it), enough for the largest host's share."""
    return math.ceil(math.ceil(num_examples / self.process_count) / per_host)

  def check_fits(self, num_bytes: int, what: str, fix: str):
    """Raises DataError (one line) when `num_bytes` more do not fit in one device's free memory:
    the device's own count where it reports one (GPU, TPU), else the host's available memory
    (CPU devices live in host memory)."""
    device = self.local_devices[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
      where = f"{device.platform} device {device.id}"
    else:
      free = host_available_bytes()
      where = "host memory"
    if free is not None and num_bytes > free:
      raise DataError(f"{what} needs {num_bytes / 2**20:,.0f} MiB on each device but {where} has "
                      f"{free / 2**20:,.0f} MiB free; {fix}")


def part_bounds(num_examples: int, num_parts: int, part: int) -> tuple[int, int]:
  """[start, end) of part `part` when `num_examples` are cut into `num_parts` contiguous parts."""
  return num_examples * part // num_parts, num_examples * (part + 1) // num_parts


def steps_per_epoch(num_examples: int, batch_size: int, parts: int) -> int:
  """Steps that take every part's share of each global batch of `batch_size` without repeating
  an example. Raises ConfigError when the batch does not divide by the parts."""
  if batch_size % parts:
    raise ConfigError(f"--config.batch_size={batch_size} must divide by the {parts} data parts "
                      "(--config.data_shards)")
  smallest = min(end - start for start, end in
                 (part_bounds(num_examples, parts, p) for p in range(parts)))
  return smallest // (batch_size // parts)


def to_global(tree):
  """`tree` as `Placement.map` returns it to each host (replicated on its devices) as global
  arrays over every host's devices, which orbax writes in a multi-process job."""
  from orbax.checkpoint import utils  # orbax only where checkpoints are written
  return jax.tree.map(utils.fully_replicated_host_local_array_to_global_array, tree)


def from_every_host(tree):
  """`tree` (numpy arrays, the same shapes on every process) from every process, each leaf
  stacked as [process_count, ...]: a collective outside any step, which every process calls."""
  from jax.experimental import multihost_utils
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree))


def device_groups(size: int) -> list[tuple]:
  """This host's devices in consecutive groups of `size`, one group a run of a sweep."""
  local = jax.local_devices()
  return [tuple(local[i:i + size]) for i in range(0, len(local), size)]


def device_index():
  """Inside a step mapped by `Placement.map`: this device's index along the run's devices."""
  return jax.lax.axis_index(AXIS)


def host_available_bytes():
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None if not hasattr(os, "sysconf") else (
      os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
