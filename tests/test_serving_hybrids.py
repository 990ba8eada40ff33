"""Serving the runs whose models learned their catalogue's items (SASRec-ID and the hybrids built on it):
their own catalogue in any order, scored as evaluation scores it; new items and exports refused plainly."""

import json

import numpy as np
import pytest
from test_serving import seed_cache

from recg_jax import config as config_lib
from recg_jax import errors
from recg_jax import evaluate
from recg_jax import fusion
from recg_jax import pipeline
from recg_jax import serving
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib

import conftest
from conftest import inputs_before_test
from conftest import read_jsonl
from conftest import write_jsonl

# AlphaFuse (preset `alphafuse`): text coordinates, half of them frozen (the tiny config's d is 16), ids in
# the other half.
_ALPHAFUSE = {"model.variant": "text_id", "model.text_id_frozen_dims": 8}


def _config(tiny_config, name: str):
  return tiny_config(
      **{
          **conftest.TINY_IN_DOMAIN_ID,
          **conftest.TINY_FUSION,
          "encoder.cache_only": True,
          "fusion.enabled": name == "fused",
          **(_ALPHAFUSE if name == "alphafuse" else {}),
      }
  )


@pytest.fixture(scope="module")
def id_runs(tmp_path_factory, tiny_problem):
  """{'plain': workdir, 'fused': workdir, 'alphafuse': workdir}: a tiny SASRec-ID on Alpha, the same fused
  with the text, and AlphaFuse's SASRec."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top

  domains, tables = tiny_problem
  out = {}
  for name in ("plain", "fused", "alphafuse"):
    workdir = tmp_path_factory.mktemp(name)
    (records,) = pipeline.train_and_transfer([_config(tiny_config, name)], [workdir], domains, tables)
    assert not isinstance(records, Exception), getattr(records, "traceback", records)
    out[name] = workdir
  return out


def _shuffled_catalogue(tmp_path, domain, extra=()):
  """Alpha's items as a JSONL catalogue in a shuffled order (plus `extra` ids)."""
  ids = list(domain.item_tokens[1:]) + list(extra)
  order = np.random.default_rng(0).permutation(len(ids))
  titles = dict(zip(domain.item_tokens[1:], domain.item_fields["title"][1:]))
  rows = [{"item_id": ids[i], "title": titles.get(ids[i], "a new item")} for i in order]
  return write_jsonl(tmp_path / "alpha.jsonl", rows)


def _serve(workdir, config, domain, table, tmp_path):
  """Lists over the whole shuffled catalogue for Alpha's test inputs; the catalogue's table in the cache."""
  path = _shuffled_catalogue(tmp_path, domain)
  catalogue = serving.read_catalogue(path, config)
  rows = np.array([list(domain.item_tokens).index(i) for i in catalogue.item_ids])
  seed_cache(workdir, config, catalogue, np.concatenate([table[:1], table[rows]]))
  users = write_jsonl(
      tmp_path / "users.jsonl", [{"user_id": u, "items": h} for u, h in inputs_before_test(domain).items()]
  )
  summary = serving.recommend_files(
      workdir,
      path,
      users,
      tmp_path / "recs.jsonl",
      top_k=domain.num_items,
      progress=False,
      log=lambda _: None,
  )
  return {r["user_id"]: r for r in read_jsonl(summary.out)}


def _served_ranks(lists, domain, split):
  ranks = {}
  for u, user in enumerate(domain.user_tokens):
    target = domain.item_tokens[split.targets_U[u]]
    if target in set(domain.item_tokens[domain.history(u)[:-1]]):
      continue  # evaluation keeps a re-bought target among its candidates; the lists leave it out
    scores = np.asarray(lists[user]["scores"], np.float32)
    mine = scores[lists[user]["items"].index(target)]
    ranks[u] = np.sum(scores > mine) + 0.5 * (np.sum(scores == mine) - 1)
  return ranks


@pytest.mark.parametrize("name", ["plain", "fused", "alphafuse"])
def test_a_run_that_learned_its_items_serves_its_catalogue_as_evaluation_ranks_it(
    name, id_runs, tiny_problem, tmp_path
):
  domains, tables = tiny_problem
  alpha, workdir = domains["Alpha"], id_runs[name]
  config = config_lib.from_record(json.loads((workdir / "results.json").read_text())["config"])
  run = serving.load(workdir, progress=False)
  split = types.leave_one_out(alpha, "test", int(config.data.max_len))
  model = recommender_lib.build_model(config, alpha.num_items)
  table = pipeline.model_table(config, tables["Alpha"]) if name == "alphafuse" else None
  trained = fusion.Part(model, run.params, table)
  if name == "fused":
    text = fusion.text_part(config, alpha, tables["Alpha"])
    scorer_of = fusion.Fused(text, trained, float(fusion.read_fit(workdir)["theta"]))
    want = evaluate.user_ranks(
        scorer_of.user_fn(),
        scorer_of.item_vectors(),
        split,
        alpha,
        config.eval,
        protocols=("full",),
        scorer=scorer_of.scorer(),
    )
  else:
    want = evaluate.user_ranks(
        trained.user_fn(), trained.item_vectors(), split, alpha, config.eval, protocols=("full",)
    )
  served = _served_ranks(_serve(workdir, config, alpha, tables["Alpha"], tmp_path), alpha, split)
  assert len(served) > 0.8 * alpha.num_users
  for u, rank in served.items():
    assert rank == want["full"][u], alpha.user_tokens[u]


def test_new_items_get_a_clear_answer(id_runs, tiny_problem, tmp_path):
  alpha = tiny_problem[0]["Alpha"]
  run = serving.load(id_runs["plain"], progress=False)
  catalogue = run.catalogue(_shuffled_catalogue(tmp_path, alpha, extra=["brand-new"]))
  with pytest.raises(errors.ConfigError, match="1 item.s. it never saw .first: 'brand-new'.*--method"):
    run.item_vectors(catalogue)


def test_an_export_of_a_fused_run_names_the_methods_that_export(id_runs):
  run = serving.load(id_runs["fused"], progress=False)
  with pytest.raises(errors.ConfigError, match="sums two scores.*--method=text_knn.*id_ce"):
    run.require_user_vectors()
  assert serving.load(id_runs["plain"], progress=False).has_user_vectors


def test_an_alphafuse_runs_exported_vectors_give_its_served_scores(id_runs, tiny_problem, tmp_path):
  domains, tables = tiny_problem
  alpha, workdir = domains["Alpha"], id_runs["alphafuse"]
  config = config_lib.from_record(json.loads((workdir / "results.json").read_text())["config"])
  lists = _serve(workdir, config, alpha, tables["Alpha"], tmp_path)
  run = serving.load(workdir, progress=False)
  catalogue = run.catalogue(tmp_path / "alpha.jsonl")
  histories = inputs_before_test(alpha)
  users = run.user_vectors(histories, catalogue)
  items = run.item_vectors(catalogue)
  column = {item: i for i, item in enumerate(catalogue.item_ids)}
  for u, user in enumerate(histories):
    row = lists[user]
    want = users[u] @ items[[column[i] for i in row["items"]]].T
    np.testing.assert_allclose(row["scores"], want, rtol=1e-4, atol=1e-4)
