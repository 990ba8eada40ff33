"""Sentence vectors from per-token hidden states.

All functions take the mask of real tokens (1) versus padding (0), so they work for right- and left-padded
batches, and compute in float32 whatever the encoder's compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLING_KINDS = ("mean", "cls", "last")


def pool(hidden_BxTxH: jax.Array, mask_BxT: jax.Array, kind: str) -> jax.Array:
  """[B, T, H] hidden states -> [B, H] float32.

  mean: average over real tokens (sentence-transformers' mean pooling; an all-padding row gives zeros).
  cls: the first real token (BERT's [CLS]).
  last: the last real token (decoders, whose last position has seen the whole text).
  """
  hidden_BxTxH = hidden_BxTxH.astype(jnp.float32)
  mask_BxT = mask_BxT.astype(jnp.float32)
  if kind == "mean":
    total_BxH = jnp.einsum("bth,bt->bh", hidden_BxTxH, mask_BxT)
    count_Bx1 = jnp.maximum(mask_BxT.sum(axis=1, keepdims=True), 1e-9)
    return total_BxH / count_Bx1
  if kind == "cls":
    index_B = jnp.argmax(mask_BxT, axis=1)
  elif kind == "last":
    t = mask_BxT.shape[1]
    index_B = t - 1 - jnp.argmax(mask_BxT[:, ::-1], axis=1)
  else:
    raise ValueError(f"unknown pooling {kind!r}; expected one of {', '.join(POOLING_KINDS)}")
  return jnp.take_along_axis(hidden_BxTxH, index_B[:, None, None], axis=1)[:, 0]


def l2_normalize(x_BxH: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps), as torch.nn.functional.normalize (a zero row stays zero)."""
  norm_Bx1 = jnp.linalg.norm(x_BxH, axis=-1, keepdims=True)
  return x_BxH / jnp.maximum(norm_Bx1, eps)
