"""Scoring in the frozen text space: text_knn, the table transform, and the text-space user towers."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from recg_jax.config import default as default_config
from recg_jax.models import recommender as recommender_lib
from recg_jax.models import scoring
from recg_jax.models import text_space
from recg_jax.models.recommender import init_variables
from recg_jax.models.recommender import Recommender
from recg_jax.training import step as step_lib

D, L, I, H = 8, 6, 15, 5
SEQ = np.array([[0, 0, 3, 7, 2, 9], [0, 0, 0, 0, 0, 4]], np.int32)


@pytest.fixture(scope="module")
def table():
  t = jax.random.normal(jax.random.PRNGKey(3), (I + 1, H))
  t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
  return t.at[0].set(0.0)


def _model(variant="sem", **kw):
  return Recommender(
      backbone=kw.pop("backbone", "sasrec"),
      variant=variant,
      num_items=I,
      hidden_dim=D,
      num_layers=1,
      num_heads=2,
      dropout=0.0,
      emb_dropout=0.0,
      max_len=L,
      **kw,
  )


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_history_mean_golden_values(table):
  mean = text_space.history_mean_positions(jnp.asarray(SEQ), table, 0.5)
  # User 0 at the last position: items 3, 7, 2, 9 with weights 1/8, 1/4, 1/2, 1 (newest weight 1).
  w = np.array([0.125, 0.25, 0.5, 1.0])
  expected = (w[:, None] * np.asarray(table)[[3, 7, 2, 9]]).sum(0) / w.sum()
  np.testing.assert_allclose(mean[0, -1], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(mean[1, -1], table[4], rtol=1e-6)  # one item: itself
  chex.assert_trees_all_close(mean[0, :2], jnp.zeros((2, H)))  # padding positions: nothing to average


def test_history_mean_decay_one_and_zero(table):
  seq = jnp.asarray(SEQ)
  plain = text_space.history_mean_positions(seq, table, 1.0)
  np.testing.assert_allclose(plain[0, -1], np.asarray(table)[[3, 7, 2, 9]].mean(0), rtol=1e-6, atol=1e-6)
  last = text_space.history_mean_positions(seq, table, 0.0)
  np.testing.assert_allclose(last[0, -1], table[9], rtol=1e-6)
  np.testing.assert_allclose(last[0, 3], table[7], rtol=1e-6)


def test_history_mean_is_causal(table):
  seq = jnp.asarray(SEQ[:1])
  changed = seq.at[0, -1].set(11)
  a = text_space.history_mean_positions(seq, table, 0.5)
  b = text_space.history_mean_positions(changed, table, 0.5)
  chex.assert_trees_all_close(a[:, :-1], b[:, :-1])
  assert not np.allclose(a[:, -1], b[:, -1])


def test_center_transform_uses_the_domains_own_rows(table):
  shifted = table.at[1:].add(3.0)  # the same items with a shared offset: centring removes it
  a = text_space.transform_table(table, "center")
  b = text_space.transform_table(shifted, "center")
  chex.assert_trees_all_close(a, b, atol=1e-5)
  chex.assert_trees_all_close(a[0], jnp.zeros(H))
  np.testing.assert_allclose(np.linalg.norm(a[1:], axis=-1), 1.0, rtol=1e-5)
  assert text_space.transform_table(table, "none") is not None
  with pytest.raises(ValueError, match="table_transform"):
    text_space.transform_table(table, "pca")
  tables = text_space.transform_tables({"A": np.asarray(table)}, "center")
  np.testing.assert_allclose(tables["A"], a, atol=1e-6)


def _cosines(t):
  return np.asarray(t[1:] @ t[1:].T)


def _items(seed: int = 0, n: int = 40, h: int = 6) -> jnp.ndarray:
  rows = np.random.default_rng(seed).normal(size=(n + 1, h)).astype(np.float32)
  rows[0] = 0.0
  return jnp.asarray(rows)


def test_standardize_ignores_each_dimensions_offset_and_scale():
  items = _items()
  scaled = items.at[1:].set(items[1:] * jnp.array([1.0, 5.0, 0.2, 3.0, 1.0, 0.5]) + 2.0)
  a = text_space.transform_table(items, "standardize")
  chex.assert_trees_all_close(a, text_space.transform_table(scaled, "standardize"), atol=1e-5)
  chex.assert_trees_all_close(a[0], jnp.zeros(6))
  assert not np.allclose(_cosines(a), _cosines(text_space.transform_table(scaled, "center")), atol=1e-2)


def test_whitening_ignores_any_invertible_linear_map_of_the_items():
  items = _items()
  mix = jnp.asarray(np.random.default_rng(1).normal(size=(6, 6)).astype(np.float32)) + 3 * jnp.eye(6)
  mapped = items.at[1:].set(items[1:] @ mix + 1.0)
  a = text_space.transform_table(items, "whiten", shrinkage=0.0)
  b = text_space.transform_table(mapped, "whiten", shrinkage=0.0)
  np.testing.assert_allclose(_cosines(a), _cosines(b), atol=1e-3)  # equal up to a rotation
  np.testing.assert_allclose(np.linalg.norm(a[1:], axis=-1), 1.0, rtol=1e-5)


def test_whitening_shrunk_far_comes_back_to_centring():
  items = _items()
  far = text_space.transform_table(items, "whiten", shrinkage=1e6)
  np.testing.assert_allclose(_cosines(far), _cosines(text_space.transform_table(items, "center")), atol=1e-4)
  with pytest.raises(ValueError, match="whiten_shrinkage"):
    text_space.transform_table(items, "whiten", shrinkage=-1.0)


def _anisotropic_items(seed: int, n: int, h: int = 48) -> np.ndarray:
  """n items (rows 1..n, row 0 padding) whose dimensions' standard deviations run from 0.2 to 3."""
  rows = np.random.default_rng(seed).normal(size=(n + 1, h)) * np.linspace(0.2, 3.0, h) + 0.5
  rows[0] = 0.0
  return rows.astype(np.float32)


@pytest.mark.parametrize("estimator", ["oas", "ledoit_wolf"])
@pytest.mark.parametrize("n", [20, 300])  # fewer items than dimensions, and more
def test_estimated_shrinkage_equals_sklearns(estimator, n):
  from sklearn import covariance  # pylint: disable=g-import-not-at-top

  items = _anisotropic_items(0, n)
  fitted = (covariance.OAS() if estimator == "oas" else covariance.LedoitWolf()).fit(
      items[1:].astype(np.float64)
  )
  got = float(text_space.estimated_shrinkage(jnp.asarray(items), estimator))
  np.testing.assert_allclose(got, fitted.shrinkage_, rtol=2e-4)


@pytest.mark.parametrize("estimator", ["oas", "ledoit_wolf"])
def test_estimated_shrinkage_falls_as_the_items_grow(estimator):
  """More items for the same 48 dimensions: less weight on the identity (mean over five draws)."""
  rho = [
      np.mean(
          [
              float(text_space.estimated_shrinkage(jnp.asarray(_anisotropic_items(s, n)), estimator))
              for s in range(5)
          ]
      )
      for n in (60, 200, 1000, 5000)
  ]
  assert rho[0] > 0.5 and rho[-1] < 0.02, rho
  assert all(a > b for a, b in zip(rho, rho[1:])), rho


@pytest.mark.parametrize("mode", ["whiten_oas", "whiten_lw"])
def test_estimated_whitening_centres_a_catalogue_with_no_more_items_than_dimensions(mode):
  for n in (12, 48):
    items = jnp.asarray(_anisotropic_items(6, n))
    assert float(text_space.whitening_shrinkage(items, mode)) == 1.0
    centred = text_space.transform_table(items, "center")
    np.testing.assert_allclose(
        _cosines(text_space.transform_table(items, mode)), _cosines(centred), atol=1e-5
    )
  assert float(text_space.whitening_shrinkage(jnp.asarray(_anisotropic_items(6, 49)), mode)) < 1.0


@pytest.mark.parametrize("mode", ["whiten_oas", "whiten_lw"])
def test_estimated_whitening_is_fixed_whitening_at_the_same_identity_weight(mode):
  """(1 - rho) C + rho mu I is (C + s mu I) / (1 + s) at s = rho / (1 - rho): the same whitened table."""
  items = jnp.asarray(_anisotropic_items(1, 80))
  rho = float(text_space.whitening_shrinkage(items, mode))
  assert 0.0 < rho < 1.0
  fixed = text_space.transform_table(items, "whiten", shrinkage=rho / (1.0 - rho))
  np.testing.assert_allclose(_cosines(text_space.transform_table(items, mode)), _cosines(fixed), atol=2e-4)


@pytest.mark.parametrize("mode", ["whiten_oas", "whiten_lw"])
def test_estimated_whitening_ignores_a_rotation_scale_and_offset_of_the_items(mode):
  items = jnp.asarray(_anisotropic_items(2, 60))
  rotation = jnp.asarray(np.linalg.qr(np.random.default_rng(3).normal(size=(48, 48)))[0].astype(np.float32))
  moved = items.at[1:].set(3.0 * items[1:] @ rotation - 2.0)
  a, b = text_space.transform_table(items, mode), text_space.transform_table(moved, mode)
  np.testing.assert_allclose(_cosines(a), _cosines(b), atol=2e-4)
  np.testing.assert_allclose(
      text_space.whitening_shrinkage(items, mode), text_space.whitening_shrinkage(moved, mode), rtol=1e-4
  )
  chex.assert_trees_all_close(a[0], jnp.zeros(48))
  np.testing.assert_allclose(np.linalg.norm(a[1:], axis=-1), 1.0, rtol=1e-5)


def test_estimated_whitening_reads_each_domains_own_rows():
  small, large = _anisotropic_items(4, 20), _anisotropic_items(5, 2000)
  tables = text_space.transform_tables({"S": small, "L": large}, "whiten_oas")
  np.testing.assert_allclose(
      tables["S"], text_space.transform_table(jnp.asarray(small), "whiten_oas"), atol=1e-6
  )
  np.testing.assert_allclose(
      tables["L"], text_space.transform_table(jnp.asarray(large), "whiten_oas"), atol=1e-6
  )
  with pytest.raises(ValueError, match="estimator"):
    text_space.estimated_shrinkage(jnp.asarray(small), "james_stein")
  with pytest.raises(ValueError, match="not a whitening"):
    text_space.whitening_shrinkage(jnp.asarray(small), "center")


def test_text_knn_has_no_parameters_and_scores_by_cosine(table):
  model = _model("text_knn")
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(SEQ), table)
  assert not jax.tree.leaves(variables)
  user = model.apply({"params": {}}, jnp.asarray(SEQ), table, False)
  items = model.apply({"params": {}}, table, method=Recommender.item_vectors)
  mean = text_space.history_mean_positions(jnp.asarray(SEQ), table, 0.5)[:, -1]
  chex.assert_trees_all_close(user, mean)
  scores = user @ items.T
  cosine = _unit(mean) @ table.T
  np.testing.assert_array_equal(np.argsort(-scores[:, 1:], axis=1), np.argsort(-cosine[:, 1:], axis=1))


@pytest.mark.parametrize("text_user", ["residual", "attention"])
def test_text_space_user_starts_as_text_knn(table, text_user):
  model = _model(score_space="text", text_user=text_user)
  variables = init_variables(model, jax.random.PRNGKey(1), table)
  user = model.apply(variables, jnp.asarray(SEQ), table, False)
  mean = text_space.history_mean_positions(jnp.asarray(SEQ), table, 0.5)[:, -1]
  chex.assert_trees_all_close(_unit(user), _unit(mean), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(user, axis=-1), 1 / 0.05, rtol=1e-5)  # 1 / text_temperature
  items = model.apply(variables, table, method=Recommender.item_vectors)
  chex.assert_trees_all_close(items[1:], table[1:])


def test_residual_readout_gets_the_first_gradient_and_no_nan_at_padding(table):
  """W_o starts at zero: the backbone gets no gradient at the first step, W_o does, and padded positions
  (u = 0 before normalising) give no NaN."""
  model = _model(score_space="text", text_user="residual")
  params = init_variables(model, jax.random.PRNGKey(2), table)["params"]

  def loss(p):
    hidden = model.apply({"params": p}, jnp.asarray(SEQ), table, False, method=Recommender.encode_positions)
    return jnp.sum(hidden**2 * jnp.arange(H)) + jnp.sum(hidden[:, :, 0])

  grads = jax.jit(jax.grad(loss))(params)  # one program: eager backward ops would compile one by one
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["encoder"]))
  assert float(jnp.abs(grads["readout"]["W_o"]["kernel"]).max()) > 0


def test_mix_scores_are_text_knn_plus_the_sem_score(table):
  model = _model(score_space="text", text_user="mix")
  variables = init_variables(model, jax.random.PRNGKey(4), table)
  seq = jnp.asarray(SEQ)
  user = model.apply(variables, seq, table, False)
  items = model.apply(variables, table, method=Recommender.item_vectors)
  assert user.shape == (2, H + D) and items.shape == (I + 1, H + D)
  assert model.output_dim(H) == H + D
  sem = _model("sem")
  sem_vars = {"params": {k: v for k, v in variables["params"].items() if k in ("items", "encoder")}}
  y = sem.apply(sem_vars, seq, table, False)
  sem_items = sem.apply(sem_vars, table, method=Recommender.item_vectors)
  mean = text_space.history_mean_positions(seq, table, 0.5)[:, -1]
  expected = (1 / 0.05) * _unit(mean) @ table.T + y @ sem_items.T
  chex.assert_trees_all_close(user @ items.T, expected, atol=1e-4, rtol=1e-5)
  ids = jnp.asarray([[3, 0, 5]])
  cand = model.apply(variables, ids, table, method=Recommender.candidate_vectors)
  chex.assert_trees_all_close(cand[0], items[jnp.asarray([3, 0, 5])], atol=1e-6)


def test_text_space_options_are_validated(table):
  seq = jnp.asarray(SEQ)
  for kw, match in [
      ({"variant": "id", "score_space": "text"}, "variant 'id' joins the text with"),
      ({"score_space": "latent"}, "score_space must be"),
      ({"score_space": "text", "text_user": "sum"}, "text_user must be"),
      ({"text_user": "mix"}, "needs config.model.score_space='text'"),
      ({"score_space": "text", "backbone": "bert4rec", "cloze": True}, "Cloze"),
  ]:
    kw = dict(kw)
    variant = kw.pop("variant", "sem")
    with pytest.raises(ValueError, match=match):
      _model(variant, **kw).init(jax.random.PRNGKey(0), seq, table)


def test_candidate_scoring_resolves_for_text_space():
  config = default_config.get_config()
  config.model.variant = "sem"
  config.model.score_space = "text"
  assert step_lib.candidate_scoring(config) == "gather"
  config.train.candidate_scores = "factored"
  with pytest.raises(ValueError, match="frozen rows"):
    step_lib.candidate_scoring(config)
  config.model.score_space = "projected"
  assert step_lib.candidate_scoring(config) == "factored"
  assert isinstance(config, ml_collections.ConfigDict)


@pytest.mark.parametrize("aggregate,temperature", [("max", 0.1), ("softmax", 0.1), ("softmax", 50.0)])
def test_multi_interest_text_knn_scores_as_its_definition(aggregate, temperature):
  """max: the best cosine of any history item; softmax: tau * log sum_t w_t exp(cos_t / tau) with the
  normalised recency weights (towards the weighted mean of the cosines as tau grows)."""
  rng = np.random.default_rng(0)
  table = rng.normal(size=(31, 8)).astype(np.float32)
  table[0] = 0
  table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-9)
  seq = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 7]], np.int32)
  config = default_config.get_config()
  config.model.variant, config.model.knn_aggregate, config.model.knn_temperature = (
      "text_knn",
      aggregate,
      temperature,
  )
  config.data.max_len = 5
  model = recommender_lib.build_model(config, 30)
  users = model.apply({"params": {}}, jnp.asarray(seq), jnp.asarray(table), False)
  got = np.asarray(scoring.score_matrix(users, jnp.asarray(table), model.scorer, jax.lax.Precision.HIGHEST))
  for b, row in enumerate(seq):
    history = [i for i in row if i > 0]
    weights = 0.5 ** np.arange(len(history))[::-1]
    weights /= weights.sum()
    cos = table[history] @ table.T
    want = (
        cos.max(0)
        if aggregate == "max"
        else temperature * np.log((weights[:, None] * np.exp(cos / temperature)).sum(0))
    )
    np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)
  if aggregate == "softmax" and temperature > 10:  # close to the weighted mean of the cosines
    mean = np.stack(
        [
            (0.5 ** np.arange(len(h))[::-1] / (0.5 ** np.arange(len(h))).sum()) @ (table[h] @ table.T)
            for h in ([3, 4, 5], [1, 2, 3, 4, 5], [7])
        ]
    )
    np.testing.assert_allclose(got, mean, atol=0.02)
