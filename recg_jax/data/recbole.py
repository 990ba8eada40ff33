"""Reader for RecBole atomic files: `<root>/<Domain>/<Domain>.inter` and `<Domain>.item`.

Both files are tab-separated with a typed header, `user_id:token	item_id:token	timestamp:float`. No
quoting: a `"` is an ordinary character. The bulk parse runs in pyarrow. When it fails, a line scan of
the raw bytes finds the first bad line, so every error names the file, the 1-based line and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import io
import math
import os
import re

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recg_jax import paths
from recg_jax.data.errors import DataError
from recg_jax.data.raw import RawDomain

# RecBole's atomic column types.
_TYPES = ("token", "token_seq", "float", "float_seq")
_HEADER_RE = re.compile(r"^([^:\s]+):([A-Za-z_]+)$")


def domain_files(root: str | os.PathLike[str], name: str) -> tuple[paths.Path, paths.Path]:
  """The (.inter, .item) paths of one domain; raises DataError when the folder or a file is missing."""
  folder = paths.as_path(root) / name
  if not folder.is_dir():
    raise DataError(
        f"domain folder not found (expected {name}/{name}.inter and {name}/{name}.item "
        f"under data root {os.fspath(root)!r}); point --config.data.root (or RECG_DATA_ROOT) at the "
        "folder that holds one folder per domain",
        path=folder,
    )
  files = folder / f"{name}.inter", folder / f"{name}.item"
  for path in files:
    if not path.is_file():
      raise DataError("file not found", path=path)
  return files


class AtomicFile:
  """One parsed atomic file: the header and every column as a pyarrow string array.

  Rows are the non-empty lines after the header; `line_of_row` maps a row back to its file line.
  """

  def __init__(self, path: paths.Path, required: Sequence[str]):
    self.path = path
    self._data = path.read_bytes()
    self._check_utf8()
    self.names, self.types = self._parse_header()
    for name in required:
      if name not in self.names:
        raise DataError(
            f"missing column (header has {', '.join(self.names)}); the config's field "
            f"names must match the header",
            path=path,
            line=1,
            field=name,
        )
    self.columns = self._parse_body()

  @property
  def num_rows(self) -> int:
    return len(self.columns[self.names[0]])

  def _check_utf8(self) -> None:
    try:
      self._data.decode("utf-8")
    except UnicodeDecodeError as e:
      line_start = self._data.rfind(b"\n", 0, e.start) + 1
      line = self._data.count(b"\n", 0, e.start) + 1
      column = self._data.count(b"\t", line_start, e.start)
      field = None
      if line > 1:
        header = self._data[: self._data.find(b"\n")].decode("utf-8", "replace").rstrip("\r").split("\t")
        if column < len(header):
          field = header[column].split(":")[0]
      raise DataError(
          f"invalid UTF-8 (byte 0x{self._data[e.start]:02x} at column {column + 1})",
          path=self.path,
          line=line,
          field=field,
      ) from None

  def _parse_header(self) -> tuple[list[str], list[str]]:
    if self._data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first name
      self._data = self._data[3:]
    end = self._data.find(b"\n")
    header = self._data[: end if end >= 0 else len(self._data)].decode("utf-8").rstrip("\r")
    if not header.strip():
      raise DataError(
          "missing typed header (file is empty or starts with a blank line)", path=self.path, line=1
      )
    names, types = [], []
    for column in header.split("\t"):
      m = _HEADER_RE.match(column)
      if m is None:
        raise DataError(
            f"missing or malformed typed header: column {column!r} is not 'name:type' "
            f"(type one of {', '.join(_TYPES)})",
            path=self.path,
            line=1,
            field=column,
        )
      if m.group(2) not in _TYPES:
        raise DataError(
            f"unknown column type {m.group(2)!r} (expected one of {', '.join(_TYPES)})",
            path=self.path,
            line=1,
            field=m.group(1),
        )
      if m.group(1) in names:
        raise DataError("column named twice in header", path=self.path, line=1, field=m.group(1))
      names.append(m.group(1))
      types.append(m.group(2))
    return names, types

  def _parse_body(self) -> dict[str, pa.Array]:
    body = self._data[self._data.find(b"\n") + 1 :] if b"\n" in self._data else b""
    if not body.strip():  # header only: no rows (an empty domain is reported after filtering)
      return {n: pa.array([], pa.string()) for n in self.names}
    try:
      table = pcsv.read_csv(
          io.BytesIO(body),
          # One thread: a threaded reader finishes its callbacks after read_csv returns, and a worker
          # still releasing the Python buffer when the interpreter exits aborts the process (an error
          # raised right after a read did, 1 run in 8).
          read_options=pcsv.ReadOptions(
              column_names=self.names, autogenerate_column_names=False, use_threads=False
          ),
          parse_options=pcsv.ParseOptions(
              delimiter="\t",
              quote_char=False,
              escape_char=False,
              newlines_in_values=False,
              ignore_empty_lines=True,
          ),
          convert_options=pcsv.ConvertOptions(
              column_types={n: pa.string() for n in self.names},
              strings_can_be_null=False,
              quoted_strings_can_be_null=False,
          ),
      )
    except pa.ArrowInvalid as e:
      self._raise_column_count()
      raise DataError(f"could not parse: {e}", path=self.path) from None
    return {n: table.column(n).combine_chunks() for n in self.names}

  def _raise_column_count(self) -> None:
    """Finds the first data line whose tab count disagrees with the header and raises for it."""
    expected = len(self.names)
    for number, raw in enumerate(self._data.split(b"\n")[1:], start=2):
      raw = raw.rstrip(b"\r")
      if not raw:
        continue
      found = raw.count(b"\t") + 1
      if found < expected:
        raise DataError(
            f"expected {expected} tab-separated columns ({', '.join(self.names)}), found " f"{found}",
            path=self.path,
            line=number,
            field=self.names[found],
        )
      if found > expected:
        raise DataError(
            f"expected {expected} tab-separated columns ({', '.join(self.names)}), found " f"{found}",
            path=self.path,
            line=number,
            field=self.names[-1],
        )

  @functools.cached_property
  def _row_lines(self) -> np.ndarray:
    """[num_rows] 1-based file line of every row (blank lines are skipped by the parser)."""
    raw = np.frombuffer(self._data, np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    if not len(ends) or ends[-1] != len(raw) - 1:
      ends = np.append(ends, len(raw))
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts
    cr_only = (lengths == 1) & (raw[np.minimum(starts, len(raw) - 1)] == ord("\r"))
    nonblank = (lengths > 0) & ~cr_only
    lines = np.flatnonzero(nonblank) + 1
    return lines[lines > 1]

  def line_of_row(self, row: int) -> int:
    return int(self._row_lines[row])

  def floats(self, name: str) -> np.ndarray:
    """The column as float64; raises on the first value that is not a finite number."""
    column = self.columns[name]
    try:
      values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
      values = None  # arrow rejects some forms Python accepts (" 2.5"); decide per value below
    if values is None or not np.isfinite(values).all():
      strings = column.to_pylist()
      parsed = np.empty(len(strings), np.float64)
      for row, s in enumerate(strings):
        try:
          parsed[row] = float(s)
        except ValueError:
          parsed[row] = math.nan
        if not math.isfinite(parsed[row]):
          raise DataError(
              f"not a finite number: {s!r}", path=self.path, line=self.line_of_row(row), field=name
          )
      values = parsed
    return values


def read_recbole(
    root: str | os.PathLike[str], name: str, data_config: ml_collections.ConfigDict
) -> RawDomain:
  """Reads `<root>/<name>/<name>.{inter,item}` into a RawDomain.

  Field names come from data_config.{user,item,time}_field and data_config.text_fields. Every text
  field must be a column of the .item file; other string columns of the .item file are kept too (for
  templates such as the paper's prompt that use them). Every item of the .inter file must have a row in
  the .item file; item ids in the .item file must be unique.
  """
  inter_path, item_path = domain_files(root, name)
  user_f, item_f, time_f = data_config.user_field, data_config.item_field, data_config.time_field
  inter = AtomicFile(inter_path, [user_f, item_f, time_f])
  item = AtomicFile(item_path, [item_f, *data_config.text_fields])

  item_tokens = item.columns[item_f]
  counts = pc.value_counts(item_tokens)
  duplicated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
  if len(duplicated):
    first = pc.index(item_tokens, duplicated[0]).as_py()
    second = first + 1 + pc.index(item_tokens.slice(first + 1), duplicated[0]).as_py()
    raise DataError(
        f"item id {duplicated[0].as_py()!r} appears twice (first on line {item.line_of_row(first)})",
        path=item_path,
        line=item.line_of_row(second),
        field=item_f,
    )

  item_codes = pc.index_in(inter.columns[item_f], value_set=item_tokens)
  if item_codes.null_count:
    row = pc.index(pc.is_null(item_codes), True).as_py()
    raise DataError(
        f"item {inter.columns[item_f][row].as_py()!r} has no row in {item_path.name}",
        path=inter_path,
        line=inter.line_of_row(row),
        field=item_f,
    )
  users = pc.dictionary_encode(inter.columns[user_f])  # codes in order of first appearance
  times = inter.floats(time_f)

  keep = [n for n, t in zip(item.names, item.types) if n != item_f and t in ("token", "token_seq")]
  keep += [n for n in data_config.text_fields if n not in keep]
  return RawDomain(
      name=name,
      user_tokens=users.dictionary.to_numpy(zero_copy_only=False).astype(object),
      item_tokens=item_tokens.to_numpy(zero_copy_only=False).astype(object),
      item_fields={n: item.columns[n].to_numpy(zero_copy_only=False).astype(object) for n in keep},
      user_codes=users.indices.to_numpy(zero_copy_only=False).astype(np.int64),
      item_codes=item_codes.to_numpy(zero_copy_only=False).astype(np.int64),
      times=times,
  )
