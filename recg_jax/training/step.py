"""The train step: state, the frozen tables it reads, how candidates are scored, and the step itself.

One program per shape. StepSpec holds everything the compiled step keeps as a constant (the model, the
data layout, the loss, the optimiser's structure, the member axis), and the step is built from a StepSpec
alone, so the spec is also the cache key of the compiled step: a run whose spec equals an earlier run's
reuses its jitted step, and with it every executable compiled for it in this process (one per member
count and length bucket). Every other number (the traced fields of recg_jax/config/roles.py) comes in as
the step's `hparams`.

The step RNG is fold_in(key, state.step), so a resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from recg_jax import compile_stats
from recg_jax import errors
from recg_jax import gen_loss as gen_loss_lib
from recg_jax import input_pipeline
from recg_jax import losses
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.training import members as members_lib
from recg_jax.training import optimizer as optimizer_lib


@flax.struct.dataclass
class TrainState:
  """Everything the optimiser updates; the frozen item tables are step arguments, never in here."""

  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: Any


# ----------------------------------------------------------------------------------------------------------
# The frozen tables a step reads.


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
  """The source domains, then the targets (unless gen_loss.include_targets is off), then the auxiliary
  domains, without repeats."""
  targets = tuple(config.data.targets) if config.gen_loss.include_targets else ()
  names = [*types.source_names(config.data.source), *targets, *config.data.auxiliary]
  return tuple(dict.fromkeys(names))


def _stack(tables: dict[str, np.ndarray], names: Sequence[str], rows: int = 0) -> np.ndarray:
  """[len(names), max(rows, largest table's rows), H] float32, each table zero-padded."""
  stacked = np.zeros(
      (len(names), max(rows, *(tables[n].shape[0] for n in names)), tables[names[0]].shape[1]), np.float32
  )
  for d, n in enumerate(names):
    stacked[d, : tables[n].shape[0]] = tables[n]
  return stacked


def _check_tables(config: ml_collections.ConfigDict, tables, names: Sequence[str], role: str) -> None:
  missing = [n for n in names if n not in (tables or {})]
  if missing:
    raise errors.ConfigError(
        f"variant {config.model.variant!r} needs the frozen embedding table of {role} "
        f"{names[0] if len(names) == 1 else tuple(names)!r}; no embedding table was given for {missing} "
        f"(got tables for {sorted(tables or {})})"
    )
  dims = {n: tables[n].shape[1] for n in names}
  if len(set(dims.values())) != 1:
    raise errors.ConfigError(f"embedding tables disagree on their width: {dims}")


def build_step_tables(config: ml_collections.ConfigDict, tables: dict[str, np.ndarray] | None) -> StepTables:
  """Validates the frozen tables and stacks the generalization-loss domains, zero-padded to one size.

  One source: arrays['source'] is its table. Several (data.source 'A+B+...'): arrays['sources'] stacks
  theirs, zero-padded to the largest (or to train.source_table_rows rows, so that runs of one study share
  one compiled step), and arrays['counts'] holds each one's item count.
  """
  if not recommender_lib.reads_table(config.model):
    return StepTables(arrays={"source": None})
  sources = types.source_names(config.data.source)
  _check_tables(config, tables, sources, "the source domains" if len(sources) > 1 else "the source domain")
  if len(sources) == 1:
    arrays = {"source": np.asarray(tables[sources[0]], np.float32)}
  else:
    arrays = {
        "sources": _stack(tables, sources, int(config.train.source_table_rows)),
        "counts": np.array([tables[n].shape[0] - 1 for n in sources], np.int32),
    }
  if not gen_loss_enabled(config):
    return StepTables(arrays=arrays)
  names = gen_domain_names(config)
  _check_tables(config, tables, names, "the generalization loss (data.source, data.targets, data.auxiliary)")
  gen_loss_lib.check_num_domains(len(names))
  counts = tuple(int(tables[n].shape[0]) - 1 for n in names)
  arrays["gen"] = _stack(tables, names)
  return StepTables(arrays=arrays, gen_counts=counts, gen_domains=names)


# ----------------------------------------------------------------------------------------------------------
# Scoring the candidates of a BPR step.


def candidate_scoring(config: ml_collections.ConfigDict) -> str:
  """config.train.candidate_scores resolved: 'factored' | 'gather' | 'full'."""
  mode = str(config.train.candidate_scores)
  if mode not in ("auto", "factored", "gather", "full"):
    raise errors.ConfigError(
        f"config.train.candidate_scores={mode!r}: expected 'auto', 'factored', 'gather' or " "'full'"
    )
  text = str(config.model.score_space) == "text"
  learned = str(config.model.variant) in ("id", "text_id")  # a learned vector per item
  if mode == "auto":
    # An ID table's gradient is catalogue-sized whichever way its rows are read: keep the full table.
    # Text-space candidates are the frozen rows themselves: gathering them is already the cheap way.
    return "full" if learned else "gather" if text else "factored"
  if mode == "factored" and learned:
    raise errors.ConfigError(
        "config.train.candidate_scores='factored' needs a frozen table (variant 'sem' or "
        f"'recg'); variant {config.model.variant!r} scores learned vectors: use 'gather' or 'full'"
    )
  if mode == "factored" and text:
    raise errors.ConfigError(
        "config.train.candidate_scores='factored' scores W_p e + b_p; with "
        "config.model.score_space='text' the candidates are the frozen rows: use 'gather' or "
        "'full'"
    )
  return mode


def candidate_scores(
    model: recommender_lib.Recommender,
    variables,
    hidden_BxPxD: jax.Array,
    ids_BxPxC: jax.Array,
    table_NxH: jax.Array | None,
    mode: str,
) -> jax.Array:
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
      raise errors.ConfigError(
          "config.train.candidate_scores='factored' needs the parameters items/W_p/{kernel, "
          "bias} (variants 'sem' and 'recg'); use 'gather' or 'full'"
      ) from e
    user_BxPxH = jnp.einsum("bpd,hd->bph", hidden_BxPxD, kernel_HxD)
    rows_BxPxCxH = jnp.take(jax.lax.stop_gradient(table_NxH), ids_BxPxC, axis=0, mode="clip")
    scores = (
        jnp.einsum("bph,bpch->bpc", user_BxPxH, rows_BxPxCxH)
        + jnp.einsum("bpd,d->bp", hidden_BxPxD, bias_D)[..., None]
    )
    return jnp.where(ids_BxPxC > 0, scores, 0.0)
  if mode == "gather":
    vecs_BxPxCxD = model.apply(
        variables, ids_BxPxC, table_NxH, method=recommender_lib.Recommender.candidate_vectors
    )
  else:
    items_NxD = model.apply(variables, table_NxH, method=recommender_lib.Recommender.item_vectors)
    vecs_BxPxCxD = items_NxD[ids_BxPxC]
  return jnp.einsum("bpd,bpcd->bpc", hidden_BxPxD, vecs_BxPxCxD)


# ----------------------------------------------------------------------------------------------------------
# The step.


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything a compiled train step holds as a constant; the step is built from this and nothing else."""

  model: recommender_lib.Recommender
  cloze: bool  # BERT4Rec's Cloze rows (masked inside the step)
  per_position: bool  # a target at every position (causal backbones) or one per row
  loss: str  # 'bpr' | 'softmax'
  mask_history: bool  # softmax: the input history is no class (train.softmax_mask_history)
  softmax_chunk_rows: int  # softmax: logits rows per slice of target positions (0 = all at once)
  multi_source: bool  # several source domains: each batch is scored against its own domain's table
  scoring: str  # candidate_scoring: 'factored' | 'gather' | 'full'
  num_negatives: int
  gen_counts: tuple[int, ...]  # item count of each L_gen domain; () without L_gen
  samples_per_domain: int
  optimizer: optimizer_lib.OptimizerStructure
  member_axis: str  # 'vmap' | 'map'

  @classmethod
  def create(
      cls,
      model: recommender_lib.Recommender,
      config: ml_collections.ConfigDict,
      rows: input_pipeline.TrainingRows,
      step_tables: StepTables,
  ) -> StepSpec:
    loss = str(config.train.loss)
    if loss not in ("bpr", "softmax"):
      raise errors.ConfigError(f"config.train.loss={loss!r}: expected 'bpr' or 'softmax'")
    chunk_rows = int(config.train.softmax_chunk_rows)
    if chunk_rows < 0:
      raise errors.ConfigError(
          f"config.train.softmax_chunk_rows={chunk_rows!r}: expected an integer >= 0 (0 = no slices)"
      )
    return cls(
        model=model,
        cloze=rows.cloze,
        per_position=rows.per_position,
        loss=loss,
        mask_history=bool(config.train.softmax_mask_history) and loss == "softmax",
        softmax_chunk_rows=chunk_rows,
        multi_source="sources" in step_tables.arrays,
        scoring=candidate_scoring(config),
        num_negatives=int(config.train.num_negatives),
        gen_counts=step_tables.gen_counts,
        samples_per_domain=int(config.gen_loss.samples_per_domain),
        optimizer=optimizer_lib.OptimizerStructure.from_config(config.train),
        member_axis=members_lib.member_axis(config),
    )


def _losses(
    spec: StepSpec, params, batch, tables, keys: dict[str, jax.Array], hp: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(total loss, its parts) of one member's batch: the recommendation loss, plus L_gen with gen_counts."""
  model, variables = spec.model, {"params": params}
  if spec.multi_source:  # the batch's own domain: its table (padded) and item count
    table, num_items = tables["sources"][batch["domain"][0]], tables["counts"][batch["domain"][0]]
  else:
    table, num_items = tables["source"], model.num_items
  inputs, targets, weights = batch["inputs"], batch["targets"], batch["weights"]
  rngs = {"dropout": keys["dropout"]}
  if spec.per_position:
    hidden_BxPxD = model.apply(
        variables, inputs, table, True, rngs=rngs, method=recommender_lib.Recommender.encode_positions
    )
  else:
    hidden_BxPxD = model.apply(variables, inputs, table, True, rngs=rngs)[:, None, :]
  if spec.loss == "bpr":
    negs_BxPxK = losses.sample_negatives(
        keys["negatives"], targets, num_items, spec.num_negatives, batch["history"]
    )
    ids_BxPxC = jnp.concatenate([targets[..., None], negs_BxPxK], axis=-1)  # positive, then negatives
    scores_BxPxC = candidate_scores(model, variables, hidden_BxPxD, ids_BxPxC, table, spec.scoring)
    rec = losses.bpr_from_scores(scores_BxPxC[..., 0], scores_BxPxC[..., 1:], weights)
  else:
    items_NxD = model.apply(variables, table, method=recommender_lib.Recommender.item_vectors)
    history = inputs if spec.mask_history else None
    catalogue = num_items if spec.multi_source else None
    if model.is_offset:  # the text's score at every position, scaled, under the ID model's
      _, items_NxD = items_NxD
      offset_BxLxN = model.apply(
          variables, inputs, table, method=recommender_lib.Recommender.text_offset_logits
      )
      offset_BxPxN = offset_BxLxN if spec.per_position else offset_BxLxN[:, -1:]
      logits_BxPxN = jnp.einsum("bpd,nd->bpn", hidden_BxPxD, items_NxD) + offset_BxPxN
      rec = losses.softmax_nll(logits_BxPxN, targets, weights, history, catalogue)
    else:
      rec = losses.softmax_loss(
          hidden_BxPxD, items_NxD, targets, weights, history, catalogue, spec.softmax_chunk_rows
      )
  aux = {"rec_loss": rec}
  if not spec.gen_counts:
    return rec, aux
  idx_DxB = gen_loss_lib.sample_domain_items(keys["gen"], spec.gen_counts, spec.samples_per_domain)
  rows_DxBxH = jax.vmap(lambda t, i: jnp.take(t, i, axis=0))(tables["gen"], idx_DxB)
  d, b, h = rows_DxBxH.shape
  z = model.apply(variables, rows_DxBxH.reshape(d * b, h), method=recommender_lib.Recommender.align)
  # With fewer than 3 domains the inter term is identically zero: leave it out of the program.
  inter_possible = gen_loss_lib.check_num_domains(len(spec.gen_counts))
  lg, gen_metrics = gen_loss_lib.generalization_loss(
      z.reshape(d, b, -1),
      hp["alpha"],
      hp["tau"],
      hp["inter_sign"],
      hp["use_intra"],
      hp["use_inter"] if inter_possible else False,
  )
  aux.update({"gen_loss": lg, "h_intra": gen_metrics["h_intra"], "h_inter": gen_metrics["h_inter"]})
  return rec + lg, aux


def member_step(spec: StepSpec) -> Callable:
  """One run's step `(state, batch, tables, key, hparams) -> (state, metrics)`, unjitted, unbatched."""

  def step(state: TrainState, batch, tables, key, hp):
    compile_stats.TRACE_COUNTS["train_step"] += 1  # once per trace, never per call
    rng = jax.random.fold_in(key, state.step)
    k_drop, k_neg, k_cloze, k_gen = jax.random.split(rng, 4)
    if spec.cloze:
      inputs, targets, weights = input_pipeline.cloze_mask(
          k_cloze,
          batch["inputs"],
          batch["weights"],
          hp["mask_prob"],
          recommender_lib.MASK_TOKEN_ID,
          hp["cloze_last_item_prob"],
      )
      batch = {**batch, "inputs": inputs, "targets": targets, "weights": weights}
    keys = {"dropout": k_drop, "negatives": k_neg, "gen": k_gen}
    loss_fn = lambda params: _losses(spec, params, batch, tables, keys, hp)
    optimizer = optimizer_lib.build_optimizer(spec.optimizer, hp)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        **aux,
        "grad_norm": optimizer_lib.global_norm(grads),
        "learning_rate": optimizer_lib.learning_rate_at(state.step, hp, spec.optimizer.decay),
        "targets": jnp.sum(batch["weights"]),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


@functools.cache
def compiled_step(spec: StepSpec, mesh: jax.sharding.Mesh) -> Callable:
  """The one jitted, donated, sharded step over stacked members:
  `(state_S, batch_SxB, tables, keys_S, hparams_S) -> (state_S, metrics_S)`.

  Every leaf of the state, batch, keys and hparams has a leading member axis S, over which one run's step
  is mapped (spec.member_axis): members train independently, each on its own batch, keys and
  hyperparameters. The batch is sharded over 'data' on its B axis; state and tables are replicated. Each
  (S, length bucket) shape traces the step once.
  """
  member = member_step(spec)

  def stacked(state, batch, tables, keys, hparams):
    if keys.shape[0] == 1:  # a run alone: exactly its own step, without a member axis inside
      out = member(
          *members_lib.member_tree((state, batch), 0), tables, keys[0], members_lib.member_tree(hparams, 0)
      )
      return jax.tree.map(lambda x: x[None], out)
    if spec.member_axis == "vmap":
      return jax.vmap(member, in_axes=(0, 0, None, 0, 0))(state, batch, tables, keys, hparams)
    return jax.lax.map(lambda xs: member(xs[0], xs[1], tables, xs[2], xs[3]), (state, batch, keys, hparams))

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(
      stacked,
      donate_argnums=0,
      in_shardings=(replicated, members_lib.stacked_batch_sharding(mesh), replicated, replicated, replicated),
      out_shardings=(replicated, replicated),
  )


@functools.cache
def init_program(
    model: recommender_lib.Recommender, structure: optimizer_lib.OptimizerStructure, mesh: jax.sharding.Mesh
) -> Callable:
  """`(keys_S, table) -> TrainState` with a leading member axis; member s from keys_S[s] alone."""
  optimizer = optimizer_lib.build_optimizer(structure, optimizer_lib.PLACEHOLDER_HPARAMS)

  def init(key, table):
    params = recommender_lib.init_variables(model, key, table)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(jax.vmap(init, in_axes=(0, None)), out_shardings=replicated)
