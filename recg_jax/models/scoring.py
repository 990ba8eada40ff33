"""How a user's model output is scored against item vectors: one matrix product, or a multi-interest
aggregate over the user's history rows. Evaluation (evaluate.py) and serving (serving/topk.py) both score
through score_matrix, so a served list ranks items exactly as evaluation ranks a target.

A scorer is a tuple (Recommender.scorer): ('dot',) for one user vector per user, ('max',) or
('softmax', tau) for text_knn's aggregates over the history, whose user output is [B, T, D + 1]: every
history row with its log recency weight in the last column (-inf at padding; text_space.history_rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DOT = ("dot",)


def is_dot(scorer: tuple) -> bool:
  """One vector per user: score = <user, item>, so users can be exported as vectors."""
  return tuple(scorer)[0] == "dot"


def score_matrix(user, items_NxD: jax.Array, scorer: tuple, precision) -> jax.Array:
  """scores_bxN of a block of users, float32.

  ('dot',): user_bxD @ items^T. ('max',): the best of the history rows' dot products with the item.
  ('softmax', tau): tau * log sum_t w_t exp(dot_t / tau), a soft maximum weighted by recency. The
  aggregates scan over T, so memory stays that of one [b, N] dot product.
  """
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
