"""The one path type for everything under a run's workdir: local folders and buckets alike.

`etils.epath.Path` (as orbax and the flax examples use it) keeps `gs://bucket/run` a bucket path, where
pathlib would make it a local folder named `gs:`. Local paths behave as pathlib's. Remote ones go through
epath's backend (tf.io.gfile where TensorFlow is installed, else fsspec: `gcsfs` for gs://, `s3fs` for
s3://), and orbax writes checkpoints there through tensorstore.

Remote file systems have no append and no atomic rename of folders, so writers here replace whole files
(a temporary sibling, then `replace`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, IO, Union

from etils import epath

Path = epath.Path
PathLike = Union[str, os.PathLike]
REMOTE_PREFIXES = ("gs://", "s3://", "az://", "hf://")


def as_path(path: PathLike) -> epath.Path:
  return epath.Path(path)


def user_cache_dir() -> epath.Path:
  """Where a command keeps what it may reuse when it has no workdir: $RECG_CACHE_DIR, else
  $XDG_CACHE_HOME/recg_jax, else ~/.cache/recg_jax."""
  if os.environ.get("RECG_CACHE_DIR"):
    return as_path(os.environ["RECG_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return as_path(os.path.join(base, "recg_jax"))


def is_remote(path: PathLike) -> bool:
  return os.fspath(path).startswith(REMOTE_PREFIXES)


def absolute(path: PathLike) -> epath.Path:
  """An absolute local path (cwd-independent, as orbax wants it); remote paths are absolute already."""
  path = as_path(path)
  return path if is_remote(path) else path.absolute()


def write_atomic(path: PathLike, write: Callable[[IO], None], mode: str = "wb") -> None:
  """Writes `path` through `write(file)` into a temporary sibling, then moves it over `path`: a reader
  sees the old file or the new one, never half of one."""
  path = as_path(path)
  tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
  try:
    with tmp.open(mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      write(f)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text_atomic(path: PathLike, text: str) -> None:
  write_atomic(path, lambda f: f.write(text), mode="w")


def write_json_atomic(path: PathLike, payload: Any, indent: int = 1, sort_keys: bool = False) -> None:
  """payload as UTF-8 JSON (objects it cannot encode as their str), written atomically."""
  write_text_atomic(
      path, json.dumps(payload, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n"
  )
