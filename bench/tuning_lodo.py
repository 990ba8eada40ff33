"""The tuned encoder, left out one domain at a time: is `text_knn_center` better with an encoder tuned on
the other domains' interactions than with the frozen one? Meant for an accelerator (the whole encoder
trains); it runs anywhere, slowly.

  python bench/tuning_lodo.py --data_root=DIR --workdir=W --out=results.json [--encoder=DIR]
  python bench/tuning_lodo.py --data_format=synthetic --domains=Alpha,Beta,Gamma --validation=Beta \
      --tests=Alpha,Gamma --single_source=Beta --steps=2 --batch=8 --seeds=1 --workdir=W --out=dry.json

1. The six domains are prepared and embedded with the frozen encoder; `text_knn_center` is evaluated on
   every domain's test split (the frozen baseline).
2. Every setting of --settings is tuned with the validation domains held out (seed 0), each on the five
   others, and scored by `text_knn_center` with the tuned encoder on the held-out domain; the setting with
   the best mean `full` NDCG@10 over the validation domains is chosen. No test target is looked at.
3. With the chosen setting, every test target is held out and the encoder tuned on the five others, for
   each of --seeds; then once on a single source (--single_source) to show what many domains add.

Every run's metrics, wall time and tuning throughput go to --out as they finish (a killed invocation keeps
what finished); --budget_s stops starting runs past that many seconds. `python bench/tuning_lodo.py
--report OUT.md IN.json [...]` tables finished invocations.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import encoders  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import transfer  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import tuning  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.models import text_space  # pylint: disable=g-import-not-at-top,wrong-import-position

DOMAINS = ("Scientific", "Office", "Games", "LuxuryBeauty", "Food", "Kitchen")
VALIDATION = ("Games", "Food")
TESTS = ("Scientific", "Office", "LuxuryBeauty", "Kitchen")
SETTINGS = {
    "full_lr1e-5": {"tuning.trainable": "full", "tuning.learning_rate": 1e-5},
    "top2_lr3e-5": {"tuning.trainable": "top_layers", "tuning.top_layers": 2, "tuning.learning_rate": 3e-5},
    "full_lr3e-5": {"tuning.trainable": "full", "tuning.learning_rate": 3e-5},
    "top2_lr1e-4": {"tuning.trainable": "top_layers", "tuning.top_layers": 2, "tuning.learning_rate": 1e-4},
    "lora8_lr1e-4": {"tuning.trainable": "lora", "tuning.lora_rank": 8, "tuning.learning_rate": 1e-4},
    "lora8_lr5e-4": {"tuning.trainable": "lora", "tuning.lora_rank": 8, "tuning.learning_rate": 5e-4},
}


def base_config(args):
  config = config_lib.get_config()
  config.data.format, config.data.root = args.data_format, args.data_root
  config.data.source, config.data.targets = args.domains[0], tuple(args.domains[1:])
  if args.data_format == "synthetic":  # a dry run: the synthetic domains, small
    config.data.synthetic.domains = tuple(args.domains)
    config_lib.override(
        config,
        {
            "data.synthetic.num_users": 60,
            "data.synthetic.num_items": 40,
            "eval.protocols": ("full", "sampled10"),
            "eval.num_sampled_negatives": 10,
        },
    )
  if args.encoder:
    config.encoder.model = args.encoder
  config.encoder.batch_size = args.embed_batch
  config_lib.override(
      config,
      {
          "tuning.steps": args.steps,
          "tuning.batch_size": args.batch,
          "tuning.dtype": args.dtype,
          "tuning.checkpoint_every_steps": args.steps,
          "tuning.log_every_steps": 50,
      },
  )
  return config


def table_of(encoder, domain, config) -> np.ndarray:
  vectors = embed.embed_texts(
      encoder, list(domain.item_text[1:]), config.encoder, config.text, progress=False
  )
  return np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors])


def text_knn_center(config, table: np.ndarray, domain) -> dict[str, float]:
  """`text_knn_center` on the domain's test split with this table."""
  c = config_lib.apply_preset(config.copy_and_resolve_references(), "text_knn_center")
  c.data.source, c.data.targets = domain.name, ()
  model = recommender.build_model(c, domain.num_items)
  centred = np.asarray(text_space.transform_table(jax.numpy.asarray(table), "center"))
  return transfer.evaluate_domain(c, model, {}, centred, domain, None, "test")


class Study:

  def __init__(self, args):
    self.args, self.start = args, time.perf_counter()
    self.config = base_config(args)
    self.workdir = pathlib.Path(args.workdir)
    self.domains = prepare.load_domains(self.config, self.workdir, log=lambda _: None)
    self.base = encoders.load_encoder(self.config.encoder)
    t0 = time.perf_counter()
    self.tables = {n: table_of(self.base, d, self.config) for n, d in self.domains.items()}
    items = sum(d.num_items for d in self.domains.values())
    self.out = {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "settings": SETTINGS,
        "args": vars(args),
        "embed_items_per_s": items / (time.perf_counter() - t0),
        "frozen": {n: text_knn_center(self.config, self.tables[n], d) for n, d in self.domains.items()},
        "runs": [],
    }
    self.save()

  def save(self):
    pathlib.Path(self.args.out).write_text(json.dumps(self.out, indent=1))

  def over_budget(self) -> bool:
    return time.perf_counter() - self.start > self.args.budget_s

  def run(self, phase: str, held_out: str, sources, setting: str, seed: int):
    if self.over_budget():
      print(f"[tuning] budget spent: {phase} {held_out} {setting} seed {seed} not run", flush=True)
      return None
    c = config_lib.override(
        self.config.copy_and_resolve_references(),
        {**SETTINGS[setting], "tuning.seed": seed, "data.source": "+".join(sources)},
    )
    t0 = time.perf_counter()
    tuned = tuning.tune(
        c, self.workdir / f"{phase}_{held_out}_{setting}_s{seed}", self.domains, self.tables, progress=False
    )
    tune_s = time.perf_counter() - t0
    domain = self.domains[held_out]
    metrics = text_knn_center(self.config, table_of(tuned.encoder, domain, self.config), domain)
    record = {
        "phase": phase,
        "held_out": held_out,
        "sources": list(sources),
        "setting": setting,
        "seed": seed,
        "metrics": metrics,
        "tune_s": tune_s,
        "examples_per_s": c.tuning.steps * c.tuning.batch_size / tune_s,
        "final": tuned.metrics,
    }
    self.out["runs"].append(record)
    self.save()
    print(
        f"[tuning] {phase} {held_out} {setting} seed {seed}: full NDCG@10 {metrics['full/ndcg@10']:.4f} "
        f"(frozen {self.out['frozen'][held_out]['full/ndcg@10']:.4f}), {tune_s:.0f} s",
        flush=True,
    )
    return record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_root", default="")
  parser.add_argument("--data_format", default="recbole")
  parser.add_argument("--domains", type=lambda v: v.split(","), default=list(DOMAINS))
  parser.add_argument("--validation", type=lambda v: v.split(","), default=list(VALIDATION))
  parser.add_argument("--tests", type=lambda v: v.split(","), default=list(TESTS))
  parser.add_argument("--encoder", default="", help="encoder.model (default: the packaged MiniLM)")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--embed_batch", type=int, default=256)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--settings", default="full_lr1e-5,top2_lr3e-5")
  parser.add_argument("--single_source", default="Games", help="the one source of the single-source runs")
  parser.add_argument("--budget_s", type=float, default=1e9)
  args = parser.parse_args()
  study = Study(args)
  settings = args.settings.split(",")
  domains, validation, tests = args.domains, args.validation, args.tests
  for setting in settings:
    for v in validation:
      study.run("validation", v, [d for d in domains if d != v], setting, 0)
  scores = {}
  for setting in settings:
    got = [
        r["metrics"]["full/ndcg@10"]
        for r in study.out["runs"]
        if r["setting"] == setting and r["phase"] == "validation"
    ]
    if len(got) == len(validation):
      scores[setting] = float(np.mean(got))
  chosen = max(scores, key=scores.get) if scores else settings[0]
  study.out["chosen"] = {"setting": chosen, "validation_means": scores}
  study.save()
  for seed in range(args.seeds):
    for t in tests:
      study.run("test", t, [d for d in domains if d != t], chosen, seed)
  for t in tests:
    if t != args.single_source:
      study.run("single_source", t, [args.single_source], chosen, 0)
  study.out["total_s"] = time.perf_counter() - study.start
  study.save()


def report(paths_in: list[str], out: str) -> None:
  """The markdown tables of finished invocations (their --out files): per held-out domain, the frozen
  encoder's text_knn_center against the tuned ones (mean ± std over seeds, one-sample t-test against the
  frozen value), and the single-source tuning."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  lines = ["# `text_knn_center` with an encoder tuned on the other domains (leave one domain out)", ""]
  for path in paths_in:
    d = json.loads(pathlib.Path(path).read_text())
    a = d["args"]
    lines += [
        f"## {pathlib.Path(path).name}: {a['steps']} steps of {a['batch']} examples, {a['dtype']}, "
        f"{d['device']} (jax {d['jax']})",
        "",
        f"- settings tried on the validation domains ({', '.join(a['validation'])}): "
        + "; ".join(
            f"`{s}` {d['settings'][s]} → mean full NDCG@10 {100 * v:.2f}"
            for s, v in d["chosen"]["validation_means"].items()
        )
        + f"; chosen `{d['chosen']['setting']}`",
        f"- frozen encoder embedding: {d['embed_items_per_s']:,.0f} items/s; tuning: "
        f"{np.median([r['examples_per_s'] for r in d['runs']]):,.0f} examples/s (median over runs, start-up "
        "included); wall time " + (f"{d['total_s']:.0f} s" if "total_s" in d else "(cut short)"),
        "",
    ]
    for metric in ("full/ndcg@10", "full/recall@10", "sampled100/ndcg@10"):
      header = ["held out", "phase", "frozen", "tuned (mean ± std)", "seeds", "vs frozen", "p"]
      rows = []
      keyed: dict[tuple, list] = {}
      for r in d["runs"]:
        keyed.setdefault((r["held_out"], r["phase"], r["setting"]), []).append(r["metrics"][metric])
      for (held, phase, setting), vals in keyed.items():
        frozen = d["frozen"][held][metric]
        v = np.asarray(vals)
        p = stats.ttest_1samp(v, frozen).pvalue if len(v) > 1 and np.ptp(v) > 0 else None
        std = f" ± {100 * v.std(ddof=1):.2f}" if len(v) > 1 else ""
        rows.append(
            [
                held + (" (validation)" if phase == "validation" else ""),
                f"{phase} `{setting}`",
                f"{100 * frozen:.2f}",
                f"{100 * v.mean():.2f}{std}",
                str(len(v)),
                f"{100 * (v.mean() / frozen - 1):+.1f}%",
                "—" if p is None else f"{p:.3f}",
            ]
        )
      lines += [f"### {metric}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
      lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
  pathlib.Path(out).write_text("\n".join(lines))


if __name__ == "__main__":
  if sys.argv[1:2] == ["--report"]:  # --report OUT.md IN.json [IN.json ...]
    report(sys.argv[3:], sys.argv[2])
  else:
    main()
