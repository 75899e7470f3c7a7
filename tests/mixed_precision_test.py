"""Mixed precision (model.dtype=bfloat16): what runs in float32, and the CPU's bfloat16 facts.
The numerics against float32 are in tests/models_test.py; the speed in `python -m
nin_jax.benchmark` (README.md, "Mixed precision")."""
import logging

import jax
import jax.numpy as jnp
import pytest

from nin_jax import checkpointing, placement, train
from tests.conftest import digits_config

X86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 {extra} sse4_2\n"


@pytest.mark.parametrize("text, expected", [
    (X86.format(extra="avx512f avx512_bf16 amx_bf16"), ("avx512_bf16", "amx_bf16")),
    (X86.format(extra="avx512f avx512_vnni"), ()),  # AVX-512 without its bfloat16 extension
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", ("bf16",)),  # Arm (Graviton 3)
    ("processor\t: 0\nFeatures\t: fp asimd\n", ()),
    ("nothing here\n", None),
])
def test_cpu_bfloat16_flags_are_read_from_cpuinfo(tmp_path, text, expected):
  path = tmp_path / "cpuinfo"
  path.write_text(text)
  assert placement.cpu_bfloat16_flags(str(path)) == expected


def test_cpu_bfloat16_flags_unknown_without_cpuinfo(tmp_path):
  assert placement.cpu_bfloat16_flags(str(tmp_path / "absent")) is None
  assert placement.native_bfloat16("tpu") and placement.native_bfloat16("gpu")


@pytest.mark.parametrize("flags, warned", [((), True), (("avx512_bf16",), False)])
def test_bfloat16_run_keeps_float32_state_and_warns_on_emulating_cpus(
    tmp_path, monkeypatch, caplog, flags, warned):
  monkeypatch.setattr(placement, "cpu_bfloat16_flags", lambda cpuinfo=None: flags)
  config = digits_config(**{"model.dtype": "bfloat16"})
  config.num_epochs = 0.25
  with caplog.at_level(logging.WARNING):
    summary = train.train_and_evaluate(config, tmp_path)
  assert any("bfloat16 arithmetic" in r.getMessage() for r in caplog.records) == warned
  assert summary["step"] == 6 and 0 <= summary["test_accuracy"] <= 1
  # float32 master weights, as the checkpoint holds them
  params = checkpointing.restore_params(tmp_path)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
