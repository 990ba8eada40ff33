"""How a user's model output is scored against item vectors: one matrix product, a multi-interest
aggregate over the user's history rows, or a weighted sum of such parts. Evaluation (evaluate.py) and
serving (serving/topk.py) both score through score_matrix, so a served list ranks items exactly as
evaluation ranks a target.

A scorer is a hashable tuple:
  ('dot',)                 one user vector per user: score = <user, item>.
  ('max',)                 text_knn's multi-interest aggregates over the history, whose user output is
  ('softmax', tau)         [B, T, D + 1]: every history row with its log recency weight in the last
                           column (-inf at padding; text_space.history_rows).
  ('fuse', parts, weights, standardize)
                           a hybrid: parts is a tuple of scorers, the user output and the item vectors
                           are tuples with one entry per part, and the score is sum_p weights[p] * s_p,
                           each part's scores s_p first standardised per user (z-scores over the real
                           items, columns 1.., column 0 being the padding item) when `standardize`.
                           Standardised parts make the weights comparable whatever each part's scale;
                           a part's per-user mean shifts every item of that user alike, so a fused
                           ranking depends only on the weights and each part's per-user spread.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

DOT = ("dot",)
# A part's per-user standard deviation below this counts as zero (a constant score row): the part then
# adds nothing instead of dividing by zero.
_MIN_STD = 1e-12


def is_dot(scorer: tuple) -> bool:
  """One vector per user: score = <user, item>, so users can be exported as vectors."""
  return tuple(scorer)[0] == "dot"


def is_fused(scorer: tuple) -> bool:
  return tuple(scorer)[0] == "fuse"


def fuse(parts: Sequence[tuple], weights: Sequence[float], standardize: bool) -> tuple:
  """The scorer of a weighted sum of parts (see the module docstring)."""
  parts = tuple(tuple(p) for p in parts)
  weights = tuple(float(w) for w in weights)
  if len(parts) != len(weights) or not parts:
    raise ValueError(f"a fused scorer needs one weight per part, got {len(parts)} parts, {weights}")
  return ("fuse", parts, weights, bool(standardize))


def standardize_rows(scores_bxN: jax.Array) -> jax.Array:
  """Per row: (s - mean) / std over columns 1.. (column 0, the padding item, is left out of both)."""
  real_N = jnp.arange(scores_bxN.shape[1]) > 0
  count = jnp.maximum(scores_bxN.shape[1] - 1, 1)
  mean_b1 = jnp.sum(jnp.where(real_N, scores_bxN, 0.0), axis=1, keepdims=True) / count
  centred = scores_bxN - mean_b1
  var_b1 = jnp.sum(jnp.where(real_N, jnp.square(centred), 0.0), axis=1, keepdims=True) / count
  std_b1 = jnp.sqrt(var_b1)
  return jnp.where(std_b1 > _MIN_STD, centred / jnp.maximum(std_b1, _MIN_STD), 0.0)


def part_matrices(user, items, scorer: tuple, precision) -> list[jax.Array]:
  """The [b, N] score matrix of every part of a fused scorer, standardised if it says so."""
  _, parts, _, standardize = scorer
  out = []
  for part, user_p, items_p in zip(parts, user, items):
    s = score_matrix(user_p, items_p, part, precision)
    out.append(standardize_rows(s) if standardize else s)
  return out


def score_matrix(user, items_NxD, scorer: tuple, precision) -> jax.Array:
  """scores_bxN of a block of users, float32.

  ('dot',): user_bxD @ items^T. ('max',): the best of the history rows' dot products with the item.
  ('softmax', tau): tau * log sum_t w_t exp(dot_t / tau), a soft maximum weighted by recency. The
  aggregates scan over T, so memory stays that of one [b, N] dot product. ('fuse', ...): the weighted sum
  of its parts' matrices (part_matrices).
  """
  if is_fused(scorer):
    mats = part_matrices(user, items_NxD, scorer, precision)
    return sum(w * m for w, m in zip(scorer[2], mats))
  dot = lambda u_bxD: jax.lax.dot_general(
      u_bxD, items_NxD, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
  )
  if is_dot(scorer):
    return dot(user)
  rows_TxbxD, log_w_Txb = jnp.swapaxes(user[..., :-1], 0, 1), jnp.swapaxes(user[..., -1], 0, 1)

  def step(acc_bxN, xs):
    rows_bxD, log_w_b = xs
    s_bxN = dot(rows_bxD)
    if scorer[0] == "max":
      return jnp.where(jnp.isfinite(log_w_b)[:, None], jnp.maximum(acc_bxN, s_bxN), acc_bxN), None
    return jnp.logaddexp(acc_bxN, log_w_b[:, None] + s_bxN / scorer[1]), None

  init = jnp.full((user.shape[0], items_NxD.shape[0]), -jnp.inf, jnp.float32)
  acc_bxN, _ = jax.lax.scan(step, init, (rows_TxbxD, log_w_Txb))
  return acc_bxN if scorer[0] == "max" else scorer[1] * acc_bxN


def user_shape_ok(user, items, scorer: tuple, batch: int, width: int) -> bool:
  """Whether a user output has the shape `scorer` scores against `items` (a batch of inputs `width`
  wide): [batch, D] for 'dot', [batch, width, D + 1] for the aggregates, a tuple of parts for 'fuse'."""
  if is_fused(scorer):
    return (
        isinstance(user, (tuple, list))
        and len(user) == len(scorer[1]) == len(items)
        and all(user_shape_ok(u, i, p, batch, width) for u, i, p in zip(user, items, scorer[1]))
    )
  d = items.shape[1]
  want = (batch, d) if is_dot(scorer) else (batch, width, d + 1)
  return tuple(user.shape) == want


def weight_grid(weight_grid, scorer: tuple) -> tuple | None:
  """A weight grid as a hashable tuple of tuples (checked against the scorer), or None."""
  if weight_grid is None:
    return None
  if not is_fused(scorer):
    raise ValueError(f"a weight grid needs a fused scorer, got {scorer[0]!r}")
  return tuple(tuple(float(w) for w in row) for row in weight_grid)


def check_user_shape(user, items, scorer: tuple, batch: int, width: int) -> None:
  """Raises ValueError unless user_shape_ok."""
  if not user_shape_ok(user, items, scorer, batch, width):
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
    raise ValueError(
        f"user_fn returned shape {shapes(user)}, which scorer {scorer[0]!r} cannot score against item "
        f"vectors {shapes(items)} ([{batch}, D] per user vector; [{batch}, {width}, D + 1] per history)"
    )
