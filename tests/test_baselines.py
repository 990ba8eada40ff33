"""The study of trained models against text_knn (recg_jax/grid/baselines.py): plan, tests, weight choice,
the study with made-up runs (markers, restart, tables), and one tiny study end to end (synthetic data, the
packaged MiniLM, d=16, one epoch; slow)."""

import json

import numpy as np
import pytest
from scipy import stats

from configs import baselines_shared
from recg_jax import config as config_lib
from recg_jax import pipeline
from recg_jax import results as results_lib
from recg_jax.config import default as default_config
from recg_jax.grid import baselines

from _grid_fakes import fake_runs
from _grid_fakes import made_up
import conftest


def _tiny_config():
  return conftest.get_config("study")


def test_plan_runs_text_knn_once_and_every_trained_preset_per_seed():
  config = baselines_shared.get_config()
  runs = baselines.plan(config)
  knn = [r for r in runs if r[1] == "text_knn"]
  assert knn == [("Scientific", "text_knn", 0), ("Office", "text_knn", 0)]
  assert ("Office", "text_mix", 2) in runs and len(set(runs)) == len(runs)
  config.experiment.presets = ("text_knn", "nope")
  with pytest.raises(ValueError, match="nope"):
    baselines.plan(config)


def test_cell_stats_tests_against_text_knn_and_sem():
  values, seeds = [0.12, 0.125, 0.118], [0, 1, 2]
  sem = {0: 0.10, 1: 0.11, 2: 0.1}
  out = baselines.cell_stats(values, sem, seeds, 0.11)
  assert out["p_knn"] == pytest.approx(stats.ttest_1samp(values, 0.11).pvalue)
  assert out["p_sem"] == pytest.approx(stats.ttest_rel(values, [0.10, 0.11, 0.1]).pvalue)
  assert out["std"] == pytest.approx(np.std(values, ddof=1))
  assert baselines.cell_stats([0.2], None, [0], 0.1)["p_knn"] is None  # one seed: no test


def test_seeds_that_all_equal_the_reference_are_marked_equal_whatever_their_mean_rounds_to():
  x = 0.04810289880508846  # three copies average to x + 7e-18 in float64
  stat = baselines.cell_stats([x, x, x], None, [0, 1, 2], x)
  assert stat["mean"] != x and "(=knn)" in baselines.cell(stat, x, False)
  assert "(>knn" in baselines.cell(baselines.cell_stats([x, x, 1.001 * x], None, [0, 1, 2], x), x, False)


def test_a_fallback_that_drifts_in_float32_is_level_and_a_visible_gap_is_not():
  text = 0.07337671881371445  # a text baseline, and a fusion whose weight fell to 0, as they were measured
  drifted = baselines.cell_stats([0.0733720110369462] * 3, None, [0, 1, 2], text)
  assert "(=text)" in baselines.cell(drifted, text, False, reference="text")
  below = baselines.cell_stats([text - 2e-5] * 3, None, [0, 1, 2], text)
  assert "(<text)" in baselines.cell(below, text, False, reference="text")


def test_weight_is_chosen_on_the_validation_domain_only():
  key = lambda dom, setting: ("zero_shot", "S", dom, setting, "full", "ndcg@10")
  values = {
      key("V", "mix"): {0: 0.10, 1: 0.12},
      key("V", "mix@w0"): {0: 0.13, 1: 0.13},
      key("V", "mix@w0.5"): {0: 0.12, 1: 0.12},
      # The reported target prefers weight 1 by far: it must not be looked at.
      key("T", "mix"): {0: 0.5, 1: 0.5},
      key("T", "mix@w0"): {0: 0.0, 1: 0.0},
  }
  assert baselines.choose_weights(values, ["mix"], ["S"], "V", "full/ndcg@10") == {"mix": {"S": 0.0}}
  assert baselines.choose_weights(values, ["mix"], ["V"], "V", "full/ndcg@10") == {}


def test_study_with_made_up_runs_marks_skips_and_tables_them(tmp_path, monkeypatch):
  fake_runs(monkeypatch, calls := [])
  monkeypatch.setattr(
      pipeline,
      "embed_domains",
      lambda config, workdir, domains: {
          name: np.zeros((d.num_items + 1, 8), np.float32) for name, d in domains.items()
      },
  )
  config = _tiny_config()
  summary = baselines.run_study(config, tmp_path, command="tiny")
  expected = [
      "runs/Alpha/sem/seed0",
      "runs/Alpha/sem/seed1",
      "runs/Alpha/text_knn/seed0",
      "runs/Alpha/text_mix/seed0",
      "runs/Alpha/text_mix/seed1",
  ]
  assert not summary["failed"] and sorted(summary["ran"]) == expected
  for rel in expected:
    done = json.loads((tmp_path / rel / "done.json").read_text())
    assert done["setting"] == rel.split("/")[2] and done["relpath"] == rel
  md = (tmp_path / "results.md").read_text()
  assert "regenerate: `tiny`" in md and "runs: 5 finished of 5 planned" in md
  for preset in config.experiment.presets:
    assert f"| `{preset}` |" in md
  # text_mix's target weight: the best mean NDCG@10 on the validation pair Gamma ← Alpha (weight 1 is the
  # run's own zero-shot numbers, weight 0 scores as text_knn).
  mean = lambda setting, seeds: np.mean([made_up(setting, "Gamma", s, "full/ndcg@10") for s in seeds])
  candidates = {
      1.0: mean("text_mix", (0, 1)),
      0.0: mean("text_knn", (0,)),
      0.25: mean("text_mix@w0.25", (0, 1)),
      0.5: mean("text_mix@w0.5", (0, 1)),
  }
  best = max(candidates, key=lambda w: (candidates[w], -w))
  assert f"| `text_mix`, weight chosen on Gamma ← source (Alpha: {best:g}) |" in md
  assert md.count("| random (expected) |") == 4  # one row in each protocol x metric table
  assert md.count("## `full`") == 2 and md.count("## `sampled10`") == 2
  # Sem's cell of Beta ← Alpha, Recall@10 under `full`: mean ± std of the two seeds.
  sem = [made_up("sem", "Beta", s, "full/recall@10") for s in (0, 1)]
  lines = md.split("## `full`, Recall@10 (%)")[1].split("## ")[0].strip().splitlines()
  column = lines[0].split(" | ").index("Beta ← Alpha")
  (row,) = [l for l in lines if l.startswith("| `sem` |")]
  assert row.split(" | ")[column].startswith(f"{100 * np.mean(sem):.2f} ± {100 * np.std(sem, ddof=1):.2f}")
  # A second invocation runs nothing.
  again = baselines.run_study(config, tmp_path, command="tiny")
  assert again["ran"] == [] and len(calls) == len(expected)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("baselines")
  config = _tiny_config()
  summary = baselines.run_study(config, workdir, command="tiny")
  return config, workdir, summary


def _metrics(workdir, rel, domain):
  (rec,) = [r for r in results_lib.read_records(workdir / rel / "results.json") if r["domain"] == domain]
  return rec["metrics"]


@pytest.mark.slow
def test_study_runs_every_planned_run_and_tables_them(study):
  config, workdir, summary = study
  assert not summary["failed"]
  assert sorted(summary["ran"]) == sorted(
      [
          "runs/Alpha/text_knn/seed0",
          "runs/Alpha/sem/seed0",
          "runs/Alpha/sem/seed1",
          "runs/Alpha/text_mix/seed0",
          "runs/Alpha/text_mix/seed1",
      ]
  )
  md = (workdir / "results.md").read_text()
  assert "regenerate: `tiny`" in md
  for preset in config.experiment.presets:
    assert f"| `{preset}` |" in md
  assert "weight chosen on Gamma ← source" in md
  assert md.count("| random (expected) |") == 4  # one row in each protocol x metric table
  assert md.count("## `full`") == 2 and md.count("## `sampled10`") == 2
  done = json.loads((workdir / "runs/Alpha/text_knn/seed0/done.json").read_text())
  assert done["setting"] == "text_knn"
  # A second invocation skips every finished run.
  again = baselines.run_study(config, workdir, command="tiny")
  assert again["ran"] == []


@pytest.mark.slow
def test_text_knn_needs_no_training_and_mix_at_weight_zero_is_text_knn(study):
  _, workdir, _ = study
  assert not (workdir / "runs/Alpha/text_knn/seed0/checkpoints").exists()
  knn = _metrics(workdir, "runs/Alpha/text_knn/seed0", "Beta")
  for seed in (0, 1):
    mix = _metrics(workdir, f"runs/Alpha/text_mix/seed{seed}", "Beta")
    for protocol in ("full", "sampled10"):
      for metric in ("recall@10", "ndcg@10"):
        assert mix[f"zero_shot_w0/{protocol}/{metric}"] == pytest.approx(
            knn[f"zero_shot/{protocol}/{metric}"], abs=1e-6
        )


def test_presets_apply_from_a_config_argument():
  config = config_lib.apply_config_arg(default_config.get_config(), "preset=text_mix,source=Office")
  assert (
      config.model.variant,
      config.model.score_space,
      config.model.text_user,
      config.train.loss,
      config.data.source,
  ) == ("sem", "text", "mix", "softmax", "Office")
  with pytest.raises(ValueError, match="preset='nope'"):
    config_lib.apply_config_arg(default_config.get_config(), "preset=nope")


@pytest.mark.slow
def test_text_knn_in_domain_mode_evaluates_the_source_without_training(study, tmp_path):
  config, workdir, _ = study
  c = _tiny_config()
  c.model.variant = "text_knn"
  c.experiment.mode = "in_domain"
  (tmp_path / "cache").symlink_to(workdir / "cache")  # the study's data and embeddings
  records = pipeline.run(c, str(tmp_path))
  assert [(r["stage"], r["domain"], r["variant"]) for r in records] == [("in_domain", "Alpha", "text_knn")]
  assert not (tmp_path / "checkpoints").exists()
  knn = _metrics(workdir, "runs/Alpha/text_knn/seed0", "Alpha")
  assert records[0]["metrics"]["test/full/ndcg@10"] == pytest.approx(knn["test/full/ndcg@10"], abs=1e-7)
