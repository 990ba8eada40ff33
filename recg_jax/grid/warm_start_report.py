"""The tables and figure of the warm-start study (recg_jax/grid/warm_start.py): DIR/results.md, results.json
and crossover.png.

Per domain and metric (`full` Recall@10 and NDCG@10, every user of the domain), one row per method and one
column per budget: the training-free text presets (one value, the same at every budget), each preset
trained from scratch on the budget, each preset fine-tuned from the leave-one-out run on the budget. A
trained cell is the mean ± sample std over seeds, the one-sample t-test of its seeds against the text
baseline's value (it has no seed), and for a fine-tuned preset the paired t-test against the same preset
from scratch on the same seeds. A method *crosses* at the smallest budget where both metrics are above the
text baseline with p < 0.05. The text baseline is the text preset with the best mean `full` NDCG@10 over
experiment.validation_domains, or the first text preset when the study has none.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Sequence

import ml_collections
import numpy as np

from recg_jax import errors
from recg_jax import paths
from recg_jax import plots
from recg_jax import results as results_lib
from recg_jax.config.presets import PRESETS
from recg_jax.grid import baselines
from recg_jax.grid import planning
from recg_jax.grid import report
from recg_jax.grid import runner

PROTOCOL = "full"
METRICS = ("ndcg@10", "recall@10")
ALPHA = 0.05
GOAL_BUDGET = 0.2  # a fine-tuned model should beat SASRec-ID at every budget up to this one


class RunKey(NamedTuple):
  """What a study run's folder says it is: runs/text/<domain>/<preset>/seed<N> or
  runs/<kind>/<domain>/<N>pct/<preset>/seed<N> (warm_start.Item.relpath). A text run trains on nothing and
  counts as every budget's (1.0)."""

  kind: str
  domain: str
  budget: float
  preset: str
  seed: int


def run_key(marker: dict[str, Any]) -> RunKey:
  parts = marker["relpath"].split("/")
  budget = 1.0 if parts[1] == "text" else float(parts[3].removesuffix("pct")) / 100
  return RunKey(parts[1], parts[2], budget, parts[-2], int(parts[-1].removeprefix("seed")))


def collect_values(markers: Sequence[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
  """{(kind, domain, budget, preset, protocol, metric): {seed: value}}: a run's test over every user of its
  domain (its 'budget' record; a run on the whole domain has only its in-domain test)."""
  values: dict[tuple, dict[int, float]] = {}
  for m in markers:
    key = run_key(m)
    records = [r for r in m["records"] if r["stage"] == "budget"] or [
        r for r in m["records"] if r["stage"] == "in_domain"
    ]
    for rec in records:
      for name, value in rec["metrics"].items():
        split, protocol, metric = (name.split("/") + ["", ""])[:3]
        if split == "test":
          where = (key.kind, key.domain, key.budget, key.preset, protocol, metric)
          values.setdefault(where, {})[key.seed] = float(value)
  return values


def earlier_table(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
  """(per-seed values keyed as collect_values keys them, {(domain, budget): users}) of
  experiment.earlier_values: an earlier table's JSON (results.json of a warm-start study, in_domain.json
  of an in-domain one; tables written before they kept their budgets' users have none), or several,
  comma-separated, where the first that holds a seed's value wins; both empty where it is unset."""
  values: dict[tuple, dict[int, float]] = {}
  users: dict[tuple[str, float], int] = {}
  for name in earlier_names(config):
    one_values, one_users = _one_earlier_table(name)
    carry(values, one_values)  # a later table fills only the seeds the earlier ones lack
    for key, n in one_users.items():
      users.setdefault(key, n)
  return values, users


def earlier_names(config: ml_collections.ConfigDict) -> list[str]:
  return [n.strip() for n in str(config.experiment.get("earlier_values", "")).split(",") if n.strip()]


def _one_earlier_table(name: str) -> tuple[dict, dict]:
  path = paths.as_path(name)
  if not path.is_file():
    raise errors.ConfigError(f"config.experiment.earlier_values: {name!r}: no such file")
  try:
    table = json.loads(path.read_text(encoding="utf-8"))
    values = {}
    for entry in table["values"]:
      kind, domain, budget, *rest = entry["key"]
      values[(kind, domain, float(budget), *rest)] = {int(s): float(v) for s, v in entry["by_seed"].items()}
    users = {(str(d), float(b)): int(n) for d, b, n in table.get("budget_users", [])}
  except (ValueError, KeyError, TypeError) as e:
    raise errors.ConfigError(
        f"config.experiment.earlier_values: {name!r} is not a study table's JSON (a 'values' list of "
        f"{{'key', 'by_seed'}} entries, and optionally a 'budget_users' list of [domain, budget, users]): "
        f"{e!r}"
    ) from e
  return values, users


def in_study(config: ml_collections.ConfigDict, earlier: dict[tuple, Any]) -> dict[tuple, Any]:
  """The entries of an earlier table that this study plans (its kinds' presets, domains and budgets): a
  table of another study (the in-domain one's, at 100%) may hold runs of presets this one never runs."""
  ec = config.experiment
  presets = {"text": set(ec.text_presets), "scratch": set(ec.presets), "finetune": set(ec.finetune_presets)}
  domains, budgets = set(planning.grid_domains(config)), planning.budgets(config)
  return {
      key: v
      for key, v in earlier.items()
      if key[1] in domains
      and key[3] in presets.get(key[0], ())
      and (key[0] == "text" or any(abs(key[2] - b) < 1e-9 for b in budgets))
  }


def carry(values, earlier) -> list[tuple]:
  """Fills `values` in place with the earlier seeds no finished run covers; returns the (kind, domain,
  budget, preset, seed) of every run whose values were carried."""
  runs = set()
  for key, by_seed in earlier.items():
    mine = values.setdefault(key, {})
    for seed, value in by_seed.items():
      if seed not in mine:
        mine[seed] = value
        runs.add((*key[:4], seed))
  return sorted(runs)


def carried_line(config: ml_collections.ConfigDict, carried: list[tuple]) -> list[str]:
  """The header line that says which runs' values were carried, if any."""
  if not carried:
    return []
  runs = f"{len(carried)} run{'s' * (len(carried) != 1)}"
  names = earlier_names(config)
  return [
      f"- carried: the values of {runs} come from "
      + " and ".join(f"`{n}`" for n in names)
      + f", {'earlier tables' if len(names) > 1 else 'an earlier table'} whose run "
      "folders were lost (the markdown beside each keeps their costs and fitted weights; the sections "
      "below cover the runs of this folder only)"
  ]


def _mean(by_seed: dict[int, float] | None) -> float | None:
  return float(np.mean(list(by_seed.values()))) if by_seed else None


def text_baseline(values, config: ml_collections.ConfigDict) -> str | None:
  """The text preset with the best mean `full` NDCG@10 on the validation domains (the first without any)."""
  presets, validation = tuple(config.experiment.text_presets), tuple(config.experiment.validation_domains)
  if not presets:
    return None
  if not validation:
    return presets[0]
  scores = {}
  for p in presets:
    means = [_mean(values.get(("text", v, 1.0, p, PROTOCOL, "ndcg@10"))) for v in validation]
    if all(m is not None for m in means):
      scores[p] = float(np.mean(means))
  return max(scores, key=lambda p: (scores[p], -presets.index(p))) if scores else None


def methods(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(kind, preset) of every table row, in order."""
  ec = config.experiment
  return (
      [("text", p) for p in ec.text_presets]
      + [("scratch", p) for p in ec.presets]
      + [("finetune", p) for p in ec.finetune_presets]
  )


def label(kind: str, preset: str) -> str:
  return {
      "text": f"`{preset}` (no training)",
      "scratch": f"`{preset}` from scratch",
      "finetune": f"`{preset}` fine-tuned from the other domains",
  }[kind]


def stat(values, kind, preset, domain, budget, metric, base: float | None) -> dict[str, Any] | None:
  """mean, std, p against the text baseline's value, and for a fine-tuned preset p against from scratch."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  budget = 1.0 if kind == "text" else budget
  by_seed = values.get((kind, domain, budget, preset, PROTOCOL, metric))
  if not by_seed:
    return None
  seeds = sorted(by_seed)
  out = baselines.cell_stats([by_seed[s] for s in seeds], None, seeds, base if kind != "text" else None)
  out["p_scratch"] = None
  scratch = values.get(("scratch", domain, budget, preset, PROTOCOL, metric)) if kind == "finetune" else None
  paired = [s for s in seeds if scratch and s in scratch]
  if len(paired) >= 2:
    diff = np.array([by_seed[s] - scratch[s] for s in paired])
    out["p_scratch"] = float(stats.ttest_1samp(diff, 0.0).pvalue) if np.ptp(diff) > 0 else None
  return out


def crossing(values, kind, preset, domain, budgets: Sequence[float], bases: dict[str, float]) -> Any:
  """The smallest budget at which the method is above the text baseline on both METRICS with p < ALPHA;
  None if it never is; '…' when a budget before any crossing has not finished."""
  for b in budgets:
    stats_ = [stat(values, kind, preset, domain, b, m, bases.get(m)) for m in METRICS]
    if any(s is None for s in stats_) or any(m not in bases for m in METRICS):
      return "…"
    if all(
        baselines.above(s["mean"], bases[m]) and (s["p_knn"] or 1.0) < ALPHA for s, m in zip(stats_, METRICS)
    ):
      return b
  return None


def _crossing_text(c) -> str:
  return "not yet finished" if c == "…" else "never (up to 100%)" if c is None else planning.budget_label(c)


def _bases(values, chosen: str | None, domain: str) -> dict[str, float]:
  """{metric: the text baseline's value on domain} for the metrics it has."""
  if not chosen:
    return {}
  out = {m: _mean(values.get(("text", domain, 1.0, chosen, PROTOCOL, m))) for m in METRICS}
  return {m: v for m, v in out.items() if v is not None}


def domain_tables(values, config, domain: str, chosen: str | None, budgets, users: dict) -> list[str]:
  """One table per metric: a row per method, a column per budget (with the users it trains on)."""
  bases = _bases(values, chosen, domain)
  header = ["method"] + [
      planning.budget_label(b)
      + (f" ({users[(domain, b)]:,} users)" if (domain, b) in users else " (all users)" if b >= 1 else "")
      for b in budgets
  ]
  lines = []
  for metric in METRICS:
    rows = []
    for kind, preset in methods(config):
      name = label(kind, preset) + (" = **text baseline**" if kind == "text" and preset == chosen else "")
      rows.append(
          [name]
          + [
              baselines.cell(
                  stat(values, kind, preset, domain, b, metric, bases.get(metric)),
                  bases.get(metric),
                  kind == "text",
                  reference="text",
                  paired=("p_scratch", "vs scratch p="),
              )
              for b in budgets
          ]
      )
    lines += [f"### {domain}: `{PROTOCOL}` {report.metric_title(metric)} (%)", ""]
    lines += report.markdown_table(header, rows) + [""]
  return lines


def budget_sizes(
    markers: Sequence[dict[str, Any]], earlier: dict[tuple[str, float], int] | None = None
) -> dict[tuple[str, float], int]:
  """{(domain, budget): the users a budget trains on}, from the runs' 'budget' records, and where none
  ran, from `earlier` (an earlier table's counts)."""
  out = dict(earlier or {})
  for m in markers:
    for rec in m["records"]:
      extra = rec.get("extra") or {}
      if rec["stage"] == "budget" and "budget_users" in extra:
        out[(rec["domain"], float(extra["budget"]))] = int(extra["budget_users"])
  return out


def crossing_table(values, config, tests: Sequence[str], chosen, budgets) -> list[str]:
  """Per trained method and test domain, the budget where it crosses the text baseline."""
  rows = []
  for kind, preset in methods(config):
    if kind == "text":
      continue
    row = [label(kind, preset)]
    for d in tests:
      row.append(_crossing_text(crossing(values, kind, preset, d, budgets, _bases(values, chosen, d))))
    rows.append(row)
  return (
      [
          f"## Where each trained method crosses the text baseline (`{chosen}`)",
          "",
          f"The smallest budget at which `{PROTOCOL}` Recall@10 and NDCG@10 are both above the text "
          f"baseline with p < {ALPHA} (one-sample t-test over the seeds).",
          "",
      ]
      + report.markdown_table(["method"] + list(tests), rows)
      + [""]
  )


def _best_id(values, ids: Sequence[str], domain: str, budget: float) -> float | None:
  """The best mean `full` NDCG@10 of the ID presets from scratch on a budget; None until all have run."""
  means = [_mean(values.get(("scratch", domain, budget, p, PROTOCOL, "ndcg@10"))) for p in ids]
  return None if not means or any(m is None for m in means) else max(means)


def goal_lines(values, config, tests: Sequence[str], chosen, budgets) -> list[str]:
  """Does a fine-tuned preset cross earlier than every preset from scratch on 3 of the test targets, and beat
  SASRec-ID at every budget up to GOAL_BUDGET?"""
  ec = config.experiment
  lines = ["## Against the goal", ""]
  order = lambda c: 2.0 if c is None else float(c)
  small = [b for b in budgets if b <= GOAL_BUDGET]
  ids = [p for p in ec.presets if PRESETS[p].get("model.variant") == "id"]
  for preset in ec.finetune_presets:
    earlier, finished, above_id, compared = [], [], [], []
    for d in tests:
      bases = _bases(values, chosen, d)
      mine = crossing(values, "finetune", preset, d, budgets, bases)
      scratch = [crossing(values, "scratch", p, d, budgets, bases) for p in ec.presets]
      if mine != "…" and "…" not in scratch:
        finished.append(d)
        if mine is not None and order(mine) < min(map(order, scratch)):
          earlier.append(d)
      pairs = [
          (stat(values, "finetune", preset, d, b, "ndcg@10", None), _best_id(values, ids, d, b))
          for b in small
      ]
      if small and ids and all(t and i is not None for t, i in pairs):
        compared.append(d)
        if all(t["mean"] > i for t, i in pairs):
          above_id.append(d)
    lines.append(
        f"- `{preset}` fine-tuned crosses the text baseline at a smaller budget than every preset from "
        f"scratch on {len(earlier)} of {len(finished)} finished test targets "
        f"({', '.join(earlier) or 'none'}; the goal is 3 of {len(tests)}), and is above SASRec-ID (the "
        f"best of {', '.join(f'`{p}`' for p in ids) or 'none'}) in mean `full` NDCG@10 at every budget up to "
        f"{planning.budget_label(GOAL_BUDGET)} on {len(above_id)} of {len(compared)} "
        f"({', '.join(above_id) or 'none'})"
    )
  return lines + [""]


FLOOR = 0.02  # a hybrid should never be more than this share below the text baseline, at any budget


def hybrid_goal_lines(values, config, tests: Sequence[str], chosen, budgets) -> list[str]:
  """For each trained preset other than the ID reference (experiment.reference_preset): the test targets
  where it crosses the text baseline at a budget up to GOAL_BUDGET and earlier than the reference, and the
  budgets where its mean `full` NDCG@10 or Recall@10 falls more than FLOOR below the text baseline."""
  ec = config.experiment
  reference = str(ec.reference_preset)
  order = lambda c: 2.0 if c is None else float(c)
  lines = [
      "## Against the goal",
      "",
      f"A method crosses where `{PROTOCOL}` Recall@10 and NDCG@10 are both above the text baseline with "
      f"p < {ALPHA}. The goal: the best hybrid crosses at {planning.budget_label(GOAL_BUDGET)} or less on at "
      f"least 3 targets ({len(tests)} in this table), earlier than `{reference}` on each of them, and is "
      f"never more than {100 * FLOOR:g}% below the text baseline at any budget.",
      "",
  ]
  for preset in ec.presets:
    if preset == reference:
      continue
    early, pending, below = [], [], []
    for d in tests:
      bases = _bases(values, chosen, d)
      mine = crossing(values, "scratch", preset, d, budgets, bases)
      ref = crossing(values, "scratch", reference, d, budgets, bases)
      if mine == "…" or ref == "…":
        pending.append(d)
      elif mine is not None and mine <= GOAL_BUDGET and order(mine) < order(ref):
        early.append(d)
      for b in budgets:
        for m in METRICS:
          s_ = stat(values, "scratch", preset, d, b, m, bases.get(m))
          if s_ is not None and m in bases and s_["mean"] < (1.0 - FLOOR) * bases[m]:
            below.append(f"{d} {planning.budget_label(b)} {m} ({100 * (s_['mean'] / bases[m] - 1):+.1f}%)")
    lines.append(
        f"- `{preset}` crosses at {planning.budget_label(GOAL_BUDGET)} or less and before `{reference}` on "
        f"{len(early)} of {len(tests) - len(pending)} finished targets ({', '.join(early) or 'none'}"
        + (f"; not finished: {', '.join(pending)}" if pending else "")
        + f"); more than {100 * FLOOR:g}% below the text baseline: "
        + ("; ".join(below) if below else "never")
    )
  return lines + [""]


def write_figure(
    values, config, tests: Sequence[str], chosen, budgets, path: paths.Path
) -> paths.Path | None:
  """crossover.png: `full` NDCG@10 against the budget, one panel per test domain."""
  panels = []
  for d in tests:
    series = {}
    for kind, preset in methods(config):
      if kind == "text":
        continue
      points = []
      for b in budgets:
        s = stat(values, kind, preset, d, b, "ndcg@10", None)
        if s is not None:
          points.append((b, (s["mean"], s["std"])))
      series[label(kind, preset).replace("`", "")] = points
    if any(series.values()):
      panels.append((d, series, _bases(values, chosen, d).get("ndcg@10")))
  if not panels:
    return None
  return plots.budget_curves(panels, path, f"{PROTOCOL} NDCG@10", title=f"text baseline: {chosen}")


def fusion_fits(markers: Sequence[dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
  """{(preset, domain, budget): the fusion fit (fusion.json's fields) of every finished seed}."""
  fits: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
  for m in markers:
    budget = run_key(m).budget
    for rec in m["records"]:
      fusion = (rec.get("extra") or {}).get("fusion")
      if rec["stage"] == "in_domain" and fusion:
        fits.setdefault((m["setting"], rec["domain"], budget), []).append(fusion)
  return fits


def fit_cell(fits: list[dict[str, Any]] | None) -> str:
  """theta's mean over seeds (range), and on how many seeds the fit fell back to the text alone."""
  if not fits:
    return "—"
  t = [float(f["theta"]) for f in fits]
  fell = sum(bool(f.get("fell_back")) for f in fits)
  cell = f"{np.mean(t):.3f} ({min(t):.3f}-{max(t):.3f})"
  return cell + (f", text alone on {fell} of {len(t)}" if fell else "")


FIT_LEGEND = (
    "theta, the trained part's share of the standardised scores (0 = the text alone, 1 = the trained model "
    "alone), fitted on each seed's validation split: mean over seeds (range); 'text alone on n' counts the "
    "seeds whose fitted theta fell back to 0 because its cross-fitted validation gain over the text was not "
    "significant (fusion.fallback_alpha, exact sign test over the validation users)."
)


def fusion_budget_lines(markers: Sequence[dict[str, Any]], domains: Sequence[str], budgets) -> list[str]:
  """The fitted theta of every fusion preset per domain and budget."""
  fits = fusion_fits(markers)
  rows = [
      [f"`{p}`", d] + [fit_cell(fits.get((p, d, float(b)))) for b in budgets]
      for p in sorted({k[0] for k in fits})
      for d in domains
  ]
  if not rows:
    return []
  return (
      ["## Fitted fusion weights", "", FIT_LEGEND, ""]
      + report.markdown_table(["method", "domain"] + [planning.budget_label(b) for b in budgets], rows)
      + [""]
  )


def write_report(workdir: paths.Path, config: ml_collections.ConfigDict, meta: dict[str, Any]) -> paths.Path:
  """DIR/results.md, results.json and crossover.png from every finished run."""
  markers = runner.markers_of(workdir, meta["runs"])
  values = collect_values(markers)
  earlier, earlier_users = earlier_table(config)
  carried = carry(values, in_study(config, earlier))
  ec = config.experiment
  domains, budgets = list(meta["domains"]), planning.budgets(config)
  validation = set(ec.validation_domains)
  tests = [d for d in domains if d not in validation]
  chosen = text_baseline(values, config)
  machines = sorted({report.machine_line(m["machine"]) for m in markers if "machine" in m})
  total_s = sum(float(m.get("elapsed_s", 0.0)) for m in markers)
  lines = [
      f"# Warm start: {ec.name or 'warm_start'}",
      "",
      f"- regenerate: `{meta.get('command') or '(not recorded)'}` (finished runs are skipped)",
      f"- data: {results_lib.data_label(config)}; domains {', '.join(domains)}"
      + (f"; validation domains {', '.join(sorted(validation))} (never results)" if validation else ""),
      "- budgets: shares of a domain's training interactions, as whole users (the fewest, in one seeded "
      "order, so each budget's users include the smaller budgets'); a trained run validates on its budget's "
      "users and is tested over every user of the domain (their last item, the whole catalogue ranked)",
      (
          f"- fine-tuned runs start from seed k of the same preset in the leave-one-out study "
          f"(`{paths.as_path(str(ec.init_study)).name}`), trained on every other domain; nothing of the "
          "domain itself was seen before its budget"
          if ec.finetune_presets
          else "- every trained run starts from scratch on its budget; a fusion fits its theta on the "
          "budget's validation split, over the run of its trained part on the same budget and seed "
          "(with `fusion.holdout_users`, on the budget's users held out of its own trained part's training)"
      ),
      f"- text baseline: `{chosen}`"
      + (
          " (the best on the validation domains)"
          if validation
          else " (declared: the study has no validation domain)"
      ),
      f"- seeds: {', '.join(map(str, ec.seeds))}; mean ± sample std; `>text`/`<text` p = one-sample t-test "
      "of the seeds against the text baseline's value; `vs scratch` p = paired t-test against the same "
      f"preset from scratch (scipy.stats); {baselines.LEVEL_NOTE}",
      f"- machine: {'; '.join(machines) or report.machine_line(meta['machine'])}",
      *carried_line(config, carried),
      f"- runs: {len(markers)} finished of {len(meta['runs'])} planned ({total_s / 3600:.2f} h of run time)",
      f"- base model (each preset's overrides below replace its fields): {config.model.backbone}, "
      f"{report.summary_without_seed(config)}",
      "- presets (config overrides): "
      + "; ".join(
          f"`{p}` {PRESETS[p]}" for p in dict.fromkeys([*ec.text_presets, *ec.presets, *ec.finetune_presets])
      ),
      "",
  ]
  if ec.finetune_presets:
    lines += goal_lines(values, config, tests, chosen, budgets)
  else:
    lines += hybrid_goal_lines(values, config, tests, chosen, budgets)
  lines += crossing_table(values, config, tests, chosen, budgets)
  figure = write_figure(values, config, tests, chosen, budgets, workdir / "crossover.png")
  if figure is not None:
    lines += ["![full NDCG@10 against the budget](crossover.png)", ""]
  users = budget_sizes(markers, earlier_users)
  for d in domains:
    lines += domain_tables(values, config, d, chosen, budgets, users)
  lines += fusion_budget_lines(markers, domains, budgets)
  path = workdir / "results.md"
  paths.write_text_atomic(path, "\n".join(lines))
  paths.write_json_atomic(
      workdir / "results.json",
      {
          "values": [{"key": list(k), "by_seed": v} for k, v in sorted(values.items())],
          "text_baseline": chosen,
          "budget_users": [[d, b, n] for (d, b), n in sorted(users.items())],
      },
  )
  return path
