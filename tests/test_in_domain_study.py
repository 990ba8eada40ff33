"""The in-domain study (experiment.study='in_domain': the warm-start machinery at 100%, its own table): its
plan, a fusion that waits for and fits over the run of its trained part, and the table read from made-up
runs (which method beats both references, where)."""

import json

import numpy as np
import pytest

from configs import in_domain_shared
from recg_jax import pipeline
from recg_jax.grid import runner
from recg_jax.grid import warm_start

import conftest

# Made-up `full` and `sampled10` metrics per preset (seeds 0.1% apart; the text has one value).
MADE_UP = {"text_knn": 0.10, "id": 0.12, "fusion": 0.15, "sem": 0.08}


def _fake_execute(monkeypatch, calls):
  def run_one(run):
    calls.append(run.relpath)
    preset, seed = run.relpath.split("/")[-2], int(run.config.train.seed)
    value = MADE_UP[preset] + (0.001 * seed * (1 + (preset == "fusion")) if preset != "text_knn" else 0.0)
    metrics = {f"test/{p}/{m}": value for p in ("full", "sampled10") for m in ("ndcg@10", "recall@10")}
    extra = {"best_epoch": 3}
    if run.config.fusion.enabled:
      assert run.config.fusion.trained_run == "../../id/seed%d" % seed
      assert runner.read_done(run.run_dir / run.config.fusion.trained_run) is not None  # it ran first
      fell = run.config.data.source == "Beta" and seed == 0  # too little gain on validation: the text alone
      extra["fusion"] = {"theta": 0.0 if fell else 0.5 + 0.1 * seed, "fell_back": fell}
    records = [{"stage": "in_domain", "domain": run.config.data.source, "metrics": metrics, "extra": extra}]
    (run.run_dir / "results.json").write_text(json.dumps({"records": records}))
    return records

  def execute(runs, domains, tables, group_dir):
    del domains, tables, group_dir
    return [pipeline._outcome(lambda r=r: run_one(r)) for r in runs]  # pylint: disable=protected-access

  monkeypatch.setattr(runner, "execute", execute)
  monkeypatch.setattr(
      pipeline,
      "embed_domains",
      lambda config, workdir, domains: {
          n: np.zeros((d.num_items + 1, 8), np.float32) for n, d in domains.items()
      },
  )


@pytest.fixture
def fusion_preset(monkeypatch):
  """A preset 'fusion' that fuses the tiny config's own ID model (preset 'id') with the text."""
  from recg_jax.config import presets  # pylint: disable=g-import-not-at-top

  monkeypatch.setitem(presets.PRESETS, "fusion", {"model.variant": "id", "fusion.enabled": True})


def _tiny_config():
  config = conftest.get_config("study")
  ec = config.experiment
  ec.study, ec.domains, ec.seeds, ec.member_group_size = "in_domain", ("Alpha", "Beta"), (0, 1, 2), 1
  ec.text_presets, ec.presets, ec.finetune_presets, ec.reference_preset = (
      ("text_knn",),
      ("id", "fusion", "sem"),
      (),
      "id",
  )
  return config


def test_the_shared_config_plans_every_preset_on_the_small_domains_and_a_few_on_the_large_ones():
  small, large = in_domain_shared.get_config(), in_domain_shared.get_config("large")
  assert len(warm_start.plan(small)) == 2 * 4 + 4 * 3 * len(in_domain_shared.PRESETS)
  assert {i.domain for i in warm_start.plan(large) if i.kind == "scratch"} == {"Games", "Kitchen"}
  assert all(i.budget == 1.0 for i in warm_start.plan(small))
  assert small.experiment.presets.index("id_ce") < small.experiment.presets.index("fusion")


@pytest.mark.slow
def test_a_fusion_waits_for_its_trained_part_and_the_table_says_who_beats_both(
    fusion_preset, tmp_path, monkeypatch
):
  _fake_execute(monkeypatch, calls := [])
  config = _tiny_config()
  summary = warm_start.run_study(config, tmp_path, command="tiny")
  assert not summary["failed"] and not summary["waiting"] and len(calls) == 2 + 2 * 3 * 3
  md = (tmp_path / "in_domain.md").read_text()
  for needle in (
      "| `fusion` | 2 of 2 finished | Alpha, Beta | yes | yes |",  # 15% > 12% (id) > 10% (text), every seed
      "| `sem` | 0 of 2 finished | none | no | no |",
      "| `id` = **ID reference** | 12.10 ± 0.10 (>text p=0.",
      "## `sampled10` NDCG@10 (%)",
      "## Fitted fusion weights",
      "| `fusion` | 0.600 (0.500-0.700) | 0.433 (0.000-0.700), text alone on 1 of 3 |",
  ):
    assert needle in md, needle
  # A fusion whose trained part has not run (and will not run now) waits.
  (tmp_path / "runs/scratch/Alpha/100pct/fusion/seed0/done.json").unlink()
  (tmp_path / "runs/scratch/Alpha/100pct/id/seed0/done.json").unlink()
  again = warm_start.run_study(config, tmp_path, command="tiny", aggregate_only=True)
  assert again["waiting"] == ["runs/scratch/Alpha/100pct/fusion/seed0"]
  # Two seeds of three on Alpha: its cells say so, and no verdict is drawn there yet.
  md = (tmp_path / "in_domain.md").read_text()
  assert "| `fusion` | 1 of 1 finished | Beta | — | yes |" in md
  assert "(2 of 3 seeds)" in md
