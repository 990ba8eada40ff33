"""A study's archive: a copy of every finished run's completion marker kept outside its working folder.

A study's folder (DIR) holds caches, checkpoints and the finished runs' markers. Where DIR does not
outlive the machine (a Colab runtime, a preempted VM, a cluster's scratch disk), experiment.archive names
a second folder, small enough to commit with the tables: each finished run's done.json and results.json
are copied there as the run finishes, under the run's path relative to DIR. A later invocation, in the same
DIR or a fresh one, first restores the archived markers into DIR, so it skips those runs and tables them as
any finished run; runs that finished in DIR before the archive was named are archived then.

A restored run has its numbers but not its checkpoints. A study that would reuse such a run's parameters
(a fusion over its trained part, recg_jax/grid/warm_start.py) asks `has_parameters` first, and trains
the part itself when they are gone.
"""

from __future__ import annotations

import json

import ml_collections

from recg_jax import distributed
from recg_jax import paths

# What a finished run's folder must hold to be tabled (runner.read_done reads both).
FILES = ("done.json", "results.json")
# How deep below DIR or the archive a run's folder may lie (runs/scratch/<domain>/<budget>/<preset>/seed<k>
# is 6): a bounded glob per depth, not '**', which a bucket's file system refuses.
MAX_DEPTH = 8


def folder(config: ml_collections.ConfigDict) -> paths.Path | None:
  """The archive folder of config.experiment.archive, or None where it is unset."""
  name = str(config.experiment.get("archive", ""))
  return paths.as_path(name) if name else None


def keep(run_dir: paths.Path, relpath: str, archive: paths.Path | None) -> None:
  """Copies a finished run's markers into the archive (results.json first: a run is archived once its
  done.json is there)."""
  if archive is None:
    return
  _copy(run_dir, archive / relpath)


def _copy(source: paths.Path, target: paths.Path, portable: bool = True) -> None:
  """Copies a run's markers; `portable` drops the data folder the run read (a cosmetic field, outside the
  fingerprint), a path of that machine only: the archive may be committed and restored anywhere."""
  target.mkdir(parents=True, exist_ok=True)
  for name in reversed(FILES):
    payload = json.loads((source / name).read_text(encoding="utf-8"))
    if portable and isinstance((payload.get("config") or {}).get("data"), dict):
      payload["config"]["data"]["root"] = ""
    paths.write_json_atomic(target / name, payload)


def _finished_runs(root: paths.Path) -> list[paths.Path]:
  """The folders below root that hold a finished run's markers."""
  markers = (m for depth in range(1, MAX_DEPTH + 1) for m in root.glob("*/" * depth + FILES[0]))
  return sorted(m.parent for m in markers if (m.parent / FILES[1]).is_file())


def sync(workdir: paths.Path, archive: paths.Path | None) -> tuple[list[str], list[str]]:
  """Restores into workdir every archived run it has not finished, and archives every finished run of
  workdir the archive lacks (one that finished before the archive was named); returns both relpath lists."""
  if archive is None:
    return [], []
  restored, kept = [], []
  for source, target, done in ((archive, workdir, restored), (workdir, archive, kept)):
    portable = target == archive
    if not source.is_dir():
      continue
    for run_dir in _finished_runs(source):
      rel = run_dir.relative_to(source).as_posix()
      if not (target / rel / FILES[0]).is_file():
        _copy(run_dir, target / rel, portable)
        done.append(rel)
  if restored or kept:
    distributed.say(f"[archive] {archive}: {len(restored)} finished run(s) restored, {len(kept)} archived")
  return restored, kept


def has_parameters(run_dir: paths.Path) -> bool:
  """Whether a finished run still has its best parameters (a run restored from an archive has not)."""
  return (run_dir / "checkpoints" / "best").is_dir()
