"""Interaction filters: iterated k-core and a seeded user cap, vectorised over interactions."""

from __future__ import annotations

import numpy as np


def kcore(
    user_codes_T: np.ndarray,
    item_codes_T: np.ndarray,
    min_user: int,
    min_item: int,
    keep_T: np.ndarray | None = None,
) -> np.ndarray:
  """Iterated k-core: the largest subset in which every user and every item has enough interactions.

  Removing a sparse item can push a user below `min_user` and the reverse, so the two count tests
  repeat until nothing changes. Each round is two bincounts over the interactions still kept.

  Args:
    user_codes_T: [T] non-negative ints, the user of each interaction.
    item_codes_T: [T] non-negative ints, the item of each interaction.
    min_user: minimum interactions per user (counting repeats of the same item).
    min_item: minimum interactions per item.
    keep_T: optional [T] bool, interactions allowed at the start (default: all).

  Returns:
    [T] bool mask of the interactions that survive.
  """
  user_codes_T = np.asarray(user_codes_T, np.int64)
  item_codes_T = np.asarray(item_codes_T, np.int64)
  keep = np.ones(len(user_codes_T), bool) if keep_T is None else np.array(keep_T, bool)
  num_users = int(user_codes_T.max(initial=-1)) + 1
  num_items = int(item_codes_T.max(initial=-1)) + 1
  while True:
    user_count = np.bincount(user_codes_T[keep], minlength=num_users)
    item_count = np.bincount(item_codes_T[keep], minlength=num_items)
    new_keep = keep & (user_count[user_codes_T] >= min_user) & (item_count[item_codes_T] >= min_item)
    if np.array_equal(new_keep, keep):
      return keep
    keep = new_keep


def cap_users(user_codes_T: np.ndarray, keep_T: np.ndarray, max_users: int, seed: int) -> np.ndarray:
  """Keeps the interactions of at most `max_users` users, drawn uniformly without replacement.

  The draw depends only on `seed` and the sorted set of users present in `keep_T`.

  Returns:
    [T] bool mask, a subset of keep_T.
  """
  present = np.unique(np.asarray(user_codes_T)[keep_T])
  if max_users <= 0 or len(present) <= max_users:
    return np.array(keep_T, bool)
  chosen = np.random.default_rng(seed).choice(present, size=max_users, replace=False)
  return keep_T & np.isin(user_codes_T, chosen)
