"""Recommendation losses and on-device negative sampling (docs/method.md step 5).

Shapes: B users in the batch, P target positions per user (all prefixes: P = L; last target: P = 1),
K negatives per position, D = d_l, N = num_items + 1 catalogue rows (row 0 = padding), I = num_items.
mask_BxP marks real (user, position) pairs, as bool or as non-negative float weights (the training
pipeline's 0/1 weights); padded pairs contribute nothing and the means are weighted means over real pairs
(a batch without any real pair gives 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Stands in for "no forbidden item here" in sample_negatives; above any item index.
_NO_ITEM = 1 << 30


def sample_negatives(
    key: jax.Array,
    positives_BxP: jax.Array,
    num_items: int,
    num_negatives: int,
    history_BxL: jax.Array | None = None,
) -> jax.Array:
  """Uniform negatives neg_BxPxK int32 in 1..num_items, outside each user's history and positives.

  The forbidden set of user b is {history_BxL[b]} | {positives_BxP[b]}, ignoring 0 (padding) and values
  outside 1..I. Sampling is exact, in one pass, with no rejection: with f_1 < ... < f_n the user's
  distinct forbidden items, the r-th allowed item (0-based) is r + 1 + #{j : f_j - j <= r} (j 1-based;
  f_j - j counts the allowed items below f_j, and is non-decreasing in j). Drawing r uniformly in
  [0, I - n) therefore draws uniformly from the complement. Cost: a sort of B x (L + P) and a binary
  search per draw. Negatives of one position are drawn with replacement, independently.

  A user whose forbidden set covers the whole catalogue has no valid negative; it then gets item I.
  """
  if positives_BxP.ndim != 2:
    raise ValueError(f"positives_BxP must be [batch, positions], got {positives_BxP.shape}")
  if (isinstance(num_items, int) and num_items < 1) or num_negatives < 1:
    raise ValueError(f"need num_items >= 1 and num_negatives >= 1, got {num_items}, {num_negatives}")
  batch, num_pos = positives_BxP.shape
  forbidden = positives_BxP.astype(jnp.int32)
  if history_BxL is not None:
    if history_BxL.ndim != 2 or history_BxL.shape[0] != batch:
      raise ValueError(f"history_BxL must be [{batch}, L], got {history_BxL.shape}")
    forbidden = jnp.concatenate([history_BxL.astype(jnp.int32), forbidden], axis=1)
  in_range = (forbidden >= 1) & (forbidden <= num_items)
  f_BxM = jnp.sort(jnp.where(in_range, forbidden, _NO_ITEM), axis=1)
  repeat = jnp.concatenate([jnp.zeros((batch, 1), bool), f_BxM[:, 1:] == f_BxM[:, :-1]], axis=1)
  f_BxM = jnp.sort(jnp.where(repeat, _NO_ITEM, f_BxM), axis=1)  # distinct items first, ascending
  num_forbidden_B = jnp.sum(f_BxM < _NO_ITEM, axis=1)
  # Allowed items below each forbidden one (0-based j): f_j - 1 - j. Fillers stay far above any r.
  below_BxM = f_BxM - 1 - jnp.arange(f_BxM.shape[1], dtype=jnp.int32)[None, :]
  allowed_B = jnp.maximum(num_items - num_forbidden_B, 1)
  r_BxPxK = jax.random.randint(
      key, (batch, num_pos, num_negatives), 0, allowed_B[:, None, None], dtype=jnp.int32
  )
  skip_BxPK = jax.vmap(lambda g, r: jnp.searchsorted(g, r, side="right"))(
      below_BxM, r_BxPxK.reshape(batch, -1)
  )
  neg = r_BxPxK + 1 + skip_BxPK.reshape(r_BxPxK.shape).astype(jnp.int32)
  return jnp.minimum(neg, num_items)


def _masked_mean(values_BxP: jax.Array, mask_BxP: jax.Array) -> jax.Array:
  """sum(w * v) / sum(w) over w > 0 (0 when no weight): `where`, not a product, so that values at
  masked pairs (possibly inf) never reach the result or its gradient."""
  w = mask_BxP.astype(values_BxP.dtype)
  total = jnp.sum(jnp.where(w > 0, values_BxP * w, 0.0))
  denom = jnp.sum(jnp.where(w > 0, w, 0.0))
  return total / jnp.where(denom > 0, denom, 1.0)


def bpr_from_scores(pos_BxP: jax.Array, neg_BxPxK: jax.Array, mask_BxP: jax.Array) -> jax.Array:
  """-mean over real (pair, negative) of log sigmoid(pos - neg). Scalar."""
  per_pair_BxP = -jnp.mean(jax.nn.log_sigmoid(pos_BxP[..., None] - neg_BxPxK), axis=-1)
  return _masked_mean(per_pair_BxP, mask_BxP)


def bpr_loss(
    user_BxPxD: jax.Array, pos_vec_BxPxD: jax.Array, neg_vec_BxPxKxD: jax.Array, mask_BxP: jax.Array
) -> jax.Array:
  """BPR (the paper's L_rec): -mean over real (pair, negative) of log sigmoid(<y,pos> - <y,neg>).

  Args:
    user_BxPxD: user vectors y at each target position.
    pos_vec_BxPxD: candidate vectors of the positives (Recommender.item_vectors rows).
    neg_vec_BxPxKxD: candidate vectors of the K negatives of each position.
    mask_BxP: real pairs (bool) or per-pair non-negative weights.
  Returns a float32 scalar.
  """
  pos_BxP = jnp.einsum("bpd,bpd->bp", user_BxPxD, pos_vec_BxPxD)
  neg_BxPxK = jnp.einsum("bpd,bpkd->bpk", user_BxPxD, neg_vec_BxPxKxD)
  return bpr_from_scores(pos_BxP, neg_BxPxK, mask_BxP)


def mask_seen_logits(
    logits_BxPxN: jax.Array,
    inputs_BxL: jax.Array,
    targets_BxP: jax.Array,
    positions_P: jax.Array | None = None,
) -> jax.Array:
  """logits_BxPxN with each position's input-history items, the target excepted, pushed to -inf (or the
  dtype's minimum), as `full` evaluation masks them. With P = L (a target after every input position,
  causal models) position p has seen inputs[:, :p + 1]; with P = 1 (one target per row) the whole input
  row; with positions_P (a slice of a P = L axis: the input positions its P entries stand at) position p
  has seen inputs[:, :positions_P[p] + 1]. Ids outside 1..N-1 (padding, BERT4Rec's mask token) are never
  masked.

  A scatter-add of B x P x L penalties into the logits, rather than a B x P x N mask: the mask's writes and
  selects over the whole catalogue cost as much as the logits themselves (bench/ce_loss_step.py). The add's
  gradient is the identity, and softmax gives a masked logit a zero share, so its item gets no gradient."""
  batch, num_positions, num_rows = logits_BxPxN.shape
  length = inputs_BxL.shape[1]
  items_BxL = jnp.where((inputs_BxL > 0) & (inputs_BxL < num_rows), inputs_BxL, 0).astype(jnp.int32)
  real_BxL = items_BxL > 0
  if positions_P is None and num_positions == length:
    positions_P = jnp.arange(length)
  if positions_P is not None:
    causal_PxL = jnp.arange(length)[None, :] <= positions_P[:, None]
    seen_BxPxL = causal_PxL[None] & real_BxL[:, None, :]
  else:
    seen_BxPxL = jnp.broadcast_to(real_BxL[:, None, :], (batch, num_positions, length))
  items_BxPxL = jnp.broadcast_to(items_BxL[:, None, :], (batch, num_positions, length))
  masked_BxPxL = seen_BxPxL & (items_BxPxL != targets_BxP[..., None])
  # An item twice in a history gets the penalty twice and overflows to -inf: still a zero share, no NaN.
  penalty = jnp.asarray(jnp.finfo(logits_BxPxN.dtype).min, logits_BxPxN.dtype)
  penalty_BxPxL = jnp.where(masked_BxPxL, penalty, jnp.zeros((), logits_BxPxN.dtype))
  b = jnp.arange(batch)[:, None, None]
  p = jnp.arange(num_positions)[None, :, None]
  return logits_BxPxN.at[b, p, items_BxPxL].add(penalty_BxPxL)


def softmax_loss(
    user_BxPxD: jax.Array,
    items_NxD: jax.Array,
    targets_BxP: jax.Array,
    mask_BxP: jax.Array,
    history_BxL: jax.Array | None = None,
    num_items: jax.Array | int | None = None,
    chunk_rows: int = 0,
) -> jax.Array:
  """Full-catalogue cross-entropy: -mean over real pairs of log softmax_n(<y, items_n>)[target].

  The padding row 0 is never a class (its logit is set to the dtype's minimum before the softmax), nor are
  rows above num_items (a table padded to a larger catalogue). With history_BxL (the rows' inputs) the
  items of each position's input history are no class either, the target excepted, as `full` evaluation
  masks them: their logits get no gradient (mask_seen_logits). Targets must be in 1..N-1 where mask_BxP is
  set.

  Memory: one B x P x N logits array; with chunk_rows > 0 (config.train.softmax_chunk_rows) and more than
  2 * chunk_rows pairs (B x P) the P axis goes in slices of max(1, chunk_rows // B) positions, one
  B x slice x N logits array at a time, recomputed in the backward pass (softmax_nll_by_slices). The same
  loss up to float rounding. A batch of at most twice chunk_rows pairs is computed at once: cut in two, its
  recomputation costs more than its slices save (bench/ce_loss_step.py).

  Returns a float32 scalar.
  """
  batch, positions, _ = user_BxPxD.shape
  slice_positions = max(1, int(chunk_rows) // batch) if chunk_rows else 0
  if slice_positions and batch * positions > 2 * chunk_rows and positions > slice_positions:
    return softmax_nll_by_slices(
        user_BxPxD, items_NxD, targets_BxP, mask_BxP, slice_positions, history_BxL, num_items
    )
  logits_BxPxN = jnp.einsum("bpd,nd->bpn", user_BxPxD, items_NxD)
  return softmax_nll(logits_BxPxN, targets_BxP, mask_BxP, history_BxL, num_items)


def softmax_nll_by_slices(
    user_BxPxD: jax.Array,
    items_NxD: jax.Array,
    targets_BxP: jax.Array,
    mask_BxP: jax.Array,
    slice_positions: int,
    history_BxL: jax.Array | None = None,
    num_items: jax.Array | int | None = None,
) -> jax.Array:
  """softmax_loss over slices of S target positions (P padded to a multiple of S), one at a time.

  A causal P = L axis only (a slice's history mask needs its positions). Each slice's logits are
  recomputed in the backward pass (jax.checkpoint), so the loss holds one slice's logits at a time. On a
  CPU the whole array's cost grows faster than its size (measured at Games' shapes: 2x the positions,
  3.5x the time from width 8 to 16), so slices of the widest batches are also faster, recomputation
  included (bench/ce_loss_step.py).
  """
  batch, positions, _ = user_BxPxD.shape
  if history_BxL is not None and history_BxL.shape[1] != positions:
    raise ValueError(f"slices need a target at every input position: P={positions}, L={history_BxL.shape[1]}")
  pad = -positions % slice_positions
  count = (positions + pad) // slice_positions

  def slices(x_BxP, fill=0):  # [B, P, ...] -> [count, B, S, ...]
    x = jnp.pad(x_BxP, [(0, 0), (0, pad)] + [(0, 0)] * (x_BxP.ndim - 2), constant_values=fill)
    return jnp.moveaxis(x.reshape(batch, count, slice_positions, *x.shape[2:]), 1, 0)

  positions_CxS = jnp.arange(positions + pad).reshape(count, slice_positions)

  @jax.checkpoint
  def slice_nll(args):
    user_BxSxD, targets_BxS, mask_BxS, positions_S = args
    logits_BxSxN = jnp.einsum("bsd,nd->bsn", user_BxSxD, items_NxD)
    return _nll_BxP(logits_BxSxN, targets_BxS, mask_BxS, history_BxL, num_items, positions_S)

  nll_CxBxS = jax.lax.map(
      slice_nll, (slices(user_BxPxD), slices(targets_BxP), slices(mask_BxP), positions_CxS)
  )
  nll_BxP = jnp.moveaxis(nll_CxBxS, 0, 1).reshape(batch, positions + pad)[:, :positions]
  return _masked_mean(nll_BxP, mask_BxP)


def softmax_nll(
    logits_BxPxN: jax.Array,
    targets_BxP: jax.Array,
    mask_BxP: jax.Array,
    history_BxL: jax.Array | None = None,
    num_items: jax.Array | int | None = None,
) -> jax.Array:
  """softmax_loss from the logits themselves (any scorer's): the same classes, masks and mean."""
  return _masked_mean(_nll_BxP(logits_BxPxN, targets_BxP, mask_BxP, history_BxL, num_items), mask_BxP)


def _nll_BxP(logits_BxPxN, targets_BxP, mask_BxP, history_BxL, num_items, positions_P=None) -> jax.Array:
  """-log softmax[target] at every pair (softmax_nll before the mean; positions_P as mask_seen_logits)."""
  mask = mask_BxP > 0
  rows_N = jnp.arange(logits_BxPxN.shape[-1])
  not_pad_N = (rows_N > 0) if num_items is None else (rows_N > 0) & (rows_N <= num_items)
  logits_BxPxN = jnp.where(not_pad_N, logits_BxPxN, jnp.finfo(logits_BxPxN.dtype).min)
  if history_BxL is not None:
    logits_BxPxN = mask_seen_logits(logits_BxPxN, history_BxL, targets_BxP, positions_P)
  # Padded pairs read a real column, so no -inf/NaN can leak into the masked mean or its gradient.
  safe_targets_BxP = jnp.where(mask, targets_BxP, 1).astype(jnp.int32)
  target_logit_BxP = jnp.take_along_axis(logits_BxPxN, safe_targets_BxP[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_BxPxN, axis=-1) - target_logit_BxP
