"""Reads a llama.cpp GGUF file into a HF-style config, HF-named float32 tensors and a tokenizer.

Only the `gguf` package and `tokenizers` are used (no torch, no transformers). What llama.cpp changed when
it converted the checkpoint is undone here:
  * tensor names (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ...);
  * quantisation (`gguf.quants.dequantize`, to float32);
  * for the `llama` architecture, the row permutation of Q and K (llama.cpp interleaves the two RoPE halves
    of every head; HF keeps them as two contiguous halves);
  * Llama-3.1-style RoPE scaling stored as a `rope_freqs.weight` tensor (kept as a `freq_factors` rope type
    that `llama.rope_inv_freq` understands).
The tokenizer is rebuilt from the file's vocabulary and merges (byte-level BPE, `tokenizer.ggml.model ==
"gpt2"`), with the split rule llama.cpp uses for the file's `tokenizer.ggml.pre`.
"""

from __future__ import annotations

import functools
import logging
import pathlib
import re
from typing import Any

import numpy as np
import tokenizers
from tokenizers import AddedToken
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import Regex

# llama.cpp writes Mistral checkpoints with the `llama` architecture.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

# GGUF metadata key (after `<arch>.`) -> HF config field.
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
    "attention.sliding_window": "sliding_window",
}

# GGUF tensor name pieces -> HF names.
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")

# llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) -> the split it applies before byte-level BPE.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_PRE = ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais")
_DIGITS_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral")
_QWEN2_PRE = ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez")

_CONTROL, _USER_DEFINED = 3, 4


def _field(reader, key: str, default: Any = None) -> Any:
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _metadata(reader, path) -> dict[str, Any]:
  out = {}
  for key, field in reader.fields.items():
    if key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
    ):
      continue  # big arrays: read on demand
    try:
      out[key] = field.contents()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: cannot read GGUF metadata field {key!r}: {e}") from e
  return out


def gguf_config(meta: dict[str, Any], path, tensor_names=(), num_tokens: int | None = None) -> dict[str, Any]:
  """A HF config dict from GGUF metadata (`llama.embedding_length` -> `hidden_size`, ...).

  `tensor_names` (GGUF names) tell whether the embeddings are tied and whether a llama-arch file has
  attention biases; `num_tokens` (the vocabulary's length) stands in for a missing `<arch>.vocab_size`.
  """
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
        f"{path}: GGUF general.architecture={arch!r} is not supported; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}"
    )
  hf: dict[str, Any] = {"model_type": arch, "hidden_act": "silu"}
  for key, name in _CONFIG_KEYS.items():
    if f"{arch}.{key}" in meta:
      hf[name] = meta[f"{arch}.{key}"]
  for required in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
    if required not in hf:
      raise ValueError(f"{path}: GGUF metadata lacks the field behind {required!r} for arch {arch!r}")
  hf.setdefault("num_key_value_heads", hf["num_attention_heads"])
  head_dim = meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
  hf["head_dim"] = int(head_dim or hf["hidden_size"] // hf["num_attention_heads"])
  if "vocab_size" not in hf and num_tokens:
    hf["vocab_size"] = int(num_tokens)
  hf["tie_word_embeddings"] = "output.weight" not in tensor_names
  if arch == "llama" and any(name.endswith(".attn_q.bias") for name in tensor_names):
    hf["attention_bias"] = True
  if arch == "llama" and any(name.endswith(".ffn_up.bias") for name in tensor_names):
    hf["mlp_bias"] = True
  if arch == "qwen2" and hf.get("sliding_window"):
    hf["use_sliding_window"] = True
  scaling = meta.get(f"{arch}.rope.scaling.type")
  if scaling == "linear":
    hf["rope_scaling"] = {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
  elif scaling not in (None, "none"):
    raise ValueError(
        f"{path}: GGUF {arch}.rope.scaling.type={scaling!r} is not supported "
        "(supported: none, linear, and llama3 via rope_freqs)"
    )
  for token_key, name in (
      ("bos_token_id", "bos_token_id"),
      ("eos_token_id", "eos_token_id"),
      ("padding_token_id", "pad_token_id"),
  ):
    if f"tokenizer.ggml.{token_key}" in meta:
      hf[name] = int(meta[f"tokenizer.ggml.{token_key}"])
  hf["_name_or_path"] = meta.get("general.name", str(path))
  return hf


def unpermute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's `permute` of Q/K rows (convert_hf_to_gguf.py, LlamaModel.permute).

  llama.cpp views each head's rows as [2 halves, D/2] and transposes them to [D/2, 2] (interleaved pairs);
  the inverse views them as [D/2, 2] and transposes back. Works for weights [rows, in] and biases [rows].
  """
  rows = w.shape[0]
  if rows % (2 * num_heads):
    raise ValueError(f"cannot unpermute {rows} rows over {num_heads} heads")
  return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensor_name(gguf_name: str) -> str | None:
  """HF name for a GGUF tensor name; None for tensors the encoder ignores (`rope_freqs`)."""
  if gguf_name == "rope_freqs.weight":
    return None
  m = _BLOCK_RE.match(gguf_name)
  if m:
    layer, piece, kind = m.groups()
    if piece not in _LAYER_TENSORS:
      raise ValueError(f"GGUF tensor {gguf_name!r}: unknown block tensor {piece!r}")
    return f"model.layers.{layer}.{_LAYER_TENSORS[piece]}.{kind}"
  base, _, kind = gguf_name.rpartition(".")
  if base in _GLOBAL_TENSORS:
    return f"{_GLOBAL_TENSORS[base]}.{kind}"
  raise ValueError(f"GGUF tensor {gguf_name!r} has no HF equivalent")


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table (byte-level BPE alphabet)."""
  keep = (
      list(range(ord("!"), ord("~") + 1))
      + list(range(ord("¡"), ord("¬") + 1))
      + list(range(ord("®"), ord("ÿ") + 1))
  )
  chars, n = keep[:], 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + n)
      n += 1
  return dict(zip(keep, map(chr, chars)))


def _pre_tokenizer(pre: str | None):
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  if pre in _LLAMA3_PRE:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level]
    )
  if pre in _QWEN2_PRE:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level]
    )
  gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGITS_PRE:
    # llama.cpp splits every digit off first, then applies GPT-2's rule (as SmolLM2's tokenizer.json does).
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
  if pre not in _GPT2_PRE and pre is not None:
    logging.warning("GGUF tokenizer.ggml.pre=%r is unknown here; splitting text with GPT-2's rule", pre)
  return gpt2


def build_tokenizer(
    meta: dict[str, Any], tokens: list[str], merges: list[str], types: list[int] | None = None, path="GGUF"
) -> tokenizers.Tokenizer:
  """A `tokenizers.Tokenizer` equivalent to llama.cpp's for a byte-level BPE vocabulary.

  Args:
    meta: GGUF metadata (`tokenizer.ggml.model`, `.pre`, `.bos_token_id`, `.add_bos_token`, ...).
    tokens: `tokenizer.ggml.tokens`, id order. merges: `tokenizer.ggml.merges` ("a b" strings).
    types: `tokenizer.ggml.token_type` (1 normal, 3 control, 4 user-defined); None = all normal.
    path: named in errors.
  """
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(
        f"{path}: GGUF tokenizer.ggml.model={kind!r} is not supported (only byte-level BPE, "
        "'gpt2', as used by Llama-3, Qwen2 and SmolLM2); use the checkpoint's tokenizer.json"
    )
  types = list(types) if types is not None else [1] * len(tokens)
  alphabet_map = _bytes_to_unicode()
  alphabet = set(alphabet_map.values())
  # Tokens written outside the byte alphabet (rare llama.cpp spellings) are respelled byte by byte.
  vocab = {}
  for index, token in enumerate(tokens):
    spelled = token if set(token) <= alphabet else "".join(alphabet_map[b] for b in token.encode("utf-8"))
    vocab.setdefault(spelled, index)
  tok = tokenizers.Tokenizer(
      models.BPE(
          vocab=vocab,
          merges=[tuple(m.split(" ", 1)) for m in merges],
          dropout=None,
          continuing_subword_prefix="",
          end_of_word_suffix="",
          fuse_unk=False,
      )
  )
  tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
  tok.decoder = decoders.ByteLevel()
  # Control tokens (<|im_start|>, ...) stay whole and count as special; user-defined ones stay whole too.
  special = [
      AddedToken(t, normalized=False, special=True)
      for t, ty in zip(tokens, types)
      if ty == _CONTROL and set(t) <= alphabet
  ]
  user = [
      AddedToken(t, normalized=False, special=False)
      for t, ty in zip(tokens, types)
      if ty == _USER_DEFINED and t in vocab
  ]
  if special:
    tok.add_special_tokens(special)
  if user:
    tok.add_tokens(user)
  bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
  add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos_id is not None
  add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
  if add_bos or add_eos:
    bos, eos = (tokens[bos_id] if add_bos else None), (tokens[eos_id] if add_eos else None)
    single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
    special_tokens = ([(bos, int(bos_id))] if add_bos else []) + ([(eos, int(eos_id))] if add_eos else [])
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special_tokens)
  return tok


def load_gguf(path) -> tuple[dict[str, Any], dict[str, np.ndarray], tokenizers.Tokenizer]:
  """(hf_config, tensors in HF naming as float32 numpy, tokenizer) from a GGUF file.

  Tensors keep llama.cpp's set: `lm_head.weight` only when the file has an untied `output.weight`.
  """
  import gguf  # pylint: disable=g-import-not-at-top  # only needed for .gguf checkpoints

  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"GGUF file not found: {path}")
  reader = gguf.GGUFReader(str(path))
  meta = _metadata(reader, path)
  tokens_field = reader.fields.get("tokenizer.ggml.tokens")
  hf = gguf_config(
      meta,
      path,
      [t.name for t in reader.tensors],
      len(tokens_field.data) if tokens_field is not None else None,
  )
  arch = hf["model_type"]
  tensors: dict[str, np.ndarray] = {}
  for t in reader.tensors:
    name = hf_tensor_name(t.name)
    try:
      value = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    except NotImplementedError as e:
      raise ValueError(
          f"{path}: tensor {t.name!r} uses quantisation {t.tensor_type.name}, which the gguf "
          f"package cannot dequantise: {e}"
      ) from e
    if t.name == "rope_freqs.weight":
      hf["rope_scaling"] = {"rope_type": "freq_factors", "freq_factors": [float(f) for f in value]}
      continue
    # llama.cpp permutes Q/K for the llama architecture only (Qwen2 is stored as in HF).
    if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
      heads = hf["num_attention_heads"] if ".attn_q." in t.name else hf["num_key_value_heads"]
      value = unpermute_qk(value, heads)
    tensors[name] = value
  if "model.embed_tokens.weight" in tensors and "vocab_size" not in hf:
    hf["vocab_size"] = tensors["model.embed_tokens.weight"].shape[0]
  tokenizer = build_tokenizer(
      meta,
      list(_field(reader, "tokenizer.ggml.tokens", [])),
      list(_field(reader, "tokenizer.ggml.merges", [])),
      _field(reader, "tokenizer.ggml.token_type"),
      path,
  )
  return hf, tensors, tokenizer
