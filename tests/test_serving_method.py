"""Serving with no run: a training-free method (serving.method, `recommend` without --workdir).

The default method scores a user by a recency-weighted soft maximum over their history's centred rows
(models/scoring.py), which is no dot product with one user vector: these tests hold its lists to
evaluation's ranks and to a NumPy reference, and check what it refuses.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from recg_jax import errors
from recg_jax import evaluate
from recg_jax import serving
from recg_jax import transfer
from recg_jax.config import serving as serving_config
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.models import text_space
from recg_jax.serving import topk

from conftest import inputs_before_test
from conftest import read_jsonl
from conftest import run_module
from conftest import write_domain_files


def method_evaluation_ranks(config, domain, table):
  """Evaluation's `full` ranks of the domain's test targets under a training-free config (as
  pipeline.evaluate_untrained scores a text_knn run): its scorer, the table transformed with its own
  statistics."""
  mc = config.model
  table = jnp.asarray(
      text_space.transform_table(jnp.asarray(table), str(mc.table_transform), float(mc.whiten_shrinkage))
  )
  model = recommender_lib.build_model(config, domain.num_items)
  split = types.leave_one_out(domain, "test", config.data.max_len)
  heads_fn = transfer.user_heads_fn(model, {}, table, None)
  ranks = evaluate.user_ranks(
      lambda seq_BxL: heads_fn(seq_BxL)["plain"],
      transfer.item_vectors(model, {}, table),
      split,
      domain,
      config.eval,
      protocols=("full",),
      scorer=model.scorer,
  )
  return ranks["full"], split


def assert_lists_rank_as_evaluation(lists, domain, split, want):
  """Each user's test target sits in their list (history left out) where evaluation ranks it."""
  compared = 0
  for u, user in enumerate(domain.user_tokens):
    target = domain.item_tokens[split.targets_U[u]]
    history = set(domain.item_tokens[domain.history(u)[:-1]])
    items, scores = lists[user]
    assert len(items) == domain.num_items - len(history)
    if target in history:
      continue  # evaluation keeps a re-bought target among its candidates; the lists leave it out
    scores = np.asarray(scores, np.float32)
    mine = scores[list(items).index(target)]
    assert np.sum(scores > mine) + 0.5 * (np.sum(scores == mine) - 1) == want[u], user
    compared += 1
  assert compared > 0.8 * domain.num_users


def test_default_method_lists_rank_each_test_item_as_evaluation_does(tiny_problem, tmp_path):
  domains, tables = tiny_problem
  beta = domains["Beta"]
  run = serving.method(cache_root=tmp_path, progress=False)
  assert run.scorer == ("softmax", 0.2) and not run.has_user_vectors
  catalogue = serving.Catalogue("beta", beta.item_tokens[1:], beta.item_text[1:], table=tables["Beta"])
  recs = run.recommend(inputs_before_test(beta), catalogue, k=beta.num_items)
  lists = {}
  for i, user in enumerate(beta.user_tokens):
    listed = [item is not None for item in recs.item_ids[i]]  # empty slots: history left out
    lists[user] = (recs.item_ids[i][listed], recs.scores[i][listed])
  want, split = method_evaluation_ranks(run.config, beta, tables["Beta"])
  assert_lists_rank_as_evaluation(lists, beta, split, want)


@pytest.mark.parametrize("block_rows", [3, 32])
def test_blocked_top_k_under_a_soft_maximum_equals_numpy(block_rows):
  rng = np.random.default_rng(block_rows)
  items = rng.normal(size=(23, 5)).astype(np.float32)
  items[0] = 0.0
  rows_BxTxD = rng.normal(size=(3, 4, 5)).astype(np.float32)
  weights_BxT = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]], np.float32)
  with np.errstate(divide="ignore"):
    log_w_BxT = np.log(weights_BxT)  # -inf marks padding, as text_space.history_rows writes it
  user = np.concatenate([rows_BxTxD, log_w_BxT[..., None]], axis=-1)
  hist = np.array([[1, 2], [0, 0], [5, 0]], np.int32)
  scores, rows = topk.blocked_top_k(
      user, topk.pad_blocks(items, block_rows), hist, np.int32(22), k=6, scorer=("softmax", 0.2)
  )
  ref_BxN = 0.2 * special.logsumexp(log_w_BxT[:, :, None] + rows_BxTxD @ items.T / 0.2, axis=1)
  for b in range(3):
    candidates = [r for r in range(1, 23) if r not in hist[b]]
    best = sorted(candidates, key=lambda r: -ref_BxN[b, r])[:6]
    np.testing.assert_array_equal(rows[b], best)
    np.testing.assert_allclose(scores[b], ref_BxN[b, best], rtol=1e-5, atol=1e-6)


def test_a_method_that_trains_is_refused(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"'sem' trains a model .* training-free methods are"):
    serving.method("sem", cache_root=tmp_path)


def test_exporting_a_multi_interest_method_fails_before_any_work(tmp_path):
  out = tmp_path / "recs.jsonl"
  with pytest.raises(errors.ConfigError, match="no user vectors"):
    serving.recommend_files(
        None,
        tmp_path / "missing.jsonl",  # never read: the export is refused first
        tmp_path / "missing_users.jsonl",
        out,
        export=tmp_path / "vectors",
        cache_root=tmp_path,
        progress=False,
        log=lambda _: None,
    )
  assert not out.exists()


def test_a_run_and_a_method_together_are_refused(tmp_path):
  with pytest.raises(errors.ConfigError, match="not both"):
    serving.recommend_files(
        tmp_path, "c.jsonl", "u.jsonl", tmp_path / "r.jsonl", method="text_knn", log=lambda _: None
    )


# ----------------------------------------------------------------------------------------------------------
# Slow tier: the command with no run, its catalogue embedded with the packaged MiniLM.


@pytest.mark.slow
def test_command_without_a_run_serves_the_default_method(tiny_config, tmp_path):
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top

  beta = prepare.load_domains(tiny_config(pipeline=True), tmp_path / "data", log=lambda _: None)["Beta"]
  catalogue, users = write_domain_files(tmp_path, beta)
  out, cache = tmp_path / "recs.jsonl", tmp_path / "cache_home"
  proc = run_module(
      "recg_jax.recommend",
      f"--catalogue={catalogue}",
      f"--histories={users}",
      f"--top_k={beta.num_items}",
      f"--out={out}",
      RECG_CACHE_DIR=str(cache),
  )
  assert f"method {serving_config.DEFAULT_METHOD} (no training)" in proc.stdout
  table = np.load(embed.cache_dir(cache, "catalogue-beta") / "embeddings.npy")  # under $RECG_CACHE_DIR
  run = serving.method(cache_root=cache, progress=False)
  want, split = method_evaluation_ranks(run.config, beta, table)
  lists = {r["user_id"]: (r["items"], r["scores"]) for r in read_jsonl(out)}
  assert_lists_rank_as_evaluation(lists, beta, split, want)
