"""Llama / Qwen2 / Mistral decoders as frozen text encoders (flax.linen).

The module returns the hidden states after the final RMSNorm, `hidden_BxTxH` (float32), for right-padded
batches. Two attention modes:
  * `causal`: the checkpoint's own causal attention (plus Mistral/Qwen2 sliding windows);
  * `bidirectional`: LLM2Vec-style, the causal mask removed, every real token sees every real token.
Both always mask padded keys. Positions are 0..T-1, which is what the checkpoint saw for right padding.

Layers are stacked and run with `nn.scan`, so a 30-layer model compiles one layer; every layer parameter
carries a leading `[num_layers]` axis.

`build(hf_config, tensors, encoder_config)` turns a Hugging Face config dict and HF-named tensors (from
safetensors or from `gguf_loader.load_gguf`) into `(module, params)`; params are host numpy arrays in the
compute dtype, ready for `jax.device_put` (optionally with `sharding.param_sharding`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recg_jax import errors

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """The subset of a HF decoder config the forward pass needs (hashable: tuples only)."""

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float
  inv_freq: tuple[float, ...]  # RoPE inverse frequencies, head_dim // 2 of them, scaling applied
  qkv_bias: bool
  o_bias: bool
  mlp_bias: bool
  sliding_window: int | None  # causal mode only: key j visible from query i iff i - window < j <= i
  sliding_layers: tuple[bool, ...]  # which layers use the window


def _rope_parameters(hf: Mapping[str, Any]) -> dict[str, Any]:
  """RoPE settings from either config format: transformers>=5 `rope_parameters`, or the older
  top-level `rope_theta` plus optional `rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  if "rope_theta" not in params:
    params["rope_theta"] = hf.get("rope_theta", 10000.0)
  scaling = hf.get("rope_scaling")
  if scaling:
    params.update(scaling)
  rope_type = params.get("rope_type") or params.get("type") or "default"
  params["rope_type"] = rope_type
  return params


def rope_inv_freq(hf: Mapping[str, Any], head_dim: int) -> np.ndarray:
  """Inverse frequencies [head_dim // 2] float32, computed in float32 as transformers does, so that the
  angles match the ones the checkpoint was trained with."""
  params = _rope_parameters(hf)
  rope_type = params["rope_type"]
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise errors.ConfigError(
        f"config.json: partial_rotary_factor={params['partial_rotary_factor']} is not supported "
        "(Llama/Qwen2/Mistral rotate the whole head)"
    )
  base = np.float32(params["rope_theta"])
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  inv_freq = (np.float32(1.0) / (base**exponents)).astype(np.float32)
  if rope_type == "default":
    return inv_freq
  if rope_type == "linear":
    return (inv_freq / np.float32(params["factor"])).astype(np.float32)
  if rope_type == "llama3":
    factor = np.float32(params["factor"])
    low = np.float32(params["low_freq_factor"])
    high = np.float32(params["high_freq_factor"])
    old_len = np.float32(params.get("original_max_position_embeddings", hf.get("max_position_embeddings")))
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  if rope_type == "freq_factors":
    # llama.cpp stores Llama-3.1-style scaling as one divisor per frequency (`rope_freqs.weight`).
    factors = np.asarray(params["freq_factors"], np.float32)
    if factors.shape != inv_freq.shape:
      raise ValueError(f"rope freq_factors has shape {factors.shape}, expected {inv_freq.shape}")
    return (inv_freq / factors).astype(np.float32)
  raise errors.ConfigError(
      f"config.json: rope type {rope_type!r} is not supported; supported: "
      f"{', '.join(SUPPORTED_ROPE_TYPES)}"
  )


def _sliding(hf: Mapping[str, Any], model_type: str, num_layers: int) -> tuple[int | None, tuple[bool, ...]]:
  window = hf.get("sliding_window")
  if model_type == "llama":
    window = None
  if model_type == "qwen2" and not hf.get("use_sliding_window", False):
    window = None  # Qwen2 only slides when use_sliding_window is set
  if window is None:
    return None, (False,) * num_layers
  layer_types = hf.get("layer_types")
  if layer_types:
    sliding = tuple(t == "sliding_attention" for t in layer_types)
  elif model_type == "qwen2":
    sliding = tuple(i >= hf.get("max_window_layers", num_layers) for i in range(num_layers))
  else:
    sliding = (True,) * num_layers
  if len(sliding) != num_layers:
    raise errors.ConfigError(f"config.json: layer_types has {len(sliding)} entries for {num_layers} layers")
  return int(window), sliding


def decoder_config(hf: Mapping[str, Any]) -> DecoderConfig:
  """Parses a HF config dict (config.json contents), with clear errors for what we cannot run."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise errors.ConfigError(
        f"config.json: model_type {model_type!r} is not a supported decoder; supported: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}"
    )
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise errors.ConfigError(f"config.json: hidden_act {act!r} is not supported (SwiGLU needs silu)")
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
    if key not in hf:
      raise errors.ConfigError(f"config.json: missing field {key!r} for model_type {model_type!r}")
  num_heads = int(hf["num_attention_heads"])
  num_kv_heads = int(hf.get("num_key_value_heads") or num_heads)
  if num_heads % num_kv_heads:
    raise errors.ConfigError(
        f"config.json: num_attention_heads={num_heads} is not a multiple of "
        f"num_key_value_heads={num_kv_heads}"
    )
  head_dim = int(hf.get("head_dim") or hf["hidden_size"] // num_heads)
  num_layers = int(hf["num_hidden_layers"])
  attention_bias = bool(hf.get("attention_bias", False))
  window, sliding = _sliding(hf, model_type, num_layers)
  return DecoderConfig(
      model_type=model_type,
      vocab_size=int(hf["vocab_size"]),
      hidden_size=int(hf["hidden_size"]),
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=head_dim,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      inv_freq=tuple(float(f) for f in rope_inv_freq(hf, head_dim)),
      # Qwen2 always has q/k/v biases and never an o bias; Llama's attention_bias covers all four.
      qkv_bias=model_type == "qwen2" or attention_bias,
      o_bias=model_type != "qwen2" and attention_bias,
      mlp_bias=bool(hf.get("mlp_bias", False)),
      sliding_window=window,
      sliding_layers=sliding,
  )


class RMSNorm(nn.Module):
  """x / rms(x) * scale, computed in float32 and cast back (as transformers does)."""

  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxH: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x_BxTxH.shape[-1],), self.dtype)
    x = x_BxTxH.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * x.astype(self.dtype)


def _rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x_BxTxNxD: jax.Array, cos_TxD: jax.Array, sin_TxD: jax.Array) -> jax.Array:
  """HF's rotate-half RoPE (first half of the head pairs with the second half)."""
  cos, sin = cos_TxD[None, :, None, :], sin_TxD[None, :, None, :]
  x = x_BxTxNxD.astype(jnp.float32)
  return (x * cos + _rotate_half(x) * sin).astype(x_BxTxNxD.dtype)


class Attention(nn.Module):
  """Grouped-query attention: num_heads queries share num_kv_heads keys/values."""

  config: DecoderConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxH, allowed_Bx1xTxT, cos_TxD, sin_TxD):
    c = self.config
    dense = lambda n, bias, name: nn.Dense(
        n, use_bias=bias, dtype=self.dtype, param_dtype=self.dtype, name=name
    )
    b, t, _ = x_BxTxH.shape
    q = dense(c.num_heads * c.head_dim, c.qkv_bias, "q_proj")(x_BxTxH).reshape(b, t, c.num_heads, c.head_dim)
    k = dense(c.num_kv_heads * c.head_dim, c.qkv_bias, "k_proj")(x_BxTxH)
    v = dense(c.num_kv_heads * c.head_dim, c.qkv_bias, "v_proj")(x_BxTxH)
    k = k.reshape(b, t, c.num_kv_heads, c.head_dim)
    v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
    q, k = apply_rope(q, cos_TxD, sin_TxD), apply_rope(k, cos_TxD, sin_TxD)
    group = c.num_heads // c.num_kv_heads
    # Query head h uses kv head h // group (transformers' repeat_kv order).
    q = q.reshape(b, t, c.num_kv_heads, group, c.head_dim)
    logits_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (
        c.head_dim**-0.5
    )
    # A large finite negative (not -inf): a row with no visible key (an all-padding sequence) stays finite.
    logits_BxKxGxTxS = jnp.where(allowed_Bx1xTxT[:, :, None], logits_BxKxGxTxS, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, c.num_heads * c.head_dim)
    return dense(c.hidden_size, c.o_bias, "o_proj")(out)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  config: DecoderConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxH):
    c = self.config
    dense = lambda n, name: nn.Dense(
        n, use_bias=c.mlp_bias, dtype=self.dtype, param_dtype=self.dtype, name=name
    )
    gate = dense(c.intermediate_size, "gate_proj")(x_BxTxH)
    h = nn.silu(gate) * dense(c.intermediate_size, "up_proj")(x_BxTxH)
    return dense(c.hidden_size, "down_proj")(h)


class DecoderLayer(nn.Module):
  """Pre-norm block; the signature fits nn.scan: (carry, broadcast..., per-layer) -> (carry, None)."""

  config: DecoderConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxH, full_Bx1xTxT, window_Bx1xTxT, cos_TxD, sin_TxD, is_sliding):
    c = self.config
    allowed = jnp.where(is_sliding, window_Bx1xTxT, full_Bx1xTxT)
    h = RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(x_BxTxH)
    x_BxTxH = x_BxTxH + Attention(c, self.dtype, name="self_attn")(h, allowed, cos_TxD, sin_TxD)
    h = RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(x_BxTxH)
    return x_BxTxH + MLP(c, self.dtype, name="mlp")(h), None


class Decoder(nn.Module):
  """Token ids -> final-norm hidden states.

  Attributes:
    config: parsed checkpoint config.
    bidirectional: drop the causal mask (LLM2Vec); padding is masked either way.
    dtype: compute and parameter dtype; attention softmax and norms run in float32.
  """

  config: DecoderConfig
  bidirectional: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    c = self.config
    x = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="embed_tokens")(
        input_ids_BxT
    )
    t = input_ids_BxT.shape[1]
    pos_T = jnp.arange(t, dtype=jnp.float32)
    angles_TxD2 = pos_T[:, None] * jnp.asarray(c.inv_freq, jnp.float32)[None, :]
    angles_TxD = jnp.concatenate([angles_TxD2, angles_TxD2], axis=-1)
    cos_TxD, sin_TxD = jnp.cos(angles_TxD), jnp.sin(angles_TxD)

    key_ok_Bx1x1xT = attention_mask_BxT.astype(bool)[:, None, None, :]
    q_idx, k_idx = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    if self.bidirectional:
      full = window = key_ok_Bx1x1xT & jnp.ones((t, t), bool)
    else:
      full = key_ok_Bx1x1xT & (k_idx <= q_idx)
      window = full
      if c.sliding_window is not None:
        window = full & (k_idx > q_idx - c.sliding_window)

    layers = nn.scan(
        DecoderLayer,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
        length=c.num_layers,
    )
    x, _ = layers(c, self.dtype, name="layers")(
        x, full, window, cos_TxD, sin_TxD, jnp.asarray(c.sliding_layers, bool)
    )
    return RMSNorm(c.rms_norm_eps, self.dtype, name="norm")(x).astype(jnp.float32)


def _config_field(encoder_config, name: str, default):
  if encoder_config is None:
    return default
  if isinstance(encoder_config, Mapping):
    return encoder_config.get(name, default)
  return getattr(encoder_config, name, default)


def _strip_prefix(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF names, without the `model.` prefix a *ForCausalLM checkpoint adds; lm_head etc. are dropped."""
  out = {}
  for name, value in tensors.items():
    out[name[len("model.") :] if name.startswith("model.") else name] = value
  return out


def params_from_tensors(config: DecoderConfig, tensors: Mapping[str, np.ndarray], dtype=np.float32) -> dict:
  """HF tensors ([out, in] linear weights) -> the Decoder's params tree ([in, out] kernels, layers stacked).

  Raises a ValueError naming the first missing tensor or wrong shape.
  """
  t = _strip_prefix(tensors)
  c = config
  np_dtype = np.dtype(dtype)

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in t:
      raise ValueError(
          f"checkpoint tensors: missing {name!r} (model_type={c.model_type}); found e.g. {sorted(t)[:5]}"
      )
    value = np.asarray(t[name])
    if value.shape != shape:
      raise ValueError(f"checkpoint tensors: {name!r} has shape {value.shape}, config implies {shape}")
    return value.astype(np.float32).astype(np_dtype)

  h, f = c.hidden_size, c.intermediate_size
  q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

  def linear(prefix: str, n_in: int, n_out: int, bias: bool) -> dict:
    out = {
        "kernel": np.stack([get(f"layers.{i}.{prefix}.weight", (n_out, n_in)).T for i in range(c.num_layers)])
    }
    if bias:
      out["bias"] = np.stack([get(f"layers.{i}.{prefix}.bias", (n_out,)) for i in range(c.num_layers)])
    return out

  def norm(name: str) -> dict:
    return {"scale": np.stack([get(f"layers.{i}.{name}.weight", (h,)) for i in range(c.num_layers)])}

  return {
      "embed_tokens": {"embedding": get("embed_tokens.weight", (c.vocab_size, h))},
      "layers": {
          "input_layernorm": norm("input_layernorm"),
          "self_attn": {
              "q_proj": linear("self_attn.q_proj", h, q_dim, c.qkv_bias),
              "k_proj": linear("self_attn.k_proj", h, kv_dim, c.qkv_bias),
              "v_proj": linear("self_attn.v_proj", h, kv_dim, c.qkv_bias),
              "o_proj": linear("self_attn.o_proj", q_dim, h, c.o_bias),
          },
          "post_attention_layernorm": norm("post_attention_layernorm"),
          "mlp": {
              "gate_proj": linear("mlp.gate_proj", h, f, c.mlp_bias),
              "up_proj": linear("mlp.up_proj", h, f, c.mlp_bias),
              "down_proj": linear("mlp.down_proj", f, h, c.mlp_bias),
          },
      },
      "norm": {"scale": get("norm.weight", (h,))},
  }


def build(
    hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], encoder_config=None
) -> tuple[Decoder, dict]:
  """(module, params) for a Llama/Qwen2/Mistral checkpoint.

  Args:
    hf_config: config.json contents (or `gguf_loader.load_gguf`'s config).
    tensors: HF-named weights, with or without the `model.` prefix; LoRA already merged.
    encoder_config: reads `attention` (auto | causal | bidirectional; auto = causal) and `dtype`.

  Returns:
    `Decoder` module and its params (host numpy arrays in the compute dtype).
  """
  config = decoder_config(hf_config)
  attention = _config_field(encoder_config, "attention", "auto")
  if attention not in ("auto", "causal", "bidirectional"):
    raise errors.ConfigError(f"encoder.attention={attention!r}; expected auto, causal or bidirectional")
  dtype_name = _config_field(encoder_config, "dtype", "float32")
  if dtype_name not in _DTYPES:
    raise errors.ConfigError(f"encoder.dtype={dtype_name!r}; expected one of {', '.join(_DTYPES)}")
  dtype = _DTYPES[dtype_name]
  module = Decoder(config, bidirectional=attention == "bidirectional", dtype=dtype)
  return module, params_from_tensors(config, tensors, dtype)
