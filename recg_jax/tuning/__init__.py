"""Contrastive tuning of the text encoder on the source domains' interactions.

`tune(config, workdir, domains, tables)` tunes config.encoder on the interactions of config.data.source's
domains ('A+B+...' for several; a target's interactions are never read): examples.py draws (history, next
item) examples with hard negatives, step.py encodes each distinct item of a batch once and takes an
InfoNCE step. The run checkpoints with orbax every config.tuning.checkpoint_every_steps steps and resumes
from its latest checkpoint after a kill (batches are a function of the step), logs to metrics.jsonl, and
writes the tuned encoder as an artefact (artefact.py) that every command takes as encoder.model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from recg_jax import distributed
from recg_jax import encoders
from recg_jax import errors
from recg_jax import paths
from recg_jax.config import roles
from recg_jax.data import types
from recg_jax.encoders import embed
from recg_jax.encoders import sources
from recg_jax.training import metric_log
from recg_jax.training import trainer as trainer_lib
from recg_jax.tuning import artefact
from recg_jax.tuning import examples as examples_lib
from recg_jax.tuning import step as step_lib


@dataclasses.dataclass(frozen=True)
class Tuned:
  """A finished tuning: the artefact's folder and the tuned encoder, ready to embed."""

  folder: paths.Path
  encoder: encoders.Encoder
  metrics: dict[str, float]


def _spec(config: ml_collections.ConfigDict, base: encoders.Encoder) -> step_lib.TuningSpec:
  tc = config.tuning
  if base.family != "encoder":
    raise errors.ConfigError("config.tuning: only BERT-family encoders (MiniLM, BGE, E5) are tuned here")
  return step_lib.TuningSpec(
      module=base.module.clone(dtype=jnp.dtype(str(tc.dtype))),
      trainable=str(tc.trainable),
      top_layers=int(tc.top_layers),
      num_layers=int(base.module.config.num_layers),
      decay=float(tc.decay),
      learn_temperature=bool(tc.learn_temperature),
      pull=float(tc.pull),
      learning_rate=float(tc.learning_rate),
      warmup_steps=int(tc.warmup_steps),
      weight_decay=float(tc.weight_decay),
      pooling=str(base.pooling),
      lora_rank=int(tc.lora_rank),
      lora_alpha=float(tc.lora_alpha),
      lora_targets=tuple(tc.lora_targets),
      cache_frozen=bool(tc.cache_frozen_blocks) and str(tc.trainable) == "top_layers",
  )


def _tokens(base: encoders.Encoder, config, domains: list[types.DomainData]) -> tuple[np.ndarray, np.ndarray]:
  """[G, T] token ids and [G, T] masks of every source item, in the global item order (row 0 of each
  domain, its padding, holds the empty-text placeholder)."""
  cap = int(config.tuning.max_tokens)
  if base.max_tokens:
    cap = min(cap, int(base.max_tokens))
  texts = [t for d in domains for t in embed.prepare_texts(list(d.item_text), config.text.empty_fallback)]
  ids, lengths = embed.tokenize(base.tokenizer, texts, cap)
  return ids, (np.arange(cap)[None, :] < lengths[:, None]).astype(np.int32)


def _frozen_states(
    spec: step_lib.TuningSpec, params, ids: np.ndarray, mask: np.ndarray, batch_size: int, progress: bool
) -> np.ndarray:
  """[G, T, H] float32: every source item's input to the first trained block (step_lib.frozen_hidden),
  in fixed-size batches (one compile). Recomputed when a tuning resumes: minutes, against hours of steps."""
  fn = jax.jit(lambda p, i, m: step_lib.frozen_hidden(spec, p, i, m))
  out = np.zeros((*ids.shape, spec.module.config.hidden_size), np.float32)
  starts = range(0, len(ids), batch_size)
  bar = tqdm.tqdm(
      starts,
      desc="frozen blocks",
      disable=not progress or not distributed.is_primary(),
      dynamic_ncols=True,
      mininterval=1.0,
  )
  for start in bar:
    rows = np.arange(start, start + batch_size) % len(ids)  # the last batch wraps: same shape
    got = np.asarray(fn(params, ids[rows], mask[rows]))
    n = min(batch_size, len(ids) - start)
    out[start : start + n] = got[:n]
  return out


def _device_batch(
    batch: examples_lib.Batch, ids: np.ndarray, mask: np.ndarray, frozen: np.ndarray | None = None
) -> dict[str, np.ndarray]:
  """The step's inputs; the items' cached frozen states in place of their tokens when there are some."""
  items = (
      {"ids": ids[batch.unique_U].astype(np.int32)} if frozen is None else {"hidden": frozen[batch.unique_U]}
  )
  return {
      **items,
      "mask": mask[batch.unique_U],
      "history": batch.history_BxH.astype(np.int32),
      "positive": batch.positive_B.astype(np.int32),
      "candidate_ok": batch.candidate_ok_BxU,
  }


def _manager(workdir: paths.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      paths.absolute(workdir) / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
  )


def _check_signature(workdir: paths.Path, config) -> None:
  """A workdir holds one tuning: resuming under another config is refused."""
  signature = {
      "tuning": roles.without(config, (roles.COSMETIC, roles.RESUMABLE))["tuning"],
      "source": config.data.source,
      "encoder": config.encoder.to_dict(),
      "text": config.text.to_dict(),
  }
  path = workdir / "tuning_config.json"
  if path.exists() and roles.diff(json.loads(path.read_text()), roles.as_dict(signature)):
    raise errors.RunStateError(
        f"{workdir} holds a tuning of another config "
        f"({roles.diff(json.loads(path.read_text()), roles.as_dict(signature))}); use a "
        "fresh workdir"
    )
  if distributed.is_primary():
    paths.write_json_atomic(path, signature, sort_keys=True)


def _save_encoder(workdir: paths.Path, config, base: encoders.Encoder, params, about: dict) -> paths.Path:
  """Writes the tuned encoder to <workdir>/encoder (artefact.py) from the primary process; its folder."""
  folder = workdir / "encoder"
  if distributed.is_primary():
    artefact.save(
        folder,
        sources.resolve(config.encoder.model, config.encoder.revision),
        params,
        {
            "base_model": base.model_id,
            "base_weights_hash": base.weights_hash,
            "sources": list(types.source_names(config.data.source)),
            "tuning": config.tuning.to_dict(),
            "steps": int(config.tuning.steps),
            **about,
        },
    )
  return folder


def tune(
    config: ml_collections.ConfigDict,
    workdir,
    domains: dict[str, types.DomainData],
    tables: dict[str, np.ndarray],
    progress: bool = True,
) -> Tuned:
  """Tunes config.encoder on the sources' interactions (see the module docstring); resumes when workdir
  holds a checkpoint of the same tuning."""
  tc, workdir = config.tuning, paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _check_signature(workdir, config)
  names = types.source_names(config.data.source)
  base = encoders.load_encoder(config.encoder)
  spec = _spec(config, base)
  examples = examples_lib.build(
      [domains[n] for n in names], [tables[n] for n in names], int(tc.history_len), int(tc.hard_pool)
  )
  ids, mask = _tokens(base, config, [domains[n] for n in names])
  frozen = None
  if spec.cache_frozen:
    frozen = _frozen_states(spec, base.params, ids, mask, int(tc.cache_batch_size), progress)
  mesh = trainer_lib.make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  pretrained = jax.device_put(base.params, replicated)
  trained = pretrained
  if spec.trainable == "lora":
    key = jax.random.key(int(tc.seed))
    trained = jax.device_put(step_lib.lora_init(base.params, spec, key), replicated)
  state = step_lib.TuningState(
      step=jnp.zeros((), jnp.int32),
      params=trained,
      opt_state=step_lib.optimizer(spec, trained).init(trained),
      log_temperature=jnp.log(jnp.float32(tc.temperature)),
  )
  manager = _manager(workdir)
  start = manager.latest_step() or 0
  if start:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
    state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
    distributed.say(f"[tuning] resuming {workdir} from step {start}")
  log = metric_log.MetricLog(workdir, start)
  step_fn = step_lib.compiled_step(spec, mesh)
  last: dict[str, float] = {}
  try:
    bar = tqdm.trange(
        start,
        int(tc.steps),
        desc="tuning",
        initial=start,
        total=int(tc.steps),
        disable=not progress or not distributed.is_primary(),
        dynamic_ncols=True,
        mininterval=1.0,
    )
    for step in bar:
      batch = examples_lib.sample(examples, int(tc.batch_size), int(tc.hard_negatives), int(tc.seed), step)
      state, metrics = step_fn(state, _device_batch(batch, ids, mask, frozen), pretrained)
      if (step + 1) % int(tc.log_every_steps) == 0 or step + 1 == int(tc.steps):
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(last["loss"]):
          raise errors.NonFiniteLossError(
              f"tuning loss is {last['loss']} at step {step + 1}: lower config.tuning.learning_rate"
          )
        log.write("train", step + 1, last)
        bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}")
      if (step + 1) % int(tc.checkpoint_every_steps) == 0 or step + 1 == int(tc.steps):
        manager.save(step + 1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  finally:
    manager.close()
    log.close()
  params = jax.device_get(step_lib.encoder_params(spec, state.params, pretrained))
  folder = _save_encoder(workdir, config, base, params, {"examples": int(len(examples.positive_N))})
  weights_hash = sources.weights_hash(sources.folder_weight_files(pathlib.Path(str(folder))), ())
  return Tuned(
      folder=folder, encoder=dataclasses.replace(base, params=params, weights_hash=weights_hash), metrics=last
  )
