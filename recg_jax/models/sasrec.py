"""SASRec (Kang & McAuley 2018) and the Transformer block stack it shares with BERT4Rec.

Backbones take item inputs, not ids: `encoder(x_BxLxD, valid_BxL, train) -> hidden_BxLxD`, so the
causality and padding tests can differentiate through the inputs directly.

Choices (docs/method.md step 4 and the table of code differences):
- A real causal mask: query t attends to keys k <= t that are not padding. (The authors' code builds the
  mask and never passes it, which makes their SASRec bidirectional.)
- Learned positional embeddings counted from the right: inputs are right-aligned, so the newest item is
  always at the last position and a history gets the same positions whatever the padded length L is
  (L <= max_len). Positions are added to the item inputs, which are not scaled by sqrt(d): the inputs come
  from a learned projection or table, so their scale is learned anyway.
- pre_ln=False (default): post-LN blocks as in BERT, with a LayerNorm on the embedded inputs.
  pre_ln=True: pre-LN blocks (LN before attention and FFN, as in the SASRec reference code) and a final
  LayerNorm. (A post-LN stack already ends in a LayerNorm.)
- Padding positions are zeroed after every block, and masked as keys, so they never influence real
  positions. Their own queries see no key; flax's finite mask value makes that a harmless uniform average.
- SASRec's FFN is d -> d with ReLU by default (the reference point-wise Conv1d); RecBole's SASRec uses
  d -> 4d with (exact) GELU, LayerNorm epsilon 1e-12 and N(0, 0.02) weights: each is a field
  (ffn_multiplier, activation, ln_epsilon, init_std; config.model.sasrec_*). BERT4Rec's FFN is d -> 4d
  with GELU.
- `dtype` is the compute dtype (config.train.compute_dtype): inputs are cast to it on entry and every
  matmul, activation and the residual stream run in it; parameters stay float32. Flax's LayerNorm computes
  its mean and variance in float32 whatever the dtype, and the attention softmax is forced to float32
  (force_fp32_for_softmax; a no-op in float32), so half precision never reaches a normalisation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from recg_jax import errors


class TransformerBlock(nn.Module):
  """Multi-head self-attention + point-wise FFN, pre- or post-LN."""

  hidden_dim: int
  num_heads: int
  dropout: float
  pre_ln: bool
  ffn_dim: int
  activation: Callable[[jax.Array], jax.Array]
  ln_epsilon: float = 1e-6
  init_std: float = 0.0  # > 0: every kernel drawn from N(0, init_std^2) (RecBole); 0: flax's defaults
  dtype: Any = jnp.float32  # compute dtype; parameters are float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_Bx1xLxL: jax.Array, train: bool) -> jax.Array:
    det = not train
    kernel = nn.initializers.normal(self.init_std) if self.init_std > 0 else nn.linear.default_kernel_init
    attention = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        qkv_features=self.hidden_dim,
        out_features=self.hidden_dim,
        dropout_rate=self.dropout,
        broadcast_dropout=False,
        deterministic=det,
        kernel_init=kernel,
        dtype=self.dtype,
        force_fp32_for_softmax=True,
        name="attention",
    )
    ln_attn = nn.LayerNorm(epsilon=self.ln_epsilon, dtype=self.dtype, name="ln_attention")
    ln_ffn = nn.LayerNorm(epsilon=self.ln_epsilon, dtype=self.dtype, name="ln_ffn")

    def ffn(h):
      h = nn.Dense(self.ffn_dim, kernel_init=kernel, dtype=self.dtype, name="ffn_in")(h)
      h = self.activation(h)
      h = nn.Dropout(self.dropout)(h, deterministic=det)
      return nn.Dense(self.hidden_dim, kernel_init=kernel, dtype=self.dtype, name="ffn_out")(h)

    if self.pre_ln:
      h = ln_attn(x_BxLxD)
      x_BxLxD = x_BxLxD + nn.Dropout(self.dropout)(attention(h, h, mask=mask_Bx1xLxL), deterministic=det)
      h = ln_ffn(x_BxLxD)
      return x_BxLxD + nn.Dropout(self.dropout)(ffn(h), deterministic=det)
    h = attention(x_BxLxD, x_BxLxD, mask=mask_Bx1xLxL)
    x_BxLxD = ln_attn(x_BxLxD + nn.Dropout(self.dropout)(h, deterministic=det))
    return ln_ffn(x_BxLxD + nn.Dropout(self.dropout)(ffn(x_BxLxD), deterministic=det))


class TransformerEncoder(nn.Module):
  """Positions + a stack of TransformerBlocks, causal or bidirectional, with a padding mask."""

  hidden_dim: int
  num_layers: int
  num_heads: int
  dropout: float
  max_len: int
  pre_ln: bool
  causal: bool
  ffn_dim: int
  activation: Callable[[jax.Array], jax.Array]
  ln_epsilon: float = 1e-6
  init_std: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, valid_BxL: jax.Array, train: bool = False) -> jax.Array:
    _, length, dim = x_BxLxD.shape
    if length > self.max_len:
      raise errors.ConfigError(
          f"sequence length {length} exceeds max_len={self.max_len} "
          "(config.data.max_len sizes the positional table)"
      )
    if dim != self.hidden_dim:
      raise ValueError(f"inputs have width {dim}, expected hidden_dim={self.hidden_dim}")
    if self.hidden_dim % self.num_heads:
      raise errors.ConfigError(
          f"config.model.hidden_dim={self.hidden_dim} is not divisible by "
          f"config.model.num_heads={self.num_heads}"
      )
    valid_BxLx1 = valid_BxL[..., None]
    positions_L = jnp.arange(length) + (self.max_len - length)  # right-aligned: newest at max_len - 1
    pos_LxD = nn.Embed(
        self.max_len,
        self.hidden_dim,
        embedding_init=nn.initializers.normal(self.init_std or 0.02),
        dtype=self.dtype,
        name="position_embedding",
    )(positions_L)
    x = x_BxLxD.astype(self.dtype) + pos_LxD[None]
    if not self.pre_ln:
      x = nn.LayerNorm(epsilon=self.ln_epsilon, dtype=self.dtype, name="ln_input")(x)
    x = jnp.where(valid_BxLx1, x, 0.0)

    mask = nn.make_attention_mask(valid_BxL, valid_BxL)  # [B, 1, L, L]: both ends real
    if self.causal:
      mask = nn.combine_masks(mask, nn.make_causal_mask(valid_BxL))
    for i in range(self.num_layers):
      x = TransformerBlock(
          hidden_dim=self.hidden_dim,
          num_heads=self.num_heads,
          dropout=self.dropout,
          pre_ln=self.pre_ln,
          ffn_dim=self.ffn_dim,
          activation=self.activation,
          ln_epsilon=self.ln_epsilon,
          init_std=self.init_std,
          dtype=self.dtype,
          name=f"block_{i}",
      )(x, mask, train)
      x = jnp.where(valid_BxLx1, x, 0.0)
    if self.pre_ln:
      x = jnp.where(
          valid_BxLx1, nn.LayerNorm(epsilon=self.ln_epsilon, dtype=self.dtype, name="ln_final")(x), 0.0
      )
    return x


class SASRec(nn.Module):
  """Causal self-attention backbone: position t sees inputs 0..t only."""

  hidden_dim: int
  num_layers: int
  num_heads: int
  dropout: float
  max_len: int
  pre_ln: bool = False
  ffn_multiplier: int = 1  # FFN width = ffn_multiplier * hidden_dim
  activation: str = "relu"  # relu | gelu (exact, as RecBole's)
  ln_epsilon: float = 1e-6
  init_std: float = 0.0
  dtype: Any = jnp.float32  # compute dtype; parameters are float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, valid_BxL: jax.Array, train: bool = False) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise errors.ConfigError(
          f"config.model.sasrec_activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}"
      )
    if self.ffn_multiplier < 1:
      raise errors.ConfigError(f"config.model.sasrec_ffn_multiplier must be >= 1, got {self.ffn_multiplier}")
    return TransformerEncoder(
        hidden_dim=self.hidden_dim,
        num_layers=self.num_layers,
        num_heads=self.num_heads,
        dropout=self.dropout,
        max_len=self.max_len,
        pre_ln=self.pre_ln,
        causal=True,
        ffn_dim=self.ffn_multiplier * self.hidden_dim,
        activation=ACTIVATIONS[self.activation],
        ln_epsilon=self.ln_epsilon,
        init_std=self.init_std,
        dtype=self.dtype,
        name="transformer",
    )(x_BxLxD, valid_BxL, train)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
}
