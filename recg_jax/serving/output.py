"""Files the recommend command writes, each atomically: a temporary file next to the target, then a rename.

Recommendations:
  JSONL  one line per user: {"user_id": ..., "items": [best first], "scores": [...]}
  CSV    user_id,rank,item_id,score: one row per recommended item, rank 1 = best
Vectors (`write_export`), for an approximate-nearest-neighbour index:
  items.npy [N, D] float32 and item_ids.json (row i of items.npy is item_ids[i]), users.npy [U, D] and
  user_ids.json likewise, and manifest.json (written last) saying how they score: score = <user, item>.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Callable, IO

import numpy as np

from recg_jax import errors
from recg_jax import paths

FORMATS = ("jsonl", "csv")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> paths.Path:
  """Calls write(file) on a temporary file beside `path`, then renames it to `path`: readers see the old
  file or the whole new one, never a part."""
  path = paths.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  paths.write_atomic(path, write, mode="wb" if binary else "w")
  return path


def format_of(path: str | os.PathLike, fmt: str = "") -> str:
  """The output format: `fmt` when given, else from the suffix (.csv is CSV, anything else JSONL)."""
  fmt = fmt or ("csv" if paths.as_path(path).suffix.lower() == ".csv" else "jsonl")
  if fmt not in FORMATS:
    raise errors.ConfigError(f"output format must be one of {FORMATS}, got {fmt!r}")
  return fmt


def write_recommendations(
    path: str | os.PathLike, user_ids: np.ndarray, item_ids: np.ndarray, scores: np.ndarray, fmt: str = ""
) -> paths.Path:
  """Writes every user's list (slots without an item left out) as JSONL or CSV (module docstring)."""
  fmt = format_of(path, fmt)

  def write(f: IO) -> None:
    if fmt == "csv":
      writer = csv.writer(f, lineterminator="\n")
      writer.writerow(["user_id", "rank", "item_id", "score"])
    for user, ids, values in zip(user_ids, item_ids, scores.tolist()):
      keep = [i for i, item in enumerate(ids) if item is not None]
      if fmt == "csv":
        writer.writerows([user, rank, ids[i], values[i]] for rank, i in enumerate(keep, start=1))
      else:
        f.write(
            json.dumps(
                {"user_id": user, "items": [ids[i] for i in keep], "scores": [values[i] for i in keep]},
                ensure_ascii=False,
            )
            + "\n"
        )

  return atomic_write(path, write)


def _save_npy(path: paths.Path, array: np.ndarray) -> None:
  atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array, np.float32)), binary=True)


def _save_json(path: paths.Path, value) -> None:
  paths.write_json_atomic(path, value)


def write_export(
    folder: str | os.PathLike,
    item_ids: np.ndarray,
    items_NxD: np.ndarray,
    user_ids: np.ndarray,
    users_UxD: np.ndarray,
    about: dict,
) -> paths.Path:
  """Writes the vectors and their id indexes (module docstring); `about` goes into manifest.json."""
  folder = paths.as_path(folder)
  if items_NxD.shape != (len(item_ids), users_UxD.shape[1]) or len(users_UxD) != len(user_ids):
    raise ValueError(
        f"export: {len(item_ids)} item ids for items {items_NxD.shape}, {len(user_ids)} user "
        f"ids for users {users_UxD.shape}"
    )
  folder.mkdir(parents=True, exist_ok=True)
  # The manifest goes last (and first away): a folder with a manifest always has the vectors it describes.
  (folder / "manifest.json").unlink(missing_ok=True)
  _save_npy(folder / "items.npy", items_NxD)
  _save_json(folder / "item_ids.json", [str(i) for i in item_ids])
  _save_npy(folder / "users.npy", users_UxD)
  _save_json(folder / "user_ids.json", [str(u) for u in user_ids])
  _save_json(
      folder / "manifest.json",
      {
          "score": "dot product: score(user, item) = users.npy[u] . items.npy[i]",
          "items": {"file": "items.npy", "ids": "item_ids.json", "shape": list(items_NxD.shape)},
          "users": {"file": "users.npy", "ids": "user_ids.json", "shape": list(users_UxD.shape)},
          **about,
      },
  )
  return folder
