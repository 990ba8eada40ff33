"""Training on the source domain: TrainState, one jitted train step, the epoch loop, checkpoints, early stop.

`train_and_evaluate` trains config.model.backbone/variant on config.data.source, evaluates the source
validation split every config.train.eval_every_epochs epochs, early-stops on config.eval.select_metric
(patience in epochs), restores the best checkpoint and evaluates the source test split. Everything it
writes lives in `workdir`:

  checkpoints/latest/<step>/   full TrainState + loop position (epoch, batch), best metric, patience
  checkpoints/best/<step>/     parameters of the best validation evaluation
  checkpoints/run_config.json  the fields that define the run, checked on resume
  metrics.jsonl                one JSON object per log / eval event
  tensorboard/                 tensorboardX event files
  results.json, results.md     the final metrics, labelled with protocol, loss and config (results.py)

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
import pathlib
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from recg_jax import evaluate as evaluate_lib
from recg_jax import fingerprint as fingerprint_lib
from recg_jax import gen_loss as gen_loss_lib
from recg_jax import input_pipeline
from recg_jax import losses
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
# Optimiser.


def learning_rate_schedule(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over train.warmup_steps, then constant or cosine decay to 0 at total_steps."""
  lr = float(train_config.learning_rate)
  warmup = int(train_config.warmup_steps)
  if train_config.decay == "constant":
    after = optax.constant_schedule(lr)
  elif train_config.decay == "cosine":
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  else:
    raise ValueError(f"config.train.decay={train_config.decay!r}: expected 'constant' or 'cosine'")
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Adam (AdamW when train.weight_decay > 0, decaying matrices only), with optional global-norm clipping."""
  schedule = learning_rate_schedule(train_config, total_steps)
  parts = []
  if float(train_config.grad_clip) > 0:
    parts.append(optax.clip_by_global_norm(float(train_config.grad_clip)))
  if float(train_config.weight_decay) > 0:
    # Biases, LayerNorm scales and the mask vector are not decayed.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    parts.append(optax.adamw(schedule, weight_decay=float(train_config.weight_decay), mask=decay_mask))
  else:
    parts.append(optax.adam(schedule))
  return optax.chain(*parts)


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


def make_train_step(model: recommender_lib.Recommender,
                    config: ml_collections.ConfigDict,
                    rows: input_pipeline.TrainingRows,
                    step_tables: StepTables,
                    optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule,
                    mesh: jax.sharding.Mesh,
                    state_sharding: Any):
  """Builds the one jitted, donated, sharded step `(state, batch, tables, key) -> (state, metrics)`.

  batch: input_pipeline batch (device arrays, sharded over 'data'); tables: step_tables.arrays
  (replicated); key: the run's base step key. The step key is fold_in(key, state.step). Each length
  bucket's batch shape traces the step once.
  """
  tc, gc = config.train, config.gen_loss
  num_items = model.num_items
  use_gen = "gen" in step_tables.arrays
  loss_kind = str(tc.loss)
  if loss_kind not in ("bpr", "softmax"):
    raise ValueError(f"config.train.loss={loss_kind!r}: expected 'bpr' or 'softmax'")
  scoring = candidate_scoring(config)
  mask_id = recommender_lib.mask_token_id(num_items)

  def step(state: TrainState, batch, tables, key):
    TRACE_COUNTS["train_step"] += 1  # a Python side effect: runs once per trace, never per call
    rng = jax.random.fold_in(key, state.step)
    k_drop, k_neg, k_cloze, k_gen = jax.random.split(rng, 4)
    inputs, targets, weights = batch["inputs"], batch["targets"], batch["weights"]
    if rows.cloze:
      inputs, targets, weights = input_pipeline.cloze_mask(
          k_cloze, inputs, weights, float(config.model.mask_prob), mask_id, float(tc.cloze_last_item_prob))
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
        negs_BxPxK = losses.sample_negatives(k_neg, targets, num_items, int(tc.num_negatives),
                                             batch["history"])
        ids_BxPxC = jnp.concatenate([targets[..., None], negs_BxPxK], axis=-1)  # positive, then negatives
        scores_BxPxC = candidate_scores(model, variables, hidden_BxPxD, ids_BxPxC, table, scoring)
        rec = losses.bpr_from_scores(scores_BxPxC[..., 0], scores_BxPxC[..., 1:], weights)
      else:
        items_NxD = model.apply(variables, table, method=recommender_lib.Recommender.item_vectors)
        rec = losses.softmax_loss(hidden_BxPxD, items_NxD, targets, weights)
      aux = {"rec_loss": rec}
      total = rec
      if use_gen:
        idx_DxB = gen_loss_lib.sample_domain_items(k_gen, step_tables.gen_counts, int(gc.samples_per_domain))
        rows_DxBxH = jax.vmap(lambda t, i: jnp.take(t, i, axis=0))(tables["gen"], idx_DxB)
        d, b, h = rows_DxBxH.shape
        z = model.apply(variables, rows_DxBxH.reshape(d * b, h), method=recommender_lib.Recommender.align)
        lg, gen_metrics = gen_loss_lib.generalization_loss(
            z.reshape(d, b, -1), float(gc.alpha), float(gc.tau), int(gc.inter_sign),
            bool(gc.use_intra), bool(gc.use_inter))
        total = total + lg
        aux.update({"gen_loss": lg, "h_intra": gen_metrics["h_intra"], "h_inter": gen_metrics["h_inter"]})
      return total, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **aux, "grad_norm": _global_norm(grads),
               "learning_rate": schedule(state.step), "targets": jnp.sum(weights)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(state_sharding, batch_sharding, replicated, replicated),
                 out_shardings=(state_sharding, replicated))


# ----------------------------------------------------------------------------------------------------------
# Setup shared by training, tests and benchmarks.


def make_mesh() -> jax.sharding.Mesh:
  """All devices on one 'data' axis: the batch is sharded, parameters and tables are replicated."""
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def build_model(config: ml_collections.ConfigDict, num_items: int) -> recommender_lib.Recommender:
  cloze = config.model.backbone == "bert4rec" and config.train.bert4rec_objective == "cloze"
  return recommender_lib.Recommender.from_config(config.model, num_items, int(config.data.max_len),
                                                 cloze=cloze)


def build_rows(config: ml_collections.ConfigDict, model: recommender_lib.Recommender,
               domain: types.DomainData) -> input_pipeline.TrainingRows:
  return input_pipeline.build_rows(domain, int(config.data.max_len), str(config.train.targets),
                                   causal=model.is_causal, objective=str(config.train.bert4rec_objective),
                                   length_buckets=tuple(config.train.length_buckets))


@dataclasses.dataclass
class Trainer:
  """The compiled pieces of one run: model, rows, step, tables on device, initial state."""

  config: ml_collections.ConfigDict
  model: recommender_lib.Recommender
  rows: input_pipeline.TrainingRows
  mesh: jax.sharding.Mesh
  step_tables: StepTables
  tables_on_device: dict[str, Any]
  state: TrainState
  train_step: Callable
  step_key: jax.Array
  steps_per_epoch: int
  total_steps: int
  batch_sharding: jax.sharding.NamedSharding
  replicated: jax.sharding.NamedSharding


def create_trainer(config: ml_collections.ConfigDict,
                   domain: types.DomainData,
                   tables: dict[str, np.ndarray] | None,
                   mesh: jax.sharding.Mesh | None = None) -> Trainer:
  """Builds the model, the training rows, the initial TrainState and the jitted step."""
  tc = config.train
  mesh = mesh or make_mesh()
  num_shards = mesh.shape["data"]
  batch_size = int(tc.batch_size)
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
  schedule = learning_rate_schedule(tc, total_steps)
  optimizer = make_optimizer(tc, total_steps)

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  init_key, step_key = jax.random.split(jax.random.key(int(tc.seed)))
  tables_on_device = jax.device_put(step_tables.arrays, replicated)

  def init(key, table):
    variables = recommender_lib.init_variables(model, key, table)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  state_shape = jax.eval_shape(init, init_key, tables_on_device["source"])
  state_sharding = jax.tree.map(lambda _: replicated, state_shape)
  state = jax.jit(init, out_shardings=state_sharding)(init_key, tables_on_device["source"])
  train_step = make_train_step(model, config, rows, step_tables, optimizer, schedule, mesh,
                               state_sharding)
  return Trainer(config=config, model=model, rows=rows, mesh=mesh, step_tables=step_tables,
                 tables_on_device=tables_on_device, state=state, train_step=train_step,
                 step_key=jax.device_put(step_key, replicated), steps_per_epoch=spe,
                 total_steps=total_steps, batch_sharding=batch_sharding, replicated=replicated)


def make_eval_fns(model: recommender_lib.Recommender):
  """(user_fn_jit(params, table, seq) -> user_BxD, items_jit(params, table) -> items_NxD).

  user_fn is traced once per input width (one per eval length bucket), items_jit once.
  """
  def user_fn(params, table, seq):
    TRACE_COUNTS["user_fn"] += 1
    return model.apply({"params": params}, seq, table, False)

  user_jit = jax.jit(user_fn)
  items_jit = jax.jit(lambda params, table: model.apply(
      {"params": params}, table, method=recommender_lib.Recommender.item_vectors))
  return user_jit, items_jit


def evaluate_split(eval_fns, params, table, split: types.EvalSplit, domain: types.DomainData,
                   eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None) -> dict[str, float]:
  user_jit, items_jit = eval_fns
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
                           "num_epochs", "patience", "eval_every_epochs")


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


class Checkpoints:
  """`latest` (TrainState + loop position, for resume) and `best` (parameters, by validation metric)."""

  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict):
    self.root = pathlib.Path(workdir).absolute() / "checkpoints"
    self.metric = str(config.eval.select_metric)
    self.latest = ocp.CheckpointManager(
        self.root / "latest",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, cleanup_tmp_directories=True))
    metric = self.metric
    self.best = ocp.CheckpointManager(
        self.root / "best",
        options=ocp.CheckpointManagerOptions(max_to_keep=max(1, int(config.train.max_to_keep)),
                                             best_fn=lambda m: m[metric], best_mode="max",
                                             keep_checkpoints_without_metrics=False, create=True,
                                             cleanup_tmp_directories=True))
    self._check_signature(config)

  def _check_signature(self, config):
    path = self.root / "run_config.json"
    signature = run_signature(config)
    if path.exists() and self.latest.latest_step() is not None:
      diff = fingerprint_lib.diff(json.loads(path.read_text()), signature)
      if diff:
        raise ValueError(f"{self.root} holds a checkpoint of a different run (differs in {diff}); use a "
                         "fresh workdir or restore the config")
    self.root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(signature, indent=1, sort_keys=True))

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
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


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
  """metrics.jsonl + tensorboardX. On resume, events after the restored step are dropped from both."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line).get("step", 0) <= resume_step]
      self.path.write_text("".join(line + "\n" for line in kept))
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"),
                                            purge_step=resume_step if resume_step else None)
    except ImportError:  # TensorBoard events are optional; metrics.jsonl is always written
      logging.warning("tensorboardX is not installed: no TensorBoard events")

  def write(self, kind: str, step: int, values: dict[str, Any], **extra) -> None:
    record = {"kind": kind, "step": int(step), **extra, **{k: _jsonable(v) for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)):
          self._tb.add_scalar(tensorboard_tag(kind, k), float(v), int(step))

  def close(self) -> None:
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
  workdir: pathlib.Path


def _fresh_meta() -> dict:
  return {"step": 0, "epoch": 0, "batch": 0, "best_metric": None, "best_step": None, "best_epoch": None,
          "best_valid": None, "finished": False, "stop_reason": ""}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path,
                       domains: dict[str, types.DomainData],
                       tables: dict[str, np.ndarray] | None,
                       mesh: jax.sharding.Mesh | None = None) -> TrainResult:
  """Trains on config.data.source, early-stops on validation, tests the best checkpoint.

  Returns a TrainResult; its `metrics` dict holds the best validation metrics ('valid/...') and the test
  metrics ('test/...'), each labelled with its protocol. Writes results.json / results.md in workdir.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tc = config.train
  source = config.data.source
  if source not in domains:
    raise ValueError(f"config.data.source={source!r} is not among the loaded domains {sorted(domains)}")
  domain = domains[source]
  max_len = int(config.data.max_len)
  select = str(config.eval.select_metric)
  if not select.startswith("valid/"):
    raise ValueError(f"config.eval.select_metric={select!r} must name a validation metric "
                     "('valid/<protocol>/<metric>@K')")

  trainer = create_trainer(config, domain, tables, mesh)
  mesh = trainer.mesh
  ckpt = Checkpoints(workdir, config)
  restored = ckpt.restore_latest(_abstract(trainer.state))
  if restored is None:
    state, meta = trainer.state, _fresh_meta()
  else:
    state, meta = restored
    if int(state.step) != int(meta["step"]):
      raise ValueError(f"inconsistent checkpoint in {ckpt.root}: state step {int(state.step)} != "
                       f"position step {meta['step']}")
    if (meta["finished"] and meta["stop_reason"].startswith("reached num_epochs")
        and meta["epoch"] < int(tc.num_epochs)):
      meta.update(finished=False, stop_reason="")  # num_epochs was raised: train on
    logging.info("resuming from step %d (epoch %d, batch %d)", meta["step"], meta["epoch"], meta["batch"])
    print(f"resuming {workdir} from step {meta['step']} (epoch {meta['epoch']}, batch {meta['batch']})",
          flush=True)
  trainer.state = None  # the initial state's buffers may be donated below; keep no stale reference

  log = MetricLog(workdir, int(meta["step"]))
  eval_fns = make_eval_fns(trainer.model)
  table = trainer.tables_on_device["source"]
  valid_split = types.leave_one_out(domain, "valid", max_len)
  spe, batch_size = trainer.steps_per_epoch, int(tc.batch_size)
  num_rows = trainer.rows.num_rows
  ckpt_every = int(tc.checkpoint_every_steps)
  log_every = max(1, int(tc.log_every_steps))
  if meta["step"] == 0:
    log.write("setup", 0, {"rows": num_rows, "steps_per_epoch": spe, "targets_per_epoch":
                           trainer.rows.num_targets, "devices": int(mesh.devices.size)},
              loss_name=results_lib.loss_name(config),
              bucket_rows={str(w): n for w, n in input_pipeline.bucket_sizes(trainer.rows).items()})

  started = time.perf_counter()
  pending: list[tuple[int, int, dict]] = []  # (step, real rows, device metrics) not yet read back
  clock = {"t0": time.perf_counter()}

  def flush(keep_last: bool) -> dict[str, float] | None:
    """Reads back pending step metrics (all but the newest if keep_last), checks them, logs their mean."""
    take = pending[:-1] if keep_last else pending[:]
    if not take:
      return None
    del pending[:len(take)]
    host = jax.device_get([m for _, _, m in take])
    for (s, _, _), m in zip(take, host):
      if not np.isfinite(m["loss"]):
        last = ckpt.latest.latest_step()
        raise NonFiniteLossError(
            f"training loss is {float(m['loss'])} at step {s} (epoch {s // spe}): stopping. The last good "
            f"checkpoint is step {last} in {ckpt.root / 'latest'}; lower config.train.learning_rate or set "
            "config.train.grad_clip")
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    # Steady-state rate: the steps read back finished between the previous read-back and this one.
    now = time.perf_counter()
    elapsed = max(now - clock["t0"], 1e-9)
    mean["sequences_per_s"] = sum(r for _, r, _ in take) / elapsed
    mean["targets_per_s"] = float(sum(m["targets"] for m in host)) / elapsed
    clock["t0"] = now
    log.write("train", take[-1][0], mean, epoch=(take[-1][0] - 1) // spe)
    return mean

  epoch = int(meta["epoch"])
  start_batch = int(meta["batch"])
  step = int(meta["step"])
  try:
    while not meta["finished"] and epoch < int(tc.num_epochs):
      # Real (unpadded) rows of each batch, for the sequences/s figure.
      real_rows = [len(idx) for _, idx in input_pipeline.epoch_plan(trainer.rows, batch_size, int(tc.seed),
                                                                    epoch)]
      batches = input_pipeline.prefetch(
          input_pipeline.epoch_batches(trainer.rows, batch_size, int(tc.seed), epoch, start_batch),
          int(tc.prefetch), trainer.batch_sharding)
      bar = tqdm.tqdm(total=spe, initial=start_batch, desc=f"epoch {epoch}", leave=False,
                      dynamic_ncols=True, mininterval=1.0)
      clock["t0"] = time.perf_counter()  # evaluation time is not training time
      for b, batch in enumerate(batches, start=start_batch):
        state, metrics = trainer.train_step(state, batch, trainer.tables_on_device, trainer.step_key)
        step += 1
        pending.append((step, real_rows[b], metrics))
        bar.update(1)
        if step % log_every == 0:
          mean = flush(keep_last=True)
          if mean:
            bar.set_postfix(loss=f"{mean['loss']:.4f}", seq_s=f"{mean['sequences_per_s']:.0f}")
        if ckpt_every > 0 and step % ckpt_every == 0 and b + 1 < spe:
          flush(keep_last=False)  # never checkpoint a state whose losses were not checked
          ckpt.save_latest(state, {**meta, "step": step, "epoch": epoch, "batch": b + 1})
      bar.close()
      flush(keep_last=False)
      epoch += 1
      start_batch = 0
      meta.update(step=step, epoch=epoch, batch=0)
      if epoch % int(tc.eval_every_epochs) == 0 or epoch == int(tc.num_epochs):
        valid = evaluate_split(eval_fns, state.params, table, valid_split, domain, config.eval, mesh)
        valid = {f"valid/{k}": v for k, v in valid.items()}
        if select not in valid:
          raise ValueError(f"config.eval.select_metric={select!r} is not among the validation metrics "
                           f"{sorted(valid)}")
        # Wall time since this invocation started (a resumed run counts from its restart).
        log.write("valid", step, valid, epoch=epoch, elapsed_s=round(time.perf_counter() - started, 3))
        value = valid[select]
        if meta["best_metric"] is None or value > meta["best_metric"]:
          meta.update(best_metric=value, best_step=step, best_epoch=epoch, best_valid=valid)
          ckpt.save_best(step, state.params, {"epoch": epoch, "step": step, "valid": valid}, value)
        elif epoch - int(meta["best_epoch"]) >= int(tc.patience):
          meta.update(finished=True, stop_reason=f"early stop: no {select} gain for {tc.patience} epochs "
                      f"(best {meta['best_metric']:.5f} at epoch {meta['best_epoch']})")
        print(f"epoch {epoch}: {select}={value:.5f} (best {meta['best_metric']:.5f} @ epoch "
              f"{meta['best_epoch']})", flush=True)
      if epoch >= int(tc.num_epochs) and not meta["finished"]:
        meta.update(finished=True, stop_reason=f"reached num_epochs={tc.num_epochs}")
      ckpt.save_latest(state, dict(meta))
    ckpt.wait()

    # Test the best checkpoint (or the last state if no evaluation ever ran).
    params_abstract = _abstract(state.params)
    best = ckpt.restore_best(params_abstract)
    if best is None:
      best_params, best_valid = state.params, {}
    else:
      best_params, best_meta = best
      best_valid = best_meta.get("valid", {})
    test_split = types.leave_one_out(domain, "test", max_len)
    test = evaluate_split(eval_fns, best_params, table, test_split, domain, config.eval, mesh)
    test = {f"test/{k}": v for k, v in test.items()}
    log.write("test", step, test, best_step=meta["best_step"])
  finally:
    ckpt.wait()
    ckpt.close()
    log.close()

  metrics = {**best_valid, **test}
  summary = {"best_step": meta["best_step"], "best_epoch": meta["best_epoch"], "epochs": epoch,
             "stop_reason": meta["stop_reason"], "steps_per_epoch": spe, "training_rows": num_rows}
  record = results_lib.make_record(config, stage="in_domain", domain=source, metrics=metrics,
                                   extra=summary)
  results_lib.write_results(workdir, [record], config)
  return TrainResult(metrics=metrics, params=jax.device_get(best_params), model=trainer.model,
                     best_step=meta["best_step"] or 0, best_epoch=meta["best_epoch"] or 0, epochs=epoch,
                     stop_reason=meta["stop_reason"], workdir=workdir)
