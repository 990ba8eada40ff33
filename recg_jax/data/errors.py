"""The one error type of data preparation: bad input, named precisely enough to fix it."""

from __future__ import annotations

import os

from recg_jax import errors


class DataError(errors.RecgError, ValueError):
  """Bad input data. The message names the file, the 1-based line and the field when they are known.

  Attributes:
    path: the offending file or folder (str), or None.
    line: 1-based line number in `path`, or None.
    field: the column / JSON key / config field involved, or None.
    reason: the bare description, without the location prefix.
  """

  def __init__(
      self,
      reason: str,
      *,
      path: str | os.PathLike[str] | None = None,
      line: int | None = None,
      field: str | None = None,
  ):
    self.path = None if path is None else os.fspath(path)
    self.line = line
    self.field = field
    self.reason = reason
    where = []
    if self.path is not None:
      where.append(self.path if line is None else f"{self.path}, line {line}")
    if field is not None:
      where.append(f"field {field!r}")
    super().__init__(f"{': '.join(where)}: {reason}" if where else reason)


def decode_utf8(data: bytes, path: str | os.PathLike[str] | None = None) -> str:
  """data decoded as UTF-8; bytes that are not raise DataError naming the line and column (1-based)."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line_start = data.rfind(b"\n", 0, e.start) + 1
    raise DataError(
        f"invalid UTF-8 (byte 0x{data[e.start]:02x} at column {e.start - line_start + 1}); save the file "
        "as UTF-8",
        path=path,
        line=data.count(b"\n", 0, e.start) + 1,
    ) from None
