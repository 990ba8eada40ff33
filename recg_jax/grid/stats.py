"""Aggregation of finished runs over seeds: observations, mean ± std, gains and paired t-tests, CSV.

observations flattens the completion markers of finished runs into one row per (run, domain, protocol,
metric); aggregate groups them by everything but the seed, with the comparison of every setting against
Sem on the same key; aggregate_grid keeps the ablation and alpha tables to their own seeds; to_csv writes
every aggregate in long form. The tables (recg_jax.grid.report) and figures (recg_jax.grid.figures) only
read these aggregates.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Sequence

import numpy as np

from recg_jax.grid import planning

# Settings derived from a run's metrics without the sequence-level step get this suffix.
NO_SEQ = ":no_seq"


def observations(markers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (run, domain, protocol, metric): kind ('zero_shot' | 'in_domain'), source, domain,
  backbone, setting, seed, protocol, metric ('recall@10'), value. Metrics of a run without the
  sequence-level step (transfer.py's `zero_shot_no_seq/...` and `test_no_seq/...`) become the setting
  '<setting>:no_seq'."""
  rows = []
  splits = {
      "zero_shot": ("zero_shot", ""),
      "zero_shot_no_seq": ("zero_shot", NO_SEQ),
      "test": ("in_domain", ""),
      "test_no_seq": ("in_domain", NO_SEQ),
  }
  for m in markers:
    spec = m["spec"]
    setting = m.get("setting") or planning.RunSpec(**spec).setting
    for rec in m["records"]:
      for key, value in rec["metrics"].items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] not in splits:
          continue
        kind, suffix = splits[parts[0]]
        rows.append(
            {
                "kind": kind,
                "source": rec["source"],
                "domain": rec["domain"],
                "backbone": rec["backbone"],
                "setting": setting + suffix,
                "seed": int(rec["seed"]),
                "protocol": parts[1],
                "metric": parts[2],
                "value": float(value),
            }
        )
  return rows


def _group_key(row: dict[str, Any]) -> tuple:
  return (
      row["kind"],
      row["source"],
      row["domain"],
      row["backbone"],
      row["setting"],
      row["protocol"],
      row["metric"],
  )


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
    out[key] = {
        "key": key,
        "seeds": seeds,
        "values": v.tolist(),
        "n": len(v),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "sem_mean": None,
        "gain_pct": None,
        "p_value": None,
        "n_paired": 0,
    }
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
  ablation = aggregate(
      [
          r
          for r in rows
          if r["seed"] in axes["ablation_seeds"] and r["source"] == source and r["backbone"] == backbone
      ]
  )
  return main, ablation


CSV_FIELDS = (
    "scope",
    "kind",
    "source",
    "domain",
    "backbone",
    "setting",
    "protocol",
    "metric",
    "n",
    "mean",
    "std",
    "seeds",
    "values",
    "sem_mean",
    "gain_pct_vs_sem",
    "p_vs_sem",
    "n_paired",
)


def to_csv(
    aggregates: dict[tuple, dict[str, Any]], ablation_aggregates: dict[tuple, dict[str, Any]] | None = None
) -> str:
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
  w.writerow(
      [
          scope,
          *key,
          a["n"],
          fmt(a["mean"]),
          fmt(a["std"]),
          " ".join(map(str, a["seeds"])),
          " ".join(f"{v:.6g}" for v in a["values"]),
          fmt(a["sem_mean"]),
          fmt(a["gain_pct"]),
          fmt(a["p_value"]),
          a["n_paired"],
      ]
  )


def _sort_key(key: tuple) -> tuple:
  kind, source, domain, backbone, setting, protocol, metric = key
  name, _, k = metric.partition("@")
  return (kind, source, domain, backbone, setting, protocol, name != "recall", int(k) if k.isdigit() else 0)
