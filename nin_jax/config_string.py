"""The config string after a config file's colon, as in big_vision: named variants and dotted
key=value fields, 'digits,num_epochs=5,model.fc_hidden=(64,)'; and the one walker of dotted
field names that everything else uses (`get`, `set_fields`, `field_paths`), built on
ml_collections' config_path.

Commas inside (...) or [...] do not split; a value is parsed to the field's type with the same
parsers as --config.x=v flags (5 for an int, 0.01 for a float, true/false, (64,) for a tuple).
"""
import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags import config_path, tuple_parser

from nin_jax.errors import ConfigError, one_line


def section_of(module_class, skip=()) -> ml_collections.ConfigDict:
  """A config section holding every dataclass field of `module_class` (a flax Module) but those
  in `skip` and flax's own (parent, name), at its default; a field whose default is None
  becomes a placeholder of its declared type, so the config string and the checks know what it
  takes. models.NIN -> config.model: a field added to the model is a field of the config."""
  section = ml_collections.ConfigDict()
  for field in dataclasses.fields(module_class):
    if field.name in (*skip, "parent", "name") or field.default is dataclasses.MISSING:
      continue
    if field.default is None:
      declared = [t for t in typing.get_args(field.type) if t is not type(None)]
      section[field.name] = config_dict.placeholder(declared[0])
    else:
      section[field.name] = tuple(field.default) if isinstance(field.default, (list, tuple)) \
          else field.default
  return section


def parse_variant(variant: str) -> tuple[list[str], dict[str, str]]:
  """'digits,num_epochs=5,optimizer.decay_epochs=(100,150)' -> (['digits'], {'num_epochs': '5',
  'optimizer.decay_epochs': '(100,150)'}): the named variants in the order given, and the fields
  to set with their values still text (apply_overrides parses them). Commas inside (...) or [...]
  do not split. An empty item, a variant or a field given twice, or an unclosed bracket is a
  ConfigError; whether the names are known is for the config file to say."""
  items, depth, start = [], 0, 0
  for i, char in enumerate(variant):
    depth += (char in "([") - (char in ")]")
    if depth < 0:
      raise ConfigError(f"the config string {variant!r} has a {char!r} that closes nothing; "
                        "tuples are written (100,150)")
    if char == "," and depth == 0:
      items.append(variant[start:i])
      start = i + 1
  if depth:
    raise ConfigError(f"the config string {variant!r} has an unclosed '(' or '['; tuples are "
                      "written (100,150), inside quotes in the shell")
  items.append(variant[start:])
  if items == [""]:
    return [], {}
  names, overrides = [], {}
  for item in (item.strip() for item in items):
    key, is_field, value = item.partition("=")
    key = key.strip()
    if not key:
      raise ConfigError(f"the config string {variant!r} has an empty item" +
                        (f" ({item!r} names no field)" if item else
                         " (two commas in a row, or one at an end)") + "; remove it")
    if not is_field and key in names:
      raise ConfigError(f"the config string {variant!r} names the variant {key!r} twice; "
                        "keep one")
    if is_field and key in overrides:
      raise ConfigError(f"the config string {variant!r} sets {key} twice "
                        f"({overrides[key]!r} and {value.strip()!r}); keep one")
    if is_field:
      overrides[key] = value.strip()
    else:
      names.append(key)
  return names, overrides


def without(variant: str, *names: str) -> str:
  """The config string `variant` without the named variants `names`: for a config file that
  handles its own variants before it hands the rest to the config it builds on."""
  kept, overrides = parse_variant(variant)
  return ",".join([name for name in kept if name not in names] +
                  [f"{key}={value}" for key, value in overrides.items()])


def variant_names(variant: str) -> list[str]:
  """The named variants of a config string, in order: 'digits,num_epochs=5' -> ['digits']."""
  return parse_variant(variant)[0]


# The same parsers as for --config.x=v flags (ml_collections.config_flags), so both read alike.
_PARSERS = {bool: (flags.BooleanParser(), "true or false"),
            int: (flags.IntegerParser(), "an integer"),
            float: (flags.FloatParser(), "a number"),
            str: (flags.ArgumentParser(), "text"),
            tuple: (tuple_parser.TupleParser(), "a tuple such as (100,150)")}


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
  """Sets each dotted field of `overrides` (from parse_variant) on `config`, its text parsed to
  the field's type (a placeholder's declared type when unset), and returns `config`. A field
  that does not exist, a section, or text that is not of the field's type is a ConfigError."""
  fields = list(field_paths(config))
  for key, text in overrides.items():
    field_type = _field_type(config, key, fields, example=text)
    if field_type not in _PARSERS:  # a field set to None without config_dict.placeholder(type)
      raise ConfigError(f"{key} holds a {field_type.__name__}, which the config string cannot "
                        "set (only bool, int, float, str and tuple fields)")
    parser, expected = _PARSERS[field_type]
    if text == "None":  # unset (model.num_1x1=None: the preset's); the checks refuse it elsewhere
      config_path.set_value(key, config, None)
      continue
    try:
      value = parser.parse(text)
    except ValueError:
      raise ConfigError(f"{key}={text!r} in the config string is not {expected}, which {key} "
                        f"takes ({config_path.get_value(key, config)!r} now)") from None
    config_path.set_value(key, config, value)
  return config


def set_fields(config: ml_collections.ConfigDict, fields: Mapping[str, Any]):
  """`config` with `fields` ({dotted field: value}, such as {"model.head": "fc"}) set, in place:
  the one walker of dotted keys (ml_collections' config_path). Raises ConfigError (one line) for
  a field the config lacks, a section, or a value of another type than the field's."""
  known = list(field_paths(config))
  for key, value in fields.items():
    _field_type(config, key, known)
    try:
      config_path.set_value(key, config, value)
    except TypeError as e:  # ConfigDict's type safety: a str for an int field, say
      raise ConfigError(f"{key} cannot take {value!r}: {one_line(e, 150)}") from None
  return config


def get(config: ml_collections.ConfigDict, key: str):
  """The value of the dotted field `key` of `config` ("model.head")."""
  return config_path.get_value(key, config)


def _field_type(config, key: str, fields, example=None):
  """The type of the field `key` of `config`; a ConfigError when `config` has no such field
  (with the nearest one of `fields`) or `key` is a section."""
  if key not in fields:
    close = nearest_field(key, fields)
    raise ConfigError(f"the config has no field {key!r}" +
                      (f"; did you mean {close}{'' if example is None else '=' + example}?"
                       if close else "; set an existing field, for example num_epochs=5"))
  field_type = config_path.get_type(key, config)
  if issubclass(field_type, ml_collections.ConfigDict):
    raise ConfigError(f"{key} is a section of the config, not a field; set one of its fields, "
                      f"for example {first_field(key, fields)}=...")
  return field_type


def nearest_field(key: str, fields) -> str | None:
  """The field of `fields` (dotted names) that a misspelled `key` most likely meant, or None."""
  close = difflib.get_close_matches(key, list(fields), n=1)
  return close[0] if close else None


def first_field(section: str, fields) -> str:
  """A field of `section` ('model' -> 'model.preset'), as the example of what to set instead."""
  return next(path for path in fields if path.startswith(section + "."))


def field_paths(config, prefix=""):
  """Every dotted field and section name of `config`: 'model', 'model.head', ..."""
  for key, value in config.items():
    yield prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from field_paths(value, f"{prefix}{key}.")


def with_overrides(get_config):
  """For a config file built on experiments/default.py: `@config_string.with_overrides` above its
  `get_config(variant)` sets the config string's key=value fields on the config it returns,
  after its own changes (so `ablate_head.py:digits,ablation.num_seeds=10` works); its
  get_config sees only the named variants and a `dataset=` field, joined by commas
  ('digits', 'augment,dataset=cifar100')."""
  @functools.wraps(get_config)
  def get_config_with_overrides(variant: str = "") -> ml_collections.ConfigDict:
    names, overrides = parse_variant(variant)
    # the dataset goes in with the names: the variants, and the file's own choices (the paper's
    # numbers are CIFAR-10's), depend on it
    dataset = [f"dataset={overrides['dataset']}"] if "dataset" in overrides else []
    return apply_overrides(get_config(",".join(names + dataset)), overrides)
  return get_config_with_overrides
