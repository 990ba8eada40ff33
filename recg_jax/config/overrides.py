"""Changing a config: `section.field` overrides, named presets, big_vision-style config arguments, and
configs recorded by earlier runs merged over today's defaults."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

from recg_jax import errors
from recg_jax.config import default
from recg_jax.config import presets as presets_lib

# Short names accepted in a config argument (`--config=configs/x.py:source=Office,targets=A+B`).
ARG_FIELDS = {
    "source": ("data", "source"),
    "targets": ("data", "targets"),
    "auxiliary": ("data", "auxiliary"),
    "backbone": ("model", "backbone"),
    "variant": ("model", "variant"),
    "mode": ("experiment", "mode"),
    "seed": ("train", "seed"),
}


def override(
    config: ml_collections.ConfigDict, values: Mapping[str, Any], what: str = "override"
) -> ml_collections.ConfigDict:
  """Sets every 'section.field' (any depth: 'data.synthetic.num_items') of `values` in place; a name the
  config does not have is a KeyError that says `what` set it. Returns the config."""
  for path, value in values.items():
    *parents, field = path.split(".")
    node = config
    for name in parents:
      if name not in node:
        raise KeyError(f"{what} sets {path}, which the config does not have")
      node = node[name]
    if field not in node:
      raise KeyError(f"{what} sets {path}, which the config does not have")
    node[field] = value
  return config


def apply_preset(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Applies a named preset of recg_jax/config/presets.py (its section.field overrides)."""
  if name not in presets_lib.PRESETS:
    raise errors.ConfigError(
        f"config argument preset={name!r}: expected one of {sorted(presets_lib.PRESETS)}"
    )
  return override(config, presets_lib.PRESETS[name], what=f"preset {name!r}")


def apply_config_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies a big_vision-style argument `key=value,key=value`; lists are joined with '+'.
  `preset=<name>` applies a named preset."""
  if not arg:
    return config
  for item in arg.split(","):
    key, sep, value = item.partition("=")
    if sep and key == "preset":
      apply_preset(config, value)
      continue
    if not sep or key not in ARG_FIELDS:
      raise errors.ConfigError(
          f"config argument {item!r}: expected key=value with key in {sorted([*ARG_FIELDS, 'preset'])}"
      )
    section, field = ARG_FIELDS[key]
    current = config[section][field]
    if isinstance(current, tuple):
      parsed = tuple(v for v in value.split("+") if v)
    elif isinstance(current, int) and not isinstance(current, bool):
      parsed = int(value)
    else:
      parsed = value
    config[section][field] = parsed
  return config


def merged_over_defaults(recorded: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict:
  """A recorded config (results.json, done.json, a checkpoint's signature: plain JSON) merged over the
  default config's fields: a field added after the record was written gets its default, once, here."""
  out = copy.deepcopy(dict(defaults if defaults is not None else default.get_config().to_dict()))
  for key, value in recorded.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = merged_over_defaults(value, out[key])
    else:
      out[key] = value
  return out


def _typed(value: Any, like: Any) -> Any:
  """JSON's lists back into the tuples the config holds."""
  if isinstance(like, tuple) and isinstance(value, list):
    return tuple(value)
  return value


def from_record(recorded: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The ConfigDict of a config a run recorded (results.json's 'config'), over today's defaults."""
  config = default.get_config()
  merged = merged_over_defaults(recorded, config.to_dict())

  def fill(node: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
      if isinstance(value, Mapping) and isinstance(node.get(key), ml_collections.ConfigDict):
        fill(node[key], value)
      elif key in node:
        node[key] = _typed(value, node[key])
      else:  # a field this version no longer has: kept, so that comparisons still see it
        node[key] = value

  fill(config, merged)
  return config
