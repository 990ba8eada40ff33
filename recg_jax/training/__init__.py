"""Training on the source domain: `train_and_evaluate` (one run) and `train_members` (runs trained together).

A run trains config.model on config.data.source, evaluates the source validation split every
config.train.eval_every_epochs epochs, early-stops on config.eval.select_metric (patience in epochs),
restores the best checkpoint and evaluates the source test split. Everything it writes lives in its
workdir: checkpoints/ (checkpoints.py), metrics.jsonl and tensorboard/ (metric_log.py), results.json and
results.md (recg_jax/results.py).

The parts, one concern a module:
  optimizer.py    Adam/AdamW, clipping, the warmup and decay schedule on traced values
  members.py      the traced hyperparameters, and the member axis of runs trained together
  step.py         TrainState, the frozen tables of a step, candidate scoring, StepSpec and the jitted step
  trainer.py      the model, rows, compiled step and stacked initial state of a group of runs
  checkpoints.py  orbax `latest` and `best`, and the run signature checked on resume
  metric_log.py   metrics.jsonl and TensorBoard events
  loop.py         the epoch loop: train, validate, keep the best, stop early, test

Runs trained together: `train_members` trains S runs that differ only in traced fields (seeds, alpha, ...)
as one program over stacked parameters; each member gets exactly what `train_and_evaluate` would give it
alone (tests/test_members.py). A killed run restarted with the same config and workdir continues from its
latest checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
import numpy as np

from recg_jax import errors
from recg_jax import input_pipeline
from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.data import types
from recg_jax.errors import NonFiniteLossError
from recg_jax.training import checkpoints as checkpoints_lib
from recg_jax.training import loop as loop_lib
from recg_jax.training import metric_log
from recg_jax.training import trainer as trainer_lib
from recg_jax.training.loop import TrainResult

__all__ = ["NonFiniteLossError", "TrainResult", "train_and_evaluate", "train_members"]


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | paths.Path,
    domains: dict[str, types.DomainData],
    tables: dict[str, np.ndarray] | None,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainResult:
  """Trains on config.data.source, early-stops on validation, tests the best checkpoint.

  Returns a TrainResult; its `metrics` dict holds the best validation metrics ('valid/...') and the test
  metrics ('test/...'), each labelled with its protocol. Writes results.json / results.md in workdir.
  """
  return train_members([config], [workdir], domains, tables, mesh=mesh)[0]


def _check_run(
    members: list[ml_collections.ConfigDict],
    workdirs: list[paths.Path],
    group_dir,
    domains: dict[str, types.DomainData],
) -> list[types.DomainData]:
  """The source domain(s) of the runs, after checking what train_members is given."""
  if len(members) != len(workdirs):
    raise ValueError(f"train_members: {len(members)} configs but {len(workdirs)} workdirs")
  if len(members) > 1 and group_dir is None:
    raise ValueError("train_members: runs trained together need a group_dir for their shared checkpoint")
  config = members[0]
  sources = types.source_names(config.data.source)
  if not sources or any(s not in domains for s in sources):
    raise errors.ConfigError(
        f"config.data.source={config.data.source!r} is not among the loaded domains {sorted(domains)}"
    )
  if len(sources) > 1 and config.model.variant in ("id", "text_id"):
    raise errors.ConfigError(
        f"variant {config.model.variant!r} learns one vector per item of one catalogue: several source "
        f"domains ({config.data.source!r}) need a text variant"
    )
  select = str(config.eval.select_metric)
  if not select.startswith("valid/"):
    raise errors.ConfigError(
        f"config.eval.select_metric={select!r} must name a validation metric "
        "('valid/<protocol>/<metric>@K')"
    )
  return [domains[s] for s in sources]


def _log_setup(runs: list[loop_lib.Member], trainer: trainer_lib.Trainer) -> None:
  for run in runs:
    run.log.write(
        "setup",
        0,
        {
            "rows": trainer.rows.num_rows,
            "steps_per_epoch": trainer.steps_per_epoch,
            "targets_per_epoch": trainer.rows.num_targets,
            "devices": int(trainer.mesh.devices.size),
            "members": len(runs),
        },
        loss_name=results_lib.loss_name(run.config),
        bucket_rows={str(w): n for w, n in input_pipeline.bucket_sizes(trainer.rows).items()},
    )


def _result(run: loop_lib.Member, out, loop: loop_lib.Loop, trainer: trainer_lib.Trainer) -> TrainResult:
  """A member's TrainResult; writes its results.json / results.md (in-domain) unless it failed."""
  meta = run.meta
  epochs = int(meta.get("stopped_epoch", loop.epoch))
  common = dict(
      model=trainer.model,
      best_step=meta["best_step"] or 0,
      best_epoch=meta["best_epoch"] or 0,
      epochs=epochs,
      stop_reason=meta["stop_reason"],
      workdir=run.workdir,
  )
  if out is None:
    return TrainResult(metrics={}, params=None, error=meta["error"], **common)
  best_params, metrics, per_source = out
  summary = {
      "best_step": meta["best_step"],
      "best_epoch": meta["best_epoch"],
      "epochs": epochs,
      "stop_reason": meta["stop_reason"],
      "steps_per_epoch": trainer.steps_per_epoch,
      "training_rows": trainer.rows.num_rows,
      "resumed_wall_s": round(loop.earlier_s, 3),  # the group's training before this invocation
  }
  valid = {k: v for k, v in metrics.items() if not k.startswith("test/")}
  records = [
      results_lib.make_record(
          run.config, stage="in_domain", domain=name, metrics={**valid, **test}, extra=summary
      )
      for name, test in per_source.items()
  ]
  results_lib.write_results(run.workdir, records, run.config)
  return TrainResult(metrics=metrics, params=jax.device_get(best_params), source_metrics=per_source, **common)


def train_members(
    members: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str | paths.Path],
    domains: dict[str, types.DomainData],
    tables: dict[str, np.ndarray] | None,
    group_dir: str | paths.Path | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> list[TrainResult]:
  """Trains S runs that differ only in traced fields (seeds, alpha, ...) together, as one program over
  stacked parameters; each gets exactly what train_and_evaluate would give it alone (within float
  tolerance): its own data order, dropout keys, negatives, early stop, best checkpoint and results.

  workdirs[s] receives member s's best checkpoint, metrics.jsonl, results.json / results.md. The stacked
  `latest` checkpoint lives in group_dir (required for S > 1; a single run keeps it in its workdir), so a
  killed group restarted with the same members and folders resumes where it stopped. A member whose loss
  turns non-finite stops with TrainResult.error set while the others go on (alone, it raises
  NonFiniteLossError).
  """
  members, workdirs = list(members), [paths.as_path(w) for w in workdirs]
  sources = _check_run(members, workdirs, group_dir, domains)
  for w in workdirs:
    w.mkdir(parents=True, exist_ok=True)
  trainer = trainer_lib.create_trainer(members[0], sources, tables, mesh, members=members)
  solo = len(members) == 1
  group = paths.as_path(group_dir) if group_dir is not None else workdirs[0]
  latest = checkpoints_lib.Checkpoints(
      group,
      members[0],
      parts=("latest", "best") if solo else ("latest",),
      signature=checkpoints_lib.group_signature(members),
  )
  state, position = loop_lib.restore_or_start(trainer, latest)
  ckpts = (
      [latest]
      if solo
      else [checkpoints_lib.Checkpoints(w, m, parts=("best",)) for m, w in zip(members, workdirs)]
  )
  runs = [
      loop_lib.Member(
          index=i, config=m, workdir=w, ckpt=c, log=metric_log.MetricLog(w, position["step"]), meta=meta
      )
      for i, (m, w, c, meta) in enumerate(zip(members, workdirs, ckpts, position["members"]))
  ]
  trainer.state = None  # the initial state's buffers may be donated below; keep no stale reference
  if position["step"] == 0:
    _log_setup(runs, trainer)
  loop = loop_lib.Loop(trainer, sources, latest, runs, position)
  outputs = []
  try:
    state = loop.run(state)
    for ck in {id(c): c for c in ckpts}.values():
      ck.wait()
    outputs = [None if run.meta["error"] else loop.test(state, run) for run in runs]
  finally:
    for ck in {id(c): c for c in [latest, *ckpts]}.values():
      ck.wait()
      ck.close()
    for run in runs:
      run.log.close()
  return [_result(run, out, loop, trainer) for run, out in zip(runs, outputs)]
