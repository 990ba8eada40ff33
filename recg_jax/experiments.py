"""The experiment grid: every source x backbone x variant x seed, the ablations and the alpha sweep.

`python -m recg_jax.experiments --config=configs/grid_shared.py --workdir=DIR`

Each run is a copy of the config with a few fields overridden, trained and evaluated in its own folder
DIR/runs/<source>/<backbone>-<variant>[-<ablation>]/seed<k>/ by the stages of recg_jax.pipeline (zero-shot
for 'sem' and 'recg': train on the source, sequence-level step, every target; in-domain only for 'id').
Data and embeddings are prepared once, with DIR as the cache root (DIR/cache/data, DIR/cache/embeddings),
and handed to every run in memory, so no run re-reads or re-embeds anything.

When a run has finished, `done.json` (its spec, records, config and wall time) is written next to its
results.json: a restarted grid skips every run that has both. A run interrupted mid-training resumes from
its own latest checkpoint (recg_jax.train). A run that raises is reported and the grid goes on; the exit
status is then non-zero.

Grid (config.experiment): `domains` (all domains; each source's targets are the others, which are also
the generalization-loss domains), `sources`, `backbones`, `variants`, `seeds`; `ablations` and `alphas` for
`ablation_backbone` on `ablation_source`, over `ablation_seeds`. After the runs, DIR/results.md and
DIR/results.csv hold the tables (mean ± std over seeds, paired t-test and gain of RecG over Sem) and
DIR/plots/*.png the figures (recg_jax.plots).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime
import gc
import io
import json
import math
import os
import pathlib
import platform
import shlex
import sys
import time
import traceback
from typing import Any, Iterable, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from recg_jax import fingerprint as fingerprint_lib
from recg_jax import pipeline
from recg_jax import results as results_lib

VARIANTS = ("id", "sem", "recg", "text_knn")
# Ablations of docs/method.md ("Variants that every experiment reports"): config overrides of the RecG run.
# `no_seq` trains exactly the RecG model (train.py never reads config.transfer), so it is not run again:
# its numbers are the full run's `zero_shot_no_seq` / `test_no_seq` metrics, recorded by transfer.py.
ABLATIONS: dict[str, dict[str, Any] | None] = {
    "no_item_loss": {"gen_loss.enabled": False},
    "no_intra": {"gen_loss.use_intra": False},
    "no_inter": {"gen_loss.use_inter": False},
    "no_seq": None,
    "printed_sign": {"gen_loss.inter_sign": -1},
    "merge_identity": {"model.merge_init": "identity"},
}
ABLATION_LABELS = {
    "no_item_loss": "no item-level loss (L_gen off)",
    "no_intra": "no intra-domain term",
    "no_inter": "no inter-domain term",
    "no_seq": "no sequence-level step",
    "printed_sign": "printed sign of Eq. 9/13 (inter_sign = -1)",
    "merge_identity": "merge initialised to [I | 0] (not in the paper)",
}
# Settings derived from a run's metrics without the sequence-level step get this suffix.
NO_SEQ = ":no_seq"
DONE = "done.json"
FAILED = "failed.json"
# Fields that do not change what a run computes; a finished run with other values is still valid.
_COSMETIC = {
    "data": ("root",),
    "encoder": ("batch_size", "bucket_sizes", "cache_only"),
    "train": ("log_every_steps", "prefetch", "checkpoint_every_steps", "max_to_keep"),
    "eval": ("batch_size", "score_block_rows", "max_scores_per_block"),
}


# ----------------------------------------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the grid. `ablation` is '' (main grid), a key of ABLATIONS, or 'alpha=<value>'."""

  source: str
  backbone: str
  variant: str
  seed: int
  ablation: str = ""
  alpha: float | None = None  # the alpha-sweep value (ablation 'alpha=...')

  @property
  def name(self) -> str:
    name = f"{self.backbone}-{self.variant}"
    if self.ablation.startswith("alpha="):
      return f"{name}-alpha{self.alpha:g}"
    return f"{name}-{self.ablation}" if self.ablation else name

  @property
  def setting(self) -> str:
    """Table label: 'id', 'sem', 'recg', 'recg:no_intra', 'recg:alpha=0.01', ..."""
    return f"{self.variant}:{self.ablation}" if self.ablation else self.variant

  @property
  def relpath(self) -> pathlib.Path:
    return pathlib.Path("runs") / self.source / self.name / f"seed{self.seed}"

  @property
  def mode(self) -> str:
    return "in_domain" if self.variant == "id" else "zero_shot"

  def overrides(self) -> dict[str, Any]:
    """'section.field' -> value, on top of the grid config (besides source, targets, backbone, seed)."""
    out: dict[str, Any] = {"model.variant": self.variant}
    if self.ablation.startswith("alpha="):
      out["gen_loss.alpha"] = float(self.alpha)
    elif self.ablation:
      out.update(ABLATIONS[self.ablation] or {})
    return out

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def grid_domains(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """experiment.domains, or data.source + data.targets + data.auxiliary when it is empty."""
  ec, dc = config.experiment, config.data
  names = tuple(ec.domains) or (dc.source, *dc.targets, *dc.auxiliary)
  if len(set(names)) != len(names):
    raise ValueError(f"config.experiment.domains={names!r} names a domain twice")
  return tuple(str(n) for n in names)


def grid_axes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """The resolved grid: domains, sources, backbones, variants, seeds, ablations, alphas, ablation_*."""
  ec = config.experiment
  domains = grid_domains(config)
  sources = tuple(ec.sources) or (str(config.data.source),)
  for s in sources:
    if s not in domains:
      raise ValueError(f"config.experiment.sources: {s!r} is not in the grid's domains {domains}")
  if len(domains) < 2:
    raise ValueError(f"the grid needs at least two domains (a source and a target), got {domains}")
  backbones = tuple(ec.backbones) or (str(config.model.backbone),)
  variants = tuple(ec.variants) or (str(config.model.variant),)
  bad = [v for v in variants if v not in VARIANTS]
  if bad:
    raise ValueError(f"config.experiment.variants: {bad} not in {VARIANTS}")
  ablations = tuple(ec.ablations)
  bad = [a for a in ablations if a not in ABLATIONS]
  if bad:
    raise ValueError(f"config.experiment.ablations: {bad} not in {sorted(ABLATIONS)}")
  seeds = tuple(int(s) for s in ec.seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"config.experiment.seeds={ec.seeds!r}: give one or more distinct seeds")
  ablation_source = str(ec.ablation_source) or sources[0]
  if ablation_source not in domains:
    raise ValueError(f"config.experiment.ablation_source={ablation_source!r} is not in {domains}")
  alphas = tuple(float(a) for a in ec.alphas)
  if any(not a > 0 for a in alphas):
    raise ValueError(f"config.experiment.alphas={ec.alphas!r}: every alpha must be > 0")
  return {
      "domains": domains, "sources": sources, "backbones": backbones, "variants": variants,
      "seeds": seeds, "ablations": ablations, "alphas": alphas,
      "ablation_backbone": (str(ec.ablation_backbone) or backbones[0],),
      "ablation_source": (ablation_source,),
      "ablation_seeds": tuple(int(s) for s in ec.ablation_seeds) or seeds,
  }


def plan_runs(config: ml_collections.ConfigDict) -> list[RunSpec]:
  """Every run of the grid, without repeats: the main grid seed by seed (so an interrupted grid has whole
  seeds), then the ablations and the alpha sweep. An ablation or sweep point that is the plain RecG run
  (no_seq, alpha = gen_loss.alpha) is that run; the Sem and RecG runs they are compared with are added."""
  axes = grid_axes(config)
  specs: dict[pathlib.Path, RunSpec] = {}

  def add(spec: RunSpec) -> None:
    specs.setdefault(spec.relpath, spec)

  for seed in axes["seeds"]:
    for source in axes["sources"]:
      for backbone in axes["backbones"]:
        for variant in axes["variants"]:
          if variant == "text_knn" and backbone != axes["backbones"][0]:
            continue  # no backbone, no parameters: one run per source and seed
          add(RunSpec(source, backbone, variant, seed))
  if axes["ablations"] or axes["alphas"]:
    source, backbone = axes["ablation_source"][0], axes["ablation_backbone"][0]
    default_alpha = float(config.gen_loss.alpha)
    for seed in axes["ablation_seeds"]:
      add(RunSpec(source, backbone, "sem", seed))
      add(RunSpec(source, backbone, "recg", seed))
      for ablation in axes["ablations"]:
        if ABLATIONS[ablation] is not None:
          add(RunSpec(source, backbone, "recg", seed, ablation))
      for alpha in axes["alphas"]:
        if not math.isclose(alpha, default_alpha, rel_tol=1e-9):
          add(RunSpec(source, backbone, "recg", seed, f"alpha={alpha:g}", alpha))
  return list(specs.values())


def shard_of(specs: Sequence[RunSpec], config: ml_collections.ConfigDict) -> list[RunSpec]:
  """The runs this process executes: every num_shards-th planned run from shard_index on. Round robin,
  so that the seed-major plan hands each shard a share of every seed and of the expensive backbones."""
  num, index = int(config.experiment.num_shards), int(config.experiment.shard_index)
  if num < 1 or not 0 <= index < num:
    raise ValueError(f"config.experiment.shard_index={index} with num_shards={num}: need "
                     "0 <= shard_index < num_shards")
  return list(specs[index::num])


def recorded_command(argv: Sequence[str]) -> str:
  """The command that regenerates the whole grid: argv without the flags that only choose how this
  invocation works (its shard, aggregation only, plots, embeddings from the cache alone)."""
  own = ("--aggregate_only", "--noaggregate_only", "--plots", "--noplots",
         "--config.experiment.shard_index", "--config.experiment.num_shards", "--config.encoder.cache_only")
  kept = [a for a in argv if not any(a == f or a.startswith(f + "=") for f in own)]
  return shlex.join(["python", "-m", "recg_jax.experiments", *kept])


def run_config(config: ml_collections.ConfigDict, spec: RunSpec,
               domains: Sequence[str]) -> ml_collections.ConfigDict:
  """A copy of the grid config for one run: its source, every other domain as a target (and so as a
  generalization-loss domain), its backbone, variant, seed and overrides."""
  c = copy.deepcopy(config)
  c.data.source = spec.source
  c.data.targets = tuple(d for d in domains if d != spec.source)
  c.data.auxiliary = ()
  c.model.backbone = spec.backbone
  c.train.seed = int(spec.seed)
  c.experiment.mode = spec.mode
  c.experiment.name = f"{config.experiment.name or 'grid'}/{spec.relpath.as_posix()}"
  for key, value in spec.overrides().items():
    section, field = key.split(".")
    if field not in c[section]:
      raise KeyError(f"override {key!r} of run {spec.name}: config has no field {key}")
    c[section][field] = value
  return c


def run_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that determine a run's numbers (no experiment section, no cosmetic fields)."""
  d = results_lib.config_dict(config)
  d.pop("experiment", None)
  for section, fields in _COSMETIC.items():
    for f in fields:
      d.get(section, {}).pop(f, None)
  return d


# ----------------------------------------------------------------------------------------------------------
# Running.


def machine_info() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()]}


def machine_line(info: dict[str, Any]) -> str:
  return (f"{info['platform']} ({info['cpu_count']} CPUs), Python {info['python']}, jax {info['jax']} "
          f"on {info['backend']}: {', '.join(info['devices'])}")


def read_done(run_dir: pathlib.Path) -> dict[str, Any] | None:
  """The completion marker of a finished run, or None (absent, unreadable, or results.json missing)."""
  path = run_dir / DONE
  if not path.is_file() or not (run_dir / "results.json").is_file():
    return None
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def atomic_json(path: pathlib.Path, payload: Any) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def execute_run(config: ml_collections.ConfigDict, spec: RunSpec, run_dir: pathlib.Path,
                domains: dict, tables: dict | None) -> list[dict[str, Any]]:
  """Trains and evaluates one run in run_dir; returns its result records."""
  names = [config.data.source, *config.data.targets]
  run_domains = {n: domains[n] for n in names}
  if spec.variant == "id":
    from recg_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, run_dir, {spec.source: domains[spec.source]}, None)
    return results_lib.read_records(run_dir / "results.json")
  from recg_jax import transfer  # pylint: disable=g-import-not-at-top
  from recg_jax.models import text_space  # pylint: disable=g-import-not-at-top
  run_tables = text_space.transform_tables({n: tables[n] for n in names}, str(config.model.table_transform))
  return transfer.run_zero_shot(config, run_dir, run_domains, run_tables)


def _say(message: str) -> None:
  print(message, flush=True)


def run_grid(config: ml_collections.ConfigDict, workdir: str | os.PathLike, command: str = "",
             aggregate_only: bool = False, make_plots: bool = True) -> dict[str, Any]:
  """Runs every unfinished run of the grid, then writes the tables and plots.

  Returns {'ran': [relpath, ...], 'skipped': [...], 'failed': [...], 'missing': [...], 'tables': path}.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  axes = grid_axes(config)
  specs = plan_runs(config)
  # Load every domain once, with the grid folder as the cache root, in the grid's domain order.
  all_config = copy.deepcopy(config)
  all_config.data.source = axes["domains"][0]
  all_config.data.targets = axes["domains"][1:]
  all_config.data.auxiliary = ()
  domains = pipeline.prepare_data(all_config, workdir)
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top
  needs_tables = any(s.variant != "id" for s in specs)
  tables = pipeline.embed_domains(all_config, workdir, domains) if needs_tables else None
  info = machine_info()
  grid_meta = {"command": command, "machine": info, "axes": {k: list(v) for k, v in axes.items()},
               "planned": [s.relpath.as_posix() for s in specs],
               "domain_table": prepare.domain_table(domains),
               "data": results_lib.data_label(config), "data_format": str(config.data.format),
               "config": results_lib.config_dict(config),
               "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  atomic_json(workdir / "grid.json", grid_meta)

  ran, skipped, failed = [], [], []
  start = time.perf_counter()
  mine = shard_of(specs, config)
  if int(config.experiment.num_shards) > 1:
    _say(f"[grid] shard {config.experiment.shard_index} of {config.experiment.num_shards}: {len(mine)} of "
         f"{len(specs)} runs")
  for i, spec in enumerate(mine, 1):
    run_dir = workdir / spec.relpath
    rc = run_config(config, spec, axes["domains"])
    done = read_done(run_dir)
    tag = f"[grid] {i}/{len(mine)} {spec.relpath.as_posix()}"
    if done is not None:
      diff = fingerprint_lib.diff(done.get("fingerprint"), run_fingerprint(rc))
      if diff:
        raise ValueError(f"{run_dir / DONE} was finished with a different config (differs in {diff}); "
                         "use a fresh --workdir, or delete that run folder to run it again")
      _say(f"{tag}: skip (finished, {DONE} present)")
      skipped.append(spec.relpath.as_posix())
      continue
    if aggregate_only:
      continue
    _say(f"{tag}: run ({spec.mode}, overrides {spec.overrides()})")
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
      records = execute_run(rc, spec, run_dir, domains, tables)
    except Exception as e:  # pylint: disable=broad-except  (one failed run must not stop the grid)
      failed.append(spec.relpath.as_posix())
      atomic_json(run_dir / FAILED, {"spec": spec.to_dict(), "error": repr(e),
                                      "traceback": traceback.format_exc()})
      _say(f"{tag}: FAILED ({e!r}); details in {run_dir / FAILED}")
      _release_compiled()
      continue
    elapsed = time.perf_counter() - t0
    _release_compiled()
    (run_dir / FAILED).unlink(missing_ok=True)
    atomic_json(run_dir / DONE, {
        "spec": spec.to_dict(), "setting": spec.setting, "relpath": spec.relpath.as_posix(),
        "records": records, "elapsed_s": elapsed, "machine": info, "fingerprint": run_fingerprint(rc),
        "config": results_lib.config_dict(rc),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    ran.append(spec.relpath.as_posix())
    total = time.perf_counter() - start
    _say(f"{tag}: done in {elapsed:.1f}s ({total / 60:.1f} min in this invocation)")

  # Only the runs of this grid: a folder may also hold runs of an earlier, larger grid.
  planned = [s.relpath.as_posix() for s in specs]
  markers = [m for m in collect_markers(workdir) if m["relpath"] in set(planned)]
  missing = [p for p in planned if p not in {m["relpath"] for m in markers}]
  aggregates, ablation_aggregates = aggregate_grid(observations(markers), axes)
  md_path, csv_path = write_tables(workdir, aggregates, markers, grid_meta, config, missing=missing,
                                   failed=failed, ablation_aggregates=ablation_aggregates)
  _say(f"[grid] {len(ran)} ran, {len(skipped)} skipped, {len(failed)} failed, {len(missing)} missing; "
       f"tables: {md_path} and {csv_path}")
  plots_written: list[str] = []
  if make_plots:
    plots_written = write_plots(workdir, config, aggregates, ablation_aggregates, markers, domains, tables)
  return {"ran": ran, "skipped": skipped, "failed": failed, "missing": missing, "tables": str(md_path),
          "csv": str(csv_path), "plots": plots_written}


def _release_compiled() -> None:
  """Frees the finished run's jitted closures and what they captured. (jax.clear_caches() would also drop
  the programs later runs reuse; measured without it, a process grows by about 3 MB per run.)"""
  gc.collect()


def collect_markers(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Every completion marker under workdir/runs, in path order."""
  runs = pathlib.Path(workdir) / "runs"
  out = []
  for path in sorted(runs.glob(f"*/*/seed*/{DONE}")):
    done = read_done(path.parent)
    if done is not None:
      out.append(done)
  return out


# ----------------------------------------------------------------------------------------------------------
# Aggregation.


def observations(markers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (run, domain, protocol, metric): kind ('zero_shot' | 'in_domain'), source, domain,
  backbone, setting, seed, protocol, metric ('recall@10'), value. Metrics of a run without the
  sequence-level step (transfer.py's `zero_shot_no_seq/...` and `test_no_seq/...`) become the setting
  '<setting>:no_seq'."""
  rows = []
  splits = {"zero_shot": ("zero_shot", ""), "zero_shot_no_seq": ("zero_shot", NO_SEQ),
            "test": ("in_domain", ""), "test_no_seq": ("in_domain", NO_SEQ)}
  for m in markers:
    spec = m["spec"]
    setting = m.get("setting") or RunSpec(**spec).setting
    for rec in m["records"]:
      for key, value in rec["metrics"].items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] not in splits:
          continue
        kind, suffix = splits[parts[0]]
        rows.append({"kind": kind, "source": rec["source"], "domain": rec["domain"],
                     "backbone": rec["backbone"], "setting": setting + suffix, "seed": int(rec["seed"]),
                     "protocol": parts[1], "metric": parts[2], "value": float(value)})
  return rows


def _group_key(row: dict[str, Any]) -> tuple:
  return (row["kind"], row["source"], row["domain"], row["backbone"], row["setting"], row["protocol"],
          row["metric"])


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
  """Mean ± std over seeds per (kind, source, domain, backbone, setting, protocol, metric), and for every
  setting other than 'sem' its comparison with 'sem' on the same key: relative gain of the means in %
  and the p-value of a paired t-test over the seeds both have (scipy.stats.ttest_rel; None below 2).

  std is the sample standard deviation (ddof = 1; None with one seed).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  groups: dict[tuple, dict[int, float]] = {}
  for r in rows:
    values = groups.setdefault(_group_key(r), {})
    if r["seed"] in values:
      raise ValueError(f"two values for seed {r['seed']} of {_group_key(r)}")
    values[r["seed"]] = r["value"]
  out: dict[tuple, dict[str, Any]] = {}
  for key, by_seed in groups.items():
    seeds = sorted(by_seed)
    v = np.array([by_seed[s] for s in seeds], np.float64)
    out[key] = {"key": key, "seeds": seeds, "values": v.tolist(), "n": len(v), "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else None,
                "sem_mean": None, "gain_pct": None, "p_value": None, "n_paired": 0}
  for key, agg in out.items():
    setting = key[4]
    if setting == "sem":
      continue
    base_key = key[:4] + ("sem",) + key[5:]
    base = out.get(base_key)
    if base is None:
      continue
    agg["sem_mean"] = base["mean"]
    agg["gain_pct"] = 100.0 * (agg["mean"] / base["mean"] - 1.0) if base["mean"] != 0 else None
    a_by, b_by = groups[key], groups[base_key]
    paired = sorted(set(a_by) & set(b_by))
    agg["n_paired"] = len(paired)
    if len(paired) >= 2:
      a = np.array([a_by[s] for s in paired])
      b = np.array([b_by[s] for s in paired])
      if np.allclose(a - b, (a - b)[0], rtol=0, atol=1e-12):
        # A constant difference has no variance: the t statistic is infinite (p = 0) unless it is 0.
        agg["p_value"] = 1.0 if abs((a - b)[0]) <= 1e-12 else 0.0
      else:
        agg["p_value"] = float(stats.ttest_rel(a, b).pvalue)
  return out


def aggregate_grid(rows: Sequence[dict[str, Any]], axes: dict[str, tuple]):
  """(main, ablation) aggregates: the main tables over the grid's seeds, the ablation and alpha tables
  over ablation_seeds only, so that every row of those tables averages the same seeds."""
  main = aggregate([r for r in rows if r["seed"] in axes["seeds"]])
  if tuple(axes["ablation_seeds"]) == tuple(axes["seeds"]):
    return main, main
  source, backbone = axes["ablation_source"][0], axes["ablation_backbone"][0]
  ablation = aggregate([r for r in rows if r["seed"] in axes["ablation_seeds"] and r["source"] == source
                        and r["backbone"] == backbone])
  return main, ablation


CSV_FIELDS = ("scope", "kind", "source", "domain", "backbone", "setting", "protocol", "metric", "n", "mean",
              "std", "seeds", "values", "sem_mean", "gain_pct_vs_sem", "p_vs_sem", "n_paired")


def to_csv(aggregates: dict[tuple, dict[str, Any]],
           ablation_aggregates: dict[tuple, dict[str, Any]] | None = None) -> str:
  """Long-form CSV of every aggregate (metrics as fractions, not %); scope 'grid' averages the grid's
  seeds, scope 'ablation' (only when they differ) the ablation seeds."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(CSV_FIELDS)
  fmt = lambda x: "" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))
  scopes = [("grid", aggregates)]
  if ablation_aggregates is not None and ablation_aggregates is not aggregates:
    scopes.append(("ablation", ablation_aggregates))
  for scope, aggs in scopes:
    for key in sorted(aggs, key=_sort_key):
      _csv_row(w, scope, key, aggs[key], fmt)
  return buf.getvalue()


def _csv_row(w, scope: str, key: tuple, a: dict[str, Any], fmt) -> None:
  w.writerow([scope, *key, a["n"], fmt(a["mean"]), fmt(a["std"]), " ".join(map(str, a["seeds"])),
              " ".join(f"{v:.6g}" for v in a["values"]), fmt(a["sem_mean"]), fmt(a["gain_pct"]),
              fmt(a["p_value"]), a["n_paired"]])


def _sort_key(key: tuple) -> tuple:
  kind, source, domain, backbone, setting, protocol, metric = key
  name, _, k = metric.partition("@")
  return (kind, source, domain, backbone, setting, protocol, name != "recall", int(k) if k.isdigit() else 0)


# ----------------------------------------------------------------------------------------------------------
# Tables.


def _pct(agg: dict[str, Any] | None) -> str:
  if agg is None:
    return "—"
  if not math.isfinite(agg["mean"]):
    return str(agg["mean"])
  s = f"{100 * agg['mean']:.2f}"
  return s + (f" ± {100 * agg['std']:.2f}" if agg["std"] is not None else "")


def _gain(agg: dict[str, Any] | None) -> str:
  return "—" if agg is None or agg["gain_pct"] is None else f"{agg['gain_pct']:+.1f}%"


def _p(agg: dict[str, Any] | None) -> str:
  if agg is None or agg["p_value"] is None:
    return "—"
  p = agg["p_value"]
  return "nan" if not math.isfinite(p) else (f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
          + ["| " + " | ".join(r) + " |" for r in rows])


_METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG"}


def metric_title(metric: str) -> str:
  name, _, k = metric.partition("@")
  return f"{_METRIC_NAMES.get(name, name)}@{k}"


def table_metrics(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """The two metrics the tables show: Recall@10 and NDCG@10 (or the smallest K evaluated above 10)."""
  ks = sorted(int(k) for k in config.eval.ks)
  k = 10 if 10 in ks else next((x for x in ks if x > 10), ks[-1])
  return f"recall@{k}", f"ndcg@{k}"


def zero_shot_tables(aggregates, axes, protocols, metrics) -> list[str]:
  """Table 3: rows target ← source; per backbone Sem, RecG, gain, paired-t p, and RecG without the
  sequence-level step."""
  lines = []
  pairs = [(t, s) for t in axes["domains"] for s in axes["sources"] if t != s]
  knn = "text_knn" in axes["variants"]
  for protocol in protocols:
    for metric in metrics:
      header = ["target ← source"] + (["text_knn"] if knn else [])
      for b in axes["backbones"]:
        header += [f"{b} Sem", f"{b} RecG", "gain", "p", f"{b} RecG w/o seq"]
      rows, gains = [], {b: [] for b in axes["backbones"]}
      for t, s in pairs:
        row = [f"{t} ← {s}"] + ([_pct(aggregates.get(("zero_shot", s, t, axes["backbones"][0], "text_knn",
                                                        protocol, metric)))] if knn else [])
        for b in axes["backbones"]:
          get = lambda setting: aggregates.get(("zero_shot", s, t, b, setting, protocol, metric))
          recg = get("recg")
          row += [_pct(get("sem")), _pct(recg), _gain(recg), _p(recg), _pct(get("recg" + NO_SEQ))]
          if recg is not None and recg["gain_pct"] is not None:
            gains[b].append(recg["gain_pct"])
        if any(cell != "—" for cell in row[1:]):
          rows.append(row)
      if not rows:
        continue
      avg = ["mean gain over pairs"] + ([""] if knn else [])
      for b in axes["backbones"]:
        avg += ["", "", f"{np.mean(gains[b]):+.1f}% ({len(gains[b])})" if gains[b] else "—", "", ""]
      rows.append(avg)
      lines += [f"### Zero-shot, `{protocol}`, {metric_title(metric)} (%)", ""]
      lines += markdown_table(header, rows) + [""]
  return lines


def in_domain_tables(aggregates, axes, protocols, metrics) -> list[str]:
  """Table 4: each source's own test split; per backbone ID, Sem, RecG, gain and p of RecG over Sem, and
  RecG without the sequence-level step."""
  lines = []
  for protocol in protocols:
    for metric in metrics:
      with_id = "id" in axes["variants"]
      knn = "text_knn" in axes["variants"]
      header = ["source"] + (["text_knn"] if knn else [])
      for b in axes["backbones"]:
        header += [f"{b} ID"] if with_id else []
        header += [f"{b} Sem", f"{b} RecG", "gain", "p", f"{b} RecG w/o seq"]
      rows = []
      for s in axes["sources"]:
        row = [s] + ([_pct(aggregates.get(("in_domain", s, s, axes["backbones"][0], "text_knn", protocol,
                                           metric)))] if knn else [])
        for b in axes["backbones"]:
          get = lambda setting: aggregates.get(("in_domain", s, s, b, setting, protocol, metric))
          recg = get("recg")
          row += ([_pct(get("id"))] if with_id else []) + [
              _pct(get("sem")), _pct(recg), _gain(recg), _p(recg), _pct(get("recg" + NO_SEQ))]
        if any(cell != "—" for cell in row[1:]):
          rows.append(row)
      if rows:
        lines += [f"### In-domain, `{protocol}`, {metric_title(metric)} (%)", ""]
        lines += markdown_table(header, rows) + [""]
  return lines


def _ablation_columns(axes) -> list[tuple[str, str]]:
  source = axes["ablation_source"][0]
  return ([("zero_shot", t) for t in axes["domains"] if t != source] + [("in_domain", source)])


def ablation_tables(aggregates, axes, protocols, metrics) -> list[str]:
  """Table 5: RecG, each ablation and Sem for ablation_backbone on ablation_source: every target and the
  source's own test split, with the gain over Sem."""
  if not axes["ablations"]:
    return []
  source, b = axes["ablation_source"][0], axes["ablation_backbone"][0]
  settings = [("recg", f"{b}-RecG (full)")]
  for a in axes["ablations"]:
    settings.append(("recg" + NO_SEQ if a == "no_seq" else f"recg:{a}", ABLATION_LABELS[a]))
  settings.append(("sem", f"{b}-Sem"))
  lines = []
  for protocol in protocols:
    header = ["setting"]
    cols = _ablation_columns(axes)
    for kind, d in cols:
      label = f"{d} ← {source}" if kind == "zero_shot" else f"{d} (in-domain)"
      header += [f"{label} {metric_title(m)}" for m in metrics] + ["gain"]
    rows = []
    for setting, label in settings:
      row = [label]
      for kind, d in cols:
        aggs = [aggregates.get((kind, source, d, b, setting, protocol, m)) for m in metrics]
        row += [_pct(a) for a in aggs] + [_gain(aggs[0])]
      rows.append(row)
    seeds = ", ".join(map(str, axes["ablation_seeds"]))
    lines += [f"### Ablations, {b} on {source}, `{protocol}` (%; seeds {seeds}; gain = "
              f"{metric_title(metrics[0])} over Sem)", ""] + markdown_table(header, rows) + [""]
  return lines


def alpha_tables(aggregates, axes, protocols, metrics, default_alpha: float) -> list[str]:
  """The alpha sweep: one row per alpha (the plain RecG run at gen_loss.alpha)."""
  if not axes["alphas"]:
    return []
  source, b = axes["ablation_source"][0], axes["ablation_backbone"][0]
  lines = []
  for protocol in protocols:
    cols = _ablation_columns(axes)
    header = ["alpha"]
    for kind, d in cols:
      label = f"{d} ← {source}" if kind == "zero_shot" else f"{d} (in-domain)"
      header += [f"{label} {metric_title(m)}" for m in metrics]
    rows = []
    for alpha in sorted(axes["alphas"], reverse=True):
      setting = alpha_setting(alpha, default_alpha)
      row = [f"{alpha:g}" + (" (default)" if setting == "recg" else "")]
      for kind, d in cols:
        row += [_pct(aggregates.get((kind, source, d, b, setting, protocol, m))) for m in metrics]
      rows.append(row)
    seeds = ", ".join(map(str, axes["ablation_seeds"]))
    lines += [f"### Alpha sweep, {b}-RecG on {source}, `{protocol}` (%; seeds {seeds})", ""]
    lines += markdown_table(header, rows) + [""]
  return lines


def alpha_setting(alpha: float, default_alpha: float) -> str:
  return "recg" if math.isclose(alpha, default_alpha, rel_tol=1e-9) else f"recg:alpha={alpha:g}"


SECTIONS = (("zero_shot", "Zero-shot (as the paper's Table 3)"),
            ("in_domain", "In-domain (as the paper's Table 4)"),
            ("ablations", "Ablations (as the paper's Table 5)"),
            ("alpha", "Alpha sensitivity"))


def render_tables(aggregates, markers, grid_meta, config, missing=(), failed=(),
                  ablation_aggregates=None) -> str:
  """The whole results.md. The ablation and alpha tables read ablation_aggregates (default: aggregates)."""
  return render_sections(aggregates, markers, grid_meta, config, missing, failed, ablation_aggregates)[""]


def render_sections(aggregates, markers, grid_meta, config, missing=(), failed=(),
                    ablation_aggregates=None) -> dict[str, str]:
  """{'': the whole results.md, section name: that table alone with the same header and footnotes} for
  every non-empty section of SECTIONS."""
  ablation_aggregates = aggregates if ablation_aggregates is None else ablation_aggregates
  axes = {k: tuple(v) for k, v in grid_meta["axes"].items()}
  protocols = tuple(config.eval.protocols)
  metrics = table_metrics(config)
  machines = sorted({machine_line(m["machine"]) for m in markers if "machine" in m})
  total_s = sum(float(m.get("elapsed_s", 0.0)) for m in markers)
  data = grid_meta.get("data", "")
  lines = [f"# Experiment grid: {config.experiment.name or 'grid'}", "",
           f"- regenerate: `{grid_meta.get('command') or '(not recorded)'}` — finished runs are skipped, "
           "so on a complete grid this only rebuilds these tables and the plots (add `--aggregate_only` to "
           "never train)",
           f"- data: {data}" + (f" (`{config.data.format}`)" if data != config.data.format else
                                f" files under `{config.data.root}`" if config.data.root else "")
           + f"; domains {', '.join(axes['domains'])}; sources {', '.join(axes['sources'])}; each source's "
           "targets are the other domains, which are also its generalization-loss domains",
           f"- seeds: {', '.join(map(str, axes['seeds']))} (ablations and alpha sweep: "
           f"{', '.join(map(str, axes['ablation_seeds']))}); mean ± sample std over seeds; p = paired "
           "t-test of RecG against Sem over the seeds both ran (scipy.stats.ttest_rel, shown from 2 seeds); "
           "gain = relative gain of the mean over Sem",
           f"- backbones: {', '.join(axes['backbones'])}; variants: {', '.join(axes['variants'])}",
           f"- machine: {'; '.join(machines) or machine_line(grid_meta['machine'])}",
           f"- runs: {len(markers)} finished ({total_s / 3600:.2f} h of run time)"
           + (f"; {len(missing)} not finished" if missing else "")
           + (f"; failed in this invocation: {', '.join(failed)}" if failed else ""),
           f"- model: {summary_without_seed(config)}",
           f"- metrics in %; protocols {', '.join(f'`{p}`' for p in protocols)} (defined at the end); "
           "'RecG w/o seq' is the same trained RecG model scored without the sequence-level step (k-means "
           "centres + W_f)",
           "- figures: plots/pairs_<protocol>.png (RecG vs Sem per pair), plots/alpha_<protocol>.png (alpha "
           "sweep), plots/items_pca.png (item spaces of Sem and RecG, coloured by domain); results.csv holds "
           "every aggregate ('#' lines first: read it with `comment='#'`)",
           ""]
  header = lines[1:]
  data = ["## Data", "", grid_meta["domain_table"], ""] if grid_meta.get("domain_table") else []
  bodies = {"zero_shot": zero_shot_tables(aggregates, axes, protocols, metrics),
            "in_domain": in_domain_tables(aggregates, axes, protocols, metrics),
            "ablations": ablation_tables(ablation_aggregates, axes, protocols, metrics),
            "alpha": alpha_tables(ablation_aggregates, axes, protocols, metrics, float(config.gen_loss.alpha))}
  titles = dict(SECTIONS)
  footer = ["## Protocols", ""]
  footer += [f"- `{p}`: {text}" for p, text in results_lib.protocol_descriptions(config.eval).items()]
  footer += ["- rank = #candidates scoring strictly higher + 0.5 * #other candidates tied with the target.",
             f"- model selection: early stopping on `{config.eval.select_metric}` (patience "
             f"{config.train.patience} epochs); test metrics come from the best checkpoint.",
             "- every metric of every run, and every K, is in results.csv; each run's own results.md holds "
             "its full config.", ""]
  lines += data
  for name, _ in SECTIONS:
    if bodies[name]:
      lines += [f"## {titles[name]}", ""] + bodies[name]
  if missing:
    lines += ["## Runs not finished", ""] + [f"- `{m}`" for m in missing] + [""]
  lines += ["## Runs", ""]
  lines += markdown_table(["run", "seconds", "best epoch", "stop"],
                  [[m["relpath"], f"{float(m.get('elapsed_s', 0)):.0f}", str(_first_extra(m, "best_epoch")),
                    str(_first_extra(m, "stop_reason"))] for m in markers])
  lines += [""] + footer
  out = {"": "\n".join(lines)}
  for name, _ in SECTIONS:
    if bodies[name]:
      title = f"# {titles[name]}: {config.experiment.name or 'grid'}"
      out[name] = "\n".join([title] + header + data + bodies[name] + footer)
  return out


def summary_without_seed(config: ml_collections.ConfigDict) -> str:
  return " ".join(p for p in results_lib.config_summary(config).split(" ") if not p.startswith("seed="))


def _first_extra(marker: dict[str, Any], field: str) -> Any:
  for rec in marker.get("records", []):
    if field in rec.get("extra", {}):
      return rec["extra"][field]
  return ""


def write_tables(workdir, aggregates, markers, grid_meta, config, missing=(), failed=(),
                 ablation_aggregates=None):
  """DIR/results.md, DIR/results.csv (the CSV starts with '#' comment lines naming the command, seeds,
  data and machine), and DIR/tables/<section>.md: each table of results.md alone, with the same header
  (command, seeds, machine, model), to publish one table on its own."""
  workdir = pathlib.Path(workdir)
  sections = render_sections(aggregates, markers, grid_meta, config, missing, failed, ablation_aggregates)
  md_path, csv_path = workdir / "results.md", workdir / "results.csv"
  md_path.write_text(sections.pop(""), encoding="utf-8")
  (workdir / "tables").mkdir(exist_ok=True)
  for name, text in sections.items():
    (workdir / "tables" / f"{name}.md").write_text(text, encoding="utf-8")
  axes = grid_meta["axes"]
  machines = sorted({machine_line(m["machine"]) for m in markers if "machine" in m})
  head = [f"# regenerate: {grid_meta.get('command') or '(not recorded)'}",
          f"# data: {grid_meta.get('data', '')}; domains {' '.join(axes['domains'])}",
          f"# seeds: {' '.join(map(str, axes['seeds']))}; ablation seeds: "
          f"{' '.join(map(str, axes['ablation_seeds']))}",
          f"# machine: {'; '.join(machines) or machine_line(grid_meta['machine'])}",
          "# mean/std/values are fractions (not %); std = sample std over seeds; p_vs_sem = paired t-test "
          "against setting 'sem' on the same key"]
  csv_path.write_text("\n".join(head) + "\n" + to_csv(aggregates, ablation_aggregates), encoding="utf-8")
  return md_path, csv_path


# ----------------------------------------------------------------------------------------------------------
# Trained parameters and plots.


def run_config_from_marker(marker: dict[str, Any]) -> ml_collections.ConfigDict:
  """The exact config a finished run used (tuples come back as lists; every reader accepts both)."""
  return ml_collections.ConfigDict(marker["config"])


def load_best_params(run_dir: str | os.PathLike, config: ml_collections.ConfigDict, num_items: int,
                     table_NxH: np.ndarray | None):
  """(model, params) of a finished run, from its best checkpoint (recg_jax.train.Checkpoints)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from recg_jax import train  # pylint: disable=g-import-not-at-top
  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top
  model = train.build_model(config, num_items)
  table = None if table_NxH is None else jnp.asarray(table_NxH)
  shapes = jax.eval_shape(lambda: recommender.init_variables(model, jax.random.key(0), table)["params"])
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
  ckpt = train.Checkpoints(pathlib.Path(run_dir), config)
  try:
    restored = ckpt.restore_best(abstract)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{pathlib.Path(run_dir) / 'checkpoints' / 'best'} holds no checkpoint")
  return model, jax.device_get(restored[0])


def projected_items(model, params, tables: dict[str, np.ndarray], max_items: int, seed: int,
                    space: str = "item") -> dict[str, np.ndarray]:
  """Per domain, up to max_items real items (seeded sample) in the model's item space: 'item' = the
  scoring projection W_p e + b_p, 'align' = the alignment projection W_a e + b_a (recg only)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top
  method = recommender.Recommender.item_vectors if space == "item" else recommender.Recommender.align
  fn = jax.jit(lambda p, t: model.apply({"params": p}, t, method=method))
  rng = np.random.default_rng(seed)
  out = {}
  for name, table in tables.items():
    rows = np.arange(1, table.shape[0])
    if len(rows) > max_items:
      rows = np.sort(rng.choice(rows, max_items, replace=False))
    if space == "item":
      out[name] = np.asarray(fn(params, jnp.asarray(table)))[rows]
    else:
      out[name] = np.asarray(fn(params, jnp.asarray(table[rows])))
  return out


def _stat(agg: dict[str, Any] | None):
  return None if agg is None else (agg["mean"], agg["std"])


def pair_bar_data(aggregates, axes, protocol: str, metrics: Sequence[str]) -> dict:
  """backbone -> metric -> [(pair, Sem (mean, std), RecG (mean, std))] for plots.pair_bars."""
  out = {}
  for b in axes["backbones"]:
    out[b] = {}
    for m in metrics:
      entries = []
      for t in axes["domains"]:
        for s in axes["sources"]:
          if t == s:
            continue
          sem = aggregates.get(("zero_shot", s, t, b, "sem", protocol, m))
          recg = aggregates.get(("zero_shot", s, t, b, "recg", protocol, m))
          if sem is not None or recg is not None:
            entries.append((f"{t}←{s}", _stat(sem), _stat(recg)))
      out[b][m] = entries
  return out


def alpha_series(aggregates, axes, protocol: str, metrics: Sequence[str], default_alpha: float) -> dict:
  """label -> metric -> [(alpha, (mean, std))] of the alpha sweep, for plots.alpha_sensitivity."""
  source, b = axes["ablation_source"][0], axes["ablation_backbone"][0]
  out = {}
  for kind, d in _ablation_columns(axes):
    label = f"{d} ← {source}" if kind == "zero_shot" else f"{d} (in-domain)"
    out[label] = {}
    for m in metrics:
      points = []
      for alpha in axes["alphas"]:
        agg = aggregates.get((kind, source, d, b, alpha_setting(alpha, default_alpha), protocol, m))
        if agg is not None:
          points.append((alpha, _stat(agg)))
      out[label][m] = points
  return out


def write_plots(workdir, config, aggregates, ablation_aggregates, markers, domains, tables) -> list[str]:
  """DIR/plots/*.png: item-space projections (Sem beside RecG), alpha sensitivity, per-pair bars."""
  from recg_jax import plots  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  out_dir = workdir / "plots"
  out_dir.mkdir(parents=True, exist_ok=True)
  axes = grid_axes(config)
  written = []
  protocols = tuple(config.eval.protocols)
  metrics = table_metrics(config)
  data_note = results_lib.data_label(config)
  for protocol in protocols:
    bars = pair_bar_data(aggregates, axes, protocol, metrics)
    if any(entries for by_metric in bars.values() for entries in by_metric.values()):
      title = f"zero-shot, {protocol}, mean ± std over seeds ({data_note})"
      written.append(str(plots.pair_bars(bars, metrics, out_dir / f"pairs_{protocol}.png", title=title)))
    series = alpha_series(ablation_aggregates, axes, protocol, metrics, float(config.gen_loss.alpha))
    if any(points for by_metric in series.values() for points in by_metric.values()):
      source, backbone = axes["ablation_source"][0], axes["ablation_backbone"][0]
      written.append(str(plots.alpha_sensitivity(
          series, metrics, out_dir / f"alpha_{protocol}.png", default_alpha=float(config.gen_loss.alpha),
          title=f"{backbone}-RecG trained on {source}: alpha sweep, {protocol} ({data_note})")))
  # Projections: the first seed's Sem and RecG runs of the ablation backbone on the ablation source.
  if tables is not None:
    source, backbone = axes["ablation_source"][0], axes["ablation_backbone"][0]
    by_path = {m["relpath"]: m for m in markers}
    panels = []
    max_items = int(config.experiment.plot_items_per_domain)
    for variant in ("sem", "recg"):
      seed = axes["ablation_seeds"][0] if (axes["ablations"] or axes["alphas"]) else axes["seeds"][0]
      spec = RunSpec(source, backbone, variant, seed)
      marker = by_path.get(spec.relpath.as_posix())
      if marker is None:
        continue
      try:
        rc = run_config_from_marker(marker)
        model, params = load_best_params(workdir / spec.relpath, rc, domains[source].num_items,
                                         tables[source])
      except (OSError, ValueError, KeyError) as e:
        _say(f"[plots] cannot load {spec.relpath}: {e!r}; no projection for it")
        continue
      label = f"{backbone}-{'Sem' if variant == 'sem' else 'RecG'}"
      panels.append((f"{label}: W_p e", projected_items(model, params, tables, max_items, seed)))
      if variant == "recg":
        panels.append((f"{label}: W_a e (alignment)",
                       projected_items(model, params, tables, max_items, seed, space="align")))
    if panels:
      methods = ("pca", "tsne") if bool(config.experiment.tsne) else ("pca",)
      for method in methods:
        path = plots.embedding_projection(panels, out_dir / f"items_{method}.png", method=method,
                                          seed=int(axes["seeds"][0]),
                                          title=f"item space, trained on {source} ({data_note})")
        written.append(str(path))
  for p in written:
    _say(f"[plots] wrote {p}")
  return written


# ----------------------------------------------------------------------------------------------------------
# Command line.

_WORKDIR = flags.DEFINE_string("workdir", None, "Grid folder: caches, one folder per run, tables, plots.")
_AGGREGATE_ONLY = flags.DEFINE_bool("aggregate_only", False,
                                    "Train nothing: rebuild the tables and plots from the finished runs.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write DIR/plots/*.png after the tables.")
config_flags.DEFINE_config_file("config", None, "Path to a config file (file.py or file.py:arg).",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if flags.FLAGS.config is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # Each run jits its own closures, so without a persistent cache every run compiles every program
    # again; runs that differ only in their seed compile identical programs. Keep them all, across runs
    # and restarts.
    jax.config.update("jax_compilation_cache_dir",
                      str(pathlib.Path(_WORKDIR.value).absolute() / "cache" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  command = recorded_command(sys.argv[1:])
  summary = run_grid(flags.FLAGS.config, _WORKDIR.value, command=command,
                     aggregate_only=_AGGREGATE_ONLY.value, make_plots=_PLOTS.value)
  if summary["failed"]:
    raise SystemExit(f"{len(summary['failed'])} run(s) failed: {summary['failed']}")


if __name__ == "__main__":
  app.run(main)
