"""The config string of experiments/default.py: variants that compose and key=value fields."""
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from conftest import REPO, run_launch
from experiments import default
from nin_jax import config_string, checks
from nin_jax.errors import ConfigError


def test_variants_and_fields_compose_with_the_fields_typed_and_set_last():
  config = default.get_config("num_epochs=5,digits,model.head=fc,optimizer.learning_rate=0.01,"
                              "optimizer.decay_epochs=(100,150),model.num_1x1=3,"
                              "model.relu_on_class_maps=false,model.fc_hidden=(64,)")
  reference = default.get_config("digits")
  reference.num_epochs = 5.0  # set after `digits`, though written before it
  reference.model.head = "fc"
  reference.optimizer.learning_rate = 0.01
  reference.optimizer.decay_epochs = (100, 150)
  reference.model.num_1x1 = 3  # a placeholder(int): takes its declared type
  reference.model.relu_on_class_maps = False
  reference.model.fc_hidden = (64,)
  assert config.to_dict() == reference.to_dict()
  assert isinstance(config.num_epochs, float) and isinstance(config.model.num_1x1, int)
  assert default.get_config("").to_dict() == default.get_config().to_dict()
  augment = default.get_config("augment")
  assert (augment.augment.crop_padding, augment.augment.flip) == (4, True)


def test_variants_compose_whatever_their_order():
  # augment follows the dataset: 1 pixel of the digits' 8, and no flips (a mirrored 2 is no 2)
  for variant in ("digits,augment", "augment,digits"):
    config = default.get_config(variant)
    assert config.dataset == "digits" and config.model.preset == "nin_digits"
    assert (config.augment.crop_padding, config.augment.flip) == (1, False)
  assert default.get_config("digits,holdout").validation_examples == 288
  both = default.get_config("augment,holdout")
  assert both.validation_examples == 10_000 and both.augment.flip
  assert default.get_config("digits,augment,augment.flip=true").augment.flip


def test_parse_variant_keeps_commas_inside_brackets():
  assert config_string.parse_variant("digits, optimizer.decay_epochs=(100,150) ,a.b=[1,(2,3)]") == (
      ["digits"], {"optimizer.decay_epochs": "(100,150)", "a.b": "[1,(2,3)]"})
  assert config_string.parse_variant("") == ([], {})


@pytest.mark.parametrize("variant, message", [
    ("digits,nope",
     r"^unknown variant 'nope'; known: augment \(.*\), digits \(.*\), holdout \(.*\); comb"),
    ("digits,model.haed=fc", r"^the config has no field 'model.haed'; did you mean model.head=fc"),
    ("digits,num_epochs=soon", r"^num_epochs='soon' in the config string is not a number"),
    ("model.num_1x1=2.5", r"^model.num_1x1='2.5' in the config string is not an integer"),
    ("model.relu_on_class_maps=yes", r"is not true or false"),
    ("digits,,augment", r"^the config string 'digits,,augment' has an empty item"),
    ("digits,", r"has an empty item \(two commas in a row, or one at an end\); remove it"),
    ("=5", r"has an empty item \('=5' names no field\)"),
    ("digits,num_epochs=5,num_epochs=6", r"sets num_epochs twice \('5' and '6'\); keep one"),
    ("digits,digits", r"names the variant 'digits' twice; keep one"),
    ("optimizer.decay_epochs=(1,2", r"has an unclosed '\(' or '\['"),
    ("synthetic=3", r"^synthetic is a section of the config, not a field; set one of its fields"),
])
def test_a_bad_config_string_is_one_line_naming_the_problem(variant, message):
  with pytest.raises(ConfigError, match=message) as error:
    default.get_config(variant)
  assert "\n" not in str(error.value)


def test_with_overrides_sets_fields_after_a_derived_configs_own_changes():
  @config_string.with_overrides
  def get_config(variant=""):
    assert variant == "digits"  # only the named variants reach the config file
    config = default.get_config(variant)
    config.eval_every_steps = 110
    config.ablation = ml_collections.ConfigDict(dict(num_seeds=3))
    return config

  config = get_config("digits,eval_every_steps=55,ablation.num_seeds=10")
  assert (config.dataset, config.eval_every_steps, config.ablation.num_seeds) == ("digits", 55, 10)


def test_config_flags_apply_after_the_config_string():
  """As launch.py defines --config (lock_config=True), in a FlagValues of its own."""
  argv = ["launch.py", f"--config={REPO}/experiments/default.py:digits,num_epochs=5,model.head=fc",
          "--config.num_epochs=3"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert (config.dataset, config.num_epochs, config.model.head) == ("digits", 3.0, "fc")


def test_launch_reports_a_bad_config_string_in_one_line(tmp_path):
  result = run_launch("--config=experiments/default.py:digits,nope", f"--workdir={tmp_path / 'w'}",
                      devices=1, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: unknown variant 'nope'; known: "), lines
  assert not (tmp_path / "w").exists()


def test_a_dataset_given_as_a_field_is_set_before_the_variants_that_depend_on_it():
  from experiments import ablate_head
  mnist = default.get_config("augment,dataset=mnist")
  assert (mnist.dataset, mnist.augment.crop_padding, mnist.augment.flip) == ("mnist", 3, False)
  assert default.get_config("holdout,dataset=digits").validation_examples == 288
  # an ablation file sees the dataset too (its report shows the paper's CIFAR-10 figures beside
  # a cifar10 sweep only: tests/report_test.py)
  assert ablate_head.get_config("dataset=cifar100").dataset == "cifar100"


# Every field against the values people type ----------------------------------------------------

# Negative, zero, huge (past int32, then far past), the wrong type, unset, not finite, a bool for
# a number, a fraction for a count; and tuples of them for the tuple fields.
TYPED_VALUES = (-1, 0, 2**31, 10**12, "x", None, float("nan"), float("inf"), True, 0.5)
TYPED_TUPLES = ((), (-1,), ("x",), (10**12,), None)
# What validate() takes of them, field by field (of the digits config); every other value is one
# ConfigError line naming the field. Each of these was trained for one epoch of the digits by
# hand (the closing note of issue 22): it trains, or stops with its own one line (a learning rate
# of 10**12 diverges: a result; 2**31 epochs are more steps than a run counts).
ACCEPTED = {
    "augment.crop_padding": (0,), "augment.flip": (True,), "data_dir": ("x", None),
    "data_shards": (0,), "download": (True,), "eval_every_steps": (0,), "microbatch_size": (0,),
    "model.dropout": (0, None, 0.5), "model.fc_hidden": ((),),
    "model.init_stddev": (2**31, 10**12, 0.5), "model.num_1x1": (0, None),
    "model.relu_on_class_maps": (True,), "num_epochs": (2**31, 10**12, 0.5),
    "optimizer.bias_lr_multiplier": (0, 2**31, 10**12, 0.5),
    "optimizer.classifier_lr_multiplier": (0, 2**31, 10**12, 0.5),
    "optimizer.decay_epochs": ((),), "optimizer.decay_factor": (0.5,),
    "optimizer.grad_clip_norm": (0, 2**31, 10**12, 0.5),
    "optimizer.learning_rate": (2**31, 10**12, 0.5), "optimizer.momentum": (0, 0.5),
    "optimizer.nesterov": (True,), "optimizer.warmup_epochs": (0, 0.5),
    "optimizer.label_smoothing": (0, 0.5),
    "optimizer.weight_decay": (0, 2**31, 10**12, 0.5), "seed": (0,),
    "streaming.eval_crop_fraction": (0.5,), "streaming.min_area": (0.5,),
    "stuck_loss_steps": (0,), "stuck_loss_tolerance": (0, 0.5), "validation_examples": (0,),
}


def _with_field(field, value, **more):
  """The digits config with `field` set to `value` (and each of `more`, its dots written __), as a
  config file may write them: a ConfigDict built from a dict checks no types."""
  values = default.get_config("digits").to_dict()
  for key, new in {field: value, **{k.replace("__", "."): v for k, v in more.items()}}.items():
    *sections, name = key.split(".")
    node = values
    for section in sections:
      node = node[section]
    node[name] = new
  return ml_collections.ConfigDict(values)


def test_every_field_takes_what_it_can_and_refuses_the_rest_in_one_line():
  # Unchecked, a string or None reaches a comparison (TypeError), --config.seed=-1 numpy,
  # model.num_1x1=10**6 sits in building the model for over 10 minutes (measured), and
  # crop_padding=10**6 trains on blank crops.
  digits = default.get_config("digits")
  accepted = {}
  for field in config_string.field_paths(digits):
    current = config_path.get_value(field, digits)
    if isinstance(current, ml_collections.ConfigDict):
      continue
    for value in TYPED_TUPLES if isinstance(current, tuple) else TYPED_VALUES:
      try:  # any other exception fails the test, with its traceback
        checks.validate(_with_field(field, value), 1)
      except ConfigError as e:
        assert f"config.{field}" in str(e) and "\n" not in str(e), (field, value, str(e))
      else:
        accepted.setdefault(field, []).append(value)
  assert {field: tuple(values) for field, values in accepted.items()} == ACCEPTED


def test_a_field_nin_jax_does_not_have_or_a_replaced_section_is_one_line():
  typo = _with_field("optimizer.learning_rte", 0.1)  # would train at the default rate, silently
  with pytest.raises(ConfigError, match=r"optimizer.learning_rte is not a nin-jax config field; "
                                        r"did you mean optimizer.learning_rate\?"):
    checks.validate(typo, 1)
  with pytest.raises(ConfigError, match=r"--config.model='nin' replaces a section"):
    checks.validate(_with_field("model", "nin"), 1)
  # before: RESOURCE_EXHAUSTED allocating 614 GB, as "a bug in nin-jax", after compiling
  with pytest.raises(ConfigError, match=r"has 154,700,111,946 parameters: 1856.4 GB as float32 "
                                        r"weights, momentum and gradients, more than the"):
    checks.validate(_with_field("model.head", "fc", model__fc_hidden=(10**8,)), 1)
  from experiments import ablate_head
  for key in ("num_seeds", "devices_per_run", "runs_at_once"):
    for value in (-1, "x", None, 0.5, True, 2**31):
      config = ablate_head.get_config("digits")
      with config.ablation.ignore_type():
        config.ablation[key] = value
      with pytest.raises(ConfigError, match=rf"--config.ablation.{key}="):
        checks.validate_ablation(config)
  # numpy scalars are numbers too, in tuples as well (tuple(np.array(...)) makes them)
  checks.validate(_with_field("batch_size", np.int64(64), optimizer__learning_rate=np.float32(
      0.05), model__head="fc", model__fc_hidden=(np.int64(64),), optimizer__schedule="step",
      optimizer__decay_epochs=(np.int64(30), np.float32(50.0))), 1)
  # a file named but not used: it trained on the digits and ignored the file
  with pytest.raises(ConfigError, match=r"--config.npz_path=/data/x.npz is set but "
                                        r"--config.dataset=digits: add --config.dataset=npz"):
    checks.validate(_with_field("npz_path", "/data/x.npz"), 1)


def test_config_model_is_the_models_own_fields_and_the_checks_take_its_tables():
  """An axis declared in models.py is a config field, set from the config string and checked
  against its table, with no other file to edit."""
  import dataclasses
  from nin_jax import models
  fields = {f.name for f in dataclasses.fields(models.NIN)} - {"parent", "name"}
  # a field named as a Module's method (init, apply, ...) would replace it: model.init breaks
  import flax.linen as nn
  assert not fields & set(dir(nn.Module)), fields & set(dir(nn.Module))
  config = default.get_config("digits")
  assert set(config.model) == fields - {"num_classes", "axis_name"}
  model = models.NIN(num_classes=10, **config.model)
  assert (model.preset, model.head, model.num_1x1) == ("nin_digits", "gap", None)
  for field, table in models.CONFIG_CHOICES.items():
    assert config.model[field] is None or config.model[field] in table, field
    bad = default.get_config("digits")
    bad.model[field] = "no_such_" + field
    with pytest.raises(ConfigError, match=rf"^--config.model.{field}='no_such_{field}' is not one "
                                          rf"of \[{', '.join(repr(k) for k in table)}\]$"):
      checks.validate(bad, 4)
  # set from the config string, parsed to the field's type (a placeholder's declared one)
  parsed = default.get_config("digits,model.num_1x1=1,model.fc_hidden=(64,),model.head=fc")
  assert (parsed.model.num_1x1, parsed.model.fc_hidden, parsed.model.head) == (1, (64,), "fc")


def test_none_in_the_config_string_unsets_a_field_and_is_refused_where_a_field_needs_a_value():
  config = default.get_config("digits,model.num_1x1=None")
  assert config.model.num_1x1 is None
  checks.validate(config, 4)
  with pytest.raises(ConfigError, match=r"^--config.num_epochs=None must be a finite number$"):
    checks.validate(default.get_config("digits,num_epochs=None"), 4)


def test_a_model_rebuilt_from_a_runs_json_config_hashes_as_the_original():
  import json
  from nin_jax import models
  config = default.get_config("digits,model.head=fc,model.fc_hidden=(64,)")
  saved = ml_collections.ConfigDict(json.loads(config.to_json()))  # fc_hidden as a list
  assert saved.model.fc_hidden == [64]
  rebuilt = models.NIN(num_classes=10, **saved.model)
  assert rebuilt.fc_hidden == (64,)
  assert hash(rebuilt) == hash(models.NIN(num_classes=10, **config.model))


def test_the_modern_recipe_is_fields_whose_defaults_are_the_papers():
  from experiments import ablate_head
  paper, modern = default.get_config("digits"), default.get_config("digits,modern")
  changed = {key for key in config_string.field_paths(paper)
             if not isinstance(config_string.get(paper, key), ml_collections.ConfigDict)
             and config_string.get(paper, key) != config_string.get(modern, key)}
  assert changed == {"model.norm", "model.initializer", "model.dtype", "optimizer.nesterov",
                     "optimizer.learning_rate", "optimizer.bias_lr_multiplier",
                     "optimizer.classifier_lr_multiplier", "optimizer.label_smoothing",
                     "optimizer.warmup_epochs"}
  assert (paper.model.norm, paper.model.initializer, paper.optimizer.label_smoothing,
          paper.optimizer.nesterov) == ("none", "normal", 0.0, False)  # the paper's
  cifar = default.get_config("modern")
  assert (cifar.batch_size, cifar.num_epochs, cifar.optimizer.weight_decay, cifar.preprocess,
          tuple(cifar.augment.values())) == (128, 200.0, 5e-4, "mean_std", (4, True))
  checks.validate(modern, 4)
  arms = dict(ablate_head.get_config("digits,modern").ablation.arms)
  assert {dict(fields)["optimizer.classifier_lr_multiplier"] for fields in arms.values()} == {1.0}


@pytest.mark.parametrize("name", ["ablate_head", "ablate_depth", "ablate_head_depth"])
def test_every_ablation_combines_with_the_modern_recipe(name):
  import importlib
  from experiments import ablate_head
  module = importlib.import_module(f"experiments.{name}")
  for variant in ("modern", "digits,modern"):
    config = module.get_config(variant)
    checks.validate(config, 4)
    assert (config.model.norm, config.optimizer.schedule, config.model.dtype) == (
        "batch", "cosine", "native")
    for _, fields in config.ablation.arms:  # every arm trains every layer at one rate
      assert dict(fields).get("optimizer.classifier_lr_multiplier", 1.0) == 1.0
  # with both_fc_rates, the slow-classifier FC arms keep their 0.1x: what they are for
  rates = {name: dict(fields)["optimizer.classifier_lr_multiplier"] for name, fields in
           ablate_head.get_config("modern,both_fc_rates").ablation.arms}
  assert rates == {"gap": 1.0, "fc": 1.0, "fc_dropout": 1.0, "fc_slow_classifier": 0.1,
                   "fc_dropout_slow_classifier": 0.1}
