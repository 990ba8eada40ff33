"""results.json and results.md: every metric labelled with its protocol, the loss and the exact config.

Users comparing numbers with papers most often trip over three things: a config that is not
the one they think, sampled vs full ranking, and a different loss. So every row of a results table carries
the backbone, variant, loss name and a config summary, every metric column names its protocol, and the
files end with the protocol definitions and the full config.

A record is a JSON-able dict:
  {"stage", "domain", "source", "backbone", "variant", "loss", "seed", "data", "config_summary",
   "metrics": {"<split>/<protocol>/<metric>@K": float, ...}, "extra": {...}}
Metric values may also be [mean, std] pairs (aggregates over seeds), shown as mean ± std.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

import ml_collections

from recg_jax import distributed
from recg_jax import paths

_METRIC_RE = re.compile(r"^(?P<split>[^/]+)/(?P<protocol>[^/]+)/(?P<name>[a-z]+)@(?P<k>\d+)$")
_SHORT = {"recall": "R", "ndcg": "N"}
_SPLIT_ORDER = ("test", "test_no_seq", "zero_shot", "zero_shot_no_seq", "valid")


def protocol_descriptions(eval_config: ml_collections.ConfigDict) -> dict[str, str]:
  """One sentence per evaluation protocol of eval.protocols."""
  out = {}
  for p in eval_config.protocols:
    if p == "full":
      masked = (
          "items of the input history masked (the target itself never)"
          if eval_config.mask_history
          else "nothing masked"
      )
      out[p] = f"full ranking: the target against every item of the domain, {masked}"
    else:
      m = re.match(r"^sampled(\d*)$", p)
      n = int(m.group(1)) if m and m.group(1) else int(eval_config.num_sampled_negatives)
      out[p] = (
          f"sampled: the target against {n} negatives drawn uniformly once per user (seed "
          f"{eval_config.seed}) from items outside the user's whole history (the paper's protocol)"
      )
  return out


def loss_name(config: ml_collections.ConfigDict) -> str:
  """The training objective in words, e.g. 'BPR (5 uniform negatives), all prefixes + L_gen(...)'."""
  tc, mc = config.train, config.model
  if mc.variant == "text_knn":
    return (
        f"none: no training (cosine with the history mean, knn_decay={mc.knn_decay}, "
        f"table_transform={mc.table_transform})"
    )
  if tc.loss == "bpr":
    rec = f"BPR ({tc.num_negatives} uniform negatives outside the history)"
  else:
    rec = "full softmax cross-entropy"
  if mc.backbone == "bert4rec" and tc.bert4rec_objective == "cloze":
    target = f"Cloze (mask_prob={mc.mask_prob}, last-item-only rows {tc.cloze_last_item_prob})"
  else:
    target = "next item, all prefixes" if tc.targets == "all_prefixes" else "next item, last target only"
  name = f"{rec}, {target}"
  gc = config.gen_loss
  if mc.variant == "recg" and gc.enabled:
    terms = []
    if not gc.use_intra:
      terms.append("no intra")
    if not gc.use_inter:
      terms.append("no inter")
    sign = "+" if int(gc.inter_sign) > 0 else "-"
    extra = f", {', '.join(terms)}" if terms else ""
    name += f" + L_gen(alpha={gc.alpha}, tau={gc.tau}, inter_sign={sign}1, B={gc.samples_per_domain}{extra})"
  if mc.score_space == "text":
    name += f"; scored in the text space (text_user={mc.text_user}, table_transform={mc.table_transform})"
  if mc.variant == "text_id":
    name += (
        f"; items: whitened text coordinates (scale {mc.text_id_scale}) plus learned ids, the leading "
        f"{mc.text_id_frozen_dims} of {mc.hidden_dim} dimensions frozen"
    )
  if config.fusion.enabled:
    name += f"; fused with {config.fusion.text_preset} (per-user z-scores, weight fitted on validation)"
  return name


def config_summary(config: ml_collections.ConfigDict) -> str:
  """A compact line with the fields that most change results."""
  mc, tc, dc = config.model, config.train, config.data
  if mc.variant == "text_knn":
    return (
        f"text_knn (no training) knn_decay={mc.knn_decay} table_transform={mc.table_transform} "
        f"max_len={dc.max_len} encoder={config.encoder.model} ({config.encoder.pooling})"
    )
  parts = [
      f"d={mc.hidden_dim}",
      f"layers={mc.num_layers}",
      f"heads={mc.num_heads}",
      f"dropout={mc.dropout}/{mc.emb_dropout}",
      f"lr={tc.learning_rate}",
      f"batch={tc.batch_size}",
      f"max_len={dc.max_len}",
      f"epochs<={tc.num_epochs}",
      f"patience={tc.patience}",
      f"seed={tc.seed}",
  ]
  if mc.variant != "id":
    parts.append(f"encoder={config.encoder.model} ({config.encoder.pooling})")
  if mc.variant == "recg":
    parts.append(f"clusters={config.transfer.num_clusters}" if config.transfer.enabled else "no seq step")
  return " ".join(parts)


def data_label(config: ml_collections.ConfigDict) -> str:
  fmt = str(config.data.format)
  return "synthetic data" if fmt == "synthetic" else fmt


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The whole config as plain JSON types (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def make_record(
    config: ml_collections.ConfigDict,
    stage: str,
    domain: str,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """A results row for `domain` (the source for in-domain runs, a target for zero-shot ones)."""
  return {
      "stage": stage,
      "domain": domain,
      "source": str(config.data.source),
      "backbone": str(config.model.backbone),
      "variant": str(config.model.variant),
      "loss": loss_name(config),
      "seed": int(config.train.seed),
      "data": data_label(config),
      "config_summary": config_summary(config),
      "metrics": {k: (list(v) if isinstance(v, (tuple, list)) else float(v)) for k, v in metrics.items()},
      "extra": json.loads(json.dumps(extra or {}, default=str)),
  }


def _metric_key_order(keys: Sequence[str]) -> list[tuple[str, str, str, int]]:
  parsed = []
  for k in keys:
    m = _METRIC_RE.match(k)
    if m:
      parsed.append((m["split"], m["protocol"], m["name"], int(m["k"])))
  split_rank = lambda s: _SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else len(_SPLIT_ORDER)
  return sorted(set(parsed), key=lambda t: (split_rank(t[0]), t[0], t[1], t[2] != "recall", t[3]))


def _fmt(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, (list, tuple)):
    mean, std = value
    return f"{100 * mean:.2f} ± {100 * std:.2f}"
  if not math.isfinite(float(value)):
    return str(value)
  return f"{100 * float(value):.2f}"


def format_table(records: Sequence[dict[str, Any]]) -> str:
  """Markdown tables, one per split (test / zero_shot / valid), metrics in % with protocol-labelled
  columns such as `full R@10` and `sampled100 N@10`."""
  keys = _metric_key_order([k for r in records for k in r["metrics"]])
  splits = list(dict.fromkeys(s for s, *_ in keys))
  out = []
  for split in splits:
    cols = [(p, n, k) for s, p, n, k in keys if s == split]
    header = ["stage", "domain", "backbone", "variant", "loss", "seed"]
    header += [f"{p} {_SHORT.get(n, n)}@{k}" for p, n, k in cols] + ["config"]
    lines = [
        f"**{split}** (metrics in %)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for r in records:
      if not any(f"{split}/{p}/{n}@{k}" in r["metrics"] for p, n, k in cols):
        continue
      domain = r["domain"] + (f" ← {r['source']}" if r["domain"] != r["source"] else "")
      if r.get("data") == "synthetic data":
        domain += " (synthetic)"
      row = [r["stage"], domain, r["backbone"], r["variant"], r["loss"], str(r["seed"])]
      row += [_fmt(r["metrics"].get(f"{split}/{p}/{n}@{k}")) for p, n, k in cols]
      row.append(r["config_summary"])
      lines.append("| " + " | ".join(row) + " |")
    out.append("\n".join(lines))
  return "\n\n".join(out)


def format_summary(records: Sequence[dict[str, Any]], ks: Sequence[int] = (10,)) -> str:
  """A compact console table: one row per record, Recall/NDCG@K for each split and protocol."""
  keys = [
      key
      for key in _metric_key_order([k for r in records for k in r["metrics"]])
      if key[3] in ks and key[0] != "valid"
  ]
  header = ["stage", "domain", "model"] + [f"{s} {p} {_SHORT.get(n, n)}@{k}" for s, p, n, k in keys]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for r in records:
    domain = r["domain"] + (f" ← {r['source']}" if r["domain"] != r["source"] else "")
    model = r["variant"] if r["variant"] == "text_knn" else f"{r['backbone']}-{r['variant']}"  # no backbone
    row = [r["stage"], domain, model]
    row += [_fmt(r["metrics"].get(f"{s}/{p}/{n}@{k}")) for s, p, n, k in keys]
    lines.append("| " + " | ".join(row) + " |")
  label = " (synthetic data)" if any(r.get("data") == "synthetic data" for r in records) else ""
  return f"metrics in %{label}; all K and the config: results.md\n" + "\n".join(lines)


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
  items = []
  for k, v in d.items():
    if isinstance(v, dict):
      items += _flat(v, f"{prefix}{k}.")
    else:
      items.append((f"{prefix}{k}", v))
  return items


def render_markdown(
    records: Sequence[dict[str, Any]], config: ml_collections.ConfigDict, title: str = "Results"
) -> str:
  protocols = protocol_descriptions(config.eval)
  lines = [f"# {title}", "", format_table(records), "", "## Protocols", ""]
  lines += [f"- `{p}`: {text}" for p, text in protocols.items()]
  lines += [
      "- rank = #candidates scoring strictly higher + 0.5 * #other candidates tied with the target; "
      "Recall@K = HR@K (one target); NDCG@K = 1/log2(rank + 2) if rank < K.",
      f"- model selection: early stopping on `{config.eval.select_metric}` (patience "
      f"{config.train.patience} epochs); test metrics come from the best checkpoint.",
      "",
      "## Config",
      "",
      "```",
  ]
  lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in _flat(config_dict(config))]
  lines += ["```", ""]
  return "\n".join(lines)


def write_results(
    workdir: str | paths.Path,
    records: Sequence[dict[str, Any]],
    config: ml_collections.ConfigDict,
    stem: str = "results",
    title: str = "Results",
) -> tuple[paths.Path, paths.Path]:
  """Writes `<stem>.json` (records, protocols, config) and `<stem>.md` in workdir; returns both paths.
  Only the primary process writes (the others compute the same records)."""
  workdir = paths.as_path(workdir)
  json_path, md_path = workdir / f"{stem}.json", workdir / f"{stem}.md"
  if not distributed.is_primary():
    return json_path, md_path
  workdir.mkdir(parents=True, exist_ok=True)
  payload = {
      "records": list(records),
      "protocols": protocol_descriptions(config.eval),
      "config": config_dict(config),
  }
  json_path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
  md_path.write_text(render_markdown(records, config, title), encoding="utf-8")
  return json_path, md_path


def print_summary(records: Sequence[dict[str, Any]], md_path: str | paths.Path) -> None:
  """The console summary of a run's records and where its tables are (from the primary process only)."""
  if distributed.is_primary():
    print(format_summary(records), flush=True)
    print(f"[results] {md_path}", flush=True)


def write_and_print(
    workdir: str | paths.Path, records: Sequence[dict[str, Any]], config: ml_collections.ConfigDict
) -> None:
  """write_results, then print_summary."""
  _, md_path = write_results(workdir, records, config)
  print_summary(records, md_path)


def read_records(path: str | paths.Path) -> list[dict[str, Any]]:
  """The records of a results.json (to merge stages or seeds into one table)."""
  return list(json.loads(paths.as_path(path).read_text(encoding="utf-8"))["records"])
