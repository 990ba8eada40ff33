"""Scoring in the frozen text space: the table transform, the recency-weighted history mean (`text_knn`).

The frozen table is the only thing a zero-shot model knows of a target domain, so these functions read
nothing but the table they are given: a target's statistics come from the target's own item text.

- `transform_table(table_NxH, mode)`: 'none' returns the table; 'center' subtracts the mean of the real
  rows (1..N-1) and L2-normalises every row again, so that the direction every item of a domain shares
  (sentence encoders are anisotropic: MiniLM's items of one shop sit in a narrow cone) stops dominating
  the cosines. 'standardize' also divides every dimension by its standard deviation over the real rows,
  and 'whiten' maps the centred rows through the inverse square root of their covariance, shrunk towards
  a multiple of the identity (every principal direction of the domain's items gets about unit variance),
  each before the L2 normalisation. 'whiten_oas' and 'whiten_lw' whiten with a shrinkage estimated from the
  domain's own items (Oracle Approximating Shrinkage, Ledoit-Wolf: `estimated_shrinkage`), which rises
  towards centring as the items become few for their dimensions, and centre a catalogue with no more items
  than dimensions. Row 0 (padding) stays 0.
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

TABLE_TRANSFORMS = ("none", "center", "standardize", "whiten", "whiten_oas", "whiten_lw")
# 'whiten' adds shrinkage * (the mean variance) to every principal direction's variance before dividing
# by its square root (config.model.whiten_shrinkage): directions with almost no variance among a domain's
# items are not blown up into noise; shrinkage 0 is plain whitening, a large one comes back to 'center'.
DEFAULT_SHRINKAGE = 0.1
# The whitening modes whose shrinkage is estimated from the domain's items (config.model.whiten_shrinkage
# is not read), and their estimators. With no more items than dimensions the covariance is singular and
# its inverse square root is made of the shrinkage alone: these modes centre such a catalogue (rho = 1).
ESTIMATED_WHITENING = {"whiten_oas": "oas", "whiten_lw": "ledoit_wolf"}
# 'standardize' adds this to every dimension's variance, for the same reason.
_VARIANCE_FLOOR = 1e-6


def _centred_rows(table_NxH: jax.Array) -> tuple[jax.Array, jax.Array, int]:
  """(centred_NxH, real_N, count): the real rows (1..N-1) minus their mean, row 0 zero."""
  real_N = jnp.arange(table_NxH.shape[0]) > 0
  count = max(table_NxH.shape[0] - 1, 1)
  mean_H = jnp.sum(jnp.where(real_N[:, None], table_NxH, 0.0), axis=0) / count
  return jnp.where(real_N[:, None], table_NxH - mean_H, 0.0), real_N, count


def estimated_shrinkage(table_NxH: jax.Array, estimator: str) -> jax.Array:
  """rho in [0, 1]: the weight of the scaled identity mu I (mu = the mean variance) in the shrunk
  covariance (1 - rho) C + rho mu I of the real rows (1..N-1), C their covariance (divided by the number of
  items), as scikit-learn's `sklearn.covariance` estimates it ('oas': OAS, 'ledoit_wolf': LedoitWolf).
  It reads only the table's own rows; it rises towards 1 (no covariance structure kept: centring) as the
  items become few for their dimensions, and falls as they grow."""
  centred_NxH, _, count = _centred_rows(jnp.asarray(table_NxH, jnp.float32))
  return _estimate(centred_NxH, centred_NxH.T @ centred_NxH / count, count, estimator)


def _estimate(centred_NxH: jax.Array, cov_HxH: jax.Array, count: int, estimator: str) -> jax.Array:
  """estimated_shrinkage from the centred real rows, their covariance and their number."""
  h = centred_NxH.shape[1]
  mu = jnp.trace(cov_HxH) / h
  if estimator == "oas":
    # Chen et al. (2010) as sklearn writes it: min((<C^2> + mu^2) / ((n + 1) (<C^2> - mu^2 / p)), 1),
    # <.> the mean over the p x p entries.
    alpha = jnp.mean(jnp.square(cov_HxH))
    num = alpha + jnp.square(mu)
    den = (count + 1) * (alpha - jnp.square(mu) / h)
    return jnp.where(den > 0, jnp.minimum(num / jnp.where(den > 0, den, 1.0), 1.0), 1.0)
  if estimator == "ledoit_wolf":
    # Ledoit and Wolf (2004): the variance of the entries of C (beta) against their spread around
    # mu I (delta), beta capped at delta.
    frob = jnp.sum(jnp.square(cov_HxH))
    fourth = jnp.sum(jnp.square(jnp.sum(jnp.square(centred_NxH), axis=1)))
    beta = (fourth / count - frob) / (h * count)
    delta = (frob - h * jnp.square(mu)) / h
    return jnp.where(delta > 0, jnp.minimum(beta, delta) / jnp.where(delta > 0, delta, 1.0), 1.0)
  raise errors.ConfigError(f"unknown shrinkage estimator {estimator!r}: expected 'oas' or 'ledoit_wolf'")


def whitening_shrinkage(
    table_NxH: jax.Array, mode: str, shrinkage: float = DEFAULT_SHRINKAGE, moments: tuple | None = None
) -> jax.Array:
  """rho, the identity's weight in the covariance a whitening mode inverts ((1 - rho) C + rho mu I):
  s / (1 + s) for 'whiten' with shrinkage s (whose (C + s mu I) is the same matrix up to a factor), the
  estimate for 'whiten_oas' / 'whiten_lw', or 1 (centring) where the items are no more than the
  dimensions. moments: (centred_NxH, cov_HxH, count) of the table when the caller has them already."""
  if mode in ESTIMATED_WHITENING:
    if table_NxH.shape[0] - 1 <= table_NxH.shape[1]:
      return jnp.float32(1.0)
    if moments is None:
      return estimated_shrinkage(table_NxH, ESTIMATED_WHITENING[mode])
    return _estimate(*moments, ESTIMATED_WHITENING[mode])
  if mode != "whiten":
    raise errors.ConfigError(f"{mode!r} is not a whitening table transform")
  if not shrinkage >= 0:
    raise errors.ConfigError(f"config.model.whiten_shrinkage must be >= 0, got {shrinkage}")
  return jnp.float32(shrinkage / (1.0 + shrinkage)) if np.isfinite(shrinkage) else jnp.float32(1.0)


def transform_table(table_NxH: jax.Array, mode: str, shrinkage: float = DEFAULT_SHRINKAGE) -> jax.Array:
  """The table a text-space model reads (see module docstring); row 0 stays zero."""
  if mode not in TABLE_TRANSFORMS:
    raise errors.ConfigError(f"config.model.table_transform must be one of {TABLE_TRANSFORMS}, got {mode!r}")
  table_NxH = jax.lax.stop_gradient(table_NxH).astype(jnp.float32)
  if mode == "none":
    return table_NxH
  centred, real_N, count = _centred_rows(table_NxH)
  if mode == "standardize":
    var_H = jnp.sum(jnp.square(centred), axis=0) / count
    centred = centred / jnp.sqrt(var_H + _VARIANCE_FLOOR)
  elif mode != "center":
    cov_HxH = centred.T @ centred / count
    rho = whitening_shrinkage(table_NxH, mode, shrinkage, moments=(centred, cov_HxH, count))
    eigvals_H, eigvecs_HxH = jnp.linalg.eigh(cov_HxH)
    eigvals_H = jnp.maximum(eigvals_H, 0.0)
    # (1 - rho) (C + eps I) + rho mu I: for 'whiten', (C + s mu I + eps I) / (1 + s); rho 1 is centring.
    shrunk_H = (1.0 - rho) * (eigvals_H + _VARIANCE_FLOOR) + rho * jnp.mean(eigvals_H)
    shrunk_H = jnp.maximum(shrunk_H, 1e-30)
    centred = centred @ (eigvecs_HxH / jnp.sqrt(shrunk_H))
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
