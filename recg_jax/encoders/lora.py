"""Merges a PEFT LoRA adapter folder into HF-named base weights, once, at load time.

For each adapted linear layer W [out, in]: W + scaling * B @ A, with A = lora_A [r, in], B = lora_B [out, r]
and scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), honouring PEFT's per-module
`rank_pattern` / `alpha_pattern`. Embedding adapters (lora_embedding_A [r, vocab], lora_embedding_B [dim, r])
add scaling * (B @ A).T. Weights the adapter saved in full (an embedding's `base_layer`, trained biases,
`modules_to_save`) replace the base ones. DoRA and other PEFT methods are rejected with a clear error.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Mapping

import numpy as np

from recg_jax import errors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_LORA_RE = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<param>weight|bias))?$"
)


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
  """PEFT's get_pattern_key: a pattern applies when the module name ends with it (at a dot boundary)."""
  for key, value in patterns.items():
    if re.match(rf"(.*\.)?({key})$", module):
      return value
  return default


def _resolve(name: str, tensors: Mapping[str, np.ndarray]) -> str | None:
  """The key of `tensors` that a PEFT module path refers to, allowing for a `model.` prefix either way."""
  candidates = [name]
  if name.startswith("model."):
    candidates.append(name[len("model.") :])
  else:
    candidates.append("model." + name)
  for candidate in candidates:
    if candidate in tensors:
      return candidate
  return None


def read_adapter(adapter_dir) -> tuple[dict, dict[str, np.ndarray]]:
  """(adapter_config dict, adapter tensors) with clear errors for what we cannot merge."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  folder = pathlib.Path(adapter_dir)
  config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
  if not config_path.exists():
    raise FileNotFoundError(f"LoRA adapter: {config_path} not found (encoder.lora must be a PEFT folder)")
  if not weights_path.exists():
    extra = (
        " (adapter_model.bin is not supported: re-save with safe_serialization=True)"
        if (folder / "adapter_model.bin").exists()
        else ""
    )
    raise FileNotFoundError(f"LoRA adapter: {weights_path} not found{extra}")
  config = json.loads(config_path.read_text())
  if config.get("peft_type", "LORA") != "LORA":
    raise errors.ConfigError(
        f"{config_path}: peft_type={config.get('peft_type')!r}; only LORA adapters can be merged"
    )
  if config.get("use_dora"):
    raise ValueError(f"{config_path}: use_dora=true (DoRA) is not supported")
  if config.get("fan_in_fan_out"):
    raise ValueError(f"{config_path}: fan_in_fan_out=true (GPT-2 Conv1D layers) is not supported")
  return config, load_file(str(weights_path))


def merge_lora(tensors: Mapping[str, np.ndarray], adapter_dir) -> dict[str, np.ndarray]:
  """Returns a new dict: `tensors` with the adapter in `adapter_dir` merged in (float32 where changed).

  Raises:
    ValueError: when an adapter weight targets a tensor that `tensors` lacks, or shapes disagree.
  """
  config, adapter = read_adapter(adapter_dir)
  r_default = config.get("r", 8)
  alpha_default = config.get("lora_alpha", r_default)
  rank_pattern = config.get("rank_pattern") or {}
  alpha_pattern = config.get("alpha_pattern") or {}
  use_rslora = bool(config.get("use_rslora", False))
  out = dict(tensors)
  pairs: dict[str, dict[str, np.ndarray]] = {}
  full: dict[str, np.ndarray] = {}
  where = pathlib.Path(adapter_dir) / ADAPTER_WEIGHTS
  for key, value in adapter.items():
    name = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
    m = _LORA_RE.match(name)
    if m:
      pairs.setdefault(m["module"], {})[m["kind"] + ("." + m["param"] if m["param"] else "")] = value
    else:
      # Full weights saved with the adapter: strip PEFT's wrappers to find the base tensor's name.
      base = re.sub(r"\.base_layer\.", ".", name)
      base = re.sub(r"\.modules_to_save\.[^.]+\.", ".", base)
      full[base] = value

  for name, value in full.items():
    target = _resolve(name, out)
    if target is None:
      if name.startswith("lm_head.") or ".lm_head." in name:
        continue  # the encoder drops the LM head anyway
      raise ValueError(f"{where}: {name!r} replaces a weight the base checkpoint lacks")
    if np.shape(out[target]) != value.shape:
      raise ValueError(
          f"{where}: {name!r} has shape {value.shape}, base {target!r} has {np.shape(out[target])}"
      )
    out[target] = value

  for module, parts in sorted(pairs.items()):
    if "lm_head" in module.split("."):
      continue
    target = _resolve(module + ".weight", out)
    if target is None:
      raise ValueError(f"{where}: LoRA module {module!r} targets no tensor of the base checkpoint")
    base = np.asarray(out[target], np.float32)
    if "lora_A.weight" in parts and "lora_B.weight" in parts:
      a, b = parts["lora_A.weight"].astype(np.float32), parts["lora_B.weight"].astype(np.float32)
      delta = b @ a
    elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
      a, b = parts["lora_embedding_A"].astype(np.float32), parts["lora_embedding_B"].astype(np.float32)
      delta = (b @ a).T
    else:
      raise ValueError(f"{where}: LoRA module {module!r} lacks its A/B pair (found {sorted(parts)})")
    rank = a.shape[0]
    expected_rank = _pattern_value(rank_pattern, module, r_default)
    if rank != expected_rank:
      raise errors.ConfigError(
          f"{where}: {module!r} has rank {rank}, adapter_config.json says {expected_rank}"
      )
    alpha = _pattern_value(alpha_pattern, module, alpha_default)
    scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
    if delta.shape != base.shape:
      raise ValueError(
          f"{where}: LoRA delta for {module!r} has shape {delta.shape}, base {target!r} has {base.shape}"
      )
    out[target] = base + np.float32(scaling) * delta
    if "lora_B.bias" in parts:  # lora_bias=true: B carries a bias, scaled like the product
      bias_key = _resolve(module + ".bias", out)
      if bias_key is None:
        raise ValueError(f"{where}: LoRA module {module!r} has a bias but the base layer has none")
      out[bias_key] = np.asarray(out[bias_key], np.float32) + np.float32(scaling) * parts["lora_B.bias"]
  return out
