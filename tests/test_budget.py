"""A training budget (train.budget): the fewest users, in one seeded order, that hold a share of the training
interactions; a budget run trains and validates on them and is also tested over every user. Members of one
stacked run may start from different finished runs (train.init_from), as a warm-start study's seeds do."""

import jax
import numpy as np
import pytest

from recg_jax import errors
from recg_jax import evaluate as evaluate_lib
from recg_jax import finished_run
from recg_jax import pipeline
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.training import members as members_lib
from recg_jax.training import trainer as trainer_lib


def _training_interactions(domain, users) -> int:
  return int(np.sum(domain.lengths[users] - 2))


def test_a_budget_is_the_fewest_users_in_its_order_that_hold_the_share(tiny_problem):
  domain = tiny_problem[0]["Alpha"]
  total = _training_interactions(domain, np.arange(domain.num_users))
  for fraction in (0.05, 0.3, 0.7):
    users = types.budget_users(domain, fraction)
    assert _training_interactions(domain, users) >= fraction * total
    # One user fewer (the last one taken in the order) falls short of the share.
    order = np.random.default_rng([0, domain.num_users, 0xB0D6E7]).permutation(domain.num_users)
    last = order[len(users) - 1]
    assert set(order[: len(users)]) == set(users)
    assert _training_interactions(domain, users[users != last]) < fraction * total
  np.testing.assert_array_equal(types.budget_users(domain, 1.0), np.arange(domain.num_users))
  assert types.budget_subset(domain, 1.0) is domain
  with pytest.raises(ValueError, match="positive fraction"):
    types.budget_users(domain, 0.0)


def test_a_smaller_budgets_users_are_among_a_larger_ones(tiny_problem):
  domain = tiny_problem[0]["Alpha"]
  budgets = [set(types.budget_users(domain, f)) for f in (0.01, 0.1, 0.2, 0.5, 0.9)]
  assert len(budgets[0]) == 1 and all(a < b for a, b in zip(budgets, budgets[1:]))
  sub = types.budget_subset(domain, 0.2)
  kept = sorted(budgets[2])
  assert sub.user_tokens.tolist() == domain.user_tokens[kept].tolist()
  for i, u in enumerate(kept):
    np.testing.assert_array_equal(sub.history(i), domain.history(u))


def test_held_out_users_are_a_seeded_share_disjoint_from_the_users_trained_on(tiny_problem):
  domain = tiny_problem[0]["Alpha"]
  kept, held = types.holdout_users(domain, 0.2)
  assert len(held) == round(0.2 * domain.num_users) and np.all(np.diff(held) > 0)
  np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(domain.num_users))
  np.testing.assert_array_equal(types.holdout_users(domain, 0.2)[1], held)  # the same whatever the run
  trained_on, fit_on = types.split_users(domain, 0.2)
  assert fit_on.user_tokens.tolist() == domain.user_tokens[held].tolist()
  np.testing.assert_array_equal(fit_on.history(0), domain.history(held[0]))
  assert trained_on.num_users + fit_on.num_users == domain.num_users
  # At least one user on each side, however small the share or the domain.
  assert [len(x) for x in types.holdout_users(domain, 1e-6)] == [domain.num_users - 1, 1]
  assert [len(x) for x in types.holdout_users(domain, 0.999999)] == [1, domain.num_users - 1]


def test_a_budget_run_trains_on_its_users_and_is_tested_over_every_user(tiny_config, tiny_problem, tmp_path):
  domains, tables = tiny_problem
  config = tiny_config(
      **{
          "model.variant": "sem",
          "train.budget": 0.3,
          "train.num_epochs": 1,
          "train.length_buckets": (),
          "eval.length_buckets": (),
          "experiment.mode": "in_domain",
      }
  )
  (records,) = pipeline.train_and_transfer([config], [tmp_path], domains, tables)
  assert not isinstance(records, Exception), getattr(records, "traceback", records)
  assert [(r["stage"], r["domain"]) for r in records] == [("in_domain", "Alpha"), ("budget", "Alpha")]
  alpha = domains["Alpha"]
  users = types.budget_users(alpha, 0.3)
  budget = records[1]
  assert budget["extra"] == {"budget": 0.3, "budget_users": len(users), "users": alpha.num_users}
  # The 'budget' record is the best checkpoint's test over all users.
  params = finished_run.best_params(tmp_path, config)
  model = recommender_lib.build_model(config, alpha.num_items)
  whole = evaluate_lib.evaluate_split(
      model,
      params,
      pipeline.model_tables(config, tables)["Alpha"],
      types.leave_one_out(alpha, "test", int(config.data.max_len)),
      alpha,
      config.eval,
      None,
  )
  for key, value in whole.items():
    assert budget["metrics"][f"test/{key}"] == pytest.approx(value, abs=1e-6)


def test_a_budget_outside_0_to_1_is_a_config_error(tiny_config, tiny_problem, tmp_path):
  domains, tables = tiny_problem
  config = tiny_config(**{"train.budget": 0.0, "experiment.mode": "in_domain"})
  with pytest.raises(errors.ConfigError, match=r"config.train.budget=0.0"):
    pipeline.train_and_transfer([config], [tmp_path], domains, tables)


def test_members_start_from_their_own_finished_runs(tiny_trained, tiny_problem):
  config, result = tiny_trained
  domains, tables = tiny_problem
  warm = config.copy_and_resolve_references()
  warm.train.init_from = str(result.workdir)
  cold = config.copy_and_resolve_references()
  cold.train.seed = 7
  stacked = trainer_lib.create_trainer(warm, domains["Alpha"], tables, members=[warm, cold]).state.params
  alone = trainer_lib.create_trainer(cold, domains["Alpha"], tables).state.params
  for path, best in jax.tree_util.tree_leaves_with_path(result.params):
    got = dict(jax.tree_util.tree_leaves_with_path(members_lib.member_tree(stacked, 0)))[path]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(best))
  for a, b in zip(
      jax.tree.leaves(members_lib.member_tree(stacked, 1)), jax.tree.leaves(members_lib.member_tree(alone, 0))
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
