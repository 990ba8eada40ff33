"""What a finished run leaves in its workdir, read back: its config and result records (results.json) and the
parameters of its best validation evaluation (checkpoints/best, as training.checkpoints writes them).
Serving and fine-tuning from a run (train.init_from) read runs through here."""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from recg_jax import config as config_lib
from recg_jax import errors
from recg_jax import paths


def config_and_records(workdir: paths.Path) -> tuple[ml_collections.ConfigDict, list[dict]]:
  """The run's config (merged over today's defaults) and its result records."""
  path = workdir / "results.json"
  if not path.is_file():
    raise errors.NotAFinishedRunError(
        f"{workdir} is not a finished run: it has no results.json (a run writes it "
        "at its end: `python -m recg_jax.main --config=... --workdir=DIR`)"
    )
  try:
    payload = json.loads(path.read_text(encoding="utf-8"))
    return config_lib.from_record(payload["config"]), list(payload["records"])
  except (ValueError, KeyError, TypeError) as e:
    raise errors.NotAFinishedRunError(
        f"{path}: not a results file of a run ({type(e).__name__}: {e})"
    ) from None


def best_params(workdir: paths.Path, config: ml_collections.ConfigDict) -> Any:
  """The run's best parameters (training.checkpoints' `best`), restored as saved: host arrays."""
  folder = workdir.absolute() / "checkpoints" / "best"
  metric = str(config.eval.select_metric)
  if not folder.is_dir():
    raise errors.NotAFinishedRunError(
        f"{workdir} is not a finished run: it has no best checkpoint ({folder})"
    )
  manager = ocp.CheckpointManager(
      folder, options=ocp.CheckpointManagerOptions(create=False, best_fn=lambda m: m[metric], best_mode="max")
  )
  try:
    step = manager.best_step()
    if step is None:
      raise errors.NotAFinishedRunError(f"{workdir} is not a finished run: {folder} holds no checkpoint")
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  finally:
    manager.close()
  return jax.device_get(restored["params"])
