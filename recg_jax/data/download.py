"""Resumable file download with urllib: `.part` file, HTTP Range resume, atomic rename when complete.

A download that fails removes what it created and holds nothing: an empty `.part` file and the folders it
made for the destination (innermost first, each only while empty). A `.part` file that holds bytes stays,
since the next call resumes from it, and so do files and folders that were there before the call.
"""

from __future__ import annotations

import os
import pathlib
import urllib.error
import urllib.parse
import urllib.request

import tqdm

from recg_jax.data.errors import DataError

_CHUNK = 1 << 20


def _open(url: str, offset: int, timeout: float):
  """Opens `url` from byte `offset`. Returns (stream, total size or None, whether it starts at offset)."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme == "file":
    path = urllib.request.url2pathname(parsed.path)
    if not os.path.isfile(path):
      raise DataError("download source not found", path=path)
    stream = open(path, "rb")
    stream.seek(offset)
    return stream, os.path.getsize(path), True
  request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
  try:
    response = urllib.request.urlopen(request, timeout=timeout)
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset:  # the part file already holds every byte
      return None, offset, True
    raise DataError(f"download failed: HTTP {e.code} {e.reason}", path=url) from None
  except urllib.error.URLError as e:
    raise DataError(f"download failed: {e.reason}", path=url) from None
  resumed = offset > 0 and response.status == 206
  length = response.headers.get("Content-Length")
  start = offset if resumed else 0
  total = start + int(length) if length is not None else None
  return response, total, resumed or offset == 0


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = _CHUNK,
) -> pathlib.Path:
  """Downloads `url` to `dest` unless `dest` exists.

  Bytes go to `dest + ".part"`. A later call resumes from the part file's size: with an HTTP Range
  request (a server that ignores it answers 200 and the download restarts), or by seeking for file://
  URLs. `dest` appears only when complete (atomic rename), so a reader never sees a partial file.
  """
  dest = pathlib.Path(dest)
  if dest.exists():
    return dest
  created = _missing_folders(dest.parent)
  dest.parent.mkdir(parents=True, exist_ok=True)
  part = dest.with_name(dest.name + ".part")
  part_existed = part.exists()
  try:
    _fetch(url, dest, part, progress=progress, timeout=timeout, chunk_size=chunk_size)
  except BaseException:
    _remove_created(None if part_existed else part, created)
    raise
  return dest


def _missing_folders(folder: pathlib.Path) -> list[pathlib.Path]:
  """The folders `folder.mkdir(parents=True)` would create, innermost first."""
  missing = []
  while not folder.exists() and folder.parent != folder:
    missing.append(folder)
    folder = folder.parent
  return missing


def _remove_created(part: pathlib.Path | None, folders: list[pathlib.Path]) -> None:
  """After a failed download: `part` (a part file this call created) if it holds no byte, then each
  created folder, innermost first, while it is empty."""
  try:
    if part is not None and part.is_file() and part.stat().st_size == 0:
      part.unlink()
    for folder in folders:
      if any(folder.iterdir()):
        break
      folder.rmdir()
  except OSError:
    pass  # cleaning up must never hide the download's own error


def _fetch(
    url: str, dest: pathlib.Path, part: pathlib.Path, *, progress: bool, timeout: float, chunk_size: int
) -> None:
  """Appends the bytes of `url` not yet in `part` to it, then renames it to `dest`."""
  offset = part.stat().st_size if part.exists() else 0
  stream, total, continues = _open(url, offset, timeout)
  if not continues:
    offset = 0
  if total is not None and offset > total:
    raise DataError(
        f"partial file is larger ({offset} bytes) than the source ({total} bytes); delete it and retry",
        path=part,
    )
  if stream is not None:
    with (
        stream,
        open(part, "ab" if offset else "wb") as out,
        tqdm.tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=not progress,
        ) as bar,
    ):
      while chunk := stream.read(chunk_size):
        out.write(chunk)
        bar.update(len(chunk))
  size = part.stat().st_size
  if total is not None and size != total:
    raise DataError(f"download incomplete: {size} of {total} bytes (run again to resume)", path=part)
  os.replace(part, dest)
