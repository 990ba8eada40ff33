"""Scoring in the frozen text space: the table transform, the recency-weighted history mean (`text_knn`).

The frozen table is the only thing a zero-shot model knows of a target domain, so these functions read
nothing but the table they are given: a target's statistics come from the target's own item text.

- `transform_table(table_NxH, mode)`: 'none' returns the table; 'center' subtracts the mean of the real
  rows (1..N-1) and L2-normalises every row again, so that the direction every item of a domain shares
  (sentence encoders are anisotropic: MiniLM's items of one shop sit in a narrow cone) stops dominating
  the cosines. 'standardize' also divides every dimension by its standard deviation over the real rows,
  and 'whiten' maps the centred rows through the inverse square root of their covariance, shrunk towards
  a multiple of the identity (every principal direction of the domain's items gets about unit variance),
  each before the L2 normalisation. Row 0 (padding) stays 0.
- `history_mean_positions(seq_BxL, table_NxH, decay)`: at every position t, the weighted mean
  sum_{s<=t} decay^(t-s) e[seq_s] / sum_{s<=t} decay^(t-s) over real items; position L-1 is the user's
  whole history with weight 0.5^age for decay 0.5 (age 0 = newest). decay 1 is the plain mean, decay 0 the
  newest item alone. Causal by construction.

The training-free recommender `text_knn` scores candidate i of a user by <mean, e_i>, which ranks as the
cosine between the (unit) candidate row and the history mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from recg_jax import errors

TABLE_TRANSFORMS = ("none", "center", "standardize", "whiten")
# 'whiten' adds shrinkage * (the mean variance) to every principal direction's variance before dividing
# by its square root (config.model.whiten_shrinkage): directions with almost no variance among a domain's
# items are not blown up into noise; shrinkage 0 is plain whitening, a large one comes back to 'center'.
DEFAULT_SHRINKAGE = 0.1
# 'standardize' adds this to every dimension's variance, for the same reason.
_VARIANCE_FLOOR = 1e-6


def transform_table(table_NxH: jax.Array, mode: str, shrinkage: float = DEFAULT_SHRINKAGE) -> jax.Array:
  """The table a text-space model reads (see module docstring); row 0 stays zero."""
  if mode not in TABLE_TRANSFORMS:
    raise errors.ConfigError(f"config.model.table_transform must be one of {TABLE_TRANSFORMS}, got {mode!r}")
  table_NxH = jax.lax.stop_gradient(table_NxH).astype(jnp.float32)
  if mode == "none":
    return table_NxH
  real_N = jnp.arange(table_NxH.shape[0]) > 0
  mean_H = jnp.sum(jnp.where(real_N[:, None], table_NxH, 0.0), axis=0) / jnp.maximum(
      table_NxH.shape[0] - 1, 1
  )
  centred = jnp.where(real_N[:, None], table_NxH - mean_H, 0.0)
  count = jnp.maximum(table_NxH.shape[0] - 1, 1)
  if mode == "standardize":
    var_H = jnp.sum(jnp.square(centred), axis=0) / count
    centred = centred / jnp.sqrt(var_H + _VARIANCE_FLOOR)
  elif mode == "whiten":
    if not shrinkage >= 0:
      raise errors.ConfigError(f"config.model.whiten_shrinkage must be >= 0, got {shrinkage}")
    cov_HxH = centred.T @ centred / count
    eigvals_H, eigvecs_HxH = jnp.linalg.eigh(cov_HxH)
    eigvals_H = jnp.maximum(eigvals_H, 0.0)
    floor = shrinkage * jnp.mean(eigvals_H) + _VARIANCE_FLOOR
    centred = centred @ (eigvecs_HxH / jnp.sqrt(eigvals_H + floor))
  norms = jnp.linalg.norm(centred, axis=-1, keepdims=True)
  unit = centred / jnp.maximum(norms, 1e-12)
  return jnp.where(real_N[:, None], unit, 0.0)


def recency_weights_LxL(length: int, decay: float) -> jax.Array:
  """w[t, s] = decay^(t - s) for s <= t, else 0 (decay 0 keeps the diagonal: 0^0 = 1)."""
  if not 0.0 <= decay <= 1.0:
    raise errors.ConfigError(f"config.model.knn_decay must be in [0, 1], got {decay}")
  t = jnp.arange(length)
  age_LxL = t[:, None] - t[None, :]
  return jnp.where(age_LxL >= 0, jnp.power(jnp.float32(decay), jnp.maximum(age_LxL, 0)), 0.0)


def history_mean_positions(seq_BxL: jax.Array, table_NxH: jax.Array, decay: float) -> jax.Array:
  """mean_BxLxH: the recency-weighted mean of the real items at or before each position (0 where none)."""
  valid_BxL = (seq_BxL > 0).astype(jnp.float32)
  rows_BxLxH = jnp.take(table_NxH, seq_BxL.astype(jnp.int32), axis=0, mode="clip") * valid_BxL[..., None]
  w_LxL = recency_weights_LxL(seq_BxL.shape[1], decay)
  total_BxLxH = jnp.einsum("ts,bsh->bth", w_LxL, rows_BxLxH)
  weight_BxL = jnp.einsum("ts,bs->bt", w_LxL, valid_BxL)
  return total_BxLxH / jnp.maximum(weight_BxL, 1e-12)[..., None]


def history_rows(seq_BxL: jax.Array, table_NxH: jax.Array, decay: float) -> jax.Array:
  """rows_BxLx(H+1): every history item's frozen row and, in the last column, the log of its normalised
  recency weight decay^age / sum (age 0 = the newest item, at position L-1 of right-aligned inputs);
  padding rows are 0 with log weight -inf. What text_knn's multi-interest aggregates score (evaluate.py)."""
  valid_BxL = seq_BxL > 0
  rows_BxLxH = jnp.take(table_NxH, seq_BxL.astype(jnp.int32), axis=0, mode="clip") * valid_BxL[..., None]
  weight_BxL = jnp.where(valid_BxL, recency_weights_LxL(seq_BxL.shape[1], decay)[-1][None, :], 0.0)
  weight_BxL = weight_BxL / jnp.maximum(jnp.sum(weight_BxL, axis=1, keepdims=True), 1e-12)
  log_w_BxL = jnp.where(weight_BxL > 0, jnp.log(jnp.maximum(weight_BxL, 1e-30)), -jnp.inf)
  return jnp.concatenate([rows_BxLxH.astype(jnp.float32), log_w_BxL[..., None]], axis=-1)


def transform_tables(tables: dict, mode: str, shrinkage: float = DEFAULT_SHRINKAGE) -> dict:
  """transform_table on every domain's table (host arrays in, host float32 arrays out), each with its own
  statistics. 'none' returns the tables unchanged."""
  if mode not in TABLE_TRANSFORMS:
    raise errors.ConfigError(f"config.model.table_transform must be one of {TABLE_TRANSFORMS}, got {mode!r}")
  if mode == "none" or not tables:
    return tables
  return {name: np.asarray(transform_table(jnp.asarray(t), mode, shrinkage)) for name, t in tables.items()}
