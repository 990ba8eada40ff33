"""GRU4Rec (Hidasi et al. 2016, in the RecBole form): stacked GRU + a dense output layer.

Inputs are right-aligned (left-padded). A plain scan would run the GRU over the leading padding and
start real items from a state that depends on how much padding there is. Instead the carry is held
wherever valid_BxL is False: the state entering the first real item is the initial zero state, so the
output equals that of the same history left-aligned and read at its length (flax nn.RNN with
seq_lengths), whatever the padding. The recurrence is causal by construction.

Layout: layer_i/cell is a flax nn.GRUCell (parameters ir, iz, in, hr, hz, hn), scanned with nn.scan;
dropout between layers and before the output Dense (hidden -> hidden), which maps the bounded GRU state
to an unbounded vector for dot-product scoring.

`dtype` is the compute dtype (config.train.compute_dtype): inputs, the carried state and every gate run in
it; parameters stay float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class _MaskedGRUStep(nn.Module):
  """One GRU step that keeps the previous carry at padding positions."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, carry_BxD: jax.Array, inputs: tuple[jax.Array, jax.Array]
  ) -> tuple[jax.Array, jax.Array]:
    x_BxD, valid_B = inputs
    new_BxD, _ = nn.GRUCell(self.features, dtype=self.dtype, name="cell")(carry_BxD, x_BxD)
    carry_BxD = jnp.where(valid_B[:, None], new_BxD, carry_BxD)
    return carry_BxD, carry_BxD


_ScannedGRU = nn.scan(
    _MaskedGRUStep, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1
)


class GRU4Rec(nn.Module):
  """Stacked GRU over right-aligned inputs: x_BxLxD, valid_BxL -> hidden_BxLxD (zero at padding)."""

  hidden_dim: int
  num_layers: int
  dropout: float
  dtype: Any = jnp.float32  # compute dtype; parameters are float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, valid_BxL: jax.Array, train: bool = False) -> jax.Array:
    det = not train
    h = x_BxLxD.astype(self.dtype)
    for i in range(self.num_layers):
      if i:
        h = nn.Dropout(self.dropout)(h, deterministic=det)
      carry_BxD = jnp.zeros((h.shape[0], self.hidden_dim), h.dtype)
      _, h = _ScannedGRU(self.hidden_dim, dtype=self.dtype, name=f"layer_{i}")(carry_BxD, (h, valid_BxL))
    h = nn.Dropout(self.dropout)(h, deterministic=det)
    h = nn.Dense(self.hidden_dim, dtype=self.dtype, name="out")(h)
    return jnp.where(valid_BxL[..., None], h, 0.0)
