"""Runs trained together (training.train_members) equal the same runs trained alone; one program per shape."""

import json

import pytest

from recg_jax import compile_stats
from recg_jax import training
from recg_jax.training import checkpoints as checkpoints_lib
from recg_jax.training import members as members_lib

import _train_driver as driver
from conftest import read_jsonl

EPOCHS = 3


def _config(**overrides):
  return driver.tiny_config(**{"train.num_epochs": EPOCHS, "train.patience": 1, **overrides})


@pytest.fixture(scope="module")
def alone(tiny_problem, tmp_path_factory):
  """Four runs, each trained alone: three seeds, one of them with another alpha and learning rate (all
  traced, so one program); the last never improves after its first evaluation, so it stops early."""
  domains, tables = tiny_problem
  members = [
      _config(**{"train.seed": 0}),
      _config(**{"train.seed": 1}),
      _config(**{"train.seed": 2, "gen_loss.alpha": 0.05, "train.learning_rate": 1e-2}),
      _config(**{"train.seed": 3, "train.learning_rate": 0.0}),
  ]
  root = tmp_path_factory.mktemp("alone")
  return members, [
      training.train_and_evaluate(m, root / f"run{i}", domains, tables) for i, m in enumerate(members)
  ]


# On CPU, `map` is the default path; `vmap` (the accelerators' one) runs in the slow tier.
@pytest.mark.parametrize("axis", ["map", pytest.param("vmap", marks=pytest.mark.slow)])
def test_stacked_members_equal_separate_runs(tiny_problem, alone, tmp_path, axis):
  domains, tables = tiny_problem
  members, alone = alone
  members = [m.copy_and_resolve_references() for m in members]
  for m in members:
    m.train.member_axis = axis
  together = training.train_members(
      members, [tmp_path / f"member{i}" for i in range(4)], domains, tables, group_dir=tmp_path / "group"
  )
  for a, t in zip(alone, together):
    assert not t.error
    assert (t.best_epoch, t.best_step, t.stop_reason, t.epochs) == (
        a.best_epoch,
        a.best_step,
        a.stop_reason,
        a.epochs,
    )
    assert set(t.metrics) == set(a.metrics)
    for k in a.metrics:
      assert t.metrics[k] == pytest.approx(a.metrics[k], abs=1e-4), k
    # A key bias moves by noise (driver.NOISE_DRIVEN), by at most about lr per Adam step: 12 steps of 1e-2.
    driver.assert_params_close(
        driver.params_by_path(t.params),
        driver.params_by_path(a.params),
        rtol=2e-4,
        atol=2e-5,
        noise_atol=0.15,
    )
    # The same events at the same steps (train losses too: a stopped member logs nothing more).
    events = lambda run: [(e["kind"], e["step"]) for e in read_jsonl(run.workdir / "metrics.jsonl")]
    assert events(t) == events(a)
    assert (t.workdir / "results.json").exists()
  # The members really differ from each other (their own data order, keys and hyperparameters), and
  # stop when each would have stopped alone.
  assert len({round(t.metrics["valid/full/ndcg@10"], 6) for t in together}) > 1
  assert together[3].epochs == 2 and together[0].epochs == EPOCHS
  assert sorted(p.name for p in (tmp_path / "group" / "checkpoints").iterdir()) == [
      "latest",
      "run_config.json",
  ]


@pytest.mark.slow
def test_a_group_checkpoint_from_before_a_traced_field_was_added_still_resumes(tiny_problem, tmp_path):
  domains, tables = tiny_problem
  members = [_config(**{"train.num_epochs": 1, "train.seed": s}) for s in (0, 1)]
  training.train_members(
      members, [tmp_path / "m0", tmp_path / "m1"], domains, tables, group_dir=tmp_path / "g"
  )
  path = tmp_path / "g" / "checkpoints" / "run_config.json"
  stored = json.loads(path.read_text())
  for m in stored["members"]:
    del m["train.init_from"]  # as a checkpoint written before the field was declared traced
  path.write_text(json.dumps(stored))
  signature = checkpoints_lib.group_signature(members)
  checkpoints_lib.Checkpoints(tmp_path / "g", members[0], parts=("latest",), signature=signature).close()
  other = checkpoints_lib.group_signature([members[0], _config(**{"train.num_epochs": 1, "train.seed": 7})])
  with pytest.raises(ValueError, match=r"different run .*members"):
    checkpoints_lib.Checkpoints(tmp_path / "g", members[0], parts=("latest",), signature=other)


def test_traced_fields_reuse_the_compiled_step(tiny_problem, tmp_path):
  domains, tables = tiny_problem
  compile_stats.install()
  training.train_and_evaluate(_config(**{"train.num_epochs": 1}), tmp_path / "a", domains, tables)
  traces, compiles = compile_stats.TRACE_COUNTS["train_step"], compile_stats.snapshot()["compiles"]
  # Another seed, alpha, tau, learning rate, inter sign and L_gen switches: no new trace, no new compile.
  again = _config(
      **{
          "train.num_epochs": 1,
          "train.seed": 5,
          "gen_loss.alpha": 0.2,
          "gen_loss.tau": 0.5,
          "train.learning_rate": 1e-4,
          "gen_loss.inter_sign": -1,
          "gen_loss.use_intra": False,
      }
  )
  training.train_and_evaluate(again, tmp_path / "b", domains, tables)
  assert compile_stats.TRACE_COUNTS["train_step"] == traces
  assert compile_stats.snapshot()["compiles"] == compiles
  # A different shape is a different program: one trace per length bucket.
  training.train_and_evaluate(
      _config(**{"train.num_epochs": 1, "model.hidden_dim": 8}), tmp_path / "c", domains, tables
  )
  assert compile_stats.TRACE_COUNTS["train_step"] == traces + driver.tiny_layout()["train_widths"]


def test_members_must_differ_only_in_traced_fields():
  with pytest.raises(ValueError, match=r"member 1 differs .*model.hidden_dim"):
    members_lib.check_members([_config(), _config(**{"model.hidden_dim": 32})])
  with pytest.raises(ValueError, match=r"optimizer_structure"):
    members_lib.check_members([_config(), _config(**{"train.grad_clip": 1.0})])
  members_lib.check_members([_config(), _config(**{"train.seed": 3, "gen_loss.tau": 0.3})])


@pytest.mark.slow
def test_a_diverging_member_stops_alone(tiny_problem, tmp_path):
  domains, tables = tiny_problem
  members = [_config(**{"train.seed": 0}), _config(**{"train.seed": 1, "train.learning_rate": 1e30})]
  together = training.train_members(
      members, [tmp_path / "m0", tmp_path / "m1"], domains, tables, group_dir=tmp_path / "group"
  )
  alone = training.train_and_evaluate(members[0], tmp_path / "alone", domains, tables)
  assert together[1].error.startswith("training loss is") and together[1].params is None
  assert not together[0].error
  for k in alone.metrics:
    assert together[0].metrics[k] == pytest.approx(alone.metrics[k], abs=1e-4), k
