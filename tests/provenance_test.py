"""A run's provenance record, and the warnings when runs to be compared came from different code."""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import pytest

from nin_jax import provenance
from tests.conftest import REPO

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c",
       "commit.gpgsign=false"]


def test_record_in_this_checkout():
  config = ml_collections.ConfigDict({"lr": 0.1, "shape": (8, 8), "tag": None,
                                      "model": {"precision": "float32", "dtype": "float32"}})
  config.lr_copy = config.get_ref("lr")  # a reference, resolved in the record
  record = provenance.record(config)
  json.dumps(record, allow_nan=False)  # serialisable as strict JSON
  assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"])
  assert isinstance(record["git"]["dirty"], bool)
  for package in provenance.PACKAGES:
    assert record["versions"][package] == importlib.metadata.version(package)
  assert record["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
  assert (record["platform"], record["device_kind"], record["num_devices"]) == ("cpu", "cpu", 4)
  assert record["process_count"] == 1
  assert record["config"] == {"lr": 0.1, "lr_copy": 0.1, "shape": [8, 8], "tag": None,
                              "model": {"precision": "float32", "dtype": "float32"}}


def test_record_of_code_outside_a_checkout(tmp_path):
  """Copied (as an install would) to a folder outside any git checkout: no commit, no error."""
  site = tmp_path / "site"
  shutil.copytree(REPO / "nin_jax", site / "nin_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, "-c", "import json; from nin_jax import provenance; "
       "r = provenance.record({'model': {'precision': 'float32', 'dtype': 'float32'}}); "
       "print(json.dumps([provenance.__file__, r['git']]))"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True)
  path, git = json.loads(done.stdout.strip().splitlines()[-1])
  assert path.startswith(str(site))
  assert git == {"commit": None, "dirty": None, "changed": []}


def test_git_state_in_a_folder_inside_another_checkout_or_without_git(tmp_path, monkeypatch):
  subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
  (tmp_path / "venv").mkdir()
  # a package installed into a venv that lies inside some checkout is not that checkout's code
  assert provenance.git_state.__wrapped__(tmp_path / "venv") == (None, None)
  monkeypatch.setenv("PATH", str(tmp_path / "no_such_bin"))
  assert provenance.git_state.__wrapped__(REPO) == (None, None)


def test_git_state_turns_dirty_after_an_edit_but_not_for_ignored_files(tmp_path):
  run = lambda *args: subprocess.run([*GIT, *args], cwd=tmp_path, check=True,  # noqa: E731
                                     capture_output=True)
  run("init", "-q")
  (tmp_path / "model.py").write_text("x = 1\n")
  (tmp_path / ".gitignore").write_text("outputs/\n")
  run("add", ".")
  run("commit", "-q", "-m", "first")
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                        text=True, check=True).stdout.strip()
  state = provenance.git_state.__wrapped__
  (tmp_path / "outputs").mkdir()
  (tmp_path / "outputs" / "metrics.jsonl").write_text("{}\n")
  assert state(tmp_path) == (head, False)
  assert provenance.changed_files.__wrapped__(tmp_path) == []
  (tmp_path / "model.py").write_text("x = 2\n")
  assert state(tmp_path) == (head, True)
  # what made it dirty, so that a README edit can be told from a change to the code
  assert provenance.changed_files.__wrapped__(tmp_path) == ["model.py"]


def _record(commit="1a2b3c4" + "0" * 33, jax_version="0.10.2", dirty=False, device_kind="cpu"):
  return {"versions": {"jax": jax_version, "flax": "0.12.8"}, "platform": "cpu",
          "device_kind": device_kind, "git": {"commit": commit, "dirty": dirty}}


def test_mismatches_of_agreeing_runs_is_empty():
  assert provenance.mismatches({"gap/seed_0": _record(), "gap/seed_1": _record()}) == []
  assert provenance.mismatches({}) == []


def test_mismatches_names_commits_and_their_runs():
  other = "5d6e7f8" + "f" * 33
  lines = provenance.mismatches({"gap/seed_0": _record(), "gap/seed_1": _record(),
                                 "fc/seed_0": _record(commit=other)})
  assert lines == ["runs came from 2 commits: 1a2b3c4 (gap/seed_0, gap/seed_1), "
                   "5d6e7f8 (fc/seed_0)"]


def test_mismatches_abbreviates_long_lists_of_runs():
  records = {f"gap/seed_{i}": _record() for i in range(6)}
  records["fc/seed_0"] = _record(commit="5d6e7f8" + "f" * 33)
  (line,) = provenance.mismatches(records)
  assert "1a2b3c4 (gap/seed_0, gap/seed_1, gap/seed_2 and 3 more)" in line


def test_mismatches_names_package_versions_dirty_trees_and_hardware():
  lines = provenance.mismatches({"gap/seed_0": _record(dirty=True),
                                 "fc/seed_0": _record(jax_version="0.9.0", device_kind="TPU v4")})
  assert len(lines) == 3, lines
  assert "1 run trained from a checkout with uncommitted changes" in lines[0]
  assert lines[0].endswith(": gap/seed_0")
  edited = _record(dirty=True)
  edited["git"]["changed"] = ["README.md"]
  assert provenance.mismatches({"gap/seed_0": edited})[0].endswith(
      ": gap/seed_0 (changed: README.md)")
  assert re.fullmatch(r"jax versions differ: 0\.10\.2 \(gap/seed_0\), 0\.9\.0 \(fc/seed_0\)|"
                      r"jax versions differ: 0\.9\.0 \(fc/seed_0\), 0\.10\.2 \(gap/seed_0\)",
                      lines[1]), lines[1]
  assert "device_kind differs" in lines[2] and "TPU v4 (fc/seed_0)" in lines[2]


def test_mismatches_names_environment_settings_and_cpus_that_differ():
  # JAX_ENABLE_X64=1 changed the digits' test accuracy (issue 22); AVX2 and AVX-512 hosts run
  # other XLA code. A sweep resumed elsewhere says so in its report.
  x64, avx512 = _record(), _record()
  x64["environment"], avx512["environment"] = {"JAX_ENABLE_X64": "1"}, {}
  x64["cpu"], avx512["cpu"] = "AMD EPYC (avx2)", "AMD EPYC (avx2, avx512f, avx512_bf16)"
  assert provenance.mismatches({"gap/seed_0": x64, "fc/seed_0": avx512}) == [
      "cpu differs: AMD EPYC (avx2) (gap/seed_0), AMD EPYC (avx2, avx512f, avx512_bf16) "
      "(fc/seed_0)",
      "environment differs: JAX_ENABLE_X64=1 (gap/seed_0), none (fc/seed_0)"]
  assert provenance.cpu() is None or "(" in provenance.cpu()


def test_mismatches_names_runs_without_a_record():
  lines = provenance.mismatches({"gap/seed_0": _record(), "old/seed_0": None})
  assert lines == ["1 run carries no provenance (written by an older nin-jax): old/seed_0"]


@pytest.mark.parametrize("broken", [{}, {"git": None, "versions": None}])
def test_mismatches_tolerates_partial_records(broken):
  lines = provenance.mismatches({"a": _record(), "b": broken})
  assert any("unknown (b)" in line for line in lines)
