"""Fitting text_knn's soft maximum on the sources (recg_jax/knn_fit.py): the fitted scores are text_knn's,
the fit moves the decay the way the data asks, it never ends above where it started, and a run records and
evaluates with what it fitted."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import errors
from recg_jax import knn_fit
from recg_jax import pipeline
from recg_jax.config.presets import PRESETS
from recg_jax.data import types
from recg_jax.grid import baselines
from recg_jax.models import scoring
from recg_jax.models import text_space

FIT = {k: v for k, v in PRESETS["text_knn_center_fit"].items()}


def _params(decay: float, tau: float, scale: float = 1.0) -> dict:
  return {
      "decay_logit": jnp.float32(np.log(decay / (1 - decay))),
      "log_tau": jnp.float32(np.log(tau)),
      "log_scale": jnp.float32(np.log(scale)),
  }


def test_fitted_scores_are_text_knns_soft_maximum():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(13, 6)).astype(np.float32)
  table[0] = 0.0
  seq = np.array([[0, 0, 3, 5, 7], [1, 2, 3, 4, 5], [0, 0, 0, 0, 9]], np.int32)
  for decay, tau in ((0.5, 0.2), (0.9, 0.05), (0.2, 1.0)):
    got = knn_fit.aggregate_scores(_params(decay, tau), jnp.asarray(seq), jnp.asarray(table))
    user = text_space.history_rows(jnp.asarray(seq), jnp.asarray(table), decay)
    want = scoring.score_matrix(user, jnp.asarray(table), ("softmax", tau), jax.lax.Precision.HIGHEST)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)


def _cluster_domain(newest: bool, num_users: int = 60, seed: int = 0) -> tuple[types.DomainData, np.ndarray]:
  """Items come in clusters of four near-copies (items 4c+1..4c+4) and distractors (each near the next
  user's cluster). Each user has three distractors and its cluster's four items: after the distractors
  (newest=True: the next item is like the newest one) or with the cluster's first item first, before the
  distractors (newest=False: it is like the oldest)."""
  rng = np.random.default_rng(seed)
  clusters, singles = num_users, 3 * num_users
  num_items = 4 * clusters + singles
  centres = rng.normal(size=(clusters, 32))
  table = np.zeros((num_items + 1, 32), np.float32)
  for c in range(clusters):
    table[4 * c + 1 : 4 * c + 5] = centres[c] + 0.05 * rng.normal(size=(4, 32))
  near_next = np.repeat(np.roll(centres, -1, axis=0), 3, axis=0)
  table[4 * clusters + 1 :] = near_next + 0.5 * rng.normal(size=(singles, 32))
  table[1:] /= np.linalg.norm(table[1:], axis=1, keepdims=True)
  rows = []
  for u in range(num_users):
    c = [4 * u + 1 + k for k in range(4)]
    s = [4 * clusters + 1 + 3 * u + k for k in range(3)]
    rows.append(s + c if newest else [c[0], *s, *c[1:]])
  offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
  tokens = np.array(["[PAD]"] + [f"i{i}" for i in range(1, num_items + 1)], dtype=object)
  domain = types.DomainData(
      name="Clusters",
      item_tokens=tokens,
      item_fields={"title": tokens},
      item_text=tokens,
      user_tokens=np.array([f"u{u}" for u in range(num_users)], dtype=object),
      offsets=offsets,
      items=np.concatenate(rows).astype(np.int32),
      synthetic=True,
  )
  return domain, table


def _fit_config(tiny_config, **overrides):
  return tiny_config(**{**FIT, "knn_fit.epochs": 8, "knn_fit.batch_size": 16, **overrides})


@pytest.mark.parametrize("newest", [True, False])
def test_the_decay_gradient_points_to_the_item_that_predicts(newest):
  domain, table = _cluster_domain(newest)
  rows = knn_fit.training_rows(domain, 8, (8,))
  ones = np.ones(len(rows.targets_U), np.float32)
  grad = jax.grad(knn_fit.batch_loss)(
      _params(0.5, 0.2, 20.0),
      jnp.asarray(rows.inputs_UxL),
      jnp.asarray(rows.targets_U),
      ones,
      jnp.asarray(table),
  )
  # Gradient descent lowers the decay (weights the newest item more) where the newest item predicts.
  assert (grad["decay_logit"] > 0) if newest else (grad["decay_logit"] < 0), grad


def test_the_fit_lowers_the_decay_where_the_newest_item_predicts(tiny_config):
  domain, table = _cluster_domain(newest=True)
  fitted = knn_fit.fit(_fit_config(tiny_config), [domain], [table])
  assert fitted.decay < 0.4 and fitted.best_epoch >= 0, fitted


def test_the_fit_never_ends_above_its_start(tiny_config, tiny_problem):
  domains, tables = tiny_problem
  config = _fit_config(tiny_config, **{"knn_fit.epochs": 3})
  sources = [domains["Alpha"], domains["Beta"]]
  fitted = knn_fit.fit(config, sources, [tables["Alpha"], tables["Beta"]])
  widths = (4, 8)
  _, eval_loss, _ = knn_fit._programs(float(config.knn_fit.learning_rate))  # pylint: disable=protected-access
  start = knn_fit.init_params(config)
  start_loss = np.mean(
      [
          knn_fit.mean_loss(
              start, knn_fit.validation_rows(d, 8, widths), jnp.asarray(tables[d.name]), 16, eval_loss
          )
          for d in sources
      ]
  )
  assert fitted.valid_loss <= start_loss + 1e-6
  assert 0.0 < fitted.decay < 1.0 and fitted.temperature > 0.0


def test_every_source_gives_the_same_number_of_rows_an_epoch(tiny_problem):
  domains, _ = tiny_problem
  rows = knn_fit.training_rows(domains["Alpha"], 8, (4, 8))
  assert len(rows.targets_U) == domains["Alpha"].num_users
  batches = knn_fit._batches(rows, np.arange(20), 8)  # pylint: disable=protected-access
  assert sum(int(w.sum()) for _, _, w in batches) == 20
  assert all(len(i) == 8 and (rows.widths_U[i] == width).all() for width, i, _ in batches)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"model.knn_aggregate": "mean"}, "knn_aggregate"),
        ({"knn_fit.epochs": 0}, "knn_fit.epochs"),
        ({"knn_fit.learning_rate": 0.0}, "knn_fit.learning_rate"),
        ({"model.knn_decay": 1.0}, "knn_decay"),
    ],
)
def test_bad_fit_settings_name_their_field(tiny_config, overrides, field):
  with pytest.raises(errors.ConfigError, match=field):
    knn_fit.check_config(_fit_config(tiny_config, **overrides))


def test_a_run_records_and_scores_with_what_it_fitted(tiny_config, tiny_problem, tmp_path):
  domains, tables = tiny_problem
  config = _fit_config(
      tiny_config,
      **{
          "knn_fit.epochs": 2,
          "data.source": "Alpha+Beta",
          "data.targets": ("Gamma",),
          "experiment.mode": "zero_shot",
      },
  )
  (records,) = pipeline.train_and_transfer([config], [tmp_path / "fit"], domains, tables)
  fit = records[-1]["extra"]["knn_fit"]
  assert [r["stage"] for r in records] == ["in_domain", "in_domain", "zero_shot"]
  assert all(r["extra"]["knn_fit"] == fit for r in records) and records[0]["extra"]["trained"]
  fixed = tiny_config(
      **{
          **{k: v for k, v in FIT.items() if k != "knn_fit.enabled"},
          "model.knn_decay": fit["decay"],
          "model.knn_temperature": fit["temperature"],
          "data.source": "Alpha+Beta",
          "data.targets": ("Gamma",),
          "experiment.mode": "zero_shot",
      }
  )
  (plain,) = pipeline.train_and_transfer([fixed], [tmp_path / "fixed"], domains, tables)
  assert plain[-1]["metrics"] == records[-1]["metrics"]


def test_a_fitted_preset_has_seeds_in_the_baselines_study():
  assert not baselines._is_untrained("text_knn_center_fit")  # pylint: disable=protected-access
  assert baselines._is_untrained("text_knn_center_soft02")  # pylint: disable=protected-access


def test_a_training_budget_cuts_what_the_fit_reads(tiny_config, tiny_problem):
  domains, _ = tiny_problem
  fit = _fit_config(tiny_config, **{"train.budget": 0.5})
  plain = tiny_config(**{"model.variant": "text_knn", "train.budget": 0.5})
  alpha = domains["Alpha"]
  assert pipeline._capped(fit, {"Alpha": alpha})["Alpha"].num_users < alpha.num_users  # pylint: disable=protected-access
  assert pipeline._capped(plain, {"Alpha": alpha})["Alpha"] is alpha  # pylint: disable=protected-access
