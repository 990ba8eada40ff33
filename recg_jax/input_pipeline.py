"""Training batches for the source domain (docs/method.md steps 4-5, "Data and protocol").

Rows are built once from the training part of every history (data/types.training_histories): everything
but the last two items. Only the last `max_len + 1` items of a training part are used: the window whose
first `max_len` items are the longest input any backbone sees.

Row layouts (all sequences right-aligned, 0 = padding, as data/types.right_aligned):
- causal backbones (sasrec, gru4rec), `targets='all_prefixes'`: one row per user, input = window[:-1],
  targets = window[1:] per position (target t is predicted from positions <= t). A target is kept only
  where its input position holds a real item, so the first item is never predicted from an empty prefix.
- `targets='last'` (the authors' code), any backbone: one row per user, input = window[:-1], one target,
  the last training item.
- bidirectional backbone (bert4rec), next-item objective, `targets='all_prefixes'`: every prefix of the
  window is its own row (input = the first k items, target = item k), because a bidirectional encoder
  would see the target if prefixes shared a row.
- bert4rec Cloze (`train.bert4rec_objective='cloze'`): one row per user, input = the last `max_len` items
  of the window, targets = the input itself; which positions are masked is drawn on device from the step
  key (`cloze_mask`), so the host pipeline stays a pure function of (seed, epoch).

Length buckets (config.train.length_buckets): most histories are far shorter than max_len, so each row
goes to the smallest bucket width W that holds its input (`bucket_widths`: the configured widths capped
at max_len, plus max_len itself). Every batch holds rows of one bucket only and is cut to its last W
columns, which are all that a right-aligned row of input length <= W fills; the model counts positions
from the right, so a row gives the same outputs at any width. One train-step shape per bucket, hence one
compile per bucket and no retrace. An empty tuple means a single bucket of width max_len.

Every batch is a dict of numpy arrays with a fixed leading size B:
  inputs_BxW int32, targets_BxP int32 (P = W for per-position targets, 1 otherwise), weights_BxP float32
  (1 for a real target of a real row), history_BxH int32 (H = max_len + 1 in every bucket: the row's whole
  training window, to keep negatives outside it; a prefix row's window is longer than its input).

Epoch order (`epoch_plan`), a pure function of (seed, epoch): the rows of each bucket are shuffled (by
seed and epoch), cut into batches of B (the bucket's last partial batch is padded with zero rows of weight
0), then the order of all batches of all buckets is shuffled by epoch alone. The number of batches per
bucket does not depend on the seed, so the sequence of batch widths is the same for every seed: runs
that differ only in their seed train together as one program over stacked parameters
(recg_jax/training/), each on its own rows, at the same width at every step. With a single bucket the
batch order is left as cut (already random), which is the unbucketed pipeline. Position (epoch, batch
index) fully determines a batch, so resuming mid-epoch only needs the batch index.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recg_jax import distributed
from recg_jax import errors
from recg_jax.data import types
from recg_jax.data.errors import DataError

Batch = dict[str, np.ndarray]

TARGET_MODES = ("all_prefixes", "last")
OBJECTIVES = ("next_item", "cloze")


@dataclasses.dataclass(frozen=True)
class TrainingRows:
  """Compact description of every training row; batches are gathered from it on demand.

  window_UxH: the last max_len + 1 training items of each kept user, right-aligned.
  lengths_U: number of real items in each window.
  row_user_N: the window each row reads.
  row_end_N: for prefix rows, how many window items form the input (the target is the next one); -1 for
    rows that read the whole window.
  row_bucket_N: index into `widths` of each row's bucket: the narrowest width that holds its input.
  widths: bucket widths (padded input lengths), ascending, the last one max_len (`bucket_widths`).
  """

  window_UxH: np.ndarray
  lengths_U: np.ndarray
  row_user_N: np.ndarray
  row_end_N: np.ndarray
  max_len: int
  per_position: bool  # targets_BxL (True) or targets_Bx1 (False)
  cloze: bool
  prefix: bool  # one row per (user, prefix length): bert4rec next-item with all prefixes
  row_bucket_N: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
  widths: tuple[int, ...] = ()

  @property
  def num_rows(self) -> int:
    return int(self.row_user_N.shape[0])

  @property
  def num_targets(self) -> int:
    """Real (unmasked) next-item targets per epoch; for Cloze the number of maskable positions."""
    if self.cloze:
      return int(np.minimum(self.lengths_U, self.max_len).sum())
    if self.per_position:
      return int((self.lengths_U - 1).sum())
    return self.num_rows

  def input_lengths(self) -> np.ndarray:
    """[N] number of real input items of each row (what decides its bucket)."""
    n = self.lengths_U[self.row_user_N]
    if self.prefix:
      return self.row_end_N.copy()
    if self.cloze:
      return np.minimum(n, self.max_len)
    return n - 1

  def gather(self, rows: np.ndarray, width: int | None = None) -> Batch:
    """Builds the batch for row indices `rows` [B] (vectorised; no per-row Python loop).

    width: keep only the last `width` input (and per-position target) columns; every row must have at most
    `width` input items. None = max_len.
    """
    L = self.max_len
    win = self.window_UxH[self.row_user_N[rows]]  # [B, L+1]
    ones = np.ones(len(rows), np.float32)
    if self.cloze:
      inputs = win[:, 1:]
      targets = inputs
      weights = (inputs != 0).astype(np.float32)
    elif self.per_position:
      inputs = win[:, :-1]
      targets = np.where(inputs != 0, win[:, 1:], 0)
      weights = (targets != 0).astype(np.float32)
    elif not self.prefix:
      inputs = win[:, :-1]
      targets = win[:, -1:]
      weights = ones[:, None]
    else:
      # Prefix rows: the input is the first k real items of the window, right-aligned to L.
      n = self.lengths_U[self.row_user_N[rows]][:, None]
      k = self.row_end_N[rows][:, None]
      start = L + 1 - n  # window index of the first real item
      idx = start + k - L + np.arange(L)[None, :]  # window index shown at each input position
      inputs = np.where(idx >= start, np.take_along_axis(win, np.clip(idx, 0, L), axis=1), 0)
      targets = np.take_along_axis(win, start + k, axis=1)
      weights = ones[:, None]
    if width is not None and width < L:
      # Right-aligned rows of input length <= width have nothing but padding before these columns.
      if inputs[:, : L - width].any():
        raise ValueError(f"a row has more than {width} input items: it cannot be cut to width {width}")
      inputs = inputs[:, L - width :]
      if self.per_position:
        targets, weights = targets[:, L - width :], weights[:, L - width :]
    return {
        "inputs": np.ascontiguousarray(inputs, np.int32),
        "targets": np.ascontiguousarray(targets, np.int32),
        "weights": np.ascontiguousarray(weights, np.float32),
        "history": np.ascontiguousarray(win, np.int32),
    }


def bucket_widths(
    length_buckets: Sequence[int], max_len: int, field: str = "train.length_buckets"
) -> tuple[int, ...]:
  """The padded input lengths in use: `length_buckets` capped at max_len, ascending, ending at max_len.

  An empty `length_buckets` gives (max_len,): no bucketing. `field` names the config field in errors.
  """
  widths = {int(max_len)}
  for b in tuple(length_buckets):
    if isinstance(b, bool) or int(b) != b or int(b) < 1:
      raise errors.ConfigError(
          f"config.{field}={tuple(length_buckets)!r}: expected positive integers (padded "
          f"input lengths, capped at data.max_len={max_len})"
      )
    widths.add(min(int(b), int(max_len)))
  return tuple(sorted(widths))


def build_rows(
    domain: types.DomainData,
    max_len: int,
    targets: str = "all_prefixes",
    causal: bool = True,
    objective: str = "next_item",
    length_buckets: Sequence[int] = (),
) -> TrainingRows:
  """Training rows of `domain` for one backbone/objective (see the module docstring).

  Args:
    domain: the source domain.
    max_len: model input length L.
    targets: config.train.targets, 'all_prefixes' | 'last'.
    causal: Recommender.is_causal of the backbone.
    objective: config.train.bert4rec_objective; 'cloze' is only valid for a non-causal backbone.
    length_buckets: config.train.length_buckets (see `bucket_widths`); () = one bucket of width max_len.
  """
  if targets not in TARGET_MODES:
    raise errors.ConfigError(f"config.train.targets={targets!r}: expected one of {TARGET_MODES}")
  if objective not in OBJECTIVES:
    raise errors.ConfigError(f"config.train.bert4rec_objective={objective!r}: expected one of {OBJECTIVES}")
  cloze = objective == "cloze" and not causal
  parts = types.training_histories(domain)
  window = types.right_aligned(parts, max_len + 1)
  lengths = np.minimum(np.array([len(p) for p in parts], np.int64), max_len + 1)
  keep = lengths >= (1 if cloze else 2)  # a next-item row needs one input item and one target
  if not keep.any():
    raise DataError(
        f"domain {domain.name!r}: no user has a training part long enough to train on "
        "(need at least 2 items before the validation and test items)"
    )
  window, lengths = window[keep], lengths[keep]
  users = np.arange(len(lengths))
  per_position = prefix = False
  if cloze:
    row_user, row_end = users, np.full(len(users), -1)
    per_position = True
  elif targets == "last":
    row_user, row_end = users, np.full(len(users), -1)
  elif causal:
    row_user, row_end = users, np.full(len(users), -1)
    per_position = True
  else:
    # One row per (user, k) with k = 1 .. n-1 input items.
    prefix = True
    counts = lengths - 1
    row_user = np.repeat(users, counts)
    first = np.cumsum(counts) - counts
    row_end = np.arange(int(counts.sum())) - np.repeat(first, counts) + 1
  rows = TrainingRows(
      window_UxH=window,
      lengths_U=lengths,
      row_user_N=row_user.astype(np.int64),
      row_end_N=row_end.astype(np.int64),
      max_len=max_len,
      per_position=per_position,
      cloze=cloze,
      prefix=prefix,
  )
  widths = bucket_widths(length_buckets, max_len)
  bucket = np.searchsorted(np.asarray(widths), rows.input_lengths(), side="left").astype(np.int64)
  return dataclasses.replace(rows, row_bucket_N=bucket, widths=widths)


@dataclasses.dataclass(frozen=True)
class MultiRows:
  """The training rows of several source domains (a multi-source run), trained in turns.

  Every epoch each domain contributes batches_per_domain batches, whatever its size, so that a large
  domain does not drown a small one: the batches of its own epoch plan, continued by further plans of it
  (rows reshuffled) when it has fewer, cut when it has more (a different share of its rows every epoch).
  The domains take turns batch by batch; a batch holds rows of one domain only, scored against that
  domain's catalogue. The sequence of (domain, width) depends on the epoch alone, as a single domain's.
  """

  domains: tuple[TrainingRows, ...]
  batches_per_domain: int

  @property
  def max_len(self) -> int:
    return self.domains[0].max_len

  @property
  def per_position(self) -> bool:
    return self.domains[0].per_position

  @property
  def cloze(self) -> bool:
    return self.domains[0].cloze

  @property
  def num_rows(self) -> int:
    return sum(r.num_rows for r in self.domains)

  @property
  def num_targets(self) -> int:
    return sum(r.num_targets for r in self.domains)


def multi_rows(domains: Sequence[TrainingRows], batch_size: int, batches_per_domain: int = 0) -> MultiRows:
  """MultiRows of the domains' rows; batches_per_domain 0 = the mean of their own batches per epoch."""
  own = [steps_per_epoch(r, batch_size) for r in domains]
  return MultiRows(tuple(domains), int(batches_per_domain) or max(1, round(float(np.mean(own)))))


def _domain_plan(rows: TrainingRows, batch_size: int, seed: int, epoch: int, count: int):
  """The first `count` batches of the domain's plans for this epoch (further plans when it runs short)."""
  plan, again = [], 0
  while len(plan) < count:
    plan += epoch_plan(rows, batch_size, seed, epoch * 7919 + again)
    again += 1
  return plan[:count]


def multi_epoch_plan(
    rows: MultiRows, batch_size: int, seed: int, epoch: int
) -> list[tuple[int, np.ndarray, int]]:
  """The batches of one multi-source epoch as (width, row indices, domain index), domains in turns."""
  plans = [_domain_plan(r, batch_size, seed, epoch, rows.batches_per_domain) for r in rows.domains]
  return [(*plans[d][k], d) for k in range(rows.batches_per_domain) for d in range(len(plans))]


def _widths_and_buckets(rows: TrainingRows) -> tuple[tuple[int, ...], np.ndarray]:
  # Rows built without buckets (e.g. by hand) form one bucket of width max_len.
  if rows.widths:
    return rows.widths, rows.row_bucket_N
  return (rows.max_len,), np.zeros(rows.num_rows, np.int64)


def bucket_sizes(rows: TrainingRows | MultiRows) -> dict[int, int]:
  """{bucket width: number of rows}, for the widths that hold at least one row (summed over domains)."""
  if isinstance(rows, MultiRows):
    total: dict[int, int] = {}
    for r in rows.domains:
      for w, n in bucket_sizes(r).items():
        total[w] = total.get(w, 0) + n
    return dict(sorted(total.items()))
  widths, bucket = _widths_and_buckets(rows)
  counts = np.bincount(bucket, minlength=len(widths))
  return {w: int(c) for w, c in zip(widths, counts) if c}


def steps_per_epoch(rows: TrainingRows | MultiRows, batch_size: int) -> int:
  """Batches per epoch: every bucket's rows in batches of `batch_size`, the last one partial (several
  domains: batches_per_domain of each)."""
  if isinstance(rows, MultiRows):
    return rows.batches_per_domain * len(rows.domains)
  return sum(-(-n // batch_size) for n in bucket_sizes(rows).values())


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The row order of one unbucketed epoch; a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_rows)


def epoch_plan(rows: TrainingRows, batch_size: int, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
  """The batches of one epoch as (width, row indices [<= batch_size]); a pure function of (seed, epoch).

  Rows are shuffled within their bucket and cut into batches, then all batches are shuffled together
  (see the module docstring). Its length is steps_per_epoch(rows, batch_size) for every epoch, and its
  sequence of widths depends on the epoch only, never on the seed.
  """
  widths, bucket = _widths_and_buckets(rows)
  if len(widths) == 1:
    perm = epoch_permutation(rows.num_rows, seed, epoch)
    return [(widths[0], perm[lo : lo + batch_size]) for lo in range(0, rows.num_rows, batch_size)]
  rng = np.random.default_rng([seed, epoch, 0x5EED, len(widths)])
  plan = []
  for b, width in enumerate(widths):
    members = rng.permutation(np.flatnonzero(bucket == b))
    plan.extend((width, members[lo : lo + batch_size]) for lo in range(0, len(members), batch_size))
  order = np.random.default_rng([epoch, 0x5EED, len(widths), 0x0DE5]).permutation(len(plan))
  return [plan[i] for i in order]


def plan_of(rows: TrainingRows | MultiRows, batch_size: int, seed: int, epoch: int) -> list[tuple]:
  """epoch_plan, or multi_epoch_plan for several domains: (width, row indices[, domain index]) per batch."""
  if isinstance(rows, MultiRows):
    return multi_epoch_plan(rows, batch_size, seed, epoch)
  return epoch_plan(rows, batch_size, seed, epoch)


def stacked_epoch_batches(
    rows: TrainingRows | MultiRows,
    batch_size: int,
    seeds: Sequence[int],
    epoch: int,
    start_batch: int = 0,
    part: slice | None = None,
) -> Iterator[Batch]:
  """epoch_batches of several seeds, stacked: every array gets a leading seed axis [S, B, ...]."""
  streams = [epoch_batches(rows, batch_size, int(s), epoch, start_batch, part) for s in seeds]
  for batches in zip(*streams):
    yield {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def epoch_batches(
    rows: TrainingRows | MultiRows,
    batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    part: slice | None = None,
) -> Iterator[Batch]:
  """Fixed-size numpy batches of one epoch, from batch `start_batch` on (for mid-epoch resume).

  part: only these rows of every global batch (a process's share, distributed.local_rows); the rows of
  the other processes are never gathered. None = the whole batch.
  """
  part = part or slice(0, batch_size)
  for width, idx, *domain in plan_of(rows, batch_size, seed, epoch)[start_batch:]:
    padded = np.full(batch_size, -1, np.int64)  # -1 = a padding row of weight 0, at the batch's end
    padded[: len(idx)] = idx
    mine = padded[part]
    real = mine[mine >= 0]
    source = rows.domains[domain[0]] if domain else rows
    batch = source.gather(real if len(real) else idx[:1], width)
    if not len(real):  # this process's share is all padding: any row's shapes, zeroed
      batch = {k: np.zeros_like(v) for k, v in batch.items()}
    short = len(mine) - len(batch["inputs"])
    if short:
      batch = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    if domain:  # which catalogue the batch is scored against, per row (so that it shards as the rows do)
      batch["domain"] = np.full(len(mine), domain[0], np.int32)
    yield batch


def put_batch(batch: Batch, sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
  """Places a numpy batch on the mesh, sharded along the axis the sharding names 'data' (the batch axis:
  0 for a [B, ...] batch, 1 for a seed-stacked [S, B, ...] one).

  With several processes `batch` holds this process's rows only (epoch_batches' `part`), and the global
  batch is joined from every process's rows.
  """
  if not distributed.multi():
    return jax.device_put(batch, sharding)
  return distributed.global_batch(batch, sharding, axis=list(sharding.spec).index("data"))


def prefetch(iterator: Iterator[Batch], size: int, sharding: jax.sharding.NamedSharding) -> Iterator[Any]:
  """Gathers and transfers up to `size` batches ahead in a background thread.

  The host-side gather and the host-to-device copy overlap the running step. Exceptions raised by the
  producer are re-raised in the consumer; abandoning the generator stops the thread.
  """
  if size <= 0:
    for batch in iterator:
      yield put_batch(batch, sharding)
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def produce():
    try:
      for batch in iterator:
        item = put_batch(batch, sharding)
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  thread = threading.Thread(target=produce, daemon=True, name="recg-prefetch")
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    # Drain so a producer blocked on put() sees `stop`.
    while thread.is_alive():
      try:
        q.get(timeout=0.05)
      except queue.Empty:
        pass
    thread.join()


def cloze_mask(
    key: jax.Array,
    inputs_BxL: jax.Array,
    weights_BxL: jax.Array,
    mask_prob: float,
    mask_id: int,
    last_item_prob: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """BERT4Rec Cloze masking, on device (train.bert4rec_objective='cloze').

  Each real position is masked with probability `mask_prob` (model.mask_prob). With probability
  `last_item_prob` (train.cloze_last_item_prob) a row masks only its last item instead: this is the
  evaluation convention, where the user vector is read at a mask token appended after the history (a
  Recommender built with cloze=True drops the oldest position and appends the mask in __call__), as in
  the original BERT4Rec. A real row with no masked position gets its last
  item masked, so every row trains on something.

  Returns:
    (masked inputs_BxL, targets_BxL = the original items, weights_BxL on the masked positions only).
  """
  k_pos, k_row = jax.random.split(key)
  B, L = inputs_BxL.shape
  real = inputs_BxL != 0
  masked = jax.random.bernoulli(k_pos, mask_prob, (B, L)) & real
  last = (jnp.arange(L) == L - 1)[None, :] & real
  last_only = jax.random.bernoulli(k_row, last_item_prob, (B, 1))
  masked = jnp.where(last_only, last, masked)
  masked = jnp.where(masked.any(axis=1, keepdims=True), masked, last)
  inputs = jnp.where(masked, jnp.int32(mask_id), inputs_BxL)
  return inputs, inputs_BxL, weights_BxL * masked.astype(weights_BxL.dtype)
