"""recg_jax.serving and the recommend command's work (serving.recommend_files), on the session's tiny run.

The run folder here is the tiny trained run finished as `main` finishes a zero-shot run (best checkpoint,
results.json with the targets, the saved centres and W_f). Its tables are random, so its config reads
embeddings from the cache only (encoder.cache_only, as a run trained on tables embedded elsewhere), and
the tests put each catalogue's table into the run's cache in the cache's own format. The slow tier runs
the command itself on a run that embedded its synthetic items with MiniLM.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from recg_jax import encoders
from recg_jax import evaluate
from recg_jax import pipeline
from recg_jax import serving
from recg_jax import transfer
from recg_jax.config import serving as serving_config
from recg_jax.data import types
from recg_jax.data.errors import DataError
from recg_jax.encoders import embed
from recg_jax.models import recommender as recommender_lib
from recg_jax.models import text_space
from recg_jax.serving import output
from recg_jax.serving import run as run_lib
from recg_jax.serving import topk

from conftest import inputs_before_test
from conftest import read_jsonl
from conftest import run_module
from conftest import write_domain_files
from conftest import write_jsonl


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_trained_run, tiny_problem):
  """(config, workdir) of the session's tiny run, finished as a zero-shot run in a folder of its own."""
  config, result = tiny_trained_run
  config = config.copy_and_resolve_references()
  config.encoder.cache_only = True
  workdir = tmp_path_factory.mktemp("finished_run")
  shutil.copytree(result.workdir / "checkpoints", workdir / "checkpoints")
  domains, tables = tiny_problem
  pipeline.transfer_trained(config, workdir, domains, tables, result)
  return config, workdir


def catalogue_file(tmp_path, domain, name=None):
  """The domain's items as a JSONL catalogue (id and title), in the domain's item order."""
  rows = [{"item_id": i, "title": t} for i, t in zip(domain.item_tokens[1:], domain.item_fields["title"][1:])]
  return write_jsonl(tmp_path / f"{name or domain.name}.jsonl", rows)


def seed_cache(workdir, config, catalogue, table):
  """Puts `table` into the run's embedding cache as the catalogue's embeddings (manifest included)."""
  domain = run_lib.catalogue_domain(catalogue)
  folder = embed.cache_dir(workdir, domain.name)
  folder.mkdir(parents=True, exist_ok=True)
  manifest = embed.expected_manifest(
      config, domain, encoders.model_id(config.encoder), "", config.encoder.pooling, config.encoder.normalize
  )
  np.save(folder / "embeddings.npy", np.asarray(table, np.float32))
  (folder / "manifest.json").write_text(json.dumps(dict(manifest, shape=list(table.shape))))


@pytest.fixture
def beta_files(finished_run, tiny_problem, tmp_path):
  """(catalogue path, histories path) of target Beta's test inputs, its table in the run's cache."""
  config, workdir = finished_run
  domains, tables = tiny_problem
  path = catalogue_file(tmp_path, domains["Beta"])
  seed_cache(workdir, config, serving.read_catalogue(path, config), tables["Beta"])
  histories = write_jsonl(
      tmp_path / "users.jsonl",
      [{"user_id": u, "items": h} for u, h in inputs_before_test(domains["Beta"]).items()],
  )
  return path, histories


def evaluation_ranks(config, workdir, domain, table):
  """Evaluation's `full` ranks of the test targets, as pipeline.transfer_trained scores a target: the run's
  best parameters and saved sequence-level step, the table transformed as the pipeline does."""
  run = serving.load(workdir, progress=False)
  table = text_space.transform_tables({"t": table}, config.model.table_transform)["t"]
  model = recommender_lib.build_model(config, domain.num_items)
  split = types.leave_one_out(domain, "test", config.data.max_len)
  heads_fn = transfer.user_heads_fn(model, run.params, jax.numpy.asarray(table), run.seq_transfer)
  user_fn = lambda seq_BxL: heads_fn(seq_BxL)[transfer.main_head(run.seq_transfer)]
  items = transfer.item_vectors(model, run.params, table)
  return evaluate.user_ranks(user_fn, items, split, domain, config.eval, protocols=("full",))["full"], split


def test_full_lists_rank_each_test_item_as_evaluation_does(finished_run, tiny_problem, beta_files, tmp_path):
  config, workdir = finished_run
  domains, tables = tiny_problem
  beta = domains["Beta"]
  summary = serving.recommend_files(
      workdir, *beta_files, tmp_path / "recs.jsonl", top_k=beta.num_items, progress=False, log=lambda _: None
  )
  lists = {r["user_id"]: r for r in read_jsonl(summary.out)}
  want, split = evaluation_ranks(config, workdir, beta, tables["Beta"])
  compared = 0
  for u, user in enumerate(beta.user_tokens):
    target = beta.item_tokens[split.targets_U[u]]
    history = set(beta.item_tokens[beta.history(u)[:-1]])
    assert len(lists[user]["items"]) == beta.num_items - len(history)  # everything but the history
    if target in history:
      continue  # evaluation keeps a re-bought target among its candidates; the lists leave it out
    scores = np.asarray(lists[user]["scores"], np.float32)
    mine = scores[lists[user]["items"].index(target)]
    rank = np.sum(scores > mine) + 0.5 * (np.sum(scores == mine) - 1)
    assert rank == want[u], user
    compared += 1
  assert compared > 0.8 * beta.num_users


def test_lists_reproduce_the_runs_recorded_zero_shot_metrics(
    finished_run, tiny_problem, beta_files, tmp_path
):
  """Every ingredient as the run's own evaluation had it: parameters, saved centres and W_f, table."""
  _, workdir = finished_run
  beta = tiny_problem[0]["Beta"]
  summary = serving.recommend_files(
      workdir,
      *beta_files,
      tmp_path / "recs.jsonl",
      top_k=beta.num_items,
      keep_history=True,
      progress=False,
      log=lambda _: None,
  )
  lists = {r["user_id"]: r for r in read_jsonl(summary.out)}
  ranks = []
  for u, user in enumerate(beta.user_tokens):
    target = beta.item_tokens[beta.history(u)[-1]]
    masked = set(beta.item_tokens[beta.history(u)[:-1]]) - {target}  # evaluation's full-protocol mask
    scores = np.asarray([s for i, s in zip(lists[user]["items"], lists[user]["scores"]) if i not in masked])
    mine = lists[user]["scores"][lists[user]["items"].index(target)]
    ranks.append(np.sum(scores > mine) + 0.5 * (np.sum(scores == mine) - 1))
  recorded = {r["domain"]: r for r in json.loads((workdir / "results.json").read_text())["records"]}["Beta"]
  for name, value in evaluate.metrics_from_ranks(np.asarray(ranks), (5, 10)).items():
    assert value == pytest.approx(recorded["metrics"][f"zero_shot/full/{name}"], abs=1e-9), name


def test_exported_vectors_reproduce_the_scores(finished_run, beta_files, tmp_path):
  _, workdir = finished_run
  summary = serving.recommend_files(
      workdir,
      *beta_files,
      tmp_path / "recs.jsonl",
      top_k=5,
      export=tmp_path / "vectors",
      progress=False,
      log=lambda _: None,
  )
  folder = summary.export
  items, users = np.load(folder / "items.npy"), np.load(folder / "users.npy")
  item_ids = json.loads((folder / "item_ids.json").read_text())
  user_ids = json.loads((folder / "user_ids.json").read_text())
  histories = {r["user_id"]: set(r["items"]) for r in read_jsonl(beta_files[1])}
  scores = users @ items.T
  for record in read_jsonl(summary.out):
    row = scores[user_ids.index(record["user_id"])]
    np.testing.assert_allclose(
        [row[item_ids.index(i)] for i in record["items"]], record["scores"], rtol=1e-5, atol=1e-6
    )
    allowed = np.array([i not in histories[record["user_id"]] for i in item_ids])
    best = np.sort(row[allowed])[::-1][:5]
    np.testing.assert_allclose(record["scores"], best, rtol=1e-5, atol=1e-6)


def test_vectors_from_the_ranking_pass_equal_user_vectors(finished_run, beta_files):
  _, workdir = finished_run
  run = serving.load(workdir, progress=False)
  catalogue = run.catalogue(beta_files[0])
  histories = run.histories(beta_files[1], catalogue)
  recs, users = run.recommend_with_user_vectors(histories, k=5)
  np.testing.assert_array_equal(users, run.user_vectors(histories))
  np.testing.assert_array_equal(recs.item_ids, run.recommend(histories, k=5).item_ids)


def test_history_is_left_out_unless_kept(finished_run, tiny_problem):
  config, workdir = finished_run
  domains, tables = tiny_problem
  beta = domains["Beta"]
  run = serving.load(workdir, progress=False)
  catalogue = serving.Catalogue("beta", beta.item_tokens[1:], beta.item_text[1:], table=tables["Beta"])
  histories = run.histories(inputs_before_test(beta), catalogue)
  left_out = run.recommend(histories, k=beta.num_items).item_ids
  kept = run.recommend(histories, k=beta.num_items, exclude_history=False).item_ids
  for u in range(histories.num_users):
    history = set(catalogue.item_ids[histories.history(u) - 1])
    assert not history & set(left_out[u]) and history <= set(kept[u])
    assert [i for i in kept[u] if i not in history] == [i for i in left_out[u] if i is not None]
  assert config.model.variant == "recg" and run.head == "fused"


def test_length_buckets_change_no_user_vector(finished_run, tiny_problem):
  _, workdir = finished_run
  domains, tables = tiny_problem
  beta = domains["Beta"]
  catalogue = serving.Catalogue("beta", beta.item_tokens[1:], beta.item_text[1:], table=tables["Beta"])
  vectors = []
  for buckets in ((), (4, 6)):
    settings = serving_config.get_config()
    settings.length_buckets, settings.user_batch_size = buckets, 16
    run = serving.load(workdir, settings=settings, progress=False)
    vectors.append(run.user_vectors(inputs_before_test(beta), catalogue))
  np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5, atol=1e-6)


def test_text_knn_run_scores_by_its_history_mean_without_a_checkpoint(tiny_config, tiny_problem, tmp_path):
  config = tiny_config(**{"model.variant": "text_knn", "eval.length_buckets": ()})
  domains, tables = tiny_problem
  pipeline.evaluate_untrained(config, tmp_path, domains, tables)  # what `main` does for text_knn
  beta, table = domains["Beta"], tables["Beta"]
  run = serving.load(tmp_path, progress=False)
  catalogue = serving.Catalogue("beta", beta.item_tokens[1:], beta.item_text[1:], table=table)
  users = {"u": ["B3", "B4", "B5"]}
  item_ids, scores = run.recommend(users, catalogue, k=3)
  weights = 0.5 ** np.array([2.0, 1.0, 0.0])  # model.knn_decay = 0.5, age 0 = newest
  mean = weights @ table[[3, 4, 5]] / weights.sum()
  ref = table[1:] @ mean
  ref[[2, 3, 4]] = -np.inf  # the history
  best = np.argsort(-ref, kind="stable")[:3]
  assert list(item_ids[0]) == list(catalogue.item_ids[best])
  np.testing.assert_allclose(scores[0], ref[best], rtol=1e-5)


@pytest.mark.parametrize("block_rows", [1, 3, 8, 41])
def test_blocked_top_k_equals_the_full_matrix_top_k(block_rows):
  rng = np.random.default_rng(block_rows)
  # Small integers: every product and sum is exact in float32 whatever the block shape, and scores tie often.
  items = rng.integers(-2, 3, size=(41, 6)).astype(np.float32)
  items[0] = 0.0
  users = rng.integers(-2, 3, size=(5, 6)).astype(np.float32)
  hist = np.zeros((5, 4), np.int32)
  hist[:, :3] = rng.integers(1, 36, size=(5, 3))  # rows 36..40 are beyond num_items below
  num_items = np.int32(35)
  blocked = topk.blocked_top_k(users, topk.pad_blocks(items, block_rows), hist, num_items, k=7)
  full = topk.full_top_k(users, items, hist, num_items, k=7)
  np.testing.assert_array_equal(blocked[1], full[1])
  np.testing.assert_array_equal(blocked[0], full[0])
  # The reference: score descending, then row ascending, over rows 1..35 outside the history.
  scores = users @ items.T
  for b in range(5):
    rows = [r for r in range(1, 36) if r not in hist[b]]
    want = sorted(rows, key=lambda r: (-scores[b, r], r))[:7]
    np.testing.assert_array_equal(blocked[1][b], want)
  assert len(np.unique(scores)) < scores.size / 4  # ties were there to break


def test_slots_without_a_candidate_are_empty():
  items = np.eye(4, dtype=np.float32)  # rows 1..3 are items
  hist = np.array([[1, 2, 0]], np.int32)
  scores, rows = topk.blocked_top_k(
      np.ones((1, 4), np.float32), topk.pad_blocks(items, 2), hist, np.int32(3), k=3
  )
  np.testing.assert_array_equal(rows, [[3, 0, 0]])
  assert scores[0, 0] == 1.0 and np.all(np.isneginf(scores[0, 1:]))


def test_inter_histories_are_sorted_by_time_and_grouped_by_user(finished_run, tmp_path):
  config, _ = finished_run
  catalogue = serving.Catalogue("c", ["a", "b", "c"], ["t a", "t b", "t c"])
  inter = tmp_path / "users.inter"
  inter.write_text(
      "user_id:token\titem_id:token\ttimestamp:float\nu2\tc\t5\nu1\tb\t2\nu2\ta\t1\nu1\ta\t1\nu1\tc\t2\n"
  )
  histories = serving.read_histories(inter, catalogue, config)
  assert list(histories.user_ids) == ["u2", "u1"]
  assert [list(histories.history(u)) for u in range(2)] == [[1, 3], [1, 2, 3]]  # equal times: file order


def test_csv_catalogue_and_csv_lists(finished_run, tmp_path):
  config, workdir = finished_run
  path = tmp_path / "shop.csv"
  path.write_text('item_id,title,brand\nx1,"Red, large",Acme\nx2,Blue,\nx3,,Zed\n')
  catalogue = serving.read_catalogue(path, config)
  assert list(catalogue.item_text) == ["title: Red, large; brand: Acme", "title: Blue", "brand: Zed"]
  table = np.random.default_rng(0).normal(size=(4, 24)).astype(np.float32)
  table[0] = 0
  run = serving.load(workdir, progress=False)
  recs = run.recommend({"u": ["x2"]}, catalogue.with_table(table), k=2)
  out = output.write_recommendations(
      tmp_path / "recs.csv", np.array(["u"], object), recs.item_ids, recs.scores
  )
  lines = out.read_text().splitlines()
  assert lines[0] == "user_id,rank,item_id,score" and len(lines) == 3
  assert [line.split(",")[:3] for line in lines[1:]] == [
      ["u", "1", recs.item_ids[0, 0]],
      ["u", "2", recs.item_ids[0, 1]],
  ]
  assert set(recs.item_ids[0]) == {"x1", "x3"}


# ----------------------------------------------------------------------------------------------------------
# Bad input.


@pytest.fixture
def small_catalogue():
  return serving.Catalogue("c", ["a", "b", "c"], ["t a", "t b", "t c"])


def test_unknown_history_item_names_file_line_and_id(small_catalogue, tmp_path):
  path = write_jsonl(
      tmp_path / "h.jsonl", [{"user_id": "u1", "items": ["a"]}, {"user_id": "u2", "items": ["b", "zz"]}]
  )
  with pytest.raises(DataError, match=r"h\.jsonl, line 2: field 'items': user 'u2': item 'zz' is not in"):
    serving.read_histories(path, small_catalogue)


def test_skip_drops_unknown_items_and_counts_them(small_catalogue, tmp_path):
  path = write_jsonl(
      tmp_path / "h.jsonl", [{"user_id": "u1", "items": ["a", "zz", "c"]}, {"user_id": "u2", "items": ["yy"]}]
  )
  histories = serving.read_histories(path, small_catalogue, on_unknown="skip")
  assert list(histories.user_ids) == ["u1"] and list(histories.history(0)) == [1, 3]
  assert (histories.unknown_skipped, histories.users_dropped) == (2, 1)


def test_unknown_item_in_inter_file_names_its_line(finished_run, small_catalogue, tmp_path):
  config, _ = finished_run
  inter = tmp_path / "h.inter"
  inter.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\nu1\tqq\t2\nu2\tqq\t1\n")
  with pytest.raises(DataError, match=r"h\.inter, line 3: field 'item_id': item 'qq' is not in"):
    serving.read_histories(inter, small_catalogue, config)
  histories = serving.read_histories(inter, small_catalogue, config, on_unknown="skip")
  assert list(histories.user_ids) == ["u1"] and list(histories.history(0)) == [1]
  assert (histories.unknown_skipped, histories.users_dropped) == (2, 1)


def test_empty_history_is_an_error(small_catalogue, tmp_path):
  path = write_jsonl(
      tmp_path / "h.jsonl", [{"user_id": "u1", "items": ["a"]}, {"user_id": "u2", "items": []}]
  )
  with pytest.raises(DataError, match=r"line 2: field 'items': user 'u2' has an empty history"):
    serving.read_histories(path, small_catalogue)


def test_user_given_twice_is_an_error(small_catalogue, tmp_path):
  path = write_jsonl(
      tmp_path / "h.jsonl", [{"user_id": "u1", "items": ["a"]}, {"user_id": "u1", "items": ["b"]}]
  )
  with pytest.raises(DataError, match=r"line 2: field 'user_id': user 'u1' given twice \(first on line 1\)"):
    serving.read_histories(path, small_catalogue)


def test_catalogue_item_without_text_is_an_error(finished_run, tmp_path):
  config, _ = finished_run
  path = write_jsonl(
      tmp_path / "shop.jsonl",
      [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": " "}, {"item_id": "c", "brand": "C"}],
  )
  with pytest.raises(DataError, match=r"shop\.jsonl, line 2: field 'item_id': item 'b' has no text"):
    serving.read_catalogue(path, config)


def test_duplicate_catalogue_ids_are_an_error(finished_run, tmp_path):
  config, _ = finished_run
  path = tmp_path / "shop.item"
  path.write_text("item_id:token\ttitle:token_seq\na\tA\nb\tB\na\tA again\n")
  with pytest.raises(
      DataError,
      match=r"shop\.item, line 4: field 'item_id': item id 'a' appears twice " r"\(first on line 2\)",
  ):
    serving.read_catalogue(path, config)


def test_workdir_without_results_is_not_a_finished_run(tmp_path):
  with pytest.raises(serving.NotAFinishedRunError, match="has no results.json"):
    serving.load(tmp_path)


def test_recg_run_without_saved_transfer_is_not_a_finished_run(finished_run, tmp_path):
  _, workdir = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(transfer.TRANSFER_DIR))
  with pytest.raises(serving.NotAFinishedRunError, match="no saved centres and W_f"):
    serving.load(copy)


def test_run_without_checkpoint_is_not_a_finished_run(finished_run, tmp_path):
  _, workdir = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("checkpoints"))
  with pytest.raises(serving.NotAFinishedRunError, match="no best checkpoint"):
    serving.load(copy)


def test_cached_embeddings_of_another_width_are_an_error(finished_run, tiny_problem, tmp_path):
  config, workdir = finished_run
  domains, _ = tiny_problem
  path = catalogue_file(tmp_path, domains["Gamma"], name="gamma_wide")
  catalogue = serving.read_catalogue(path, config)
  seed_cache(workdir, config, catalogue, np.zeros((catalogue.num_items + 1, 32), np.float32))
  run = serving.load(workdir, progress=False)
  with pytest.raises(ValueError, match=r"embeddings are 32 wide .* reads 24-wide rows"):
    run.item_vectors(run.catalogue(path))


def test_a_failed_write_leaves_the_old_output_whole(tmp_path):
  path = tmp_path / "recs.jsonl"
  path.write_text("old\n")
  ids = np.array([["a"], [object()]], object)  # the second user's line cannot be written as JSON
  with pytest.raises(TypeError):
    output.write_recommendations(path, np.array(["u1", "u2"], object), ids, np.zeros((2, 1), np.float32))
  assert path.read_text() == "old\n"
  assert [p.name for p in tmp_path.iterdir()] == ["recs.jsonl"]


# ----------------------------------------------------------------------------------------------------------
# Slow tier: the command itself, on a run that embedded its synthetic items with the packaged MiniLM.


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_config):
  from recg_jax import pipeline  # pylint: disable=g-import-not-at-top
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.mktemp("pipeline_run")
  config = tiny_config(pipeline=True)
  pipeline.run(config, str(workdir))
  domains = prepare.load_domains(config, workdir, log=lambda _: None)
  return config, workdir, domains


@pytest.mark.slow
def test_command_lists_rank_test_items_as_evaluation_does(pipeline_run, tmp_path):
  config, workdir, domains = pipeline_run
  beta = domains["Beta"]
  catalogue, users = write_domain_files(tmp_path, beta)
  out, export = tmp_path / "recs.jsonl", tmp_path / "vectors"
  run_module(
      "recg_jax.recommend",
      f"--workdir={workdir}",
      f"--catalogue={catalogue}",
      f"--histories={users}",
      f"--top_k={beta.num_items}",
      f"--out={out}",
      f"--export={export}",
  )
  # The catalogue's texts are the domain's, so its embeddings are the run's own table, bit for bit.
  table = np.load(embed.cache_dir(workdir, "catalogue-beta") / "embeddings.npy")
  np.testing.assert_array_equal(table, np.load(embed.cache_dir(workdir, "Beta") / "embeddings.npy"))
  want, split = evaluation_ranks(config, workdir, beta, table)
  lists = {r["user_id"]: r for r in read_jsonl(out)}
  compared = 0
  for u, user in enumerate(beta.user_tokens):
    target = beta.item_tokens[split.targets_U[u]]
    if target in set(beta.item_tokens[beta.history(u)[:-1]]):
      continue
    scores = np.asarray(lists[user]["scores"], np.float32)
    mine = scores[lists[user]["items"].index(target)]
    assert np.sum(scores > mine) + 0.5 * (np.sum(scores == mine) - 1) == want[u], user
    compared += 1
  assert compared > 0.8 * beta.num_users
  users_UxD, items_NxD = np.load(export / "users.npy"), np.load(export / "items.npy")
  first = lists[beta.user_tokens[0]]
  item_ids = json.loads((export / "item_ids.json").read_text())
  np.testing.assert_allclose(
      [users_UxD[0] @ items_NxD[item_ids.index(i)] for i in first["items"]],
      first["scores"],
      rtol=1e-5,
      atol=1e-6,
  )
