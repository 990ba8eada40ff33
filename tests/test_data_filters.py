"""Iterated k-core and the seeded user cap."""

import numpy as np

from recg_jax.data import filters


def test_kcore_cascades_to_hand_checked_core():
  # 2-core. Round 1 drops u3 (one interaction); then i2 has one left and goes; then u2 has one left
  # and goes. What remains is {u0, u1} x {i0, i1}.
  users = np.array([0, 0, 1, 1, 2, 2, 3])
  items = np.array([0, 1, 0, 1, 1, 2, 2])
  keep = filters.kcore(users, items, min_user=2, min_item=2)
  np.testing.assert_array_equal(keep, [1, 1, 1, 1, 0, 0, 0])


def test_kcore_separate_user_and_item_thresholds_and_initial_mask():
  users = np.array([0, 0, 0, 1, 1, 2])
  items = np.array([0, 1, 2, 0, 1, 0])
  # Items need 2: i2 goes. Users need 1: everyone else stays.
  np.testing.assert_array_equal(filters.kcore(users, items, 1, 2), [1, 1, 0, 1, 1, 1])
  # Users need 3: only u0 qualifies at first, then i1/i2 fall below 2 and u0 below 3: nothing survives.
  np.testing.assert_array_equal(filters.kcore(users, items, 3, 2), [0, 0, 0, 0, 0, 0])
  # An initial mask (items without text) is respected: dropping i0 leaves u0 with 2.
  initial = items != 0
  np.testing.assert_array_equal(filters.kcore(users, items, 2, 1, initial), [0, 1, 1, 0, 0, 0])


def test_kcore_counts_repeats_and_result_is_a_fixed_point():
  rng = np.random.default_rng(0)
  users = rng.integers(0, 60, 800)
  items = rng.integers(0, 40, 800)
  keep = filters.kcore(users, items, 5, 5)
  assert 0 < keep.sum() < len(keep)
  assert np.bincount(users[keep]).max() >= 5
  assert (np.bincount(users[keep])[np.unique(users[keep])] >= 5).all()
  assert (np.bincount(items[keep])[np.unique(items[keep])] >= 5).all()
  np.testing.assert_array_equal(filters.kcore(users, items, 5, 5, keep), keep)
  # A repeated (user, item) pair counts twice.
  np.testing.assert_array_equal(filters.kcore([0, 0], [0, 0], 2, 2), [1, 1])


def test_cap_users_is_seeded_and_bounded():
  users = np.repeat(np.arange(10), 3)
  keep = np.ones(30, bool)
  a = filters.cap_users(users, keep, 4, seed=1)
  b = filters.cap_users(users, keep, 4, seed=1)
  c = filters.cap_users(users, keep, 4, seed=2)
  np.testing.assert_array_equal(a, b)
  assert len(np.unique(users[a])) == 4 and a.sum() == 12
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(filters.cap_users(users, keep, 0, seed=1), keep)
  np.testing.assert_array_equal(filters.cap_users(users, keep, 10, seed=1), keep)
