"""File to file: what `python -m recg_jax.recommend` does, as a function (the command parses flags only).

recommend_files loads the run (or, given none, a training-free method), reads the catalogue and the
histories, writes the lists (atomically) and, when asked, the vectors they were scored with; it returns
what it did, for the console and for tests.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import ml_collections

from recg_jax import errors
from recg_jax import paths
from recg_jax.config import serving as serving_config
from recg_jax.serving import output
from recg_jax.serving import run as run_lib


@dataclasses.dataclass(frozen=True)
class Summary:
  out: paths.Path
  export: paths.Path | None
  users: int
  items: int
  k: int
  unknown_skipped: int
  users_dropped: int
  seconds: float  # recommend() alone: embedding (when not cached), compiling and scoring


def recommend_files(
    workdir: str | os.PathLike | None,
    catalogue: str | os.PathLike,
    histories: str | os.PathLike,
    out: str | os.PathLike,
    *,
    top_k: int = 20,
    fmt: str = "",
    keep_history: bool = False,
    on_unknown: str = "error",
    export: str | os.PathLike = "",
    catalogue_name: str = "",
    cache_root: str | os.PathLike = "",
    settings: ml_collections.ConfigDict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    method: str = "",
    encoder: str = "",
) -> Summary:
  """Writes the top_k items of `catalogue` for every user of `histories` to `out` (see recg_jax.recommend).

  With no workdir, `method` (default serving_config.DEFAULT_METHOD) names the training-free method that
  scores, with `encoder` as its text encoder when given (run_lib.method).
  """
  fmt = output.format_of(out, fmt)  # a bad format fails before any work
  if workdir and (method or encoder):
    raise errors.ConfigError("a run fixes its own method and encoder: give a workdir, or a method, not both")
  if workdir:
    run = run_lib.load(workdir, settings=settings, cache_root=cache_root or None, progress=progress)
  else:
    run = run_lib.method(
        method or serving_config.DEFAULT_METHOD,
        cache_root=cache_root or None,
        settings=settings,
        encoder=encoder,
        progress=progress,
    )
  if export:
    run.require_user_vectors()  # fails before any work
  items = run.catalogue(catalogue, name=catalogue_name or None)
  users = run.histories(histories, items, on_unknown=on_unknown)
  log(
      f"[recommend] {run.label} ({run.head} head); "
      f"catalogue {items.name!r}: {items.num_items:,} items; {users.num_users:,} users"
  )
  if users.unknown_skipped or users.users_dropped:
    log(
        f"[recommend] skipped {users.unknown_skipped:,} history items not in the catalogue; "
        f"{users.users_dropped:,} users had none left and get no list"
    )
  start = time.perf_counter()
  recs, users_UxD = run.recommend_with_user_vectors(users, k=top_k, exclude_history=not keep_history)
  seconds = time.perf_counter() - start
  path = output.write_recommendations(out, users.user_ids, recs.item_ids, recs.scores, fmt)
  log(
      f"[recommend] wrote {path}: top {recs.scores.shape[1]} for {users.num_users:,} users in "
      f"{seconds:.1f} s (embedding when not cached, and compiling, included)"
  )
  folder = None
  if export:
    about = {
        "run": run.label if run.workdir is None else os.fspath(run.workdir),
        "head": run.head,
        "catalogue": items.name,
        "history_excluded_from_lists": not keep_history,
    }
    folder = output.write_export(
        export, items.item_ids, run.item_vectors(items), users.user_ids, users_UxD, about=about
    )
    log(f"[recommend] wrote the item and user vectors to {folder}")
  return Summary(
      out=path,
      export=folder,
      users=users.num_users,
      items=items.num_items,
      k=recs.scores.shape[1],
      unknown_skipped=users.unknown_skipped,
      users_dropped=users.users_dropped,
      seconds=seconds,
  )
