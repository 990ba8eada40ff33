"""The in-domain study (experiment.study='in_domain': the warm-start machinery at 100%, its own table): its
plan, a fusion that waits for and fits over the run of its trained part, and the table read from made-up
runs (which method beats both references, where)."""

import json
import re
import shutil

import numpy as np
import pytest

from configs import in_domain_shared
from recg_jax import pipeline
from recg_jax.grid import runner
from recg_jax.grid import warm_start

import conftest

# Made-up `full` and `sampled10` metrics per preset (seeds 0.1% apart; the text has one value).
MADE_UP = {"text_knn": 0.10, "id": 0.12, "fusion": 0.15, "sem": 0.08}


def _fake_execute(monkeypatch, calls, trained_itself=None):
  """Made-up runs; a fusion fits over its trained part's run, or (listed in trained_itself, where given)
  trains the part itself."""

  def run_one(run):
    calls.append(run.relpath)
    preset, seed = run.relpath.split("/")[-2], int(run.config.train.seed)
    value = MADE_UP[preset] + (0.001 * seed * (1 + (preset == "fusion")) if preset != "text_knn" else 0.0)
    metrics = {f"test/{p}/{m}": value for p in ("full", "sampled10") for m in ("ndcg@10", "recall@10")}
    extra = {"best_epoch": 3}
    if run.config.fusion.enabled and trained_itself is not None and not run.config.fusion.trained_run:
      trained_itself.append(run.relpath)
    elif run.config.fusion.enabled:
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


def _tables(md: str) -> str:
  """The goal and the metric tables (the header names folders and counts this folder's runs; the fitted
  weights and the costs cover this folder's runs only)."""
  return re.split("## Fitted fusion weights|## Cost", md[md.index("## Against the goal") :])[0]


@pytest.mark.slow
def test_an_archived_study_goes_on_in_a_fresh_folder_and_a_lost_fusion_trains_its_part_again(
    fusion_preset, tmp_path, monkeypatch
):
  _fake_execute(monkeypatch, calls := [], trained_itself := [])
  config = _tiny_config()
  warm_start.run_study(config, tmp_path / "first", command="tiny")
  assert len(calls) == 2 + 2 * 3 * 3 and not trained_itself
  # Named later, the archive takes the folder's finished runs at the next invocation.
  config.experiment.archive = str(tmp_path / "archive")
  warm_start.run_study(config, tmp_path / "first", command="tiny", aggregate_only=True)
  assert len(list((tmp_path / "archive").glob("runs/*/*/*/*/seed*/done.json"))) == 2 * 3 * 3
  assert len(list((tmp_path / "archive").glob("runs/text/*/*/seed0/done.json"))) == 2
  archived = json.loads((tmp_path / "archive/runs/scratch/Beta/100pct/id/seed2/done.json").read_text())
  assert archived["config"]["data"]["root"] == ""  # no path of the machine it ran on
  first = (tmp_path / "first" / "in_domain.md").read_text()
  # A fresh folder over the same archive: every run is restored, nothing trains, the same table.
  calls.clear()
  warm_start.run_study(config, tmp_path / "second", command="tiny")
  assert calls == []
  assert _tables((tmp_path / "second" / "in_domain.md").read_text()) == _tables(first)
  # A fusion lost from the archive, over a trained part restored without its checkpoints, trains the part.
  shutil.rmtree(tmp_path / "archive/runs/scratch/Alpha/100pct/fusion/seed1")
  warm_start.run_study(config, tmp_path / "third", command="tiny")
  assert calls == trained_itself == ["runs/scratch/Alpha/100pct/fusion/seed1"]
  assert (tmp_path / "archive/runs/scratch/Alpha/100pct/fusion/seed1/done.json").is_file()


@pytest.mark.slow
def test_an_earlier_tables_values_fill_the_cells_of_lost_runs_and_the_table_says_so(
    fusion_preset, tmp_path, monkeypatch
):
  _fake_execute(monkeypatch, calls := [])
  config = _tiny_config()
  warm_start.run_study(config, tmp_path / "first", command="tiny")
  assert len(calls) == 2 + 2 * 3 * 3
  first = (tmp_path / "first" / "in_domain.md").read_text()
  # The folder is lost but for one run; the earlier table's values fill every other cell.
  kept = "runs/scratch/Beta/100pct/id/seed2"
  shutil.copytree(tmp_path / "first" / kept, tmp_path / "second" / kept)
  config.experiment.earlier_values = str(tmp_path / "first" / "in_domain.json")
  warm_start.run_study(config, tmp_path / "second", command="tiny", aggregate_only=True)
  second = (tmp_path / "second" / "in_domain.md").read_text()
  assert _tables(second) == _tables(first)
  assert (
      f"- carried: the values of {2 + 2 * 3 * 3 - 1} runs come from `{config.experiment.earlier_values}`"
      in second
  )
  assert json.loads((tmp_path / "second" / "in_domain.json").read_text()) == json.loads(
      (tmp_path / "first" / "in_domain.json").read_text()
  )
