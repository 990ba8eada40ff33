"""Running an experiment grid: every unfinished run of the plan, its completion marker, then tables and plots.

run_grid prepares data and embeddings once for the whole grid, runs this process's share of the plan
(recg_jax.grid.planning) in groups trained together (runs that differ only in seeds, alphas or the L_gen
switches share one compiled program over stacked parameters; pipeline.train_and_transfer runs each group),
and writes done.json beside a finished run's results (failed.json beside a run that raised), so a
restarted grid skips what is finished; then it aggregates every finished run of the plan
(recg_jax.grid.stats) into the tables (recg_jax.grid.report) and figures (recg_jax.grid.figures). The
baselines study (recg_jax.grid.baselines) runs its runs through the same run_pending and markers.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import gc
import hashlib
import json
import os
import platform
import time
import traceback
from typing import Any, Callable, Sequence

import ml_collections

from recg_jax import compile_stats
from recg_jax import distributed
from recg_jax import errors
from recg_jax import paths
from recg_jax import pipeline
from recg_jax import results as results_lib
from recg_jax.config import roles
from recg_jax.grid import archive
from recg_jax.grid import figures
from recg_jax.grid import planning
from recg_jax.grid import report
from recg_jax.grid import stats

DONE = "done.json"
FAILED = "failed.json"


def machine_info() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  return {
      "platform": platform.platform(),
      "machine": platform.machine(),
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()],
  }


def study_meta(command: str, domains: Sequence[str], runs: Sequence[str]) -> dict[str, Any]:
  """What a study's tables say of how it ran: the command that regenerates it, the machine, its domains
  and planned runs, and when this invocation started."""
  return {
      "command": command,
      "machine": machine_info(),
      "domains": list(domains),
      "runs": list(runs),
      "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def read_done(run_dir: paths.Path) -> dict[str, Any] | None:
  """The completion marker of a finished run, or None (absent, unreadable, or results.json missing)."""
  path = run_dir / DONE
  if not path.is_file() or not (run_dir / "results.json").is_file():
    return None
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


@dataclasses.dataclass
class PendingRun:
  """A run to execute: its config, spec, folder, log tag, table setting and folder relative to the grid."""

  config: ml_collections.ConfigDict
  spec: planning.RunSpec
  run_dir: paths.Path
  tag: str
  setting: str
  relpath: str


def execute(
    runs: list[PendingRun], domains: dict, tables: dict | None, group_dir: paths.Path
) -> list[pipeline.Outcome]:
  """Each run's records, or the exception it ended with: one run alone, or a group trained together."""
  return pipeline.train_and_transfer(
      [r.config for r in runs],
      [r.run_dir for r in runs],
      domains,
      tables,
      group_dir=group_dir if len(runs) > 1 else None,
  )


def earlier_training_s(outcomes: Sequence[pipeline.Outcome]) -> float:
  """The seconds a resumed group trained in earlier invocations (its records' `resumed_wall_s`; the group
  shares one checkpoint, so every member carries the same), 0 for a fresh run or a failed group."""
  seconds = [
      float((r.get("extra") or {}).get("resumed_wall_s", 0.0))
      for outcome in outcomes
      if not isinstance(outcome, Exception)
      for r in outcome
  ]
  return max(seconds, default=0.0)


def group_dir_of(workdir: paths.Path, relpaths: list[str]) -> paths.Path:
  """The folder of a group's shared checkpoint, named by its members (a rerun of the same unfinished
  members resumes it)."""
  return workdir / "groups" / hashlib.sha1("\n".join(relpaths).encode()).hexdigest()[:12]


def _mark_done(run, records, machine, elapsed: float, compiles: dict, members: list[str]) -> None:
  """Writes a finished run's done.json (and its copy in the study's archive, if it has one)."""
  # A group's wall time is shared evenly by its runs, so the grid's total run time stays a sum.
  paths.write_json_atomic(
      run.run_dir / DONE,
      {
          "spec": run.spec.to_dict(),
          "setting": run.setting,
          "relpath": run.relpath,
          "records": records,
          "elapsed_s": elapsed / len(members),
          "machine": machine,
          "group": {"size": len(members), "elapsed_s": elapsed, "compiles": compiles, "members": members},
          "fingerprint": roles.fingerprint(run.config),
          "config": results_lib.config_dict(run.config),
          "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      },
  )
  archive.keep(run.run_dir, run.relpath, archive.folder(run.config))


def run_pending(
    pending: list[PendingRun],
    domains: dict,
    tables: dict | None,
    workdir: paths.Path,
    machine: dict[str, Any],
    group_size: int,
    prefix: str,
    after_each: Callable[[], None] | None = None,
) -> tuple[list[str], list[str]]:
  """Executes the pending runs, in groups trained together where they differ only in traced fields
  (planning.member_groups; group_size 1: one by one), writing each run's done.json or failed.json.

  A run that raises is recorded and the others go on. after_each runs after every group (e.g. to
  rewrite a report). Returns (relpaths finished, relpaths failed).
  """
  ran, failed = [], []
  start = time.perf_counter()
  for group in planning.member_groups([(p.config, p) for p in pending], group_size):
    runs = [p for _, p in group]
    for run in runs:
      distributed.say(
          f"{run.tag}: run ({run.config.experiment.mode}, overrides {run.spec.overrides()})"
          + (f", one of {len(runs)} trained together" if len(runs) > 1 else "")
      )
      run.run_dir.mkdir(parents=True, exist_ok=True)
    t0, compiles0, traces0 = time.perf_counter(), compile_stats.snapshot(), _step_traces()
    try:
      outcomes = execute(runs, domains, tables, group_dir_of(workdir, [r.relpath for r in runs]))
    except Exception as e:  # pylint: disable=broad-except  (one failed run must not stop the grid)
      e.traceback = traceback.format_exc()
      outcomes = [e] * len(runs)
    elapsed = time.perf_counter() - t0 + earlier_training_s(outcomes)
    compiles = {**compile_stats.since(compiles0), "train_step_traces": _step_traces() - traces0}
    _release_compiled()
    for run, outcome in zip(runs, outcomes):
      if isinstance(outcome, Exception):
        failed.append(run.relpath)
        paths.write_json_atomic(
            run.run_dir / FAILED,
            {
                "spec": run.spec.to_dict(),
                "error": repr(outcome),
                "traceback": getattr(outcome, "traceback", ""),
            },
        )
        distributed.say(f"{run.tag}: FAILED ({outcome!r}); details in {run.run_dir / FAILED}")
        continue
      (run.run_dir / FAILED).unlink(missing_ok=True)
      _mark_done(run, outcome, machine, elapsed, compiles, [r.relpath for r in runs])
      ran.append(run.relpath)
      together = f" (its group of {len(runs)}: {elapsed:.1f}s)" if len(runs) > 1 else ""
      distributed.say(f"{run.tag}: done in {elapsed / len(runs):.1f}s{together}")
    distributed.say(
        f"{prefix} {_compiles_line(compiles)} for {len(runs)} run(s); "
        f"{(time.perf_counter() - start) / 60:.1f} min in this invocation"
    )
    if after_each is not None:
      after_each()
  return ran, failed


def load_domains(
    config: ml_collections.ConfigDict, workdir: paths.Path, order: Sequence[str], with_tables: bool
) -> tuple[dict, dict | None]:
  """Every domain of a grid or study once, in its order, with its folder as the cache root: (domains,
  frozen tables or None)."""
  all_config = copy.deepcopy(config)
  all_config.data.source, all_config.data.targets = order[0], tuple(order[1:])
  all_config.data.auxiliary = ()
  domains = pipeline.prepare_data(all_config, workdir)
  return domains, pipeline.embed_domains(all_config, workdir, domains) if with_tables else None


def finished(run_dir: paths.Path, config: ml_collections.ConfigDict) -> bool:
  """Whether run_dir holds a finished run of `config`; one finished under another config is an error."""
  done = read_done(run_dir)
  if done is None:
    return False
  diff = roles.recorded_diff(done.get("fingerprint") or {}, config, roles.fingerprint)
  if diff:
    raise errors.RunStateError(
        f"{run_dir / DONE} was finished with a different config (differs in {diff}); "
        "use a fresh --workdir, or delete that run folder to run it again"
    )
  return True


def _grid_meta(config, command: str, axes: dict, specs: list, domains: dict) -> dict[str, Any]:
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top

  return {
      "command": command,
      "machine": machine_info(),
      "axes": {k: list(v) for k, v in axes.items()},
      "planned": [s.relpath.as_posix() for s in specs],
      "domain_table": prepare.domain_table(domains),
      "data": results_lib.data_label(config),
      "data_format": str(config.data.format),
      "config": results_lib.config_dict(config),
      "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def _todo(
    config, specs, axes, workdir: paths.Path, aggregate_only: bool
) -> tuple[list[PendingRun], list[str]]:
  """(runs of this shard to execute, relpaths skipped as finished)."""
  mine = planning.shard_of(specs, config)
  if int(config.experiment.num_shards) > 1:
    distributed.say(
        f"[grid] shard {config.experiment.shard_index} of {config.experiment.num_shards}: "
        f"{len(mine)} of {len(specs)} runs"
    )
  todo, skipped = [], []
  for i, spec in enumerate(mine, 1):
    run_dir = workdir / spec.relpath
    rc = planning.run_config(config, spec, axes["domains"])
    tag = f"[grid] {i}/{len(mine)} {spec.relpath.as_posix()}"
    if finished(run_dir, rc):
      distributed.say(f"{tag}: skip (finished, {DONE} present)")
      skipped.append(spec.relpath.as_posix())
    elif not aggregate_only:
      todo.append(PendingRun(rc, spec, run_dir, tag, spec.setting, spec.relpath.as_posix()))
  return todo, skipped


def run_grid(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    command: str = "",
    aggregate_only: bool = False,
    make_plots: bool = True,
) -> dict[str, Any]:
  """Runs every unfinished run of the grid, then writes the tables and plots.

  Runs that differ only in traced fields (seeds, alphas, L_gen switches) train together, up to
  config.experiment.member_group_size at a time. Returns {'ran': [relpath, ...], 'skipped', 'failed',
  'missing', 'tables': path, 'csv', 'plots', 'compiles': XLA compiles and their seconds in this
  invocation}.
  """
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  archive.sync(workdir, archive.folder(config))
  axes = planning.grid_axes(config)
  specs = planning.plan_runs(config)
  domains, tables = load_domains(config, workdir, axes["domains"], any(s.variant != "id" for s in specs))
  grid_meta = _grid_meta(config, command, axes, specs, domains)
  paths.write_json_atomic(workdir / "grid.json", grid_meta)

  start = time.perf_counter()
  compile_stats.install()
  compiles_before, traces_before = compile_stats.snapshot(), _step_traces()
  todo, skipped = _todo(config, specs, axes, workdir, aggregate_only)
  ran, failed = run_pending(
      todo, domains, tables, workdir, grid_meta["machine"], int(config.experiment.member_group_size), "[grid]"
  )
  compiled = {**compile_stats.since(compiles_before), "train_step_traces": _step_traces() - traces_before}

  # Only the runs of this grid: a folder may also hold runs of an earlier, larger grid.
  planned = [s.relpath.as_posix() for s in specs]
  markers = [m for m in collect_markers(workdir) if m["relpath"] in set(planned)]
  missing = [p for p in planned if p not in {m["relpath"] for m in markers}]
  aggregates, ablation_aggregates = stats.aggregate_grid(stats.observations(markers), axes)
  md_path, csv_path = report.write_tables(
      workdir,
      aggregates,
      markers,
      grid_meta,
      config,
      missing=missing,
      failed=failed,
      ablation_aggregates=ablation_aggregates,
  )
  distributed.say(
      f"[grid] {len(ran)} ran, {len(skipped)} skipped, {len(failed)} failed, {len(missing)} "
      f"missing; {_compiles_line(compiled)} in {(time.perf_counter() - start) / 60:.1f} min; "
      f"tables: {md_path} and {csv_path}"
  )
  plots_written: list[str] = []
  if make_plots:
    plots_written = figures.write_plots(
        workdir, config, aggregates, ablation_aggregates, markers, domains, tables
    )
  return {
      "ran": ran,
      "skipped": skipped,
      "failed": failed,
      "missing": missing,
      "tables": str(md_path),
      "csv": str(csv_path),
      "plots": plots_written,
      "compiles": compiled,
  }


def _step_traces() -> int:
  """Train-step programs built so far in this process (one per program key, member count and bucket)."""
  return int(compile_stats.TRACE_COUNTS["train_step"])


def _compiles_line(c: dict[str, float]) -> str:
  steps = f"; {c['train_step_traces']} train-step programs" if "train_step_traces" in c else ""
  return (
      f"{c['compiles']} XLA compiles + {c['cache_hits']} persistent-cache loads "
      f"({c['compile_s']:.1f}s{steps})"
  )


def _release_compiled() -> None:
  """Frees the finished run's jitted closures and what they captured. (jax.clear_caches() would also drop
  the programs later runs reuse; measured without it, a process grows by about 3 MB per run.)"""
  gc.collect()


def collect_markers(workdir: str | os.PathLike, pattern: str = "*/*/seed*") -> list[dict[str, Any]]:
  """Every completion marker of the run folders workdir/runs/<pattern>, in path order (a study's reports
  read its runs through here, never through the study's own module)."""
  runs = paths.as_path(workdir) / "runs"
  out = []
  for path in sorted(runs.glob(f"{pattern}/{DONE}")):
    done = read_done(path.parent)
    if done is not None:
      out.append(done)
  return out


def markers_of(workdir: str | os.PathLike, relpaths: Sequence[str]) -> list[dict[str, Any]]:
  """The completion markers of the given run folders (relative to workdir) that finished, in their order."""
  root = paths.as_path(workdir)
  markers = [read_done(root / rel) for rel in relpaths]
  return [m for m in markers if m is not None]
