"""BERT-family text encoders (BERT, MiniLM, BGE, E5; RoBERTa / XLM-R position scheme) in flax.linen.

Post-LN transformer with absolute learned positions and token types, as in Hugging Face `BertModel`:

  x = LN(word[ids] + pos[positions] + type[token_types])
  per layer: x = LN(x + Attn(x)); x = LN(x + W2 act(W1 x))

Weights load from Hugging Face safetensors names (`embeddings.word_embeddings.weight`,
`encoder.layer.N.attention.self.query.weight`, ...), with or without a `bert.` / `roberta.` / `model.`
prefix; heads such as `pooler.*` or `cls.*` are ignored. Every tensor's shape is checked against
config.json before use.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recg_jax import errors

# model_type -> how positions are numbered. RoBERTa-style models number real tokens from pad_token_id + 1.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
_PREFIXES = ("", "bert.", "roberta.", "model.", "encoder_model.")


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # HF "gelu" is the exact (erf) GELU. jax.nn.gelu writes it with erfc, which XLA:CPU fuses with the
    # bfloat16 GEMMs better than an explicit 0.5 x (1 + erf(x / sqrt 2)) (measured 10% on MiniLM).
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class UnsupportedModelError(errors.RecgError, ValueError):
  """config.json describes an architecture this module does not implement."""


class WeightShapeError(errors.RecgError, ValueError):
  """A checkpoint tensor is missing or has a shape that disagrees with config.json."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The config.json fields the encoder uses."""

  model_type: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int
  type_vocab_size: int
  layer_norm_eps: float
  hidden_act: str
  pad_token_id: int
  position_offset: int  # position id of the first token (RoBERTa: pad_token_id + 1)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def max_tokens(self) -> int:
    """The longest sequence the position table allows."""
    return self.max_positions - self.position_offset

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], source: str = "config.json") -> "BertConfig":
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise UnsupportedModelError(
          f"{source}: model_type {model_type!r} is not a BERT-family encoder; "
          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
      )
    missing = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
        if k not in hf
    ]
    if missing:
      raise UnsupportedModelError(f"{source}: missing field(s) {', '.join(missing)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise UnsupportedModelError(
          f"{source}: position_embedding_type "
          f"{hf['position_embedding_type']!r} is not supported (only 'absolute')"
      )
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
      raise UnsupportedModelError(
          f"{source}: hidden_act {act!r} is not supported; " f"supported: {', '.join(_ACTIVATIONS)}"
      )
    if hf["hidden_size"] % hf["num_attention_heads"]:
      raise UnsupportedModelError(
          f"{source}: hidden_size {hf['hidden_size']} is not a multiple of "
          f"num_attention_heads {hf['num_attention_heads']}"
      )
    pad = int(hf.get("pad_token_id") or 0)
    return cls(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        intermediate_size=int(hf["intermediate_size"]),
        max_positions=int(hf.get("max_position_embeddings", 512)),
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        hidden_act=act,
        pad_token_id=pad,
        position_offset=pad + 1 if model_type in ("roberta", "xlm-roberta") else 0,
    )


class Dense(nn.Module):
  """x @ kernel + bias with float32 accumulation and a float32 result, whatever the compute dtype.

  With bfloat16 inputs, float32 accumulation is what lets XLA:CPU use the bf16 dot-product units (about
  2x a float32 GEMM); a bf16-output dot is slower than float32 there. The residual stream stays float32.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_NxK: jax.Array) -> jax.Array:
    kernel_KxF = self.param("kernel", nn.initializers.lecun_normal(), (x_NxK.shape[-1], self.features))
    bias_F = self.param("bias", nn.initializers.zeros, (self.features,))
    y_NxF = jnp.dot(
        x_NxK.astype(self.dtype), kernel_KxF.astype(self.dtype), preferred_element_type=jnp.float32
    )
    return y_NxF + bias_F.astype(jnp.float32)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis in float32, with the two-pass variance of PyTorch.

  Written out rather than nn.LayerNorm so that the statistics are float32 whatever the compute dtype;
  the one-pass E[x^2] - E[x]^2 variance would lose digits against the PyTorch reference.
  """

  epsilon: float

  @nn.compact
  def __call__(self, x_NxH: jax.Array) -> jax.Array:
    h = x_NxH.shape[-1]
    scale_H = self.param("scale", nn.initializers.ones, (h,))
    bias_H = self.param("bias", nn.initializers.zeros, (h,))
    x_NxH = x_NxH.astype(jnp.float32)
    centred_NxH = x_NxH - x_NxH.mean(axis=-1, keepdims=True)
    var_Nx1 = jnp.mean(centred_NxH * centred_NxH, axis=-1, keepdims=True)
    return centred_NxH * jax.lax.rsqrt(var_Nx1 + self.epsilon) * scale_H + bias_H


def _attention_one(qkv_Tx3xNxD: jax.Array, bias_S: jax.Array, dtype) -> jax.Array:
  """Softmax attention of one example -> [T, N, D] float32; bias is 0 (key visible) or a large negative.

  Takes the fused projection as it comes out of the GEMM: splitting and transposing per example (in
  cache) is cheaper than transposing the whole batch's q, k, v through memory first.
  """
  q_TxNxD = (qkv_Tx3xNxD[:, 0] * (1.0 / np.sqrt(qkv_Tx3xNxD.shape[-1]))).astype(dtype)
  k_SxNxD, v_SxNxD = qkv_Tx3xNxD[:, 1].astype(dtype), qkv_Tx3xNxD[:, 2].astype(dtype)
  scores_NxTxS = jnp.einsum("tnd,snd->nts", q_TxNxD, k_SxNxD, preferred_element_type=jnp.float32)
  scores_NxTxS = scores_NxTxS + bias_S
  # Unnormalised probabilities times values, divided afterwards: one pass over [T, D] instead of [T, S].
  weights_NxTxS = jnp.exp(scores_NxTxS - scores_NxTxS.max(axis=-1, keepdims=True))
  ctx_TxNxD = jnp.einsum(
      "nts,snd->tnd", weights_NxTxS.astype(dtype), v_SxNxD, preferred_element_type=jnp.float32
  )
  return ctx_TxNxD / weights_NxTxS.sum(axis=-1).T[:, :, None]


def attention(qkv_BxTx3xNxD: jax.Array, bias_BxS: jax.Array, chunk: int, dtype=jnp.float32) -> jax.Array:
  """Multi-head softmax attention -> [B, T, N, D] float32; `chunk` examples at a time (0 = all).

  qkv_BxTx3xNxD: the fused q|k|v projection; matmul inputs are cast to `dtype`.
  On CPU the [chunk, N, T, S] scores of a small chunk stay in cache between the two matmuls and the
  softmax; for the whole batch they would make several round trips through memory (about 2x slower
  for MiniLM at T = 128). Accelerators prefer the whole batch.
  """
  one = functools.partial(_attention_one, dtype=dtype)
  if chunk <= 0 or chunk >= qkv_BxTx3xNxD.shape[0]:
    return jax.vmap(one)(qkv_BxTx3xNxD, bias_BxS)
  return jax.lax.map(lambda a: one(*a), (qkv_BxTx3xNxD, bias_BxS), batch_size=chunk)


def attention_chunk(batch: int, num_heads: int, seq: int, cache_bytes: int | None = None) -> int:
  """Examples per attention chunk: as many as keep the float32 scores within `cache_bytes`.

  cache_bytes None: 2 MiB on CPU (a core's L2 here; chunks of 2-4 MiniLM examples at T = 128 measured
  fastest), the whole batch (0) elsewhere.
  """
  if cache_bytes is None:
    cache_bytes = (2 << 20) if jax.default_backend() == "cpu" else 0
  if cache_bytes <= 0:
    return 0
  return int(min(batch, max(1, cache_bytes // (num_heads * seq * seq * 4))))


class BertLayer(nn.Module):
  """One post-LN transformer block on a float32 residual stream."""

  config: BertConfig
  dtype: Any = jnp.float32
  attention_chunk: int = 0

  @nn.compact
  def __call__(self, x_BxTxH: jax.Array, bias_BxT: jax.Array) -> jax.Array:
    c = self.config
    b, t, _ = x_BxTxH.shape
    # One fused [H, 3H] projection with a plain 2-D kernel: XLA:CPU runs it as one GEMM, about 1.5x
    # faster than a DenseGeneral with a [H, 3, N, D] kernel.
    qkv_BxTx3H = Dense(3 * c.hidden_size, self.dtype, name="qkv")(x_BxTxH)
    qkv_BxTx3xNxD = qkv_BxTx3H.reshape(b, t, 3, c.num_heads, c.head_dim)
    ctx_BxTxNxD = attention(qkv_BxTx3xNxD, bias_BxT, self.attention_chunk, self.dtype)
    attn_BxTxH = Dense(c.hidden_size, self.dtype, name="attn_out")(ctx_BxTxNxD.reshape(b, t, -1))
    x_BxTxH = LayerNorm(c.layer_norm_eps, name="attn_ln")(x_BxTxH + attn_BxTxH)
    h_BxTxF = _ACTIVATIONS[c.hidden_act](Dense(c.intermediate_size, self.dtype, name="ffn_in")(x_BxTxH))
    h_BxTxH = Dense(c.hidden_size, self.dtype, name="ffn_out")(h_BxTxF)
    return LayerNorm(c.layer_norm_eps, name="ffn_ln")(x_BxTxH + h_BxTxH)


class BertEncoder(nn.Module):
  """`apply({'params': p}, input_ids_BxT, attention_mask_BxT) -> hidden_BxTxH` (last layer, float32).

  `dtype` is the matmul input dtype (float32 or bfloat16); accumulation, softmax, LayerNorm and the
  residual stream are float32. Positions count real tokens only for RoBERTa-style models (as in HF) and
  are 0..T-1 for BERT (as in HF, which assumes right padding there).
  """

  config: BertConfig
  dtype: Any = jnp.float32
  # Bytes of attention scores per chunk of examples (see `attention_chunk`); None = by platform.
  attention_cache_bytes: int | None = None

  @nn.compact
  def __call__(
      self,
      input_ids_BxT: jax.Array,
      attention_mask_BxT: jax.Array,
      token_type_ids_BxT: jax.Array | None = None,
  ) -> jax.Array:
    c = self.config
    mask_BxT = attention_mask_BxT.astype(bool)
    if c.position_offset:
      positions_BxT = jnp.cumsum(mask_BxT, axis=1) * mask_BxT + c.pad_token_id
    else:
      positions_BxT = jnp.broadcast_to(jnp.arange(input_ids_BxT.shape[1]), input_ids_BxT.shape)
    if token_type_ids_BxT is None:
      token_type_ids_BxT = jnp.zeros_like(input_ids_BxT)
    embed = functools.partial(nn.Embed, features=c.hidden_size, dtype=jnp.float32)
    x_BxTxH = (
        embed(c.vocab_size, name="word_embeddings")(input_ids_BxT)
        + embed(c.max_positions, name="position_embeddings")(positions_BxT)
        + embed(c.type_vocab_size, name="token_type_embeddings")(token_type_ids_BxT)
    )
    x_BxTxH = LayerNorm(c.layer_norm_eps, name="embeddings_ln")(x_BxTxH)
    bias_BxT = jnp.where(mask_BxT, 0.0, jnp.finfo(jnp.float32).min)
    chunk = attention_chunk(x_BxTxH.shape[0], c.num_heads, x_BxTxH.shape[1], self.attention_cache_bytes)
    for i in range(c.num_layers):
      x_BxTxH = BertLayer(c, self.dtype, chunk, name=f"layer_{i}")(x_BxTxH, bias_BxT)
    return x_BxTxH


class BertBlocks(nn.Module):
  """Blocks `first`..num_layers-1 of a BertEncoder on the hidden states that block `first` receives:
  `apply({'params': p}, hidden_BxTxH, attention_mask_BxT) -> hidden_BxTxH`, p holding those blocks under
  the encoder's own names (layer_i). With a BertEncoder of `first` layers (the same parameters) it splits
  the encoder in two, so a tuning of the top blocks runs the frozen lower ones once per item."""

  config: BertConfig
  first: int
  dtype: Any = jnp.float32
  attention_cache_bytes: int | None = None

  @nn.compact
  def __call__(self, x_BxTxH: jax.Array, attention_mask_BxT: jax.Array) -> jax.Array:
    c = self.config
    bias_BxT = jnp.where(attention_mask_BxT.astype(bool), 0.0, jnp.finfo(jnp.float32).min)
    chunk = attention_chunk(x_BxTxH.shape[0], c.num_heads, x_BxTxH.shape[1], self.attention_cache_bytes)
    for i in range(self.first, c.num_layers):
      x_BxTxH = BertLayer(c, self.dtype, chunk, name=f"layer_{i}")(x_BxTxH, bias_BxT)
    return x_BxTxH


def _strip_prefix(tensors: Mapping[str, np.ndarray], source: str) -> tuple[str, dict[str, np.ndarray]]:
  for prefix in _PREFIXES:
    if f"{prefix}embeddings.word_embeddings.weight" in tensors:
      out = {}
      for name, value in tensors.items():
        if name.startswith(prefix):
          name = name[len(prefix) :]
          # Original TF-converted checkpoints call LayerNorm parameters gamma / beta.
          if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
          elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
          out[name] = value
      return prefix, out
  raise WeightShapeError(
      f"{source}: no 'embeddings.word_embeddings.weight' tensor (tried prefixes "
      f"{', '.join(repr(p) for p in _PREFIXES)}); is this a BERT-family checkpoint?"
  )


def expected_shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
  """Hugging Face tensor name -> shape implied by config.json (PyTorch Linear weights are [out, in])."""
  h, f = c.hidden_size, c.intermediate_size
  shapes = {
      "embeddings.word_embeddings.weight": (c.vocab_size, h),
      "embeddings.position_embeddings.weight": (c.max_positions, h),
      "embeddings.token_type_embeddings.weight": (c.type_vocab_size, h),
      "embeddings.LayerNorm.weight": (h,),
      "embeddings.LayerNorm.bias": (h,),
  }
  for i in range(c.num_layers):
    p = f"encoder.layer.{i}."
    for proj in ("query", "key", "value"):
      shapes[f"{p}attention.self.{proj}.weight"] = (h, h)
      shapes[f"{p}attention.self.{proj}.bias"] = (h,)
    shapes.update(
        {
            f"{p}attention.output.dense.weight": (h, h),
            f"{p}attention.output.dense.bias": (h,),
            f"{p}attention.output.LayerNorm.weight": (h,),
            f"{p}attention.output.LayerNorm.bias": (h,),
            f"{p}intermediate.dense.weight": (f, h),
            f"{p}intermediate.dense.bias": (f,),
            f"{p}output.dense.weight": (h, f),
            f"{p}output.dense.bias": (h,),
            f"{p}output.LayerNorm.weight": (h,),
            f"{p}output.LayerNorm.bias": (h,),
        }
    )
  return shapes


def convert(c: BertConfig, tensors: Mapping[str, np.ndarray], source: str = "checkpoint") -> dict:
  """Hugging Face tensors -> the `params` tree of `BertEncoder` (float32 numpy arrays)."""
  prefix, t = _strip_prefix(tensors, source)
  shapes = expected_shapes(c)
  missing = [name for name in shapes if name not in t]
  if missing:
    more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
    raise WeightShapeError(f"{source}: missing tensor(s) {', '.join(prefix + m for m in missing[:5])}{more}")
  for name, shape in shapes.items():
    if tuple(t[name].shape) != shape:
      raise WeightShapeError(
          f"{source}: tensor {prefix + name} has shape {tuple(t[name].shape)} but "
          f"config.json implies {shape}"
      )

  def get(name):
    return np.asarray(t[name], np.float32)

  def ln(name):
    return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

  def linear(name):
    # PyTorch Linear stores [out, in]; a contiguous [in, out] copy keeps the GEMM operand layout simple.
    return {"kernel": np.ascontiguousarray(get(f"{name}.weight").T), "bias": get(f"{name}.bias")}

  params: dict[str, Any] = {
      "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
      "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
      "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
      "embeddings_ln": ln("embeddings.LayerNorm"),
  }
  for i in range(c.num_layers):
    p = f"encoder.layer.{i}."
    qkv = [linear(f"{p}attention.self.{proj}") for proj in ("query", "key", "value")]
    params[f"layer_{i}"] = {
        # Columns ordered (q|k|v, head, head_dim), as the layer reshapes them.
        "qkv": {
            "kernel": np.concatenate([x["kernel"] for x in qkv], axis=1),
            "bias": np.concatenate([x["bias"] for x in qkv]),
        },
        "attn_out": linear(f"{p}attention.output.dense"),
        "attn_ln": ln(f"{p}attention.output.LayerNorm"),
        "ffn_in": linear(f"{p}intermediate.dense"),
        "ffn_out": linear(f"{p}output.dense"),
        "ffn_ln": ln(f"{p}output.LayerNorm"),
    }
  return params


def build(
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    encoder_config=None,
    source: str = "checkpoint",
) -> tuple[BertEncoder, dict]:
  """(module, params) from config.json and the checkpoint tensors; mirrors `llama.build`."""
  c = BertConfig.from_hf(hf_config, source=f"{source}/config.json")
  dtype = jnp.dtype(getattr(encoder_config, "dtype", "float32") or "float32")
  return BertEncoder(c, dtype=dtype), convert(c, tensors, source)


def to_tensors(c: BertConfig, params) -> dict[str, np.ndarray]:
  """`convert`'s inverse: the `params` tree of BertEncoder -> Hugging Face tensor names and layouts
  (float32; no model prefix), as a tuned encoder is saved."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  ln = lambda name, v: {f"{name}.weight": v["scale"], f"{name}.bias": v["bias"]}
  linear = lambda name, v: {f"{name}.weight": np.ascontiguousarray(v["kernel"].T), f"{name}.bias": v["bias"]}
  out = {
      "embeddings.word_embeddings.weight": p["word_embeddings"]["embedding"],
      "embeddings.position_embeddings.weight": p["position_embeddings"]["embedding"],
      "embeddings.token_type_embeddings.weight": p["token_type_embeddings"]["embedding"],
      **ln("embeddings.LayerNorm", p["embeddings_ln"]),
  }
  for i in range(c.num_layers):
    layer, pre = p[f"layer_{i}"], f"encoder.layer.{i}."
    kernels = np.split(layer["qkv"]["kernel"], 3, axis=1)
    biases = np.split(layer["qkv"]["bias"], 3)
    for proj, kernel, bias in zip(("query", "key", "value"), kernels, biases):
      out.update(linear(f"{pre}attention.self.{proj}", {"kernel": kernel, "bias": bias}))
    out.update(linear(f"{pre}attention.output.dense", layer["attn_out"]))
    out.update(ln(f"{pre}attention.output.LayerNorm", layer["attn_ln"]))
    out.update(linear(f"{pre}intermediate.dense", layer["ffn_in"]))
    out.update(linear(f"{pre}output.dense", layer["ffn_out"]))
    out.update(ln(f"{pre}output.LayerNorm", layer["ffn_ln"]))
  return out
