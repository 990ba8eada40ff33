"""Made-up runs for the grid and the study runners: every group of runs goes through runner.execute, which
these fakes replace with runs that train nothing and record metrics that depend only on the run."""

import json
import zlib

from recg_jax import pipeline
from recg_jax.grid import runner


def made_up(setting: str, domain: str, seed: int, key: str) -> float:
  """A metric value that depends only on the setting, domain, seed and metric ('full/recall@10')."""
  h = zlib.crc32(f"{setting}|{domain}|{key}".encode())
  return 0.05 + (h % 500) / 1000 + seed * (1 + (h >> 9) % 89) / 10000


def made_up_records(run: runner.PendingRun) -> list[dict]:
  """The records of one run, laid out as the real ones, with made-up metrics: RecG also without its
  sequence-level step, a mix run also at each target weight (weight 0 scores as text_knn, seed 0), an ID
  run in-domain only."""
  config, spec, setting = run.config, run.spec, run.setting
  keys = [f"{p}/{m}@{k}" for p in config.eval.protocols for m in ("recall", "ndcg") for k in config.eval.ks]
  splits = {"in_domain": [("test", "")], "zero_shot": [("zero_shot", "")]}
  if spec.variant == "recg":
    splits = {
        "in_domain": [("test", ""), ("test_no_seq", ":no_seq")],
        "zero_shot": [("zero_shot", ""), ("zero_shot_no_seq", ":no_seq")],
    }

  def record(stage, domain):
    metrics = {
        f"{split}/{key}": made_up(setting + suffix, domain, spec.seed, key)
        for split, suffix in splits[stage]
        for key in keys
    }
    if stage == "zero_shot":
      for w in config.transfer.target_model_weights:
        metrics.update(
            {
                f"zero_shot_w{w:g}/{k}": made_up("text_knn", domain, 0, k)
                if w == 0
                else made_up(f"{setting}@w{w:g}", domain, spec.seed, k)
                for k in keys
            }
        )
    return {
        "stage": stage,
        "domain": domain,
        "source": spec.source,
        "backbone": spec.backbone,
        "variant": spec.variant,
        "seed": spec.seed,
        "metrics": metrics,
        "extra": {"best_epoch": 1, "stop_reason": "made up"},
    }

  targets = [] if spec.variant == "id" else list(config.data.targets)
  return [record("in_domain", spec.source)] + [record("zero_shot", t) for t in targets]


def fake_runs(mp, calls: list, fail=()) -> None:
  """Replaces runner.execute: each run is appended to `calls` as (relpath, config), raises if its relpath
  is in `fail` (as a real run's failure, its own outcome), and otherwise writes and returns made-up
  records."""

  def run_one(run: runner.PendingRun) -> list[dict]:
    calls.append((run.relpath, run.config))
    if run.relpath in fail:
      raise FloatingPointError("injected")
    records = made_up_records(run)
    (run.run_dir / "results.json").write_text(json.dumps({"records": records}))
    return records

  def execute(runs, domains, tables, group_dir):
    del domains, tables, group_dir
    return [pipeline._outcome(lambda r=r: run_one(r)) for r in runs]  # pylint: disable=protected-access

  mp.setattr(runner, "execute", execute)
