"""Orbax checkpoints of a run: `latest` (the state and loop position, to resume) and `best` (parameters of
the best validation evaluation), with the run signature they were computed under.

  checkpoints/latest/<step>/   full TrainState + loop position (epoch, batch), each member's stop state
  checkpoints/best/<step>/     parameters of the best validation evaluation
  checkpoints/run_config.json  the run signature (recg_jax/config/roles.py), checked on resume
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp

from recg_jax import distributed
from recg_jax import errors
from recg_jax import paths
from recg_jax.config import roles
from recg_jax.training import step as step_lib


def group_signature(members: Sequence[ml_collections.ConfigDict]) -> dict[str, Any]:
  """The run signature of stacked members: the shared fields, and each member's traced values."""
  if len(members) == 1:
    return roles.run_signature(members[0])
  return {
      **roles.run_signature(members[0]),
      "members": roles.as_dict([roles.traced_values(m) for m in members]),
  }


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
  # Across processes orbax names its barriers by step; `latest` and `best` often save the same step at
  # once, so each manager gets its own names.
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def abstract(tree):
  """The shapes, dtypes and shardings of a tree of arrays, to restore into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:
  """`latest` (TrainState + loop position, for resume) and `best` (parameters, by validation metric).

  parts: which of the two this folder holds. A single run keeps both in its workdir; runs trained
  together keep the stacked `latest` in their group folder and each its own `best`.
  signature: what the folder's checkpoints were computed with (default the config's run signature).
  """

  def __init__(
      self,
      workdir: paths.Path,
      config: ml_collections.ConfigDict,
      parts: Sequence[str] = ("latest", "best"),
      signature: dict[str, Any] | None = None,
  ):
    self.root = paths.absolute(workdir) / "checkpoints"
    self.metric = metric = str(config.eval.select_metric)
    self.latest = self.best = None
    if "latest" in parts:
      self.latest = ocp.CheckpointManager(
          self.root / "latest",
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1,
              create=True,
              cleanup_tmp_directories=True,
              multiprocessing_options=_barrier_prefix("latest"),
          ),
      )
    if "best" in parts:
      self.best = ocp.CheckpointManager(
          self.root / "best",
          options=ocp.CheckpointManagerOptions(
              max_to_keep=max(1, int(config.train.max_to_keep)),
              best_fn=lambda m: m[metric],
              best_mode="max",
              keep_checkpoints_without_metrics=False,
              create=True,
              cleanup_tmp_directories=True,
              multiprocessing_options=_barrier_prefix("best"),
          ),
      )
    self._check_signature(config, signature if signature is not None else roles.run_signature(config))

  def _managers(self) -> list[ocp.CheckpointManager]:
    return [m for m in (self.latest, self.best) if m is not None]

  def _check_signature(self, config: ml_collections.ConfigDict, signature: dict[str, Any]):
    path = self.root / "run_config.json"
    if path.exists() and any(m.latest_step() is not None for m in self._managers()):
      stored = json.loads(path.read_text())
      # A group's members and its shared fields are compared after merging them over today's defaults.
      diff = roles.diff(
          {"members": roles.members_over_defaults(stored["members"])} if "members" in stored else {},
          {k: v for k, v in signature.items() if k == "members"},
      )
      diff += roles.recorded_diff(
          {k: v for k, v in stored.items() if k != "members"}, config, roles.run_signature
      )
      if diff:
        raise errors.RunStateError(
            f"{self.root} holds a checkpoint of a different run (differs in {diff}); use a "
            "fresh workdir or restore the config"
        )
    if distributed.is_primary():  # atomically: another process may be reading the previous one
      self.root.mkdir(parents=True, exist_ok=True)
      paths.write_json_atomic(path, signature, sort_keys=True)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, state: step_lib.TrainState, meta: dict) -> None:
    step = int(meta["step"])
    if step in self.latest.all_steps():
      return
    self.latest.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    )

  def restore_latest(self, abstract_state) -> tuple[step_lib.TrainState, dict] | None:
    step = self.latest.latest_step()
    if step is None:
      return None
    out = self.latest.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
    )
    return out["state"], dict(out["meta"])

  def save_best(self, step: int, params, meta: dict, value: float) -> None:
    # A run resumed from before an improvement re-evaluates it and reaches the same step again.
    if step in self.best.all_steps():
      return
    self.best.save(
        step,
        args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
        metrics={self.metric: float(value)},
    )

  def restore_best(self, abstract_params) -> tuple[Any, dict] | None:
    self.best.wait_until_finished()
    step = self.best.best_step()
    if step is None:
      return None
    out = self.best.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()
        ),
    )
    return out["params"], dict(out["meta"])

  def wait(self) -> None:
    for m in self._managers():
      m.wait_until_finished()

  def close(self) -> None:
    for m in self._managers():
      m.close()
