"""The baselines study: trained models against the training-free `text_knn`, under both protocols, in-domain
and zero-shot. Its command line is `python -m recg_jax.baselines --config=configs/baselines_shared.py
--workdir=DIR`.

A study is a list of named presets (recg_jax/config/presets.py: config overrides on the study config) run
for every source x seed. `text_knn` presets have no parameters and no seed: they run once. Every domain of
experiment.domains is a target of every other one. Runs go to DIR/runs/<source>/<preset>/seed<k>/ with
the grid runner's completion marker (done.json), so a restarted study skips finished runs and a killed run
resumes from its checkpoint; the tables are rewritten after every run, so they are never behind the runs.

DIR/results.md starts with a summary of means, then has, per protocol and metric, one row per preset
(after the expected metrics of a random ranking, DIR/random.json) and one column per in-domain source and
zero-shot pair: mean ± sample std over seeds, and two tests per cell: a paired t-test against `sem` over
the seeds both ran, and a one-sample t-test of the seeds against `text_knn`'s single value (it has no seed).
A `mix` preset's target weight is chosen on experiment.validation_domain (choose_weights) and shown as a
row of its own.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from recg_jax import compile_stats
from recg_jax import config as config_lib
from recg_jax import distributed
from recg_jax import errors
from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.config.presets import PRESETS
from recg_jax.grid import archive
from recg_jax.grid import planning
from recg_jax.grid import report
from recg_jax.grid import runner

WEIGHTED = "zero_shot_w"
# Means closer than this (0.001 percentage points, a tenth of the last digit a table shows) are marked
# level ('='): float32 embeddings rebuilt on another machine, or scored on another code path, break
# near-ties differently, so a fusion whose weight fell to 0 can sit 5e-6 from the text baseline itself.
LEVEL_TOLERANCE = 1e-5
LEVEL_NOTE = "`=` = level within 0.001 points (float32 drift)"


def above(mean: float, reference: float) -> bool:
  """Whether `mean` is above `reference` by more than LEVEL_TOLERANCE: what a verdict (beats, crosses) asks
  besides its test, so that a cell marked level is never counted as above."""
  return mean - reference > LEVEL_TOLERANCE


UNTRAINED = "text_knn"  # presets whose variant is this run once, as seed 0, and are the one-sample reference


def _is_untrained(preset: str) -> bool:
  """A text_knn preset that fits nothing (knn_fit trains: it has seeds)."""
  return PRESETS[preset].get("model.variant") == UNTRAINED and not PRESETS[preset].get("knn_fit.enabled")


def plan(config: ml_collections.ConfigDict) -> list[tuple[str, str, int]]:
  """(source, preset, seed) of every run, seed-major so that an interrupted study has whole seeds."""
  ec = config.experiment
  presets = tuple(ec.presets)
  bad = [p for p in presets if p not in PRESETS]
  if bad:
    raise errors.ConfigError(f"config.experiment.presets: {bad} not in {sorted(PRESETS)}")
  domains = planning.grid_domains(config)
  sources = tuple(ec.sources) or (str(config.data.source),)
  for s in sources:
    if s not in domains:
      raise errors.ConfigError(f"config.experiment.sources: {s!r} is not in experiment.domains {domains}")
  seeds = tuple(int(s) for s in ec.seeds)
  if not seeds:
    raise errors.ConfigError("config.experiment.seeds is empty")
  runs = []
  for seed in seeds:
    for source in sources:
      for preset in presets:
        if _is_untrained(preset) and seed != seeds[0]:
          continue
        runs.append((source, preset, seed if not _is_untrained(preset) else 0))
  return runs


def run_config(
    config: ml_collections.ConfigDict, source: str, preset: str, seed: int, domains: Sequence[str]
) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config)
  c.data.source = source
  c.data.targets = tuple(d for d in domains if d != source)
  c.data.auxiliary = ()
  c.train.seed = int(seed)
  c.experiment.mode = "zero_shot"
  c.experiment.name = f"{config.experiment.name or 'baselines'}/{source}/{preset}/seed{seed}"
  return config_lib.apply_preset(c, preset)


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    command: str = "",
    aggregate_only: bool = False,
) -> dict[str, Any]:
  """Runs every unfinished run, rewriting DIR/results.md after each; returns what ran and failed."""
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  archive.sync(workdir, archive.folder(config))
  domains_order = planning.grid_domains(config)
  runs = plan(config)
  domains, tables = runner.load_domains(config, workdir, domains_order, with_tables=True)
  write_random(workdir, config, domains)
  meta = runner.study_meta(command, domains_order, [f"{s}/{p}/seed{k}" for s, p, k in runs])
  pending: list[runner.PendingRun] = []
  for i, (source, preset, seed) in enumerate(runs, 1):
    rel = paths.as_path("runs") / source / preset / f"seed{seed}"
    run_dir = workdir / rel
    rc = run_config(config, source, preset, seed, domains_order)
    tag = f"[baselines] {i}/{len(runs)} {rel.as_posix()}"
    if runner.finished(run_dir, rc):
      distributed.say(f"{tag}: skip (finished)")
      continue
    if not aggregate_only:
      distributed.say(f"{tag}: {PRESETS[preset]}")
      spec = planning.RunSpec(source, str(rc.model.backbone), str(rc.model.variant), seed)
      pending.append(runner.PendingRun(rc, spec, run_dir, tag, preset, rel.as_posix()))
  compile_stats.install()
  ran, failed = runner.run_pending(
      pending,
      domains,
      tables,
      workdir,
      meta["machine"],
      int(config.experiment.member_group_size),
      "[baselines]",
      after_each=lambda: write_report(workdir, config, meta),
  )
  path = write_report(workdir, config, meta)
  return {"ran": ran, "failed": failed, "tables": str(path)}


def choose_weights(
    values: dict[tuple, dict[int, float]],
    presets: Sequence[str],
    sources: Sequence[str],
    validation_domain: str,
    select: str,
) -> dict[str, dict[str, float]]:
  """{preset: {source: weight}}: for every preset with weighted target scores, the weight (1 = the run's
  own zero-shot numbers) with the best mean `select` ('full/ndcg@10') on validation_domain ← source."""
  protocol, metric = select.split("/")
  out: dict[str, dict[str, float]] = {}
  for preset in presets:
    for s in sources:
      if s == validation_domain:
        continue
      candidates = {}
      for (kind, src, dom, setting, prot, met), by_seed in values.items():
        if (kind, src, dom, prot, met) != ("zero_shot", s, validation_domain, protocol, metric):
          continue
        if setting == preset:
          candidates[1.0] = float(np.mean(list(by_seed.values())))
        elif setting.startswith(f"{preset}@w"):
          candidates[float(setting[len(preset) + 2 :])] = float(np.mean(list(by_seed.values())))
      if len(candidates) > 1:
        out.setdefault(preset, {})[s] = max(candidates, key=lambda w: (candidates[w], -w))
  return out


RANDOM = "random.json"


def write_random(workdir: paths.Path, config: ml_collections.ConfigDict, domains: dict) -> None:
  """DIR/random.json: what a uniformly random ranking reaches in expectation on each domain's test split
  (random_ranking.random_expectation), the floor every table shows."""
  from recg_jax import random_ranking  # pylint: disable=g-import-not-at-top
  from recg_jax.data import types  # pylint: disable=g-import-not-at-top

  out = {
      name: random_ranking.random_expectation(
          types.leave_one_out(d, "test", int(config.data.max_len)), d, config.eval
      )
      for name, d in domains.items()
  }
  paths.write_json_atomic(workdir / RANDOM, out)


def cell_stats(
    values: Sequence[float],
    sem_values: dict[int, float] | None,
    seeds: Sequence[int],
    knn_value: float | None,
) -> dict[str, Any]:
  """mean, std, the paired t-test p against sem and the one-sample t-test p against text_knn."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  v = np.asarray(values, np.float64)
  out = {
      "mean": float(v.mean()),
      "std": float(v.std(ddof=1)) if len(v) > 1 else None,
      "p_sem": None,
      "p_knn": None,
  }
  if knn_value is not None and len(v) >= 2:
    # Seeds that agree exactly (a run whose target score is text similarity alone) have no variance:
    # there is nothing to test, and no p is shown.
    out["p_knn"] = float(stats.ttest_1samp(v, knn_value).pvalue) if np.ptp(v) > 0 else None
  if sem_values:
    paired = [s for s in seeds if s in sem_values]
    if len(paired) >= 2:
      a = np.array([values[list(seeds).index(s)] for s in paired])
      b = np.array([sem_values[s] for s in paired])
      out["p_sem"] = float(stats.ttest_rel(a, b).pvalue) if np.ptp(a - b) > 0 else None
  return out


def cell(
    stat: dict[str, Any] | None,
    knn: float | None,
    is_reference: bool,
    reference: str = "knn",
    paired: tuple[str, str] = ("p_sem", "p_sem="),
) -> str:
  """'mean ± std (>knn p=...; p_sem=...)': the mark against the reference's value `knn` (named
  `reference`), and the paired test stat[paired[0]] labelled paired[1]; a reference cell is bare."""
  if stat is None:
    return "—"
  text = f"{100 * stat['mean']:.2f}"
  if stat["std"] is not None:
    text += f" ± {100 * stat['std']:.2f}"
  if is_reference:
    return text
  notes = []
  if knn is not None:
    same = math.isclose(stat["mean"], knn, rel_tol=0.0, abs_tol=LEVEL_TOLERANCE)
    mark = "=" if same else ">" if above(stat["mean"], knn) else "<"
    notes.append(f"{mark}{reference}" + (f" p={stat['p_knn']:.3f}" if stat["p_knn"] is not None else ""))
  key, label = paired
  if stat.get(key) is not None:
    notes.append(f"{label}{stat[key]:.3f}")
  return text + (f" ({'; '.join(notes)})" if notes else "")


def collect_values(markers: Sequence[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
  """{(kind, source, domain, setting, protocol, metric): {seed: value}} of every finished run; kind is
  'in_domain' (the source's test split) or 'zero_shot'; a run's `zero_shot_w<weight>/...` metrics (its
  trained share scaled on the target) become the setting '<preset>@w<weight>'."""
  values: dict[tuple, dict[int, float]] = {}
  for m in markers:
    for rec in m["records"]:
      for key, value in rec["metrics"].items():
        parts = key.split("/")
        if len(parts) != 3 or not (parts[0] in ("test", "zero_shot") or parts[0].startswith(WEIGHTED)):
          continue
        kind = "in_domain" if parts[0] == "test" else "zero_shot"
        setting = m["setting"] + (f"@w{parts[0][len(WEIGHTED):]}" if parts[0].startswith(WEIGHTED) else "")
        values.setdefault((kind, rec["source"], rec["domain"], setting, parts[1], parts[2]), {})[
            int(m["spec"]["seed"])
        ] = float(value)
  return values


def _header(
    config: ml_collections.ConfigDict, meta: dict[str, Any], markers: list[dict], sources: list[str]
) -> list[str]:
  domains, presets = list(meta["domains"]), list(config.experiment.presets)
  machines = sorted({report.machine_line(m["machine"]) for m in markers if "machine" in m})
  total_s = sum(float(m.get("elapsed_s", 0.0)) for m in markers)
  return [
      f"# Trained models against text_knn: {config.experiment.name or 'baselines'}",
      "",
      f"- regenerate: `{meta.get('command') or '(not recorded)'}` (finished runs are skipped)",
      f"- data: {results_lib.data_label(config)}; domains {', '.join(domains)}; sources "
      f"{', '.join(sources)}; each source's targets are the other domains",
      f"- seeds: {', '.join(map(str, config.experiment.seeds))} (text_knn presets: no seed, one run); "
      "mean ± sample std over seeds",
      "- tests: `>knn`/`<knn` = mean above/below text_knn (recency-weighted history mean, no training), "
      f"{LEVEL_NOTE}, "
      "p = one-sample t-test of the seeds against its value; p_sem = paired t-test against `sem` "
      "(scipy.stats)",
      f"- machine: {'; '.join(machines) or report.machine_line(meta['machine'])}",
      f"- runs: {len(markers)} finished of {len(meta['runs'])} planned ({total_s / 3600:.2f} h of run "
      "time)",
      f"- model: {config.model.backbone}, {report.summary_without_seed(config)}",
      "- presets (config overrides; docs/method.md explains each): "
      + "; ".join(f"`{p}` {PRESETS[p]}" for p in presets),
      "",
  ]


def _row_settings(
    config: ml_collections.ConfigDict, chosen: dict[str, dict[str, float]]
) -> tuple[list, list]:
  """(rows: (preset, label, {source: weight}), the note on chosen weights): each preset, and each mix
  preset again at the weights chosen on the validation domain."""
  validation = config.experiment.validation_domain
  rows = []
  for preset in config.experiment.presets:
    rows.append((preset, f"`{preset}`", {}))
    if preset in chosen:
      label = (
          f"`{preset}`, weight chosen on {validation} ← source ("
          + ", ".join(f"{s}: {w:g}" for s, w in chosen[preset].items())
          + ")"
      )
      rows.append((preset, label, chosen[preset]))
  if not chosen:
    return rows, []
  return rows, [
      f"Rows 'weight chosen on {validation} ← source': a `mix` model's "
      "trained share of the score is multiplied on the target by the weight (of 1 and "
      "transfer.target_model_weights) with the best mean "
      f"`{str(config.eval.select_metric).split('/', 1)[1]}` on the validation pair "
      f"{validation} ← source; that pair's column is then a validation "
      "number, not a test result.",
      "",
  ]


def _setting_of(preset: str, kind: str, source: str, weights: dict[str, float]) -> str:
  if kind == "zero_shot" and source in weights and weights[source] != 1.0:
    return f"{preset}@w{weights[source]:g}"
  return preset


def _summary_table(config, values, row_settings, columns, metrics) -> list[str]:
  """A compact summary first: means only, Recall / NDCG at the table K, every protocol."""
  short = [m.split("@")[0][0].upper() for m in metrics]
  legend = " / ".join(f"{a} = {report.metric_title(m)}" for a, m in zip(short, metrics))
  lines = [f"## Summary: mean over seeds, {legend} (%)", ""]
  header = ["preset"] + [
      f"{prot} {s} (in-domain)" if k == "in_domain" else f"{prot} {d} ← {s}"
      for prot in config.eval.protocols
      for k, s, d in columns
  ]
  rows = []
  for preset, label, weights in row_settings:
    row = [label]
    for protocol in config.eval.protocols:
      for kind, s, d in columns:
        cells = []
        for metric in metrics:
          by_seed = values.get((kind, s, d, _setting_of(preset, kind, s, weights), protocol, metric))
          cells.append(f"{100 * np.mean(list(by_seed.values())):.2f}" if by_seed else "—")
        row.append(" / ".join(cells))
    rows.append(row)
  return lines + report.markdown_table(header, rows) + [""]


def _metric_table(values, row_settings, columns, random, protocol: str, metric: str) -> list[str]:
  """One protocol and metric: a row per preset, a column per in-domain source and zero-shot pair."""
  header = ["preset"] + [f"{s} (in-domain)" if k == "in_domain" else f"{d} ← {s}" for k, s, d in columns]
  rows = []
  if random:
    rows.append(
        ["random (expected)"]
        + [
            f"{100 * random[d][f'{protocol}/{metric}']:.2f}"
            if f"{protocol}/{metric}" in random.get(d, {})
            else "—"
            for _, _, d in columns
        ]
    )
  for preset, label, weights in row_settings:
    row = [label]
    for kind, s, d in columns:
      by_seed = values.get((kind, s, d, _setting_of(preset, kind, s, weights), protocol, metric))
      if not by_seed:
        row.append("—")
        continue
      seeds = sorted(by_seed)
      knn = values.get((kind, s, d, UNTRAINED, protocol, metric), {}).get(0)
      stat = cell_stats(
          [by_seed[k] for k in seeds],
          values.get((kind, s, d, "sem", protocol, metric)) if preset != "sem" else None,
          seeds,
          knn,
      )
      row.append(cell(stat, knn, preset == UNTRAINED))
    rows.append(row)
  return (
      [f"## `{protocol}`, {report.metric_title(metric)} (%)", ""] + report.markdown_table(header, rows) + [""]
  )


def write_report(workdir: paths.Path, config: ml_collections.ConfigDict, meta: dict[str, Any]) -> paths.Path:
  """DIR/results.md from every finished run (regenerated whole each time)."""
  markers = runner.collect_markers(workdir)
  values = collect_values(markers)
  sources = list(config.experiment.sources) or [str(config.data.source)]
  columns = [("in_domain", s, s) for s in sources] + [
      ("zero_shot", s, t) for s in sources for t in meta["domains"] if t != s
  ]
  metrics = report.table_metrics(config)
  chosen = choose_weights(
      values,
      list(config.experiment.presets),
      sources,
      str(config.experiment.validation_domain),
      str(config.eval.select_metric).split("/", 1)[1],
  )
  row_settings, note = _row_settings(config, chosen)
  random_path = workdir / RANDOM
  random = json.loads(random_path.read_text(encoding="utf-8")) if random_path.is_file() else {}
  lines = _header(config, meta, markers, sources) + note
  lines += _summary_table(config, values, row_settings, columns, metrics)
  for protocol in config.eval.protocols:
    for metric in metrics:
      lines += _metric_table(values, row_settings, columns, random, protocol, metric)
  lines += ["## Protocols", ""]
  lines += [f"- `{p}`: {t}" for p, t in results_lib.protocol_descriptions(config.eval).items()]
  lines += [
      f"- model selection: early stopping on `{config.eval.select_metric}` of the source (patience "
      f"{config.train.patience} epochs); test metrics come from the best checkpoint.",
      "",
  ]
  path = workdir / "results.md"
  paths.write_text_atomic(path, "\n".join(lines))
  return path
