"""Starting a run from a finished one (train.init_from): its best parameters become the initial ones on
another domain, and parameters of another model, or a folder that is not a run, are refused clearly."""

import jax
import numpy as np
import pytest

from recg_jax import errors
from recg_jax.training import members as members_lib
from recg_jax.training import trainer as trainer_lib


def _trainer_on_beta(config, tiny_problem, **model):
  domains, tables = tiny_problem
  config.data.source, config.data.targets = "Beta", ("Alpha", "Gamma")
  for key, value in model.items():
    config.model[key] = value
  return trainer_lib.create_trainer(config, domains["Beta"], tables)


def test_a_run_on_another_domain_starts_from_the_finished_runs_best_parameters(tiny_trained, tiny_problem):
  config, result = tiny_trained
  config.train.init_from = str(result.workdir)
  start = members_lib.member_tree(_trainer_on_beta(config, tiny_problem).state.params, 0)
  flat_start = dict(jax.tree_util.tree_leaves_with_path(start))
  for path, best in jax.tree_util.tree_leaves_with_path(result.params):
    np.testing.assert_array_equal(np.asarray(flat_start[path]), np.asarray(best))
  config.train.init_from = ""
  scratch = members_lib.member_tree(_trainer_on_beta(config, tiny_problem).state.params, 0)
  assert not all(
      np.array_equal(np.asarray(a), np.asarray(b))
      for a, b in zip(jax.tree.leaves(scratch), jax.tree.leaves(start))
  )


def test_the_parameters_of_another_model_are_refused_with_the_leaf_that_differs(tiny_trained, tiny_problem):
  config, result = tiny_trained
  config.train.init_from = str(result.workdir)
  with pytest.raises(errors.ConfigError, match=r"config.train.init_from=.*do not fit.*there.*here"):
    _trainer_on_beta(config, tiny_problem, hidden_dim=2 * int(config.model.hidden_dim))


def test_a_folder_that_is_not_a_finished_run_is_refused(tiny_trained, tiny_problem, tmp_path):
  config, _ = tiny_trained
  config.train.init_from = str(tmp_path)
  with pytest.raises(errors.NotAFinishedRunError, match="has no results.json"):
    _trainer_on_beta(config, tiny_problem)
