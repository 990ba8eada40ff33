"""What the encoder is tuned on: (history, next item) examples of the source domains, sampled per step.

Every position t >= 1 of a user's training part (the validation and test items never) is an example: the
up to history_len items before it, newest last, and the item at t. A step draws batch_size examples, an
equal share from every source domain (a large domain does not drown a small one), each with hard
negatives: items drawn among the frozen table's nearest neighbours of its positive, in its own domain,
outside its history. The draw is a pure function of (seed, step), so a resumed run sees the same batches.

Items of all sources live in one global index (a domain's item i is offsets[d] + i); a batch names every
distinct item it needs once (`unique`), so each is encoded once per step, and its history, positives and
negatives point into that list.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recg_jax.data import types


@dataclasses.dataclass(frozen=True)
class Examples:
  """The examples of the source domains, and the neighbours their hard negatives are drawn from."""

  domain_N: np.ndarray  # [N] source index of each example
  history_NxH: np.ndarray  # [N, H] global item ids, right-aligned, 0 = none
  positive_N: np.ndarray  # [N] global item id
  neighbours_GxP: np.ndarray  # [G, P] per global item: its nearest neighbours (global ids), nearest first
  offsets: np.ndarray  # [S + 1] global id of each source's item 0 (its padding row)

  @property
  def num_sources(self) -> int:
    return len(self.offsets) - 1


def nearest_neighbours(table_NxH: np.ndarray, count: int, block: int = 2048) -> np.ndarray:
  """[N, count] the `count` nearest other real items of every item by cosine (rows 1..N-1; row 0 zeros)."""
  unit = table_NxH / np.maximum(np.linalg.norm(table_NxH, axis=1, keepdims=True), 1e-12)
  n = len(unit)
  count = min(count, n - 2)
  out = np.zeros((n, max(count, 0)), np.int64)
  for lo in range(1, n, block):
    sims = unit[lo : lo + block] @ unit.T
    sims[:, 0] = -np.inf
    sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf
    top = np.argpartition(-sims, count, axis=1)[:, :count]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    out[lo : lo + block] = np.take_along_axis(top, order, axis=1)
  return out


_NEIGHBOURS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _neighbours(table: np.ndarray, count: int) -> np.ndarray:
  """nearest_neighbours, kept per table object (held here, so its id is never reused): runs of one process
  (a study) tune on the same tables."""
  key = (id(table), count)
  if key not in _NEIGHBOURS:
    _NEIGHBOURS[key] = (table, nearest_neighbours(np.asarray(table, np.float32), count))
  return _NEIGHBOURS[key][1]


def build(domains: list[types.DomainData], tables: list[np.ndarray], history_len: int, pool: int) -> Examples:
  """The examples of every source and the hard-negative pools from their frozen tables."""
  offsets = np.concatenate([[0], np.cumsum([d.num_items + 1 for d in domains])]).astype(np.int64)
  dom, hist, pos, neigh = [], [], [], []
  for d, (domain, table) in enumerate(zip(domains, tables)):
    for part in types.training_histories(domain):
      for t in range(1, len(part)):
        hist.append(part[max(0, t - history_len) : t])
        pos.append(part[t])
        dom.append(d)
    neigh.append(_neighbours(table, pool) + offsets[d])
  dom_N = np.asarray(dom, np.int64)
  history = types.right_aligned(hist, history_len).astype(np.int64)
  history = np.where(history > 0, history + offsets[dom_N][:, None], 0)
  width = min(n.shape[1] for n in neigh)
  return Examples(
      domain_N=dom_N,
      history_NxH=history,
      positive_N=np.asarray(pos, np.int64) + offsets[dom_N],
      neighbours_GxP=np.concatenate([n[:, :width] for n in neigh]),
      offsets=offsets,
  )


@dataclasses.dataclass(frozen=True)
class Batch:
  """One step's examples, pointing into `unique` (every distinct global item of the batch, padded)."""

  unique_U: np.ndarray  # [U] global item ids; 0 = padding (never a candidate)
  history_BxH: np.ndarray  # [B, H] indices into unique, -1 = no item
  positive_B: np.ndarray  # [B] index into unique
  candidate_ok_BxU: np.ndarray  # [B, U] bool: a candidate of this example (not its history, not padding)


def capacity(batch_size: int, history_len: int, hard_negatives: int) -> int:
  """The fixed length of Batch.unique_U: enough for every item a batch can name."""
  return batch_size * (1 + history_len + hard_negatives)


def sample(
    examples: Examples,
    batch_size: int,
    hard_negatives: int,
    seed: int,
    step: int,
    positives_only: bool = False,
) -> Batch:
  """The examples of one step (see the module docstring)."""
  rng = np.random.default_rng([seed, step, 0x7A9E])
  per = [
      batch_size // examples.num_sources + (s < batch_size % examples.num_sources)
      for s in range(examples.num_sources)
  ]
  picks = np.concatenate(
      [rng.choice(np.flatnonzero(examples.domain_N == s), n, replace=True) for s, n in enumerate(per) if n]
  )
  return batch_of(examples, picks, hard_negatives, rng, positives_only)


def batch_of(
    examples: Examples,
    picks: np.ndarray,
    hard_negatives: int,
    rng: np.random.Generator,
    positives_only: bool = False,
) -> Batch:
  """The Batch of the examples `picks`. Every distinct item of the batch is a candidate of every example
  but its own history; with positives_only, only the batch's positives and hard negatives are (as
  sentence-transformers' MultipleNegativesRankingLoss scores anchors against the positives)."""
  history, positive = examples.history_NxH[picks], examples.positive_N[picks]
  pool = examples.neighbours_GxP[positive]
  choice = rng.random((len(picks), pool.shape[1])).argsort(axis=1)[:, :hard_negatives]
  negatives = (
      np.take_along_axis(pool, choice, axis=1) if hard_negatives else np.zeros((len(picks), 0), np.int64)
  )
  unique = np.unique(np.concatenate([positive, negatives.ravel(), history[history > 0]]))
  unique_U = np.zeros(capacity(len(picks), history.shape[1], hard_negatives), np.int64)
  unique_U[: len(unique)] = unique
  index = lambda ids: np.searchsorted(unique, ids)
  history_idx = np.where(history > 0, index(history), -1)
  real_U = unique_U > 0
  if positives_only:
    real_U = np.isin(unique_U, np.concatenate([positive, negatives.ravel()]))
  ok = np.repeat(real_U[None, :], len(picks), axis=0)
  rows, cols = np.nonzero(history_idx >= 0)
  ok[rows, history_idx[rows, cols]] = False  # the user's own history is no candidate ...
  positive_idx = index(positive)
  ok[np.arange(len(picks)), positive_idx] = True  # ... but its positive stays one
  return Batch(unique_U, history_idx, positive_idx, ok)
