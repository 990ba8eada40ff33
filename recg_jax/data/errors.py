"""The one error type of data preparation: bad input, named precisely enough to fix it."""

from __future__ import annotations

import os


class DataError(ValueError):
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
