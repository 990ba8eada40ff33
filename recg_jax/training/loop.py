"""The epoch loop of S runs trained together: train an epoch, validate, keep the best, stop early, test.

Every epoch ends in a `latest` checkpoint (also every train.checkpoint_every_steps steps) holding the
stacked state, the loop position and every member's stop state. A member stops when it has seen no gain in
config.eval.select_metric for train.patience epochs; the stacked step still runs its lane until all members
have stopped (lanes are independent), and its results come from its best checkpoint, exactly as if it had
trained alone. Batches are a pure function of (seed, epoch, batch index), so a resumed run reproduces the
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from recg_jax import distributed
from recg_jax import errors
from recg_jax import evaluate as evaluate_lib
from recg_jax import input_pipeline
from recg_jax import paths
from recg_jax.data import types
from recg_jax.errors import NonFiniteLossError
from recg_jax.models import recommender as recommender_lib
from recg_jax.training import checkpoints as checkpoints_lib
from recg_jax.training import members as members_lib
from recg_jax.training import metric_log
from recg_jax.training import step as step_lib
from recg_jax.training import trainer as trainer_lib


@dataclasses.dataclass
class TrainResult:
  """What later stages need: the metrics, the model and its best parameters."""

  metrics: dict[str, float]  # 'valid/<protocol>/<metric>' (best evaluation) and 'test/...'
  params: Any  # best parameters (host numpy arrays)
  model: recommender_lib.Recommender
  best_step: int
  best_epoch: int
  epochs: int  # epochs trained in total
  stop_reason: str
  workdir: paths.Path
  error: str = ""  # set when this member stopped on a non-finite loss (runs trained together only)
  # {source domain: its 'test/...' metrics} (one entry for a single source, whose are also in `metrics`)
  source_metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def fresh_member_meta() -> dict:
  return {
      "best_metric": None,
      "best_step": None,
      "best_epoch": None,
      "best_valid": None,
      "finished": False,
      "stop_reason": "",
      "error": "",
  }


@dataclasses.dataclass
class Member:
  """One run among those trained together: its config, folder, log, best checkpoint and stop state."""

  index: int
  config: ml_collections.ConfigDict
  workdir: paths.Path
  ckpt: checkpoints_lib.Checkpoints  # holds its `best` (and, trained alone, the group's `latest` too)
  log: metric_log.MetricLog
  meta: dict  # _fresh_member_meta fields, saved with the group's latest checkpoint
  last_train: dict[str, float] | None = None  # the last logged train means, for the progress bar

  @property
  def tag(self) -> str:
    return f"{self.workdir.parent.name}/{self.workdir.name}: "


class Loop:
  """The epoch loop of S members trained together: train an epoch, validate, keep the best, stop early.

  Every epoch ends in a `latest` checkpoint (also every train.checkpoint_every_steps steps), holding the
  stacked state, the loop position and every member's stop state. A member stops when it has seen no
  gain in config.eval.select_metric for train.patience epochs; the stacked step still runs its lane
  until all members have stopped (lanes are independent), and its results come from its best checkpoint,
  exactly as if it had trained alone.
  """

  def __init__(
      self,
      trainer: trainer_lib.Trainer,
      domains: list[types.DomainData],
      latest: checkpoints_lib.Checkpoints,
      members: list[Member],
      position: dict[str, Any],
  ):
    self.trainer, self.latest, self.members = trainer, latest, members
    self.config = trainer.config
    self.tc = self.config.train
    self.select = str(self.config.eval.select_metric)
    self.spe = trainer.steps_per_epoch
    self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
    # Each source with the table it is evaluated against (a multi-source run's, cut out of the stack).
    tables = trainer.tables_on_device
    self.sources = (
        [(domains[0], tables["source"])]
        if "source" in tables
        else [(d, tables["sources"][i, : d.num_items + 1]) for i, d in enumerate(domains)]
    )
    self.pending: list[tuple[int, list[int], dict]] = []  # (step, real rows per member, device metrics)
    self.clock = time.perf_counter()
    self.started = time.perf_counter()
    # Training seconds of the invocations before a resume, up to their last checkpoint: a resumed run's
    # cost is theirs plus this one's, not this one's alone.
    self.earlier_s = float(position.get("wall_s", 0.0))

  @property
  def solo(self) -> bool:
    return len(self.members) == 1

  def active(self) -> list[Member]:
    return [m for m in self.members if not m.meta["finished"]]

  def position(self) -> dict[str, Any]:
    return {
        "step": self.step,
        "epoch": self.epoch,
        "batch": self.batch,
        "members": [dict(m.meta) for m in self.members],
        "wall_s": self.training_s(),
    }

  def training_s(self) -> float:
    """Seconds this run has trained, over every invocation up to now."""
    return self.earlier_s + time.perf_counter() - self.started

  # -- training ---------------------------------------------------------------------------------------

  def flush(self, keep_last: bool) -> None:
    """Reads back pending step metrics (all but the newest if keep_last), checks them, logs their mean."""
    take = self.pending[:-1] if keep_last else self.pending[:]
    if not take:
      return
    del self.pending[: len(take)]
    host = jax.device_get([m for _, _, m in take])
    now = time.perf_counter()
    elapsed = max(now - self.clock, 1e-9)  # steady state: steps finished since the previous read-back
    self.clock = now
    for member in self.members:
      if member.meta["finished"]:  # stopped: its lane still runs, but alone it would have stopped here
        continue
      i = member.index
      for (s, _, _), m in zip(take, host):
        if not np.isfinite(m["loss"][i]):
          self._non_finite(member, s, float(m["loss"][i]))
          break
      if member.meta["error"]:
        continue
      mean = {k: float(np.mean([m[k][i] for m in host])) for k in host[0]}
      mean["sequences_per_s"] = sum(r[i] for _, r, _ in take) / elapsed
      mean["targets_per_s"] = float(sum(m["targets"][i] for m in host)) / elapsed
      member.log.write("train", take[-1][0], mean, epoch=(take[-1][0] - 1) // self.spe)
      member.last_train = mean

  def _non_finite(self, member: Member, step: int, loss: float) -> None:
    last = self.latest.latest_step()
    message = (
        f"training loss is {loss} at step {step} (epoch {step // self.spe}): stopping. The last good "
        f"checkpoint is step {last} in {self.latest.root / 'latest'}; lower "
        "config.train.learning_rate or set config.train.grad_clip"
    )
    if self.solo:
      raise NonFiniteLossError(message)
    # Trained together, the other members go on: lanes never mix.
    self._stop(member, f"non-finite loss at step {step}", error=message)
    print(f"{member.tag}{message}", flush=True)

  def train_epoch(self, state: step_lib.TrainState) -> step_lib.TrainState:
    trainer, batch_size = self.trainer, int(self.tc.batch_size)
    seeds = trainer.seeds
    # Real (unpadded) rows of each batch of each member, for the sequences/s figure.
    real_rows = [
        [len(entry[1]) for entry in input_pipeline.plan_of(trainer.rows, batch_size, s, self.epoch)]
        for s in seeds
    ]
    batches = input_pipeline.prefetch(
        input_pipeline.stacked_epoch_batches(
            trainer.rows, batch_size, seeds, self.epoch, self.batch, part=distributed.local_rows(batch_size)
        ),
        int(self.tc.prefetch),
        trainer.batch_sharding,
    )
    bar = tqdm.tqdm(
        total=self.spe,
        initial=self.batch,
        desc=f"epoch {self.epoch}",
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not distributed.is_primary(),
    )
    self.clock = time.perf_counter()  # evaluation time is not training time
    ckpt_every, log_every = int(self.tc.checkpoint_every_steps), max(1, int(self.tc.log_every_steps))
    for b, batch in enumerate(batches, start=self.batch):
      state, metrics = trainer.step(state, batch)
      self.step += 1
      self.pending.append((self.step, [rows[b] for rows in real_rows], metrics))
      bar.update(1)
      if self.step % log_every == 0:
        self.flush(keep_last=True)
        shown = next((m.last_train for m in self.active() if m.last_train), None)
        if shown:
          bar.set_postfix(loss=f"{shown['loss']:.4f}", seq_s=f"{shown['sequences_per_s']:.0f}")
      if ckpt_every > 0 and self.step % ckpt_every == 0 and b + 1 < self.spe:
        self.flush(keep_last=False)  # never checkpoint a state whose losses were not checked
        self.batch = b + 1
        self.latest.save_latest(state, self.position())
    bar.close()
    self.flush(keep_last=False)
    self.epoch += 1
    self.batch = 0
    return state

  # -- validation and the stop policy ---------------------------------------------------------------------

  def eval_due(self) -> bool:
    return self.epoch % int(self.tc.eval_every_epochs) == 0 or self.epoch == int(self.tc.num_epochs)

  def _evaluate(self, params, split: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(metrics, {source: its metrics}) of `split` on every source; with several, the metrics are their
    mean (what early stopping reads)."""
    per_source = {
        domain.name: evaluate_lib.evaluate_split(
            self.trainer.model,
            params,
            table,
            types.leave_one_out(domain, split, int(self.config.data.max_len)),
            domain,
            self.config.eval,
            self.trainer.mesh,
        )
        for domain, table in self.sources
    }
    if len(per_source) == 1:
      return next(iter(per_source.values())), per_source
    keys = next(iter(per_source.values())).keys()
    return {k: float(np.mean([m[k] for m in per_source.values()])) for k in keys}, per_source

  def validate(self, state: step_lib.TrainState) -> None:
    """Evaluates every active member on the source validation split; keeps its best; stops it early."""
    for member in self.active():
      params = members_lib.member_tree(state.params, member.index)
      valid, per_source = self._evaluate(params, "valid")
      valid = {f"valid/{k}": v for k, v in valid.items()}
      if self.select not in valid:
        raise errors.ConfigError(
            f"config.eval.select_metric={self.select!r} is not among the validation metrics "
            f"{sorted(valid)}"
        )
      # Wall time since this invocation started (a resumed run counts from its restart).
      by_source = (
          {f"valid@{name}/{k}": v for name, m in per_source.items() for k, v in m.items()}
          if len(per_source) > 1
          else {}
      )
      member.log.write(
          "valid",
          self.step,
          {**valid, **by_source},
          epoch=self.epoch,
          elapsed_s=round(self.training_s(), 3),
      )
      self._keep_best_or_stop(member, params, valid)

  def _keep_best_or_stop(self, member: Member, params, valid: dict[str, float]) -> None:
    meta, value = member.meta, valid[self.select]
    if meta["best_metric"] is None or value > meta["best_metric"]:
      meta.update(best_metric=value, best_step=self.step, best_epoch=self.epoch, best_valid=valid)
      member.ckpt.save_best(
          self.step, params, {"epoch": self.epoch, "step": self.step, "valid": valid}, value
      )
    elif self.epoch - int(meta["best_epoch"]) >= int(self.tc.patience):
      self._stop(
          member,
          f"early stop: no {self.select} gain for {self.tc.patience} epochs (best "
          f"{meta['best_metric']:.5f} at epoch {meta['best_epoch']})",
      )
    distributed.say(
        f"{'' if self.solo else member.tag}epoch {self.epoch}: {self.select}={value:.5f} (best "
        f"{meta['best_metric']:.5f} @ epoch {meta['best_epoch']})"
    )

  def _stop(self, member: Member, reason: str, **extra) -> None:
    # Where a run alone would have ended: its results and logs say so, whatever its lane does next.
    member.meta.update(
        finished=True, stop_reason=reason, stopped_step=self.step, stopped_epoch=self.epoch, **extra
    )

  def end_epoch(self, state: step_lib.TrainState) -> None:
    if self.epoch >= int(self.tc.num_epochs):
      for member in self.active():
        self._stop(member, f"reached num_epochs={self.tc.num_epochs}")
    self.latest.save_latest(state, self.position())

  def run(self, state: step_lib.TrainState) -> step_lib.TrainState:
    while self.active() and self.epoch < int(self.tc.num_epochs):
      state = self.train_epoch(state)
      if self.eval_due():
        self.validate(state)
      self.end_epoch(state)
    return state

  # -- testing --------------------------------------------------------------------------------------------

  def test(self, state: step_lib.TrainState, member: Member) -> tuple[Any, dict[str, float], dict]:
    """(best parameters, best validation + test metrics, {source: its test metrics}) of one member: its
    best checkpoint (or its last state if no evaluation ever ran) on the source test split (several
    sources: the mean of theirs)."""
    params = members_lib.member_tree(state.params, member.index)
    best = member.ckpt.restore_best(checkpoints_lib.abstract(params))
    best_valid = {}
    if best is not None:
      params, best_meta = best
      best_valid = best_meta.get("valid", {})
    test, per_source = self._evaluate(params, "test")
    test = {f"test/{k}": v for k, v in test.items()}
    per_source = {name: {f"test/{k}": v for k, v in m.items()} for name, m in per_source.items()}
    member.log.write(
        "test", member.meta.get("stopped_step", self.step), test, best_step=member.meta["best_step"]
    )
    return params, {**best_valid, **test}, per_source


def restore_or_start(
    trainer: trainer_lib.Trainer, latest: checkpoints_lib.Checkpoints
) -> tuple[step_lib.TrainState, dict[str, Any]]:
  """The group's latest checkpoint and loop position, or the initial state at step 0."""
  members = len(trainer.configs)
  fresh = {"step": 0, "epoch": 0, "batch": 0, "members": [fresh_member_meta() for _ in range(members)]}
  try:
    restored = latest.restore_latest(checkpoints_lib.abstract(trainer.state))
  except (ValueError, TypeError, KeyError) as e:
    raise errors.RunStateError(
        f"cannot resume from {latest.root / 'latest'}: its state does not fit this run's "
        f"({len(trainer.configs)} member(s), stacked on a leading axis); a checkpoint written "
        "before runs were stacked, or by another group, cannot be resumed: use a fresh "
        "workdir"
    ) from e
  if restored is None:
    return trainer.state, fresh
  state, meta = restored
  steps = np.asarray(jax.device_get(state.step))
  if not (steps == int(meta["step"])).all() or len(meta.get("members", ())) != members:
    raise errors.RunStateError(
        f"inconsistent checkpoint in {latest.root}: state steps {steps.tolist()}, position "
        f"step {meta['step']}, {len(meta.get('members', ()))} member records for {members} "
        "members"
    )
  for m in meta["members"]:
    if (
        m["finished"]
        and m["stop_reason"].startswith("reached num_epochs")
        and meta["epoch"] < int(trainer.config.train.num_epochs)
    ):
      m.update(finished=False, stop_reason="")  # num_epochs was raised: train on
      m.pop("stopped_step", None)
      m.pop("stopped_epoch", None)
  logging.info("resuming from step %d (epoch %d, batch %d)", meta["step"], meta["epoch"], meta["batch"])
  distributed.say(
      f"resuming {latest.root.parent} from step {meta['step']} (epoch {meta['epoch']}, batch "
      f"{meta['batch']})"
  )
  return state, meta
