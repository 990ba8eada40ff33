"""Training rows, batches, prefetching and Cloze masking (recg_jax/input_pipeline.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import input_pipeline as ip
from recg_jax.data import types


def _domain(histories):
  rows = [np.asarray(h, np.int32) for h in histories]
  num_items = int(max(max(h) for h in histories))
  offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
  empty = np.array([""] * (num_items + 1), dtype=object)
  return types.DomainData(
      name="Toy",
      item_tokens=np.array(["[PAD]"] + [str(i) for i in range(1, num_items + 1)], dtype=object),
      item_fields={"title": empty},
      item_text=empty,
      user_tokens=np.array([f"u{i}" for i in range(len(rows))], dtype=object),
      offsets=offsets,
      items=np.concatenate(rows),
      synthetic=True,
  )


# Training parts (all but the last two items): [1,2,3,4], [1..7] (window keeps the last 4), [7,8,9], [5].
TOY = _domain([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9], [7, 8, 9, 10, 11], [5, 6, 7]])


def _all_rows(rows):
  return rows.gather(np.arange(rows.num_rows))


def test_causal_all_prefixes_golden():
  rows = ip.build_rows(TOY, max_len=3, targets="all_prefixes", causal=True)
  assert rows.num_rows == 3  # the user with a 1-item training part has no target
  b = _all_rows(rows)
  np.testing.assert_array_equal(b["inputs"], [[1, 2, 3], [4, 5, 6], [0, 7, 8]])
  np.testing.assert_array_equal(b["targets"], [[2, 3, 4], [5, 6, 7], [0, 8, 9]])
  np.testing.assert_array_equal(b["weights"], [[1, 1, 1], [1, 1, 1], [0, 1, 1]])
  np.testing.assert_array_equal(b["history"], [[1, 2, 3, 4], [4, 5, 6, 7], [0, 7, 8, 9]])
  assert rows.num_targets == 8 == int(b["weights"].sum())
  assert b["inputs"].dtype == np.int32 and b["weights"].dtype == np.float32


def test_last_target_only():
  for causal in (True, False):
    rows = ip.build_rows(TOY, max_len=3, targets="last", causal=causal)
    b = _all_rows(rows)
    np.testing.assert_array_equal(b["inputs"], [[1, 2, 3], [4, 5, 6], [0, 7, 8]])
    np.testing.assert_array_equal(b["targets"], [[4], [7], [9]])
    np.testing.assert_array_equal(b["weights"], np.ones((3, 1)))


def test_bidirectional_prefix_rows_golden():
  rows = ip.build_rows(TOY, max_len=3, targets="all_prefixes", causal=False)
  b = _all_rows(rows)
  np.testing.assert_array_equal(
      b["inputs"], [[0, 0, 1], [0, 1, 2], [1, 2, 3], [0, 0, 4], [0, 4, 5], [4, 5, 6], [0, 0, 7], [0, 7, 8]]
  )
  np.testing.assert_array_equal(b["targets"][:, 0], [2, 3, 4, 5, 6, 7, 8, 9])
  # Every prefix row keeps the whole window of its user for negative exclusion.
  np.testing.assert_array_equal(b["history"][4], [4, 5, 6, 7])
  assert rows.num_targets == rows.num_rows == 8


def test_cloze_rows_keep_short_users():
  rows = ip.build_rows(TOY, max_len=3, causal=False, objective="cloze")
  b = _all_rows(rows)
  np.testing.assert_array_equal(b["inputs"], [[2, 3, 4], [5, 6, 7], [7, 8, 9], [0, 0, 5]])
  np.testing.assert_array_equal(b["targets"], b["inputs"])
  np.testing.assert_array_equal(b["weights"], b["inputs"] != 0)
  # Cloze only applies to the bidirectional backbone; a causal one falls back to next-item rows.
  assert not ip.build_rows(TOY, max_len=3, causal=True, objective="cloze").cloze


def test_bad_modes_are_named():
  with pytest.raises(ValueError, match="config.train.targets"):
    ip.build_rows(TOY, 3, targets="every")
  with pytest.raises(ValueError, match="bert4rec_objective"):
    ip.build_rows(TOY, 3, objective="mlm")
  with pytest.raises(ValueError, match="no user"):
    ip.build_rows(_domain([[1, 2, 3], [2, 3, 1]]), 3)


def _many_users():
  rng = np.random.default_rng(0)
  return _domain([rng.integers(1, 40, size=int(rng.integers(4, 15))) for _ in range(37)])


def test_epoch_batches_cover_rows_once_and_pad():
  rows = ip.build_rows(_many_users(), max_len=5, causal=False)
  bs = 16
  batches = list(ip.epoch_batches(rows, bs, seed=3, epoch=0))
  assert len(batches) == ip.steps_per_epoch(rows, bs) == -(-rows.num_rows // bs)
  assert all(b["inputs"].shape == (bs, 5) and b["targets"].shape == (bs, 1) for b in batches)
  weights = np.concatenate([b["weights"][:, 0] for b in batches])
  assert weights.sum() == rows.num_rows
  pad = bs * len(batches) - rows.num_rows
  assert pad > 0 and np.all(weights[-pad:] == 0) and np.all(batches[-1]["inputs"][bs - pad :] == 0)
  # Each row exactly once: compare as multisets of (input, target) rows.
  got = np.concatenate(
      [np.concatenate([b["inputs"], b["targets"]], 1)[b["weights"][:, 0] > 0] for b in batches]
  )
  full = _all_rows(rows)
  want = np.concatenate([full["inputs"], full["targets"]], 1)
  assert sorted(map(tuple, got)) == sorted(map(tuple, want))


@pytest.mark.parametrize("processes", [2, 4])
def test_process_parts_of_every_batch_join_to_the_whole_batch(processes):
  # Each process builds only its rows of every global batch; in process order they are the batch.
  rows = ip.build_rows(_many_users(), max_len=5, length_buckets=(2,))
  batch_size = 8
  per = batch_size // processes
  whole = list(ip.epoch_batches(rows, batch_size, seed=3, epoch=1))
  parts = [
      list(ip.epoch_batches(rows, batch_size, seed=3, epoch=1, part=slice(p * per, (p + 1) * per)))
      for p in range(processes)
  ]
  assert any(b["weights"].sum(axis=-1).min() == 0 for b in whole)  # a padded batch is among them
  for b, batch in enumerate(whole):
    for key, value in batch.items():
      np.testing.assert_array_equal(np.concatenate([part[b][key] for part in parts]), value, err_msg=key)


def test_epoch_order_is_a_function_of_seed_and_epoch():
  rows = ip.build_rows(_many_users(), max_len=5)
  first = lambda seed, epoch: next(ip.epoch_batches(rows, 8, seed, epoch))["inputs"]
  np.testing.assert_array_equal(first(0, 1), first(0, 1))
  assert not np.array_equal(first(0, 1), first(0, 2))
  assert not np.array_equal(first(0, 1), first(1, 1))
  # Resuming at batch k yields exactly the tail of the epoch.
  full = list(ip.epoch_batches(rows, 8, 0, 4))
  tail = list(ip.epoch_batches(rows, 8, 0, 4, start_batch=2))
  assert len(tail) == len(full) - 2
  for a, b in zip(full[2:], tail):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_prefetch_matches_and_places_on_sharding():
  rows = ip.build_rows(_many_users(), max_len=5)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  want = list(ip.epoch_batches(rows, 8, 0, 0))
  got = list(ip.prefetch(ip.epoch_batches(rows, 8, 0, 0), 2, sharding))
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert isinstance(g["inputs"], jax.Array) and g["inputs"].sharding == sharding
    for k in w:
      np.testing.assert_array_equal(np.asarray(g[k]), w[k])
  # Abandoning the iterator early stops the producer thread; no-prefetch mode gives the same batches.
  it = ip.prefetch(ip.epoch_batches(rows, 8, 0, 0), 1, sharding)
  next(it)
  it.close()
  direct = list(ip.prefetch(ip.epoch_batches(rows, 8, 0, 0), 0, sharding))
  np.testing.assert_array_equal(np.asarray(direct[1]["targets"]), want[1]["targets"])


def test_prefetch_reraises_producer_errors():
  def broken():
    yield {"x": np.zeros((2, 2), np.int32)}
    raise RuntimeError("reader failed")

  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), jax.sharding.PartitionSpec()
  )
  it = ip.prefetch(broken(), 2, sharding)
  next(it)
  with pytest.raises(RuntimeError, match="reader failed"):
    next(it)


def test_cloze_mask():
  rng = np.random.default_rng(1)
  inputs = rng.integers(1, 50, size=(512, 10)).astype(np.int32)
  inputs[:, :3] = 0  # padding
  inputs[0] = 0  # an all-padding (batch filler) row
  weights = (inputs != 0).astype(np.float32)
  mask_id = 99
  f = jax.jit(ip.cloze_mask, static_argnums=(3, 4, 5))
  masked_in, targets, w = map(
      np.asarray, f(jax.random.key(0), jnp.asarray(inputs), jnp.asarray(weights), 0.3, mask_id, 0.0)
  )
  np.testing.assert_array_equal(targets, inputs)
  is_mask = masked_in == mask_id
  np.testing.assert_array_equal(w > 0, is_mask)  # targets only at masked positions
  assert not is_mask[inputs == 0].any()  # padding is never masked
  np.testing.assert_array_equal(masked_in[~is_mask], inputs[~is_mask])
  assert is_mask[1:].any(axis=1).all()  # every real row trains on something
  rate = is_mask[1:, 3:].mean()
  assert 0.27 < rate < 0.36, rate  # ~mask_prob, plus the forced last items
  # last_item_prob = 1: exactly the last position of every real row.
  m1, _, w1 = map(
      np.asarray, f(jax.random.key(1), jnp.asarray(inputs), jnp.asarray(weights), 0.3, mask_id, 1.0)
  )
  np.testing.assert_array_equal(m1[1:] == mask_id, np.eye(10, dtype=bool)[[9] * 511])
  assert w1[0].sum() == 0
  # mask_prob = 0 still masks the last item (fallback), never more.
  m0, _, _ = map(
      np.asarray, f(jax.random.key(2), jnp.asarray(inputs), jnp.asarray(weights), 0.0, mask_id, 0.0)
  )
  np.testing.assert_array_equal(m0 == mask_id, m1 == mask_id)


# ------------------------------------------------------------------------------------------------------
# Length buckets.


def test_bucket_widths():
  assert ip.bucket_widths((), 50) == (50,)
  assert ip.bucket_widths((16, 4, 8), 50) == (4, 8, 16, 50)
  assert ip.bucket_widths((4, 8, 16, 32, 50, 64), 20) == (4, 8, 16, 20)  # capped at max_len
  for bad in ((0, 8), (4.5,), (True,)):
    with pytest.raises(ValueError, match="config.train.length_buckets"):
      ip.bucket_widths(bad, 10)


LAYOUTS = {
    "causal": dict(targets="all_prefixes", causal=True),
    "last": dict(targets="last", causal=True),
    "prefix": dict(targets="all_prefixes", causal=False),
    "cloze": dict(causal=False, objective="cloze"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_bucketed_epoch_holds_every_row_once_at_its_width(layout):
  """Each batch: one bucket's rows, cut to its width without losing an item; each row exactly once."""
  domain, L, bs = _many_users(), 7, 8
  rows = ip.build_rows(domain, L, length_buckets=(2, 4), **LAYOUTS[layout])
  flat = ip.build_rows(domain, L, **LAYOUTS[layout])
  full = _all_rows(flat)
  assert rows.widths == (2, 4, 7) and flat.widths == (7,)
  lengths = (full["inputs"] != 0).sum(axis=1)
  np.testing.assert_array_equal(rows.input_lengths(), lengths)
  np.testing.assert_array_equal(
      np.asarray(rows.widths)[rows.row_bucket_N], np.where(lengths <= 2, 2, np.where(lengths <= 4, 4, 7))
  )
  sizes = ip.bucket_sizes(rows)
  assert sum(sizes.values()) == rows.num_rows and len(sizes) >= 2
  plan = ip.epoch_plan(rows, bs, seed=1, epoch=0)
  batches = list(ip.epoch_batches(rows, bs, seed=1, epoch=0))
  assert len(batches) == len(plan) == ip.steps_per_epoch(rows, bs) == sum(-(-n // bs) for n in sizes.values())
  seen = []
  p = full["targets"].shape[1] > 1
  for (width, idx), b in zip(plan, batches):
    assert b["inputs"].shape == (bs, width) and b["history"].shape == (bs, L + 1)
    assert b["targets"].shape == ((bs, width) if p else (bs, 1)) and b["weights"].shape == b["targets"].shape
    n = len(idx)
    # The cut drops only padding: the real rows equal the full-width rows' last `width` columns.
    assert not full["inputs"][idx, : L - width].any()
    np.testing.assert_array_equal(b["inputs"][:n], full["inputs"][idx, L - width :])
    cut = slice(L - width, None) if p else slice(None)  # per-position targets are cut like the inputs
    np.testing.assert_array_equal(b["targets"][:n], full["targets"][idx, cut])
    np.testing.assert_array_equal(b["weights"][:n], full["weights"][idx, cut])
    np.testing.assert_array_equal(b["history"][:n], full["history"][idx])
    assert not b["weights"][n:].any() and not b["inputs"][n:].any()  # padding rows of a bucket's last batch
    seen.extend(idx.tolist())
  assert sorted(seen) == list(range(rows.num_rows))
  # Every row's targets are kept: the batches carry the whole epoch's weight.
  assert sum(b["weights"].sum() for b in batches) == full["weights"].sum()
  with pytest.raises(ValueError, match="cannot be cut to width 2"):
    rows.gather(np.flatnonzero(rows.input_lengths() > 2), 2)


def test_bucketed_order_is_a_function_of_seed_and_epoch():
  rows = ip.build_rows(_many_users(), max_len=7, length_buckets=(2, 4))
  widths = lambda seed, epoch: [w for w, _ in ip.epoch_plan(rows, 4, seed, epoch)]
  same = [ip.epoch_plan(rows, 4, 0, 3) for _ in range(2)]
  assert [w for w, _ in same[0]] == [w for w, _ in same[1]]
  for (_, a), (_, b) in zip(*same):
    np.testing.assert_array_equal(a, b)
  # Buckets are interleaved (not one after the other); the interleaving changes with the epoch, not with
  # the seed (seeds train stacked, at one width per step), while the rows of each batch change with both.
  assert widths(0, 3) != sorted(widths(0, 3))
  assert widths(0, 3) != widths(0, 4) and widths(0, 3) == widths(1, 3)
  assert sorted(widths(0, 3)) == sorted(widths(0, 4))
  rows_of = lambda seed: [tuple(idx) for _, idx in ip.epoch_plan(rows, 4, seed, 3)]
  assert rows_of(0) != rows_of(1) and sorted(rows_of(0)) != sorted(rows_of(1))
  # Resuming at batch k yields exactly the tail of the epoch.
  full = list(ip.epoch_batches(rows, 4, 0, 3))
  tail = list(ip.epoch_batches(rows, 4, 0, 3, start_batch=5))
  assert len(tail) == len(full) - 5
  for a, b in zip(full[5:], tail):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
