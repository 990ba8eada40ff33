"""The negatives of the `sampled<N>` protocol: N items per user, drawn once (seeded), uniformly from the
items outside the user's whole sequence, and memoised on the domain's content (early stopping asks every
epoch)."""

from __future__ import annotations

import collections
import hashlib
import math

import numpy as np

from recg_jax import errors
from recg_jax.data.types import DomainData


def _history_keys(domain: DomainData) -> tuple[np.ndarray, np.ndarray]:
  """Sorted unique user * (I+1) + item keys of every interaction, and distinct items per user [U]."""
  width = domain.num_items + 1
  users = np.repeat(np.arange(domain.num_users, dtype=np.int64), domain.lengths)
  keys = np.sort(users * width + domain.items.astype(np.int64))
  keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
  distinct_U = np.bincount(keys // width, minlength=domain.num_users)
  return keys, distinct_U


def _first_distinct(
    cand_RxM: np.ndarray, users_R: np.ndarray, keys: np.ndarray, width: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """Per row, the first k draws (in draw order) that are outside the user's history and not repeats.

  The first k distinct accepted draws of a uniform stream are a uniform k-subset of the accepted items.
  Returns (rows that got k: bool [R], their picks [n_ok, k]).
  """
  rows, draws = cand_RxM.shape
  shift = max(1, int(draws - 1).bit_length())
  # Sorting (item, draw position) packed in one int64 finds repeats, keeps the earliest draw of each item
  # first, and makes the history lookups below run over sorted queries.
  packed_RxM = np.sort((cand_RxM << shift) | np.arange(draws, dtype=np.int64), axis=1)
  items_RxM, pos_RxM = packed_RxM >> shift, packed_RxM & ((1 << shift) - 1)
  query_RxM = users_R[:, None].astype(np.int64) * width + items_RxM
  found = np.minimum(np.searchsorted(keys, query_RxM.ravel()), keys.size - 1).reshape(rows, draws)
  keep_sorted = keys[found] != query_RxM
  keep_sorted[:, 1:] &= items_RxM[:, 1:] != items_RxM[:, :-1]
  keep = np.empty_like(keep_sorted)
  np.put_along_axis(keep, pos_RxM, keep_sorted, axis=1)  # back to draw order
  count = np.cumsum(keep, axis=1, dtype=np.int32)
  ok_R = count[:, -1] >= k
  take = keep[ok_R] & (count[ok_R] <= k)
  return ok_R, cand_RxM[ok_R][take].reshape(-1, k).astype(np.int32)


def _dense_negatives(rng: np.random.Generator, domain: DomainData, users: np.ndarray, k: int) -> np.ndarray:
  """Exact sampling through random keys over the whole catalogue, for users with a large history share."""
  width = domain.num_items + 1
  out = np.empty((len(users), k), np.int32)
  step = max(1, (1 << 22) // width)  # bound the key matrix to ~32 MB
  for lo in range(0, len(users), step):
    chunk = users[lo : lo + step]
    keys_RxN = rng.random((len(chunk), width))
    keys_RxN[:, 0] = np.inf
    lens = domain.lengths[chunk]
    rows = np.repeat(np.arange(len(chunk)), lens)
    starts = np.repeat(domain.offsets[chunk], lens)
    pos = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    keys_RxN[rows, domain.items[starts + pos]] = np.inf
    out[lo : lo + len(chunk)] = np.argpartition(keys_RxN, k - 1, axis=1)[:, :k]
  return out


def sample_eval_negatives(domain: DomainData, num_negatives: int, seed: int) -> np.ndarray:
  """[U, num_negatives] int32 negatives per user: distinct, uniform over items outside the whole sequence.

  Vectorised rejection sampling: draw a few more candidates than needed per user, reject those in the
  user's sequence (binary search in the sorted user*(I+1)+item keys) and repeats, keep the first
  `num_negatives`; the rare rows left short are redrawn with twice as many candidates. Users whose sequence
  covers a large share of the catalogue are sampled exactly over the catalogue instead. The result is a
  function of (domain, num_negatives, seed) only.
  """
  k = int(num_negatives)
  if k <= 0:
    raise ValueError(f"num_negatives must be positive, got {num_negatives}")
  num_items = domain.num_items
  keys, distinct_U = _history_keys(domain)
  short = np.nonzero(distinct_U + k > num_items)[0]
  if short.size:
    u = int(short[0])
    raise errors.ConfigError(
        f"domain {domain.name!r}: cannot draw {k} negatives outside the history of user "
        f"{domain.user_tokens[u]!r} (index {u}, {distinct_U[u]} distinct items) from a catalogue of "
        f"{num_items} items ({short.size} users affected); lower eval.num_sampled_negatives or drop the "
        f"sampled protocol from eval.protocols"
    )
  rng = np.random.default_rng(seed)
  width = num_items + 1
  out = np.zeros((domain.num_users, k), np.int32)
  # Draws needed so that k distinct accepted ones arrive with overwhelming probability.
  accept_U = (num_items - distinct_U) / num_items
  draws_U = np.ceil((k + 4.0 * math.sqrt(k) + 8.0) / accept_U).astype(np.int64)
  dense = draws_U > num_items // 4  # rejection gets slow (and repeats common): sample exactly
  todo = np.nonzero(~dense)[0]
  draws = int(draws_U[todo].max()) if todo.size else 0
  for _ in range(4):
    if not todo.size:
      break
    cand = rng.integers(1, width, size=(todo.size, draws), dtype=np.int64)
    ok, picks = _first_distinct(cand, todo, keys, width, k)
    out[todo[ok]] = picks
    todo = todo[~ok]
    draws *= 2
  dense_users = np.concatenate([np.nonzero(dense)[0], todo])
  if dense_users.size:
    out[dense_users] = _dense_negatives(rng, domain, dense_users, k)
  return out


_NEGATIVES_CACHE: collections.OrderedDict = collections.OrderedDict()
_NEGATIVES_CACHE_SIZE = 8


def _fingerprint(domain: DomainData) -> tuple:
  digest = hashlib.blake2b(np.ascontiguousarray(domain.items).tobytes(), digest_size=16)
  digest.update(np.ascontiguousarray(domain.offsets).tobytes())
  return (domain.name, domain.num_items, domain.num_users, digest.hexdigest())


def eval_negatives(domain: DomainData, num_negatives: int, seed: int) -> np.ndarray:
  """`sample_eval_negatives`, memoised on the domain's content: early stopping asks every epoch."""
  key = (_fingerprint(domain), int(num_negatives), int(seed))
  if key in _NEGATIVES_CACHE:
    _NEGATIVES_CACHE.move_to_end(key)
    return _NEGATIVES_CACHE[key]
  negs = sample_eval_negatives(domain, num_negatives, seed)
  negs.setflags(write=False)
  _NEGATIVES_CACHE[key] = negs
  if len(_NEGATIVES_CACHE) > _NEGATIVES_CACHE_SIZE:
    _NEGATIVES_CACHE.popitem(last=False)
  return negs
