"""Frozen text encoders: checkpoint loading and the `Encoder` bundle used by `embed.py`.

`load_encoder(config.encoder)` resolves `encoder.model` (see `sources.py`), reads config.json and the
weights, and dispatches on config.json's `model_type`: BERT-family encoders are built by `bert.py`,
Llama/Qwen2/Mistral decoders by `llama.py`; a `.gguf` file is read by `gguf_loader.py`; a LoRA adapter
(`encoder.lora`) is merged into the tensors by `lora.py` before the model is built.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from recg_jax import errors
from recg_jax.encoders import bert
from recg_jax.encoders import pooling as pooling_lib
from recg_jax.encoders import sources

DECODER_MODEL_TYPES = ("llama", "qwen2", "mistral")
SUPPORTED_MODEL_TYPES = bert.SUPPORTED_MODEL_TYPES + DECODER_MODEL_TYPES
UnsupportedModelError = bert.UnsupportedModelError
WeightShapeError = bert.WeightShapeError
CheckpointError = sources.CheckpointError


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
  """A loaded, frozen encoder.

  module.apply({'params': params}, input_ids_BxT, attention_mask_BxT) -> hidden_BxTxH.
  max_tokens: the longest input the position table allows (None: no limit known).
  """

  module: Any
  params: Any
  tokenizer: Any  # tokenizers.Tokenizer
  hidden_dim: int
  model_id: str
  weights_hash: str
  pooling: str
  normalize: bool
  family: str  # 'encoder' | 'decoder'
  model_type: str = ""
  max_tokens: int | None = None


def family_of(model_type: str, source: str = "config.json") -> str:
  if model_type in bert.SUPPORTED_MODEL_TYPES:
    return "encoder"
  if model_type in DECODER_MODEL_TYPES:
    return "decoder"
  raise UnsupportedModelError(
      f"{source}: model_type {model_type!r} is not supported; supported: "
      f"{', '.join(SUPPORTED_MODEL_TYPES)}"
  )


def model_id(encoder_config) -> str:
  revision = getattr(encoder_config, "revision", "") or ""
  return f"{encoder_config.model}@{revision}" if revision else str(encoder_config.model)


def identity(encoder_config) -> tuple[str, str]:
  """(model_id, weights_hash) without building the model: enough to decide whether a cache is stale."""
  ckpt = sources.resolve(encoder_config.model, encoder_config.revision)
  extra = sources.adapter_files(encoder_config.lora) if encoder_config.lora else ()
  return model_id(encoder_config), sources.weights_hash(ckpt.weight_files, extra)


def load_encoder(encoder_config) -> Encoder:
  """Builds the frozen encoder named by `encoder_config` (config.encoder)."""
  if encoder_config.pooling not in pooling_lib.POOLING_KINDS:
    raise errors.ConfigError(
        f"encoder.pooling={encoder_config.pooling!r}; expected one of "
        f"{', '.join(pooling_lib.POOLING_KINDS)}"
    )
  if str(encoder_config.dtype) not in ("float32", "bfloat16"):
    raise errors.ConfigError(f"encoder.dtype={encoder_config.dtype!r}; expected 'float32' or 'bfloat16'")
  ckpt = sources.resolve(encoder_config.model, encoder_config.revision)
  if ckpt.kind == "gguf":
    from recg_jax.encoders import gguf_loader  # pylint: disable=g-import-not-at-top

    hf_config, tensors, tokenizer = gguf_loader.load_gguf(ckpt.path)
    source = str(ckpt.path)
  else:
    hf_config = sources.read_config(ckpt.path)
    tensors = sources.read_tensors(ckpt.weight_files)
    tokenizer = sources.load_tokenizer(ckpt.tokenizer_file)
    source = str(ckpt.path)
  model_type = hf_config.get("model_type", "")
  family = family_of(model_type, f"{source}/config.json" if ckpt.kind != "gguf" else source)
  extra: tuple[pathlib.Path, ...] = ()
  if encoder_config.lora:
    from recg_jax.encoders import lora  # pylint: disable=g-import-not-at-top

    extra = sources.adapter_files(encoder_config.lora)
    tensors = lora.merge_lora(tensors, encoder_config.lora)
  if family == "encoder":
    module, params = bert.build(hf_config, tensors, encoder_config, source=source)
    max_tokens = module.config.max_tokens
  else:
    from recg_jax.encoders import llama  # pylint: disable=g-import-not-at-top

    module, params = llama.build(hf_config, tensors, encoder_config)
    max_tokens = hf_config.get("max_position_embeddings")
  return Encoder(
      module=module,
      params=params,
      tokenizer=tokenizer,
      hidden_dim=int(hf_config["hidden_size"]),
      model_id=model_id(encoder_config),
      weights_hash=sources.weights_hash(ckpt.weight_files, extra),
      pooling=encoder_config.pooling,
      normalize=bool(encoder_config.normalize),
      family=family,
      model_type=model_type,
      max_tokens=int(max_tokens) if max_tokens else None,
  )
