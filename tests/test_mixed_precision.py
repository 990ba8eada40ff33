"""Mixed precision (config.train.compute_dtype='bfloat16'): what runs in bfloat16, what stays float32, and
how closely a bfloat16 run follows the float32 run of the same config."""

import json

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import evaluate as evaluate_lib
from recg_jax import input_pipeline
from recg_jax.config import roles
from recg_jax.data import types
from recg_jax.models import recommender
from recg_jax.models import recommender as recommender_lib
from recg_jax.training import members as members_lib
from recg_jax.training import trainer as trainer_lib

# Steps of the tracking run: 20 epochs of the tiny problem's 3 batches (one compiled step shape).
EPOCHS = 20
# bfloat16 keeps 8 significant bits (relative rounding 2^-9, about 0.2%, per stored value), and the loss
# is a mean over hundreds of rounded terms, so rounding mostly averages out; what remains grows slowly as
# the two runs' parameters drift apart. Measured on this problem (SASRec, BERT4Rec, GRU4Rec, seeds 0-2, up
# to 150 steps): at most 1.2% at any step and 0.23% on average over a run. The bounds leave 2x margin.
MAX_STEP_REL_DIFF = 0.02
MAX_MEAN_REL_DIFF = 0.005
# Validation and test metrics of the two runs' final parameters, on 48 users: one user crossing the top-10
# cut-off moves Recall@10 by 1/48 = 0.021 (measured: at most that, NDCG@10 at most 0.012). The band allows
# two such users in any metric.
METRIC_BAND = 0.05


def _run(make_config, domains, tables, dtype: str):
  """Trains the tiny SASRec-RecG in `dtype` for EPOCHS on fixed batches: (trainer, state, losses, metrics)."""
  config = make_config(
      **{"train.compute_dtype": dtype, "train.length_buckets": (), "eval.length_buckets": ()}
  )
  domain = domains[config.data.source]
  trainer = trainer_lib.create_trainer(config, domain, tables)
  state, losses = trainer.state, []
  for epoch in range(EPOCHS):
    for batch in input_pipeline.stacked_epoch_batches(
        trainer.rows, int(config.train.batch_size), trainer.seeds, epoch
    ):
      state, metrics = trainer.step(state, input_pipeline.put_batch(batch, trainer.batch_sharding))
      losses.append(float(metrics["loss"][0]))
  params = members_lib.member_tree(state.params, 0)
  evaluated = {}
  for split in ("valid", "test"):
    eval_split = types.leave_one_out(domain, split, int(config.data.max_len))
    values = evaluate_lib.evaluate_split(
        trainer.model,
        params,
        trainer.tables_on_device["source"],
        eval_split,
        domain,
        config.eval,
        trainer.mesh,
    )
    evaluated.update({f"{split}/{k}": v for k, v in values.items()})
  return trainer, state, np.asarray(losses), evaluated


@pytest.fixture(scope="module")
def runs(tiny_config, tiny_problem):
  """{dtype: (trainer, state, losses, metrics)}: the same run in float32 and in bfloat16."""
  domains, tables = tiny_problem
  return {dtype: _run(tiny_config, domains, tables, dtype) for dtype in ("float32", "bfloat16")}


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it (jit, scan, custom derivatives)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jex.core.ClosedJaxpr):
          yield from _equations(sub.jaxpr)
        elif isinstance(sub, jex.core.Jaxpr):
          yield from _equations(sub)


def test_default_is_float32_and_other_names_are_rejected(tiny_config):
  default_model = recommender_lib.build_model(tiny_config(), 30)
  assert default_model.dtype is jnp.float32
  # The float32 flag builds the very model (and so the very compiled programs) of a config without it.
  assert recommender_lib.build_model(tiny_config(**{"train.compute_dtype": "float32"}), 30) == default_model
  assert (
      recommender_lib.build_model(tiny_config(**{"train.compute_dtype": "bfloat16"}), 30).dtype
      is jnp.bfloat16
  )
  with pytest.raises(ValueError, match=r"config\.train\.compute_dtype .*'float16'"):
    recommender_lib.build_model(tiny_config(**{"train.compute_dtype": "float16"}), 30)


def test_runs_recorded_before_the_flag_resume_only_in_float32(tiny_config):
  stored = json.loads(json.dumps(roles.run_signature(tiny_config())))
  del stored["train"]["compute_dtype"]  # a checkpoint written before the field existed
  assert roles.recorded_diff(stored, tiny_config(), roles.run_signature) == []
  bf16 = tiny_config(**{"train.compute_dtype": "bfloat16"})
  assert roles.recorded_diff(stored, bf16, roles.run_signature) == ["train.compute_dtype"]


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
def test_bfloat16_activations_and_float32_outputs(tiny_config, tiny_problem, backbone):
  _, tables = tiny_problem
  model = recommender_lib.build_model(
      tiny_config(**{"model.backbone": backbone, "train.compute_dtype": "bfloat16"}), 30
  )
  table = jnp.asarray(tables["Alpha"])
  seq = jnp.ones((4, 8), jnp.int32)
  # Shapes and dtypes only (eval_shape): nothing is computed.
  variables = jax.eval_shape(lambda: recommender.init_variables(model, jax.random.key(0), table))
  user, state = jax.eval_shape(
      lambda v: model.apply(v, seq, table, False, capture_intermediates=True, mutable=["intermediates"]),
      variables,
  )
  captured = {
      jax.tree_util.keystr(p): x.dtype
      for p, x in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
  }
  inside = {path: dtype for path, dtype in captured.items() if path.startswith(("['items']", "['encoder']"))}
  assert len(inside) >= 7, captured  # item heads (W_p, W_a, merge, ...) and the backbone's layers
  assert set(inside.values()) == {jnp.dtype(jnp.bfloat16)}, inside
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  outputs = {
      "user": user,
      "positions": jax.eval_shape(
          lambda v: model.apply(v, seq, table, method=recommender.Recommender.encode_positions), variables
      ),
      "items": jax.eval_shape(
          lambda v: model.apply(v, table, method=recommender.Recommender.item_vectors), variables
      ),
      "candidates": jax.eval_shape(
          lambda v: model.apply(v, seq, table, method=recommender.Recommender.candidate_vectors), variables
      ),
      "align": jax.eval_shape(
          lambda v: model.apply(v, table, method=recommender.Recommender.align), variables
      ),
  }
  assert {k: v.dtype for k, v in outputs.items()} == {k: jnp.dtype(jnp.float32) for k in outputs}


def test_bfloat16_step_keeps_statistics_and_losses_in_float32(runs):
  trainer, state, _, _ = runs["bfloat16"]
  batch = next(
      input_pipeline.stacked_epoch_batches(
          trainer.rows, int(trainer.config.train.batch_size), trainer.seeds, 0
      )
  )
  jaxpr = jax.make_jaxpr(trainer.train_step)(
      state,
      input_pipeline.put_batch(batch, trainer.batch_sharding),
      trainer.tables_on_device,
      trainer.step_keys,
      trainer.hparams,
  )
  ops = [(e.primitive.name, e.outvars[0].aval.dtype) for e in _equations(jaxpr.jaxpr)]
  # exp: attention softmax, L_gen's softmax entropies; log1p: BPR's log-sigmoid; log: the entropies;
  # rsqrt: LayerNorm's variance; reduce_max: the softmaxes' shift.
  statistics = {"exp", "log", "log1p", "rsqrt", "reduce_max"}
  seen = {(name, dtype) for name, dtype in ops if name in statistics}
  assert {name for name, _ in seen} == statistics
  assert {dtype for _, dtype in seen} == {jnp.dtype(jnp.float32)}, seen
  assert ("dot_general", jnp.dtype(jnp.bfloat16)) in ops  # the matmuls themselves are bfloat16


def test_bfloat16_parameters_and_optimizer_state_stay_float32(runs):
  trainer, state, _, _ = runs["bfloat16"]
  assert trainer.model.dtype is jnp.bfloat16
  floating = [
      x for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  assert len(floating) > 20  # parameters, Adam's two moments of each
  assert {x.dtype for x in floating} == {jnp.dtype(jnp.float32)}


def test_bfloat16_loss_tracks_float32(runs):
  fp32, bf16 = runs["float32"][2], runs["bfloat16"][2]
  assert len(fp32) == len(bf16) == 3 * EPOCHS
  assert np.all(np.isfinite(bf16))
  rel = np.abs(bf16 - fp32) / fp32
  assert rel.max() <= MAX_STEP_REL_DIFF, rel
  assert rel.mean() <= MAX_MEAN_REL_DIFF, rel
  # Both learn (the tracked curve is not flat): the last epoch's loss is under half the first epoch's.
  for losses in (fp32, bf16):
    assert losses[-3:].mean() < 0.5 * losses[:3].mean(), losses
  assert not np.array_equal(fp32, bf16)  # the bfloat16 run really computed in another precision


def test_bfloat16_metrics_stay_in_band(runs):
  fp32, bf16 = runs["float32"][3], runs["bfloat16"][3]
  assert fp32.keys() == bf16.keys() and any(k.startswith("test/full/") for k in fp32)
  gaps = {k: abs(bf16[k] - fp32[k]) for k in fp32}
  assert max(gaps.values()) <= METRIC_BAND, gaps
  assert fp32["test/full/ndcg@10"] > 0.3  # well above chance (1/30 items): the band compares real rankings
