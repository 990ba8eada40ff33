"""Catalogues: the items a finished run ranks, read from a RecBole `.item` file, JSONL or CSV.

Every row has an id (the run's `data.item_field`, `item_id` by default) and text fields; the text is
rendered with the run's own template (`text.template`, `data.text_fields`), exactly as its training
domains were. Items are rows 1..N of every table built from a catalogue, in file order; row 0 is the
padding row, as everywhere in recg-jax.

Formats, by file suffix:
  .item   RecBole atomic file (tab-separated, typed header `item_id:token	title:token_seq ...`);
  .jsonl  one JSON object per line, e.g. {"item_id": "B01", "title": "...", "brand": "..."}; a list value
          is joined with spaces (RecBole's token_seq);
  .csv    a header row naming the columns, then one item per row.
Template fields missing from a file count as empty. An id given twice, an empty id or an item whose
template fields are all empty is an error that names the file, the line and the field.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
from typing import Iterator, Mapping

import ml_collections
import numpy as np

from recg_jax import paths
from recg_jax.data import recbole
from recg_jax.data import text as text_lib
from recg_jax.data.errors import DataError
from recg_jax.data.errors import decode_utf8

FORMATS = {".item": "recbole", ".jsonl": "jsonl", ".csv": "csv"}


@dataclasses.dataclass(frozen=True, eq=False)
class Catalogue:
  """N items to rank: their ids, their rendered texts and, optionally, their frozen table.

  name: names the catalogue's embedding cache (cache/embeddings/catalogue-<name>).
  item_ids: [N] str ids, unique.
  item_text: [N] texts as the run's encoder reads them.
  table: [N+1, H] float32 frozen embeddings, row 0 = padding; None = embed item_text with the run's encoder
    (recg_jax.serving.Run does, through its embedding cache).
  path: the file it was read from, for error messages.
  """

  name: str
  item_ids: np.ndarray
  item_text: np.ndarray
  table: np.ndarray | None = None
  path: str | None = None

  def __post_init__(self):
    ids = np.array([str(i) for i in self.item_ids], object)  # ids are compared as strings everywhere
    texts = np.asarray(self.item_text, object)
    object.__setattr__(self, "item_ids", ids)
    object.__setattr__(self, "item_text", texts)
    if texts.ndim != 1 or not len(ids):
      raise DataError(f"catalogue {self.name!r} has no items", path=self.path)
    if texts.shape != ids.shape:
      raise DataError(f"catalogue {self.name!r}: {len(ids)} ids but {len(texts)} texts")
    if self.table is not None and (self.table.ndim != 2 or self.table.shape[0] != len(ids) + 1):
      raise DataError(
          f"catalogue {self.name!r}: table of shape {self.table.shape}; {len(ids)} items need "
          f"[{len(ids) + 1}, H] (row 0 = padding)"
      )
    if len(self.row_of) != len(ids):
      seen: set = set()
      duplicate = next(i for i in ids if i in seen or seen.add(i))
      raise DataError(f"item id {duplicate!r} appears more than once", path=self.path)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  @functools.cached_property
  def row_of(self) -> dict[str, int]:
    """Item id -> its row 1..N in the catalogue's tables."""
    return {item: row for row, item in enumerate(self.item_ids, start=1)}

  def with_table(self, table_NxH: np.ndarray) -> "Catalogue":
    return dataclasses.replace(self, table=np.asarray(table_NxH, np.float32))


def _cell(value) -> str:
  """A JSON value as item text: lists joined with spaces (RecBole's token_seq), null as empty."""
  if value is None:
    return ""
  if isinstance(value, (list, tuple)):
    return " ".join(_cell(v) for v in value)
  return str(value)


def json_objects(path: paths.Path, expected: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) of every non-blank line of a JSONL file; `expected` describes an object in the
  error for a line that is not one."""
  text = decode_utf8(path.read_bytes(), path)
  for line_no, line in enumerate(io.StringIO(text), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"not valid JSON ({e.msg}, column {e.colno})", path=path, line=line_no) from None
    if not isinstance(row, dict):
      raise DataError(f"expected {expected}, got {type(row).__name__}", path=path, line=line_no)
    yield line_no, row


def _jsonl_rows(path: paths.Path, id_field: str) -> Iterator[tuple[int, Mapping[str, str]]]:
  for line_no, row in json_objects(path, f"a JSON object with an {id_field!r} field"):
    yield line_no, {k: _cell(v) for k, v in row.items()}


def _csv_rows(path: paths.Path, id_field: str) -> Iterator[tuple[int, Mapping[str, str]]]:
  reader = csv.DictReader(io.StringIO(decode_utf8(path.read_bytes(), path), newline=""))
  if reader.fieldnames is None or id_field not in reader.fieldnames:
    raise DataError(
        f"no {id_field!r} column (header: {reader.fieldnames})", path=path, line=1, field=id_field
    )
  for row in reader:
    if None in row:  # more cells than header names
      raise DataError(
          f"{len(reader.fieldnames) + len(row[None])} cells for {len(reader.fieldnames)} columns",
          path=path,
          line=reader.line_num,
      )
    yield reader.line_num, {k: (v or "") for k, v in row.items()}


def _recbole_rows(path: paths.Path, id_field: str) -> Iterator[tuple[int, Mapping[str, str]]]:
  atomic = recbole.AtomicFile(path, [id_field])
  columns = {n: atomic.columns[n].to_pylist() for n in atomic.names}
  for row in range(atomic.num_rows):
    yield atomic.line_of_row(row), {n: values[row] for n, values in columns.items()}


def read_catalogue(
    path: str | os.PathLike, config: ml_collections.ConfigDict, name: str | None = None
) -> Catalogue:
  """Reads a catalogue file (see the module docstring) and renders its texts with the run's template.

  Args:
    path: a .item, .jsonl or .csv file.
    config: the run's config (its data.item_field, data.text_fields and text section are used).
    name: names the embedding cache; default the file name without its suffix.
  """
  path = paths.as_path(path)
  fmt = FORMATS.get(path.suffix.lower())
  if fmt is None:
    raise DataError(
        f"unknown catalogue format {path.suffix!r}: expected one of {', '.join(FORMATS)}", path=path
    )
  if not path.is_file():
    raise DataError("catalogue file not found", path=path)
  id_field = str(config.data.item_field)
  reader = {"recbole": _recbole_rows, "jsonl": _jsonl_rows, "csv": _csv_rows}[fmt]
  lines, ids, rows = [], [], []
  first_line: dict[str, int] = {}
  for line_no, row in reader(path, id_field):
    item = row.get(id_field, "").strip()
    if not item:
      raise DataError("missing or empty item id", path=path, line=line_no, field=id_field)
    if item in first_line:
      raise DataError(
          f"item id {item!r} appears twice (first on line {first_line[item]})",
          path=path,
          line=line_no,
          field=id_field,
      )
    first_line[item] = line_no
    lines.append(line_no)
    ids.append(item)
    rows.append(row)
  if not ids:
    raise DataError("the catalogue has no items", path=path)
  field_names = list(dict.fromkeys(k for row in rows for k in row if k != id_field))
  fields = {n: np.array([row.get(n, "") for row in rows], object) for n in field_names}
  texts, has_text = text_lib.render_rows(fields, config.text, tuple(config.data.text_fields))
  if not has_text.all():
    bad = int(np.argmin(has_text))
    raise DataError(
        f"item {ids[bad]!r} has no text: every field of the run's template is empty or missing "
        f"(template {config.text.template!r}, fields {', '.join(config.data.text_fields)}; "
        f"the file has {', '.join(field_names) or 'no text columns'})",
        path=path,
        line=lines[bad],
        field=id_field,
    )
  return Catalogue(
      name=name or path.stem, item_ids=np.array(ids, object), item_text=texts, path=os.fspath(path)
  )
