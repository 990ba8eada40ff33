"""The tables of the leave-one-domain-out study (recg_jax/grid/lodo.py): DIR/results.md and results.json.

Columns are the domains as zero-shot targets; the validation domains' columns are marked and only they
decide anything. Rows: the expected metrics of a random ranking; the training-free text presets and the
text baseline chosen among them; for each single-source preset the source chosen per target; every
multi-source preset (a mix preset also at the target weight chosen); the in-domain references (each
in-domain preset, and each single-source preset tested on its own domain). A cell is the mean ± sample std
over seeds; a trained cell also gives the one-sample t-test of its seeds against the text baseline (one
value: it has no seed) and the paired t-test against the multi-source `sem` run.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import ml_collections
import numpy as np

from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.config.presets import PRESETS
from recg_jax.grid import baselines
from recg_jax.grid import report
from recg_jax.grid import runner

# The study's run folders under DIR/runs: <kind>/<domain>/<preset>/seed<k> (recg_jax/grid/lodo.py).
RUNS = "*/*/*/seed*"

SELECT = "full/ndcg@10"  # what every choice maximises (mean over the validation domains)
REFERENCE = "sem"  # the paired t-test's reference among the multi-source presets


def collect_values(markers: Sequence[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
  """{(kind, run domain, column domain, setting, protocol, metric): {seed: value}}: a run's own test split
  is its column 'in its own domain', a zero-shot record its target's column; a mix run's scaled scores
  (zero_shot_w<w>/...) are the setting '<preset>@w<w>'."""
  values: dict[tuple, dict[int, float]] = {}
  for m in markers:
    _, kind, domain, preset, seed = m["relpath"].split("/")
    for rec in m["records"]:
      for key, value in rec["metrics"].items():
        split, _, rest = key.partition("/")
        protocol, _, metric = rest.partition("/")
        if split == "test" and rec["stage"] == "in_domain":
          setting = preset
        elif split == "zero_shot" or split.startswith(baselines.WEIGHTED):
          weight = split[len(baselines.WEIGHTED) :] if split != "zero_shot" else ""
          setting = preset + (f"@w{weight}" if weight else "")
        else:
          continue
        values.setdefault((kind, domain, rec["domain"], setting, protocol, metric), {})[int(seed[4:])] = (
            float(value)
        )
  return values


def _mean(by_seed: dict[int, float] | None) -> float | None:
  return float(np.mean(list(by_seed.values()))) if by_seed else None


def _validation_mean(values, key_of, validation: Sequence[str]) -> float | None:
  """Mean over the validation domains of the SELECT metric at key_of(domain); None if any is missing."""
  protocol, metric = SELECT.split("/")
  means = [_mean(values.get(key_of(v) + (protocol, metric))) for v in validation]
  return None if not means or any(m is None for m in means) else float(np.mean(means))


def choose_text_baseline(values, text_presets: Sequence[str], validation: Sequence[str]) -> str | None:
  """The text preset with the best mean SELECT over the validation domains (the first on a tie)."""
  scores = {p: _validation_mean(values, lambda v, p=p: ("text", v, v, p), validation) for p in text_presets}
  scores = {p: s for p, s in scores.items() if s is not None}
  return max(scores, key=lambda p: (scores[p], -list(text_presets).index(p))) if scores else None


def choose_weight(values, preset: str, domains: Sequence[str], validation: Sequence[str]) -> str:
  """The setting of a multi-source preset ('<preset>' or '<preset>@w<w>') with the best validation mean."""
  settings = [preset] + sorted({k[3] for k in values if k[0] == "lodo" and k[3].startswith(f"{preset}@w")})
  scores = {s: _validation_mean(values, lambda v, s=s: ("lodo", v, v, s), validation) for s in settings}
  scores = {s: v for s, v in scores.items() if v is not None}
  return max(scores, key=lambda s: (scores[s], -settings.index(s))) if scores else preset


def choose_source(
    values, preset: str, target: str, domains: Sequence[str], validation: Sequence[str]
) -> str | None:
  """For a target, the single source whose model reaches the best mean SELECT on the validation domains
  (other than itself and the target; never the target's own numbers)."""
  best = None
  for source in domains:
    if source == target:
      continue
    checks = [v for v in validation if v not in (source, target)]
    score = _validation_mean(values, lambda v, s=source: ("single", s, v, preset), checks)
    if score is not None and (best is None or score > best[0]):
      best = (score, source)
  return None if best is None else best[1]


def rows_of(values, config: ml_collections.ConfigDict, domains: Sequence[str]) -> list[tuple[str, Any]]:
  """(label, lookup) per table row; lookup(domain) -> (kind, run domain, column, setting) or None."""
  ec, validation = config.experiment, tuple(config.experiment.validation_domains)
  rows: list[tuple[str, Any]] = []
  for preset in ec.text_presets:
    rows.append((f"`{preset}` (no training)", lambda d, p=preset: ("text", d, d, p)))
  chosen = choose_text_baseline(values, ec.text_presets, validation)
  if chosen:
    rows.append((f"**text baseline** = `{chosen}` (chosen on validation)", lambda d: ("text", d, d, chosen)))
  for preset in ec.single_source_presets:
    rows.append(
        (
            f"`{preset}`, best single source (chosen on validation)",
            lambda d, p=preset: (lambda s: ("single", s, d, p) if s else None)(
                choose_source(values, p, d, domains, validation)
            ),
        )
    )
  for preset in ec.presets:
    rows.append((f"`{preset}`, trained on the other domains", lambda d, p=preset: ("lodo", d, d, p)))
    setting = choose_weight(values, preset, domains, validation)
    if setting != preset:
      rows.append(
          (f"`{setting}` (target weight chosen on validation)", lambda d, s=setting: ("lodo", d, d, s))
      )
  cap = int(config.train.max_users_per_source)
  sample = f", {cap:,}-user sample" if cap else ""
  for preset in ec.in_domain_presets:
    rows.append((f"in-domain `{preset}`{sample}", lambda d, p=preset: ("in_domain", d, d, p)))
  for preset in ec.single_source_presets:
    rows.append((f"in-domain `{preset}`{sample}", lambda d, p=preset: ("single", d, d, p)))
  return rows


def _stat(values, key, protocol, metric, base: float | None, reference) -> dict[str, Any] | None:
  by_seed = values.get(key + (protocol, metric)) if key else None
  if not by_seed:
    return None
  seeds = sorted(by_seed)
  return baselines.cell_stats([by_seed[s] for s in seeds], reference, seeds, base)


def metric_table(values, config, domains, protocol: str, metric: str, random: dict) -> list[str]:
  """One protocol and metric: a row per method, a column per target."""
  validation = set(config.experiment.validation_domains)
  chosen = choose_text_baseline(
      values, config.experiment.text_presets, tuple(config.experiment.validation_domains)
  )
  header = ["method"] + [f"{d} (validation)" if d in validation else d for d in domains]
  rows = (
      [
          ["random (expected)"]
          + [
              f"{100 * random[d][f'{protocol}/{metric}']:.2f}"
              if f"{protocol}/{metric}" in random.get(d, {})
              else "—"
              for d in domains
          ]
      ]
      if random
      else []
  )
  for label, lookup in rows_of(values, config, domains):
    row = [label]
    for d in domains:
      key = lookup(d)
      base = _mean(values.get(("text", d, d, chosen, protocol, metric))) if chosen else None
      reference = (
          values.get(("lodo", d, d, REFERENCE, protocol, metric)) if key and key[0] == "lodo" else None
      )
      stat = _stat(
          values,
          key,
          protocol,
          metric,
          base if key and key[0] != "text" else None,
          reference if key and key[3] != REFERENCE else None,
      )
      cell = baselines.cell(stat, base if key and key[0] != "text" else None, key is None or key[0] == "text")
      if key and key[0] == "single" and key[1] != d:
        cell += f" [{key[1]}]"
      row.append(cell)
    rows.append(row)
  return (
      [f"## `{protocol}`, {report.metric_title(metric)} (%)", ""] + report.markdown_table(header, rows) + [""]
  )


def share_table(values, config, domains) -> list[str]:
  """Each method's mean `full` NDCG@10 as a share of the best in-domain model's on that domain."""
  in_domain = [("in_domain", p) for p in config.experiment.in_domain_presets]
  in_domain += [("single", p) for p in config.experiment.single_source_presets]
  best = {}
  for d in domains:
    means = [_mean(values.get((k, d, d, p, "full", "ndcg@10"))) for k, p in in_domain]
    means = [m for m in means if m is not None]
    best[d] = max(means) if means else None
  header = ["method"] + [f"{d}: % of {100 * best[d]:.2f}" if best[d] else d for d in domains]
  rows = []
  for label, lookup in rows_of(values, config, domains):
    row = [label]
    for d in domains:
      key = lookup(d)
      m = _mean(values.get(key + ("full", "ndcg@10"))) if key else None
      row.append(f"{100 * m / best[d]:.0f}%" if m is not None and best[d] else "—")
    rows.append(row)
  return (
      ["## Share of the best in-domain model's `full` NDCG@10", ""]
      + report.markdown_table(header, rows)
      + [""]
  )


def goal_lines(values, config, domains) -> list[str]:
  """Which multi-source presets beat the text baseline on Recall@10 and NDCG@10 under `full` (p < 0.05)
  on which test targets (the validation domains excluded)."""
  validation = tuple(config.experiment.validation_domains)
  chosen = choose_text_baseline(values, config.experiment.text_presets, validation)
  tests = [d for d in domains if d not in validation]
  lines = [f"## Against the text baseline on the test targets ({', '.join(tests)})", ""]
  if not chosen:
    return lines + ["No text baseline yet (its validation runs are not finished).", ""]
  for preset in config.experiment.presets:
    setting = choose_weight(values, preset, domains, validation)
    wins = []
    for d in tests:
      ok = True
      for metric in ("recall@10", "ndcg@10"):
        base = _mean(values.get(("text", d, d, chosen, "full", metric)))
        stat = _stat(values, ("lodo", d, d, setting), "full", metric, base, None)
        higher = stat and base is not None and baselines.above(stat["mean"], base)
        ok &= bool(higher and (stat["p_knn"] or 1.0) < 0.05)
      if ok:
        wins.append(d)
    done = sum(bool(values.get(("lodo", d, d, setting, "full", "ndcg@10"))) for d in tests)
    lines.append(
        f"- `{setting}`: beats `{chosen}` on {len(wins)} of {done} finished test targets "
        f"({', '.join(wins) or 'none'}); the goal is 3 of {len(tests)}"
    )
  return lines + [""]


def write_report(workdir: paths.Path, config: ml_collections.ConfigDict, meta: dict[str, Any]) -> paths.Path:
  """DIR/results.md (and the values behind it, results.json) from every finished run."""
  markers = runner.collect_markers(workdir, RUNS)
  values = collect_values(markers)
  domains = list(meta["domains"])
  random_path = workdir / baselines.RANDOM
  random = json.loads(random_path.read_text(encoding="utf-8")) if random_path.is_file() else {}
  ec = config.experiment
  machines = sorted({report.machine_line(m["machine"]) for m in markers if "machine" in m})
  total_s = sum(float(m.get("elapsed_s", 0.0)) for m in markers)
  lines = [
      f"# Leave one domain out: {ec.name or 'lodo'}",
      "",
      f"- regenerate: `{meta.get('command') or '(not recorded)'}` (finished runs are skipped)",
      f"- data: {results_lib.data_label(config)}; domains {', '.join(domains)}; every domain is the "
      "zero-shot target of runs trained on all the others",
      f"- validation domains: {', '.join(ec.validation_domains)}: every choice (text baseline, target "
      "weight, single source) is made on their columns, which are never results",
      f"- users per source in training: {config.train.max_users_per_source or 'all'} (a seeded random "
      "sample; its validation and in-domain test too, so an in-domain row is tested on that sample); every "
      "zero-shot target, and every training-free row, is evaluated on all its users",
      f"- seeds: {', '.join(map(str, ec.seeds))} (text presets: no seed); mean ± sample std over seeds; "
      "`>knn`/`<knn` = above/below the text baseline, p = one-sample t-test of the seeds against its value; "
      f"{baselines.LEVEL_NOTE}; "
      f"p_sem = paired t-test against `{REFERENCE}` trained on the same domains (scipy.stats)",
      f"- machine: {'; '.join(machines) or report.machine_line(meta['machine'])}",
      f"- runs: {len(markers)} finished of {len(meta['runs'])} planned ({total_s / 3600:.2f} h of run time)",
      f"- model: {config.model.backbone}, {report.summary_without_seed(config)}",
      "- presets (config overrides): "
      + "; ".join(
          f"`{p}` {PRESETS[p]}"
          for p in dict.fromkeys(
              [*ec.text_presets, *ec.presets, *ec.single_source_presets, *ec.in_domain_presets]
          )
      ),
      "",
  ]
  lines += goal_lines(values, config, domains)
  for protocol in config.eval.protocols:
    for metric in report.table_metrics(config):
      lines += metric_table(values, config, domains, protocol, metric, random)
  lines += share_table(values, config, domains)
  lines += ["## Protocols", ""]
  lines += [f"- `{p}`: {t}" for p, t in results_lib.protocol_descriptions(config.eval).items()]
  lines += [
      f"- model selection: early stopping on the mean `{config.eval.select_metric}` of the sources "
      f"(patience {config.train.patience} epochs); test metrics come from the best checkpoint.",
      "",
  ]
  path = workdir / "results.md"
  paths.write_text_atomic(path, "\n".join(lines))
  paths.write_json_atomic(
      workdir / "results.json",
      {
          "values": [{"key": list(k), "by_seed": v} for k, v in sorted(values.items())],
          "text_baseline": choose_text_baseline(values, ec.text_presets, tuple(ec.validation_domains)),
      },
  )
  return path
