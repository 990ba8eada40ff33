"""BERT4Rec (Sun et al. 2019): the SASRec block stack without the causal mask.

Bidirectional self-attention with a padding mask, post-LN by default (BERT), FFN d -> 4d with GELU.
The authors' LLM-RecG code trains it with next-item BPR at the last position (our default); the Cloze
objective is an option: the training pipeline masks items with the token `MASK_TOKEN_ID`, which
the Recommender replaces with a learned vector in input space, and the loss scores each masked position
against its original item.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from recg_jax.models import sasrec

# The Cloze mask token, one id for every domain and past any real item (items are 1..num_items, 0 is
# padding). An id derived from the catalogue's size (num_items + 1) would be a real item of any larger
# domain, which a model trained on a small source would read as its mask zero-shot.
MASK_TOKEN_ID = 2**31 - 1  # int32's largest: inputs are int32


class BERT4Rec(nn.Module):
  """Bidirectional self-attention backbone: every real position sees every real position."""

  hidden_dim: int
  num_layers: int
  num_heads: int
  dropout: float
  max_len: int
  pre_ln: bool = False
  dtype: Any = jnp.float32  # compute dtype; parameters are float32 (sasrec.py)

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, valid_BxL: jax.Array, train: bool = False) -> jax.Array:
    return sasrec.TransformerEncoder(
        hidden_dim=self.hidden_dim,
        num_layers=self.num_layers,
        num_heads=self.num_heads,
        dropout=self.dropout,
        max_len=self.max_len,
        pre_ln=self.pre_ln,
        causal=False,
        ffn_dim=4 * self.hidden_dim,
        activation=nn.gelu,
        dtype=self.dtype,
        name="transformer",
    )(x_BxLxD, valid_BxL, train)
