"""Training on the source domain: TrainState, one jitted train step, the epoch loop, checkpoints, early stop.

`train_and_evaluate` trains config.model.backbone/variant on config.data.source, evaluates the source
validation split every config.train.eval_every_epochs epochs, early-stops on config.eval.select_metric
(patience in epochs), restores the best checkpoint and evaluates the source test split. Everything it
writes lives in `workdir`:

  checkpoints/latest/<step>/   full TrainState + loop position (epoch, batch), each run's stop state
  checkpoints/best/<step>/     parameters of the best validation evaluation
  checkpoints/run_config.json  the fields that define the run, checked on resume
  metrics.jsonl                one JSON object per log / eval event
  tensorboard/                 tensorboardX event files
  results.json, results.md     the final metrics, labelled with protocol, loss and config (results.py)

One program per shape. The step is compiled from what has a shape or a structure (the model, the data
layout, the loss, the optimiser's parts); every other number (TRACED_FIELDS: seed, learning rate and
schedule, weight decay, clipping, alpha, tau, the inter sign, the L_gen switches, Cloze probabilities) is
an input. A run whose model and layout equal an earlier run's reuses that jitted step, and with it every
executable already compiled in the process.

Runs trained together. `train_members` trains S runs that differ only in TRACED_FIELDS as one program:
jax.vmap of one run's step over a leading member axis of the state, the batch, the step keys and the
hyperparameters. Each member draws its own rows (epoch_plan by its seed), dropout, negatives and L_gen
samples, keeps its own early stop and best checkpoint (in its own workdir), and ends exactly as if it had
trained alone (tests/test_members.py). The stacked `latest` checkpoint lives in a group folder. A single
run is the case S = 1.

A killed run restarted with the same config and workdir continues from the latest checkpoint, which is
written at the end of every epoch and every train.checkpoint_every_steps steps. Batches are a pure
function of (seed, epoch, batch index) and the step RNG is fold_in(key, step), so on the same machine the
resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import time
from typing import Any, Callable, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from recg_jax import distributed
from recg_jax import evaluate as evaluate_lib
from recg_jax import fingerprint as fingerprint_lib
from recg_jax import gen_loss as gen_loss_lib
from recg_jax import input_pipeline
from recg_jax import losses
from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib

# How many times each jitted function of this module was traced in this process (a retrace per batch
# would show up here; tests assert one trace per run).
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class TrainState:
  """Everything the optimiser updates; the frozen item tables are step arguments, never in here."""

  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: Any


# ----------------------------------------------------------------------------------------------------------
# Hyperparameters that are inputs of the compiled step.

# Config fields a compiled train step reads as traced inputs rather than as constants baked into the
# program: runs that differ only in these (seeds, the alpha sweep, the L_gen ablations, learning rates)
# share one compiled program, and train together as members of one stacked step (see train_members).
TRACED_FIELDS = (
    ("train", "seed"), ("train", "learning_rate"), ("train", "warmup_steps"), ("train", "weight_decay"),
    ("train", "grad_clip"), ("train", "cloze_last_item_prob"), ("model", "mask_prob"),
    ("gen_loss", "alpha"), ("gen_loss", "tau"), ("gen_loss", "inter_sign"), ("gen_loss", "use_intra"),
    ("gen_loss", "use_inter"),
)


def step_hparams(config: ml_collections.ConfigDict, total_steps: int) -> dict[str, np.ndarray]:
  """The traced hyperparameters of one run, as float32 scalars."""
  tc, gc = config.train, config.gen_loss
  values = {
      **optimizer_hparams(tc, total_steps), "cloze_last_item_prob": float(tc.cloze_last_item_prob),
      "mask_prob": float(config.model.mask_prob), "alpha": float(gc.alpha), "tau": float(gc.tau),
      "inter_sign": float(gc.inter_sign), "use_intra": float(bool(gc.use_intra)),
      "use_inter": float(bool(gc.use_inter)),
  }
  return {k: np.float32(v) for k, v in values.items()}


def optimizer_hparams(train_config: ml_collections.ConfigDict, total_steps: int) -> dict[str, float]:
  """The optimiser's share of step_hparams, as Python numbers."""
  warmup = max(int(train_config.warmup_steps), 0)
  return {"learning_rate": float(train_config.learning_rate), "warmup_steps": warmup,
          "decay_steps": max(int(total_steps) - warmup, 1), "weight_decay": float(train_config.weight_decay),
          "grad_clip": float(train_config.grad_clip)}


# ----------------------------------------------------------------------------------------------------------
# Optimiser.


@dataclasses.dataclass(frozen=True)
class OptimizerStructure:
  """What shapes the optimiser state and the program (the values are traced hyperparameters)."""

  clip: bool  # train.grad_clip > 0
  decay_weights: bool  # train.weight_decay > 0: AdamW on matrices
  decay: str  # train.decay: 'constant' | 'cosine'

  @classmethod
  def from_config(cls, train_config: ml_collections.ConfigDict) -> "OptimizerStructure":
    return cls(clip=float(train_config.grad_clip) > 0, decay_weights=float(train_config.weight_decay) > 0,
               decay=decay_kind(train_config))


def decay_kind(train_config: ml_collections.ConfigDict) -> str:
  if train_config.decay not in ("constant", "cosine"):
    raise ValueError(f"config.train.decay={train_config.decay!r}: expected 'constant' or 'cosine'")
  return str(train_config.decay)


def learning_rate_at(count, hparams: dict[str, Any], decay: str) -> jax.Array:
  """Linear warmup from 0 over warmup_steps, then constant or cosine decay to 0 over decay_steps.

  Written with jnp on (possibly traced) hyperparameters: optax's schedules take Python numbers.
  """
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


def learning_rate_schedule(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The schedule of a config: linear warmup from 0 over train.warmup_steps, then constant or cosine
  decay to 0 at total_steps."""
  decay = decay_kind(train_config)
  warmup = max(int(train_config.warmup_steps), 0)
  hparams = {"learning_rate": float(train_config.learning_rate), "warmup_steps": warmup,
             "decay_steps": max(int(total_steps) - warmup, 1)}
  return lambda count: learning_rate_at(count, hparams, decay)


def make_optimizer(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """build_optimizer with a config's values (Python numbers)."""
  return build_optimizer(OptimizerStructure.from_config(train_config),
                         optimizer_hparams(train_config, total_steps))


# ----------------------------------------------------------------------------------------------------------
# Step inputs.


@dataclasses.dataclass(frozen=True)
class StepTables:
  """The frozen tables a step reads, and what is static about them.

  arrays: {'source': [I+1, H] or None (variant 'id'), 'gen': [D, max_d I_d + 1, H] (only with L_gen)}.
  gen_counts: real item count I_d of each generalization-loss domain (source first), for sampling.
  gen_domains: their names, in the same order.
  """

  arrays: dict[str, Any]
  gen_counts: tuple[int, ...] = ()
  gen_domains: tuple[str, ...] = ()


def gen_loss_enabled(config: ml_collections.ConfigDict) -> bool:
  return config.model.variant == "recg" and bool(config.gen_loss.enabled)


def gen_domain_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Source, then targets, then auxiliary domains, without repeats."""
  names = [config.data.source, *config.data.targets, *config.data.auxiliary]
  return tuple(dict.fromkeys(names))


def build_step_tables(config: ml_collections.ConfigDict,
                      tables: dict[str, np.ndarray] | None) -> StepTables:
  """Validates the frozen tables and stacks the generalization-loss domains, zero-padded to one size."""
  if config.model.variant == "id":
    return StepTables(arrays={"source": None})
  source = config.data.source
  if not tables or source not in tables:
    raise ValueError(f"variant {config.model.variant!r} needs the frozen embedding table of the source "
                     f"domain {source!r}; got tables for {sorted(tables or {})}")
  arrays = {"source": np.asarray(tables[source], np.float32)}
  if not gen_loss_enabled(config):
    return StepTables(arrays=arrays)
  names = gen_domain_names(config)
  missing = [n for n in names if n not in tables]
  if missing:
    raise ValueError(f"the generalization loss samples items of {names} (data.source, data.targets, "
                     f"data.auxiliary) but no embedding table was given for {missing}")
  dims = {n: tables[n].shape[1] for n in names}
  if len(set(dims.values())) != 1:
    raise ValueError(f"embedding tables disagree on their width: {dims}")
  gen_loss_lib.check_num_domains(len(names))
  counts = tuple(int(tables[n].shape[0]) - 1 for n in names)
  stacked = np.zeros((len(names), max(counts) + 1, dims[source]), np.float32)
  for d, n in enumerate(names):
    stacked[d, :counts[d] + 1] = tables[n]
  arrays["gen"] = stacked
  return StepTables(arrays=arrays, gen_counts=counts, gen_domains=names)


# ----------------------------------------------------------------------------------------------------------
# The train step.


def candidate_scoring(config: ml_collections.ConfigDict) -> str:
  """config.train.candidate_scores resolved: 'factored' | 'gather' | 'full'."""
  mode = str(config.train.candidate_scores)
  if mode not in ("auto", "factored", "gather", "full"):
    raise ValueError(f"config.train.candidate_scores={mode!r}: expected 'auto', 'factored', 'gather' or "
                     "'full'")
  text = str(config.model.get("score_space", "projected")) == "text"
  if mode == "auto":
    # An ID table's gradient is catalogue-sized whichever way its rows are read: keep the full table.
    # Text-space candidates are the frozen rows themselves: gathering them is already the cheap way.
    return "full" if config.model.variant == "id" else "gather" if text else "factored"
  if mode == "factored" and config.model.variant == "id":
    raise ValueError("config.train.candidate_scores='factored' needs a frozen table (variant 'sem' or "
                     "'recg'); variant 'id' scores learned vectors: use 'gather' or 'full'")
  if mode == "factored" and text:
    raise ValueError("config.train.candidate_scores='factored' scores W_p e + b_p; with "
                     "config.model.score_space='text' the candidates are the frozen rows: use 'gather' or "
                     "'full'")
  return mode


def candidate_scores(model: recommender_lib.Recommender, variables, hidden_BxPxD: jax.Array,
                     ids_BxPxC: jax.Array, table_NxH: jax.Array | None, mode: str) -> jax.Array:
  """scores_BxPxC = <hidden_BxPxD, Recommender.candidate_vectors(ids)> (0 for id 0, the padding).

  'full' projects the whole catalogue (item_vectors) and indexes it; 'gather' projects only the ids' rows
  (candidate_vectors). 'factored' (sem/recg, whose candidate vector is W_p e + b_p) never forms a
  candidate vector: <y, W_p e + b_p> = <W_p^T y, e> + <y, b_p>, so a target position costs one D x H
  product and each of its 1 + K candidates an H-long dot with its raw table row, instead of an H x D
  projection per candidate (and of a catalogue-sized gradient scatter for 'full').
  """
  if mode == "factored":
    try:  # heads.ItemProjection's W_p (an nn.Dense), inside Recommender's `items` module
      kernel_HxD = variables["params"]["items"]["W_p"]["kernel"]
      bias_D = variables["params"]["items"]["W_p"]["bias"]
    except KeyError as e:
      raise ValueError("config.train.candidate_scores='factored' needs the parameters items/W_p/{kernel, "
                       "bias} (variants 'sem' and 'recg'); use 'gather' or 'full'") from e
    user_BxPxH = jnp.einsum("bpd,hd->bph", hidden_BxPxD, kernel_HxD)
    rows_BxPxCxH = jnp.take(jax.lax.stop_gradient(table_NxH), ids_BxPxC, axis=0, mode="clip")
    scores = (jnp.einsum("bph,bpch->bpc", user_BxPxH, rows_BxPxCxH)
              + jnp.einsum("bpd,d->bp", hidden_BxPxD, bias_D)[..., None])
    return jnp.where(ids_BxPxC > 0, scores, 0.0)
  if mode == "gather":
    vecs_BxPxCxD = model.apply(variables, ids_BxPxC, table_NxH,
                               method=recommender_lib.Recommender.candidate_vectors)
  else:
    items_NxD = model.apply(variables, table_NxH, method=recommender_lib.Recommender.item_vectors)
    vecs_BxPxCxD = items_NxD[ids_BxPxC]
  return jnp.einsum("bpd,bpcd->bpc", hidden_BxPxD, vecs_BxPxCxD)


def _global_norm(tree) -> jax.Array:
  # Local, because optax renamed its helper across the supported versions.
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _member_step_fn(model: recommender_lib.Recommender, config: ml_collections.ConfigDict,
                    rows: input_pipeline.TrainingRows, step_tables: StepTables,
                    structure: OptimizerStructure):
  """One run's step `(state, batch, tables, key, hparams) -> (state, metrics)`, unjitted, unbatched.

  Only shapes and structure are Python constants here; every value of TRACED_FIELDS comes in `hparams`.
  """
  tc, gc = config.train, config.gen_loss
  num_items = model.num_items
  use_gen = "gen" in step_tables.arrays
  # With fewer than 3 domains the inter term is identically zero: leave it out of the program.
  inter_possible = use_gen and gen_loss_lib.check_num_domains(len(step_tables.gen_counts))
  loss_kind = str(tc.loss)
  if loss_kind not in ("bpr", "softmax"):
    raise ValueError(f"config.train.loss={loss_kind!r}: expected 'bpr' or 'softmax'")
  scoring = candidate_scoring(config)
  mask_id = recommender_lib.MASK_TOKEN_ID
  num_negatives, samples_per_domain = int(tc.num_negatives), int(gc.samples_per_domain)

  def step(state: TrainState, batch, tables, key, hp):
    TRACE_COUNTS["train_step"] += 1  # a Python side effect: runs once per trace, never per call
    rng = jax.random.fold_in(key, state.step)
    k_drop, k_neg, k_cloze, k_gen = jax.random.split(rng, 4)
    inputs, targets, weights = batch["inputs"], batch["targets"], batch["weights"]
    if rows.cloze:
      inputs, targets, weights = input_pipeline.cloze_mask(
          k_cloze, inputs, weights, hp["mask_prob"], mask_id, hp["cloze_last_item_prob"])
    table = tables["source"]

    def loss_fn(params):
      variables = {"params": params}
      rngs = {"dropout": k_drop}
      if rows.per_position:
        hidden_BxPxD = model.apply(variables, inputs, table, True, rngs=rngs,
                                   method=recommender_lib.Recommender.encode_positions)
      else:
        hidden_BxPxD = model.apply(variables, inputs, table, True, rngs=rngs)[:, None, :]
      if loss_kind == "bpr":
        negs_BxPxK = losses.sample_negatives(k_neg, targets, num_items, num_negatives, batch["history"])
        ids_BxPxC = jnp.concatenate([targets[..., None], negs_BxPxK], axis=-1)  # positive, then negatives
        scores_BxPxC = candidate_scores(model, variables, hidden_BxPxD, ids_BxPxC, table, scoring)
        rec = losses.bpr_from_scores(scores_BxPxC[..., 0], scores_BxPxC[..., 1:], weights)
      else:
        items_NxD = model.apply(variables, table, method=recommender_lib.Recommender.item_vectors)
        rec = losses.softmax_loss(hidden_BxPxD, items_NxD, targets, weights)
      aux = {"rec_loss": rec}
      total = rec
      if use_gen:
        idx_DxB = gen_loss_lib.sample_domain_items(k_gen, step_tables.gen_counts, samples_per_domain)
        rows_DxBxH = jax.vmap(lambda t, i: jnp.take(t, i, axis=0))(tables["gen"], idx_DxB)
        d, b, h = rows_DxBxH.shape
        z = model.apply(variables, rows_DxBxH.reshape(d * b, h), method=recommender_lib.Recommender.align)
        lg, gen_metrics = gen_loss_lib.generalization_loss(
            z.reshape(d, b, -1), hp["alpha"], hp["tau"], hp["inter_sign"], hp["use_intra"],
            hp["use_inter"] if inter_possible else False)
        total = total + lg
        aux.update({"gen_loss": lg, "h_intra": gen_metrics["h_intra"], "h_inter": gen_metrics["h_inter"]})
      return total, aux

    optimizer = build_optimizer(structure, hp)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **aux, "grad_norm": _global_norm(grads),
               "learning_rate": learning_rate_at(state.step, hp, structure.decay),
               "targets": jnp.sum(weights)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


# Compiled steps by program key: a run whose model, data layout and step structure equal an earlier
# run's in this process reuses its jitted step, and with it every executable compiled for it (one per
# member count and length bucket). The persistent compilation cache covers restarts.
_STEP_PROGRAMS: dict[tuple, Callable] = {}


def program_key(model: recommender_lib.Recommender, config: ml_collections.ConfigDict,
                rows: input_pipeline.TrainingRows, step_tables: StepTables,
                mesh: jax.sharding.Mesh) -> tuple:
  """Everything a compiled step holds as a constant (model fields, shapes, structure), nothing traced."""
  tc = config.train
  return (model, rows.cloze, rows.per_position, candidate_scoring(config), str(tc.loss),
          int(tc.num_negatives), tuple(sorted(step_tables.arrays)), step_tables.gen_counts,
          int(config.gen_loss.samples_per_domain), OptimizerStructure.from_config(tc), mesh)


def make_train_step(model: recommender_lib.Recommender,
                    config: ml_collections.ConfigDict,
                    rows: input_pipeline.TrainingRows,
                    step_tables: StepTables,
                    mesh: jax.sharding.Mesh):
  """The one jitted, donated, sharded step over stacked members:
  `(state_S, batch_SxB, tables, keys_S, hparams_S) -> (state_S, metrics_S)`.

  Every leaf of the state, batch, keys and hparams has a leading member axis S, over which one run's step
  is mapped (member_axis: jax.vmap, or lax.map one member after another): members train independently,
  each on its own batch, keys and hyperparameters. The batch is
  sharded over 'data' on its B axis; state and tables are replicated. A member's step key is
  fold_in(keys[s], state.step[s]). Each (S, length bucket) shape traces the step once; runs with the same
  program_key share the jitted function (_STEP_PROGRAMS).
  """
  axis = member_axis(config)
  key = (*program_key(model, config, rows, step_tables, mesh), axis)
  if key not in _STEP_PROGRAMS:
    member = _member_step_fn(model, config, rows, step_tables, OptimizerStructure.from_config(config.train))

    def stacked(state, batch, tables, keys, hparams):
      if keys.shape[0] == 1:  # a run alone: exactly its own step, without a member axis inside
        out = member(*member_tree((state, batch), 0), tables, keys[0], member_tree(hparams, 0))
        return jax.tree.map(lambda x: x[None], out)
      if axis == "vmap":
        return jax.vmap(member, in_axes=(0, 0, None, 0, 0))(state, batch, tables, keys, hparams)
      return jax.lax.map(lambda xs: member(xs[0], xs[1], tables, xs[2], xs[3]), (state, batch, keys, hparams))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = stacked_batch_sharding(mesh)
    _STEP_PROGRAMS[key] = jax.jit(stacked, donate_argnums=0,
                                  in_shardings=(replicated, batch_sharding, replicated, replicated,
                                                replicated),
                                  out_shardings=(replicated, replicated))
  return _STEP_PROGRAMS[key]


def member_axis(config: ml_collections.ConfigDict) -> str:
  """config.train.member_axis resolved: 'vmap' (batched members) or 'map' (members in turn, one program)."""
  axis = str(config.train.get("member_axis", "auto"))
  if axis not in ("auto", "vmap", "map"):
    raise ValueError(f"config.train.member_axis={axis!r}: expected 'auto', 'vmap' or 'map'")
  if axis == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return axis


def stacked_batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """[S, B, ...] batches: members unsharded, rows over the 'data' axis."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))


# ----------------------------------------------------------------------------------------------------------
# Setup shared by training, tests and benchmarks.


def make_mesh() -> jax.sharding.Mesh:
  """All devices on one 'data' axis: the batch is sharded, parameters and tables are replicated."""
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def build_model(config: ml_collections.ConfigDict, num_items: int) -> recommender_lib.Recommender:
  cloze = config.model.backbone == "bert4rec" and config.train.bert4rec_objective == "cloze"
  return recommender_lib.Recommender.from_config(
      config.model, num_items, int(config.data.max_len), cloze=cloze,
      compute_dtype_name=str(config.train.get("compute_dtype", "float32")))


def build_rows(config: ml_collections.ConfigDict, model: recommender_lib.Recommender,
               domain: types.DomainData) -> input_pipeline.TrainingRows:
  return input_pipeline.build_rows(domain, int(config.data.max_len), str(config.train.targets),
                                   causal=model.is_causal, objective=str(config.train.bert4rec_objective),
                                   length_buckets=tuple(config.train.length_buckets))


def shared_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config without TRACED_FIELDS, plus the optimiser structure: equal for runs that can be stacked."""
  d = json.loads(json.dumps(config.to_dict(), default=list))
  d.pop("experiment", None)  # names and plans the grid's runs; training never reads it
  for section, field in TRACED_FIELDS:
    d.get(section, {}).pop(field, None)
  d["optimizer_structure"] = dataclasses.asdict(OptimizerStructure.from_config(config.train))
  return d


def check_members(members: Sequence[ml_collections.ConfigDict]) -> None:
  """Runs train as members of one stacked step only if they differ in TRACED_FIELDS alone."""
  if not members:
    raise ValueError("train_members needs at least one config")
  first = shared_fields(members[0])
  for i, member in enumerate(members[1:], 1):
    diff = fingerprint_lib.diff(first, shared_fields(member))
    if diff:
      raise ValueError(f"member {i} differs from member 0 in {diff}: members of one stacked run may "
                       f"differ only in {['.'.join(f) for f in TRACED_FIELDS]} (and not in whether "
                       "train.grad_clip / train.weight_decay are 0)")


def traced_values(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'section.field': value} of TRACED_FIELDS: what tells the members of a stacked run apart."""
  return {f"{section}.{field}": config[section][field] for section, field in TRACED_FIELDS}


@dataclasses.dataclass
class Trainer:
  """The compiled pieces of S runs trained together (S = 1 for a single run): model, rows, the jitted
  step, tables on device, and the stacked initial state, step keys and hyperparameters."""

  configs: list[ml_collections.ConfigDict]  # one per member; they differ only in TRACED_FIELDS
  model: recommender_lib.Recommender
  rows: input_pipeline.TrainingRows
  mesh: jax.sharding.Mesh
  step_tables: StepTables
  tables_on_device: dict[str, Any]
  state: TrainState  # every leaf [S, ...]
  train_step: Callable
  step_keys: jax.Array  # [S]
  hparams: dict[str, jax.Array]  # each [S]
  steps_per_epoch: int
  total_steps: int
  batch_sharding: jax.sharding.NamedSharding  # of [S, B, ...] batches
  replicated: jax.sharding.NamedSharding

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.configs[0]

  @property
  def seeds(self) -> tuple[int, ...]:
    return tuple(int(c.train.seed) for c in self.configs)

  def step(self, state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    return self.train_step(state, batch, self.tables_on_device, self.step_keys, self.hparams)


def member_tree(tree, index: int):
  """Member `index` of a stacked pytree."""
  return jax.tree.map(lambda x: x[index], tree)


def create_trainer(config: ml_collections.ConfigDict,
                   domain: types.DomainData,
                   tables: dict[str, np.ndarray] | None,
                   mesh: jax.sharding.Mesh | None = None,
                   members: Sequence[ml_collections.ConfigDict] | None = None) -> Trainer:
  """Builds the model, the training rows, the stacked initial TrainState and the jitted step.

  members: the configs trained together (default: [config]); they may differ only in TRACED_FIELDS.
  Member s starts from the parameters and keys a run of members[s] alone would start from.
  """
  members = list(members or [config])
  check_members(members)
  config = members[0]
  tc = config.train
  mesh = mesh or make_mesh()
  num_shards = mesh.shape["data"]
  batch_size = int(tc.batch_size)
  distributed.check_batch_size(batch_size)
  if batch_size % num_shards:
    raise ValueError(f"config.train.batch_size={batch_size} must be a multiple of the number of devices "
                     f"on the 'data' axis ({num_shards})")
  model = build_model(config, domain.num_items)
  rows = build_rows(config, model, domain)
  step_tables = build_step_tables(config, tables)
  source_table = step_tables.arrays["source"]
  if source_table is not None and source_table.shape[0] != domain.num_items + 1:
    raise ValueError(f"the table of {domain.name!r} has {source_table.shape[0]} rows; the domain has "
                     f"{domain.num_items} items (+1 padding row expected)")
  spe = input_pipeline.steps_per_epoch(rows, batch_size)
  total_steps = spe * int(tc.num_epochs)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  keys = [jax.random.split(jax.random.key(int(m.train.seed))) for m in members]
  init_keys = jnp.stack([k[0] for k in keys])
  step_keys = jnp.stack([k[1] for k in keys])
  tables_on_device = distributed.put(step_tables.arrays, replicated)
  init = _init_program(model, OptimizerStructure.from_config(tc), mesh)
  state = init(distributed.put(init_keys, replicated), tables_on_device["source"])
  hparams = [step_hparams(m, total_steps) for m in members]
  stacked_hparams = {k: np.stack([h[k] for h in hparams]) for k in hparams[0]}
  return Trainer(configs=members, model=model, rows=rows, mesh=mesh, step_tables=step_tables,
                 tables_on_device=tables_on_device, state=state,
                 train_step=make_train_step(model, config, rows, step_tables, mesh),
                 step_keys=distributed.put(step_keys, replicated),
                 hparams=distributed.put(stacked_hparams, replicated), steps_per_epoch=spe,
                 total_steps=total_steps, batch_sharding=stacked_batch_sharding(mesh), replicated=replicated)


# Initial-state programs by (model, optimiser structure, mesh), reused like _STEP_PROGRAMS.
_INIT_PROGRAMS: dict[tuple, Callable] = {}


def _init_program(model: recommender_lib.Recommender, structure: OptimizerStructure,
                  mesh: jax.sharding.Mesh) -> Callable:
  """`(keys_S, table) -> TrainState` with a leading member axis; member s from keys_S[s] alone."""
  key = (model, structure, mesh)
  if key not in _INIT_PROGRAMS:
    # The optimiser state's structure and initial values do not depend on the hyperparameter values.
    optimizer = build_optimizer(structure, {"learning_rate": 0.0, "warmup_steps": 0, "decay_steps": 1,
                                            "weight_decay": 0.0, "grad_clip": 1.0})

    def init(key, table):
      params = recommender_lib.init_variables(model, key, table)["params"]
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    _INIT_PROGRAMS[key] = jax.jit(jax.vmap(init, in_axes=(0, None)), out_shardings=replicated)
  return _INIT_PROGRAMS[key]


# Evaluation programs by model: later runs of an equal model reuse them (and their executables).
_EVAL_PROGRAMS: dict[recommender_lib.Recommender, tuple[Callable, Callable]] = {}


def make_eval_fns(model: recommender_lib.Recommender):
  """(user_fn_jit(params, table, seq) -> user_BxD, items_jit(params, table) -> items_NxD).

  user_fn is traced once per input width (one per eval length bucket), items_jit once per table shape,
  in this process: an equal model gets the same jitted functions back.
  """
  if model not in _EVAL_PROGRAMS:
    def user_fn(params, table, seq):
      TRACE_COUNTS["user_fn"] += 1
      return model.apply({"params": params}, seq, table, False)

    items_jit = jax.jit(lambda params, table: model.apply(
        {"params": params}, table, method=recommender_lib.Recommender.item_vectors))
    _EVAL_PROGRAMS[model] = (jax.jit(user_fn), items_jit)
  return _EVAL_PROGRAMS[model]


def evaluate_split(eval_fns, params, table, split: types.EvalSplit, domain: types.DomainData,
                   eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None) -> dict[str, float]:
  user_jit, items_jit = eval_fns
  # Across processes, each ranks its own users on its own devices, with local copies of the parameters.
  params, table = distributed.host_copy((params, table))
  user_fn = lambda seq: user_jit(params, table, seq)
  return evaluate_lib.evaluate(user_fn, items_jit(params, table), split, domain, eval_config, mesh=mesh)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints.

# Fields that define what a run computes; a workdir whose checkpoint disagrees on one of them is not
# resumed (the loop position would be meaningless).
_RUN_FIELDS = {
    "data": ("source", "targets", "auxiliary", "max_len"),
    "model": None,
    "train": None,
    "gen_loss": None,
}
# Train fields that may change between a run and its resumption.
_RESUMABLE_TRAIN_FIELDS = ("log_every_steps", "prefetch", "checkpoint_every_steps", "max_to_keep",
                           "num_epochs", "patience", "eval_every_epochs", "member_axis")


def run_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}
  for section, fields in _RUN_FIELDS.items():
    d = config[section].to_dict()
    if fields is not None:
      d = {k: d[k] for k in fields}
    if section == "train":
      # The cosine schedule spans num_epochs, so only a constant-rate run may change it on resume.
      free = [f for f in _RESUMABLE_TRAIN_FIELDS if not (f == "num_epochs" and d["decay"] == "cosine")]
      d = {k: v for k, v in d.items() if k not in free}
    out[section] = json.loads(json.dumps(d, default=list))
  return out


def group_signature(members: Sequence[ml_collections.ConfigDict]) -> dict[str, Any]:
  """run_signature of stacked members: the shared fields, and each member's traced values."""
  if len(members) == 1:
    return run_signature(members[0])
  return {**run_signature(members[0]), "members": json.loads(json.dumps(
      [traced_values(m) for m in members], default=list))}


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
  # Across processes orbax names its barriers by step; `latest` and `best` often save the same step at
  # once, so each manager gets its own names.
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class Checkpoints:
  """`latest` (TrainState + loop position, for resume) and `best` (parameters, by validation metric).

  parts: which of the two this folder holds. A single run keeps both in its workdir; runs trained
  together keep the stacked `latest` in their group folder and each its own `best`.
  signature: what the folder's checkpoints were computed with (default run_signature(config)).
  """

  def __init__(self, workdir: paths.Path, config: ml_collections.ConfigDict,
               parts: Sequence[str] = ("latest", "best"), signature: dict[str, Any] | None = None):
    self.root = paths.absolute(workdir) / "checkpoints"
    self.metric = str(config.eval.select_metric)
    self.latest = self.best = None
    if "latest" in parts:
      self.latest = ocp.CheckpointManager(
          self.root / "latest",
          options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, cleanup_tmp_directories=True,
                                               multiprocessing_options=_barrier_prefix("latest")))
    metric = self.metric
    if "best" in parts:
      self.best = ocp.CheckpointManager(
          self.root / "best",
          options=ocp.CheckpointManagerOptions(max_to_keep=max(1, int(config.train.max_to_keep)),
                                               best_fn=lambda m: m[metric], best_mode="max",
                                               keep_checkpoints_without_metrics=False, create=True,
                                               cleanup_tmp_directories=True,
                                               multiprocessing_options=_barrier_prefix("best")))
    self._check_signature(signature if signature is not None else run_signature(config))

  def _managers(self) -> list[ocp.CheckpointManager]:
    return [m for m in (self.latest, self.best) if m is not None]

  def _check_signature(self, signature: dict[str, Any]):
    path = self.root / "run_config.json"
    if path.exists() and any(m.latest_step() is not None for m in self._managers()):
      diff = fingerprint_lib.diff(json.loads(path.read_text()), signature)
      if diff:
        raise ValueError(f"{self.root} holds a checkpoint of a different run (differs in {diff}); use a "
                         "fresh workdir or restore the config")
    if distributed.is_primary():  # atomically: another process may be reading the previous one
      self.root.mkdir(parents=True, exist_ok=True)
      paths.write_text_atomic(path, json.dumps(signature, indent=1, sort_keys=True))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, state: TrainState, meta: dict) -> None:
    step = int(meta["step"])
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, abstract_state) -> tuple[TrainState, dict] | None:
    step = self.latest.latest_step()
    if step is None:
      return None
    out = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                            meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def save_best(self, step: int, params, meta: dict, value: float) -> None:
    # A run resumed from before an improvement re-evaluates it and reaches the same step again.
    if step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 meta=ocp.args.JsonSave(meta)),
                   metrics={self.metric: float(value)})

  def restore_best(self, abstract_params) -> tuple[Any, dict] | None:
    self.best.wait_until_finished()
    step = self.best.best_step()
    if step is None:
      return None
    out = self.best.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params),
                                                          meta=ocp.args.JsonRestore()))
    return out["params"], dict(out["meta"])

  def wait(self) -> None:
    for m in self._managers():
      m.wait_until_finished()

  def close(self) -> None:
    for m in self._managers():
      m.close()


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


# ----------------------------------------------------------------------------------------------------------
# Logging.


def _jsonable(v):
  if isinstance(v, (bool, np.bool_)):
    return bool(v)
  if isinstance(v, (int, np.integer)):
    return int(v)
  if isinstance(v, (float, np.floating)):
    return float(v)
  return v


class MetricLog:
  """metrics.jsonl + tensorboardX. On resume, events after the restored step are dropped from both.

  Only the primary process writes; in the others the log is a no-op. A local file is appended to; a
  remote one (no append there) is rewritten whole after every evaluation, every _REMOTE_SYNC_S seconds of
  training records, and at close. TensorBoard events are written for local workdirs only.
  """

  _REMOTE_SYNC_S = 60.0

  def __init__(self, workdir: paths.Path, resume_step: int):
    self.path = paths.as_path(workdir) / "metrics.jsonl"
    self._file = self._tb = None
    self._lines: list[str] | None = None  # remote: every line, rewritten together
    self._synced = time.perf_counter()
    self.active = distributed.is_primary()
    if not self.active:
      return
    kept = []
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line).get("step", 0) <= resume_step]
    if paths.is_remote(self.path):
      self._lines = kept
      self._sync()
      logging.warning("workdir %s is remote: no TensorBoard events (metrics.jsonl has every value)",
                      workdir)
      return
    self.path.write_text("".join(line + "\n" for line in kept))
    self._file = self.path.open("a", encoding="utf-8")
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(str(paths.as_path(workdir) / "tensorboard"),
                                            purge_step=resume_step if resume_step else None)
    except ImportError:  # TensorBoard events are optional; metrics.jsonl is always written
      logging.warning("tensorboardX is not installed: no TensorBoard events")

  def _sync(self) -> None:
    paths.write_text_atomic(self.path, "".join(line + "\n" for line in self._lines))
    self._synced = time.perf_counter()

  def write(self, kind: str, step: int, values: dict[str, Any], **extra) -> None:
    if not self.active:
      return
    record = {"kind": kind, "step": int(step), **extra, **{k: _jsonable(v) for k, v in values.items()}}
    if self._lines is not None:
      self._lines.append(json.dumps(record))
      if kind != "train" or time.perf_counter() - self._synced > self._REMOTE_SYNC_S:
        self._sync()
    else:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)):
          self._tb.add_scalar(tensorboard_tag(kind, k), float(v), int(step))

  def close(self) -> None:
    if self._lines is not None:
      self._sync()
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def tensorboard_tag(kind: str, key: str) -> str:
  """'valid', 'valid/full/ndcg@10' -> 'valid/full/ndcg_at_10': one kind prefix, no '@' (TensorBoard rejects
  it and renames the tag with a log line per metric)."""
  tag = key if key.startswith(f"{kind}/") else f"{kind}/{key}"
  return tag.replace("@", "_at_")


class NonFiniteLossError(FloatingPointError):
  """Raised when a training loss is NaN or infinite; the last checkpoint on disk is the last good one."""


# ----------------------------------------------------------------------------------------------------------
# The loop.


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


def _fresh_member_meta() -> dict:
  return {"best_metric": None, "best_step": None, "best_epoch": None, "best_valid": None,
          "finished": False, "stop_reason": "", "error": ""}


@dataclasses.dataclass
class _Member:
  """One run among those trained together: its config, folder, log, best checkpoint and stop state."""

  index: int
  config: ml_collections.ConfigDict
  workdir: paths.Path
  ckpt: Checkpoints  # holds its `best` (and, trained alone, the group's `latest` too)
  log: MetricLog
  meta: dict  # _fresh_member_meta fields, saved with the group's latest checkpoint
  last_train: dict[str, float] | None = None  # the last logged train means, for the progress bar

  @property
  def tag(self) -> str:
    return f"{self.workdir.parent.name}/{self.workdir.name}: "


class _Loop:
  """The epoch loop of S members trained together: train an epoch, validate, keep the best, stop early.

  Every epoch ends in a `latest` checkpoint (also every train.checkpoint_every_steps steps), holding the
  stacked state, the loop position and every member's stop state. A member stops when it has seen no
  gain in config.eval.select_metric for train.patience epochs; the stacked step still runs its lane
  until all members have stopped (lanes are independent), and its results come from its best checkpoint,
  exactly as if it had trained alone.
  """

  def __init__(self, trainer: Trainer, domain: types.DomainData, latest: Checkpoints,
               members: list[_Member], position: dict[str, int]):
    self.trainer, self.domain, self.latest, self.members = trainer, domain, latest, members
    self.config = trainer.config
    self.tc = self.config.train
    self.select = str(self.config.eval.select_metric)
    self.spe = trainer.steps_per_epoch
    self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
    self.eval_fns = make_eval_fns(trainer.model)
    self.table = trainer.tables_on_device["source"]
    self.pending: list[tuple[int, list[int], dict]] = []  # (step, real rows per member, device metrics)
    self.clock = time.perf_counter()
    self.started = time.perf_counter()

  @property
  def solo(self) -> bool:
    return len(self.members) == 1

  def active(self) -> list[_Member]:
    return [m for m in self.members if not m.meta["finished"]]

  def position(self) -> dict[str, Any]:
    return {"step": self.step, "epoch": self.epoch, "batch": self.batch,
            "members": [dict(m.meta) for m in self.members]}

  # -- training ---------------------------------------------------------------------------------------

  def flush(self, keep_last: bool) -> None:
    """Reads back pending step metrics (all but the newest if keep_last), checks them, logs their mean."""
    take = self.pending[:-1] if keep_last else self.pending[:]
    if not take:
      return
    del self.pending[:len(take)]
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

  def _non_finite(self, member: _Member, step: int, loss: float) -> None:
    last = self.latest.latest_step()
    message = (f"training loss is {loss} at step {step} (epoch {step // self.spe}): stopping. The last good "
               f"checkpoint is step {last} in {self.latest.root / 'latest'}; lower "
               "config.train.learning_rate or set config.train.grad_clip")
    if self.solo:
      raise NonFiniteLossError(message)
    # Trained together, the other members go on: lanes never mix.
    self._stop(member, f"non-finite loss at step {step}", error=message)
    print(f"{member.tag}{message}", flush=True)

  def train_epoch(self, state: TrainState) -> TrainState:
    trainer, batch_size = self.trainer, int(self.tc.batch_size)
    seeds = trainer.seeds
    # Real (unpadded) rows of each batch of each member, for the sequences/s figure.
    real_rows = [[len(idx) for _, idx in input_pipeline.epoch_plan(trainer.rows, batch_size, s, self.epoch)]
                 for s in seeds]
    batches = input_pipeline.prefetch(
        input_pipeline.stacked_epoch_batches(trainer.rows, batch_size, seeds, self.epoch, self.batch,
                                             part=distributed.local_rows(batch_size)),
        int(self.tc.prefetch), trainer.batch_sharding)
    bar = tqdm.tqdm(total=self.spe, initial=self.batch, desc=f"epoch {self.epoch}", leave=False,
                    dynamic_ncols=True, mininterval=1.0)
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

  def validate(self, state: TrainState) -> None:
    """Evaluates every active member on the source validation split; keeps its best; stops it early."""
    valid_split = types.leave_one_out(self.domain, "valid", int(self.config.data.max_len))
    for member in self.active():
      params = member_tree(state.params, member.index)
      valid = evaluate_split(self.eval_fns, params, self.table, valid_split, self.domain, self.config.eval,
                             self.trainer.mesh)
      valid = {f"valid/{k}": v for k, v in valid.items()}
      if self.select not in valid:
        raise ValueError(f"config.eval.select_metric={self.select!r} is not among the validation metrics "
                         f"{sorted(valid)}")
      # Wall time since this invocation started (a resumed run counts from its restart).
      member.log.write("valid", self.step, valid, epoch=self.epoch,
                       elapsed_s=round(time.perf_counter() - self.started, 3))
      self._keep_best_or_stop(member, params, valid)

  def _keep_best_or_stop(self, member: _Member, params, valid: dict[str, float]) -> None:
    meta, value = member.meta, valid[self.select]
    if meta["best_metric"] is None or value > meta["best_metric"]:
      meta.update(best_metric=value, best_step=self.step, best_epoch=self.epoch, best_valid=valid)
      member.ckpt.save_best(self.step, params, {"epoch": self.epoch, "step": self.step, "valid": valid}, value)
    elif self.epoch - int(meta["best_epoch"]) >= int(self.tc.patience):
      self._stop(member, f"early stop: no {self.select} gain for {self.tc.patience} epochs (best "
                 f"{meta['best_metric']:.5f} at epoch {meta['best_epoch']})")
    print(f"{'' if self.solo else member.tag}epoch {self.epoch}: {self.select}={value:.5f} (best "
          f"{meta['best_metric']:.5f} @ epoch {meta['best_epoch']})", flush=True)

  def _stop(self, member: _Member, reason: str, **extra) -> None:
    # Where a run alone would have ended: its results and logs say so, whatever its lane does next.
    member.meta.update(finished=True, stop_reason=reason, stopped_step=self.step, stopped_epoch=self.epoch,
                       **extra)

  def end_epoch(self, state: TrainState) -> None:
    if self.epoch >= int(self.tc.num_epochs):
      for member in self.active():
        self._stop(member, f"reached num_epochs={self.tc.num_epochs}")
    self.latest.save_latest(state, self.position())

  def run(self, state: TrainState) -> TrainState:
    while self.active() and self.epoch < int(self.tc.num_epochs):
      state = self.train_epoch(state)
      if self.eval_due():
        self.validate(state)
      self.end_epoch(state)
    return state

  # -- testing --------------------------------------------------------------------------------------------

  def test(self, state: TrainState, member: _Member) -> tuple[Any, dict[str, float]]:
    """(best parameters, best validation + test metrics) of one member: its best checkpoint (or its last
    state if no evaluation ever ran) on the source test split."""
    params = member_tree(state.params, member.index)
    best = member.ckpt.restore_best(_abstract(params))
    best_valid = {}
    if best is not None:
      params, best_meta = best
      best_valid = best_meta.get("valid", {})
    test_split = types.leave_one_out(self.domain, "test", int(self.config.data.max_len))
    test = evaluate_split(self.eval_fns, params, self.table, test_split, self.domain, self.config.eval,
                          self.trainer.mesh)
    test = {f"test/{k}": v for k, v in test.items()}
    member.log.write("test", member.meta.get("stopped_step", self.step), test,
                     best_step=member.meta["best_step"])
    return params, {**best_valid, **test}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | paths.Path,
                       domains: dict[str, types.DomainData],
                       tables: dict[str, np.ndarray] | None,
                       mesh: jax.sharding.Mesh | None = None) -> TrainResult:
  """Trains on config.data.source, early-stops on validation, tests the best checkpoint.

  Returns a TrainResult; its `metrics` dict holds the best validation metrics ('valid/...') and the test
  metrics ('test/...'), each labelled with its protocol. Writes results.json / results.md in workdir.
  """
  return train_members([config], [workdir], domains, tables, mesh=mesh)[0]


def train_members(members: Sequence[ml_collections.ConfigDict],
                  workdirs: Sequence[str | paths.Path],
                  domains: dict[str, types.DomainData],
                  tables: dict[str, np.ndarray] | None,
                  group_dir: str | paths.Path | None = None,
                  mesh: jax.sharding.Mesh | None = None) -> list[TrainResult]:
  """Trains S runs that differ only in TRACED_FIELDS (seeds, alpha, ...) together, as one program over
  stacked parameters; each gets exactly what train_and_evaluate would give it alone (within float
  tolerance): its own data order, dropout keys, negatives, early stop, best checkpoint and results.

  workdirs[s] receives member s's best checkpoint, metrics.jsonl, results.json / results.md. The stacked
  `latest` checkpoint lives in group_dir (required for S > 1; a single run keeps it in its workdir), so a
  killed group restarted with the same members and folders resumes where it stopped. A member whose loss
  turns non-finite stops with TrainResult.error set while the others go on (alone, it raises
  NonFiniteLossError).
  """
  members, workdirs = list(members), [paths.as_path(w) for w in workdirs]
  if len(members) != len(workdirs):
    raise ValueError(f"train_members: {len(members)} configs but {len(workdirs)} workdirs")
  if len(members) > 1 and group_dir is None:
    raise ValueError("train_members: runs trained together need a group_dir for their shared checkpoint")
  config = members[0]
  source = config.data.source
  if source not in domains:
    raise ValueError(f"config.data.source={source!r} is not among the loaded domains {sorted(domains)}")
  domain = domains[source]
  select = str(config.eval.select_metric)
  if not select.startswith("valid/"):
    raise ValueError(f"config.eval.select_metric={select!r} must name a validation metric "
                     "('valid/<protocol>/<metric>@K')")
  for w in workdirs:
    w.mkdir(parents=True, exist_ok=True)

  trainer = create_trainer(config, domain, tables, mesh, members=members)
  solo = len(members) == 1
  group = paths.as_path(group_dir) if group_dir is not None else workdirs[0]
  latest = Checkpoints(group, config, parts=("latest", "best") if solo else ("latest",),
                       signature=group_signature(members))
  state, position = _restore_or_start(trainer, latest)
  ckpts = [latest] if solo else [Checkpoints(w, m, parts=("best",)) for m, w in zip(members, workdirs)]
  runs = [_Member(index=i, config=m, workdir=w, ckpt=c, log=MetricLog(w, position["step"]), meta=meta)
          for i, (m, w, c, meta) in enumerate(zip(members, workdirs, ckpts, position["members"]))]
  trainer.state = None  # the initial state's buffers may be donated below; keep no stale reference
  if position["step"] == 0:
    for run in runs:
      run.log.write("setup", 0, {"rows": trainer.rows.num_rows, "steps_per_epoch": trainer.steps_per_epoch,
                                 "targets_per_epoch": trainer.rows.num_targets,
                                 "devices": int(trainer.mesh.devices.size), "members": len(members)},
                    loss_name=results_lib.loss_name(run.config),
                    bucket_rows={str(w): n for w, n in input_pipeline.bucket_sizes(trainer.rows).items()})

  loop = _Loop(trainer, domain, latest, runs, position)
  outputs = []
  try:
    state = loop.run(state)
    for ck in {id(c): c for c in ckpts}.values():
      ck.wait()
    for run in runs:
      if run.meta["error"]:
        outputs.append(None)
        continue
      outputs.append(loop.test(state, run))
  finally:
    for ck in {id(c): c for c in [latest, *ckpts]}.values():
      ck.wait()
      ck.close()
    for run in runs:
      run.log.close()

  results = []
  for run, out in zip(runs, outputs):
    meta = run.meta
    epochs = int(meta.get("stopped_epoch", loop.epoch))
    common = dict(model=trainer.model, best_step=meta["best_step"] or 0, best_epoch=meta["best_epoch"] or 0,
                  epochs=epochs, stop_reason=meta["stop_reason"], workdir=run.workdir)
    if out is None:
      results.append(TrainResult(metrics={}, params=None, error=meta["error"], **common))
      continue
    best_params, metrics = out
    summary = {"best_step": meta["best_step"], "best_epoch": meta["best_epoch"], "epochs": epochs,
               "stop_reason": meta["stop_reason"], "steps_per_epoch": trainer.steps_per_epoch,
               "training_rows": trainer.rows.num_rows}
    record = results_lib.make_record(run.config, stage="in_domain", domain=source, metrics=metrics,
                                     extra=summary)
    results_lib.write_results(run.workdir, [record], run.config)
    results.append(TrainResult(metrics=metrics, params=jax.device_get(best_params), **common))
  return results


def _restore_or_start(trainer: Trainer, latest: Checkpoints) -> tuple[TrainState, dict[str, Any]]:
  """The group's latest checkpoint and loop position, or the initial state at step 0."""
  members = len(trainer.configs)
  fresh = {"step": 0, "epoch": 0, "batch": 0, "members": [_fresh_member_meta() for _ in range(members)]}
  try:
    restored = latest.restore_latest(_abstract(trainer.state))
  except (ValueError, TypeError, KeyError) as e:
    raise ValueError(f"cannot resume from {latest.root / 'latest'}: its state does not fit this run's "
                     f"({len(trainer.configs)} member(s), stacked on a leading axis); a checkpoint written "
                     "before runs were stacked, or by another group, cannot be resumed: use a fresh "
                     "workdir") from e
  if restored is None:
    return trainer.state, fresh
  state, meta = restored
  steps = np.asarray(jax.device_get(state.step))
  if not (steps == int(meta["step"])).all() or len(meta.get("members", ())) != members:
    raise ValueError(f"inconsistent checkpoint in {latest.root}: state steps {steps.tolist()}, position "
                     f"step {meta['step']}, {len(meta.get('members', ()))} member records for {members} "
                     "members")
  for m in meta["members"]:
    if (m["finished"] and m["stop_reason"].startswith("reached num_epochs")
        and meta["epoch"] < int(trainer.config.train.num_epochs)):
      m.update(finished=False, stop_reason="")  # num_epochs was raised: train on
      m.pop("stopped_step", None)
      m.pop("stopped_epoch", None)
  logging.info("resuming from step %d (epoch %d, batch %d)", meta["step"], meta["epoch"], meta["batch"])
  print(f"resuming {latest.root.parent} from step {meta['step']} (epoch {meta['epoch']}, batch "
        f"{meta['batch']})", flush=True)
  return state, meta
