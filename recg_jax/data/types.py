"""The processed form of one domain, shared by every stage after data preparation.

Item indices are 1..num_items; index 0 is the padding item everywhere (embedding tables have a zero row 0).
User histories are stored flat (CSR): the history of user u is `items[offsets[u]:offsets[u + 1]]`, in time
order, after k-core filtering and before any truncation. Leave-one-out (docs/method.md): the last item is the
test target, the second-to-last the validation target, and the rest is the training part.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recg_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class DomainData:
  """One domain after filtering. Arrays of strings are numpy object arrays."""

  name: str
  item_tokens: np.ndarray  # [I+1] original item ids; row 0 = "[PAD]"
  item_fields: dict[str, np.ndarray]  # text field -> [I+1] raw strings; row 0 = ""
  item_text: np.ndarray  # [I+1] rendered item text (recg_jax.data.text); row 0 = ""
  user_tokens: np.ndarray  # [U] original user ids
  offsets: np.ndarray  # [U+1] int64
  items: np.ndarray  # [T] int32 in 1..I
  synthetic: bool = False

  @property
  def num_items(self) -> int:
    return len(self.item_tokens) - 1

  @property
  def num_users(self) -> int:
    return len(self.user_tokens)

  @property
  def num_interactions(self) -> int:
    return int(self.items.shape[0])

  @property
  def lengths(self) -> np.ndarray:
    """[U] history length per user."""
    return np.diff(self.offsets)

  def history(self, user: int) -> np.ndarray:
    return self.items[self.offsets[user] : self.offsets[user + 1]]


def right_aligned(rows: list[np.ndarray] | tuple[np.ndarray, ...], max_len: int) -> np.ndarray:
  """Packs variable-length rows into [len(rows), max_len] int32, keeping the last max_len items of each.

  Rows are right-aligned (left-padded with 0): the most recent item is always at position max_len - 1,
  so the user vector of every backbone is read at one fixed position.
  """
  out = np.zeros((len(rows), max_len), np.int32)
  for i, row in enumerate(rows):
    tail = row[-max_len:]
    if len(tail):
      out[i, max_len - len(tail) :] = tail
  return out


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """Leave-one-out evaluation rows of one domain, for one split (valid or test).

  inputs_UxL: right-aligned input histories (valid: training part; test: training part + valid item).
  targets_U: the held-out item per user.
  """

  inputs_UxL: np.ndarray
  targets_U: np.ndarray


def leave_one_out(domain: DomainData, split: str, max_len: int) -> EvalSplit:
  """Builds the `valid` or `test` rows of docs/method.md's leave-one-out protocol, vectorised over users."""
  if split not in ("valid", "test"):
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
  drop = 1 if split == "valid" else 0  # items after the target that the input must not see
  short = np.flatnonzero(domain.lengths < 2 + drop)
  if len(short):
    raise DataError(
        f"{domain.name}: user {domain.user_tokens[short[0]]!r} has {domain.lengths[short[0]]} "
        f"interaction(s); the {split} split needs at least {2 + drop}"
    )
  ends = domain.offsets[1:] - drop  # one past the target
  targets = domain.items[ends - 1]
  starts = np.maximum(domain.offsets[:-1], ends - 1 - max_len)
  lengths = ends - 1 - starts
  # Gather each right-aligned window with one fancy index instead of a per-user loop.
  cols = np.arange(max_len)[None, :]
  pad = max_len - lengths[:, None]
  idx = starts[:, None] + cols - pad
  inputs = np.where(cols >= pad, domain.items[np.clip(idx, 0, len(domain.items) - 1)], 0)
  return EvalSplit(inputs_UxL=inputs.astype(np.int32), targets_U=targets.astype(np.int32))


def training_histories(domain: DomainData) -> list[np.ndarray]:
  """The training part of every history: everything but the last two items (docs/method.md leave-one-out)."""
  return [domain.items[s : e - 2] for s, e in zip(domain.offsets[:-1], domain.offsets[1:])]


# A run trained on several source domains names them all in data.source, joined by this.
SOURCE_SEPARATOR = "+"


def source_names(source: str) -> tuple[str, ...]:
  """The source domains of data.source: one name, or several joined by '+' (a multi-source run)."""
  return tuple(n.strip() for n in str(source).split(SOURCE_SEPARATOR) if n.strip())


def _with_users(domain: DomainData, users: np.ndarray) -> DomainData:
  """The domain restricted to `users` (indices, kept in the order given), every item kept."""
  lengths = domain.lengths[users]
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  take = np.concatenate([np.arange(domain.offsets[u], domain.offsets[u + 1]) for u in users])
  return dataclasses.replace(
      domain, user_tokens=domain.user_tokens[users], offsets=offsets, items=domain.items[take]
  )


def user_subset(domain: DomainData, max_users: int, seed: int = 0) -> DomainData:
  """The domain restricted to a seeded random max_users of its users (kept in their order), every item
  kept; the domain itself when it has no more users than that or max_users is 0."""
  if max_users <= 0 or domain.num_users <= max_users:
    return domain
  users = np.sort(
      np.random.default_rng([seed, domain.num_users, 0xCA9]).choice(
          domain.num_users, max_users, replace=False
      )
  )
  return _with_users(domain, users)


def _seeded_user_order(domain: DomainData, seed: int, salt: int) -> np.ndarray:
  """A permutation of the domain's users keyed on (seed, user count, salt): each use draws from its own
  salt, so a budget's users and a held-out share never share one order."""
  return np.random.default_rng([seed, domain.num_users, salt]).permutation(domain.num_users)


def budget_users(domain: DomainData, fraction: float, seed: int = 0) -> np.ndarray:
  """The users (indices, ascending) of a training budget: the fewest users, taken in one seeded order, whose
  training parts (all but the last two items) hold at least `fraction` of the domain's training
  interactions (at least one user). The order depends on the domain and `seed` alone, so a smaller budget's
  users are among a larger one's, whatever run seed trains on them; every user at fraction >= 1."""
  if not 0.0 < fraction:
    raise ValueError(f"a training budget must be a positive fraction, got {fraction}")
  if fraction >= 1.0:
    return np.arange(domain.num_users)
  order = _seeded_user_order(domain, seed, 0xB0D6E7)
  held = np.cumsum(np.maximum(domain.lengths[order] - 2, 0))
  count = int(np.searchsorted(held, fraction * held[-1], side="left")) + 1
  return np.sort(order[: min(count, domain.num_users)])


def budget_subset(domain: DomainData, fraction: float, seed: int = 0) -> DomainData:
  """The domain restricted to budget_users(domain, fraction, seed), every item kept (the domain itself at
  fraction >= 1)."""
  if fraction >= 1.0:
    return domain
  return _with_users(domain, budget_users(domain, fraction, seed))


def holdout_users(domain: DomainData, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held): the domain's users (indices, ascending) split into those a model trains on and a seeded
  `share` of them held out (at least one each way). The order depends on the domain and `seed` alone."""
  if not 0.0 < share < 1.0:
    raise ValueError(f"a held-out share of users must be in (0, 1), got {share}")
  if domain.num_users < 2:
    raise ValueError(f"domain {domain.name!r} has {domain.num_users} user(s): none can be held out")
  count = min(max(1, round(share * domain.num_users)), domain.num_users - 1)
  order = _seeded_user_order(domain, seed, 0x4E1D)
  return np.sort(order[count:]), np.sort(order[:count])


def split_users(domain: DomainData, share: float, seed: int = 0) -> tuple[DomainData, DomainData]:
  """(trained on, held out): the domain restricted to each side of holdout_users, every item kept."""
  kept, held = holdout_users(domain, share, seed)
  return _with_users(domain, kept), _with_users(domain, held)
