"""User histories to recommend for, as rows of one catalogue: JSONL, a RecBole `.inter` file, or a mapping.

  .jsonl   one user per line, items oldest first: {"user_id": "u1", "items": ["B01", "B07"]}
  .inter   RecBole atomic interactions (the run's data.user_field, item_field and time_field); each user's
           items sorted by time (stable: equal times keep file order), users in order of first appearance
  mapping  {user_id: [item ids, oldest first]} (from Python)

Every item must be an id of the catalogue. An unknown id is an error naming the file, the line and the id;
with on_unknown='skip' it is dropped and counted instead, and a user left with no item is dropped and
counted too. An empty history and a user given twice are errors.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Mapping, Sequence

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recg_jax import errors
from recg_jax import paths
from recg_jax.data import recbole
from recg_jax.data.errors import DataError
from recg_jax.serving import catalogue as catalogue_lib

ON_UNKNOWN = ("error", "skip")


@dataclasses.dataclass(frozen=True, eq=False)
class Histories:
  """U users' histories as rows of `catalogue` (CSR: user u's items are items[offsets[u]:offsets[u+1]]).

  user_ids: [U] str.
  offsets: [U+1] int64.
  items: [T] int32 rows 1..N of the catalogue, oldest first.
  catalogue: the catalogue the rows index.
  unknown_skipped: item ids dropped as unknown (on_unknown='skip').
  users_dropped: users dropped because none of their items is in the catalogue (on_unknown='skip').
  """

  user_ids: np.ndarray
  offsets: np.ndarray
  items: np.ndarray
  catalogue: catalogue_lib.Catalogue
  unknown_skipped: int = 0
  users_dropped: int = 0

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def history(self, user: int) -> np.ndarray:
    return self.items[self.offsets[user] : self.offsets[user + 1]]

  def exclusion_rows(self, users_B: np.ndarray, width_multiple: int = 1) -> np.ndarray:
    """[B, W] int32: each user's whole history, 0-padded (row 0 is never a candidate anyway). W is the
    longest history of all users rounded up to width_multiple, so every batch has one shape."""
    multiple = max(1, int(width_multiple))
    width = -(-int(self.lengths.max()) // multiple) * multiple
    cols = np.arange(width)[None, :]
    idx = self.offsets[users_B][:, None] + cols
    inside = cols < self.lengths[users_B][:, None]
    return np.where(inside, self.items[np.minimum(idx, len(self.items) - 1)], 0).astype(np.int32)


class _Builder:
  """Collects users one at a time, resolving ids against the catalogue and applying on_unknown."""

  def __init__(self, catalogue: catalogue_lib.Catalogue, on_unknown: str, path: str | None):
    if on_unknown not in ON_UNKNOWN:
      raise errors.ConfigError(f"on_unknown must be one of {ON_UNKNOWN}, got {on_unknown!r}")
    self.catalogue, self.on_unknown, self.path = catalogue, on_unknown, path
    self.user_ids: list[str] = []
    self.rows: list[np.ndarray] = []
    self.first_line: dict[str, int | None] = {}
    self.unknown_skipped = self.users_dropped = 0

  def add(self, user, items: Sequence, line: int | None, field: str = "items") -> None:
    user = "" if user is None else str(user).strip()
    if not user:
      raise DataError("missing or empty user id", path=self.path, line=line, field="user_id")
    if user in self.first_line:
      first = self.first_line[user]
      raise DataError(
          f"user {user!r} given twice" + (f" (first on line {first})" if first else ""),
          path=self.path,
          line=line,
          field="user_id",
      )
    self.first_line[user] = line
    if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, np.ndarray)):
      raise DataError(
          f"user {user!r}: items must be a list of item ids, got {type(items).__name__}",
          path=self.path,
          line=line,
          field=field,
      )
    if not len(items):
      raise DataError(f"user {user!r} has an empty history", path=self.path, line=line, field=field)
    row_of = self.catalogue.row_of
    rows = [row_of.get(str(i)) for i in items]
    if None in rows:
      unknown = [str(i) for i, r in zip(items, rows) if r is None]
      if self.on_unknown == "error":
        raise DataError(
            f"user {user!r}: item {unknown[0]!r} is not in catalogue "
            f"{self.catalogue.name!r} ({len(unknown)} unknown in this history; "
            "on_unknown='skip' drops them)",
            path=self.path,
            line=line,
            field=field,
        )
      self.unknown_skipped += len(unknown)
      rows = [r for r in rows if r is not None]
      if not rows:
        self.users_dropped += 1
        return
    self.user_ids.append(user)
    self.rows.append(np.asarray(rows, np.int32))

  def build(self) -> Histories:
    if not self.user_ids:
      raise DataError(
          "no user to recommend for"
          + (f" ({self.users_dropped} users had no item of the " "catalogue)" if self.users_dropped else ""),
          path=self.path,
      )
    lengths = [len(r) for r in self.rows]
    return Histories(
        user_ids=np.array(self.user_ids, object),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=np.concatenate(self.rows).astype(np.int32),
        catalogue=self.catalogue,
        unknown_skipped=self.unknown_skipped,
        users_dropped=self.users_dropped,
    )


def _jsonl_users(path: paths.Path) -> Iterator[tuple[int, object, object]]:
  for line_no, row in catalogue_lib.json_objects(path, '{"user_id": ..., "items": [...]}'):
    if "items" not in row:
      raise DataError('expected {"user_id": ..., "items": [...]}', path=path, line=line_no, field="items")
    yield line_no, row.get("user_id"), row["items"]


def _inter_users(
    path: paths.Path,
    data_config: ml_collections.ConfigDict,
    catalogue: catalogue_lib.Catalogue,
    builder: _Builder,
) -> None:
  """Adds every user of a RecBole .inter file (vectorised: one pass of pyarrow over the columns)."""
  user_f, item_f, time_f = data_config.user_field, data_config.item_field, data_config.time_field
  inter = recbole.AtomicFile(path, [user_f, item_f, time_f])
  if not inter.num_rows:
    raise DataError("no interactions", path=path)
  items = inter.columns[item_f]
  rows = pc.index_in(items, value_set=pa.array(catalogue.item_ids.tolist(), pa.string()))
  known = pc.is_valid(rows).to_numpy(zero_copy_only=False)
  if not known.all() and builder.on_unknown == "error":
    row = int(np.argmin(known))
    raise DataError(
        f"item {items[row].as_py()!r} is not in catalogue {catalogue.name!r} "
        f"({int((~known).sum())} unknown interactions; on_unknown='skip' drops them)",
        path=path,
        line=inter.line_of_row(row),
        field=item_f,
    )
  users = pc.dictionary_encode(inter.columns[user_f])  # codes in order of first appearance
  codes = users.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  rows_T = rows.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
  times = inter.floats(time_f)
  order = np.argsort(times, kind="stable")
  order = order[np.argsort(codes[order], kind="stable")]
  counts = np.bincount(codes, minlength=len(users.dictionary))
  starts = np.concatenate([[0], np.cumsum(counts)])
  first_rows = np.full(len(counts), len(codes))
  np.minimum.at(first_rows, codes, np.arange(len(codes)))
  names = users.dictionary.to_pylist()
  builder.unknown_skipped += int((~known).sum())
  for u, name in enumerate(names):
    user_rows = rows_T[order[starts[u] : starts[u + 1]]]
    user_rows = user_rows[user_rows > 0]
    if not len(user_rows):
      builder.users_dropped += 1
      continue
    if not name.strip():
      raise DataError("empty user id", path=path, line=inter.line_of_row(int(first_rows[u])), field=user_f)
    builder.user_ids.append(name)
    builder.rows.append(user_rows.astype(np.int32))


def read_histories(
    source: str | os.PathLike | Mapping[str, Sequence[str]],
    catalogue: catalogue_lib.Catalogue,
    config: ml_collections.ConfigDict | None = None,
    on_unknown: str = "error",
) -> Histories:
  """Histories from a .jsonl or .inter file or a {user_id: [item ids]} mapping (module docstring).

  config: the run's config; only a .inter file needs it (its data.*_field names).
  """
  if isinstance(source, Mapping):
    builder = _Builder(catalogue, on_unknown, None)
    for user, items in source.items():
      builder.add(user, items, None)
    return builder.build()
  path = paths.as_path(source)
  builder = _Builder(catalogue, on_unknown, os.fspath(path))
  if not path.is_file():
    raise DataError("histories file not found", path=path)
  suffix = path.suffix.lower()
  if suffix == ".jsonl":
    for line, user, items in _jsonl_users(path):
      builder.add(user, items, line)
  elif suffix == ".inter":
    if config is None:
      raise errors.ConfigError("a .inter histories file needs the run's config (its data.*_field names)")
    _inter_users(path, config.data, catalogue, builder)
  else:
    raise DataError(f"unknown histories format {path.suffix!r}: expected .jsonl or .inter", path=path)
  return builder.build()
