"""Runs trained together: the traced hyperparameters of each run, and the member axis they stack on.

Runs that differ only in traced fields (recg_jax/config/roles.py: seeds, learning rates, alpha, tau, the
L_gen switches, the Cloze probabilities) share one compiled step. training.train_members trains S of them as
one program: every leaf of the state, batch, step keys and hyperparameters has a leading member axis, over
which one run's step is mapped (member_axis: jax.vmap, or lax.map one member after another). A single run
is the case S = 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from recg_jax import errors
from recg_jax.config import roles
from recg_jax.training import optimizer as optimizer_lib


def step_hparams(config: ml_collections.ConfigDict, total_steps: int) -> dict[str, np.ndarray]:
  """The traced hyperparameters of one run, as float32 scalars: the step's `hparams` input."""
  tc, gc = config.train, config.gen_loss
  values = {
      **optimizer_lib.optimizer_hparams(tc, total_steps),
      "cloze_last_item_prob": float(tc.cloze_last_item_prob),
      "mask_prob": float(config.model.mask_prob),
      "alpha": float(gc.alpha),
      "tau": float(gc.tau),
      "inter_sign": float(gc.inter_sign),
      "use_intra": float(bool(gc.use_intra)),
      "use_inter": float(bool(gc.use_inter)),
  }
  return {k: np.float32(v) for k, v in values.items()}


def shared_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """roles.shared_fields plus the optimiser structure: equal for runs that can be stacked (whether grad_clip
  and weight_decay are 0 shapes the optimiser state, though their values are traced)."""
  d = roles.shared_fields(config)
  d["optimizer_structure"] = dataclasses.asdict(optimizer_lib.OptimizerStructure.from_config(config.train))
  return d


def check_members(members: Sequence[ml_collections.ConfigDict]) -> None:
  """Runs train as members of one stacked step only if they differ in traced fields alone."""
  if not members:
    raise ValueError("train_members needs at least one config")
  first = shared_fields(members[0])
  for i, member in enumerate(members[1:], 1):
    diff = roles.diff(first, shared_fields(member))
    if diff:
      raise errors.ConfigError(
          f"member {i} differs from member 0 in {diff}: members of one stacked run may "
          f"differ only in {['.'.join(f) for f in roles.TRACED_FIELDS]} (and not in whether "
          "train.grad_clip / train.weight_decay are 0)"
      )


def member_tree(tree, index: int):
  """Member `index` of a stacked pytree."""
  return jax.tree.map(lambda x: x[index], tree)


def member_axis(config: ml_collections.ConfigDict) -> str:
  """config.train.member_axis resolved: 'vmap' (batched members) or 'map' (members in turn, one program)."""
  axis = str(config.train.member_axis)
  if axis not in ("auto", "vmap", "map"):
    raise errors.ConfigError(f"config.train.member_axis={axis!r}: expected 'auto', 'vmap' or 'map'")
  if axis == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return axis


def stacked_batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """[S, B, ...] batches: members unsharded, rows over the 'data' axis."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
