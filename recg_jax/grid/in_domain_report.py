"""The tables of the in-domain study (experiment.study = 'in_domain', configs/in_domain_shared.py):
DIR/in_domain.md and in_domain.json (a warm-start study may share the folder and its 100% runs: its
tables are DIR/results.md).

The study is the warm-start study's machinery (recg_jax/grid/warm_start.py) at the one budget of 100%:
every preset trained and tested on each domain, every user, beside the training-free text presets. This
report reads every finished run of the folder (runs/text/<domain>/<preset>/seed0 and
runs/scratch/<domain>/100pct/<preset>/seed<k>), so invocations that cover different domains (the small
domains with every preset, the large ones with a few) build one table.

Per protocol and metric, one row per method and one column per domain: mean ± sample std over seeds, the
one-sample t-test of the seeds against the text baseline's single value, and the paired t-test against
the ID reference on the same seeds. A method *beats both* on a domain when its `full` Recall@10 and
NDCG@10 are both above the text baseline and above the ID reference with p < 0.05 in each test.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import ml_collections
import numpy as np

from recg_jax import evaluate
from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.config import presets as presets_lib
from recg_jax.config.presets import PRESETS
from recg_jax.grid import archive
from recg_jax.grid import baselines
from recg_jax.grid import report
from recg_jax.grid import runner
from recg_jax.grid import warm_start_report

METRICS = ("ndcg@10", "recall@10")
ALPHA = 0.05
GOAL_DOMAINS = 5  # a hybrid should beat both references on at least this many domains
# The run folders this report reads (relative to DIR/runs).
RUNS = ("text/*/*/seed*", "scratch/*/100pct/*/seed*")


def collect(workdir: paths.Path) -> list[dict[str, Any]]:
  """Every finished run of the folder's in-domain runs, in path order."""
  return [m for pattern in RUNS for m in runner.collect_markers(workdir, pattern)]


def _row_presets(config: ml_collections.ConfigDict, values) -> list[tuple[str, str]]:
  """(kind, preset) of every row: the configured presets first, then any other preset with finished runs."""
  ec = config.experiment
  rows = [("text", p) for p in ec.text_presets] + [("scratch", p) for p in ec.presets]
  seen = set(rows)
  for kind, _, _, preset, _, _ in sorted(values):
    if (kind, preset) not in seen:
      rows.append((kind, preset))
      seen.add((kind, preset))
  return rows


def _domains(config: ml_collections.ConfigDict, values) -> list[str]:
  order = list(config.experiment.domains)
  return order + sorted({k[1] for k in values} - set(order))


def cell(values, kind, preset, domain, protocol, metric, text, reference) -> dict[str, Any] | None:
  """mean, std, p against the text baseline's value (p_knn) and paired against the ID reference (p_sem)."""
  by_seed = values.get((kind, domain, 1.0, preset, protocol, metric))
  if not by_seed:
    return None
  seeds = sorted(by_seed)
  base = _mean(values.get(("text", domain, 1.0, text, protocol, metric))) if kind != "text" else None
  ref = values.get(("scratch", domain, 1.0, reference, protocol, metric))
  paired = None if (kind == "scratch" and preset == reference) else ref
  return baselines.cell_stats([by_seed[s] for s in seeds], paired, seeds, base)


def _mean(by_seed: dict[int, float] | None) -> float | None:
  return float(np.mean(list(by_seed.values()))) if by_seed else None


def _seeds_done(values, kind, preset, domain, protocol, metric) -> int:
  return len(values.get((kind, domain, 1.0, preset, protocol, metric)) or {})


def beats_both(values, preset, domain, text, reference, seeds: int) -> bool | None:
  """Whether `preset` beats the text baseline and the ID reference on `full` Recall@10 and NDCG@10 (means
  above, p < ALPHA in each test); None until all three have finished there, the trained two on all `seeds`
  seeds."""
  for metric in METRICS:
    s = cell(values, "scratch", preset, domain, "full", metric, text, reference)
    base = _mean(values.get(("text", domain, 1.0, text, "full", metric)))
    ref = _mean(values.get(("scratch", domain, 1.0, reference, "full", metric)))
    if s is None or base is None or ref is None:
      return None
    if min(_seeds_done(values, "scratch", p, domain, "full", metric) for p in (preset, reference)) < seeds:
      return None
    if not (
        baselines.above(s["mean"], base)
        and baselines.above(s["mean"], ref)
        and (s["p_knn"] or 1.0) < ALPHA
        and (s["p_sem"] or 1.0) < ALPHA
    ):
      return False
  return True


def goal_lines(values, config, domains: Sequence[str], text: str, reference: str) -> list[str]:
  lines = ["## Against the goal", ""]
  lines.append(
      f"A method beats both on a domain when its `full` Recall@10 and NDCG@10 are above the text baseline "
      f"(`{text}`; one-sample t-test of the seeds) and above `{reference}` (paired t-test on the seeds), "
      f"p < {ALPHA} in each. The goal: one hybrid beats both on at least {GOAL_DOMAINS} domains (of the six "
      "shared domains)."
  )
  lines.append("")
  rows = []
  for kind, preset in _row_presets(config, values):
    if kind == "text" or preset == reference:
      continue
    verdicts = {
        d: beats_both(values, preset, d, text, reference, len(config.experiment.seeds)) for d in domains
    }
    wins = [d for d, v in verdicts.items() if v]
    done = [d for d, v in verdicts.items() if v is not None]
    rows.append(
        [f"`{preset}`", f"{len(wins)} of {len(done)} finished", ", ".join(wins) or "none"]
        + ["yes" if verdicts[d] else "—" if verdicts[d] is None else "no" for d in domains]
    )
  return lines + report.markdown_table(["method", "beats both", "where"] + list(domains), rows) + [""]


def fusion_lines(markers: Sequence[dict[str, Any]], domains: Sequence[str]) -> list[str]:
  """The fitted theta of every fusion preset per domain."""
  fits = warm_start_report.fusion_fits(markers)
  if not fits:
    return []
  cell = lambda p, d: warm_start_report.fit_cell(fits.get((p, d, 1.0)))
  rows = [[f"`{p}`"] + [cell(p, d) for d in domains] for p in sorted({k[0] for k in fits})]
  return (
      ["## Fitted fusion weights", "", warm_start_report.FIT_LEGEND, ""]
      + report.markdown_table(["method"] + list(domains), rows)
      + [""]
  )


def cost_lines(markers: Sequence[dict[str, Any]], domains: Sequence[str], rows_presets) -> list[str]:
  """Mean wall time of a run and its best epoch, per preset and domain."""
  seconds: dict[tuple[str, str], list[float]] = {}
  epochs: dict[tuple[str, str], list[int]] = {}
  for m in markers:
    parts = m["relpath"].split("/")
    key = (m["setting"], parts[2])
    seconds.setdefault(key, []).append(float(m.get("elapsed_s", 0.0)))
    for rec in m["records"]:
      best = (rec.get("extra") or {}).get("best_epoch")
      if rec["stage"] == "in_domain" and best:
        epochs.setdefault(key, []).append(int(best))
  rows = []
  for kind, preset in rows_presets:
    row = [f"`{preset}`"]
    for d in domains:
      s, e = seconds.get((preset, d)), epochs.get((preset, d))
      row.append("—" if not s else f"{np.mean(s):.0f} s" + (f", epoch {np.mean(e):.0f}" if e else ""))
    rows.append(row)
  return (
      [
          "## Cost",
          "",
          "Mean wall time of one run (a fusion over a finished run trains nothing: its time is the fit and "
          "the evaluation) and its mean best epoch.",
          "",
      ]
      + report.markdown_table(["method"] + list(domains), rows)
      + [""]
  )


def protocols(config: ml_collections.ConfigDict) -> list[str]:
  """The protocols the runs were evaluated under, `full` first (eval.protocols; 'sampled<N>' by name)."""
  full, sampled = evaluate.parse_protocols(
      tuple(config.eval.protocols), int(config.eval.num_sampled_negatives)
  )
  return (["full"] if full else []) + ([sampled] if sampled else [])


def tables(values, config, domains: Sequence[str], text: str, reference: str) -> list[str]:
  lines = []
  for protocol in protocols(config):
    for metric in METRICS:
      rows = []
      for kind, preset in _row_presets(config, values):
        name = f"`{preset}`" + (" (no training)" if kind == "text" else "")
        name += " = **text baseline**" if kind == "text" and preset == text else ""
        name += " = **ID reference**" if kind == "scratch" and preset == reference else ""
        row = [name]
        for d in domains:
          stat = cell(values, kind, preset, d, protocol, metric, text, reference)
          base = _mean(values.get(("text", d, 1.0, text, protocol, metric)))
          shown = baselines.cell(
              stat, base, kind == "text", reference="text", paired=("p_sem", f"vs {reference} p=")
          )
          done = _seeds_done(values, kind, preset, d, protocol, metric)
          if kind != "text" and 0 < done < len(config.experiment.seeds):
            shown += f" ({done} of {len(config.experiment.seeds)} seeds)"
          row.append(shown)
        rows.append(row)
      lines += [f"## `{protocol}` {report.metric_title(metric)} (%)", ""]
      lines += report.markdown_table(["method"] + list(domains), rows) + [""]
  return lines


def _preset_line(name: str) -> str:
  fields = PRESETS[name]
  ce = all(fields.get(k) == v for k, v in presets_lib.CE_TRAINING.items())
  rest = {k: v for k, v in fields.items() if not (ce and k in presets_lib.CE_TRAINING)}
  return f"`{name}` " + ("CE + " if ce else "") + str(rest)


COMMANDS = "in_domain_commands.json"


def commands(workdir: paths.Path, command: str) -> list[str]:
  """Every command that ran runs into the folder (`workdir`/in_domain_commands.json), with this one added."""
  path = workdir / COMMANDS
  known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
  if command and command not in known:
    known.append(command)
    paths.write_json_atomic(path, known)
  return known


def write_report(workdir: paths.Path, config: ml_collections.ConfigDict, meta: dict[str, Any]) -> paths.Path:
  """DIR/in_domain.md and in_domain.json from every finished in-domain run of the folder."""
  workdir = paths.as_path(workdir)
  # In the archive where there is one, so that the list outlives the folder as the runs do.
  ran = commands(archive.folder(config) or workdir, str(meta.get("command") or ""))
  markers = collect(workdir)
  values = warm_start_report.collect_values(markers)
  carried = warm_start_report.carry(values, warm_start_report.earlier_table(config)[0])
  ec = config.experiment
  domains = _domains(config, values)
  text = str(ec.text_presets[0]) if ec.text_presets else ""
  reference = str(ec.reference_preset)
  machines = sorted({report.machine_line(m["machine"]) for m in markers if "machine" in m})
  total_s = sum(float(m.get("elapsed_s", 0.0)) for m in markers)
  seeds = sorted(
      {int(m["relpath"].rsplit("seed", 1)[1]) for m in markers if "/scratch/" in f"/{m['relpath']}"}
      | {seed for kind, *_, seed in carried if kind == "scratch"}
  )
  presets = dict.fromkeys(p for _, p in _row_presets(config, values))
  described = results_lib.protocol_descriptions(config.eval)
  lines = [
      f"# In-domain: {ec.name or 'in_domain'}",
      "",
      "- regenerate: "
      + ("; then ".join(f"`{c}`" for c in ran) or "(not recorded)")
      + " (finished runs are skipped; the table reads every finished run of the folder, so invocations over "
      "other domains or presets add to it)",
      f"- data: {results_lib.data_label(config)}; domains {', '.join(domains)}; every user of a domain "
      "trains (no per-domain user cap); leave-one-out split, validation for early stopping and for every "
      "fitted choice (a fusion's theta), test reported",
      f"- protocols: {'; '.join(f'`{k}` = {v}' for k, v in described.items())}",
      f"- text baseline: `{text}` (declared: the training-free default); ID reference: `{reference}`",
      f"- seeds: {', '.join(map(str, seeds)) or '—'}; mean ± sample std; `>text`/`<text` p = one-sample "
      f"t-test of the seeds against the text baseline's value; `vs {reference}` p = paired t-test on the "
      f"seeds (scipy.stats); {baselines.LEVEL_NOTE}",
      f"- machine: {'; '.join(machines) or report.machine_line(meta['machine'])}",
      *warm_start_report.carried_line(config, carried),
      f"- runs: {len(markers)} finished in this folder; this invocation planned {len(meta['runs'])} "
      f"({total_s / 3600:.2f} h of run time over all finished runs)",
      "- presets (config overrides over the study config; `CE` = SASRec trained as practitioners train it: "
      f"{presets_lib.CE_TRAINING}): " + "; ".join(_preset_line(p) for p in presets if p in PRESETS),
      "",
  ]
  lines += goal_lines(values, config, domains, text, reference)
  lines += tables(values, config, domains, text, reference)
  lines += fusion_lines(markers, domains)
  lines += cost_lines(markers, domains, _row_presets(config, values))
  path = workdir / "in_domain.md"
  paths.write_text_atomic(path, "\n".join(lines))
  paths.write_json_atomic(
      workdir / "in_domain.json",
      {
          "values": [{"key": list(k), "by_seed": v} for k, v in sorted(values.items())],
          "text_baseline": text,
          "reference": reference,
      },
  )
  return path
