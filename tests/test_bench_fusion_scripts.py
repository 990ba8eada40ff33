"""bench/recbole_protocol.py and bench/fusion_temperature.py on a tiny finished fusion run: what they
recompute from a study's runs equals what the runs themselves computed, or the same evaluation under the
other protocol."""

import dataclasses
import importlib.util
import pathlib
import sys

import pytest

from recg_jax import config as config_lib
from recg_jax import finished_run
from recg_jax import fusion
from recg_jax import pipeline
from recg_jax.models import recommender

import conftest

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
  if str(_BENCH) not in sys.path:  # fusion_temperature imports recbole_protocol as its sibling
    sys.path.insert(0, str(_BENCH))
  spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory, tiny_problem):
  """A finished tiny fusion run over a finished tiny ID run, as the studies lay them out: its folder."""
  domains, tables = tiny_problem
  root = tmp_path_factory.mktemp("study")
  base = conftest.TINY_IN_DOMAIN_ID
  (trained,) = pipeline.train_and_transfer([conftest.tiny_config(**base)], [root / "id"], domains, tables)
  assert not isinstance(trained, Exception), getattr(trained, "traceback", trained)
  fused = conftest.tiny_config(**base, **conftest.TINY_FUSION, **{"fusion.trained_run": "../id"})
  (records,) = pipeline.train_and_transfer([fused], [root / "fusion"], domains, tables)
  assert not isinstance(records, Exception), getattr(records, "traceback", records)
  return root / "fusion"


@pytest.mark.slow
def test_recbole_protocol_rows_are_the_fusion_at_its_thetas_with_the_history_unmasked(
    fused_run, tiny_problem
):
  bench = _load("recbole_protocol")
  domains, tables = tiny_problem
  alpha = domains["Alpha"]
  rows = bench.seed_rows(fused_run, alpha, tables["Alpha"])
  masked_theta = fusion.read_fit(fused_run)["theta"]
  assert [rows[r]["theta"] for r in bench.ROWS[:3]] == [0.0, 1.0, masked_theta]
  config = _run_config(fused_run)
  params, _ = fusion.finished_trained_part(config, fused_run)
  unmasked = config_lib.override(_run_config(fused_run), {"eval.mask_history": False})
  fused = fusion.fused_on(
      unmasked, alpha, tables["Alpha"], recommender.build_model(config, alpha.num_items), params
  )
  assert rows[bench.ROWS[3]]["theta"] == fusion.fit(unmasked, fused, alpha).theta
  for row in bench.ROWS:
    want = fusion.evaluate_split(
        unmasked, dataclasses.replace(fused, theta=rows[row]["theta"]), alpha, "test"
    )
    for metric in bench.METRICS:
      assert rows[row][metric] == pytest.approx(want[metric], abs=1e-7), (row, metric)
  # Unmasked, the history competes with the target: never a better rank than masked, at theta 0.
  masked = fusion.evaluate_split(config, dataclasses.replace(fused, theta=0.0), alpha, "test")
  assert rows[bench.ROWS[0]]["full/ndcg@10"] <= masked["full/ndcg@10"] + 1e-7


@pytest.mark.slow
def test_fusion_temperature_at_the_presets_own_temperature_refits_the_runs_theta(fused_run, tiny_problem):
  bench = _load("fusion_temperature")
  domains, tables = tiny_problem
  rows = bench.seed_rows(fused_run, domains["Alpha"], tables["Alpha"], [0.2, 1.0])
  fitted = fusion.read_fit(fused_run)
  assert (rows["0.2"]["theta"], rows["0.2"]["valid_fused"]) == (fitted["theta"], fitted["valid_value"])
  assert rows["0.2"]["valid_text"] == fitted["tried"][0][1]
  # Another temperature is another text part, the rest of the preset kept.
  config = _run_config(fused_run)
  assert bench.text_part_at(config, domains["Alpha"], tables["Alpha"], 1.0).model.scorer == ("softmax", 1.0)
  assert fusion.text_part(config, domains["Alpha"], tables["Alpha"]).model.scorer == ("softmax", 0.2)


def _run_config(run_dir):
  return finished_run.config_and_records(run_dir)[0]
