"""The experiment grid (recg_jax/grid/, recg_jax/experiments.py): plan, aggregation, tables, resume, CLI.

One tiny grid (synthetic data, 3 domains x 40 items, the packaged MiniLM encoder, d=16, one layer, two
epochs) runs once per module, from the command line: ID, Sem and RecG on one source with two seeds, plus
one ablation and an alpha sweep point on one seed. Every end-to-end assertion reads that grid; they are
marked slow. The same plan also goes through the runner with made-up runs (no training, no embedding, a
few seconds), so that markers, resume, tables and figures are checked without the slow marker too.
"""

import csv
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import grid_shared
from recg_jax import cli
from recg_jax import pipeline
from recg_jax import results as results_lib
from recg_jax.config import default as default_config
from recg_jax.config import roles
from recg_jax.grid import figures
from recg_jax.grid import planning
from recg_jax.grid import runner
from recg_jax.grid import stats

from _grid_fakes import fake_runs
from _grid_fakes import made_up
import conftest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

_EXPECTED_RUNS = sorted(
    [f"runs/Alpha/sasrec-{v}/seed{s}" for v in ("id", "sem", "recg", "text_knn") for s in (0, 1)]
    + ["runs/Alpha/sasrec-recg-no_intra/seed0", "runs/Alpha/sasrec-recg-alpha0.01/seed0"]
)

# What results.md of the tiny grid holds, whatever the numbers.
_RESULTS_MD_NEEDLES = (
    "seeds: 0, 1 (ablations and alpha sweep: 0)",
    "machine: ",
    "synthetic data",
    "### Zero-shot, `full`, Recall@10 (%)",
    "### Zero-shot, `sampled10`, NDCG@10",
    "| target ← source | text_knn | sasrec Sem | sasrec RecG | gain | p | sasrec RecG w/o seq |",
    "### In-domain, `full`, NDCG@10",
    "| source | text_knn | sasrec ID | sasrec Sem | sasrec RecG |",
    "### Ablations, sasrec on Alpha, `full` (%; seeds 0;",
    "| no intra-domain term |",
    "| no sequence-level step |",
    "| sasrec-Sem |",
    "### Alpha sweep, sasrec-RecG on Alpha",
    "| 0.01 |",
    "| 0.001 (default) |",
    "| Alpha |",
    "`sampled10`: sampled: the target against 10",
)


# The tiny grid as a config file of the command line (conftest.get_config).
_CONFIG_FILE = f"{pathlib.Path(conftest.__file__).resolve()}:grid"


def _tiny_config():
  config = conftest.get_config("grid")
  config.lock()
  return config


def _cli(workdir, config_file, *flags):
  """The command line in a fresh process; it keeps compiled programs in <workdir>/cache/xla, so runs that
  differ only in their seed compile nothing."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
      [
          sys.executable,
          "-m",
          "recg_jax.experiments",
          f"--config={config_file}",
          f"--workdir={workdir}",
          *flags,
      ],
      cwd=_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
      check=False,
  )


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  """(workdir, config file, stdout) of the tiny grid, run once from the command line."""
  config_file = _CONFIG_FILE
  workdir = tmp_path_factory.mktemp("grid") / "wd"
  proc = _cli(workdir, config_file)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  return workdir, config_file, proc.stdout


def _records(workdir, relpath):
  return results_lib.read_records(workdir / relpath / "results.json")


def _metric(workdir, relpath, domain, key):
  (rec,) = [r for r in _records(workdir, relpath) if r["domain"] == domain and key in r["metrics"]]
  return rec["metrics"][key]


def _csv_rows(path):
  lines = [line for line in pathlib.Path(path).read_text().splitlines() if not line.startswith("#")]
  return list(csv.DictReader(lines))


# ----------------------------------------------------------------------------------------------------------
# Plan and run configs (no training).


def test_plan_of_the_shared_grid():
  config = grid_shared.get_config()
  specs = planning.plan_runs(config)
  paths = [s.relpath.as_posix() for s in specs]
  assert len(paths) == len(set(paths))
  # 3 sources x 3 backbones x {id, sem, recg} x 3 seeds; text_knn once per source and seed; 4 trained
  # ablations x 3 seeds (no_seq is read from the RecG runs); 5 alphas besides the default x 3 seeds.
  assert len(specs) == 81 + 9 + 12 + 15
  assert "runs/Games/gru4rec-id/seed2" in paths
  assert "runs/Scientific/sasrec-recg-no_intra/seed1" in paths
  assert "runs/Scientific/sasrec-recg-alpha0.05/seed0" in paths
  assert not any("no_seq" in p or "alpha0.001/" in p for p in paths)
  # Whole seeds first: every run of seed 0 comes before any of seed 1.
  main = [s for s in specs if not s.ablation]
  assert [s.seed for s in main] == sorted(s.seed for s in main)

  spec = next(s for s in specs if s.relpath.as_posix() == "runs/Office/gru4rec-recg/seed1")
  rc = planning.run_config(config, spec, planning.grid_domains(config))
  assert (rc.data.source, tuple(rc.data.targets), tuple(rc.data.auxiliary)) == (
      "Office",
      ("Scientific", "Games"),
      (),
  )
  assert (rc.model.backbone, rc.model.variant, rc.train.seed, rc.experiment.mode) == (
      "gru4rec",
      "recg",
      1,
      "zero_shot",
  )
  sign = next(s for s in specs if s.ablation == "printed_sign")
  rc = planning.run_config(config, sign, planning.grid_domains(config))
  assert rc.gen_loss.inter_sign == -1 and config.gen_loss.inter_sign == 1  # the grid config is untouched
  no_item = planning.run_config(
      config, next(s for s in specs if s.ablation == "no_item_loss"), planning.grid_domains(config)
  )
  assert not no_item.gen_loss.enabled and no_item.transfer.enabled and no_item.model.variant == "recg"
  alpha = next(s for s in specs if s.ablation == "alpha=0.0001")
  assert planning.run_config(config, alpha, planning.grid_domains(config)).gen_loss.alpha == 1e-4
  id_spec = next(s for s in specs if s.variant == "id")
  assert id_spec.mode == "in_domain"


def test_reduced_preset_and_bad_grids():
  reduced = grid_shared.get_config("reduced")
  # text_knn has no backbone: one run per source and seed, under the first backbone's name.
  assert [s.relpath.as_posix() for s in planning.plan_runs(reduced)] == [
      f"runs/{src}/{b}-{v}/seed{s}"
      for s in (0, 1, 2)
      for src in ("Office", "Scientific")
      for b in ("sasrec", "gru4rec")
      for v in ("sem", "recg", "text_knn")
      if not (v == "text_knn" and b == "gru4rec")
  ]
  assert reduced.model.hidden_dim == 64 and reduced.data.source == "Scientific"
  config = default_config.get_config()
  config.experiment.ablations = ("no_such_ablation",)
  with pytest.raises(ValueError, match="no_such_ablation"):
    planning.plan_runs(config)
  config = default_config.get_config()
  config.experiment.sources = ("Nowhere",)
  with pytest.raises(ValueError, match="Nowhere"):
    planning.plan_runs(config)


# ----------------------------------------------------------------------------------------------------------
# Aggregation against hand-computed values.


def _marker(setting, seed, metrics_by_domain, source="A", backbone="sasrec"):
  variant, _, ablation = setting.partition(":")
  records = [
      {
          "stage": "zero_shot" if d != source else "in_domain",
          "domain": d,
          "source": source,
          "backbone": backbone,
          "variant": variant,
          "seed": seed,
          "metrics": m,
          "extra": {},
      }
      for d, m in metrics_by_domain.items()
  ]
  return {
      "spec": {
          "source": source,
          "backbone": backbone,
          "variant": variant,
          "seed": seed,
          "ablation": ablation,
          "alpha": None,
      },
      "setting": setting,
      "relpath": f"runs/{source}/{backbone}-{variant}/seed{seed}",
      "records": records,
  }


def test_aggregate_mean_std_gain_and_paired_t_test():
  sem = [0.25, 0.27, 0.31]
  recg = [0.30, 0.34, 0.35]
  no_seq = [0.28, 0.30, 0.33]
  markers = []
  for seed in range(3):
    markers.append(_marker("sem", seed, {"B": {"zero_shot/full/recall@10": sem[seed]}}))
    markers.append(
        _marker(
            "recg",
            seed,
            {
                "B": {
                    "zero_shot/full/recall@10": recg[seed],
                    "zero_shot_no_seq/full/recall@10": no_seq[seed],
                },
                "A": {"test/full/recall@10": 0.5 + seed / 10, "valid/full/recall@10": 0.9},
            },
        )
    )
  markers.append(_marker("recg:no_intra", 0, {"B": {"zero_shot/full/recall@10": 0.2}}))
  aggs = stats.aggregate(stats.observations(markers))
  key = lambda setting, kind="zero_shot", d="B": (kind, "A", d, "sasrec", setting, "full", "recall@10")
  assert set(aggs) == {
      key("sem"),
      key("recg"),
      key("recg:no_seq"),
      key("recg:no_intra"),
      key("recg", "in_domain", "A"),
  }  # validation metrics are not tabled

  a = aggs[key("recg")]
  assert a["n"] == 3 and a["seeds"] == [0, 1, 2]
  assert a["mean"] == pytest.approx(0.33)
  # Sample std: deviations -0.03, 0.01, 0.02 -> sqrt(0.0014 / 2).
  assert a["std"] == pytest.approx(math.sqrt(0.0014 / 2))
  assert a["sem_mean"] == pytest.approx(0.83 / 3)
  assert a["gain_pct"] == pytest.approx(100 * (0.33 / (0.83 / 3) - 1))
  # Paired t: differences 0.05, 0.07, 0.04; mean 0.05333, sd 0.015275; t = 6.0474 with 2 degrees of
  # freedom, where the two-sided p-value is 1 - t / sqrt(2 + t^2).
  d = np.array([0.05, 0.07, 0.04])
  t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
  assert t == pytest.approx(6.0474, abs=1e-3)
  assert a["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
  assert a["n_paired"] == 3

  assert aggs[key("recg:no_seq")]["mean"] == pytest.approx(np.mean(no_seq))
  one = aggs[key("recg:no_intra")]
  assert one["n"] == 1 and one["std"] is None and one["p_value"] is None and one["n_paired"] == 1
  assert one["gain_pct"] == pytest.approx(100 * (0.2 / (0.83 / 3) - 1))
  base = aggs[key("sem")]
  assert base["gain_pct"] is None and base["p_value"] is None
  assert aggs[key("recg", "in_domain", "A")]["sem_mean"] is None  # no Sem run in-domain

  # A constant difference over seeds has no variance: p = 0 (not NaN).
  markers = [
      _marker(s, seed, {"B": {"zero_shot/full/ndcg@10": v + (0.1 if s == "recg" else 0.0)}})
      for seed, v in enumerate([0.2, 0.3])
      for s in ("sem", "recg")
  ]
  aggs = stats.aggregate(stats.observations(markers))
  (const,) = [v for k, v in aggs.items() if k[4] == "recg"]
  assert const["p_value"] == 0.0 and const["gain_pct"] == pytest.approx(40.0)

  with pytest.raises(ValueError, match="two values for seed 0"):
    stats.aggregate(stats.observations(markers + markers[:1]))


def test_ablation_scope_uses_only_ablation_seeds():
  markers = [
      _marker("recg", seed, {"B": {"zero_shot/full/recall@10": 0.1 * (seed + 1)}}) for seed in range(3)
  ]
  markers.append(_marker("recg:no_inter", 0, {"B": {"zero_shot/full/recall@10": 0.5}}))
  axes = {
      "seeds": (0, 1, 2),
      "ablation_seeds": (0,),
      "ablation_source": ("A",),
      "ablation_backbone": ("sasrec",),
  }
  main, ablation = stats.aggregate_grid(stats.observations(markers), axes)
  key = ("zero_shot", "A", "B", "sasrec", "recg", "full", "recall@10")
  assert main[key]["mean"] == pytest.approx(0.2) and main[key]["n"] == 3
  assert ablation[key]["mean"] == pytest.approx(0.1) and ablation[key]["n"] == 1


# ----------------------------------------------------------------------------------------------------------
# The tiny grid's plan through the runner, with runs that return made-up numbers instead of training.


def _no_embeddings(config, workdir, domains):
  del config, workdir
  return {name: np.zeros((d.num_items + 1, 8), np.float32) for name, d in domains.items()}


@pytest.fixture(scope="module")
def made_up_grid(tmp_path_factory):
  """(workdir, [(relpath, run config)] of every run, summary) of the tiny grid, run through the runner
  with made-up runs."""
  workdir = tmp_path_factory.mktemp("made_up_grid")
  calls = []
  with pytest.MonkeyPatch.context() as mp:
    fake_runs(mp, calls)
    mp.setattr(pipeline, "embed_domains", _no_embeddings)
    summary = runner.run_grid(_tiny_config(), workdir, command="(made up)", make_plots=False)
  return workdir, calls, summary


def test_runner_runs_every_planned_run_once_and_marks_it(made_up_grid):
  workdir, calls, summary = made_up_grid
  assert sorted(summary["ran"]) == _EXPECTED_RUNS
  assert summary["skipped"] == summary["failed"] == summary["missing"] == []
  assert sorted(relpath for relpath, _ in calls) == _EXPECTED_RUNS
  for relpath, config in calls:
    done = json.loads((workdir / relpath / "done.json").read_text())
    assert done["relpath"] == relpath and done["elapsed_s"] > 0 and "machine" in done
    assert done["fingerprint"] == roles.fingerprint(config)
    assert done["config"]["data"]["targets"] == [d for d in ("Alpha", "Beta", "Gamma") if d != "Alpha"]
  # Each run got the config its folder names.
  configs = dict(calls)
  assert configs["runs/Alpha/sasrec-recg-alpha0.01/seed0"].gen_loss.alpha == 0.01
  assert configs["runs/Alpha/sasrec-recg-no_intra/seed0"].gen_loss.use_intra is False
  id_config = configs["runs/Alpha/sasrec-id/seed1"]
  assert (id_config.experiment.mode, id_config.model.variant, id_config.train.seed) == ("in_domain", "id", 1)
  grid_meta = json.loads((workdir / "grid.json").read_text())
  assert sorted(grid_meta["planned"]) == _EXPECTED_RUNS and grid_meta["command"] == "(made up)"
  assert grid_meta["axes"]["ablation_seeds"] == [0] and "| Alpha |" in grid_meta["domain_table"]


def test_tables_of_made_up_runs(made_up_grid):
  workdir, _, _ = made_up_grid
  md = (workdir / "results.md").read_text()
  for needle in ("regenerate: `(made up)`", *_RESULTS_MD_NEEDLES, "## Data", "## Runs"):
    assert needle in md, needle
  assert "## Runs not finished" not in md
  # Beta ← Alpha, Recall@10: text_knn, then Sem, RecG, gain and p (2 seeds), and RecG without the
  # sequence-level step, every one from the made-up numbers.
  knn, sem, recg, no_seq = (
      [made_up(setting, "Beta", s, "full/recall@10") for s in (0, 1)]
      for setting in ("text_knn", "sem", "recg", "recg:no_seq")
  )
  # Paired t-test over two seeds (one degree of freedom): p = 1 - 2 atan(|t|) / pi.
  d = np.subtract(recg, sem)
  assert np.ptp(d) > 0
  p = 1 - 2 * math.atan(abs(d.mean() / (d.std(ddof=1) / math.sqrt(2)))) / math.pi
  cell = lambda v: f"{100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1):.2f}"
  section = md.split("### Zero-shot, `full`, Recall@10 (%)")[1].split("###")[0]
  (line,) = [l for l in section.splitlines() if l.startswith("| Beta ← Alpha |")]
  assert line.split(" | ")[1:] == [
      cell(knn),
      cell(sem),
      cell(recg),
      f"{100 * (np.mean(recg) / np.mean(sem) - 1):+.1f}%",
      f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}",
      cell(no_seq) + " |",
  ]
  assert "| mean gain over pairs |" in section

  # Each table also alone, with the same header and footnotes.
  assert sorted(p.name for p in (workdir / "tables").iterdir()) == [
      "ablations.md",
      "alpha.md",
      "in_domain.md",
      "zero_shot.md",
  ]
  alone = (workdir / "tables" / "in_domain.md").read_text()
  assert alone.startswith("# In-domain (as the paper's Table 4): tiny_grid")
  for needle in (
      "regenerate: `(made up)`",
      "machine: ",
      "seeds: 0, 1",
      "### In-domain, `full`, NDCG@10",
      "## Protocols",
  ):
    assert needle in alone, needle
  assert "### Zero-shot" not in alone and "### Ablations" not in alone
  table = alone.split("### In-domain, `full`, NDCG@10")[1].split("###")[0].split("## Protocols")[0]
  assert table.strip() in md


def test_csv_of_made_up_runs(made_up_grid):
  workdir, _, _ = made_up_grid
  text = (workdir / "results.csv").read_text()
  assert text.startswith("# regenerate: (made up)\n")
  assert "\n# seeds: 0 1; ablation seeds: 0\n" in text and "\n# machine: " in text
  rows = _csv_rows(workdir / "results.csv")
  by_key = {(r["scope"], r["kind"], r["domain"], r["setting"], r["protocol"], r["metric"]): r for r in rows}
  assert len(by_key) == len(rows)
  row = lambda *key: by_key[key]

  for protocol in ("full", "sampled10"):
    recg = [made_up("recg", "Beta", s, f"{protocol}/recall@10") for s in (0, 1)]
    sem = [made_up("sem", "Beta", s, f"{protocol}/recall@10") for s in (0, 1)]
    r = row("grid", "zero_shot", "Beta", "recg", protocol, "recall@10")
    assert r["n"] == "2" and r["seeds"] == "0 1"
    assert float(r["mean"]) == pytest.approx(np.mean(recg), rel=1e-5)
    assert float(r["std"]) == pytest.approx(np.std(recg, ddof=1), rel=1e-4)
    assert float(r["sem_mean"]) == pytest.approx(np.mean(sem), rel=1e-5)
    assert float(r["gain_pct_vs_sem"]) == pytest.approx(100 * (np.mean(recg) / np.mean(sem) - 1), rel=1e-4)
    no_seq = [made_up("recg:no_seq", "Beta", s, f"{protocol}/recall@10") for s in (0, 1)]
    assert float(row("grid", "zero_shot", "Beta", "recg:no_seq", protocol, "recall@10")["mean"]) == (
        pytest.approx(np.mean(no_seq), rel=1e-5)
    )
  ident = [made_up("id", "Alpha", s, "full/ndcg@10") for s in (0, 1)]
  assert float(row("grid", "in_domain", "Alpha", "id", "full", "ndcg@10")["mean"]) == pytest.approx(
      np.mean(ident), rel=1e-5
  )
  # The ablation scope averages seed 0 only.
  r = row("ablation", "zero_shot", "Gamma", "recg", "full", "ndcg@10")
  assert r["n"] == "1" and float(r["mean"]) == pytest.approx(
      made_up("recg", "Gamma", 0, "full/ndcg@10"), rel=1e-5
  )
  assert row("ablation", "zero_shot", "Gamma", "recg:alpha=0.01", "full", "ndcg@10")["n"] == "1"


@pytest.mark.slow
def test_figures_of_made_up_runs(made_up_grid, tmp_path):
  workdir, _, _ = made_up_grid
  config = _tiny_config()
  axes = planning.grid_axes(config)
  markers = runner.collect_markers(workdir)
  aggregates, ablation = stats.aggregate_grid(stats.observations(markers), axes)
  metrics = ("recall@10", "ndcg@10")
  mean_std = lambda v: (pytest.approx(np.mean(v)), pytest.approx(np.std(v, ddof=1)))
  bars = figures.pair_bar_data(aggregates, axes, "full", metrics)
  assert [pair for pair, _, _ in bars["sasrec"]["recall@10"]] == ["Beta←Alpha", "Gamma←Alpha"]
  _, sem, recg = bars["sasrec"]["ndcg@10"][1]
  assert sem == mean_std([made_up("sem", "Gamma", s, "full/ndcg@10") for s in (0, 1)])
  assert recg == mean_std([made_up("recg", "Gamma", s, "full/ndcg@10") for s in (0, 1)])
  series = figures.alpha_series(ablation, axes, "full", metrics, float(config.gen_loss.alpha))
  assert list(series) == ["Beta ← Alpha", "Gamma ← Alpha", "Alpha (in-domain)"]
  points = series["Beta ← Alpha"]["recall@10"]
  assert [alpha for alpha, _ in points] == [0.01, 0.001]  # 0.001 is gen_loss.alpha: the RecG run itself
  assert points[0][1] == (pytest.approx(made_up("recg:alpha=0.01", "Beta", 0, "full/recall@10")), None)
  assert points[1][1] == (pytest.approx(made_up("recg", "Beta", 0, "full/recall@10")), None)
  # Without embedding tables there is no item-space projection; the other figures are drawn.
  written = figures.write_plots(tmp_path, config, aggregates, ablation, markers, None, None)
  assert sorted(pathlib.Path(p).name for p in written) == [
      "alpha_full.png",
      "alpha_sampled10.png",
      "pairs_full.png",
      "pairs_sampled10.png",
  ]
  for p in written:
    assert pathlib.Path(p).parent == tmp_path / "plots"
    assert pathlib.Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_made_up_run_then_resume(made_up_grid, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "wd"
  shutil.copytree(made_up_grid[0], workdir)
  relpath = "runs/Alpha/sasrec-recg/seed1"
  mtimes = {p: (workdir / p / "done.json").stat().st_mtime_ns for p in _EXPECTED_RUNS if p != relpath}
  (workdir / relpath / "done.json").unlink()
  monkeypatch.setattr(pipeline, "embed_domains", _no_embeddings)

  # A run that raises is recorded and the grid goes on; the tables list it as not finished.
  calls = []
  fake_runs(monkeypatch, calls, fail={relpath})
  summary = runner.run_grid(_tiny_config(), workdir, command="(test)", make_plots=False)
  assert summary["failed"] == [relpath] and summary["missing"] == [relpath] and summary["ran"] == []
  assert len(summary["skipped"]) == len(_EXPECTED_RUNS) - 1 and [p for p, _ in calls] == [relpath]
  assert "FloatingPointError('injected')" in (workdir / relpath / "failed.json").read_text()
  md = (workdir / "results.md").read_text()
  assert f"## Runs not finished\n\n- `{relpath}`" in md and "regenerate: `(test)`" in md
  assert f"failed in this invocation: {relpath}" in md
  assert f"{relpath}: FAILED (FloatingPointError('injected'))" in capsys.readouterr().out

  # Started again, it runs only the unfinished run, clears its failure and leaves the finished ones alone.
  calls.clear()
  fake_runs(monkeypatch, calls)
  summary = runner.run_grid(_tiny_config(), workdir, command="(test)", make_plots=False)
  assert summary["ran"] == [relpath] and summary["failed"] == summary["missing"] == []
  assert [p for p, _ in calls] == [relpath] and not (workdir / relpath / "failed.json").exists()
  assert capsys.readouterr().out.count("skip (finished, done.json present)") == len(_EXPECTED_RUNS) - 1
  for p, mtime in mtimes.items():
    assert (workdir / p / "done.json").stat().st_mtime_ns == mtime, p
  assert "## Runs not finished" not in (workdir / "results.md").read_text()

  # aggregate_only runs nothing and tables what is finished.
  (workdir / relpath / "done.json").unlink()
  calls.clear()
  summary = runner.run_grid(_tiny_config(), workdir, aggregate_only=True, make_plots=False)
  assert calls == [] and summary["ran"] == [] and summary["missing"] == [relpath]
  assert f"- `{relpath}`" in (workdir / "results.md").read_text()


def test_changed_config_is_refused(made_up_grid, tmp_path, monkeypatch):
  workdir = tmp_path / "wd"
  shutil.copytree(made_up_grid[0], workdir)  # the refused invocation still writes grid.json
  monkeypatch.setattr(pipeline, "embed_domains", _no_embeddings)
  config = _tiny_config()
  with config.unlocked():
    config.train.learning_rate = 1e-2
  with pytest.raises(ValueError, match=r"different config .*train\.learning_rate"):
    runner.run_grid(config, workdir, aggregate_only=True, make_plots=False)


# ----------------------------------------------------------------------------------------------------------
# The tiny grid, end to end. Every test here needs the grid fixture (over a minute on two cores): all are
# slow.


@pytest.mark.slow
def test_grid_runs_every_planned_run_once(grid):
  workdir, _, out = grid
  assert sorted(re.findall(r"\[grid\] \d+/10 (\S+): done in", out)) == _EXPECTED_RUNS
  assert "skip (" not in out and "FAILED" not in out
  assert "[grid] 10 ran, 0 skipped, 0 failed, 0 missing" in out
  for relpath in _EXPECTED_RUNS:
    done = json.loads((workdir / relpath / "done.json").read_text())
    assert done["relpath"] == relpath and done["elapsed_s"] > 0
    assert (workdir / relpath / "results.json").is_file()
    # text_knn is never trained: no checkpoint.
    assert (workdir / relpath / "checkpoints" / "best").is_dir() == ("text_knn" not in relpath)
  # The two seeds of each trained setting (and RecG's ablations and alphas with them) trained together.
  recg = json.loads((workdir / "runs/Alpha/sasrec-recg/seed0/done.json").read_text())["group"]
  assert recg["size"] > 2 and "runs/Alpha/sasrec-recg/seed1" in recg["members"]
  sem = json.loads((workdir / "runs/Alpha/sasrec-sem/seed1/done.json").read_text())["group"]
  assert sem["members"] == ["runs/Alpha/sasrec-sem/seed0", "runs/Alpha/sasrec-sem/seed1"]
  # Data and embeddings are prepared once, in the grid folder, and never inside a run folder.
  assert sorted(p.name for p in (workdir / "cache" / "embeddings").iterdir()) == ["Alpha", "Beta", "Gamma"]
  assert not list((workdir / "runs").glob("**/cache"))
  # Each run trained what its folder says.
  done = json.loads((workdir / "runs/Alpha/sasrec-recg-alpha0.01/seed0/done.json").read_text())
  assert done["config"]["gen_loss"]["alpha"] == 0.01 and done["config"]["train"]["seed"] == 0
  done = json.loads((workdir / "runs/Alpha/sasrec-recg-no_intra/seed0/done.json").read_text())
  assert done["config"]["gen_loss"]["use_intra"] is False
  assert done["config"]["data"]["targets"] == ["Beta", "Gamma"]
  id_records = _records(workdir, "runs/Alpha/sasrec-id/seed1")
  assert [(r["stage"], r["domain"], r["variant"], r["seed"]) for r in id_records] == [
      ("in_domain", "Alpha", "id", 1)
  ]


@pytest.mark.slow
def test_csv_aggregates_match_the_runs(grid):
  workdir, _, _ = grid
  rows = _csv_rows(workdir / "results.csv")
  head = [line for line in (workdir / "results.csv").read_text().splitlines() if line.startswith("#")]
  assert any("seeds: 0 1; ablation seeds: 0" in h for h in head) and any("machine:" in h for h in head)

  def row(scope, kind, domain, setting, protocol, metric):
    (r,) = [
        r
        for r in rows
        if (r["scope"], r["kind"], r["domain"], r["setting"], r["protocol"], r["metric"])
        == (scope, kind, domain, setting, protocol, metric)
    ]
    return r

  for protocol in ("full", "sampled10"):
    key = f"zero_shot/{protocol}/recall@10"
    recg = [_metric(workdir, f"runs/Alpha/sasrec-recg/seed{s}", "Beta", key) for s in (0, 1)]
    sem = [_metric(workdir, f"runs/Alpha/sasrec-sem/seed{s}", "Beta", key) for s in (0, 1)]
    r = row("grid", "zero_shot", "Beta", "recg", protocol, "recall@10")
    assert r["n"] == "2" and r["seeds"] == "0 1"
    assert float(r["mean"]) == pytest.approx(np.mean(recg), rel=1e-5)
    assert float(r["std"]) == pytest.approx(np.std(recg, ddof=1), rel=1e-4, abs=1e-7)
    assert float(r["sem_mean"]) == pytest.approx(np.mean(sem), rel=1e-5)
    if np.mean(sem) > 0:
      assert float(r["gain_pct_vs_sem"]) == pytest.approx(100 * (np.mean(recg) / np.mean(sem) - 1), rel=1e-4)
    no_seq = [
        _metric(workdir, f"runs/Alpha/sasrec-recg/seed{s}", "Beta", f"zero_shot_no_seq/{protocol}/recall@10")
        for s in (0, 1)
    ]
    assert float(row("grid", "zero_shot", "Beta", "recg:no_seq", protocol, "recall@10")["mean"]) == (
        pytest.approx(np.mean(no_seq), rel=1e-5)
    )
  ident = [_metric(workdir, f"runs/Alpha/sasrec-id/seed{s}", "Alpha", "test/full/ndcg@10") for s in (0, 1)]
  assert float(row("grid", "in_domain", "Alpha", "id", "full", "ndcg@10")["mean"]) == pytest.approx(
      np.mean(ident), rel=1e-5
  )
  # The ablation scope averages seed 0 only.
  r = row("ablation", "zero_shot", "Gamma", "recg", "full", "ndcg@10")
  assert r["n"] == "1" and float(r["mean"]) == pytest.approx(
      _metric(workdir, "runs/Alpha/sasrec-recg/seed0", "Gamma", "zero_shot/full/ndcg@10"), rel=1e-5
  )
  assert row("ablation", "zero_shot", "Gamma", "recg:alpha=0.01", "full", "ndcg@10")["n"] == "1"


@pytest.mark.slow
def test_results_md_tables(grid):
  workdir, config_file, _ = grid
  md = (workdir / "results.md").read_text()
  command = f"python -m recg_jax.experiments --config={config_file} --workdir={workdir}"
  for needle in (f"regenerate: `{command}`", *_RESULTS_MD_NEEDLES):
    assert needle in md, needle
  # The Recall@10 row of Beta ← Alpha shows both seeds' mean ± std and the paired p-value.
  recg = [
      _metric(workdir, f"runs/Alpha/sasrec-recg/seed{s}", "Beta", "zero_shot/full/recall@10") for s in (0, 1)
  ]
  section = md.split("### Zero-shot, `full`, Recall@10 (%)")[1].split("###")[0]
  (line,) = [l for l in section.splitlines() if l.startswith("| Beta ← Alpha |")]
  assert f"{100 * np.mean(recg):.2f} ± {100 * np.std(recg, ddof=1):.2f}" in line
  assert [l for l in section.splitlines() if l.startswith("| Gamma ← Alpha |")]
  assert "| mean gain over pairs |" in section


@pytest.mark.slow
def test_each_table_also_alone_with_the_header(grid):
  workdir, config_file, _ = grid
  names = sorted(p.name for p in (workdir / "tables").iterdir())
  assert names == ["ablations.md", "alpha.md", "in_domain.md", "zero_shot.md"]
  alone = (workdir / "tables" / "in_domain.md").read_text()
  assert alone.startswith("# In-domain (as the paper's Table 4): tiny_grid")
  for needle in (
      f"regenerate: `python -m recg_jax.experiments --config={config_file}",
      "machine: ",
      "seeds: 0, 1",
      "### In-domain, `full`, NDCG@10",
      "## Protocols",
  ):
    assert needle in alone, needle
  assert "### Zero-shot" not in alone and "### Ablations" not in alone
  md = (workdir / "results.md").read_text()
  table = alone.split("### In-domain, `full`, NDCG@10")[1].split("###")[0].split("## Protocols")[0]
  assert table.strip() in md


@pytest.mark.slow
def test_plots_written(grid):
  workdir, _, out = grid
  plots = re.findall(r"\[plots\] wrote (\S+)", out)
  assert sorted(pathlib.Path(p).name for p in plots) == [
      "alpha_full.png",
      "alpha_sampled10.png",
      "items_pca.png",
      "pairs_full.png",
      "pairs_sampled10.png",
  ]
  assert all(pathlib.Path(p).parent == workdir / "plots" for p in plots)
  for p in plots:
    data = pathlib.Path(p).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.slow
def test_trained_params_reload_from_the_best_checkpoint(grid):
  workdir, _, _ = grid
  relpath = "runs/Alpha/sasrec-recg/seed0"
  done = json.loads((workdir / relpath / "done.json").read_text())
  config = figures.run_config_from_marker(done)
  table = np.load(workdir / "cache/embeddings/Alpha/embeddings.npy")
  model, params = figures.load_best_params(workdir / relpath, config, table.shape[0] - 1, table)
  vecs = figures.projected_items(model, params, {"Alpha": table}, max_items=1000, seed=0)["Alpha"]
  assert vecs.shape == (table.shape[0] - 1, 16) and np.isfinite(vecs).all()
  # W_p e + b_p and W_a e + b_a with the restored parameters, by hand.
  w_p, w_a = params["items"]["W_p"], params["items"]["W_a"]
  np.testing.assert_allclose(vecs, table[1:] @ w_p["kernel"] + w_p["bias"], rtol=1e-4, atol=1e-5)
  z = figures.projected_items(model, params, {"Alpha": table}, max_items=7, seed=0, space="align")["Alpha"]
  assert z.shape == (7, 16)
  rows = np.sort(np.random.default_rng(0).choice(np.arange(1, table.shape[0]), 7, replace=False))
  np.testing.assert_allclose(z, table[rows] @ w_a["kernel"] + w_a["bias"], rtol=1e-4, atol=1e-5)
  # The restored parameters are the best checkpoint's, not a fresh initialisation: they reproduce the
  # run's recorded in-domain test metric without the sequence-level step.
  from recg_jax import transfer
  from recg_jax.data import prepare

  domains = prepare.load_domains(config, workdir)
  metrics = transfer.evaluate_domain(config, model, params, table, domains["Alpha"], None, "test")
  assert metrics["full/ndcg@10"] == pytest.approx(
      _metric(workdir, relpath, "Alpha", "test_no_seq/full/ndcg@10"), rel=1e-5
  )


@pytest.mark.slow
def test_failed_run_then_resume_from_the_command_line(grid, monkeypatch):
  workdir, config_file, _ = grid
  relpath = "runs/Alpha/sasrec-recg/seed1"
  before = json.loads((workdir / relpath / "done.json").read_text())
  mtimes = {p: (workdir / p / "done.json").stat().st_mtime_ns for p in _EXPECTED_RUNS if p != relpath}
  (workdir / relpath / "done.json").unlink()

  # A run that raises is recorded and the grid goes on; the tables list it as not finished.
  fake_runs(monkeypatch, [], fail={relpath})
  summary = runner.run_grid(_tiny_config(), workdir, command="(test)", make_plots=False)
  assert summary["failed"] == [relpath] and summary["missing"] == [relpath] and summary["ran"] == []
  assert len(summary["skipped"]) == len(_EXPECTED_RUNS) - 1
  assert "FloatingPointError('injected')" in (workdir / relpath / "failed.json").read_text()
  md = (workdir / "results.md").read_text()
  assert f"- `{relpath}`" in md and "regenerate: `(test)`" in md
  monkeypatch.undo()

  # The command line runs only the unfinished run and reproduces its numbers: it was trained together with
  # the other seed (its group's checkpoint is elsewhere), and now trains alone, to the same result.
  proc = _cli(workdir, config_file)
  out = proc.stdout
  assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
  assert out.count("skip (finished, done.json present)") == len(_EXPECTED_RUNS) - 1
  assert out.count(": run (") == 1 and f"{relpath}: run (zero_shot" in out
  assert "[embeddings] Alpha: reused cache" in out and "[data] Alpha: reused cache" in out
  for p, mtime in mtimes.items():
    assert (workdir / p / "done.json").stat().st_mtime_ns == mtime, p
  after = json.loads((workdir / relpath / "done.json").read_text())
  assert not (workdir / relpath / "failed.json").exists()
  for rec_before, rec_after in zip(before["records"], after["records"], strict=True):
    assert rec_before["domain"] == rec_after["domain"]
    for k, v in rec_before["metrics"].items():
      assert rec_after["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
  md = (workdir / "results.md").read_text()
  assert f"regenerate: `python -m recg_jax.experiments --config={config_file} --workdir={workdir}`" in md
  assert "## Runs not finished" not in md

  # --aggregate_only trains nothing and rebuilds the same tables.
  (workdir / relpath / "done.json").unlink()
  proc = _cli(workdir, config_file, "--aggregate_only", "--noplots")
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert ": run (" not in proc.stdout and "[plots]" not in proc.stdout
  assert f"- `{relpath}`" in (workdir / "results.md").read_text()


def test_fields_added_later_keep_finished_runs_valid():
  config = grid_shared.get_config("reduced")
  stored = roles.fingerprint(config)
  del stored["model"]["merge_init"]  # a run recorded before the field existed
  assert roles.recorded_diff(stored, config, roles.fingerprint) == []
  changed = grid_shared.get_config("reduced")
  changed.model.merge_init = "identity"
  assert roles.recorded_diff(stored, changed, roles.fingerprint) == ["model.merge_init"]
  changed = grid_shared.get_config("reduced")
  changed.model.hidden_dim = 32
  assert roles.recorded_diff(stored, changed, roles.fingerprint) == ["model.hidden_dim"]


def test_shards_split_the_plan_without_overlap():
  config = grid_shared.get_config("scientific")
  specs = planning.plan_runs(config)
  assert len(specs) == 57  # 54 trained, and text_knn for each of three seeds
  shards = []
  for i in range(5):
    c = grid_shared.get_config("scientific")
    c.experiment.num_shards, c.experiment.shard_index = 5, i
    shards.append(planning.shard_of(specs, c))
  flat = [s.relpath for shard in shards for s in shard]
  assert sorted(flat) == sorted(s.relpath for s in specs)
  assert len(set(flat)) == len(flat)
  assert {len(s) for s in shards} == {11, 12}
  config.experiment.num_shards, config.experiment.shard_index = 2, 2
  with pytest.raises(ValueError, match="shard_index"):
    planning.shard_of(specs, config)


def test_recorded_command_drops_the_per_invocation_flags():
  command = cli.recorded_command(
      "recg_jax.experiments",
      [
          "--config=configs/grid_shared.py:scientific",
          "--workdir=w",
          "--config.experiment.shard_index=3",
          "--config.experiment.num_shards=8",
          "--aggregate_only",
          "--config.encoder.cache_only=True",
          "--plots=false",
          "--config.train.seed=1",
      ],
  )
  assert command == (
      "python -m recg_jax.experiments --config=configs/grid_shared.py:scientific "
      "--workdir=w --config.train.seed=1"
  )


def test_member_groups_of_the_reduced_scientific_grid():
  config = grid_shared.get_config("reduced_scientific")
  specs = planning.plan_runs(config)
  axes = planning.grid_axes(config)
  items = [(planning.run_config(config, s, axes["domains"]), s) for s in specs]
  names = lambda group: [s.relpath.as_posix().removeprefix("runs/Scientific/") for _, s in group]
  groups = [names(g) for g in planning.member_groups(items, 8)]
  assert sorted(n for g in groups for n in g) == sorted(names(items)) and len(groups) == 15
  # Seeds of one setting train together; RecG's ablations and alphas join its seeds up to the cap.
  assert ["sasrec-sem/seed0", "sasrec-sem/seed1", "sasrec-sem/seed2"] in groups
  recg = next(g for g in groups if "sasrec-recg/seed0" in g)
  assert len(recg) == 8 and "sasrec-recg-no_intra/seed0" in recg and "sasrec-recg-alpha0.05/seed0" in recg
  # text_knn trains nothing; an ablation that changes a shape (no L_gen at all) is its own program.
  assert ["sasrec-text_knn/seed0"] in groups and ["sasrec-recg-no_item_loss/seed0"] in groups
  assert not any("bert4rec" in a and "gru4rec" in b for g in groups for a in g for b in g)
  # A cap of 1: every run alone.
  assert all(len(g) == 1 for g in planning.member_groups(items, 1))


def test_a_resumed_groups_earlier_training_counts_once_and_a_failure_counts_nothing():
  resumed = [{"extra": {"resumed_wall_s": 12.5}}, {"extra": {"resumed_wall_s": 12.5}}]
  assert runner.earlier_training_s([resumed, resumed]) == 12.5  # one checkpoint for the group
  assert runner.earlier_training_s([[{"extra": {}}], [{"metrics": {}}]]) == 0.0
  assert runner.earlier_training_s([RuntimeError("failed")]) == 0.0
