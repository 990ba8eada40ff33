"""Top-k items per user on device, one block of the catalogue at a time.

`blocked_top_k` scores a batch of users against the catalogue in blocks of R rows (lax.scan over the
blocks): each step takes one [B, R] score matrix, removes the padding rows and each user's excluded rows,
keeps the block's best k (lax.top_k) and merges them with the best k so far (lax.top_k over 2k). The
device never holds more than a [B, R] score matrix, however large the catalogue. `full_top_k` is the
naive form, one [B, N] matrix and one lax.top_k, kept as the reference and the benchmark's baseline.
Users are scored as evaluation scores them (models/scoring.py): one vector per user (user_BxD, the default
scorer ('dot',)), or their history rows under a multi-interest scorer (user_BxTx(D+1)).

Both order by score, then by row (lax.top_k puts the lower index first among equal values, and the
running best always holds rows of earlier blocks), so the two agree exactly on ties. Scores are
<user, item> in float32 at the given matmul precision, as evaluation computes them. A slot with no
candidate left (a user whose history covers all but fewer than k items) has score -inf and row 0.

Rows: item vectors are [N+1, D] with row 0 the padding item (never recommended); rows 1..num_items are
items. Excluded rows: hist_BxW holds, per user, the rows to leave out (0 = nothing).
"""

from __future__ import annotations

import collections
import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from recg_jax.models import scoring

# Batches dispatched ahead of the one being read back: device work overlaps host batching.
_IN_FLIGHT = 2


def pad_blocks(items_NxD: np.ndarray, block_rows: int) -> np.ndarray:
  """items_NxD (row 0 = padding) as [M, R, D] blocks of R rows, the last one padded with zero rows."""
  block_rows = int(block_rows)
  if block_rows < 1:
    raise ValueError(f"block rows must be >= 1, got {block_rows}")
  n, d = items_NxD.shape
  m = -(-n // block_rows)
  out = np.zeros((m * block_rows, d), np.float32)
  out[:n] = items_NxD
  return out.reshape(m, block_rows, d)


def _scores(user, items_RxD, precision: str, scorer: tuple) -> jax.Array:
  as_f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
  return scoring.score_matrix(as_f32(user), as_f32(items_RxD), scorer, precision)


def _masked(scores_BxR: jax.Array, start: jax.Array, num_items: jax.Array, hist_BxW: jax.Array) -> jax.Array:
  """Scores of rows start..start+R-1 with the padding rows and each row's excluded rows at -inf."""
  b, r = scores_BxR.shape
  rows_R = start + jnp.arange(r, dtype=jnp.int32)
  scores_BxR = jnp.where(((rows_R >= 1) & (rows_R <= num_items))[None, :], scores_BxR, -jnp.inf)
  local_BxW = hist_BxW - start
  # Rows outside this block go to column r, which mode='drop' ignores (a negative index would wrap).
  local_BxW = jnp.where((local_BxW >= 0) & (local_BxW < r), local_BxW, r)
  return scores_BxR.at[jnp.arange(b)[:, None], local_BxW].set(-jnp.inf, mode="drop")


@functools.partial(jax.jit, static_argnames=("k", "precision", "scorer"))
def blocked_top_k(
    user_BxD: jax.Array,
    blocks_MxRxD: jax.Array,
    hist_BxW: jax.Array,
    num_items: jax.Array,
    *,
    k: int,
    precision: str = "highest",
    scorer: tuple = scoring.DOT,
) -> tuple[jax.Array, jax.Array]:
  """(scores_Bxk, rows_Bxk) of the k best rows per user; see the module docstring."""
  b = user_BxD.shape[0]
  m, r, _ = blocks_MxRxD.shape
  if k > m * r:
    raise ValueError(f"k={k} exceeds the {m * r} rows of the blocked catalogue")
  block_k = min(k, r)
  hist_BxW = hist_BxW.astype(jnp.int32)

  def step(carry, block):
    best_s_Bxk, best_rows_Bxk = carry
    items_RxD, start = block
    scores_BxR = _masked(_scores(user_BxD, items_RxD, precision, scorer), start, num_items, hist_BxW)
    s_Bxk, cols_Bxk = jax.lax.top_k(scores_BxR, block_k)
    both_s = jnp.concatenate([best_s_Bxk, s_Bxk], axis=1)
    both_rows = jnp.concatenate([best_rows_Bxk, cols_Bxk.astype(jnp.int32) + start], axis=1)
    top_s, pos = jax.lax.top_k(both_s, k)
    return (top_s, jnp.take_along_axis(both_rows, pos, axis=1)), None

  init = (jnp.full((b, k), -jnp.inf, jnp.float32), jnp.zeros((b, k), jnp.int32))
  starts_M = jnp.arange(m, dtype=jnp.int32) * r
  (scores, rows), _ = jax.lax.scan(step, init, (blocks_MxRxD, starts_M))
  return scores, jnp.where(scores > -jnp.inf, rows, 0)


@functools.partial(jax.jit, static_argnames=("k", "precision", "scorer"))
def full_top_k(
    user_BxD: jax.Array,
    items_NxD: jax.Array,
    hist_BxW: jax.Array,
    num_items: jax.Array,
    *,
    k: int,
    precision: str = "highest",
    scorer: tuple = scoring.DOT,
) -> tuple[jax.Array, jax.Array]:
  """blocked_top_k with the whole catalogue as one [B, N] score matrix (the naive form)."""
  scores = _masked(
      _scores(user_BxD, items_NxD, precision, scorer), jnp.int32(0), num_items, hist_BxW.astype(jnp.int32)
  )
  top_s, rows = jax.lax.top_k(scores, k)
  return top_s, jnp.where(top_s > -jnp.inf, rows.astype(jnp.int32), 0)


def rank(
    batches: Iterable[tuple[np.ndarray, int, jax.Array, np.ndarray]],
    blocks_MxRxD: jax.Array,
    num_items: int,
    num_users: int,
    k: int,
    precision: str = "highest",
    progress: bool = False,
    scorer: tuple = scoring.DOT,
) -> tuple[np.ndarray, np.ndarray]:
  """blocked_top_k over fixed-size batches of users: (scores_UxK, rows_UxK) on the host.

  batches: (users_B, real, user_BxD, hist_BxW) per batch: which users its rows are (a padded batch repeats
    its last user), how many rows are real, their vectors and their excluded rows. Every batch has one
    shape, so one program serves them all.
  blocks_MxRxD: the item vectors in blocks (pad_blocks); for a fused scorer, whose parts are standardised
    over the whole catalogue, the tuple of its parts' [N+1, D] item vectors, scored at once (full_top_k).
  """
  top_k = full_top_k if scoring.is_fused(scorer) else blocked_top_k
  rows_UxK = np.zeros((num_users, k), np.int32)
  scores_UxK = np.full((num_users, k), -np.inf, np.float32)
  count = jnp.int32(num_items)
  pending: collections.deque = collections.deque()
  bar = tqdm.tqdm(
      total=num_users,
      unit="user",
      desc="recommend",
      disable=not progress,
      dynamic_ncols=True,
      mininterval=1.0,
  )

  def drain_one():
    users_B, real, (s_Bxk, r_Bxk) = pending.popleft()
    scores_UxK[users_B[:real]] = np.asarray(s_Bxk)[:real]
    rows_UxK[users_B[:real]] = np.asarray(r_Bxk)[:real]
    bar.update(real)

  for users_B, real, user_BxD, hist_BxW in batches:
    pending.append(
        (
            users_B,
            real,
            top_k(
                user_BxD,
                blocks_MxRxD,
                jax.device_put(hist_BxW),
                count,
                k=k,
                precision=precision,
                scorer=tuple(scorer),
            ),
        )
    )
    if len(pending) > _IN_FLIGHT:
      drain_one()
  while pending:
    drain_one()
  bar.close()
  return scores_UxK, rows_UxK
