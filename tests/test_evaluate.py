"""Ranking evaluation against a per-user brute-force reference, on integer scores full of ties."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import eval_negatives as negatives
from recg_jax import evaluate as ev
from recg_jax import random_ranking
from recg_jax.config import default
from recg_jax.data import types

NUM_USERS, NUM_ITEMS, DIM, MAX_LEN, NUM_NEG = 37, 30, 3, 6, 10


def make_domain(num_users=NUM_USERS, num_items=NUM_ITEMS, min_len=3, max_len=13, seed=0, name="Tiny"):
  """Random histories with repeats; users 0-2 hold the awkward cases of the masking rule."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_len, max_len, num_users)
  rows = [rng.integers(1, num_items + 1, n).astype(np.int32) for n in lengths]
  if num_users >= 3:
    rows[0][-1] = rows[0][-2]  # test target == valid target
    rows[1][0] = rows[1][-1]  # test target bought before
    rows[2][0] = rows[2][-2]  # valid target bought before
  offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
  return types.DomainData(
      name=name,
      item_tokens=np.arange(num_items + 1).astype(str),
      item_fields={},
      item_text=np.array([""] * (num_items + 1), dtype=object),
      user_tokens=np.array([f"u{u}" for u in range(num_users)], dtype=object),
      offsets=offsets,
      items=np.concatenate(rows),
      synthetic=True,
  )


def make_vectors(seed=1):
  """Integer vectors in {-1, 0, 1}: float32 scores are exact and tie constantly."""
  rng = np.random.default_rng(seed)
  item_vecs = rng.integers(-1, 2, (NUM_ITEMS + 1, DIM)).astype(np.float32)
  item_vecs[0] = 0
  in_table = rng.integers(-1, 2, (NUM_ITEMS + 1, DIM)).astype(np.float32)
  return item_vecs, in_table


def user_vectors_np(in_table, inputs_UxL):
  return in_table[inputs_UxL[:, -1]] + in_table[inputs_UxL[:, -2]]


def make_user_fn(in_table, mesh=None):
  table = jnp.asarray(in_table)
  if mesh is not None:  # replicated, as a model's parameters would be
    table = jax.device_put(table, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  # A one-hot product rather than a gather: it needs no sharding annotations under explicit mesh axes.
  onehot = lambda ids_B: jax.nn.one_hot(ids_B, table.shape[0], dtype=jnp.float32)
  return jax.jit(lambda seq_BxL: (onehot(seq_BxL[:, -1]) + onehot(seq_BxL[:, -2])) @ table)


def make_config(**overrides):
  c = default.get_eval_config()
  c.num_sampled_negatives = NUM_NEG
  c.protocols = ("full", f"sampled{NUM_NEG}")
  c.batch_size = 8
  c.score_block_rows = 4
  c.update(overrides)
  return c


def reference_ranks(domain, split_name, user_vecs, item_vecs, negs, mask):
  """The protocol written out per user and per candidate, in Python."""
  full, sampled = [], []
  for u in range(domain.num_users):
    seq = domain.history(u)
    pos = len(seq) - (1 if split_name == "test" else 2)
    target, before = int(seq[pos]), {int(i) for i in seq[:pos]}
    s = item_vecs.astype(np.int64) @ user_vecs[u].astype(np.int64)
    rank = 0.0
    for c in range(1, domain.num_items + 1):
      if c == target or (mask and c in before):
        continue
      rank += 1.0 if s[c] > s[target] else 0.5 if s[c] == s[target] else 0.0
    full.append(rank)
    sampled.append(sum(1.0 if s[c] > s[target] else 0.5 if s[c] == s[target] else 0.0 for c in negs[u]))
  return np.array(full), np.array(sampled)


@pytest.fixture(scope="module")
def setup():
  domain = make_domain()
  item_vecs, in_table = make_vectors()
  return domain, item_vecs, in_table, make_user_fn(in_table)


# ------------------------------------------------------------------------------------------------------
# Ranks and metrics.


def test_metrics_golden():
  ranks = np.array([0.0, 0.5, 4.0, 9.5, 10.0, 25.0])
  m = ev.metrics_from_ranks(ranks, (1, 5, 10))
  # 1/log2(2) = 1, 1/log2(2.5) = 0.7564707973660301, 1/log2(6) = 0.38685280723454163,
  # 1/log2(11.5) = 0.28380372261682446.
  assert m["recall@1"] == pytest.approx(2 / 6)
  assert m["ndcg@1"] == pytest.approx((1 + 0.7564707973660301) / 6)
  assert m["recall@5"] == pytest.approx(3 / 6)
  assert m["ndcg@5"] == pytest.approx((1 + 0.7564707973660301 + 0.38685280723454163) / 6)
  assert m["recall@10"] == pytest.approx(4 / 6)
  assert m["ndcg@10"] == pytest.approx(
      (1 + 0.7564707973660301 + 0.38685280723454163 + 0.28380372261682446) / 6
  )
  assert set(m) == {"recall@1", "ndcg@1", "recall@5", "ndcg@5", "recall@10", "ndcg@10"}
  assert math.isnan(ev.metrics_from_ranks(np.array([0.0, np.nan]), (5,))["ndcg@5"])
  with pytest.raises(ValueError, match="ks"):
    ev.metrics_from_ranks(ranks, (0,))


def test_ranks_from_scores_hand_example():
  scores = np.array([[3.0, 5.0, 3.0, 3.0, 1.0, 9.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]], np.float32)
  valid = np.array([[True, True, True, False, True, False], [True, True, True, True, True, True]])
  # Row 0: target col 0 (3.0); valid others 5 (higher), 3 (tie), 1; cols 3 and 5 do not compete.
  # Row 1: target col 4, five valid ties.
  ranks = np.asarray(ev.ranks_from_scores(scores, np.array([0, 4]), valid))
  np.testing.assert_array_equal(ranks, [1.5, 2.5])
  scores[1, 2] = np.nan
  assert np.isnan(np.asarray(ev.ranks_from_scores(scores, np.array([0, 4]), valid))[1])


def test_rank_independent_of_target_position():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, (16, 12)).astype(np.float32)
  valid = rng.random((16, 12)) < 0.8
  base = np.asarray(ev.ranks_from_scores(scores, np.zeros(16, np.int32), valid))
  for _ in range(5):
    perm = np.stack([rng.permutation(12) for _ in range(16)])  # column j of the new row = old perm[j]
    moved = np.argsort(perm, axis=1)[:, 0]  # where old column 0 went
    ranks = ev.ranks_from_scores(
        np.take_along_axis(scores, perm, 1), moved, np.take_along_axis(valid, perm, 1)
    )
    np.testing.assert_array_equal(np.asarray(ranks), base)


# ------------------------------------------------------------------------------------------------------
# Sampled negatives.


@pytest.mark.parametrize("num_items,k", [(200, 20), (40, 10)])  # rejection path, exact (dense) path
def test_negatives_outside_history_distinct_uniform(num_items, k):
  domain = make_domain(num_users=1500, num_items=num_items, min_len=5, max_len=16, seed=3)
  negs = negatives.sample_eval_negatives(domain, k, seed=7)
  assert negs.shape == (1500, k) and negs.dtype == np.int32
  assert negs.min() >= 1 and negs.max() <= num_items
  sorted_negs = np.sort(negs, axis=1)
  assert np.all(sorted_negs[:, 1:] != sorted_negs[:, :-1])
  expected = np.zeros(num_items + 1)
  for u in range(domain.num_users):
    hist = np.unique(domain.history(u))
    assert not np.isin(negs[u], hist).any()
    allowed = np.setdiff1d(np.arange(1, num_items + 1), hist)
    expected[allowed] += k / len(allowed)
  observed = np.bincount(negs.ravel(), minlength=num_items + 1)
  chi2 = np.sum((observed[1:] - expected[1:]) ** 2 / expected[1:])
  dof = num_items - 1
  assert chi2 < dof + 6 * math.sqrt(2 * dof), chi2  # a biased sampler lands far above


def test_first_distinct_keeps_draw_order():
  # User 0 owns items {2, 5}; user 1 owns {7}. Width 10 -> keys user * 10 + item.
  keys = np.array([2, 5, 17], np.int64)
  cand = np.array(
      [[5, 3, 3, 9, 2, 1, 4], [7, 7, 8, 8, 7, 8, 6]]  # accepted in order: 3, 9, 1, 4
  )  # accepted: 8, 6 -> too few for k = 3
  ok, picks = negatives._first_distinct(cand, np.array([0, 1]), keys, 10, 3)
  np.testing.assert_array_equal(ok, [True, False])
  np.testing.assert_array_equal(picks, [[3, 9, 1]])


def test_negatives_seeded():
  domain = make_domain()
  a = negatives.sample_eval_negatives(domain, NUM_NEG, seed=5)
  np.testing.assert_array_equal(a, negatives.sample_eval_negatives(domain, NUM_NEG, seed=5))
  assert not np.array_equal(a, negatives.sample_eval_negatives(domain, NUM_NEG, seed=6))
  np.testing.assert_array_equal(negatives.eval_negatives(domain, NUM_NEG, 5), a)


def test_negatives_catalogue_too_small():
  domain = make_domain(num_users=4, num_items=12, min_len=10, max_len=12)
  with pytest.raises(ValueError, match="cannot draw 8 negatives"):
    negatives.sample_eval_negatives(domain, 8, seed=0)


# ------------------------------------------------------------------------------------------------------
# Batched evaluation.


@pytest.mark.parametrize("split_name,mask", [("test", True), ("valid", True), ("test", False)])
def test_matches_bruteforce(setup, split_name, mask):
  domain, item_vecs, in_table, user_fn = setup
  split = types.leave_one_out(domain, split_name, MAX_LEN)
  config = make_config(mask_history=mask)
  ranks = ev.user_ranks(user_fn, item_vecs, split, domain, config)
  negs = negatives.sample_eval_negatives(domain, NUM_NEG, config.seed)
  full, sampled = reference_ranks(
      domain, split_name, user_vectors_np(in_table, split.inputs_UxL), item_vecs, negs, mask
  )
  np.testing.assert_array_equal(ranks["full"], full)
  np.testing.assert_array_equal(ranks[f"sampled{NUM_NEG}"], sampled)
  assert np.any(full % 1 == 0.5) and np.any(sampled % 1 == 0.5)  # ties were exercised
  metrics = ev.evaluate(user_fn, item_vecs, split, domain, config)
  for k in config.ks:
    assert metrics[f"full/ndcg@{k}"] == ev.metrics_from_ranks(full, (k,))[f"ndcg@{k}"]
    assert metrics[f"sampled{NUM_NEG}/recall@{k}"] == ev.metrics_from_ranks(sampled, (k,))[f"recall@{k}"]
  assert len(metrics) == 4 * len(config.ks)


def test_masking_rule(setup):
  """The target is never masked even when bought before; other history items are."""
  domain, item_vecs, _, user_fn = setup
  split = types.leave_one_out(domain, "test", MAX_LEN)
  assert split.targets_U[1] in domain.history(1)[:-1]
  # Every item scores the same: the rank counts exactly the competing candidates (as ties).
  flat = np.ones_like(item_vecs)
  ranks = ev.user_ranks(user_fn, flat, split, domain, make_config(), protocols=("full",))["full"]
  for u in range(domain.num_users):
    seq = domain.history(u)
    competing = set(range(1, NUM_ITEMS + 1)) - set(seq[:-1].tolist()) - {int(seq[-1])}
    assert ranks[u] == 0.5 * len(competing)
  unmasked = ev.user_ranks(
      user_fn, flat, split, domain, make_config(mask_history=False), protocols=("full",)
  )["full"]
  np.testing.assert_array_equal(unmasked, 0.5 * (NUM_ITEMS - 1))


def test_padded_batches_and_blocks_agree(setup):
  domain, item_vecs, _, user_fn = setup
  split = types.leave_one_out(domain, "test", MAX_LEN)
  one = ev.user_ranks(
      user_fn, item_vecs, split, domain, make_config(batch_size=NUM_USERS, score_block_rows=0)
  )  # 37 = U: no padding
  padded = ev.user_ranks(user_fn, item_vecs, split, domain, make_config(batch_size=8, score_block_rows=4))
  capped = ev.user_ranks(
      user_fn,
      item_vecs,
      split,
      domain,
      make_config(batch_size=8, score_block_rows=0, max_scores_per_block=3 * 31),
  )
  for name in one:
    np.testing.assert_array_equal(padded[name], one[name])
    np.testing.assert_array_equal(capped[name], one[name])
  assert ev._geometry(
      make_config(batch_size=8, score_block_rows=0, max_scores_per_block=3 * 31), NUM_ITEMS, NUM_USERS, 1
  ) == (9, 3)


def test_length_groups():
  inputs = np.array([[0, 0, 0, 5], [0, 2, 3, 4], [1, 2, 3, 4], [0, 0, 7, 7], [0, 0, 0, 0]], np.int32)
  np.testing.assert_array_equal(ev.input_lengths(inputs), [1, 3, 4, 2, 0])
  groups = ev.length_groups(inputs, (2, 3, 9))
  assert [w for w, _ in groups] == [2, 3, 4]  # capped at L = 4, which is always a width
  np.testing.assert_array_equal(groups[0][1], [0, 3, 4])
  np.testing.assert_array_equal(groups[1][1], [1])
  np.testing.assert_array_equal(groups[2][1], [2])
  assert [w for w, _ in ev.length_groups(inputs, ())] == [4]
  with pytest.raises(ValueError, match="eval.length_buckets"):
    ev.length_groups(inputs, (0,))


@pytest.mark.parametrize("split_name", ["test", "valid"])
def test_length_buckets_give_the_same_ranks(setup, split_name):
  """Users grouped by length, run at their group's width: the same ranks, in user order, as unbucketed."""
  domain, item_vecs, in_table, _ = setup
  split = types.leave_one_out(domain, split_name, MAX_LEN)
  table = jnp.asarray(in_table)
  # The sum of every real item's integer vector: exact, and changed by any item lost to a too narrow cut.
  history_fn = jax.jit(
      lambda seq_BxW: jnp.einsum(
          "bwn,nd->bd", jax.nn.one_hot(seq_BxW, table.shape[0]) * (seq_BxW > 0)[..., None], table
      )
  )
  widths = []

  def recording_user_fn(seq_BxW):
    widths.append(seq_BxW.shape[1])
    return history_fn(seq_BxW)

  plain = ev.user_ranks(history_fn, item_vecs, split, domain, make_config(length_buckets=()))
  for buckets in ((2, 3, 4), (4,), (3, 9)):
    widths.clear()
    got = ev.user_ranks(recording_user_fn, item_vecs, split, domain, make_config(length_buckets=buckets))
    assert got.keys() == plain.keys()
    for name in plain:
      np.testing.assert_array_equal(got[name], plain[name], err_msg=f"{buckets} {name}")
    expected = {w for w, _ in ev.length_groups(split.inputs_UxL, buckets)}
    assert set(widths) == expected and len(expected) > 1 and max(expected) == MAX_LEN
  # And the unbucketed ranks are right: against the per-user reference.
  user_vecs = np.stack([in_table[row[row > 0]].sum(axis=0) for row in split.inputs_UxL])
  full, sampled = reference_ranks(
      domain,
      split_name,
      user_vecs,
      item_vecs,
      negatives.sample_eval_negatives(domain, NUM_NEG, make_config().seed),
      True,
  )
  np.testing.assert_array_equal(plain["full"], full)
  np.testing.assert_array_equal(plain[f"sampled{NUM_NEG}"], sampled)


def test_nan_scores_give_nan_metrics(setup):
  domain, item_vecs, _, user_fn = setup
  split = types.leave_one_out(domain, "test", MAX_LEN)
  bad = item_vecs.copy()
  bad[5] = np.nan
  metrics = ev.evaluate(user_fn, bad, split, domain, make_config())
  assert math.isnan(metrics["full/ndcg@10"])


def test_bad_inputs(setup):
  domain, item_vecs, _, user_fn = setup
  split = types.leave_one_out(domain, "test", MAX_LEN)
  with pytest.raises(ValueError, match="unknown protocol"):
    ev.evaluate(user_fn, item_vecs, split, domain, make_config(), protocols=("top",))
  assert ev.parse_protocols(("sampled", "full"), 100) == (True, "sampled100")
  with pytest.raises(ValueError, match="num_sampled_negatives"):
    ev.evaluate(user_fn, item_vecs, split, domain, make_config(), protocols=("sampled100",))
  with pytest.raises(ValueError, match="row 0 = padding"):
    ev.evaluate(user_fn, item_vecs[1:], split, domain, make_config())
  wrong = types.EvalSplit(split.inputs_UxL, np.roll(split.targets_U, 1))
  with pytest.raises(ValueError, match="leave_one_out"):
    ev.evaluate(user_fn, item_vecs, wrong, domain, make_config())


_SHARDED_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
import test_evaluate as t
from recg_jax import evaluate as ev
from recg_jax.data import types
assert jax.device_count() == 8, jax.devices()
domain = t.make_domain()
item_vecs, in_table = t.make_vectors()
split = types.leave_one_out(domain, "test", t.MAX_LEN)
config = t.make_config(batch_size=16, score_block_rows=1)
out = {"plain": ev.user_ranks(t.make_user_fn(in_table), item_vecs, split, domain, config)}
for kind in ("Explicit", "Auto"):
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(getattr(jax.sharding.AxisType, kind),) * 2)
  out[kind] = ev.user_ranks(t.make_user_fn(in_table, mesh), item_vecs, split, domain, config, mesh=mesh)
print(json.dumps({run: {k: v.tolist() for k, v in ranks.items()} for run, ranks in out.items()}))
"""


def test_sharded_equals_unsharded(setup):
  domain, item_vecs, in_table, _ = setup
  here = pathlib.Path(__file__).resolve().parent
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
  env = dict(
      os.environ,
      XLA_FLAGS=xla_flags,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")]),
  )
  proc = subprocess.run(
      [sys.executable, "-c", _SHARDED_SCRIPT, str(here)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["Explicit"] == out["plain"] and out["Auto"] == out["plain"]
  split = types.leave_one_out(domain, "test", MAX_LEN)
  full, _ = reference_ranks(
      domain,
      "test",
      user_vectors_np(in_table, split.inputs_UxL),
      item_vecs,
      negatives.sample_eval_negatives(domain, NUM_NEG, default.get_eval_config().seed),
      True,
  )
  np.testing.assert_array_equal(out["plain"]["full"], full)


def test_real_domain_matches_reference(data_root, tmp_path):
  """Office (real histories, repeats included), integer vectors, both protocols, against numpy per user."""
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.data.root = str(data_root)
  domain = prepare.load_domain(config, "Office", tmp_path, log=lambda _: None)
  rng = np.random.default_rng(0)
  item_vecs = rng.integers(-2, 3, (domain.num_items + 1, 8)).astype(np.float32)
  item_vecs[0] = 0
  table = rng.integers(-2, 3, (domain.num_items + 1, 8)).astype(np.float32)
  eval_config = default.get_eval_config()
  split = types.leave_one_out(domain, "test", config.data.max_len)
  ranks = ev.user_ranks(make_user_fn(table), item_vecs, split, domain, eval_config)
  negs = negatives.sample_eval_negatives(domain, eval_config.num_sampled_negatives, eval_config.seed)
  users = user_vectors_np(table, split.inputs_UxL).astype(np.int64)
  scores_UxN = users @ item_vecs.astype(np.int64).T
  for u in range(domain.num_users):
    seq = domain.history(u)
    s, t = scores_UxN[u], int(seq[-1])
    assert not np.isin(negs[u], seq).any() and len(np.unique(negs[u])) == negs.shape[1]
    competing = np.ones(domain.num_items + 1, bool)
    competing[[0, *seq[:-1]]] = False
    competing[t] = False
    full = np.sum(s[competing] > s[t]) + 0.5 * np.sum(s[competing] == s[t])
    sampled = np.sum(s[negs[u]] > s[t]) + 0.5 * np.sum(s[negs[u]] == s[t])
    assert ranks["full"][u] == full and ranks["sampled100"][u] == sampled, u


@pytest.mark.parametrize("split_name", ["valid", "test"])
def test_candidate_counts_match_the_ranks_of_constant_scores(split_name):
  """Every candidate tied: the half-tie rank is (C - 1) / 2, so the ranks give back each user's C."""
  domain = make_domain()
  split = types.leave_one_out(domain, split_name, MAX_LEN)
  config = default.get_eval_config()
  config.protocols = ("full", f"sampled{NUM_NEG}")
  config.num_sampled_negatives = NUM_NEG
  config.length_buckets = ()
  ranks = ev.user_ranks(
      lambda seq: jnp.ones((seq.shape[0], DIM)),
      np.ones((NUM_ITEMS + 1, DIM), np.float32),
      split,
      domain,
      config,
  )
  counts = random_ranking.candidate_counts(split, domain, config)
  for name in ("full", f"sampled{NUM_NEG}"):
    np.testing.assert_array_equal(2 * ranks[name] + 1, counts[name])


def test_random_expectation_golden_values():
  domain = make_domain()
  split = types.leave_one_out(domain, "test", MAX_LEN)
  config = default.get_eval_config()
  config.protocols = ("sampled2",)
  config.num_sampled_negatives = 2
  config.ks = (1, 5)
  out = random_ranking.random_expectation(split, domain, config)
  assert out["sampled2/recall@1"] == pytest.approx(1 / 3)
  assert out["sampled2/recall@5"] == pytest.approx(1.0)
  assert out["sampled2/ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / 2) / 3)
