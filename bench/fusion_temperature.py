"""Would fitting the text part's temperature help the fusion? The in-domain study's finished `fusion` runs,
refitted with the text baseline at other softmax temperatures, theta fitted on validation at each.

  python bench/fusion_temperature.py --study=runs/study --domains=Office,LuxuryBeauty --out=results/bench

The text baseline (`text_knn_center_soft02`) scores an item by a recency-weighted soft maximum of its
cosines with the history, at temperature 0.2 (model.knn_temperature). For each finished fusion run of the
study (configs/in_domain_shared.py) and each --temperatures value, this takes the run's trained part (the
`id_ce` run at its best validation checkpoint), builds the text part at that temperature, fits theta on the
validation split exactly as a run does (fusion.fit: every theta = k / 100, the cross-fitted fallback), and
scores the test split at the fitted theta. A temperature worth fitting is one that validation would choose
and that also gains on test. Nothing is trained. Writes <out>/fusion_temperature.json after every
(domain, seed), skipping those already there, and <out>/fusion_temperature.md.
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
from recbole_protocol import domain_and_table  # pylint: disable=wrong-import-position
from recbole_protocol import finished_fusion  # pylint: disable=wrong-import-position

from recg_jax import finished_run  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import fusion as fusion_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import paths  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top,wrong-import-position

METRICS = ("full/ndcg@10", "full/recall@10")


def text_part_at(config, data, raw_table, temperature: float) -> fusion_lib.Part:
  """The fusion's text part with its softmax at `temperature` instead of its preset's."""
  tc = fusion_lib.text_config(config)
  tc.model.knn_temperature = float(temperature)
  model = recommender.build_model(tc, data.num_items)
  return fusion_lib.Part(model, {}, jax.device_put(pipeline.model_table(tc, raw_table)))


def seed_rows(run_dir: pathlib.Path, data, raw_table, temperatures) -> dict[str, dict]:
  """{temperature: fitted theta, validation values (text alone, fused) and test metrics of the fused}."""
  config, fused = finished_fusion(run_dir, data, raw_table)
  rows = {}
  for temperature in temperatures:
    at_t = dataclasses.replace(fused, text=text_part_at(config, data, raw_table, temperature))
    fitted = fusion_lib.fit(config, at_t, data)
    test = fusion_lib.evaluate_split(config, dataclasses.replace(at_t, theta=fitted.theta), data, "test")
    rows[f"{temperature:g}"] = {
        "theta": fitted.theta,
        "valid_text": fitted.tried[0][1],
        "valid_fused": fitted.value,
        **{f"test/{m}": test[m] for m in METRICS},
    }
    print(
        f"  {run_dir.parent.parent.parent.name} {run_dir.name} T={temperature:g}: {rows[f'{temperature:g}']}"
    )
  return rows


def report(results: dict, default_t: str, command: str) -> str:
  lines = [
      "# Fusion: the text part's temperature, refitted",
      "",
      f"- command: `{command}`",
      f"- machine: {platform.platform()}, jax {jax.__version__} on {jax.default_backend()}; "
      f"{datetime.date.today().isoformat()}",
      "- each finished `fusion` run's trained part (`id_ce`, best validation checkpoint), the text part at "
      "each temperature, theta fitted on validation as a run fits it; `full` ranking, history masked; "
      "mean over seeds (in %; theta as is)",
      f"- the study's text part: temperature {default_t}; **bold**: the temperature validation chooses "
      "(the best mean fused validation NDCG@10)",
      "",
  ]
  for domain, per_seed in results.items():
    seeds = sorted(per_seed)
    temps = list(per_seed[seeds[0]])
    mean = lambda t, k: statistics.mean(per_seed[s][t][k] for s in seeds)
    chosen = max(temps, key=lambda t: mean(t, "valid_fused"))
    lines += [
        f"## {domain} (seeds {', '.join(seeds)})",
        "",
        "| temperature | valid N@10, text alone | valid N@10, fused | theta | test N@10, fused "
        "| test R@10, fused |",
        "|---|---|---|---|---|---|",
    ]
    for t in temps:
      name = f"**{t}**" if t == chosen else t
      lines.append(
          f"| {name} | {100 * mean(t, 'valid_text'):.2f} | {100 * mean(t, 'valid_fused'):.2f} | "
          f"{mean(t, 'theta'):.2f} | {100 * mean(t, 'test/full/ndcg@10'):.2f} | "
          f"{100 * mean(t, 'test/full/recall@10'):.2f} |"
      )
    gain = mean(chosen, "test/full/ndcg@10") / mean(default_t, "test/full/ndcg@10") - 1
    lines += ["", f"Validation chooses {chosen}: test NDCG@10 {100 * gain:+.1f}% against {default_t}.", ""]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--study", required=True, help="the in-domain study's workdir")
  parser.add_argument("--domains", default="Office,LuxuryBeauty,Scientific")
  parser.add_argument("--temperatures", default="0.05,0.1,0.2,0.5,1")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out", default="results/bench")
  args = parser.parse_args()
  study = pathlib.Path(args.study)
  temperatures = [float(t) for t in args.temperatures.split(",")]
  out = paths.as_path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  saved = out / "fusion_temperature.json"
  results = json.loads(saved.read_text()) if saved.is_file() else {}
  for domain in args.domains.split(","):
    runs = [
        study / "runs" / "scratch" / domain / "100pct" / "fusion" / f"seed{s}" for s in args.seeds.split(",")
    ]
    runs = [r for r in runs if (r / "done.json").is_file() and r.name[4:] not in results.get(domain, {})]
    if not runs:
      continue
    data, raw_table = domain_and_table(study, domain, runs[0])
    for run_dir in runs:
      results.setdefault(domain, {})[run_dir.name[4:]] = seed_rows(run_dir, data, raw_table, temperatures)
      saved.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
  config, _ = finished_run.config_and_records(next(study.glob("runs/scratch/*/100pct/fusion/seed*")))
  default_t = f"{float(fusion_lib.text_config(config).model.knn_temperature):g}"
  command = f"python bench/fusion_temperature.py --study=DIR --domains={args.domains} --out={args.out}"
  text = report(results, default_t, command)
  (out / "fusion_temperature.md").write_text(text, encoding="utf-8")
  print(text)


if __name__ == "__main__":
  main()
