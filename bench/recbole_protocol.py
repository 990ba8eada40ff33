"""The in-domain study's finished runs of one domain under RecBole's protocol: the history not masked.

  python bench/recbole_protocol.py --study=runs/study --domain=Scientific --out=results/recbole_protocol

RecBole (and the papers that report through it, VQ-Rec among them) ranks the target against every item of
the catalogue, the items of the user's own history included; our tables mask the history. This script
takes the finished `fusion` runs of a study folder (configs/in_domain_shared.py) on --domain, one per seed,
and evaluates on the test split with `eval.mask_history=False`:

- the text baseline alone (the fusion's text part), and the ID reference alone (the fusion's trained part,
  the `id_ce` run at its best validation checkpoint);
- the fusion at the theta its run fitted under our protocol (history masked);
- the fusion with theta fitted again on the validation split under RecBole's protocol (what a run with
  `--config.eval.mask_history=False` fits).

Nothing is trained: the ID reference's early stopping read the masked validation metric, which a run
under RecBole's protocol would not (a small difference in where it stops). Writes <out>/<domain>.json after
every seed (an invocation skips the seeds already there: delete it after the runs or the fusion's fitting
change) and <out>/<domain>.md (mean ± sample std over the seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import platform
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import finished_run  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import fusion as fusion_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import paths  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top,wrong-import-position

METRICS = ("full/recall@10", "full/ndcg@10")
ROWS = (
    "text baseline",
    "id_ce",
    "fusion, theta fitted with the history masked",
    "fusion, theta fitted unmasked",
)


def domain_and_table(study: pathlib.Path, domain: str, run_dir: pathlib.Path):
  """(data, frozen item table) of `domain`, read from the study's cache (the study folder is its runs'
  cache root: <study>/cache/data, <study>/cache/embeddings) with a run's config. Every seed's run shares
  them: the seeds differ in their runs, not in their data."""
  config, _ = finished_run.config_and_records(run_dir)
  data = prepare.load_domains(config, study, log=lambda _: None)[domain]
  return data, pipeline.embed_domains(config, study, {domain: data})[domain]


def finished_fusion(run_dir: pathlib.Path, data, raw_table, overrides: dict | None = None):
  """(config, Fused) of a study's finished fusion run: its config with `overrides` applied, and its fusion
  over the best parameters of its trained part (fusion.trained_run, checked to be this run's model)."""
  config, _ = finished_run.config_and_records(run_dir)
  params, _ = fusion_lib.finished_trained_part(config, run_dir)
  config = config_lib.override(config, overrides or {})
  model = recommender.build_model(config, data.num_items)
  return config, fusion_lib.fused_on(config, data, raw_table, model, params)


def seed_rows(run_dir: pathlib.Path, data, raw_table) -> dict[str, dict]:
  """The four rows' test metrics (and the thetas) of one seed's fusion run under RecBole's protocol."""
  config, fused = finished_fusion(run_dir, data, raw_table, {"eval.mask_history": False})
  masked_theta = float(fusion_lib.read_fit(run_dir)["theta"])
  fitted = fusion_lib.fit(config, fused, data)
  thetas = {ROWS[0]: 0.0, ROWS[1]: 1.0, ROWS[2]: masked_theta, ROWS[3]: fitted.theta}
  rows = {}
  for name, theta in thetas.items():
    metrics = fusion_lib.evaluate_split(config, dataclasses.replace(fused, theta=theta), data, "test")
    rows[name] = {"theta": theta, **{m: metrics[m] for m in METRICS}}
  return rows


def report(domain: str, per_seed: dict[int, dict], command: str) -> str:
  lines = [
      f"# {domain} under RecBole's protocol (history not masked)",
      "",
      f"- command: `{command}`",
      f"- seeds: {', '.join(map(str, per_seed))}; mean ± sample std; test split, `full` ranking over every "
      "item, the user's history included (the target itself ranks among them)",
      f"- machine: {platform.platform()}, jax {jax.__version__} on {jax.default_backend()}; "
      f"{datetime.date.today().isoformat()}",
      "- nothing trained here: the `id_ce` runs of the study, early-stopped on the masked validation metric",
      "",
      "| row | Recall@10 (%) | NDCG@10 (%) | theta |",
      "|---|---|---|---|",
  ]
  for row in ROWS:
    cells = []
    for metric in (*METRICS, "theta"):
      values = [per_seed[s][row][metric] * (1 if metric == "theta" else 100) for s in per_seed]
      spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
      cells.append(f"{statistics.mean(values):.2f}{spread}")
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--study", required=True, help="the in-domain study's workdir")
  parser.add_argument("--domain", default="Scientific")
  parser.add_argument("--preset", default="fusion", help="the study's fusion preset")
  parser.add_argument("--out", default="results/recbole_protocol")
  args = parser.parse_args()
  study = pathlib.Path(args.study)
  runs = sorted((study / "runs" / "scratch" / args.domain / "100pct" / args.preset).glob("seed*"))
  runs = [r for r in runs if (r / "done.json").is_file()]
  if not runs:
    sys.exit(f"no finished {args.preset} run of {args.domain} under {study}/runs/scratch")
  out = paths.as_path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  saved = out / f"{args.domain}.json"
  # A seed evaluated by an earlier invocation is kept: delete the file after refitting the study's runs
  # or changing how a fusion fits.
  per_seed = {int(k): v for k, v in json.loads(saved.read_text()).items()} if saved.is_file() else {}
  pending = [r for r in runs if int(r.name.removeprefix("seed")) not in per_seed]
  data, raw_table = domain_and_table(study, args.domain, pending[0]) if pending else (None, None)
  for run_dir in pending:
    seed = int(run_dir.name.removeprefix("seed"))
    per_seed[seed] = seed_rows(run_dir, data, raw_table)
    print(f"seed {seed}: " + json.dumps(per_seed[seed]), flush=True)
    saved.write_text(json.dumps(dict(sorted(per_seed.items())), indent=1) + "\n", encoding="utf-8")
  per_seed = dict(sorted(per_seed.items()))
  command = f"python bench/recbole_protocol.py --domain={args.domain} --study=DIR --out={args.out}"
  text = report(args.domain, per_seed, command)
  (out / f"{args.domain}.md").write_text(text, encoding="utf-8")
  print(text)


if __name__ == "__main__":
  main()
