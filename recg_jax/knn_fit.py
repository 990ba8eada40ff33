"""Fitting text_knn's aggregation on the source domains: a recency decay, a temperature and a loss scale.

text_knn with the soft maximum (models/scoring.py) scores candidate i of a user whose history rows are
e_1..e_T by

  s_i = tau * log sum_t w_t exp(<e_t, e_i> / tau),   w_t = decay^age_t / sum_u decay^age_u,

the recency-weighted mean of the cosines as tau grows and their maximum as it shrinks: one family holds
every training-free aggregate the project compares. A study picks (decay, tau) from a small grid on its
validation domains. Here they are fitted on the sources instead, with a scale of the loss's logits, by the
full-softmax cross-entropy of each source user's next training item over its own domain's catalogue, the
input history masked as `full` evaluation masks it (losses.softmax_nll):

  loss = -mean log softmax_i(exp(log_scale) * s_i)[target],   decay = sigmoid(a),  tau = exp(b).

A row is a user's last training item after the rest of its training part (the validation and test items
are never read). Every epoch takes the same number of rows from every source (the smallest source's
count), so a large domain does not drown a small one, in batches of one domain and one padded width each.
After every epoch the same loss on every source's validation split, averaged over the sources, decides
early stopping; the best epoch's (decay, tau) are the fit's. No target domain is read. The fitted model is
then evaluated as any text_knn (pipeline.evaluate_untrained). A fit takes minutes on a CPU and is not
checkpointed: an interrupted run fits again from the start.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from recg_jax import distributed
from recg_jax import errors
from recg_jax import input_pipeline
from recg_jax import losses
from recg_jax.data import types
from recg_jax.data.errors import DataError

# Large and finite: a padding position's log weight, so that no -inf reaches a gradient.
_NO_WEIGHT = -1e9


def enabled(config: ml_collections.ConfigDict) -> bool:
  return str(config.model.variant) == "text_knn" and bool(config.knn_fit.enabled)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError naming the knn_fit field that cannot be fitted with."""
  kc = config.knn_fit
  if str(config.model.knn_aggregate) != "softmax":
    raise errors.ConfigError(
        "config.knn_fit.enabled fits the soft maximum's decay and temperature: set "
        f"config.model.knn_aggregate='softmax' (got {config.model.knn_aggregate!r})"
    )
  for field in ("epochs", "batch_size"):
    if int(kc[field]) < 1:
      raise errors.ConfigError(f"config.knn_fit.{field} must be >= 1, got {kc[field]}")
  if int(kc.patience) < 0:
    raise errors.ConfigError(f"config.knn_fit.patience must be >= 0, got {kc.patience}")
  for field in ("learning_rate", "init_temperature"):
    if not float(kc[field]) > 0:
      raise errors.ConfigError(f"config.knn_fit.{field} must be > 0, got {kc[field]}")
  if not 0.0 < float(config.model.knn_decay) < 1.0:
    raise errors.ConfigError(
        f"config.model.knn_decay={config.model.knn_decay} is where the fit starts: it must be in (0, 1)"
    )


@dataclasses.dataclass(frozen=True)
class Fitted:
  """The fit's outcome: the best epoch's aggregation and how it was reached."""

  decay: float
  temperature: float
  scale: float
  best_epoch: int
  valid_loss: float
  epochs_run: int

  def as_extra(self) -> dict[str, Any]:
    return {"knn_fit": dataclasses.asdict(self)}


def init_params(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The fit's start: config.model.knn_decay and knn_temperature, logits scaled by 1 / init_temperature."""
  decay = float(config.model.knn_decay)
  return {
      "decay_logit": jnp.float32(math.log(decay / (1.0 - decay))),
      "log_tau": jnp.float32(math.log(float(config.model.knn_temperature))),
      "log_scale": jnp.float32(-math.log(float(config.knn_fit.init_temperature))),
  }


def aggregate_scores(params, seq_BxL: jax.Array, table_NxH: jax.Array) -> jax.Array:
  """s_BxN: the soft maximum of each user's history (right-aligned, the newest at L-1) against every row,
  at the params' decay and temperature (without the loss scale). Equal to text_knn's score_matrix with
  scorer ('softmax', tau) over text_space.history_rows(seq, table, decay)."""
  length = seq_BxL.shape[1]
  valid_BxL = seq_BxL > 0
  age_L = (length - 1 - jnp.arange(length)).astype(jnp.float32)
  log_w_BxL = jnp.where(valid_BxL, age_L * jax.nn.log_sigmoid(params["decay_logit"]), _NO_WEIGHT)
  log_w_BxL = log_w_BxL - jax.nn.logsumexp(log_w_BxL, axis=1, keepdims=True)
  rows_BxLxH = jnp.take(table_NxH, seq_BxL.astype(jnp.int32), axis=0, mode="clip")
  cos_BxLxN = jnp.einsum("blh,nh->bln", rows_BxLxH, table_NxH, preferred_element_type=jnp.float32)
  tau = jnp.exp(params["log_tau"])
  return tau * jax.nn.logsumexp(log_w_BxL[..., None] + cos_BxLxN / tau, axis=1)


def batch_loss(params, seq_BxL, targets_B, weights_B, table_NxH) -> jax.Array:
  """The masked full-softmax cross-entropy of a batch (rows of weight 0 are padding)."""
  logits_BxN = jnp.exp(params["log_scale"]) * aggregate_scores(params, seq_BxL, table_NxH)
  return losses.softmax_nll(logits_BxN[:, None, :], targets_B[:, None], weights_B[:, None], seq_BxL)


@functools.cache
def _programs(learning_rate: float):
  """(train_step, eval_loss, optimizer): jitted once per learning rate; one executable per width and
  catalogue size."""
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def train_step(params, opt_state, seq_BxL, targets_B, weights_B, table_NxH):
    loss, grads = jax.value_and_grad(batch_loss)(params, seq_BxL, targets_B, weights_B, table_NxH)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def eval_loss(params, seq_BxL, targets_B, weights_B, table_NxH):
    return batch_loss(params, seq_BxL, targets_B, weights_B, table_NxH) * jnp.sum(weights_B)

  return train_step, eval_loss, optimizer


@dataclasses.dataclass(frozen=True)
class _Rows:
  """One source's rows: right-aligned inputs, the next item, and each row's padded width."""

  inputs_UxL: np.ndarray
  targets_U: np.ndarray
  widths_U: np.ndarray


def _rows(inputs_UxL: np.ndarray, targets_U: np.ndarray, widths: Sequence[int]) -> _Rows:
  lengths = (inputs_UxL > 0).sum(axis=1)
  keep = lengths > 0  # a user with no history has nothing to aggregate
  bucket = np.searchsorted(np.asarray(widths), lengths[keep], side="left")
  return _Rows(inputs_UxL[keep], targets_U[keep], np.asarray(widths)[bucket])


def training_rows(domain: types.DomainData, max_len: int, widths: Sequence[int]) -> _Rows:
  """Each user's last training item after the rest of its training part (users with at least two)."""
  parts = [h for h in types.training_histories(domain) if len(h) >= 2]
  inputs = types.right_aligned([h[:-1] for h in parts], max_len)
  return _rows(inputs, np.array([h[-1] for h in parts], np.int32), widths)


def validation_rows(domain: types.DomainData, max_len: int, widths: Sequence[int]) -> _Rows:
  split = types.leave_one_out(domain, "valid", max_len)
  return _rows(split.inputs_UxL, split.targets_U, widths)


def _batches(rows: _Rows, order: np.ndarray, batch_size: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
  """(width, row indices, weights) per batch: the rows of `order` grouped by width, in fixed-size batches
  (each width's last padded with repeats of weight 0)."""
  out = []
  for width in np.unique(rows.widths_U[order]):
    idx = order[rows.widths_U[order] == width]
    pad = (-len(idx)) % batch_size
    weights = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
    idx = np.concatenate([idx, np.resize(idx, pad)])
    for start in range(0, len(idx), batch_size):
      out.append((int(width), idx[start : start + batch_size], weights[start : start + batch_size]))
  return out


def _inputs(rows: _Rows, idx: np.ndarray, width: int) -> np.ndarray:
  return np.ascontiguousarray(rows.inputs_UxL[idx, -width:])


def mean_loss(params, rows: _Rows, table_NxH, batch_size: int, eval_loss) -> float:
  """The masked cross-entropy averaged over every row of `rows`."""
  total = 0.0
  for width, idx, weights in _batches(rows, np.arange(len(rows.targets_U)), batch_size):
    total += float(eval_loss(params, _inputs(rows, idx, width), rows.targets_U[idx], weights, table_NxH))
  return total / max(len(rows.targets_U), 1)


def fit(
    config: ml_collections.ConfigDict,
    sources: Sequence[types.DomainData],
    tables: Sequence[np.ndarray],
) -> Fitted:
  """Fits (decay, tau, scale) on the sources' training rows (each against its own table, as the model reads
  it), early-stopped on their mean validation loss."""
  check_config(config)
  kc, max_len = config.knn_fit, int(config.data.max_len)
  widths = input_pipeline.bucket_widths(tuple(kc.length_buckets), max_len, "knn_fit.length_buckets")
  bs = int(kc.batch_size)
  train = [training_rows(d, max_len, widths) for d in sources]
  valid = [validation_rows(d, max_len, widths) for d in sources]
  if min(len(r.targets_U) for r in train) == 0:
    empty = [d.name for d, r in zip(sources, train) if not len(r.targets_U)]
    raise DataError(f"knn_fit: {empty} have no user with two training items to fit on")
  tables_j = [jnp.asarray(t, jnp.float32) for t in tables]
  train_step, eval_loss, optimizer = _programs(float(kc.learning_rate))
  params = init_params(config)
  opt_state = optimizer.init(params)

  def valid_loss(p) -> float:
    return float(np.mean([mean_loss(p, r, t, bs, eval_loss) for r, t in zip(valid, tables_j)]))

  per_source = min(len(r.targets_U) for r in train)
  rng = np.random.default_rng([int(config.train.seed), 0x6B6E6E])
  best = (valid_loss(params), -1, jax.device_get(params))
  logging.info("knn_fit: start valid loss %.5f", best[0])
  epoch = 0
  for epoch in range(int(kc.epochs)):
    plan = []
    for d, rows in enumerate(train):
      order = rng.permutation(len(rows.targets_U))[:per_source]
      plan += [(d, *b) for b in _batches(rows, order, bs)]
    bar = tqdm.tqdm(
        [plan[i] for i in rng.permutation(len(plan))],
        desc=f"knn_fit epoch {epoch}",
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not distributed.is_primary(),
    )
    for d, width, idx, weights in bar:
      params, opt_state, loss = train_step(
          params, opt_state, _inputs(train[d], idx, width), train[d].targets_U[idx], weights, tables_j[d]
      )
    if not np.isfinite(float(loss)):
      raise errors.NonFiniteLossError(
          f"knn_fit: loss {float(loss)} in epoch {epoch}: lower config.knn_fit.learning_rate"
      )
    v = valid_loss(params)
    logging.info(
        "knn_fit epoch %d: valid loss %.5f, decay %.3f, temperature %.4f",
        epoch,
        v,
        float(jax.nn.sigmoid(params["decay_logit"])),
        float(jnp.exp(params["log_tau"])),
    )
    if v < best[0]:
      best = (v, epoch, jax.device_get(params))
    elif epoch - best[1] > int(kc.patience):
      break
  p = best[2]
  return Fitted(
      decay=float(jax.nn.sigmoid(p["decay_logit"])),
      temperature=float(np.exp(p["log_tau"])),
      scale=float(np.exp(p["log_scale"])),
      best_epoch=int(best[1]),
      valid_loss=float(best[0]),
      epochs_run=epoch + 1,
  )


def fitted_config(config: ml_collections.ConfigDict, fitted: Fitted) -> ml_collections.ConfigDict:
  """The config whose text_knn scores with the fitted decay and temperature."""
  c = copy.deepcopy(config)
  c.model.knn_decay = fitted.decay
  c.model.knn_temperature = fitted.temperature
  return c
