"""Recommenders that join text and interactions: fused scorers (models/scoring.py), the text coordinates and
the prefix text scores they read (models/text_hybrid.py), the 'text_id' items (AlphaFuse, text-initialised
ids), ids on top of the text ('offset'), and the late fusion fitted on validation (recg_jax/fusion.py)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import config as config_lib
from recg_jax import errors
from recg_jax import evaluate as evaluate_lib
from recg_jax import fusion
from recg_jax import pipeline
from recg_jax.config import presets
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.models import scoring
from recg_jax.models import text_hybrid
from recg_jax.models import text_space

import conftest

PREC = jax.lax.Precision.HIGHEST


def _rows(seq_BxL, table, decay=0.5):
  return text_space.history_rows(jnp.asarray(seq_BxL), jnp.asarray(table), decay)


def test_standardised_parts_leave_out_the_padding_column_and_forget_each_parts_scale():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(3, 9)).astype(np.float32)
  s[:, 0] = 1e6  # the padding column must not move the statistics
  z = np.asarray(scoring.standardize_rows(jnp.asarray(s)))
  np.testing.assert_allclose(z[:, 1:].mean(axis=1), 0.0, atol=1e-6)
  np.testing.assert_allclose(z[:, 1:].std(axis=1), 1.0, atol=1e-5)
  users = (
      jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
      jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
  )
  items = (
      jnp.asarray(rng.normal(size=(9, 4)), jnp.float32),
      jnp.asarray(rng.normal(size=(9, 5)), jnp.float32),
  )
  fused = scoring.fuse((scoring.DOT, scoring.DOT), (0.3, 0.7), standardize=True)
  base = scoring.score_matrix(users, items, fused, PREC)
  scaled = scoring.score_matrix((users[0] * 50.0, users[1]), items, fused, PREC)
  np.testing.assert_allclose(base, scaled, atol=1e-5)
  alone = scoring.standardize_rows(users[1] @ items[1].T)
  np.testing.assert_allclose(
      scoring.score_matrix(users, items, scoring.fuse((scoring.DOT,) * 2, (0.0, 1.0), True), PREC),
      alone,
      atol=1e-5,
  )
  # A constant row (a part that tells the items apart for nobody) adds nothing.
  flat = scoring.score_matrix((jnp.zeros((3, 4)), users[1]), items, fused, PREC)
  np.testing.assert_allclose(flat, 0.7 * alone, atol=1e-5)


def test_a_weight_grid_ranks_each_weighting_as_its_own_scorer(tiny_problem, tiny_config):
  domains, tables = tiny_problem
  alpha, table = domains["Alpha"], jnp.asarray(tables["Alpha"])
  config = tiny_config()
  rows = types.leave_one_out(alpha, "test", int(config.data.max_len))
  rng = np.random.default_rng(1)
  id_items = jnp.asarray(rng.normal(size=(alpha.num_items + 1, 6)), jnp.float32).at[0].set(0.0)
  bag = jnp.asarray(rng.normal(size=(alpha.num_items + 1, 6)), jnp.float32)

  def user_fn(seq):  # an ID part: each user the sum of a random vector per history item
    return {"": (_rows(seq, table), jnp.take(bag, seq, axis=0).sum(axis=1))}

  grid = [(1.0, 0.0), (0.6, 0.4), (0.0, 1.0)]
  parts = (("softmax", 0.2), scoring.DOT)
  ranks = evaluate_lib.head_ranks(
      user_fn,
      (table, id_items),
      rows,
      alpha,
      config.eval,
      scorer=scoring.fuse(parts, (1, 1), True),
      weight_grid=grid,
  )[""]
  for k, weights in enumerate(grid):
    alone = evaluate_lib.head_ranks(
        user_fn, (table, id_items), rows, alpha, config.eval, scorer=scoring.fuse(parts, weights, True)
    )
    for name, ranks_UxK in ranks.items():
      chex.assert_shape(ranks_UxK, (alpha.num_users, len(grid)))
      np.testing.assert_array_equal(ranks_UxK[:, k], alone[""][name])


def test_text_coordinates_are_the_whitened_leading_principal_directions():
  rng = np.random.default_rng(2)
  scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
  basis, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  table = np.zeros((401, 6), np.float32)
  table[1:] = (rng.normal(size=(400, 6)) * scales) @ basis.T + 3.0  # any offset: the items are centred
  coords = text_hybrid.text_coordinates(table, 3, scale=2.0, shrinkage=0.0)
  chex.assert_shape(coords, (401, 3))
  np.testing.assert_array_equal(coords[0], 0.0)
  np.testing.assert_allclose(np.cov(coords[1:].T, bias=True), 4.0 * np.eye(3), atol=1e-3)
  # The first column follows the direction of largest variance (basis column 0), up to its sign.
  along = (table[1:] - table[1:].mean(axis=0)) @ basis[:, 0]
  assert abs(np.corrcoef(coords[1:, 0], along)[0, 1]) > 0.999
  with pytest.raises(errors.ConfigError, match="hidden_dim"):
    text_hybrid.text_coordinates(table, 7)


@pytest.mark.parametrize("aggregate", ["mean", "max", "softmax"])
def test_prefix_text_scores_are_text_knns_scores_of_each_prefix(aggregate):
  rng = np.random.default_rng(3)
  table = rng.normal(size=(12, 5)).astype(np.float32)
  table[0] = 0.0
  seq = np.array([[0, 0, 3, 7, 1, 9], [0, 0, 0, 0, 0, 4], [2, 5, 5, 8, 11, 6]], np.int32)
  got = np.asarray(text_hybrid.prefix_knn_scores(jnp.asarray(seq), table, table, 0.6, aggregate, 0.3))
  chex.assert_shape(got, (3, 6, 12))
  model = recommender_lib.Recommender(
      variant="text_knn", num_items=11, max_len=6, knn_decay=0.6, knn_aggregate=aggregate, knn_temperature=0.3
  )
  for t in range(6):
    prefix = np.concatenate([np.zeros((3, 5 - t), np.int32), seq[:, : t + 1]], axis=1)  # right-aligned
    user = model.apply({}, jnp.asarray(prefix), jnp.asarray(table))
    want = np.asarray(scoring.score_matrix(user, jnp.asarray(table), model.scorer, PREC))
    real = seq[:, : t + 1].max(axis=1) > 0
    np.testing.assert_allclose(got[real, t], want[real], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[~real, t], 0.0)  # nothing seen yet


def _text_id_model(frozen):
  return recommender_lib.Recommender(
      variant="text_id", num_items=10, hidden_dim=8, num_layers=1, max_len=6, text_id_frozen_dims=frozen
  )


def test_text_id_items_start_at_the_text_and_learn_only_their_trailing_columns():
  rng = np.random.default_rng(4)
  table = jnp.asarray(text_hybrid.text_coordinates(rng.normal(size=(11, 12)).astype(np.float32), 8))
  model = _text_id_model(frozen=3)
  params = recommender_lib.init_variables(model, jax.random.key(0), table)["params"]
  items = model.apply({"params": params}, table, method=recommender_lib.Recommender.item_vectors)
  np.testing.assert_allclose(items, table.at[0].set(0.0), atol=1e-6)
  ids = jnp.asarray([[3, 0], [10, 1]])
  np.testing.assert_array_equal(
      model.apply({"params": params}, ids, table, method=recommender_lib.Recommender.candidate_vectors),
      items[ids],
  )

  def loss(p):
    return jnp.sum(model.apply({"params": p}, table, method=recommender_lib.Recommender.item_vectors) ** 2)

  grads = jax.grad(loss)(params)["items"]["id_offset"]["embedding"]
  chex.assert_shape(grads, (11, 5))
  assert np.abs(np.asarray(grads[1:])).min() > 0
  moved = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))
  after = model.apply({"params": moved}, table, method=recommender_lib.Recommender.item_vectors)
  np.testing.assert_array_equal(after[:, :3], items[:, :3])  # the frozen text never moves
  assert not np.allclose(after[1:, 3:], items[1:, 3:])


def _offset_model():
  return recommender_lib.Recommender(
      variant="id",
      num_items=11,
      hidden_dim=8,
      num_layers=1,
      max_len=6,
      score_space="text",
      text_user="offset",
      knn_aggregate="softmax",
      knn_temperature=0.2,
  )


def test_ids_on_top_of_the_text_rank_as_the_scaled_text_score_plus_the_id_score():
  rng = np.random.default_rng(5)
  table = jnp.asarray(
      text_space.transform_table(jnp.asarray(rng.normal(size=(12, 6)), jnp.float32), "center")
  )
  model = _offset_model()
  params = recommender_lib.init_variables(model, jax.random.key(1), table)["params"]
  params = {**params, "knn_log_scale": jnp.float32(np.log(7.0))}
  seq = jnp.asarray([[0, 2, 5, 9, 3, 1], [0, 0, 0, 4, 4, 8]])
  user = model.apply({"params": params}, seq, table)
  items = model.apply({"params": params}, table, method=recommender_lib.Recommender.item_vectors)
  served = scoring.score_matrix(user, items, model.scorer, PREC)
  offset = model.apply({"params": params}, seq, table, method=recommender_lib.Recommender.text_offset_logits)
  hidden = model.apply({"params": params}, seq, table, method=recommender_lib.Recommender.encode_positions)
  logits = offset[:, -1] + hidden[:, -1] @ items[1].T  # what training's softmax reads at the last position
  np.testing.assert_allclose(7.0 * served, logits, rtol=1e-4, atol=1e-4)


def test_ids_on_top_of_the_text_train_the_ids_and_the_scale_and_never_the_text():
  rng = np.random.default_rng(6)
  table = jnp.asarray(rng.normal(size=(12, 6)), jnp.float32).at[0].set(0.0)
  model = _offset_model()
  params = recommender_lib.init_variables(model, jax.random.key(2), table)["params"]
  seq = jnp.asarray([[0, 2, 5, 9, 3, 1]])

  def loss(p, t):
    offset = model.apply({"params": p}, seq, t, method=recommender_lib.Recommender.text_offset_logits)
    hidden = model.apply({"params": p}, seq, t, method=recommender_lib.Recommender.encode_positions)
    _, items = model.apply({"params": p}, t, method=recommender_lib.Recommender.item_vectors)
    return -jax.nn.log_softmax(offset + hidden @ items.T, axis=-1)[0, :, 7].sum()

  g_params, g_table = jax.grad(loss, argnums=(0, 1))(params, table)
  np.testing.assert_array_equal(g_table, 0.0)
  assert abs(float(g_params["knn_log_scale"])) > 0
  assert np.abs(np.asarray(g_params["items"]["item_embedding"]["embedding"])).max() > 0
  with pytest.raises(errors.ConfigError, match="softmax"):
    model.apply({"params": params}, seq, table, method=recommender_lib.Recommender.candidate_vectors)


def test_an_id_model_joins_the_text_only_through_mix_or_offset():
  for text_user in ("readout", "attention"):
    with pytest.raises(errors.ConfigError, match="text_user"):
      recommender_lib.Recommender(variant="id", num_items=5, score_space="text", text_user=text_user).init(
          jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.zeros((6, 3))
      )
  with pytest.raises(errors.ConfigError, match="offset"):
    recommender_lib.Recommender(variant="sem", num_items=5, score_space="text", text_user="offset").init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.zeros((6, 3))
    )


# ----------------------------------------------------------------------------------------------------------
# Late fusion.


def _fused(tiny_trained, tiny_problem):
  """A Fused of the session's tiny trained run and text_knn_center_soft02 on Alpha, and its config."""
  config, result = tiny_trained
  domains, tables = tiny_problem
  config = config_lib.override(config, {"fusion.text_preset": "text_knn_center_soft02"})
  trained = fusion.Part(result.model, result.params, pipeline.model_tables(config, tables)["Alpha"])
  return config, fusion.Fused(fusion.text_part(config, domains["Alpha"], tables["Alpha"]), trained)


def test_a_fusion_at_its_edges_is_each_part_alone(tiny_trained, tiny_problem):
  config, fused = _fused(tiny_trained, tiny_problem)
  alpha = tiny_problem[0]["Alpha"]
  rows = types.leave_one_out(alpha, "test", int(config.data.max_len))
  for theta, part in ((0.0, fused.text), (1.0, fused.trained)):
    got = fusion.evaluate_split(config, dataclasses.replace(fused, theta=theta), alpha, "test")
    want = evaluate_lib.evaluate(
        part.user_fn(), part.item_vectors(), rows, alpha, config.eval, scorer=part.model.scorer
    )
    assert got.keys() == want.keys()
    for k in want:  # z-scores rank as the raw scores (up to a rounding that may merge near-ties)
      assert got[k] == pytest.approx(want[k], abs=0.02), k


def test_the_fitted_theta_is_the_best_it_tried_and_the_text_wins_ties(tiny_trained, tiny_problem):
  config, fused = _fused(tiny_trained, tiny_problem)
  config = config_lib.override(config, {"fusion.steps": 4, "fusion.fallback_alpha": 1.0})
  alpha = tiny_problem[0]["Alpha"]
  fit = fusion.fit(config, fused, alpha)
  values = dict(fit.tried)
  assert fit.value == max(values.values()) and fit.theta == min(
      t for t, v in values.items() if v == fit.value
  )
  assert sorted(values) == [0.0, 0.25, 0.5, 0.75, 1.0]
  again = fusion.per_user_curve(config, fused, alpha, [fit.theta]).mean(axis=0)
  assert again.tolist() == [pytest.approx(fit.value)]
  assert fit.theta == fit.fitted_theta and not fit.fell_back
  # A trained part that scores every item alike tells nobody anything: the fit falls back to the text.
  flat = jax.tree.map(jnp.zeros_like, fused.trained.params)
  weak = dataclasses.replace(fused, trained=dataclasses.replace(fused.trained, params=flat))
  assert fusion.fit(config, weak, alpha).theta == 0.0


def test_a_fit_whose_gain_the_split_cannot_show_falls_back_to_the_text(
    tiny_trained, tiny_problem, monkeypatch
):
  """The validation values of every theta made up: three lucky users of 53 at theta 0.25 (the best mean,
  p = 1/8 cross-fitted); a real gain at theta 0.5 once a fold sees it on 40 users."""
  config, fused = _fused(tiny_trained, tiny_problem)
  config = config_lib.override(config, {"fusion.steps": 4})
  lucky_UxT = np.zeros((53, 5))
  lucky_UxT[[3, 20, 41], 1] = 1.0
  real_UxT = np.zeros((53, 5))
  real_UxT[:40, 2] = 0.5
  for values_UxT, theta, fitted in ((lucky_UxT, 0.0, 0.25), (real_UxT, 0.5, 0.5)):
    monkeypatch.setattr(fusion, "per_user_curve", lambda *_, v=values_UxT: v)
    fit = fusion.fit(config, fused, tiny_problem[0]["Alpha"])
    assert (fit.theta, fit.fitted_theta, fit.fell_back) == (theta, fitted, theta != fitted)
    assert fit.value == pytest.approx(values_UxT[:, int(4 * theta)].mean())
    extra = fit.as_extra(config)
    assert extra["fell_back"] == fit.fell_back and extra["validation_users"] == 53


def _ndcg_like(rng, shape, hit_rate):
  hits = rng.random(shape) < hit_rate
  return np.where(hits, 1.0 / np.log2(rng.integers(0, 10, shape) + 2.0), 0.0)


def test_a_gain_every_fold_sees_keeps_its_theta():
  rng = np.random.default_rng(0)
  text_U = _ndcg_like(rng, (400,), 0.1)
  values_UxT = np.stack([text_U, text_U + _ndcg_like(rng, (400,), 0.1), text_U], axis=1)
  gain, p_value = fusion.cross_fitted_test(values_UxT, folds=5)
  assert fusion.best_column(values_UxT) == 1
  assert gain == pytest.approx(values_UxT[:, 1].mean() - text_U.mean()) and p_value < 1e-6


def test_three_lucky_users_of_53_do_not_move_theta_off_the_text():
  values_UxT = np.zeros((53, 3))
  values_UxT[[3, 20, 41], 1] = 1.0  # the text scores no hit; one weighting hits three users
  gain, p_value = fusion.cross_fitted_test(values_UxT, folds=5)
  assert gain > 0 and p_value == pytest.approx(0.125)  # 3 of 3 signs positive: 1 / 2**3


def test_the_best_of_many_noise_columns_is_not_a_gain_once_cross_fitted():
  """Columns that are all the text's noise: the best of 101 passes a naive paired test often (the
  selection is fitted to the same users), the cross-fitted test about as often as its level says."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  naive = crossed = 0
  for seed in range(40):
    values_UxT = _ndcg_like(np.random.default_rng(seed), (300, 101), 0.1)
    diff_U = values_UxT[:, fusion.best_column(values_UxT)] - values_UxT[:, 0]
    wins, losses = int(np.sum(diff_U > 0)), int(np.sum(diff_U < 0))
    naive += stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue < 0.05
    crossed += fusion.cross_fitted_test(values_UxT, folds=5)[1] < 0.05
  assert naive >= 12 and crossed <= 6


def test_too_few_users_to_cross_fit_keep_the_text():
  assert fusion.cross_fitted_test(np.array([[0.0, 1.0]]), folds=5) == (0.0, 1.0)


def _fusion_config(tiny_config, **overrides):
  return tiny_config(**{**conftest.TINY_IN_DOMAIN_ID, **conftest.TINY_FUSION, **overrides})


@pytest.mark.slow
def test_a_fusion_over_a_finished_run_trains_nothing_and_equals_the_fusion_trained_in_place(
    tiny_config, tiny_problem, tmp_path
):
  domains, tables = tiny_problem
  config = _fusion_config(tiny_config)
  (trained,) = pipeline.train_and_transfer([config], [tmp_path / "trained"], domains, tables)
  assert not isinstance(trained, Exception), getattr(trained, "traceback", trained)
  (record,) = trained
  assert set(record["extra"]["fusion"]) >= {"theta", "trained_weight", "tried", "text_preset"}
  assert record["extra"]["trained_part"]["test/full/ndcg@10"] >= 0
  assert fusion.read_fit(tmp_path / "trained")["theta"] == record["extra"]["fusion"]["theta"]
  again = config_lib.override(_fusion_config(tiny_config), {"fusion.trained_run": "../trained"})
  (reused,) = pipeline.train_and_transfer([again], [tmp_path / "reused"], domains, tables)
  assert not isinstance(reused, Exception), getattr(reused, "traceback", reused)
  assert (
      reused[0]["metrics"] == record["metrics"] and reused[0]["extra"]["fusion"] == record["extra"]["fusion"]
  )
  assert not (tmp_path / "reused" / "checkpoints").exists()
  # The finished run's training time is its own: the fusion over it trained nothing to count.
  assert "resumed_wall_s" in record["extra"] and "resumed_wall_s" not in reused[0]["extra"]
  other = config_lib.override(
      _fusion_config(tiny_config, **{"train.learning_rate": 0.1}), {"fusion.trained_run": "../trained"}
  )
  (refused,) = pipeline.train_and_transfer([other], [tmp_path / "refused"], domains, tables)
  assert isinstance(refused, errors.ConfigError) and "train.learning_rate" in str(refused)


def test_a_fusion_is_in_domain_only_and_its_text_part_trains_nothing(tiny_config, tiny_problem, tmp_path):
  domains, tables = tiny_problem
  with pytest.raises(errors.ConfigError, match="in_domain"):
    pipeline.train_and_transfer(
        [_fusion_config(tiny_config, **{"experiment.mode": "zero_shot", "model.variant": "sem"})],
        [tmp_path],
        domains,
        tables,
    )
  with pytest.raises(errors.ConfigError, match="text_knn preset"):
    fusion.check(_fusion_config(tiny_config, **{"fusion.text_preset": "sem"}))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("fallback_alpha", 0.0, "in \\(0, 1\\]"),
        ("fallback_folds", 1, ">= 2"),
        ("holdout_users", 1.0, "in \\[0, 1\\)"),
    ],
)
def test_a_fallback_that_cannot_test_is_refused(tiny_config, field, value, message):
  with pytest.raises(errors.ConfigError, match=f"fusion.{field} must be {message}"):
    fusion.check(_fusion_config(tiny_config, **{f"fusion.{field}": value}))


def test_a_fusion_on_held_out_users_trains_its_own_part(tiny_config):
  config = _fusion_config(tiny_config, **{"fusion.holdout_users": 0.2, "fusion.trained_run": "../id"})
  with pytest.raises(errors.ConfigError, match="holds users out of the trained part's training"):
    fusion.check(config)


def test_a_fusion_that_cannot_be_fitted_fails_before_anything_trains(
    tiny_config, tiny_problem, tmp_path, monkeypatch
):
  from recg_jax import training  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(training, "train_members", lambda *_, **__: pytest.fail("trained before the check"))
  config = _fusion_config(tiny_config, **{"fusion.holdout_users": 1.5})
  with pytest.raises(errors.ConfigError, match="fusion.holdout_users must be in"):
    pipeline.train_and_transfer([config], [tmp_path], *tiny_problem)


@pytest.mark.slow
def test_a_fusion_on_held_out_users_trains_without_them_and_fits_theta_on_them(
    tiny_config, tiny_problem, tmp_path, monkeypatch
):
  from recg_jax import training  # pylint: disable=g-import-not-at-top

  domains, tables = tiny_problem
  trained_on = []
  train_members = training.train_members

  def spy(configs, workdirs, run_domains, *args, **kwargs):
    trained_on.append(run_domains["Alpha"].user_tokens.tolist())
    return train_members(configs, workdirs, run_domains, *args, **kwargs)

  monkeypatch.setattr(training, "train_members", spy)
  config = _fusion_config(tiny_config, **{"fusion.holdout_users": 0.25})
  (records,) = pipeline.train_and_transfer([config], [tmp_path], domains, tables)
  assert not isinstance(records, Exception), getattr(records, "traceback", records)
  alpha = domains["Alpha"]
  kept, held = types.holdout_users(alpha, 0.25)
  assert trained_on == [alpha.user_tokens[kept].tolist()]
  fitted = records[0]["extra"]["fusion"]
  assert (fitted["validation_users"], fitted["holdout_users"]) == (len(held), 0.25)
  # The fused recommender is then scored on every user of the source.
  fused = fusion.fused_on(config, alpha, tables["Alpha"], *_model_and_params(config, tmp_path, alpha))
  theta = dataclasses.replace(fused, theta=fitted["theta"])
  want = fusion.evaluate_split(config, theta, alpha, "test")
  assert records[0]["metrics"]["test/full/ndcg@10"] == pytest.approx(want["full/ndcg@10"], abs=1e-6)


def _model_and_params(config, workdir, domain):
  from recg_jax import finished_run  # pylint: disable=g-import-not-at-top

  return recommender_lib.build_model(config, domain.num_items), finished_run.best_params(workdir, config)


def test_every_hybrid_preset_builds_its_model_and_trains_on_every_user():
  for name in (
      "id_ce",
      "fusion",
      "fusion_holdout",
      "id_text_init",
      "alphafuse",
      "id_text_offset",
      "text_mix_id",
  ):
    config = config_lib.apply_preset(config_lib.get_config(), name)
    assert config.train.loss == "softmax" and config.train.max_users_per_source == 0, name
    assert (config.model.hidden_dim, config.model.num_layers, config.train.patience) == (64, 2, 10), name
    recommender_lib.build_model(config, 5)
  assert presets.PRESETS["alphafuse"]["model.text_id_frozen_dims"] == 32
  offset = config_lib.apply_preset(config_lib.get_config(), "id_text_offset").model
  text = config_lib.apply_preset(config_lib.get_config(), presets.TEXT_BASELINE).model
  assert (offset.table_transform, offset.knn_aggregate, offset.knn_temperature) == (
      text.table_transform,
      text.knn_aggregate,
      text.knn_temperature,
  )


def test_an_in_domain_run_reads_its_source_alone(tiny_config, tiny_problem, tmp_path, monkeypatch):
  domains, tables = tiny_problem
  asked = []

  def prepare(config, workdir):
    asked.append((config.data.source, tuple(config.data.targets)))
    return {n: domains[n] for n in (config.data.source, *config.data.targets)}

  monkeypatch.setattr(pipeline, "prepare_data", prepare)
  monkeypatch.setattr(pipeline, "embed_domains", lambda config, workdir, ds: {n: tables[n] for n in ds})
  config = tiny_config(**{"model.variant": "text_knn", "experiment.mode": "in_domain"})
  (record,) = pipeline.run(config, str(tmp_path))
  assert asked == [("Alpha", ())] and record["domain"] == "Alpha"
  recg = tiny_config(**{"experiment.mode": "in_domain"})  # RecG's L_gen samples the other domains' items
  assert pipeline.reads_domains(recg) == ("Alpha", "Beta", "Gamma")
