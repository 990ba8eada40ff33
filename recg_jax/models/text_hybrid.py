"""What the recommenders that join text and item ids read of a domain's frozen text table.

- `text_coordinates(table_NxH, dims, scale, shrinkage)`: every item's coordinates along the domain's `dims`
  leading principal directions, each divided by the square root of its variance (shrunk as
  text_space's whitening shrinks it), times `scale`: the domain's whitened text embeddings reduced to
  d = dims, an [N, d] table whose columns are uncorrelated with variance scale^2 over the domain's items,
  the leading columns the directions in which the items' texts differ most. Variant 'text_id'
  (models/heads.py) starts its item vectors there: trainable everywhere (text-initialised ids), or frozen
  in the leading columns with ids learned in the others (AlphaFuse's construction, Hu et al., SIGIR 2025).
  Reads only the domain's own rows; row 0 (padding) stays 0.
- `prefix_knn_scores(seq_BxL, table_NxH, items_NxH, decay, aggregate, temperature)`: text_knn's score of
  every item at every history prefix, [B, L, N]: at position t, the score text_knn gives each item for the
  history seq[:, :t+1] (models/text_space.py, models/scoring.py); causal by construction. The 'ids on top
  of text' model trains on it as a fixed logit offset.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from recg_jax import errors
from recg_jax.models import text_space

# Added to every variance before dividing by its square root (as text_space's whitening floor).
_VARIANCE_FLOOR = 1e-6


def text_coordinates(
    table_NxH: np.ndarray, dims: int, scale: float = 1.0, shrinkage: float = 0.1
) -> np.ndarray:
  """[N, dims] float32: the real rows' (1..N-1) centred coordinates along their covariance's leading `dims`
  eigenvectors, each over sqrt(its eigenvalue + shrinkage * mean eigenvalue), times `scale`; row 0 zero."""
  table = np.asarray(table_NxH, np.float64)
  n, width = table.shape
  if not 0 < int(dims) <= width:
    raise errors.ConfigError(
        f"config.model.hidden_dim={dims}: the text coordinates of variant 'text_id' need 0 < hidden_dim <= "
        f"the text table's width {width}"
    )
  if not scale > 0 or not shrinkage >= 0:
    raise errors.ConfigError(
        f"config.model.text_id_scale must be > 0 and config.model.whiten_shrinkage >= 0, got {scale}, "
        f"{shrinkage}"
    )
  rows = table[1:]
  if len(rows) < 2:
    raise errors.ConfigError(f"text coordinates need at least 2 items, got {len(rows)}")
  centred = rows - rows.mean(axis=0)
  eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(rows))
  order = np.argsort(eigvals)[::-1][: int(dims)]
  eigvals = np.maximum(eigvals, 0.0)
  floor = float(shrinkage) * float(np.mean(eigvals)) + _VARIANCE_FLOOR
  # Each eigenvector's sign is arbitrary (eigh's); fix it so that the coordinates do not depend on it.
  vecs = eigvecs[:, order] * np.where(eigvecs[:, order].sum(axis=0) < 0, -1.0, 1.0)
  coords = centred @ (vecs / np.sqrt(eigvals[order] + floor)) * float(scale)
  out = np.zeros((n, int(dims)), np.float32)
  out[1:] = coords
  return out


def prefix_knn_scores(
    seq_BxL: jax.Array,
    table_NxH: jax.Array,
    items_NxH: jax.Array,
    decay: float,
    aggregate: str,
    temperature: float,
) -> jax.Array:
  """scores_BxLxN: text_knn's score of every item (rows of items_NxH) for every prefix seq[:, :t+1].

  'mean': <recency-weighted mean of the prefix's rows, item>. 'softmax': temperature * log sum_s w_ts
  exp(<e_s, item> / temperature) over the prefix's items s, w_ts = decay^(t-s) normalised over the
  prefix (models/scoring.py's soft maximum at every position); 'max': the best <e_s, item> of the prefix.
  One scan over positions keeps a [B, N] running aggregate: memory is that of the [B, L, N] result. A
  position without a real item so far scores 0.
  """
  valid_BxL = seq_BxL > 0
  if aggregate == "mean":
    mean_BxLxH = text_space.history_mean_positions(seq_BxL, table_NxH, decay)
    return jnp.einsum("blh,nh->bln", mean_BxLxH, items_NxH)
  if aggregate not in ("max", "softmax"):
    raise errors.ConfigError(f"config.model.knn_aggregate must be mean, max or softmax, got {aggregate!r}")
  rows_BxLxH = jnp.take(table_NxH, seq_BxL.astype(jnp.int32), axis=0, mode="clip")
  dots_LxBxN = jnp.einsum("blh,nh->lbn", rows_BxLxH, items_NxH)
  log_decay = jnp.log(jnp.maximum(jnp.float32(decay), 1e-30))
  tau = jnp.float32(temperature)

  def step(carry, xs):
    acc_BxN, log_norm_B = carry
    dots_BxN, valid_B = xs
    if aggregate == "max":
      acc_BxN = jnp.where(valid_B[:, None], jnp.maximum(acc_BxN, dots_BxN), acc_BxN)
      return (acc_BxN, log_norm_B), jnp.where(jnp.isfinite(acc_BxN), acc_BxN, 0.0)
    # Every earlier item ages by one position: its weight is multiplied by decay (decay 0 forgets it).
    aged_BxN = acc_BxN + log_decay if decay > 0 else jnp.full_like(acc_BxN, -jnp.inf)
    aged_norm_B = log_norm_B + log_decay if decay > 0 else jnp.full_like(log_norm_B, -jnp.inf)
    acc_BxN = jnp.where(valid_B[:, None], jnp.logaddexp(aged_BxN, dots_BxN / tau), aged_BxN)
    log_norm_B = jnp.where(valid_B, jnp.logaddexp(aged_norm_B, 0.0), aged_norm_B)
    score_BxN = tau * (acc_BxN - log_norm_B[:, None])
    return (acc_BxN, log_norm_B), jnp.where(jnp.isfinite(log_norm_B)[:, None], score_BxN, 0.0)

  b, n = seq_BxL.shape[0], items_NxH.shape[0]
  init = (jnp.full((b, n), -jnp.inf, jnp.float32), jnp.full((b,), -jnp.inf, jnp.float32))
  _, scores_LxBxN = jax.lax.scan(step, init, (dots_LxBxN.astype(jnp.float32), valid_BxL.T))
  return jnp.swapaxes(scores_LxBxN, 0, 1)
