"""Mixed precision (model.dtype=bfloat16): what runs in float32, and the CPU's bfloat16 facts.
The numerics against float32 are in tests/models_test.py; the speed in `python -m
nin_jax.benchmark` (docs/mixed_precision.md)."""
import logging

import jax
import jax.numpy as jnp
import pytest

from nin_jax import checkpointing, models, placement, train
from nin_jax.errors import ConfigError
from nin_jax.placement import AXIS
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


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32"),
                                               (None, "float32")])
def test_native_dtype_is_bfloat16_only_where_it_is_native(native, expected):
  assert models.native_dtype(models.NATIVE, native) == expected
  assert models.native_dtype("float32", True) == "float32"  # an explicit dtype stays itself
  assert models.native_dtype("bfloat16", False) == "bfloat16"


@pytest.mark.parametrize("flags, expected", [((), "float32"), (("avx512_bf16",), "bfloat16")])
def test_a_native_dtype_run_records_the_dtype_it_computed_in(tmp_path, monkeypatch, flags,
                                                             expected):
  import json
  monkeypatch.setattr(placement, "cpu_bfloat16_flags", lambda cpuinfo=None: flags)
  config = digits_config(**{"model.dtype": models.NATIVE})
  config.num_epochs = 0.25
  summary = train.train_and_evaluate(config, tmp_path)
  assert config.model.dtype == models.NATIVE  # the caller's config is left as it was
  assert json.loads((tmp_path / "config.json").read_text())["model"]["dtype"] == expected
  precision = summary["provenance"]["precision"]
  assert precision["model.dtype"] == expected
  assert precision["computed_in"].startswith("bfloat16" if expected == "bfloat16" else "float32")
  # a relaunch with the same config string resolves it the same way and finds its run
  assert train.train_and_evaluate(config, tmp_path)["step"] == summary["step"]
  # on another kind of machine it resolves otherwise: another config, refused
  other = () if flags else ("avx512_bf16",)
  monkeypatch.setattr(placement, "cpu_bfloat16_flags", lambda cpuinfo=None: other)
  with pytest.raises(ConfigError, match="another config"):
    train.train_and_evaluate(config, tmp_path)


def _lowered_products(config):
  """[(operand dtype, precisions)] of every convolution and dot_general in the lowered train
  and eval steps of `config`'s model, as train.py maps them (shapes only: nothing compiled)."""
  import re
  from nin_jax.placement import Placement
  model = models.NIN(num_classes=10, axis_name=AXIS, **config.model)
  variables = jax.eval_shape(
      lambda key: model.init(key, jnp.zeros((1, 8, 8, 1)), train=False), jax.random.PRNGKey(0))
  tx = train.create_optimizer(config.optimizer, variables["params"], lambda step: 0.1)
  state = jax.eval_shape(lambda v: train.create_train_state(v, tx, jax.random.PRNGKey(1)),
                         variables)
  where = Placement.local(jax.devices()[:1])
  dataset = {"image": jax.ShapeDtypeStruct((100, 8, 8, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((100,), jnp.int32)}
  step = where.map(train.train_step, model=model, tx=tx, learning_rate_fn=lambda step: 0.1,
                   augment_config=config.augment)
  evaluate = where.map(train.eval_step, model=model)
  texts = [step.lower(state, dataset, {"index": jax.ShapeDtypeStruct((1, 64), jnp.int32)}),
           evaluate.lower(train.variables(state), dataset,
                          {"index": jax.ShapeDtypeStruct((1, 64), jnp.int32),
                           "mask": jax.ShapeDtypeStruct((1, 64), jnp.float32)})]
  products = []
  for text in (lowered.as_text() for lowered in texts):
    for line in re.findall(r"stablehlo\.(?:convolution|dot_general)[^\n]*", text):
      operand = re.search(r": \(tensor<[\dx]*x?(\w+)>", line).group(1)
      products.append((operand, tuple(re.findall(r"(?:precision |\[|, )(DEFAULT|HIGH|HIGHEST)\b",
                                                 line)) or ("DEFAULT",)))
  return products


def test_the_dtype_ablations_float32_arm_computes_in_float32_on_every_platform():
  """The lowered steps carry the precision the config asks for: XLA on TPU and GPU computes a
  HIGHEST float32 convolution in float32, while JAX's default there is bfloat16 passes or TF32
  (models.PRECISIONS). Checked on the lowered program, the same on every platform."""
  from experiments import ablate_dtype
  from nin_jax import sweep
  runs = {run.arm: run.config for run in sweep.expand(ablate_dtype.get_config("digits"))}
  for arm, dtype in (("float32", "f32"), ("bfloat16", "bf16")):
    products = _lowered_products(runs[arm])
    assert len(products) >= 9, products  # 3 layers' convolutions: forward, two backward, eval
    assert {p for p in products} == {(dtype, ("HIGHEST", "HIGHEST"))}, (arm, set(products))
  # the config decides it: JAX's default precision, where asked for
  runs["float32"].model.precision = "default"
  precisions = {p for _, p in _lowered_products(runs["float32"])}
  assert "HIGHEST" not in {name for p in precisions for name in p}, precisions


def test_provenance_names_the_precision_in_effect():
  from nin_jax import models, provenance
  record = provenance.record(digits_config())
  assert record["precision"] == {"model.precision": "float32", "model.dtype": "float32",
                                 "computed_in": models.computed_in("float32", "float32", "cpu")}
  assert models.computed_in("float32", "float32", "tpu") == "float32 (HIGHEST: 6 bfloat16 passes)"
  assert models.computed_in("default", "float32", "tpu") == "1 bfloat16 pass (DEFAULT)"
  assert models.computed_in("default", "bfloat16", "gpu").startswith("bfloat16 operands")
