"""Paths and files, the one way nin-jax treats them.

* `resolve`: every path a user hands over (a workdir, `data_dir`, `npz_path`, the folder given to
  the report or the CAM command) is made absolute once, at the entry point, as a command-line tool
  would: `~` expanded, relative to the directory the command was started in. `gs://` and other
  URLs pass unchanged. Orbax, for one, refuses relative checkpoint paths.
* `check_reachable`: a remote path (`gs://...`) is probed once, before any work, so that no
  network, no bucket or no credentials is one line instead of a TensorFlow traceback mid-run.
* `write_text` / `write_bytes`: atomic (a temporary file in the same folder, then a rename), so a
  run killed mid-write leaves the old file or the new one, never a cut one. Object stores write
  whole objects anyway; there the rename is a copy.
* `read_json`: a reader that meets an unreadable file (empty, cut, not JSON) gets None and one
  warning line that names it, so that one damaged file never stops a sweep.
* `write_failure`: an OSError while writing, as the one line a user needs (disk full above all).
"""
import errno
import json
import logging
import os
import re
import urllib.parse
import uuid

from etils import epath

from nin_jax.errors import ConfigError, StorageError, one_line  # noqa: F401 -- files.one_line


def tensorflow():
  """TensorFlow, which feeds the input pipeline only, hidden from accelerators: their memory is
  JAX's. The TFDS and streamed sources call it before they use TensorFlow, and
  files.check_reachable before a gs:// path is touched (etils.epath opens gs:// through
  TensorFlow), which launch.py does for every path it is given. A few other imports of TensorFlow
  (an npz on gs:// reached from Python, local_tfds) do not start its runtime, so this still hides
  the accelerators when it is called later.
  Runs on digits, npz or synthetic data on local disks never import it: the import alone took
  12 s of a launch on this project's 2-core machines (measured).
  tensorflow-cpu sees none anyway; a full tensorflow install would take GPU memory."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices, or has no such kind
    pass
  return tf


def is_remote(path) -> bool:
  return "://" in os.fspath(path)


def resolve(path):
  """`path` as an absolute local path (str) with `~` expanded, or unchanged if it is a URL
  (gs://...) or empty (None, ""): the form every later call can rely on.

  `file:///data/runs` (and `file:/data/runs`, `file://localhost/data/runs`) is the local
  /data/runs; `file://data/runs` names a host and is refused. Raises ConfigError for a path that
  begins or ends with whitespace or holds a control character, an unexpanded shell variable
  ($HOME, ${DATA}), a Windows path (C:\\..., backslashes), a path with glob characters
  (measured: a workdir named 'a[lr=0.1]' hides every process folder from Orbax's checkpoint
  merge), and for a URL with one slash (`gs:/bucket`, what pathlib makes of `gs://`), which would
  otherwise become a local folder named `gs:` and train to the local disk unnoticed.
  """
  if not path:
    return path
  path = os.fspath(path)
  if path != path.strip() or any(ord(c) < 32 for c in path):
    raise ConfigError(f"{path!r} begins or ends with a space, or holds a line end or a tab (a "
                      "copied line, a script with Windows line ends); remove it")
  variable = re.search(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", path)
  if variable:
    raise ConfigError(f"{path!r} holds {variable.group()}, a shell variable left unexpanded "
                      "(single quotes, or a config file); write the path out, or use double quotes")
  if re.match(r"^[A-Za-z]:[\\/]", path) or "\\" in path:
    raise ConfigError(f"{path!r} looks like a Windows path; here paths are written with '/' (on "
                      "WSL, C:\\Users is /mnt/c/Users)")
  if path.lower().startswith("file:"):  # a local path as a URL (RFC 8089): file:///x, file:/x
    url = urllib.parse.urlsplit(path)
    if url.netloc not in ("", "localhost"):
      raise ConfigError(f"{path!r} names the host {url.netloc!r}; a local path as a URL is "
                        f"file:///{url.netloc}{url.path} (three slashes), or write the path itself")
    path = urllib.parse.unquote(url.path) or "/"
  if any(c in path for c in "[]*?"):
    raise ConfigError(f"{path!r} holds a glob character ([, ], * or ?): Orbax and TFDS find their "
                      "files by glob patterns that include the folder, so a run there could not "
                      "find its own checkpoints; rename it, e.g. 'lr=0.1' instead of '[lr=0.1]'")
  if is_remote(path):
    return path
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", path):
    scheme, _, rest = path.partition(":")
    raise ConfigError(f"{path!r} looks like a URL with one slash; did you mean "
                      f"'{scheme}://{rest.lstrip('/')}'?")
  return os.path.abspath(os.path.expanduser(path))


def check_reachable(path, flag: str):
  """Raises ConfigError naming `flag` if the remote `path` cannot be reached (no-op if local).

  TensorFlow's GCS file system, under etils.epath, fails in about 10 s without a network
  (measured here); without the probe that failure came as a traceback from deep in a run.
  """
  if not path or not is_remote(path):
    return
  tensorflow()  # hidden from accelerators before epath imports it
  scheme, _, rest = os.fspath(path).partition("://")
  if scheme != "gs":  # TensorFlow's file systems, under etils.epath, read Google Cloud Storage
    raise ConfigError(f"{flag}={path}: nin-jax reads local paths and gs:// (Google Cloud "
                      f"Storage), not {scheme}://; copy the data to one of them")
  bucket = f"{scheme}://{rest.split('/')[0]}"
  causes = ("Likely causes: no network on this machine, no such bucket, or no credentials (run "
            "`gcloud auth application-default login`, or use the TPU VM's service account); or "
            "pass a local path")
  try:
    found = epath.Path(bucket).exists()
  except Exception as e:  # tf.errors.*, google.auth, fsspec: many types, one meaning here
    raise ConfigError(f"{flag}={path} cannot be reached ({type(e).__name__}: {one_line(e)}). "
                      f"{causes}") from None
  if not found:
    raise ConfigError(f"{flag}={path}: bucket {bucket} does not exist or is not visible to "
                      f"these credentials. {causes}")


def write_failure(what: str, path, error: BaseException) -> StorageError:
  """The one-line error for a failed write of `what` (e.g. 'checkpoint step 40') to `path`."""
  text = one_line(error, limit=None)
  if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text or (
      "RESOURCE_EXHAUSTED" in text and "os_error_code='28'" in text):
    cause = "the disk is full (No space left on device)"
  else:
    cause = f"{type(error).__name__}: {text[:300]}"
  return StorageError(f"writing {what} to {path} failed: {cause}")


def _write(path, data: bytes):
  path = epath.Path(path)
  temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    temporary.write_bytes(data)
    temporary.replace(path)
  except OSError as e:
    try:
      temporary.unlink(missing_ok=True)
    except OSError:
      pass
    raise write_failure(path.name, path.parent, e) from None


def write_text(path, text: str):
  """Writes `text` (UTF-8) to `path` atomically. Raises StorageError (one line) on failure."""
  _write(path, text.encode())


def write_bytes(path, data: bytes):
  """Writes `data` to `path` atomically. Raises StorageError (one line) on failure."""
  _write(path, data)


def write_json(path, value):
  write_text(path, json.dumps(value, indent=2))


def read_json(path, what: str = "file", *, warn: bool = True):
  """The JSON in `path`, or None if it is missing; None and one warning line if unreadable
  (`warn=False`: no line, for a caller that says what it does instead)."""
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError, UnicodeDecodeError) as e:
    if warn:
      logging.warning("Unreadable %s %s, treated as absent (%s: %s)", what, path,
                      type(e).__name__, one_line(e, 200))
    return None


def save_figure(figure, path, dpi: int):
  """A matplotlib figure as a PNG at `path`, written atomically like every other run file."""
  import io
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  write_bytes(path, buffer.getvalue())
