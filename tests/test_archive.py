"""A study's archive (recg_jax/grid/archive.py): finished runs go in without the machine's data path, come
back into a fresh folder, and a restored run is known to have no parameters."""

import json

from recg_jax import paths
from recg_jax.grid import archive
from recg_jax.grid import runner

REL = "runs/scratch/Office/100pct/id_ce/seed1"


def _finished_run(workdir, rel=REL):
  run_dir = workdir / rel
  (run_dir / "checkpoints" / "best").mkdir(parents=True)
  config = {"data": {"root": "/somewhere/data"}, "model": {"variant": "id"}}
  (run_dir / "results.json").write_text(json.dumps({"records": [], "config": config}))
  (run_dir / "done.json").write_text(json.dumps({"relpath": rel, "records": [], "config": config}))
  return run_dir


def test_a_finished_run_is_archived_without_its_data_path_and_restored_into_a_fresh_folder(tmp_path):
  first, store, fresh = (paths.as_path(tmp_path / n) for n in ("first", "archive", "fresh"))
  _finished_run(first)
  (first / "runs/scratch/Office/100pct/id_ce/seed2").mkdir(parents=True)  # unfinished: no markers
  assert archive.sync(first, store) == ([], [REL])
  archived = json.loads((store / REL / "done.json").read_text())
  assert archived["config"]["data"]["root"] == "" and archived["relpath"] == REL
  assert archive.sync(first, store) == ([], [])  # nothing new either way
  assert archive.sync(fresh, store) == ([REL], [])
  assert runner.read_done(fresh / REL)["relpath"] == REL
  assert archive.has_parameters(first / REL) and not archive.has_parameters(fresh / REL)


def test_no_archive_named_is_no_copy(tmp_path):
  first = paths.as_path(tmp_path / "first")
  run_dir = _finished_run(first)
  assert archive.sync(first, None) == ([], [])
  archive.keep(run_dir, REL, None)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]
