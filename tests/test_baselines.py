"""The study of trained models against text_knn (recg_jax/baselines.py): plan, tests, weight choice, and one
tiny study end to end (synthetic data, the packaged MiniLM, d=16, one epoch)."""

import json

import numpy as np
import pytest
from scipy import stats

from configs import baselines_shared
from configs import default as default_config
from recg_jax import baselines
from recg_jax import pipeline
from recg_jax import results as results_lib


def _tiny_config():
  c = default_config.get_config()
  c.data.format = "synthetic"
  c.data.source = "Alpha"
  c.data.targets = ("Beta", "Gamma")
  c.data.synthetic.num_users = 60
  c.data.synthetic.num_items = 40
  c.data.max_len = 8
  c.text.max_tokens = 32
  c.encoder.bucket_sizes = (32,)
  c.model.hidden_dim = 16
  c.model.num_layers = 1
  c.train.batch_size = 32
  c.train.num_epochs = 1
  c.train.learning_rate = 3e-3
  c.train.checkpoint_every_steps = 0
  c.train.length_buckets = ()
  c.eval.length_buckets = ()
  c.eval.protocols = ("full", "sampled10")
  c.eval.num_sampled_negatives = 10
  c.eval.batch_size = 64
  c.experiment.name = "tiny_baselines"
  c.experiment.domains = ("Alpha", "Beta", "Gamma")
  c.experiment.sources = ("Alpha",)
  c.experiment.seeds = (0, 1)
  c.experiment.presets = ("text_knn", "sem", "text_mix")
  c.experiment.validation_domain = "Gamma"
  return c


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


def test_weight_is_chosen_on_the_validation_domain_only():
  key = lambda dom, setting: ("zero_shot", "S", dom, setting, "full", "ndcg@10")
  values = {key("V", "mix"): {0: 0.10, 1: 0.12}, key("V", "mix@w0"): {0: 0.13, 1: 0.13},
            key("V", "mix@w0.5"): {0: 0.12, 1: 0.12},
            # The reported target prefers weight 1 by far: it must not be looked at.
            key("T", "mix"): {0: 0.5, 1: 0.5}, key("T", "mix@w0"): {0: 0.0, 1: 0.0}}
  assert baselines.choose_weights(values, ["mix"], ["S"], "V", "full/ndcg@10") == {"mix": {"S": 0.0}}
  assert baselines.choose_weights(values, ["mix"], ["V"], "V", "full/ndcg@10") == {}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("baselines")
  config = _tiny_config()
  summary = baselines.run_study(config, workdir, command="tiny")
  return config, workdir, summary


def _metrics(workdir, rel, domain):
  (rec,) = [r for r in results_lib.read_records(workdir / rel / "results.json") if r["domain"] == domain]
  return rec["metrics"]


def test_study_runs_every_planned_run_and_tables_them(study):
  config, workdir, summary = study
  assert not summary["failed"]
  assert sorted(summary["ran"]) == sorted(["runs/Alpha/text_knn/seed0", "runs/Alpha/sem/seed0",
                                           "runs/Alpha/sem/seed1", "runs/Alpha/text_mix/seed0",
                                           "runs/Alpha/text_mix/seed1"])
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


def test_text_knn_needs_no_training_and_mix_at_weight_zero_is_text_knn(study):
  _, workdir, _ = study
  assert not (workdir / "runs/Alpha/text_knn/seed0/checkpoints").exists()
  knn = _metrics(workdir, "runs/Alpha/text_knn/seed0", "Beta")
  for seed in (0, 1):
    mix = _metrics(workdir, f"runs/Alpha/text_mix/seed{seed}", "Beta")
    for protocol in ("full", "sampled10"):
      for metric in ("recall@10", "ndcg@10"):
        assert mix[f"zero_shot_w0/{protocol}/{metric}"] == pytest.approx(
            knn[f"zero_shot/{protocol}/{metric}"], abs=1e-6)


def test_presets_apply_from_a_config_argument():
  config = default_config.apply_config_arg(default_config.get_config(), "preset=text_mix,source=Office")
  assert (config.model.variant, config.model.score_space, config.model.text_user, config.train.loss,
          config.data.source) == ("sem", "text", "mix", "softmax", "Office")
  with pytest.raises(ValueError, match="preset='nope'"):
    default_config.apply_config_arg(default_config.get_config(), "preset=nope")


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
