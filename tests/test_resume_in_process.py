"""Exact resume, in one process: a run stopped mid-epoch, after a mid-epoch checkpoint, resumes from that
checkpoint and ends exactly where an uninterrupted run ends (recg_jax/train.py).

The run is stopped by its input pipeline raising between two steps. test_resume.py (slow tier) does the same
with SIGKILL on a subprocess, plus the NaN stop and the continuation of a finished run.
"""

import json
import time

import jax
import numpy as np
import pytest

from recg_jax import input_pipeline
from recg_jax import training

import _train_driver as driver
from conftest import read_jsonl

# Two epochs of 4 steps (48 users, batch 16, two length buckets); a checkpoint every 2 steps.
OVERRIDES = {"train.num_epochs": 2, "train.checkpoint_every_steps": 2}


class Stopped(Exception):
  """Raised by the input pipeline in place of the next batch."""


def _stop_after(monkeypatch, num_batches):
  """The input pipeline yields num_batches batches in all, then raises Stopped."""
  batches, served = input_pipeline.epoch_batches, [0]

  def stopping(*args, **kwargs):
    for batch in batches(*args, **kwargs):
      if served[0] == num_batches:
        raise Stopped(f"stopped after {num_batches} batches")
      served[0] += 1
      yield batch

  monkeypatch.setattr(input_pipeline, "epoch_batches", stopping)


def _latest_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit())


def test_stopped_mid_epoch_then_resumed_is_exact(tiny_config, tiny_problem, tmp_path, monkeypatch, capsys):
  domains, tables = tiny_problem
  spe = driver.tiny_layout(**OVERRIDES)["steps_per_epoch"]
  assert spe == 4
  want = training.train_and_evaluate(tiny_config(**OVERRIDES), tmp_path / "ref", domains, tables)

  workdir = tmp_path / "stopped"
  _stop_after(monkeypatch, spe + 3)  # the 4th batch of the second epoch never comes
  with pytest.raises(Stopped):
    training.train_and_evaluate(tiny_config(**OVERRIDES), workdir, domains, tables)
  monkeypatch.undo()
  assert _latest_steps(workdir)[-1] == spe + 2  # the mid-epoch checkpoint, one step before the stop
  capsys.readouterr()

  got = training.train_and_evaluate(tiny_config(**OVERRIDES), workdir, domains, tables)
  assert f"from step {spe + 2} (epoch 1, batch 2)" in capsys.readouterr().out
  assert got.metrics == want.metrics  # exact, not approximate
  assert (got.best_step, got.epochs) == (want.best_step, want.epochs)
  want_leaves = jax.tree_util.tree_leaves_with_path(want.params)
  got_leaves = jax.tree_util.tree_leaves_with_path(got.params)
  assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
  for (path, a), (_, b) in zip(got_leaves, want_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))

  # The log holds each step once (the replayed part of the epoch is not logged twice), with the same losses.
  events = read_jsonl(workdir / "metrics.jsonl")
  steps = [e["step"] for e in events if e["kind"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 2 * spe
  ref = {e["step"]: e["loss"] for e in read_jsonl(tmp_path / "ref" / "metrics.jsonl") if e["kind"] == "train"}
  assert {e["step"]: e["loss"] for e in events if e["kind"] == "train" and e["step"] > spe + 3} == {
      s: loss for s, loss in ref.items() if s > spe + 3
  }
  assert [e["epoch"] for e in events if e["kind"] == "valid"] == [1, 2]


def _resumed_wall_s(workdir):
  (record,) = json.loads((workdir / "results.json").read_text())["records"]
  return record["extra"]["resumed_wall_s"]


def test_a_resumed_run_counts_the_training_time_before_its_resume(
    tiny_config, tiny_problem, tmp_path, monkeypatch
):
  domains, tables = tiny_problem
  training.train_and_evaluate(tiny_config(**OVERRIDES), tmp_path / "ref", domains, tables)
  assert _resumed_wall_s(tmp_path / "ref") == 0.0
  workdir = tmp_path / "stopped"
  _stop_after(monkeypatch, 6)
  with pytest.raises(Stopped):
    training.train_and_evaluate(tiny_config(**OVERRIDES), workdir, domains, tables)
  monkeypatch.undo()
  training.train_and_evaluate(tiny_config(**OVERRIDES), workdir, domains, tables)
  assert _resumed_wall_s(workdir) > 0.0


def test_a_resumed_runs_validation_log_counts_its_time_from_the_first_invocation(
    tiny_config, tiny_problem, tmp_path, monkeypatch
):
  domains, tables = tiny_problem
  batches = input_pipeline.epoch_batches

  def slow(*args, **kwargs):  # the first invocation trains for seconds, more than the resumed part
    for batch in batches(*args, **kwargs):
      time.sleep(0.5)
      yield batch

  monkeypatch.setattr(input_pipeline, "epoch_batches", slow)
  _stop_after(monkeypatch, 6)
  with pytest.raises(Stopped):
    training.train_and_evaluate(tiny_config(**OVERRIDES), tmp_path, domains, tables)
  monkeypatch.undo()
  training.train_and_evaluate(tiny_config(**OVERRIDES), tmp_path, domains, tables)
  earlier = _resumed_wall_s(tmp_path)
  assert earlier > 2.0
  (log,) = tmp_path.glob("**/metrics.jsonl")
  events = [json.loads(line) for line in log.read_text().splitlines()]
  elapsed = [e["elapsed_s"] for e in events if e["kind"] == "valid"]
  assert elapsed == sorted(elapsed) and elapsed[-1] >= earlier  # bench reads it as the time to best
