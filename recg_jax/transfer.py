"""Sequence-level transfer and zero-shot evaluation (docs/method.md steps 7 and 8).

After the source model is trained:
  a. y for every source user (input: the training part of the history), k-means on them -> s_1..s_K;
  b. g = W_f [y; s~] with s~ = sum_k softmax_k(cos(y, s_k)) s_k;
  c. W_f trained on the source only, by BPR, with everything else frozen, from [I | 0];
  d. every target: swap in the target's frozen embedding table and nothing else, score all its items.

Because the model is frozen while W_f trains (and runs without dropout), y and s~ are computed once per
training user and W_f is fitted on those vectors: one small jitted step, no pass through the backbone.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from recg_jax import clustering
from recg_jax import distributed
from recg_jax import errors
from recg_jax import evaluate as evaluate_lib
from recg_jax import losses
from recg_jax import paths
from recg_jax.data import types
from recg_jax.errors import NonFiniteLossError
from recg_jax.models import heads
from recg_jax.models import recommender as recommender_lib


@dataclasses.dataclass(frozen=True)
class SequenceTransfer:
  """The sequence-level pieces shared by every target: the source centres and the W_f parameters."""

  centres_KxD: np.ndarray
  fusion_params: Any
  inertia: float


# Where a run keeps its fitted sequence-level step, so that a finished run can score new catalogues
# (recg_jax.serving) with exactly the centres and W_f its evaluation used, without fitting them again.
TRANSFER_DIR = "transfer"


def save_sequence_transfer(workdir: str | os.PathLike, seq_transfer: SequenceTransfer) -> paths.Path:
  """Writes the centres and W_f as an orbax checkpoint in <workdir>/transfer (orbax renames a finished
  temporary folder into place, so a crash never leaves half of one); returns its path."""
  path = paths.absolute(workdir) / TRANSFER_DIR
  tree = {
      "centres_KxD": np.asarray(seq_transfer.centres_KxD, np.float32),
      "fusion_params": jax.device_get(seq_transfer.fusion_params),
      "inertia": np.float32(seq_transfer.inertia),
  }
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree, force=True)
  checkpointer.wait_until_finished()
  return path


def load_sequence_transfer(workdir: str | os.PathLike) -> SequenceTransfer | None:
  """The sequence-level step save_sequence_transfer wrote in workdir, or None when there is none."""
  path = paths.absolute(workdir) / TRANSFER_DIR
  if not path.is_dir():
    return None
  tree = ocp.StandardCheckpointer().restore(path)
  return SequenceTransfer(
      centres_KxD=np.asarray(tree["centres_KxD"]),
      fusion_params=tree["fusion_params"],
      inertia=float(tree["inertia"]),
  )


def _batched_apply(fn: Callable[[jax.Array], jax.Array], inputs_NxL: np.ndarray, batch: int) -> np.ndarray:
  """fn over fixed-size row batches (the last one padded), so fn compiles once."""
  n = len(inputs_NxL)
  out = []
  for start in range(0, n, batch):
    chunk = inputs_NxL[start : start + batch]
    real = len(chunk)
    if real < batch:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
    out.append(np.asarray(fn(jax.device_put(chunk)))[:real])
  return np.concatenate(out)


def user_vector_fn(model: recommender_lib.Recommender, params, table_NxH) -> Callable[[jax.Array], jax.Array]:
  """seq_BxL -> y_BxD for a frozen model and one domain's table (eval mode, jitted once per model)."""
  user_jit, _ = evaluate_lib.eval_programs(model)
  return lambda seq_BxL: user_jit(params, table_NxH, seq_BxL)


def item_vectors(model: recommender_lib.Recommender, params, table_NxH) -> jax.Array:
  """items_NxD of one domain's table (jitted once per model and table shape)."""
  _, items_jit = evaluate_lib.eval_programs(model)
  return items_jit(params, jnp.asarray(table_NxH))


@functools.cache
def _heads_program(model: recommender_lib.Recommender, width: int) -> Callable:
  """The jitted heads of a model and fusion width: the centres and W_f are arguments, not constants, so
  every run and target of an equal model reuses the compiled programs."""
  fusion = heads.SequenceFusion(features=width)

  def apply(p, fp, centres, t, seq):
    y = model.apply({"params": p}, seq, t, False)
    if fp is None:
      return {"plain": y}
    return {"plain": y, "fused": fusion.apply({"params": fp}, y, clustering.aggregate(y, centres))}

  return jax.jit(apply)


def user_heads_fn(
    model: recommender_lib.Recommender, params, table_NxH, seq_transfer: SequenceTransfer | None
) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """seq_BxL -> {'plain': y_BxD, 'fused': g_BxD = W_f [y; s~]} from one pass of the sequence model
  ('fused' only with a sequence-level step)."""
  apply = _heads_program(model, model.output_dim(table_NxH.shape[-1]))
  centres = None if seq_transfer is None else jnp.asarray(seq_transfer.centres_KxD)
  fusion_params = None if seq_transfer is None else seq_transfer.fusion_params
  return lambda seq_BxL: apply(params, fusion_params, centres, table_NxH, seq_BxL)


def main_head(seq_transfer: SequenceTransfer | None) -> str:
  """The head the method scores with: 'fused' with a sequence-level step, else 'plain'."""
  return "plain" if seq_transfer is None else "fused"


def _wf_training_rows(domain: types.DomainData, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs_UxL, targets_U, histories_UxL): the last training target of each user whose training part
  has at least two items. The validation and test items are never used."""
  parts = [h for h in types.training_histories(domain) if len(h) >= 2]
  inputs = types.right_aligned([h[:-1] for h in parts], max_len)
  targets = np.array([h[-1] for h in parts], np.int32)
  return inputs, targets, types.right_aligned(parts, max_len)


_aggregate = jax.jit(clustering.aggregate)


@functools.cache
def _wf_step_program(
    width: int, num_neg: int, num_items: int, learning_rate: float
) -> tuple[Callable, optax.GradientTransformation]:
  """(step(fp, opt, items_IxD, y, s, target, history, weight, key) -> (fp, opt, loss), optimizer), one
  per width, negatives, catalogue size and learning rate (the item vectors are an argument)."""
  fusion = heads.SequenceFusion(features=width)
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def step(fp, opt, items_IxD, y, s, target, history, weight, key):
    negs_Bx1xK = losses.sample_negatives(key, target[:, None], num_items, num_neg, history)

    def loss_fn(fp):
      g_Bx1xD = fusion.apply({"params": fp}, y, s)[:, None, :]
      return losses.bpr_loss(g_Bx1xD, items_IxD[target][:, None, :], items_IxD[negs_Bx1xK], weight[:, None])

    loss, grads = jax.value_and_grad(loss_fn)(fp)
    updates, opt = optimizer.update(grads, opt, fp)
    return optax.apply_updates(fp, updates), opt, loss

  return step, optimizer


@dataclasses.dataclass(frozen=True)
class _FusionRows:
  """W_f's training rows of one source domain: its item vectors and, per row, y, s~, target and history."""

  num_items: int
  items_IxD: Any
  y_NxD: np.ndarray
  s_NxD: np.ndarray
  targets: np.ndarray
  hist: np.ndarray


def _fit_epoch(step, state, part: _FusionRows, rng, bs: int, key, step_index: int, desc: str):
  """One pass over a domain's rows in fixed-size batches (the last padded with repeats of weight 0)."""
  n = len(part.targets)
  order = rng.permutation(n)
  order = np.concatenate([order, order[: (-n) % bs]])
  weight = np.ones(len(order), np.float32)
  weight[n:] = 0.0
  losses_ = []
  bar = tqdm.trange(
      0,
      len(order),
      bs,
      desc=desc,
      leave=False,
      dynamic_ncols=True,
      mininterval=1.0,
      disable=not distributed.is_primary(),
  )
  for start in bar:
    idx = order[start : start + bs]
    *state, loss = step(
        *state,
        part.items_IxD,
        part.y_NxD[idx],
        part.s_NxD[idx],
        part.targets[idx],
        part.hist[idx],
        weight[start : start + bs],
        jax.random.fold_in(key, step_index),
    )
    step_index += 1
    losses_.append(loss)
  return state, losses_, step_index


def _fit_fusion(config: ml_collections.ConfigDict, width: int, parts: list[_FusionRows], key: jax.Array):
  """Step 7c: W_f by BPR on frozen y, s~ and item vectors, from [I | 0], each source's rows against its own
  catalogue (every epoch one pass over each source in turn); returns its parameters."""
  tc, bs = config.transfer, int(config.train.batch_size)
  fusion = heads.SequenceFusion(features=width)
  state = [fusion.init(jax.random.key(0), jnp.zeros((1, width)), jnp.zeros((1, width)))["params"]]
  rng = np.random.default_rng(int(config.train.seed))
  step_index = 0
  for epoch in range(int(tc.wf_epochs)):
    epoch_loss = []
    for part in parts:
      step, optimizer = _wf_step_program(
          width, int(config.train.num_negatives), part.num_items, float(tc.wf_learning_rate)
      )
      if len(state) == 1:
        state.append(optimizer.init(state[0]))  # the same optimiser structure for every catalogue size
      state, losses_, step_index = _fit_epoch(
          step, state, part, rng, bs, key, step_index, f"W_f epoch {epoch}"
      )
      epoch_loss += losses_
    mean_loss = float(np.mean(jax.device_get(epoch_loss)))
    if not np.isfinite(mean_loss):
      raise NonFiniteLossError(
          f"W_f training loss is {mean_loss} in epoch {epoch}: lower config.transfer.wf_learning_rate"
      )
    logging.info("W_f epoch %d: BPR %.5f", epoch, mean_loss)
  return jax.device_get(state[0])


def fit_sequence_transfer(
    config: ml_collections.ConfigDict,
    model: recommender_lib.Recommender,
    params,
    table_NxH,
    domain: types.DomainData | list[types.DomainData],
) -> SequenceTransfer:
  """Steps 7a-c on the source domain (or the source domains, with their tables in a list): centres from
  k-means of every source user, then W_f by BPR on the sources' rows."""
  domains = [domain] if isinstance(domain, types.DomainData) else list(domain)
  tables = [table_NxH] if isinstance(domain, types.DomainData) else list(table_NxH)
  tc, max_len = config.transfer, int(config.data.max_len)
  key = jax.random.key(int(config.train.seed) + 7919)  # its own stream, reproducible from the run seed
  kmeans_key, wf_key = jax.random.split(key)
  user_fns = [user_vector_fn(model, params, t) for t in tables]
  batch = int(config.eval.batch_size)

  # a. Source users' vectors from their training parts (the inputs of the validation split).
  y_UxD = np.concatenate(
      [
          _batched_apply(fn, types.leave_one_out(d, "valid", max_len).inputs_UxL, batch)
          for fn, d in zip(user_fns, domains)
      ]
  )
  k = min(int(tc.num_clusters), len(y_UxD))
  centres, inertia = clustering.kmeans(
      y_UxD,
      k,
      kmeans_key,
      iters=int(tc.kmeans_iters),
      restarts=int(tc.kmeans_restarts),
      tol=float(tc.kmeans_tol),
      chunk=int(tc.kmeans_chunk),
  )
  centres = np.asarray(centres)
  distributed.say(f"[transfer] k-means: {k} centres over {len(y_UxD)} source users, inertia {inertia:.4g}")

  # c. W_f on frozen y, s~ and item vectors.
  parts = []
  for fn, d, t in zip(user_fns, domains, tables):
    inputs, targets, hist = _wf_training_rows(d, max_len)
    y_NxD = _batched_apply(fn, inputs, batch)
    s_NxD = np.asarray(_aggregate(jnp.asarray(y_NxD), jnp.asarray(centres)))
    parts.append(_FusionRows(d.num_items, item_vectors(model, params, t), y_NxD, s_NxD, targets, hist))
  fusion_params = _fit_fusion(config, model.output_dim(tables[0].shape[-1]), parts, wf_key)
  return SequenceTransfer(centres_KxD=centres, fusion_params=fusion_params, inertia=float(inertia))


def evaluate_domain_heads(
    config: ml_collections.ConfigDict,
    model: recommender_lib.Recommender,
    params,
    table_NxH,
    domain: types.DomainData,
    seq_transfer: SequenceTransfer | None,
    split: str,
    mesh=None,
    heads_wanted: tuple[str, ...] = ("fused", "plain"),
    model_weights: tuple[float, ...] = (),
) -> dict[str, dict[str, float]]:
  """Both protocols on `domain`'s `split`, with `table_NxH` swapped in and every parameter unchanged, for
  each wanted head of user_heads_fn that exists: {head: metrics}, one pass of the sequence model per
  batch, one scoring per head. Each of model_weights (text_user 'mix' only) adds the head '<head>@w<w>':
  the trained model's share of every score multiplied by w, the text similarity's share as it is
  (transfer.target_model_weights), scored from the same pass."""
  table = jnp.asarray(table_NxH)
  items = item_vectors(model, params, table)
  rows = types.leave_one_out(domain, split, int(config.data.max_len))
  heads_fn = user_heads_fn(model, params, table, seq_transfer)
  user_fn = lambda seq_BxL: {h: v for h, v in heads_fn(seq_BxL).items() if h in heads_wanted}
  if model_weights:
    if not (model.score_space == "text" and model.text_user == "mix"):
      raise errors.ConfigError(
          "a model weight applies only to config.model.text_user='mix' (score_space 'text')"
      )
    width = table.shape[-1]  # [knn part (H); model part (d_l)]: scale the model's share of the score
    plain_fn = user_fn

    def user_fn(seq_BxL):
      users = plain_fn(seq_BxL)
      return {
          **users,
          **{
              weighted_head(h, w): v.at[:, width:].multiply(w)
              for h, v in users.items()
              for w in model_weights
          },
      }

  return evaluate_lib.evaluate_heads(
      user_fn, items, rows, domain, config.eval, mesh=mesh, scorer=model.scorer
  )


def weighted_head(head: str, weight: float) -> str:
  return f"{head}@w{float(weight):g}"


def evaluate_domain(
    config: ml_collections.ConfigDict,
    model: recommender_lib.Recommender,
    params,
    table_NxH,
    domain: types.DomainData,
    seq_transfer: SequenceTransfer | None,
    split: str,
    mesh=None,
) -> dict[str, float]:
  """The method's metrics (with the sequence-level step when there is one); see evaluate_domain_heads."""
  head = main_head(seq_transfer)
  return evaluate_domain_heads(
      config, model, params, table_NxH, domain, seq_transfer, split, mesh, heads_wanted=(head,)
  )[head]


def sequence_step_enabled(config: ml_collections.ConfigDict) -> bool:
  return config.model.variant == "recg" and bool(config.transfer.enabled)


def source_metrics(
    config: ml_collections.ConfigDict,
    trained,
    table_NxH,
    domain: types.DomainData,
    seq_transfer: SequenceTransfer | None,
) -> dict[str, float]:
  """A source's metrics of a trained run (training.TrainResult): the run's best validation metrics (the
  mean over its sources), the source's test metrics, and with a sequence-level step the method's test
  metrics as `test/...`, the trained model alone then being `test_no_seq/...`."""
  valid = {k: v for k, v in trained.metrics.items() if not k.startswith("test/")}
  test = trained.source_metrics.get(domain.name) or {
      k: v for k, v in trained.metrics.items() if k.startswith("test/")
  }
  metrics = {**valid, **test}
  if seq_transfer is None:
    return metrics
  metrics = {
      k.replace("test/", "test_no_seq/", 1) if k.startswith("test/") else k: v for k, v in metrics.items()
  }
  fused = evaluate_domain(config, trained.model, trained.params, table_NxH, domain, seq_transfer, "test")
  metrics.update({f"test/{k}": v for k, v in fused.items()})
  return metrics


def target_metrics(
    config: ml_collections.ConfigDict,
    model: recommender_lib.Recommender,
    params,
    table_NxH,
    domain: types.DomainData,
    seq_transfer: SequenceTransfer | None,
) -> dict[str, float]:
  """Zero-shot metrics of one target, from one pass of the model: the method as `zero_shot/...` (fused,
  or plain without a sequence-level step), with one the trained model alone as `zero_shot_no_seq/...`,
  and with transfer.target_model_weights the trained share scaled on the target as `zero_shot_w<w>/...`
  (the weight is chosen on a validation domain by the baselines study, never on the reported target)."""
  weights = tuple(float(w) for w in config.transfer.target_model_weights)
  by_head = evaluate_domain_heads(
      config, model, params, table_NxH, domain, seq_transfer, "test", model_weights=weights
  )
  head = main_head(seq_transfer)
  metrics = {f"zero_shot/{k}": v for k, v in by_head[head].items()}
  if seq_transfer is not None:
    metrics.update({f"zero_shot_no_seq/{k}": v for k, v in by_head["plain"].items()})
  for w in weights:
    metrics.update({f"zero_shot_w{w:g}/{k}": v for k, v in by_head[weighted_head(head, w)].items()})
  return metrics
