"""The training-free text methods on small catalogues: is the day-one default safe where a shop has few items?

  python bench/small_catalogues.py --workdir=W --out=results/small_catalogues

Every method of --methods (text_knn presets, no training) is evaluated on the test split of each domain of
--domains (leave-one-out, `full` with the history masked and `sampled100`, Recall@10 and NDCG@10), and
on item subsamples of each: for every size of --sizes and every seed of --seeds, a catalogue of that many
items, reached from a random customer by following purchases (`snowball_items`), with the domain's users
restricted to those items and kept where at least MIN_HISTORY of their interactions remain. A subsample's
frozen table is the domain's table restricted to its items (an item's text embedding does not depend on
the others), and every table transform reads the subsample's own rows, as it would a new shop's. A size
at or above a domain's item count is left out; `sampled100` is left out where a user has fewer than 100
items outside their history (a 50-item catalogue: `full` ranks among at most 49 there).

The domains are prepared and embedded as any run (`<W>/cache`, reused when its manifest matches). Cells go
to <out>/results.json as they finish, and an invocation skips the cells already there (a killed one keeps
what finished); <out>/results.md is written from it at the end (`--report_only` writes only that). The
default is chosen by the rule of `choose` on the validation domains alone (`VALIDATION`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import transfer  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import types  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.models import text_space  # pylint: disable=g-import-not-at-top,wrong-import-position

DOMAINS = ("Scientific", "Office", "Games", "LuxuryBeauty", "Food", "Kitchen")
VALIDATION = ("Games", "Food")
REFERENCE = "text_knn_center_soft02"
METHODS = (
    REFERENCE,
    "text_knn_whiten_soft02",
    "text_knn_whiten1_soft02",
    "text_knn_whiten_oas_soft02",
    "text_knn_whiten_lw_soft02",
)
SIZES = (50, 200, 1000)
MIN_HISTORY = 3  # a training part, a validation item and a test item, as data preparation keeps
# The default may lose at most this much of the reference's `full` NDCG@10 anywhere (relative).
MAX_LOSS = 0.02
METRICS = ("full/recall@10", "full/ndcg@10", "sampled100/recall@10", "sampled100/ndcg@10")
FULL = "full"  # the catalogue as it is, not a subsample


def snowball_items(domain: types.DomainData, size: int, seed: int) -> np.ndarray:
  """`size` distinct item indices (1..I, in the order reached): a random user's items, then again and again
  the items of a random user of a random item already taken (a jump to a random user after 50 draws that
  add nothing), each user's items taken in random order, until `size` are taken."""
  if not 0 < size < domain.num_items:
    raise ValueError(f"{domain.name}: a subsample needs 0 < size < {domain.num_items} items, got {size}")
  rng = np.random.default_rng([seed, size, domain.num_items, 0x5C4])
  users_T = np.repeat(np.arange(domain.num_users), domain.lengths)
  order = np.argsort(domain.items, kind="stable")
  item_users, starts = users_T[order], np.searchsorted(domain.items[order], np.arange(domain.num_items + 2))
  taken: list[int] = []
  seen: set[int] = set()
  misses = 0
  while len(taken) < size:
    if taken and misses < 50:
      item = taken[rng.integers(len(taken))]
      user = item_users[starts[item] + rng.integers(starts[item + 1] - starts[item])]
    else:
      user, misses = int(rng.integers(domain.num_users)), 0
    new = [int(i) for i in rng.permutation(domain.history(user)) if int(i) not in seen]
    misses = 0 if new else misses + 1
    for item in new[: size - len(taken)]:
      taken.append(item)
      seen.add(item)
  return np.asarray(taken, np.int64)


def item_subset(
    domain: types.DomainData, items: np.ndarray, min_history: int = MIN_HISTORY
) -> types.DomainData:
  """The domain restricted to `items` (indices 1..I, renumbered 1..len(items) in ascending original order):
  every history keeps only those items, in its order, and users with fewer than min_history left go."""
  keep = np.sort(np.asarray(items, np.int64))
  new_index = np.zeros(domain.num_items + 1, np.int32)
  new_index[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
  rows = np.concatenate([[0], keep])
  kept_T = new_index[domain.items] > 0
  users_T = np.repeat(np.arange(domain.num_users), domain.lengths)
  lengths_U = np.bincount(users_T[kept_T], minlength=domain.num_users)
  users = np.flatnonzero(lengths_U >= min_history)
  keep_T = kept_T & np.isin(users_T, users)
  offsets = np.concatenate([[0], np.cumsum(lengths_U[users])]).astype(np.int64)
  return dataclasses.replace(
      domain,
      item_tokens=domain.item_tokens[rows],
      item_fields={k: v[rows] for k, v in domain.item_fields.items()},
      item_text=domain.item_text[rows],
      user_tokens=domain.user_tokens[users],
      offsets=offsets,
      items=new_index[domain.items[keep_T]].astype(np.int32),
  )


def base_config(args) -> ml_collections.ConfigDict:
  """The shared domains' study config (configs/amazon_shared.py's settings): its caches are reused."""
  config = config_lib.get_config()
  config.data.format = "recbole"
  if args.data_root:
    config.data.root = args.data_root
  config.data.source, config.data.targets = args.domains[0], tuple(args.domains[1:])
  config.experiment.name = "amazon_shared"
  return config


def evaluate(config, method: str, domain: types.DomainData, table: np.ndarray) -> dict[str, float]:
  """One method's test-split metrics on one catalogue (the table transform on the catalogue's own rows)."""
  c = config_lib.apply_preset(config.copy_and_resolve_references(), method)
  c.data.source, c.data.targets = domain.name, ()
  model = recommender.build_model(c, domain.num_items)
  mc = c.model
  transformed = text_space.transform_table(
      jax.numpy.asarray(table), str(mc.table_transform), float(mc.whiten_shrinkage)
  )
  try:
    out = transfer.evaluate_domain(c, model, {}, np.asarray(transformed), domain, None, "test")
  except errors.ConfigError as e:  # too few items for the sampled protocol's negatives
    if "negatives" not in str(e):
      raise
    c.eval.protocols = ("full",)
    out = transfer.evaluate_domain(c, model, {}, np.asarray(transformed), domain, None, "test")
  metrics = {k: float(out[k]) for k in METRICS if k in out}
  if str(mc.table_transform).startswith("whiten"):
    rho = text_space.whitening_shrinkage(
        jax.numpy.asarray(table), str(mc.table_transform), float(mc.whiten_shrinkage)
    )
    metrics["rho"] = float(rho)
  return metrics


def machine() -> str:
  """The CPU (model and cores) and the JAX backend the cells ran on."""
  model = platform.processor() or platform.machine()
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.exists():
    names = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("model name")
    ]
    model = names[0] if names else model
  return f"{model}, {os.cpu_count()} cores; JAX backend {jax.devices()[0].platform}"


def cell_key(domain: str, size: int | str, seed: int, method: str) -> str:
  return f"{domain}|{size}|{seed}|{method}"


def run(args) -> dict:
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / "results.json"
  record = json.loads(path.read_text()) if path.exists() else {"cells": {}, "catalogues": {}}
  record.update(
      {
          "command": "python bench/small_catalogues.py " + " ".join(sys.argv[1:]),
          "machine": machine(),
          "date": datetime.date.today().isoformat(),
          "jax": jax.__version__,
      }
  )
  config = base_config(args)
  workdir = pathlib.Path(args.workdir)
  domains = pipeline.prepare_data(config, workdir)
  tables = pipeline.embed_domains(config, workdir, domains)

  def save():
    path.write_text(json.dumps(record, indent=1, sort_keys=True))

  for name in args.domains:
    whole, table = domains[name], tables[name]
    catalogues = [(FULL, 0)] + [
        (size, seed) for size in args.sizes if size < whole.num_items for seed in range(args.seeds)
    ]
    for size, seed in catalogues:
      todo = [m for m in args.methods if cell_key(name, size, seed, m) not in record["cells"]]
      if not todo:
        continue
      if size == FULL:
        domain, sub_table = whole, table
      else:
        items = snowball_items(whole, size, seed)
        domain = item_subset(whole, items)
        sub_table = table[np.concatenate([[0], np.sort(items)])]
      record["catalogues"][f"{name}|{size}|{seed}"] = {
          "items": domain.num_items,
          "users": domain.num_users,
          "interactions": domain.num_interactions,
      }
      for method in todo:
        t0 = time.perf_counter()
        metrics = evaluate(config, method, domain, sub_table)
        metrics["seconds"] = time.perf_counter() - t0
        record["cells"][cell_key(name, size, seed, method)] = metrics
        print(f"[small] {name} {size} seed {seed} {method}: {metrics}", flush=True)
        save()
  save()
  return record


# ------------------------------------------------------------------------------------------------ report


def _values(record: dict, domain: str, size, method: str, metric: str) -> np.ndarray:
  prefix = f"{domain}|{size}|"
  return np.asarray(
      [
          v[metric]
          for k, v in record["cells"].items()
          if k.startswith(prefix) and k.endswith(f"|{method}") and metric in v
      ],
      np.float64,
  )


def summary(record: dict, domain: str, size, method: str, metric: str) -> tuple[float, float, int]:
  """(mean, std over seeds, number of seeds); NaN where nothing was measured."""
  v = _values(record, domain, size, method, metric)
  if not v.size:
    return float("nan"), float("nan"), 0
  return float(v.mean()), float(v.std()), int(v.size)


def relative(record: dict, domain: str, size, method: str, metric: str = "full/ndcg@10") -> float:
  """The method's mean over seeds against the reference's, minus 1 (the same subsamples for both)."""
  mine, _, _ = summary(record, domain, size, method, metric)
  ref, _, _ = summary(record, domain, size, REFERENCE, metric)
  return mine / ref - 1.0 if ref > 0 else float("nan")


def sizes_of(record: dict) -> list:
  sizes = sorted({int(k.split("|")[1]) for k in record["cells"] if k.split("|")[1] != FULL})
  return sizes + [FULL]


def methods_of(record: dict) -> list[str]:
  """The methods measured: METHODS' order first, any other after, by name."""
  seen = {k.split("|")[3] for k in record["cells"]}
  return sorted(seen, key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))


def choose(record: dict, domains=VALIDATION) -> tuple[str | None, dict]:
  """The rule, on `domains` only: among the methods never more than MAX_LOSS below the reference's `full`
  NDCG@10 (mean over seeds) at any size, the one with the best mean relative gain over those cells; the
  reference itself when none other qualifies. Returns (choice, {method: (worst, mean) relative})."""
  table = {}
  for method in methods_of(record):
    rel = [relative(record, d, s, method) for d in domains for s in sizes_of(record)]
    rel = [r for r in rel if np.isfinite(r)]
    if rel:
      table[method] = (min(rel), float(np.mean(rel)))
  safe = {m: v for m, v in table.items() if v[0] >= -MAX_LOSS}
  choice = max(safe, key=lambda m: safe[m][1]) if safe else None
  return choice, table


def _fmt(mean: float, std: float, n: int) -> str:
  if n == 0:
    return "—"
  return f"{100 * mean:.2f}" if n == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _pct(value: float) -> str:
  return "—" if not np.isfinite(value) else f"{100 * value:+.1f}%"


def _short(method: str) -> str:
  return "`" + method.removeprefix("text_knn_") + "`"


def report(record: dict) -> str:
  sizes, methods = sizes_of(record), methods_of(record)
  domains = [d for d in DOMAINS if any(k.startswith(d + "|") for k in record["cells"])]
  rows = [
      (d, s)
      for d in sorted(domains, key=lambda d: (d not in VALIDATION, DOMAINS.index(d)))
      for s in sizes
      if any(k.startswith(f"{d}|{s}|") for k in record["cells"])
  ]
  tests = [d for d in domains if d not in VALIDATION]
  choice, val = choose(record, VALIDATION)
  _, test = choose(record, tests)
  head = "| domain | size | users | " + " | ".join(_short(m) for m in methods) + " |"
  rule = "|---|---|---|" + "---|" * len(methods)

  def users(d, s) -> str:
    cats = [v["users"] for k, v in record["catalogues"].items() if k.startswith(f"{d}|{s}|")]
    return f"{np.mean(cats):,.0f}" if cats else "—"

  def label(d) -> str:
    return f"{d} (val.)" if d in VALIDATION else d

  lines = [
      "# The training-free methods on small catalogues",
      "",
      f"- command: `{record.get('command', '')}` (data: the six shared Amazon domains, RecBole atomic files "
      "under $RECG_DATA_ROOT)",
      f"- machine: {record.get('machine', '')}; jax {record.get('jax', '')}; date {record.get('date', '')}",
      "- every cell: the test split (leave-one-out), `full` with the history masked and `sampled100`. A size "
      "is an item subsample (`snowball_items`: the items reached from a random customer by following "
      "purchases), its users restricted to those items and kept with at least 3 left, its table the "
      "domain's rows of those items, every transform fitted on them alone; mean ± std over the subsample "
      "seeds (`full`: the domain as it is). — where the catalogue has too few items for 100 negatives "
      "(`full` there ranks among at most 49).",
      f"- methods: presets of recg_jax/config/presets.py (prefix `text_knn_` dropped); the reference is "
      f"`{REFERENCE}`; validation domains (the choice reads only these): {', '.join(VALIDATION)}",
  ]
  for metric in METRICS:
    protocol, name = metric.split("/")
    name = name.replace("ndcg", "NDCG").replace("recall", "Recall")
    lines += ["", f"## `{protocol}`, {name} (%)", "", head, rule]
    for d, s in rows:
      cells = [_fmt(*summary(record, d, s, m, metric)) for m in methods]
      lines.append(f"| {label(d)} | {s} | {users(d, s)} | " + " | ".join(cells) + " |")
  lines += [
      "",
      f"## `full` NDCG@10 against `{REFERENCE}` (relative, of the means over seeds)",
      "",
      head,
      rule,
  ]
  for d, s in rows:
    lines.append(
        f"| {label(d)} | {s} | {users(d, s)} | "
        + " | ".join(_pct(relative(record, d, s, m)) for m in methods)
        + " |"
    )
  for what, part, which in (("worst", val, 0), ("mean", val, 1), ("worst", test, 0), ("mean", test, 1)):
    kind = "validation" if part is val else "test"
    cells = [_pct(part[m][which]) if m in part else "—" for m in methods]
    lines.append(f"| **{what}, {kind} cells** | | | " + " | ".join(cells) + " |")
  rho_methods = [
      m for m in methods if any("rho" in v for k, v in record["cells"].items() if k.endswith("|" + m))
  ]
  if rho_methods:
    lines += [
        "",
        "## The identity's weight rho in the whitened covariance (1 - rho) C + rho mu I (mean over seeds; "
        "1 = centring)",
        "",
        "| domain | size | " + " | ".join(_short(m) for m in rho_methods) + " |",
        "|---|---|" + "---|" * len(rho_methods),
    ]
    for d, s in rows:
      cells = [summary(record, d, s, m, "rho") for m in rho_methods]
      lines.append(
          f"| {label(d)} | {s} | " + " | ".join("—" if n == 0 else f"{v:.3f}" for v, _, n in cells) + " |"
      )
  lines += [
      "",
      "## The choice",
      "",
      f"Rule, read on the validation domains alone: among the methods never more than {100 * MAX_LOSS:.0f}% "
      f"below `{REFERENCE}` in `full` NDCG@10 (mean over seeds) at any size of {', '.join(VALIDATION)}, the "
      f"best mean relative gain over those cells; `{REFERENCE}` itself if no other qualifies. Chosen: "
      f"`{choice or REFERENCE}`.",
      "",
  ]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/small_catalogues")
  parser.add_argument("--out", default="results/small_catalogues")
  parser.add_argument("--data_root", default="")
  parser.add_argument("--domains", default=",".join(DOMAINS))
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args(argv)
  args.domains = [d for d in args.domains.split(",") if d]
  args.methods = [m for m in args.methods.split(",") if m]
  args.sizes = [int(s) for s in args.sizes.split(",") if s]
  if REFERENCE not in args.methods:
    args.methods.insert(0, REFERENCE)
  out = pathlib.Path(args.out)
  if args.report_only:
    record = json.loads((out / "results.json").read_text())
  else:
    record = run(args)
  (out / "results.md").write_text(report(record))
  print((out / "results.md").read_text())


if __name__ == "__main__":
  main()
