"""What S runs trained together need before their first step: the model, its training rows, the compiled
step, the tables on device, and the stacked initial state, step keys and hyperparameters."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recg_jax import distributed
from recg_jax import errors
from recg_jax import finished_run
from recg_jax import input_pipeline
from recg_jax import paths
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.training import members as members_lib
from recg_jax.training import optimizer as optimizer_lib
from recg_jax.training import step as step_lib


def make_mesh() -> jax.sharding.Mesh:
  """All devices on one 'data' axis: the batch is sharded, parameters and tables are replicated."""
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def build_rows(
    config: ml_collections.ConfigDict, model: recommender_lib.Recommender, domain: types.DomainData
) -> input_pipeline.TrainingRows:
  return input_pipeline.build_rows(
      domain,
      int(config.data.max_len),
      str(config.train.targets),
      causal=model.is_causal,
      objective=str(config.train.bert4rec_objective),
      length_buckets=tuple(config.train.length_buckets),
  )


@dataclasses.dataclass
class Trainer:
  """The compiled pieces of S runs trained together (S = 1 for a single run)."""

  configs: list[ml_collections.ConfigDict]  # one per member; they differ only in traced fields
  model: recommender_lib.Recommender
  rows: input_pipeline.TrainingRows | input_pipeline.MultiRows
  mesh: jax.sharding.Mesh
  step_tables: step_lib.StepTables
  tables_on_device: dict[str, jax.Array | None]
  state: step_lib.TrainState | None  # every leaf [S, ...]; None once handed to the loop (donated)
  train_step: Callable
  step_keys: jax.Array  # [S]
  hparams: dict[str, jax.Array]  # each [S]
  steps_per_epoch: int
  total_steps: int

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.configs[0]

  @property
  def seeds(self) -> tuple[int, ...]:
    return tuple(int(c.train.seed) for c in self.configs)

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    """Of the [S, B, ...] batches."""
    return members_lib.stacked_batch_sharding(self.mesh)

  def step(self, state: step_lib.TrainState, batch) -> tuple[step_lib.TrainState, dict[str, jax.Array]]:
    return self.train_step(state, batch, self.tables_on_device, self.step_keys, self.hparams)


def _check_batch(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  distributed.check_batch_size(batch_size)
  if batch_size % mesh.shape["data"]:
    raise errors.ConfigError(
        f"config.train.batch_size={batch_size} must be a multiple of the number of devices "
        f"on the 'data' axis ({mesh.shape['data']})"
    )


def _check_source_tables(step_tables: step_lib.StepTables, domains: Sequence[types.DomainData]) -> None:
  arrays = step_tables.arrays
  if arrays.get("source") is not None:
    have = {domains[0].name: arrays["source"].shape[0] - 1}
  elif "counts" in arrays:
    have = {d.name: int(c) for d, c in zip(domains, arrays["counts"])}
  else:
    return
  for d in domains:
    if have[d.name] != d.num_items:
      raise errors.ConfigError(
          f"the table of {d.name!r} has {have[d.name] + 1} rows; the domain has {d.num_items} items (+1 "
          "padding row expected)"
      )


def training_rows(
    config: ml_collections.ConfigDict, model: recommender_lib.Recommender, domains: Sequence[types.DomainData]
) -> input_pipeline.TrainingRows | input_pipeline.MultiRows:
  """The rows of one source, or of several taking turns (input_pipeline.MultiRows)."""
  if len(domains) == 1:
    return build_rows(config, model, domains[0])
  return input_pipeline.multi_rows(
      [build_rows(config, model, d) for d in domains],
      int(config.train.batch_size),
      int(config.train.source_batches_per_epoch),
  )


def _finished_run_params(members: Sequence[ml_collections.ConfigDict], initial_SxP) -> Any:
  """initial_SxP with each member that names a finished run (train.init_from) started from that run's best
  parameters; a clear error when they are not the parameters of this run's model."""
  stacked = [members_lib.member_tree(initial_SxP, s) for s in range(len(members))]
  shapes = lambda tree: {
      jax.tree_util.keystr(path): tuple(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(tree)
  }
  mine = shapes(stacked[0])
  loaded: dict[str, Any] = {}
  for s, member in enumerate(members):
    source = str(member.train.init_from)
    if not source:
      continue
    if source not in loaded:
      workdir = paths.as_path(source)
      run_config, _ = finished_run.config_and_records(workdir)
      params = finished_run.best_params(workdir, run_config)
      theirs = shapes(params)
      if mine != theirs:
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        first = diff[0]
        raise errors.ConfigError(
            f"config.train.init_from={source!r}: its parameters do not fit this run's model ({len(diff)} "
            f"differ; first {first}: {theirs.get(first, 'absent')} there, {mine.get(first, 'absent')} "
            "here); train with that run's model settings (model.variant, hidden_dim, num_layers, ...; an "
            "`id` model only on its own catalogue)"
        )
      distributed.say(f"[train] starting from the best parameters of {workdir}")
      loaded[source] = params
    stacked[s] = jax.tree.map(lambda p, x: np.asarray(p, x.dtype), loaded[source], stacked[s])
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *stacked)


def create_trainer(
    config: ml_collections.ConfigDict,
    domain: types.DomainData | Sequence[types.DomainData],
    tables: dict[str, np.ndarray] | None,
    mesh: jax.sharding.Mesh | None = None,
    members: Sequence[ml_collections.ConfigDict] | None = None,
) -> Trainer:
  """Builds the model, the training rows, the stacked initial TrainState and the jitted step.

  domain: the source domain, or the source domains of a multi-source run (data.source 'A+B+...').
  members: the configs trained together (default: [config]); they may differ only in traced fields.
  Member s starts from the parameters and keys a run of members[s] alone would start from.
  """
  members = list(members or [config])
  members_lib.check_members(members)
  config = members[0]
  mesh = mesh or make_mesh()
  _check_batch(int(config.train.batch_size), mesh)
  domains = [domain] if isinstance(domain, types.DomainData) else list(domain)
  model = recommender_lib.build_model(config, max(d.num_items for d in domains))
  rows = training_rows(config, model, domains)
  step_tables = step_lib.build_step_tables(config, tables)
  _check_source_tables(step_tables, domains)
  spe = input_pipeline.steps_per_epoch(rows, int(config.train.batch_size))
  total_steps = spe * int(config.train.num_epochs)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  keys = [jax.random.split(jax.random.key(int(m.train.seed))) for m in members]
  tables_on_device = distributed.put(step_tables.arrays, replicated)
  init = step_lib.init_program(model, optimizer_lib.OptimizerStructure.from_config(config.train), mesh)
  init_table = tables_on_device["sources"][0] if "sources" in tables_on_device else tables_on_device["source"]
  state = init(distributed.put(jnp.stack([k[0] for k in keys]), replicated), init_table)
  if any(str(m.train.init_from) for m in members):
    state = state.replace(params=distributed.put(_finished_run_params(members, state.params), replicated))
  hparams = [members_lib.step_hparams(m, total_steps) for m in members]
  stacked_hparams = {k: np.stack([h[k] for h in hparams]) for k in hparams[0]}
  spec = step_lib.StepSpec.create(model, config, rows, step_tables)
  return Trainer(
      configs=members,
      model=model,
      rows=rows,
      mesh=mesh,
      step_tables=step_tables,
      tables_on_device=tables_on_device,
      state=state,
      train_step=step_lib.compiled_step(spec, mesh),
      step_keys=distributed.put(jnp.stack([k[1] for k in keys]), replicated),
      hparams=distributed.put(stacked_hparams, replicated),
      steps_per_epoch=spe,
      total_steps=total_steps,
  )
