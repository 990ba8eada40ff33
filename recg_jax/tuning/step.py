"""The tuning step: encode a batch's distinct items once, build user vectors from their histories, InfoNCE
against every item of the batch (in-batch and hard negatives), and an L2 pull towards the pretrained weights.

  e_u = normalise(pool(encoder(text_u)))               every distinct item u of the batch
  y_b = normalise(sum_t w_t e_{h_bt}), w_t = decay^age  the user: its history as text_knn aggregates it
  loss = -mean_b log softmax_u(<y_b, e_u> / tau)[positive_b] + pull * ||theta - theta_0||^2

over the candidates u of example b: every distinct item of the batch but b's own history (its positive
stays one). `trainable` decides which parameters move; the others get no update (and no gradient is spent
on them: they sit behind stop_gradient in the forward pass). With `lora` the state holds only low-rank
adaptors: each target kernel W [K, F] of every block runs as W + (alpha / r) a @ b, a [K, r], b [r, F]
zero-initialised, and the tuned encoder is that sum, merged once at the end.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from recg_jax import errors
from recg_jax.encoders import bert
from recg_jax.encoders import pooling as pooling_lib

TRAINABLE = ("full", "top_layers", "lora")
# The kernels of a BERT block (encoders/bert.BertLayer) that adaptors may target.
LORA_TARGETS = ("qkv", "attn_out", "ffn_in", "ffn_out")


@flax.struct.dataclass
class TuningState:
  step: jax.Array
  params: Any  # the encoder's parameters (float32), or with `lora` the adaptors alone
  opt_state: Any
  log_temperature: jax.Array


@dataclasses.dataclass(frozen=True)
class TuningSpec:
  """What the compiled step holds as constants (its cache key)."""

  module: Any  # the encoder's flax module (its compute dtype included)
  trainable: str
  top_layers: int
  num_layers: int
  decay: float
  learn_temperature: bool
  pull: float
  learning_rate: float
  warmup_steps: int
  weight_decay: float
  pooling: str
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("qkv", "attn_out")
  # top_layers only: the batch carries the frozen blocks' outputs ('hidden', computed once per item by
  # frozen_hidden) in place of token ids, and the step runs the top blocks alone.
  cache_frozen: bool = False

  def __post_init__(self):
    if self.trainable not in TRAINABLE:
      raise errors.ConfigError(f"config.tuning.trainable={self.trainable!r}: expected one of {TRAINABLE}")
    if self.cache_frozen and (self.trainable != "top_layers" or not 0 < self.top_layers <= self.num_layers):
      raise errors.ConfigError(
          "config.tuning.cache_frozen_blocks: needs trainable='top_layers' with 1 <= top_layers <= "
          f"{self.num_layers} (got {self.trainable!r}, {self.top_layers})"
      )
    if self.trainable == "lora":
      unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
      if unknown or not self.lora_targets:
        raise errors.ConfigError(
            f"config.tuning.lora_targets={self.lora_targets!r}: expected some of {LORA_TARGETS}"
        )
      if self.lora_rank < 1:
        raise errors.ConfigError(f"config.tuning.lora_rank={self.lora_rank}: expected at least 1")


def lora_init(pretrained, spec: TuningSpec, key: jax.Array) -> dict:
  """{layer_i: {target: {'a': [K, r], 'b': [r, F]}}} for every block: a ~ N(0, 1/K), b = 0, so tuning
  starts from the pretrained encoder exactly (as PEFT's LoRA)."""
  adaptors = {}
  for i in range(spec.num_layers):
    block, adaptors[f"layer_{i}"] = pretrained[f"layer_{i}"], {}
    for target in spec.lora_targets:
      k, f = block[target]["kernel"].shape
      key, sub = jax.random.split(key)
      adaptors[f"layer_{i}"][target] = {
          "a": jax.random.normal(sub, (k, spec.lora_rank), jnp.float32) / jnp.sqrt(jnp.float32(k)),
          "b": jnp.zeros((spec.lora_rank, f), jnp.float32),
      }
  return adaptors


def encoder_params(spec: TuningSpec, trained, pretrained):
  """The encoder's parameters a tuning state stands for: its params, or with `lora` the pretrained ones
  with every adapted kernel W replaced by W + (alpha / r) a @ b."""
  if spec.trainable != "lora":
    return trained
  scale = spec.lora_alpha / spec.lora_rank
  merged = dict(pretrained)
  for layer, targets in trained.items():
    merged[layer] = dict(pretrained[layer])
    for target, ab in targets.items():
      dense = pretrained[layer][target]
      merged[layer][target] = {**dense, "kernel": dense["kernel"] + scale * (ab["a"] @ ab["b"])}
  return merged


def _top_names(spec: TuningSpec) -> set[str]:
  return {f"layer_{i}" for i in range(spec.num_layers - spec.top_layers, spec.num_layers)}


def frozen_hidden(spec: TuningSpec, params, ids_UxT: jax.Array, mask_UxT: jax.Array) -> jax.Array:
  """hidden_UxTxH: what the first trained block receives (the embeddings and the frozen blocks' output),
  the same every step, so a tuning computes it once per item."""
  first = spec.num_layers - spec.top_layers
  lower = spec.module.clone(config=dataclasses.replace(spec.module.config, num_layers=first))
  frozen = {k: v for k, v in params.items() if k not in _top_names(spec)}
  return lower.apply({"params": frozen}, ids_UxT, mask_UxT)


def _encode(spec: TuningSpec, params, batch) -> jax.Array:
  """hidden_UxTxH of the batch's items: the whole encoder on their tokens, or the top blocks on their
  cached frozen states."""
  if not spec.cache_frozen:
    return spec.module.apply({"params": params}, batch["ids"], batch["mask"])
  m = spec.module
  top = bert.BertBlocks(m.config, spec.num_layers - spec.top_layers, m.dtype, m.attention_cache_bytes)
  return top.apply({"params": {k: params[k] for k in _top_names(spec)}}, batch["hidden"], batch["mask"])


def _adapted(adaptors, path) -> bool:
  """Whether a leaf's key path (layer, module, name) is a kernel that `adaptors` adapt."""
  keys = [getattr(k, "key", None) for k in path]
  return len(keys) == 3 and keys[2] == "kernel" and keys[1] in adaptors.get(keys[0], {})


def trainable_labels(params, spec: TuningSpec):
  """'train' or 'freeze' per leaf: every leaf (`full`, or `lora`'s adaptors), or the last top_layers
  blocks only."""
  if spec.trainable in ("full", "lora"):
    return jax.tree.map(lambda _: "train", params)
  top = _top_names(spec)
  return {k: jax.tree.map(lambda _, k=k: "train" if k in top else "freeze", v) for k, v in params.items()}


def optimizer(spec: TuningSpec, params) -> optax.GradientTransformation:
  schedule = optax.linear_schedule(0.0, spec.learning_rate, max(spec.warmup_steps, 1))
  adam = optax.adamw(schedule, weight_decay=spec.weight_decay) if spec.weight_decay else optax.adam(schedule)
  return optax.multi_transform({"train": adam, "freeze": optax.set_to_zero()}, trainable_labels(params, spec))


def _frozen_behind_stop_gradient(params, labels):
  return jax.tree.map(lambda p, lab: p if lab == "train" else jax.lax.stop_gradient(p), params, labels)


def user_vectors(items_UxD: jax.Array, history_BxH: jax.Array, decay: float) -> jax.Array:
  """users_BxD: the normalised recency-weighted mean of each example's history items (-1 = none)."""
  rows_BxHxD = jnp.take(items_UxD, jnp.maximum(history_BxH, 0), axis=0)
  age_H = jnp.arange(history_BxH.shape[1])[::-1]
  weight_BxH = jnp.where(history_BxH >= 0, jnp.power(jnp.float32(decay), age_H)[None, :], 0.0)
  return pooling_lib.l2_normalize(jnp.einsum("bh,bhd->bd", weight_BxH, rows_BxHxD))


def infonce(users_BxD, items_UxD, positive_B, candidate_ok_BxU, temperature) -> tuple[jax.Array, jax.Array]:
  """(mean InfoNCE loss, accuracy): -log softmax over each example's candidates of <user, item> / tau at
  its positive; accuracy = the positive scores highest."""
  logits_BxU = users_BxD @ items_UxD.T / temperature
  logits_BxU = jnp.where(candidate_ok_BxU, logits_BxU, jnp.finfo(jnp.float32).min)
  positive_logit_B = jnp.take_along_axis(logits_BxU, positive_B[:, None], axis=1)[:, 0]
  loss = jnp.mean(jax.nn.logsumexp(logits_BxU, axis=1) - positive_logit_B)
  return loss, jnp.mean(jnp.argmax(logits_BxU, axis=1) == positive_B)


def loss_fn(spec: TuningSpec, params, log_temperature, pretrained, batch) -> tuple[jax.Array, dict]:
  """InfoNCE + pull, and the batch's accuracy (the positive ranked first among its candidates). `params`
  are the state's: the encoder's, or with `lora` the adaptors."""
  labels = trainable_labels(params, spec)
  params = _frozen_behind_stop_gradient(params, labels)
  if spec.trainable == "lora":
    adaptors = params
    params = encoder_params(spec, adaptors, jax.lax.stop_gradient(pretrained))
    # The pull below then sees the adapted kernels move, and nothing else.
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if _adapted(adaptors, path) else "freeze", params
    )
  hidden_UxTxH = _encode(spec, params, batch)
  items_UxH = pooling_lib.l2_normalize(pooling_lib.pool(hidden_UxTxH, batch["mask"], spec.pooling))
  users_BxD = user_vectors(items_UxH, batch["history"], spec.decay)
  loss, accuracy = infonce(
      users_BxD, items_UxH, batch["positive"], batch["candidate_ok"], jnp.exp(log_temperature)
  )
  pull = 0.0
  if spec.pull:
    moved = jax.tree.map(
        lambda p, p0, lab: jnp.sum(jnp.square(p - p0)) if lab == "train" else 0.0, params, pretrained, labels
    )
    pull = spec.pull * sum(jax.tree.leaves(moved))
  return loss + pull, {"infonce": loss, "pull": jnp.asarray(pull, jnp.float32), "accuracy": accuracy}


@functools.cache
def compiled_step(spec: TuningSpec, mesh: jax.sharding.Mesh) -> Callable:
  """`(state, batch, pretrained) -> (state, metrics)`, jitted, the state donated; the batch's item rows
  are sharded over the mesh's 'data' axis, everything else replicated."""

  def step(state: TuningState, batch, pretrained):
    grad_fn = jax.value_and_grad(
        lambda p, t: loss_fn(spec, p, t, pretrained, batch), argnums=(0, 1), has_aux=True
    )
    (loss, aux), (grads, grad_t) = grad_fn(state.params, state.log_temperature)
    tx = optimizer(spec, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    log_t = state.log_temperature - (spec.learning_rate * 10 * grad_t if spec.learn_temperature else 0.0)
    new = TuningState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        log_temperature=log_t,
    )
    return new, {"loss": loss, **aux, "temperature": jnp.exp(log_t)}

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch_shardings = {
      ("hidden" if spec.cache_frozen else "ids"): rows,
      "mask": rows,
      "history": replicated,
      "positive": replicated,
      "candidate_ok": replicated,
  }
  return jax.jit(
      step,
      donate_argnums=0,
      in_shardings=(replicated, batch_shardings, replicated),
      out_shardings=(replicated, replicated),
  )
