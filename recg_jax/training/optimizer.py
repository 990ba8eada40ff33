"""The optimiser: Adam (AdamW when decaying weights), optional clipping, warmup then constant or cosine.

Its structure (OptimizerStructure: what shapes the optimiser state and the program) is a constant of the
compiled step; its values (learning rate, warmup, weight decay, clipping) are traced inputs, so runs that
differ only in them share one program. optax's schedules take Python numbers, so the schedule is written
here in jnp on (possibly traced) values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from recg_jax import errors


@dataclasses.dataclass(frozen=True)
class OptimizerStructure:
  """What shapes the optimiser state and the program (the values are traced hyperparameters)."""

  clip: bool  # train.grad_clip > 0
  decay_weights: bool  # train.weight_decay > 0: AdamW on matrices
  decay: str  # train.decay: 'constant' | 'cosine'

  @classmethod
  def from_config(cls, train_config: ml_collections.ConfigDict) -> OptimizerStructure:
    return cls(
        clip=float(train_config.grad_clip) > 0,
        decay_weights=float(train_config.weight_decay) > 0,
        decay=decay_kind(train_config),
    )


def decay_kind(train_config: ml_collections.ConfigDict) -> str:
  if train_config.decay not in ("constant", "cosine"):
    raise errors.ConfigError(f"config.train.decay={train_config.decay!r}: expected 'constant' or 'cosine'")
  return str(train_config.decay)


def optimizer_hparams(train_config: ml_collections.ConfigDict, total_steps: int) -> dict[str, float]:
  """The optimiser's traced values of a config, as Python numbers."""
  warmup = max(int(train_config.warmup_steps), 0)
  return {
      "learning_rate": float(train_config.learning_rate),
      "warmup_steps": warmup,
      "decay_steps": max(int(total_steps) - warmup, 1),
      "weight_decay": float(train_config.weight_decay),
      "grad_clip": float(train_config.grad_clip),
  }


def learning_rate_at(count, hparams: dict[str, Any], decay: str) -> jax.Array:
  """Linear warmup from 0 over warmup_steps, then constant or cosine decay to 0 over decay_steps."""
  count = jnp.asarray(count, jnp.float32)
  peak = jnp.asarray(hparams["learning_rate"], jnp.float32)
  warmup = jnp.asarray(hparams["warmup_steps"], jnp.float32)
  warm = peak * jnp.clip(count, 0.0, warmup) / jnp.maximum(warmup, 1.0)
  if decay == "cosine":
    length = jnp.maximum(jnp.asarray(hparams["decay_steps"], jnp.float32), 1.0)
    after = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(count - warmup, 0.0, length) / length))
  else:
    after = peak * jnp.ones_like(count)
  return jnp.where(count < warmup, warm, after)


def build_optimizer(structure: OptimizerStructure, hparams: dict[str, Any]) -> optax.GradientTransformation:
  """Adam (AdamW when decaying weights, matrices only), with optional global-norm clipping.

  The state's structure depends on `structure` alone, so the state built from a config's values is
  updated by the same optimiser rebuilt inside the step from traced values.
  """
  schedule = lambda count: learning_rate_at(count, hparams, structure.decay)
  parts = []
  if structure.clip:
    parts.append(optax.clip_by_global_norm(hparams["grad_clip"]))
  if structure.decay_weights:
    # Biases, LayerNorm scales and the mask vector are not decayed.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    parts.append(optax.adamw(schedule, weight_decay=hparams["weight_decay"], mask=decay_mask))
  else:
    parts.append(optax.adam(schedule))
  return optax.chain(*parts)


# Any values: the optimiser state's structure and initial values do not depend on them.
PLACEHOLDER_HPARAMS = {
    "learning_rate": 0.0,
    "warmup_steps": 0,
    "decay_steps": 1,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
}


def global_norm(tree) -> jax.Array:
  # Local, because optax renamed its helper across the supported versions.
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
