"""Tests of recg_jax.losses: negative sampling, BPR and full softmax."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import losses


def test_negatives_avoid_history_and_positives_and_stay_in_range():
  num_items = 30
  rng = np.random.default_rng(0)
  history = rng.integers(0, num_items + 1, size=(16, 12)).astype(np.int32)
  history[:, :3] = 0  # padding
  history[0] = np.arange(1, 13)  # a dense block of forbidden items
  positives = rng.integers(0, num_items + 1, size=(16, 5)).astype(np.int32)
  neg = losses.sample_negatives(
      jax.random.PRNGKey(0), jnp.asarray(positives), num_items, 64, jnp.asarray(history)
  )
  chex.assert_shape(neg, (16, 5, 64))
  assert neg.dtype == jnp.int32
  neg = np.asarray(neg)
  assert neg.min() >= 1 and neg.max() <= num_items
  for b in range(16):
    forbidden = set(history[b].tolist()) | set(positives[b].tolist())
    assert not forbidden & set(neg[b].ravel().tolist())


def test_negatives_are_uniform_over_the_complement():
  num_items = 10
  history = jnp.array([[0, 0, 3, 5, 5, 9], [1, 2, 3, 4, 5, 6]], jnp.int32)
  positives = jnp.array([[5, 9, 0], [7, 7, 0]], jnp.int32)
  neg = np.asarray(losses.sample_negatives(jax.random.PRNGKey(1), positives, num_items, 4000, history))
  for b, allowed in enumerate([[1, 2, 4, 6, 7, 8, 10], [8, 9, 10]]):
    counts = np.bincount(neg[b].ravel(), minlength=num_items + 1)
    np.testing.assert_array_equal(np.flatnonzero(counts), allowed)
    n = neg[b].size
    expected = n / len(allowed)
    # Binomial 5-sigma band around n / |allowed| for every allowed item.
    sigma = math.sqrt(n * (1 / len(allowed)) * (1 - 1 / len(allowed)))
    assert np.all(np.abs(counts[allowed] - expected) < 5 * sigma)


def test_negatives_seeded_and_without_history():
  positives = jnp.array([[1, 2], [3, 0]], jnp.int32)
  a = losses.sample_negatives(jax.random.PRNGKey(3), positives, 50, 7)
  b = losses.sample_negatives(jax.random.PRNGKey(3), positives, 50, 7)
  c = losses.sample_negatives(jax.random.PRNGKey(4), positives, 50, 7)
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))
  assert not np.isin(np.asarray(a[0]), [1, 2]).any() and not np.isin(np.asarray(a[1]), [3]).any()
  # Works under jit with the sizes static.
  jitted = jax.jit(losses.sample_negatives, static_argnums=(2, 3))
  np.testing.assert_array_equal(jitted(jax.random.PRNGKey(3), positives, 50, 7), a)


def test_negatives_reject_bad_arguments():
  with pytest.raises(ValueError, match="num_negatives"):
    losses.sample_negatives(jax.random.PRNGKey(0), jnp.ones((2, 3), jnp.int32), 10, 0)
  with pytest.raises(ValueError, match="history_BxL"):
    losses.sample_negatives(
        jax.random.PRNGKey(0), jnp.ones((2, 3), jnp.int32), 10, 2, jnp.ones((3, 4), jnp.int32)
    )


def _log1p_exp_neg(x):
  return math.log1p(math.exp(-x))  # -log sigmoid(x)


def test_bpr_golden_value():
  # One user, two positions; the second is padding and must not count.
  user = jnp.array([[[1.0, 0.0], [5.0, 5.0]]])  # [B=1, P=2, D=2]
  pos = jnp.array([[[2.0, 0.0], [0.0, 0.0]]])
  neg = jnp.array([[[[0.0, 0.0], [1.0, 3.0]], [[9.0, 9.0], [9.0, 9.0]]]])  # [1, 2, K=2, 2]
  mask = jnp.array([[True, False]])
  # Scores of the real pair: pos 2, negatives 0 and 1 -> differences 2 and 1.
  expected = (_log1p_exp_neg(2.0) + _log1p_exp_neg(1.0)) / 2
  assert expected == pytest.approx(0.2200948, abs=1e-6)
  got = losses.bpr_loss(user, pos, neg, mask)
  assert float(got) == pytest.approx(expected, rel=1e-6)
  np.testing.assert_allclose(
      losses.bpr_from_scores(jnp.array([[2.0, 0.0]]), jnp.array([[[0.0, 1.0], [9.0, 9.0]]]), mask),
      expected,
      rtol=1e-6,
  )
  # Both pairs real: mean over the 4 (pair, negative) terms; pair 2 has differences 0 - 90 = -90 twice.
  both = losses.bpr_loss(user, pos, neg, jnp.array([[1, 1]]))
  assert float(both) == pytest.approx((2 * expected + 2 * _log1p_exp_neg(-90.0)) / 4, rel=1e-6)
  # Float weights give a weighted mean over pairs.
  weighted = losses.bpr_loss(user, pos, neg, jnp.array([[1.0, 0.5]]))
  assert float(weighted) == pytest.approx((expected + 0.5 * _log1p_exp_neg(-90.0)) / 1.5, rel=1e-6)
  # No real pair: zero, not NaN.
  assert float(losses.bpr_loss(user, pos, neg, jnp.zeros((1, 2), bool))) == 0.0


def test_softmax_golden_value_and_padding_excluded():
  items = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # N=4, row 0 = padding
  user = jnp.array([[[2.0, 1.0], [0.5, 0.5]]])  # [1, 2, 2]
  targets = jnp.array([[2, 0]])
  mask = jnp.array([[True, False]])
  logits = np.array([2.0, 1.0, 3.0])  # items 1..3 for the real pair
  expected = math.log(np.exp(logits).sum()) - logits[1]
  got = losses.softmax_loss(user, items, targets, mask)
  assert float(got) == pytest.approx(expected, rel=1e-6)
  # A huge padding row changes nothing: index 0 is never a class.
  loud_pad = items.at[0].set(jnp.array([100.0, 100.0]))
  assert float(losses.softmax_loss(user, loud_pad, targets, mask)) == pytest.approx(expected, rel=1e-6)
  grads = jax.jit(jax.grad(losses.softmax_loss, argnums=(0, 1)))(user, loud_pad, targets, mask)
  chex.assert_tree_all_finite(grads)
  np.testing.assert_array_equal(grads[1][0], 0.0)
  np.testing.assert_array_equal(grads[0][0, 1], 0.0)  # the padded pair gets no gradient


def test_masked_softmax_equals_the_plain_loss_without_a_history():
  rng = np.random.default_rng(0)
  user = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  items = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
  targets = jnp.array([[2, 3, 4], [5, 6, 7]], jnp.int32)
  weights = jnp.ones((2, 3), jnp.float32)
  plain = losses.softmax_loss(user, items, targets, weights)
  empty = losses.softmax_loss(user, items, targets, weights, history_BxL=jnp.zeros((2, 3), jnp.int32))
  np.testing.assert_allclose(float(empty), float(plain), rtol=1e-6)


def test_masked_softmax_gives_history_items_no_gradient():
  """Item 5 is in the input history at every position (and never the target): its row gets no gradient.
  Item 6 is the first target and then history: it is a class at position 0 only."""
  rng = np.random.default_rng(1)
  user = jnp.asarray(rng.normal(size=(1, 3, 4)), jnp.float32)
  items = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
  inputs, targets = jnp.array([[5, 6, 7]], jnp.int32), jnp.array([[6, 7, 8]], jnp.int32)
  weights = jnp.ones((1, 3), jnp.float32)
  grad = jax.grad(lambda t: losses.softmax_loss(user, t, targets, weights, history_BxL=inputs))(items)
  plain = jax.grad(lambda t: losses.softmax_loss(user, t, targets, weights))(items)
  assert np.all(np.asarray(grad[5]) == 0.0) and np.any(np.asarray(plain[5]) != 0.0)
  # Position 0 alone (item 6 its target, item 5 masked) equals a softmax without item 5's class.
  one = losses.softmax_loss(user[:, :1], items, targets[:, :1], weights[:, :1], history_BxL=inputs[:, :1])
  logits = np.asarray(user[0, 0] @ items.T)
  keep = np.array([n not in (0, 5) for n in range(10)])
  want = np.log(np.exp(logits[keep]).sum()) - logits[6]
  np.testing.assert_allclose(float(one), want, rtol=1e-5)


def _masked_nll_reference(logits_BxPxN, inputs_BxL, targets_BxP, causal):
  """numpy: per position, -log softmax over the rows 1..N-1 outside its input history (target kept)."""
  batch, positions, rows = logits_BxPxN.shape
  nll = np.zeros((batch, positions))
  for b in range(batch):
    for p in range(positions):
      seen = set(inputs_BxL[b, : p + 1] if causal else inputs_BxL[b]) - {0, targets_BxP[b, p]}
      keep = [n for n in range(1, rows) if n not in seen]
      row = logits_BxPxN[b, p, keep].astype(np.float64)
      nll[b, p] = np.log(np.exp(row - row.max()).sum()) + row.max() - logits_BxPxN[b, p, targets_BxP[b, p]]
  return nll.mean()


@pytest.mark.parametrize("causal", [True, False])
def test_history_mask_matches_a_reference_with_repeats_padding_and_the_target_in_history(causal):
  """Causal rows (P = L) see their prefix, one-target rows (P = 1) the whole row. Histories repeat an
  item (added twice, still no class), hold padding 0, and hold the position's own target (still a class)."""
  rng = np.random.default_rng(3)
  inputs = np.array([[0, 4, 4, 7, 2], [3, 5, 6, 5, 1]], np.int32)
  if causal:
    targets = np.array([[4, 7, 2, 9, 3], [5, 6, 5, 1, 8]], np.int32)
  else:
    targets = np.array([[4], [8]], np.int32)
  logits = rng.normal(size=(2, targets.shape[1], 10)).astype(np.float32) * 3
  got = losses.softmax_nll(
      jnp.asarray(logits), jnp.asarray(targets), jnp.ones(targets.shape), history_BxL=jnp.asarray(inputs)
  )
  np.testing.assert_allclose(float(got), _masked_nll_reference(logits, inputs, targets, causal), rtol=1e-5)
  grad = jax.grad(
      lambda l: losses.softmax_nll(
          l, jnp.asarray(targets), jnp.ones(targets.shape), history_BxL=jnp.asarray(inputs)
      )
  )(jnp.asarray(logits))
  chex.assert_tree_all_finite(grad)
  # Row 0's last position has seen 4 (twice), 7 and 2 (its target, 4 on one-target rows, stays a class).
  b, p = (0, 4) if causal else (0, 0)
  seen = [n for n in (4, 7, 2) if n != targets[b, p]]
  assert np.all(np.asarray(grad[b, p, seen]) == 0.0)


def test_softmax_over_a_padded_table_equals_the_unpadded_one():
  rng = np.random.default_rng(2)
  user = jnp.asarray(rng.normal(size=(2, 1, 4)), jnp.float32)
  items = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  padded = jnp.concatenate([items, jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)])
  targets, weights = jnp.array([[1], [5]], jnp.int32), jnp.ones((2, 1), jnp.float32)
  want = losses.softmax_loss(user, items, targets, weights)
  got = losses.softmax_loss(user, padded, targets, weights, num_items=jnp.int32(5))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


@pytest.mark.parametrize("with_history", [False, True])
def test_softmax_by_slices_equals_the_whole_batch_at_once(with_history):
  """Slices of 2 positions over P = L = 5 (the last slice padded): the same loss and gradients, the history
  mask included (each slice masks its own prefixes), and rows above num_items still no class."""
  rng = np.random.default_rng(4)
  user = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  items = jnp.asarray(rng.normal(size=(12, 4)), jnp.float32)
  inputs = jnp.asarray([[0, 0, 3, 4, 3], [1, 2, 5, 6, 7], [0, 8, 9, 2, 1]], jnp.int32)
  targets = jnp.asarray([[0, 3, 4, 3, 5], [2, 5, 6, 7, 9], [8, 9, 2, 1, 3]], jnp.int32)
  weights = (targets > 0).astype(jnp.float32)
  history = inputs if with_history else None

  def loss(u, t, chunk_rows):
    return losses.softmax_loss(u, t, targets, weights, history, jnp.int32(10), chunk_rows=chunk_rows)

  whole = jax.value_and_grad(loss, argnums=(0, 1))(user, items, 0)
  sliced = jax.value_and_grad(loss, argnums=(0, 1))(user, items, 6)  # 6 // 3 = 2 positions a slice
  chex.assert_trees_all_close(sliced, whole, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(sliced[1][1][11]) == 0.0)  # above num_items: no class, no gradient


def test_softmax_slices_only_a_batch_of_more_than_twice_chunk_rows_pairs():
  """12 pairs (4 users x 3 positions): computed at once up to chunk_rows = 6 (no lax.map in the program),
  in slices below."""
  user, items = jnp.ones((4, 3, 2)), jnp.ones((5, 2))
  targets, weights = jnp.ones((4, 3), jnp.int32), jnp.ones((4, 3))

  def program(chunk_rows):
    return str(
        jax.make_jaxpr(lambda u: losses.softmax_loss(u, items, targets, weights, chunk_rows=chunk_rows))(user)
    )

  assert "scan" not in program(0) and "scan" not in program(6) and "scan" in program(5)
  with pytest.raises(ValueError, match="slices need a target at every input position: P=3, L=2"):
    losses.softmax_nll_by_slices(user, items, targets, weights, 1, history_BxL=jnp.ones((4, 2), jnp.int32))
