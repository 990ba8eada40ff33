"""The warm-start study (recg_jax/grid/warm_start.py, warm_start_report.py): its plan, each run's config, and
a study of made-up runs: fine-tuned runs wait for their starting run, crossings and the goal are read from
the budgets' numbers, and the crossover figure is drawn."""

import dataclasses
import json

import numpy as np
import pytest

from configs import warm_start_shared
from recg_jax import errors
from recg_jax import pipeline
from recg_jax.grid import runner
from recg_jax.grid import warm_start
from recg_jax.grid import warm_start_report

import conftest


def test_the_shared_study_trains_the_reference_and_fuses_over_its_runs():
  config = warm_start_shared.get_config()
  items = warm_start.plan(config)
  assert len(items) == 5 + 5 * 5 * 3 * 3 and [i.domain for i in items[-45:]] == ["Games"] * 45
  fused = warm_start.Item("scratch", "Kitchen", 0.2, "fusion", 1)
  rc = warm_start.run_config(config, fused)
  assert rc.fusion.enabled and rc.fusion.trained_run == "../../id_ce/seed1"
  assert (rc.train.budget, rc.model.variant, rc.train.loss) == (0.2, "id", "softmax")
  assert warm_start.trained_part_of(config, fused) == dataclasses.replace(fused, preset="id_ce")
  assert warm_start.run_config(config, dataclasses.replace(fused, preset="id_ce")).fusion.trained_run == ""
  # A fusion fitted on held-out users trains its own part: id_ce trained on every user of the budget.
  held = dataclasses.replace(fused, preset="fusion_holdout")
  assert warm_start.trained_part_of(config, held) is None
  assert warm_start.run_config(config, held).fusion.trained_run == ""


def test_a_fusion_waits_for_its_trained_part_unless_planned_and_retrains_a_restored_one(tmp_path):
  config = warm_start_shared.get_config()
  base = warm_start.Item("scratch", "Kitchen", 0.2, "id_ce", 1)
  fused = dataclasses.replace(base, preset="fusion")
  pending, waiting = warm_start._pending(config, [base, fused], tmp_path, False)  # pylint: disable=protected-access
  assert [p.relpath for p in pending] == [base.relpath, fused.relpath] and waiting == []
  assert pending[1].config.fusion.trained_run == "../../id_ce/seed1"  # fitted over the run planned first
  pending, waiting = warm_start._pending(config, [fused], tmp_path, False)  # pylint: disable=protected-access
  assert pending == [] and waiting == [fused.relpath]
  restored = tmp_path / base.relpath  # finished, as an archive restores it: markers, no checkpoints
  restored.mkdir(parents=True)
  (restored / "results.json").write_text("{}")
  (restored / runner.DONE).write_text("{}")
  pending, waiting = warm_start._pending(config, [fused], tmp_path, False)  # pylint: disable=protected-access
  assert [p.relpath for p in pending] == [fused.relpath] and waiting == []
  assert pending[0].config.fusion.trained_run == ""


def test_plan_and_run_configs_of_the_finetune_study():
  config = warm_start_shared.get_config("finetune")
  config.experiment.init_study = "/lodo"
  items = warm_start.plan(config)
  kinds = {k: sum(i.kind == k for i in items) for k in warm_start.KINDS}
  assert kinds == {"text": 2 * 4, "scratch": 4 * 5 * 3 * 4, "finetune": 4 * 5 * 3 * 2}
  assert [i.domain for i in items[8:98]] == ["LuxuryBeauty"] * 90  # a whole domain before the next
  item = warm_start.Item("finetune", "Office", 0.05, "sem", 2)
  assert item.relpath == "runs/finetune/Office/5pct/sem/seed2"
  rc = warm_start.run_config(config, item)
  assert (rc.data.source, tuple(rc.data.targets), rc.experiment.mode) == ("Office", (), "in_domain")
  assert (rc.train.budget, rc.train.seed, rc.train.max_users_per_source) == (0.05, 2, 0)
  assert rc.train.init_from == "/lodo/runs/lodo/Office/sem/seed2"
  scratch = warm_start.run_config(config, warm_start.Item("scratch", "Office", 0.05, "sem", 2))
  assert scratch.train.init_from == ""
  with pytest.raises(errors.ConfigError, match="init_study"):
    warm_start.plan(warm_start_shared.get_config("finetune"))
  config.experiment.budgets = (0.5, 0.2)
  with pytest.raises(errors.ConfigError, match="ascending"):
    warm_start.plan(config)


# Made-up `full` metrics: the text baseline at 10%; from scratch 2% + 10% x budget; fine-tuned 9% + 5% x
# budget (seeds 0.1% apart). With budgets 5, 20, 50, 100%: scratch crosses at 100%, fine-tuned at 50%.
def _made_up(kind: str, budget: float, seed: int) -> float:
  if kind == "text":
    return 0.10
  base = {"scratch": 0.02 + 0.10 * budget, "finetune": 0.09 + 0.05 * budget}[kind]
  return base + 0.001 * seed


def _fake_execute(monkeypatch, calls):
  def run_one(run):
    calls.append(run.relpath)
    kind, budget, seed = run.relpath.split("/")[1], float(run.config.train.budget), int(run.config.train.seed)
    metrics = {
        f"test/{p}/{m}": _made_up(kind, budget, seed) for p in ("full",) for m in ("ndcg@10", "recall@10")
    }
    records = [{"stage": "in_domain", "domain": run.config.data.source, "metrics": metrics, "extra": {}}]
    if budget < 1.0:
      extra = {"budget": budget, "budget_users": int(100 * budget), "users": 100}
      records.append(
          {"stage": "budget", "domain": run.config.data.source, "metrics": metrics, "extra": extra}
      )
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


def _tiny_config(init_study):
  config = conftest.get_config("study")
  ec = config.experiment
  ec.study, ec.domains, ec.validation_domains, ec.seeds = "warm_start", ("Alpha", "Beta"), (), (0, 1, 2)
  ec.text_presets, ec.presets, ec.finetune_presets = ("text_knn",), ("id",), ("sem",)
  ec.budgets, ec.init_study = (0.05, 0.2, 0.5, 1.0), str(init_study)
  return config


def _finished_start(init_study, domain, seed):
  run_dir = init_study / "runs" / "lodo" / domain / "sem" / f"seed{seed}"
  run_dir.mkdir(parents=True)
  (run_dir / "results.json").write_text("{}")
  (run_dir / runner.DONE).write_text("{}")


@pytest.fixture
def made_up_study(tmp_path, monkeypatch):
  _fake_execute(monkeypatch, calls := [])
  init_study = tmp_path / "lodo"
  for seed in (0, 1, 2):
    _finished_start(init_study, "Alpha", seed)  # Beta's starting runs are not finished
  config = _tiny_config(init_study)
  summary = warm_start.run_study(config, tmp_path / "study", command="tiny")
  return tmp_path / "study", config, calls, summary


@pytest.mark.slow
def test_fine_tuned_runs_wait_for_their_starting_runs(made_up_study):
  workdir, config, calls, summary = made_up_study
  assert not summary["failed"] and len(calls) == 2 + 2 * 4 * 3 + 4 * 3
  assert sorted(summary["waiting"]) == sorted(
      f"runs/finetune/Beta/{b}/sem/seed{s}" for b in ("5pct", "20pct", "50pct", "100pct") for s in (0, 1, 2)
  )
  again = warm_start.run_study(config, workdir, command="tiny")
  assert again["ran"] == [] and len(again["waiting"]) == 12


@pytest.mark.slow
def test_the_report_reads_each_runs_whole_domain_test_and_where_it_crosses(made_up_study):
  workdir, config, _, _ = made_up_study
  md = (workdir / "results.md").read_text()
  for needle in (
      "| method | 5pct (5 users) | 20pct (20 users) | 50pct (50 users) | 100pct (all users) |",
      "`text_knn` (no training) = **text baseline**",
      "| `id` from scratch | 100pct | 100pct |",  # crosses at 100% on both domains
      "| `sem` fine-tuned from the other domains | 50pct | not yet finished |",
      "on 1 of 1 finished test targets (Alpha; the goal is 3 of 2)",
      "![full NDCG@10 against the budget](crossover.png)",
  ):
    assert needle in md, needle
  assert (workdir / "crossover.png").stat().st_size > 0
  # The budgets' sizes go into results.json, so a later table that carries this one keeps its headers.
  config.experiment.earlier_values = str(workdir / "results.json")
  _, sizes = warm_start_report.earlier_table(config)
  assert sizes == {(d, b): round(100 * b) for d in ("Alpha", "Beta") for b in (0.05, 0.2, 0.5)}
  values = warm_start_report.collect_values(
      runner.markers_of(workdir, [i.relpath for i in warm_start.plan(config)])
  )
  assert values[("finetune", "Alpha", 0.2, "sem", "full", "ndcg@10")] == pytest.approx(
      {s: _made_up("finetune", 0.2, s) for s in (0, 1, 2)}
  )


def test_the_fitted_weights_table_shows_each_budgets_theta_and_its_fallbacks():
  def marker(domain, budget, seed, theta, fell):
    fusion = {"theta": theta, "fell_back": fell}
    records = [{"stage": "in_domain", "domain": domain, "metrics": {}, "extra": {"fusion": fusion}}]
    relpath = f"runs/scratch/{domain}/{round(budget * 100)}pct/fusion/seed{seed}"
    return {"setting": "fusion", "relpath": relpath, "records": records, "seed": seed}

  markers = [marker("Office", 0.05, s, 0.0, True) for s in range(2)] + [
      marker("Office", 0.05, 2, 0.4, False),
      marker("Office", 1.0, 0, 0.8, False),
  ]
  lines = warm_start_report.fusion_budget_lines(markers, ["Office"], [0.01, 0.05, 1.0])
  want = "| `fusion` | Office | — | 0.133 (0.000-0.400), text alone on 2 of 3 | 0.800 (0.800-0.800) |"
  assert want in lines


def test_an_earlier_tables_values_fill_only_the_seeds_no_finished_run_covers(tmp_path):
  key = ["scratch", "Office", 0.2, "id_ce", "full", "ndcg@10"]
  earlier = {"values": [{"key": key, "by_seed": {"0": 0.5, "1": 0.6}}], "text_baseline": "text_knn"}
  (tmp_path / "results.json").write_text(json.dumps(earlier))
  config = warm_start_shared.get_config()
  config.experiment.earlier_values = str(tmp_path / "results.json")
  values = {("scratch", "Office", 0.2, "id_ce", "full", "ndcg@10"): {1: 0.7}}  # seed 1 ran in this folder
  carried = warm_start_report.carry(values, warm_start_report.earlier_table(config)[0])
  assert values == {("scratch", "Office", 0.2, "id_ce", "full", "ndcg@10"): {0: 0.5, 1: 0.7}}
  assert carried == [("scratch", "Office", 0.2, "id_ce", 0)]
  assert "the values of 1 run come from" in warm_start_report.carried_line(config, carried)[0]


def test_an_earlier_table_that_is_missing_or_not_a_table_is_a_config_error(tmp_path):
  config = warm_start_shared.get_config()
  config.experiment.earlier_values = str(tmp_path / "absent.json")
  with pytest.raises(errors.ConfigError, match="absent.json'?: no such file"):
    warm_start_report.earlier_table(config)[0]
  (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
  config.experiment.earlier_values = str(tmp_path / "other.json")
  with pytest.raises(errors.ConfigError, match="other.json' is not a study table's JSON"):
    warm_start_report.earlier_table(config)[0]
  (tmp_path / "short.json").write_text(json.dumps({"values": [], "budget_users": [["Office", 0.01]]}))
  config.experiment.earlier_values = str(tmp_path / "short.json")
  with pytest.raises(errors.ConfigError, match="short.json' is not a study table's JSON"):
    warm_start_report.earlier_table(config)


def test_budget_sizes_come_from_the_runs_and_else_from_the_earlier_table(tmp_path):
  earlier = {"values": [], "budget_users": [["Office", 0.01, 53], ["Office", 0.2, 961]]}
  (tmp_path / "results.json").write_text(json.dumps(earlier))
  config = warm_start_shared.get_config()
  config.experiment.earlier_values = str(tmp_path / "results.json")
  _, earlier_users = warm_start_report.earlier_table(config)
  ran = {"stage": "budget", "domain": "Office", "extra": {"budget": 0.2, "budget_users": 960}}
  users = warm_start_report.budget_sizes([{"records": [ran]}], earlier_users)
  assert users == {("Office", 0.01): 53, ("Office", 0.2): 960}  # a finished run's own count wins


def test_several_earlier_tables_fill_in_order_and_the_header_names_each(tmp_path):
  key = ["scratch", "Games", 1.0, "id_ce", "full", "ndcg@10"]
  first = {"values": [{"key": key, "by_seed": {"0": 0.05}}], "budget_users": [["Games", 0.2, 10]]}
  second = {"values": [{"key": key, "by_seed": {"0": 0.9, "1": 0.06}}], "budget_users": [["Games", 0.2, 99]]}
  (tmp_path / "first.json").write_text(json.dumps(first))
  (tmp_path / "second.json").write_text(json.dumps(second))
  config = warm_start_shared.get_config()
  config.experiment.earlier_values = f"{tmp_path / 'first.json'}, {tmp_path / 'second.json'}"
  values, users = warm_start_report.earlier_table(config)
  assert values == {tuple(key): {0: 0.05, 1: 0.06}}  # seed 0 from the first, seed 1 from the second
  assert users == {("Games", 0.2): 10}
  line = warm_start_report.carried_line(config, [("scratch", "Games", 1.0, "id_ce", 1)])[0]
  assert f"`{tmp_path / 'first.json'}` and `{tmp_path / 'second.json'}`, earlier tables" in line


def test_a_warm_start_table_carries_only_its_own_presets_domains_and_budgets():
  config = warm_start_shared.get_config()  # presets id_ce, fusion, fusion_holdout; budgets 1-100%
  earlier = {
      ("scratch", "Games", 1.0, "id_ce", "full", "ndcg@10"): {0: 0.05},
      ("scratch", "Games", 1.0, "sem_ce", "full", "ndcg@10"): {0: 0.01},  # an in-domain-only preset
      ("scratch", "Food", 1.0, "id_ce", "full", "ndcg@10"): {0: 0.1},  # a domain the study lacks
      ("scratch", "Games", 0.3, "id_ce", "full", "ndcg@10"): {0: 0.03},  # a budget it lacks
      ("text", "Games", 1.0, "text_knn_center_soft02", "full", "ndcg@10"): {0: 0.03},
      ("text", "Games", 1.0, "text_knn_whiten_soft02", "full", "ndcg@10"): {0: 0.02},
  }
  kept = warm_start_report.in_study(config, earlier)
  assert sorted(k[:4] for k in kept) == [
      ("scratch", "Games", 1.0, "id_ce"),
      ("text", "Games", 1.0, "text_knn_center_soft02"),
  ]


def test_a_mean_level_with_the_text_does_not_cross_however_small_its_spread():
  text = {"ndcg@10": 0.05, "recall@10": 0.08}
  values = {("text", "Games", 1.0, "text_knn", "full", m): {0: v} for m, v in text.items()}
  for m, v in text.items():  # 3e-6 above the text on every seed, with a spread that makes p tiny
    values[("scratch", "Games", 0.2, "fusion", "full", m)] = {0: v + 3e-6, 1: v + 3.1e-6, 2: v + 2.9e-6}
    values[("scratch", "Games", 0.5, "fusion", "full", m)] = {0: v + 0.01, 1: v + 0.011, 2: v + 0.009}
  assert warm_start_report.stat(values, "scratch", "fusion", "Games", 0.2, "ndcg@10", 0.05)["p_knn"] < 1e-3
  crossed = warm_start_report.crossing(values, "scratch", "fusion", "Games", [0.2, 0.5], text)
  assert crossed == 0.5
