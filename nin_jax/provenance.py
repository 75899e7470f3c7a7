"""Where a run's numbers came from: the code's commit, the package versions and the hardware.

* `record(config, placement)`: one JSON-serialisable dict, to save beside a run's results.
* `mismatches(records)`: warning lines when runs that are about to be compared came from
  different code, versions or hardware (or carry no record at all).

Two arms of an ablation compared across a `git pull`, a JAX upgrade or a GPU swap differ by more
than the arm; the report should say so rather than let the difference pass for the ablation's.
"""
import functools
import importlib.metadata
import math
import os
import platform as python_platform
import subprocess
from pathlib import Path

import jax

# tensorflow(-cpu) and tensorflow-datasets: the streamed datasets' order is theirs (tf.data).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-cpu",
            "tensorflow-datasets")
_GIT_TIMEOUT_S = 5
# GIT_DIR and friends would point git at another repository than the code's.
_GIT_ENV_OVERRIDES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CEILING_DIRECTORIES")


# Environment variables that change results or where they are computed: JAX's and XLA's
# settings (JAX_ENABLE_X64, JAX_DEFAULT_MATMUL_PRECISION, XLA_FLAGS...), TensorFlow's (the input
# pipeline), the devices a process sees, NVIDIA's TF32 switch.
ENVIRONMENT = ("JAX_", "XLA_", "TF_", "CUDA_VISIBLE_DEVICES", "TPU_", "NVIDIA_TF32_OVERRIDE",
               "LIBTPU_INIT_ARGS")


_LOG_LEVELS = {"TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL"}  # what is printed, not computed


def environment() -> dict[str, str]:
  """{name: value} of the environment variables set in this process whose names start with
  one of ENVIRONMENT (log levels aside), sorted by name."""
  return {k: v for k, v in sorted(os.environ.items())
          if k.startswith(ENVIRONMENT) and k not in _LOG_LEVELS}


# The vector instruction sets XLA's CPU code is compiled for: the same run on an AVX2-only and on
# an AVX-512 host takes other code paths (2.0-2.5x the speed, measured on the digits).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve", "bf16")


def cpu() -> str | None:
  """This host's CPU as 'model (flags of CPU_FLAGS)', e.g. 'AMD EPYC (avx2)'; None off Linux."""
  from nin_jax import placement
  fields, flags = placement.cpu_info(), placement.cpu_flags(CPU_FLAGS)
  if fields is None or flags is None:
    return None
  model = fields.get("model name") or python_platform.machine()
  return f"{model} ({', '.join(flags) or 'none of ' + '/'.join(CPU_FLAGS)})"


def record(config, placement=None) -> dict:
  """The provenance of a run about to train with `config`: a JSON-serialisable dict.

  Args:
    config: an ml_collections ConfigDict (references are resolved) or a plain mapping.
    placement: a `nin_jax.placement.Placement`; None for every device of every host.

  Returns:
    {"versions": {package: version or None, ..., "python": "3.11.x"},
     "platform": "cpu" | "gpu" | "tpu", "device_kind": str, "num_devices": int,
     "process_count": int, "precision": {"model.precision", "model.dtype", "computed_in": what
     the convolutions and matmuls compute in here (models.computed_in)},
     "git": {"commit": 40-hex str or None, "dirty": bool or None,
     "changed": the paths with uncommitted changes, up to 20},
     "environment": `environment()`, the variables that change results or devices,
     "cpu": `cpu()`, the host's CPU model and vector instruction sets,
     "config": the resolved config as nested dicts of JSON values (anything else as str)}.
    "git" is None/None where git is missing or the code is not in a git checkout (installed).
  """
  versions = {name: _version(name) for name in PACKAGES}
  versions["python"] = python_platform.python_version()
  if placement is None:
    device, num_devices, process_count = jax.devices()[0], jax.device_count(), jax.process_count()
  else:
    device = placement.local_devices[0]
    num_devices, process_count = placement.num_devices, placement.process_count
  if hasattr(config, "copy_and_resolve_references"):
    config = config.copy_and_resolve_references().to_dict()
  commit, dirty = git_state(code_root())
  from nin_jax import models
  model = config["model"]
  return {"versions": versions, "platform": device.platform, "device_kind": device.device_kind,
          "num_devices": num_devices, "process_count": process_count,
          "precision": {"model.precision": model["precision"], "model.dtype": model["dtype"],
                        "computed_in": models.computed_in(model["precision"], model["dtype"],
                                                          device.platform)},
          "git": {"commit": commit, "dirty": dirty, "changed": changed_files(code_root())},
          "environment": environment(), "cpu": cpu(), "config": _json_value(config)}


def mismatches(records: dict) -> list[str]:
  """Warning lines for runs that came from different code, versions, hardware (platform, device
  kind, CPU) or environment settings.

  Args:
    records: {run name: a `record()` dict, or None for a run written before provenance existed}.

  Returns:
    One short line per difference, e.g. "runs came from 2 commits: 1a2b3c4 (gap/seed_0,
    gap/seed_1), 5d6e7f8 (fc/seed_0)"; a line naming the runs trained from a checkout with
    uncommitted changes; one naming the runs without a record. [] when all agree.
  """
  missing = sorted(name for name, rec in records.items() if not isinstance(rec, dict))
  present = {name: rec for name, rec in records.items() if isinstance(rec, dict)}
  lines = []
  commits = _group(present, lambda r: _short((r.get("git") or {}).get("commit")))
  if len(commits) > 1:
    lines.append(f"runs came from {len(commits)} commits: {_describe(commits)}")
  dirty = sorted(name for name, rec in present.items() if (rec.get("git") or {}).get("dirty"))
  if dirty:
    changed = sorted({path for name in dirty
                      for path in (present[name].get("git") or {}).get("changed") or []})
    lines.append(f"{_count(dirty)} trained from a checkout with uncommitted changes, so "
                 f"their code may differ from their commit: {_names(dirty)}"
                 + (f" (changed: {_names(changed, shown=5)})" if changed else ""))
  packages = sorted({p for rec in present.values() for p in (rec.get("versions") or {})})
  for package in packages:
    versions = _group(present, lambda r, p=package: (r.get("versions") or {}).get(p))
    if len(versions) > 1:
      lines.append(f"{package} versions differ: {_describe(versions)}")
  for field in ("platform", "device_kind", "cpu", "environment"):
    if not any(field in rec for rec in present.values()):
      continue  # records from before the field existed
    values = _group(present, lambda r, f=field: _setting(r.get(f)))
    if len(values) > 1:
      lines.append(f"{field} differs: {_describe(values)}")
  if missing:
    verb = "carries" if len(missing) == 1 else "carry"
    lines.append(f"{_count(missing)} {verb} no provenance (written by an older nin-jax): "
                 f"{_names(missing)}")
  return lines


def code_root() -> Path:
  """The folder that holds the `nin_jax` package: the repository root in a checkout."""
  return Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def git_state(root) -> tuple[str | None, bool | None]:
  """(commit, dirty) of the git checkout whose top level is `root`; (None, None) when git is
  missing, fails or times out, or `root` is not the top of a checkout (code installed into a
  venv that sits inside some other repository is not that repository's code). Cached per
  process: the checkout a run was launched from does not change under it.

  dirty: `git status --porcelain` lists anything (changed, staged, or untracked and not ignored).
  """
  top = _git(root, "rev-parse", "--show-toplevel")
  if top is None or Path(top).resolve() != Path(root).resolve():
    return None, None
  commit, status = _git(root, "rev-parse", "HEAD"), _git(root, "status", "--porcelain")
  if commit is None or status is None:
    return None, None
  return commit, bool(status)


@functools.lru_cache(maxsize=None)
def changed_files(root, most: int = 20) -> list[str]:
  """The paths `git status --porcelain` lists in `root` (the first `most`): what makes a
  checkout dirty, so that a reader can tell a README edit from a change to the code. [] when
  clean or not a checkout. Cached per process, as `git_state`."""
  if git_state.__wrapped__(root)[1] is not True:  # the checkout as it is now
    return []
  status = _git(root, "status", "--porcelain") or ""
  # "XY path" lines (the first one's leading space stripped): the path after the status letters
  return [line.split(maxsplit=1)[-1] for line in status.splitlines()[:most]]


def _git(root, *args) -> str | None:
  """`git args` run in `root`: its stripped stdout, or None on any failure."""
  env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_OVERRIDES}
  try:
    done = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=_GIT_TIMEOUT_S, check=False)
  except (OSError, subprocess.SubprocessError):  # no git, no such folder, timeout
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _json_value(value):
  """`value` with mappings as dicts with str keys, sequences as lists, and whatever JSON cannot
  hold exactly (numpy scalars, NaN, objects) as str."""
  if isinstance(value, dict) or hasattr(value, "items"):
    return {str(k): _json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_value(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def _short(commit: str | None) -> str:
  return commit[:7] if commit else "unknown"


def _setting(value):
  """A record's field as one comparable text: {"JAX_ENABLE_X64": "1"} -> 'JAX_ENABLE_X64=1'."""
  if isinstance(value, dict):
    return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
  return "unknown" if value is None else value


def _group(records: dict, key) -> dict:
  """{key(record): [run names]} over `records`."""
  groups = {}
  for name in sorted(records):
    groups.setdefault(key(records[name]), []).append(name)
  return groups


def _describe(groups: dict) -> str:
  """'v1 (a, b), v2 (c)', the largest group first."""
  ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), str(item[0])))
  return ", ".join(f"{value} ({_names(names)})" for value, names in ordered)


def _names(names: list, shown: int = 3) -> str:
  if len(names) <= shown + 1:
    return ", ".join(names)
  return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def _count(names: list) -> str:
  return "1 run" if len(names) == 1 else f"{len(names)} runs"


# Looked up as the code is imported (at launch), not when a run ends: a `git pull` during a long
# sweep must not relabel the runs that the launched code trains.
git_state(code_root())
changed_files(code_root())
