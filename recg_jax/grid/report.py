"""The grid's tables: results.md, results.csv and tables/<section>.md, from the aggregates.

The paper's tables in its shape: zero-shot (its Table 3), in-domain (Table 4), ablations (Table 5) and the
alpha sweep, in % with mean ± std over seeds, the gain of RecG over Sem and the paired t-test's p; a
header that says how to regenerate them (command, data, seeds, machine, model) and a footer defining the
protocols. markdown_table, metric_title, table_metrics, machine_line and summary_without_seed are shared
with the baselines study (recg_jax.baselines), so that both reports speak alike.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections
import numpy as np

from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.grid import planning
from recg_jax.grid import stats


def machine_line(info: dict[str, Any]) -> str:
  return (
      f"{info['platform']} ({info['cpu_count']} CPUs), Python {info['python']}, jax {info['jax']} "
      f"on {info['backend']}: {', '.join(info['devices'])}"
  )


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
  return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
      "| " + " | ".join(r) + " |" for r in rows
  ]


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
        row = [f"{t} ← {s}"] + (
            [_pct(aggregates.get(("zero_shot", s, t, axes["backbones"][0], "text_knn", protocol, metric)))]
            if knn
            else []
        )
        for b in axes["backbones"]:
          get = lambda setting: aggregates.get(("zero_shot", s, t, b, setting, protocol, metric))
          recg = get("recg")
          row += [_pct(get("sem")), _pct(recg), _gain(recg), _p(recg), _pct(get("recg" + stats.NO_SEQ))]
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
        row = [s] + (
            [_pct(aggregates.get(("in_domain", s, s, axes["backbones"][0], "text_knn", protocol, metric)))]
            if knn
            else []
        )
        for b in axes["backbones"]:
          get = lambda setting: aggregates.get(("in_domain", s, s, b, setting, protocol, metric))
          recg = get("recg")
          row += ([_pct(get("id"))] if with_id else []) + [
              _pct(get("sem")),
              _pct(recg),
              _gain(recg),
              _p(recg),
              _pct(get("recg" + stats.NO_SEQ)),
          ]
        if any(cell != "—" for cell in row[1:]):
          rows.append(row)
      if rows:
        lines += [f"### In-domain, `{protocol}`, {metric_title(metric)} (%)", ""]
        lines += markdown_table(header, rows) + [""]
  return lines


def ablation_columns(axes) -> list[tuple[str, str]]:
  source = axes["ablation_source"][0]
  return [("zero_shot", t) for t in axes["domains"] if t != source] + [("in_domain", source)]


def ablation_tables(aggregates, axes, protocols, metrics) -> list[str]:
  """Table 5: RecG, each ablation and Sem for ablation_backbone on ablation_source: every target and the
  source's own test split, with the gain over Sem."""
  if not axes["ablations"]:
    return []
  source, b = axes["ablation_source"][0], axes["ablation_backbone"][0]
  settings = [("recg", f"{b}-RecG (full)")]
  for a in axes["ablations"]:
    settings.append(("recg" + stats.NO_SEQ if a == "no_seq" else f"recg:{a}", planning.ABLATION_LABELS[a]))
  settings.append(("sem", f"{b}-Sem"))
  lines = []
  for protocol in protocols:
    header = ["setting"]
    cols = ablation_columns(axes)
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
    lines += (
        [
            f"### Ablations, {b} on {source}, `{protocol}` (%; seeds {seeds}; gain = "
            f"{metric_title(metrics[0])} over Sem)",
            "",
        ]
        + markdown_table(header, rows)
        + [""]
    )
  return lines


def alpha_tables(aggregates, axes, protocols, metrics, default_alpha: float) -> list[str]:
  """The alpha sweep: one row per alpha (the plain RecG run at gen_loss.alpha)."""
  if not axes["alphas"]:
    return []
  source, b = axes["ablation_source"][0], axes["ablation_backbone"][0]
  lines = []
  for protocol in protocols:
    cols = ablation_columns(axes)
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


SECTIONS = (
    ("zero_shot", "Zero-shot (as the paper's Table 3)"),
    ("in_domain", "In-domain (as the paper's Table 4)"),
    ("ablations", "Ablations (as the paper's Table 5)"),
    ("alpha", "Alpha sensitivity"),
)


def _header_lines(markers, grid_meta, config, axes, missing, failed) -> list[str]:
  """The title and the bullet list every table file starts with (command, data, seeds, machine, runs)."""
  machines = sorted({machine_line(m["machine"]) for m in markers if "machine" in m})
  total_s = sum(float(m.get("elapsed_s", 0.0)) for m in markers)
  data = grid_meta.get("data", "")
  protocols = tuple(config.eval.protocols)
  return [
      f"# Experiment grid: {config.experiment.name or 'grid'}",
      "",
      f"- regenerate: `{grid_meta.get('command') or '(not recorded)'}` — finished runs are skipped, "
      "so on a complete grid this only rebuilds these tables and the plots (add `--aggregate_only` to "
      "never train)",
      f"- data: {data}"
      + (
          f" (`{config.data.format}`)"
          if data != config.data.format
          else f" files under `{config.data.root}`"
          if config.data.root
          else ""
      )
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
      "",
  ]


def _footer_lines(config) -> list[str]:
  footer = ["## Protocols", ""]
  footer += [f"- `{p}`: {text}" for p, text in results_lib.protocol_descriptions(config.eval).items()]
  return footer + [
      "- rank = #candidates scoring strictly higher + 0.5 * #other candidates tied with the target.",
      f"- model selection: early stopping on `{config.eval.select_metric}` (patience "
      f"{config.train.patience} epochs); test metrics come from the best checkpoint.",
      "- every metric of every run, and every K, is in results.csv; each run's own results.md holds "
      "its full config.",
      "",
  ]


def render_sections(
    aggregates, markers, grid_meta, config, missing=(), failed=(), ablation_aggregates=None
) -> dict[str, str]:
  """{'': the whole results.md, section name: that table alone with the same header and footnotes} for
  every non-empty section of SECTIONS."""
  ablation_aggregates = aggregates if ablation_aggregates is None else ablation_aggregates
  axes = {k: tuple(v) for k, v in grid_meta["axes"].items()}
  protocols = tuple(config.eval.protocols)
  metrics = table_metrics(config)
  lines = _header_lines(markers, grid_meta, config, axes, missing, failed)
  header = lines[1:]
  data = ["## Data", "", grid_meta["domain_table"], ""] if grid_meta.get("domain_table") else []
  bodies = {
      "zero_shot": zero_shot_tables(aggregates, axes, protocols, metrics),
      "in_domain": in_domain_tables(aggregates, axes, protocols, metrics),
      "ablations": ablation_tables(ablation_aggregates, axes, protocols, metrics),
      "alpha": alpha_tables(ablation_aggregates, axes, protocols, metrics, float(config.gen_loss.alpha)),
  }
  titles = dict(SECTIONS)
  footer = _footer_lines(config)
  lines += data
  for name, _ in SECTIONS:
    if bodies[name]:
      lines += [f"## {titles[name]}", ""] + bodies[name]
  if missing:
    lines += ["## Runs not finished", ""] + [f"- `{m}`" for m in missing] + [""]
  lines += ["## Runs", ""]
  lines += markdown_table(
      ["run", "seconds", "best epoch", "stop"],
      [
          [
              m["relpath"],
              f"{float(m.get('elapsed_s', 0)):.0f}",
              str(_first_extra(m, "best_epoch")),
              str(_first_extra(m, "stop_reason")),
          ]
          for m in markers
      ],
  )
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


def write_tables(
    workdir, aggregates, markers, grid_meta, config, missing=(), failed=(), ablation_aggregates=None
):
  """DIR/results.md, DIR/results.csv (the CSV starts with '#' comment lines naming the command, seeds,
  data and machine), and DIR/tables/<section>.md: each table of results.md alone, with the same header
  (command, seeds, machine, model), to publish one table on its own."""
  workdir = paths.as_path(workdir)
  sections = render_sections(aggregates, markers, grid_meta, config, missing, failed, ablation_aggregates)
  md_path, csv_path = workdir / "results.md", workdir / "results.csv"
  md_path.write_text(sections.pop(""), encoding="utf-8")
  (workdir / "tables").mkdir(exist_ok=True)
  for name, text in sections.items():
    (workdir / "tables" / f"{name}.md").write_text(text, encoding="utf-8")
  axes = grid_meta["axes"]
  machines = sorted({machine_line(m["machine"]) for m in markers if "machine" in m})
  head = [
      f"# regenerate: {grid_meta.get('command') or '(not recorded)'}",
      f"# data: {grid_meta.get('data', '')}; domains {' '.join(axes['domains'])}",
      f"# seeds: {' '.join(map(str, axes['seeds']))}; ablation seeds: "
      f"{' '.join(map(str, axes['ablation_seeds']))}",
      f"# machine: {'; '.join(machines) or machine_line(grid_meta['machine'])}",
      "# mean/std/values are fractions (not %); std = sample std over seeds; p_vs_sem = paired t-test "
      "against setting 'sem' on the same key",
  ]
  csv_path.write_text(
      "\n".join(head) + "\n" + stats.to_csv(aggregates, ablation_aggregates), encoding="utf-8"
  )
  return md_path, csv_path
