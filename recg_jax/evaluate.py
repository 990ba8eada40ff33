"""Ranking evaluation: Recall@K and NDCG@K under the `full` and `sampled<N>` protocols (docs/method.md).

Rank of the target (0-based, fractional):

  rank = #{c in C, c != t : s_c > s_t} + 0.5 * #{c in C, c != t : s_c == s_t}     (C: candidates, t: target)

so it never depends on where the target sits in the candidate list, and a tie costs half a place. The
metrics use this rank in the usual one-target formulas:

  Recall@K = 1[rank < K]                 NDCG@K = 1[rank < K] / log2(rank + 2)

(the ideal DCG of a single relevant item is 1). A target tied with one other candidate at the top gets
rank 0.5 and NDCG 1/log2(2.5).

Protocols:
  full        every real item 1..I is a candidate (padding 0 never is). With eval.mask_history the items
              of the input history -- every item of the user's sequence before the target -- are removed
              from the candidates, except the target itself: an item bought again is still a hit. Without
              it nothing is removed.
  sampled<N>  the target against N negatives drawn once per user (seeded) from the items outside the
              user's whole sequence (eval_negatives.py). Their scores are gathered from the same
              full score matrix, so the model runs once per user for both protocols.

Users are grouped by input length into eval.length_buckets (padded widths, capped at the split's input
length L, which is always one of them; () = one group of width L) and each group is cut into fixed-size
batches of eval.batch_size (its last batch padded with repeated users whose ranks are dropped). A batch of
width W runs user_fn on the last W columns of its right-aligned inputs, which hold every real item of
users with at most W of them: short histories are not run through the model at full width. user_fn is
called once per width shape (one compile each), the scorer compiles once. Ranks come back in user order,
the same as without buckets as long as user_fn gives a history the same vector at every width (the
Recommender counts positions from the right). Inside a batch, eval.score_block_rows users per
device are scored at a time: a [rows, I+1] float32 matrix, cache-sized on CPU; eval.max_scores_per_block
caps rows * (I+1) for large catalogues. The work is split over users, never over items, so a target and
all its competitors always come from one matrix product and ties are exact.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recg_jax import compile_stats
from recg_jax import distributed
from recg_jax import errors
from recg_jax import eval_negatives as negatives_lib
from recg_jax import input_pipeline
from recg_jax.data.errors import DataError
from recg_jax.data.types import DomainData
from recg_jax.data.types import EvalSplit
from recg_jax.models import recommender as recommender_lib
from recg_jax.models import scoring

_SAMPLED_RE = re.compile(r"^sampled(\d*)$")
_PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "high": jax.lax.Precision.HIGH,
    "default": jax.lax.Precision.DEFAULT,
}


# ----------------------------------------------------------------------------------------------------------
# Ranks and metrics.


def ranks_from_scores(scores_BxC: jax.Array, target_col_B: jax.Array, valid_BxC: jax.Array) -> jax.Array:
  """0-based half-tie rank of each row's target column among the row's valid columns.

  Args:
    scores_BxC: candidate scores.
    target_col_B: int column of the target in each row.
    valid_BxC: bool, which columns compete. The target column itself never counts against itself, valid
      or not.

  Returns:
    ranks_B float32: #valid others strictly higher + 0.5 * #valid others tied. NaN where the target's
    score or any valid score of the row is NaN (a broken model must not look perfect).
  """
  scores_BxC = jnp.asarray(scores_BxC)
  target_col_B = jnp.asarray(target_col_B, jnp.int32)
  valid_BxC = jnp.asarray(valid_BxC, bool)
  cols_C = jnp.arange(scores_BxC.shape[1], dtype=jnp.int32)
  others_BxC = valid_BxC & (cols_C[None, :] != target_col_B[:, None])
  target_B1 = jnp.take_along_axis(scores_BxC, target_col_B[:, None], axis=1)
  # Twice the rank, as one integer reduction: 2 per strictly higher score, 1 per tie.
  twice_B = jnp.sum(
      jnp.where(others_BxC & (scores_BxC > target_B1), 2, 0)
      + jnp.where(others_BxC & (scores_BxC == target_B1), 1, 0),
      axis=1,
      dtype=jnp.int32,
  )
  has_nan_B = jnp.any(others_BxC & jnp.isnan(scores_BxC), axis=1) | jnp.isnan(target_B1[:, 0])
  return jnp.where(has_nan_B, jnp.nan, 0.5 * twice_B.astype(jnp.float32))


def per_user_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
  """Each user's Recall@K and NDCG@K from 0-based (half-tie) ranks, NaN where the rank is NaN."""
  ranks = np.asarray(ranks, np.float64)
  if ranks.ndim != 1 or ranks.size == 0:
    raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
  if np.any(ranks < 0):
    raise ValueError(f"ranks must be >= 0, got min {np.nanmin(ranks)}")
  nan, out = np.isnan(ranks), {}
  gain = 1.0 / np.log2(np.where(nan, 0.0, ranks) + 2.0)
  for k in ks:
    if int(k) != k or k <= 0:
      raise errors.ConfigError(f"eval.ks must hold positive integers, got {k!r}")
    out[f"recall@{int(k)}"] = np.where(nan, np.nan, (ranks < k).astype(np.float64))
    out[f"ndcg@{int(k)}"] = np.where(nan, np.nan, np.where(ranks < k, gain, 0.0))
  return out


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
  """Mean Recall@K and NDCG@K over users from 0-based (half-tie) ranks; NaN if any rank is NaN."""
  return {name: float(values.mean()) for name, values in per_user_metrics(ranks, ks).items()}


# ----------------------------------------------------------------------------------------------------------
# Batched evaluation.


def parse_protocols(protocols: Sequence[str], num_sampled: int) -> tuple[bool, str | None]:
  """Returns (run full, name of the sampled protocol or None)."""
  full, sampled = False, None
  for p in protocols:
    if p == "full":
      full = True
      continue
    m = _SAMPLED_RE.match(p)
    if not m:
      raise errors.ConfigError(f"eval.protocols: unknown protocol {p!r}; expected 'full' or 'sampled<N>'")
    if m.group(1) and int(m.group(1)) != num_sampled:
      raise errors.ConfigError(
          f"eval.protocols names {p!r} but eval.num_sampled_negatives={num_sampled}; make "
          f"them agree (e.g. 'sampled{num_sampled}')"
      )
    sampled = f"sampled{num_sampled}"
  if not full and sampled is None:
    raise errors.ConfigError("eval.protocols is empty: name at least one of 'full', 'sampled<N>'")
  return full, sampled


def target_positions(split: EvalSplit, domain: DomainData) -> np.ndarray:
  """[U] index into domain.items of each user's target: the last (test) or second-to-last (valid) item.

  When both are the same item the choice does not change the masked set (the target is never masked), so
  the last one is taken.
  """
  targets = np.asarray(split.targets_U)
  if targets.shape != (domain.num_users,) or split.inputs_UxL.shape[0] != domain.num_users:
    raise ValueError(
        f"split of domain {domain.name!r} has {targets.shape} targets and inputs "
        f"{split.inputs_UxL.shape}; expected one row per user ({domain.num_users})"
    )
  if np.any(domain.lengths < 2):
    raise DataError(f"domain {domain.name!r}: every user needs at least 2 items for leave-one-out")
  last = domain.offsets[1:] - 1
  pos = np.where(domain.items[last] == targets, last, last - 1)
  bad = np.nonzero(domain.items[pos] != targets)[0]
  if bad.size:
    u = int(bad[0])
    raise ValueError(
        f"domain {domain.name!r}: target {targets[u]} of user index {u} is neither the last "
        f"nor the second-to-last item of the user's sequence ({bad.size} users): the split "
        f"was not built from this domain by leave_one_out"
    )
  return pos.astype(np.int64)


def input_lengths(inputs_UxL: np.ndarray) -> np.ndarray:
  """[U] number of real items of right-aligned rows (everything from the first non-zero column on)."""
  real_UxL = np.asarray(inputs_UxL) != 0
  first_U = np.where(real_UxL.any(axis=1), real_UxL.argmax(axis=1), real_UxL.shape[1])
  return real_UxL.shape[1] - first_U


def length_groups(inputs_UxL: np.ndarray, length_buckets: Sequence[int]) -> list[tuple[int, np.ndarray]]:
  """[(width, users ascending)] per non-empty bucket: each user in the narrowest width holding its input.

  Widths are `length_buckets` capped at L = inputs_UxL.shape[1], plus L itself (eval.length_buckets).
  """
  widths = np.asarray(
      input_pipeline.bucket_widths(length_buckets, inputs_UxL.shape[1], field="eval.length_buckets")
  )
  bucket_U = np.searchsorted(widths, input_lengths(inputs_UxL), side="left")
  return [(int(w), np.flatnonzero(bucket_U == b)) for b, w in enumerate(widths) if np.any(bucket_U == b)]


def _history_rows(domain: DomainData, users_B: np.ndarray, end_B: np.ndarray, width: int) -> np.ndarray:
  """[B, width] int32 items before each user's target, left-aligned, 0-padded (0 is never a candidate)."""
  start_B = domain.offsets[users_B]
  cols = np.arange(width)[None, :]
  idx = start_B[:, None] + cols
  inside = idx < end_B[:, None]
  return np.where(inside, domain.items[np.minimum(idx, len(domain.items) - 1)], 0).astype(np.int32)


def _full_ranks(scores_BxN: jax.Array, target_B: jax.Array, hist_BxW: jax.Array | None) -> jax.Array:
  """`ranks_from_scores` over items 1..N-1 minus each row's history (the target excepted), in one pass.

  Rather than scattering the mask into the [B, N] matrix (another pass over it), the counts run over every
  column and the excluded columns -- padding 0 and the distinct history items other than the target --
  are then taken back out through a [B, W] gather.
  """
  target_B1 = jnp.take_along_axis(scores_BxN, target_B[:, None], axis=1)
  # Twice the rank, in one fused integer reduction over the row: 2 per higher score, 1 per tie. The target's
  # own column is left out by its index, not by assuming it ties with itself: XLA may compute an
  # elementwise score (a fused scorer's z-scores) once inside this reduction and again for the gathered
  # target, each with its own rounding. The NaN check is a max, which propagates NaN.
  other_BxN = jnp.arange(scores_BxN.shape[1], dtype=target_B.dtype)[None, :] != target_B[:, None]
  twice_B = jnp.sum(
      jnp.where(other_BxN & (scores_BxN > target_B1), 2, 0)
      + jnp.where(other_BxN & (scores_BxN == target_B1), 1, 0),
      axis=1,
      dtype=jnp.int32,
  )
  has_nan_B = jnp.isnan(jnp.max(scores_BxN, axis=1)) | jnp.isnan(target_B1[:, 0])
  excluded_BxE = jnp.zeros_like(target_B)[:, None]  # padding column
  keep_BxE = jnp.ones_like(excluded_BxE, bool)  # *_like: keeps the batch sharding of explicit meshes
  if hist_BxW is not None:
    sorted_BxW = jnp.sort(hist_BxW, axis=1)
    repeat_BxW = jnp.concatenate(
        [jnp.zeros_like(sorted_BxW[:, :1], bool), sorted_BxW[:, 1:] == sorted_BxW[:, :-1]], axis=1
    )
    keep_hist_BxW = (sorted_BxW != 0) & (sorted_BxW != target_B[:, None]) & ~repeat_BxW
    excluded_BxE = jnp.concatenate([excluded_BxE, sorted_BxW], axis=1)
    keep_BxE = jnp.concatenate([keep_BxE, keep_hist_BxW], axis=1)
  ex_BxE = jnp.take_along_axis(scores_BxN, excluded_BxE, axis=1)
  twice_B -= jnp.sum(
      jnp.where(keep_BxE & (ex_BxE > target_B1), 2, 0) + jnp.where(keep_BxE & (ex_BxE == target_B1), 1, 0),
      axis=1,
      dtype=jnp.int32,
  )
  return jnp.where(has_nan_B, jnp.nan, 0.5 * twice_B.astype(jnp.float32))


@functools.lru_cache(maxsize=16)
def _ranks_fn(
    full: bool,
    sampled: bool,
    mask: bool,
    precision: str,
    steps: int,
    scorer: tuple = ("dot",),
    weight_grid: tuple | None = None,
):
  """The jitted batch scorer: `steps` blocks of rows, each one matrix product and the ranks of each protocol.

  A batch of B rows is scored `steps` blocks at a time so the [B / steps, N] score matrix stays small
  (cache-sized on CPU, bounded memory on accelerators). Row i * steps + j goes to block j: with the batch
  sharded over devices, every device then holds an equal share of every block and nothing moves.

  With weight_grid (a fused scorer only: K tuples of one weight per part), every part is scored once per
  block and the ranks of each of the K weightings come back as [B, K]: what fitting a fusion's weights
  reads (recg_jax/fusion.py).
  """
  prec = _PRECISIONS[precision]

  def ranks(scores_bxN, target_b, hist_bxW, negs_bxK):
    out = {}
    if sampled:
      # Gathered from the same scores: negatives lie outside the sequence, the target is never masked.
      cand_bxC = jnp.concatenate([target_b[:, None], negs_bxK], axis=1)
      out["sampled"] = ranks_from_scores(
          jnp.take_along_axis(scores_bxN, cand_bxC, axis=1),
          jnp.zeros_like(target_b),
          jnp.ones_like(cand_bxC, bool),
      )
    if full:
      out["full"] = _full_ranks(scores_bxN, target_b, hist_bxW if mask else None)
    return out

  def block(user_bxD, items_NxD, target_b, hist_bxW, negs_bxK):
    if weight_grid is None:
      return ranks(scoring.score_matrix(user_bxD, items_NxD, scorer, prec), target_b, hist_bxW, negs_bxK)
    mats = scoring.part_matrices(user_bxD, items_NxD, scorer, prec)

    def one(w_P):
      return ranks(sum(w_P[p] * m for p, m in enumerate(mats)), target_b, hist_bxW, negs_bxK)

    out_K = jax.lax.map(one, jnp.asarray(weight_grid, jnp.float32))
    return {name: r.T for name, r in out_K.items()}  # [K, b] -> [b, K]

  def fn(user_BxD, items_NxD, target_B, hist_BxW, negs_BxK):
    as_f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
    user_BxD, items_NxD = as_f32(user_BxD), as_f32(items_NxD)
    if steps == 1:
      return block(user_BxD, items_NxD, target_B, hist_BxW, negs_BxK)
    rows = target_B.shape[0] // steps
    split = lambda x: jnp.swapaxes(x.reshape((rows, steps) + x.shape[1:]), 0, 1)
    merge = lambda x: jnp.swapaxes(x, 0, 1).reshape((rows * steps,) + x.shape[2:])
    out = jax.lax.map(
        lambda xs: block(xs[0], items_NxD, *xs[1:]),
        jax.tree.map(split, (user_BxD, target_B, hist_BxW, negs_BxK)),
    )
    return {name: merge(r) for name, r in out.items()}

  return jax.jit(fn)


def _geometry(
    eval_config: ml_collections.ConfigDict, num_items: int, num_users: int, shards: int
) -> tuple[int, int]:
  """(batch size, scoring steps per batch). The batch is rounded up to steps * block rows * shards."""
  batch = int(eval_config.batch_size)
  if batch <= 0:
    raise errors.ConfigError(f"eval.batch_size must be positive, got {batch}")
  per_device = -(-min(batch, num_users) // shards)  # no point padding a tiny domain up to a large batch
  block = int(eval_config.score_block_rows) or per_device
  cap = int(eval_config.max_scores_per_block)
  if block < 0 or cap < 0:
    raise errors.ConfigError(
        f"eval.score_block_rows ({block}) and eval.max_scores_per_block ({cap}) must be >= 0"
    )
  if cap and block * (num_items + 1) > cap:
    smaller = max(1, cap // (num_items + 1))
    logging.info(
        "eval: %d score rows x %d items exceeds eval.max_scores_per_block=%d; scoring %d rows at a time",
        block,
        num_items + 1,
        cap,
        smaller,
    )
    block = smaller
  block = min(block, per_device)
  steps = -(-per_device // block)
  return steps * block * shards, steps


def user_ranks(
    user_fn: Callable[[jax.Array], jax.Array],
    item_vecs_NxD,
    split: EvalSplit,
    domain: DomainData,
    eval_config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None = None,
    protocols: Sequence[str] | None = None,
    scorer: tuple = ("dot",),
) -> dict[str, np.ndarray]:
  """Per-user 0-based half-tie ranks of the target, {protocol name: ranks_U float32}. Args as `evaluate`."""
  heads = head_ranks(
      lambda seq: {"": user_fn(seq)},
      item_vecs_NxD,
      split,
      domain,
      eval_config,
      mesh=mesh,
      protocols=protocols,
      scorer=scorer,
  )
  return heads[""]


def _check_domain(domain: DomainData, item_vecs_NxD) -> None:
  """Users to rank, and item vectors [I+1, D] (each part's, for a fused scorer's tuple of them)."""
  for part in jax.tree.leaves(item_vecs_NxD):
    _check_items(domain, part)


def _check_items(domain: DomainData, item_vecs_NxD) -> None:
  num_items, num_users = domain.num_items, domain.num_users
  if num_users == 0:
    raise DataError(f"domain {domain.name!r} has no users to evaluate")
  if num_users < jax.process_count():  # a process without users would not know the heads to sum
    raise errors.ConfigError(
        f"domain {domain.name!r} has {num_users} users to evaluate, fewer than the "
        f"{jax.process_count()} processes that share them"
    )
  if item_vecs_NxD.ndim != 2 or item_vecs_NxD.shape[0] != num_items + 1:
    raise ValueError(
        f"item_vecs_NxD has shape {item_vecs_NxD.shape}; domain {domain.name!r} needs "
        f"[{num_items + 1}, D] (row 0 = padding)"
    )


def _placement(
    mesh: jax.sharding.Mesh | None, item_vecs_NxD
) -> tuple[jax.sharding.Mesh | None, int, Any, Callable]:
  """(mesh, shards, items on device, put for user rows): users sharded over the mesh's 'data' axis."""
  if mesh is not None and distributed.multi():
    mesh = distributed.local_mesh()  # each process ranks its own users on its own devices
  if mesh is None:
    # device_put, not jnp.asarray: on numpy input the latter dispatches a conversion op (a few ms each on
    # CPU, once per batch and array: measured 14% of a reduced-size run).
    return None, 1, jax.device_put(item_vecs_NxD), jax.device_put
  if "data" not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no 'data' axis to shard users over")
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  items = jax.device_put(item_vecs_NxD, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return mesh, mesh.shape["data"], items, lambda x: jax.device_put(x, rows)


def _my_groups(inputs_UxL: np.ndarray, length_buckets: Sequence[int]) -> list[tuple[int, np.ndarray]]:
  """length_groups; across processes, each process's block of the users in group order (so that every
  process has some)."""
  groups = length_groups(inputs_UxL, length_buckets)
  if not distributed.multi():
    return groups
  order = np.concatenate([g for _, g in groups])
  mine = np.zeros(len(inputs_UxL), bool)
  mine[order[distributed.process_share(len(order))]] = True
  return [(w, g[mine[g]]) for w, g in groups]


def _collect(pending: list, names: dict[str, str | None], num_users: int) -> dict[str, dict[str, np.ndarray]]:
  """{head: {protocol name: ranks_U}} from the batches' device results (summed over processes); ranks_UxK
  under a weight grid."""
  ranks: dict[str, dict[str, np.ndarray]] = {}
  for real, head, out in pending:
    for key in ("full", "sampled"):  # this order, whatever the scorer's: metric dicts print in it
      if key in out:
        batch_ranks = np.asarray(out[key])
        ranks_U = ranks.setdefault(head, {}).setdefault(
            names[key], np.zeros((num_users,) + batch_ranks.shape[1:], np.float32)
        )
        ranks_U[real] = batch_ranks[: len(real)]
  if distributed.multi():
    # Each process filled its own users and left zeros elsewhere: the sum holds every user's rank. Every
    # process has every head and protocol (the heads come from the model, not from its users).
    ranks = {
        head: {name: distributed.sum_over_processes(r) for name, r in by_name.items()}
        for head, by_name in ranks.items()
    }
  return ranks


def head_ranks(
    user_fn: Callable[[jax.Array], dict[str, jax.Array]],
    item_vecs_NxD,
    split: EvalSplit,
    domain: DomainData,
    eval_config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None = None,
    protocols: Sequence[str] | None = None,
    scorer: tuple = ("dot",),
    weight_grid: Sequence[Sequence[float]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
  """As user_ranks, for a user_fn that returns several user vectors per row ({head: user_BxD}, e.g. with
  and without a final transform): the model runs once per batch and every head is ranked.
  Returns {head: {protocol name: ranks_U}}; with weight_grid (a fused scorer's K weightings of its parts,
  scored from one pass) ranks_UxK."""
  protocols = tuple(eval_config.protocols if protocols is None else protocols)
  num_sampled = int(eval_config.num_sampled_negatives)
  run_full, sampled_name = parse_protocols(protocols, num_sampled)
  mask = bool(eval_config.mask_history) and run_full
  precision = str(eval_config.score_precision)
  if precision not in _PRECISIONS:
    raise errors.ConfigError(f"eval.score_precision={precision!r}: expected one of {tuple(_PRECISIONS)}")
  _check_domain(domain, item_vecs_NxD)
  end_U = target_positions(split, domain)
  targets_U = np.asarray(split.targets_U, np.int32)
  inputs_UxL = np.asarray(split.inputs_UxL, np.int32)
  # One history width for every split of the domain, so valid and test share a compiled shape.
  width = max(1, int(domain.lengths.max()) - 1) if mask else 1
  negs_UxK = (
      negatives_lib.eval_negatives(domain, num_sampled, int(eval_config.seed))
      if sampled_name
      else np.ones((domain.num_users, 1), np.int32)
  )
  mesh, shards, items, put = _placement(mesh, item_vecs_NxD)
  batch, steps = _geometry(eval_config, domain.num_items, domain.num_users, shards)
  ranks_fn = _ranks_fn(
      run_full,
      sampled_name is not None,
      mask,
      precision,
      steps,
      tuple(scorer),
      scoring.weight_grid(weight_grid, scorer),
  )
  max_len = inputs_UxL.shape[1]
  # Under the mesh, so that jitted functions see it (explicit-axes meshes need it to type their shardings).
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    pending = []  # device results; synced once at the end so host batching overlaps device work
    for seq_width, group in _my_groups(inputs_UxL, eval_config.length_buckets):
      for lo in range(0, len(group), batch):
        real = group[lo : lo + batch]
        users_B = np.concatenate([real, np.full(batch - len(real), real[-1])])  # padding rows are dropped
        users_by_head = user_fn(put(inputs_UxL[users_B, max_len - seq_width :]))
        hist_BxW = put(
            _history_rows(domain, users_B, end_U[users_B], width) if mask else np.zeros((batch, 1), np.int32)
        )
        target_B, negs_BxK = put(targets_U[users_B]), put(negs_UxK[users_B])
        for head, user_BxD in users_by_head.items():
          scoring.check_user_shape(user_BxD, items, scorer, batch, seq_width)
          pending.append((real, head, ranks_fn(user_BxD, items, target_B, hist_BxW, negs_BxK)))
  return _collect(pending, {"full": "full", "sampled": sampled_name}, domain.num_users)


def evaluate(
    user_fn: Callable[[jax.Array], jax.Array],
    item_vecs_NxD,
    split: EvalSplit,
    domain: DomainData,
    eval_config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None = None,
    protocols: Sequence[str] | None = None,
    scorer: tuple = ("dot",),
) -> dict[str, float]:
  """Recall@K / NDCG@K of every protocol, averaged over all users of `split`.

  Args:
    user_fn: jitted `seq_BxW -> user_BxD` (right-aligned int32 inputs, see data.types.right_aligned), for
      every width W of eval.length_buckets up to the split's L (the last W columns of the split's rows).
    item_vecs_NxD: scoring vectors of items 0..I (row 0 = padding, never a candidate).
    split: leave_one_out(domain, 'valid' | 'test', L).
    domain: the domain the split was built from (histories for masking and negatives).
    eval_config: the `eval` config section (ks, protocols, batch_size, length_buckets, mask_history,
      num_sampled_negatives, seed, score_precision, score_block_rows, max_scores_per_block).
    mesh: if given, user batches are sharded over its 'data' axis and item vectors replicated.
    protocols: 'full' and/or 'sampled<N>' (N = eval.num_sampled_negatives); default eval.protocols.

  Returns:
    {'full/recall@5': ..., 'full/ndcg@5': ..., 'sampled100/recall@5': ..., ...}, floats; NaN where the
    model produced NaN scores.
  """
  ranks = user_ranks(
      user_fn, item_vecs_NxD, split, domain, eval_config, mesh=mesh, protocols=protocols, scorer=scorer
  )
  return _metrics(ranks, tuple(eval_config.ks))


def evaluate_heads(
    user_fn: Callable[[jax.Array], dict[str, jax.Array]],
    item_vecs_NxD,
    split: EvalSplit,
    domain: DomainData,
    eval_config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None = None,
    protocols: Sequence[str] | None = None,
    scorer: tuple = ("dot",),
) -> dict[str, dict[str, float]]:
  """`evaluate` for a user_fn returning {head: user_BxD}: {head: metrics}, one model pass per batch."""
  ranks = head_ranks(
      user_fn, item_vecs_NxD, split, domain, eval_config, mesh=mesh, protocols=protocols, scorer=scorer
  )
  return {head: _metrics(r, tuple(eval_config.ks)) for head, r in ranks.items()}


def _metrics(ranks: dict[str, np.ndarray], ks: Sequence[int]) -> dict[str, float]:
  return {
      f"{name}/{metric}": value
      for name, ranks_U in ranks.items()
      for metric, value in metrics_from_ranks(ranks_U, ks).items()
  }


# ----------------------------------------------------------------------------------------------------------
# A model's evaluation programs.


@functools.cache
def eval_programs(model: recommender_lib.Recommender) -> tuple[Callable, Callable]:
  """(user_jit(params, table, seq) -> user_BxD, items_jit(params, table) -> items_NxD) of a Recommender.

  user_jit is traced once per input width (one per eval length bucket), items_jit once per table shape,
  in this process: an equal model gets the same jitted functions back.
  """

  def user_fn(params, table, seq):
    compile_stats.TRACE_COUNTS["user_fn"] += 1
    return model.apply({"params": params}, seq, table, False)

  items_jit = jax.jit(
      lambda params, table: model.apply(
          {"params": params}, table, method=recommender_lib.Recommender.item_vectors
      )
  )
  return jax.jit(user_fn), items_jit


def evaluate_split(
    model: recommender_lib.Recommender,
    params,
    table,
    split: EvalSplit,
    domain: DomainData,
    eval_config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None,
) -> dict[str, float]:
  """`evaluate` of a Recommender's parameters with `table` swapped in (its eval_programs)."""
  user_jit, items_jit = eval_programs(model)
  # Across processes, each ranks its own users on its own devices, with local copies of the parameters.
  params, table = distributed.host_copy((params, table))
  return evaluate(
      lambda seq: user_jit(params, table, seq),
      items_jit(params, table),
      split,
      domain,
      eval_config,
      mesh=mesh,
      scorer=model.scorer,
  )
