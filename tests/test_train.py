"""Training loop, train step, optimiser, step tables and results files (recg_jax/training/, results.py).

The end-to-end run happens once, in a subprocess sharing a persistent XLA cache with the resume and mesh
tests, so the tiny model's train step is compiled once for all of them.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from recg_jax import input_pipeline
from recg_jax import results
from recg_jax import training
from recg_jax.models import recommender as recommender_lib
from recg_jax.training import checkpoints as checkpoints_lib
from recg_jax.training import metric_log
from recg_jax.training import optimizer as optimizer_lib
from recg_jax.training import step as step_lib
from recg_jax.training import trainer as trainer_lib

import _train_driver as driver
from conftest import read_jsonl


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("train_run")
  out = workdir / "out.json"
  proc = driver.run(workdir / "wd", out, env=driver.cache_env(tmp_path_factory))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return workdir / "wd", json.loads(out.read_text()), proc


def test_loss_decreases_and_model_beats_chance(tiny_run):
  workdir, payload, _ = tiny_run
  events = read_jsonl(workdir / "metrics.jsonl")
  train_losses = [e["loss"] for e in events if e["kind"] == "train"]
  assert len(train_losses) >= 4
  assert np.mean(train_losses[-2:]) < 0.8 * train_losses[0], train_losses
  valid = [e["valid/full/ndcg@10"] for e in events if e["kind"] == "valid"]
  assert len(valid) == 4 and max(valid) > valid[0]
  m = payload["metrics"]
  # ~30 items, a noisy "next = item + 1" walk: chance full NDCG@10 is about 0.15.
  assert m["test/full/ndcg@10"] > 0.3 and m["valid/full/ndcg@10"] == pytest.approx(max(valid))
  assert set(m) == {
      f"{s}/{p}/{n}@{k}"
      for s in ("valid", "test")
      for p in ("full", "sampled10")
      for n in ("recall", "ndcg")
      for k in (5, 10)
  }
  g = [e for e in events if e["kind"] == "train"][-1]
  assert {"rec_loss", "gen_loss", "h_intra", "h_inter", "grad_norm", "sequences_per_s"} <= set(g)
  assert g["loss"] == pytest.approx(g["rec_loss"] + g["gen_loss"], rel=1e-5, abs=1e-6)


def test_one_trace_per_length_bucket(tiny_run):
  _, payload, _ = tiny_run
  # 16 steps and 5 evaluations, yet the step and the user function are traced once per input width:
  # two length buckets each (4 and 8).
  layout = driver.tiny_layout()
  assert layout["train_widths"] == layout["eval_widths"] == 2
  assert payload["trace_counts"] == {"train_step": 2, "user_fn": 2}


def test_checkpoints_and_results_files(tiny_run):
  workdir, payload, _ = tiny_run
  best = sorted(int(p.name) for p in (workdir / "checkpoints" / "best").iterdir() if p.name.isdigit())
  latest = sorted(int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit())
  assert best == [payload["best_step"]] and latest == [4 * driver.tiny_layout()["steps_per_epoch"]]
  saved = json.loads((workdir / "results.json").read_text())
  rec = saved["records"][0]
  assert rec["metrics"] == payload["metrics"]
  assert rec["loss"].startswith("BPR (5 uniform negatives") and "L_gen(alpha=0.001" in rec["loss"]
  assert saved["config"]["model"]["hidden_dim"] == 16 and set(saved["protocols"]) == {"full", "sampled10"}
  md = (workdir / "results.md").read_text()
  for needle in (
      "| in_domain | Alpha (synthetic) | sasrec | recg | BPR",
      "full R@10",
      "sampled10 N@5",
      "d=16 layers=1 heads=2",
      "model.hidden_dim = 16",
      "`sampled10`: sampled: the target against 10 negatives",
      f"{100 * payload['metrics']['test/full/ndcg@10']:.2f}",
  ):
    assert needle in md, needle


def test_resume_rejects_a_different_run(tiny_run, tiny_config):
  workdir, _, _ = tiny_run
  config = tiny_config(**{"model.hidden_dim": 32})
  with pytest.raises(ValueError, match=r"different run .*model.hidden_dim"):
    checkpoints_lib.Checkpoints(workdir, config)
  # Fields that do not change the computation may change between a run and its resumption.
  checkpoints_lib.Checkpoints(workdir, tiny_config(**{"train.num_epochs": 9})).close()


def _optimizer_config(**fields):
  return ml_collections.ConfigDict(
      {
          "learning_rate": 1e-3,
          "warmup_steps": 0,
          "decay": "constant",
          "weight_decay": 0.0,
          "grad_clip": 0.0,
          **fields,
      }
  )


def _schedule(c, total_steps):
  hparams, decay = optimizer_lib.optimizer_hparams(c, total_steps), optimizer_lib.decay_kind(c)
  return lambda count: optimizer_lib.learning_rate_at(count, hparams, decay)


def _optimizer(c, total_steps):
  return optimizer_lib.build_optimizer(
      optimizer_lib.OptimizerStructure.from_config(c), optimizer_lib.optimizer_hparams(c, total_steps)
  )


def test_learning_rate_schedule():
  c = _optimizer_config(warmup_steps=10, decay="cosine")
  s = _schedule(c, total_steps=110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 5e-4, 1e-3, 5e-4, 0], atol=1e-9)
  c.decay, c.warmup_steps = "constant", 0
  assert float(_schedule(c, 5)(3)) == pytest.approx(1e-3)
  c.decay = "linear"
  with pytest.raises(ValueError, match="config.train.decay"):
    _schedule(c, 5)


def test_optimizer_weight_decay_skips_vectors_and_clips():
  c = _optimizer_config(learning_rate=0.1, weight_decay=0.5, grad_clip=1.0)
  opt = _optimizer(c, 10)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zero, opt.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)  # decoupled decay
  np.testing.assert_allclose(updates["b"], 0.0)  # vectors are not decayed
  # Clipping happens before Adam: two steps with very different gradient norms only match the reference
  # chain if the first gradient was clipped.
  c.weight_decay = 0.0
  grads = [{"w": 1e6 * jnp.ones((2, 2)), "b": jnp.ones((2,))}, {"w": jnp.ones((2, 2)), "b": -jnp.ones((2,))}]

  def run(tx):
    state, out = tx.init(params), None
    for g in grads:
      out, state = tx.update(g, state, params)
    return out

  got = run(_optimizer(c, 10))
  want = run(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1)))
  plain = run(optax.adam(0.1))
  np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)
  assert not np.allclose(got["w"], plain["w"], rtol=1e-3)


def test_step_tables_stack_and_validate(tiny_config, tiny_problem):
  _, tables = tiny_problem
  config = tiny_config()
  st = step_lib.build_step_tables(config, tables)
  assert st.gen_domains == ("Alpha", "Beta", "Gamma") and st.gen_counts == (30, 34, 38)
  gen = st.arrays["gen"]
  assert gen.shape == (3, 39, 24)
  np.testing.assert_array_equal(gen[1, :35], tables["Beta"])
  assert not gen[0, 31:].any()  # padding rows beyond a domain's items are zero and never sampled
  assert "gen" not in step_lib.build_step_tables(tiny_config(**{"model.variant": "sem"}), tables).arrays
  assert step_lib.build_step_tables(tiny_config(**{"model.variant": "id"}), None).arrays == {"source": None}
  with pytest.raises(ValueError, match=r"no embedding table was given for \['Gamma'\]"):
    step_lib.build_step_tables(config, {k: v for k, v in tables.items() if k != "Gamma"})
  with pytest.raises(ValueError, match="disagree on their width"):
    step_lib.build_step_tables(config, {**tables, "Beta": tables["Beta"][:, :8]})
  with pytest.raises(ValueError, match="source domain 'Alpha'"):
    step_lib.build_step_tables(config, None)


@pytest.mark.parametrize("bad", [-1, -512])
def test_softmax_chunk_rows_must_be_a_count(tiny_config, bad):
  config = tiny_config(**{"train.loss": "softmax", "train.softmax_chunk_rows": bad})
  with pytest.raises(ValueError, match=r"config.train.softmax_chunk_rows=.*expected an integer >= 0"):
    step_lib.StepSpec.create(None, config, None, None)


def test_a_step_in_slices_trains_as_the_whole_batch_at_once(tiny_config, tiny_problem):
  """SASRec-ID, softmax with the history mask: slices of one position (train.softmax_chunk_rows = the batch
  size, 16 users x 8 positions) give the same losses step after step as the whole B x L x N logits at once
  (0)."""
  domains, _ = tiny_problem
  losses_by_rows = {}
  for chunk_rows in (0, 16):
    config = tiny_config(
        **{
            "model.variant": "id",
            "train.loss": "softmax",
            "train.softmax_mask_history": True,
            "train.softmax_chunk_rows": chunk_rows,
            "train.length_buckets": (),
        }
    )
    trainer = trainer_lib.create_trainer(config, domains[config.data.source], None)
    state, seen = trainer.state, []
    for epoch in range(2):
      for batch in input_pipeline.stacked_epoch_batches(trainer.rows, 16, trainer.seeds, epoch):
        state, metrics = trainer.step(state, input_pipeline.put_batch(batch, trainer.batch_sharding))
        seen.append(float(metrics["loss"][0]))
    losses_by_rows[chunk_rows] = np.asarray(seen)
  assert len(losses_by_rows[0]) >= 4
  np.testing.assert_allclose(losses_by_rows[16], losses_by_rows[0], rtol=1e-4)


def test_loss_name_and_table_formatting(tiny_config):
  config = tiny_config(
      **{
          "model.backbone": "bert4rec",
          "train.bert4rec_objective": "cloze",
          "train.loss": "softmax",
          "gen_loss.use_inter": False,
          "gen_loss.inter_sign": -1,
      }
  )
  name = results.loss_name(config)
  assert name.startswith("full softmax cross-entropy, Cloze (mask_prob=0.2")
  assert "inter_sign=-1" in name and "no inter" in name
  assert "L_gen" not in results.loss_name(tiny_config(**{"model.variant": "sem"}))
  rec = results.make_record(
      config,
      "zero_shot",
      "Beta",
      {"zero_shot/full/recall@10": [0.1234, 0.01], "zero_shot/full/ndcg@10": 0.05},
  )
  table = results.format_table([rec])
  assert "Beta ← Alpha (synthetic)" in table and "12.34 ± 1.00" in table and "| 5.00 |" in table
  assert table.index("full R@10") < table.index("full N@10")


def test_candidate_scores_agree_across_modes(tiny_config, tiny_problem):
  """factored <W_p^T y, e> + <y, b_p>, gathered and full-catalogue scoring give the same BPR scores."""
  domains, tables = tiny_problem
  domain, table = domains["Alpha"], jnp.asarray(tables["Alpha"])
  rng = np.random.default_rng(0)
  ids = rng.integers(0, domain.num_items + 1, (3, 4, 6)).astype(np.int32)
  ids[0, 0, 0] = 0  # a padding target scores 0 in every mode
  hidden = jnp.asarray(rng.normal(size=(3, 4, 16)).astype(np.float32))
  scores = jax.jit(step_lib.candidate_scores, static_argnums=(0, 5))
  # (recg scores with the same W_p as sem; its factored path runs in the driver runs, on 8 devices too.)
  for variant in ("sem", "id"):
    config = tiny_config(**{"model.variant": variant})
    model = recommender_lib.build_model(config, domain.num_items)
    variables = jax.jit(recommender_lib.init_variables, static_argnums=0)(model, jax.random.key(1), table)
    # Non-zero biases, so the <y, b_p> term is exercised.
    variables = jax.tree.map(lambda x: x + 0.1 if x.ndim == 1 else x, variables)
    modes = ("factored", "gather", "full") if variant != "id" else ("gather", "full")
    got = {m: np.asarray(scores(model, variables, hidden, jnp.asarray(ids), table, m)) for m in modes}
    items = jax.jit(lambda v: model.apply(v, table, method=recommender_lib.Recommender.item_vectors))(
        variables
    )
    want = np.einsum("bpd,bpcd->bpc", np.asarray(hidden), np.asarray(items)[ids])
    for m in modes:
      np.testing.assert_allclose(got[m], want, rtol=1e-5, atol=1e-5, err_msg=f"{variant} {m}")
      assert got[m][0, 0, 0] == 0.0
    assert step_lib.candidate_scoring(config) == ("full" if variant == "id" else "factored")
  with pytest.raises(ValueError, match="needs a frozen table"):
    step_lib.candidate_scoring(tiny_config(**{"model.variant": "id", "train.candidate_scores": "factored"}))
  with pytest.raises(ValueError, match="config.train.candidate_scores"):
    step_lib.candidate_scoring(tiny_config(**{"train.candidate_scores": "sparse"}))


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "model.backbone": "bert4rec",
            "model.variant": "id",
            "train.bert4rec_objective": "cloze",
            "train.loss": "softmax",
        },
        {"model.backbone": "bert4rec", "model.variant": "sem"},
        {"model.backbone": "gru4rec", "model.variant": "recg", "train.targets": "last"},
    ],
    ids=["bert4rec-id-cloze-softmax", "bert4rec-sem-prefixes", "gru4rec-recg-last"],
)
def test_other_backbones_objectives_and_losses_train(tmp_path, overrides, tiny_config, tiny_problem):
  domains, tiny_tables = tiny_problem
  # One length bucket: a compile per bucket would dominate these runs (bucketed batches of every row
  # layout are checked in test_input_pipeline.py, bucketed training end to end by the driver runs).
  config = tiny_config(
      **overrides, **{"train.num_epochs": 3, "train.length_buckets": (), "eval.length_buckets": ()}
  )
  tables = None if config.model.variant == "id" else tiny_tables
  result = training.train_and_evaluate(config, tmp_path, domains, tables)
  events = read_jsonl(tmp_path / "metrics.jsonl")
  setup = events[0]
  lengths = domains["Alpha"].lengths - 2  # training part of every user
  if config.model.backbone == "bert4rec" and config.train.bert4rec_objective == "next_item":
    assert setup["rows"] == int((lengths - 1).sum())  # one row per prefix
  else:
    assert setup["rows"] == 48
  if config.train.targets == "last":
    assert setup["targets_per_epoch"] == 48
  losses = [e["loss"] for e in events if e["kind"] == "train"]
  assert np.all(np.isfinite(losses)) and np.mean(losses[-2:]) < losses[0], losses
  assert ("gen_loss" in events[1]) == (config.model.variant == "recg")
  assert 0.0 <= result.metrics["test/full/ndcg@10"] <= 1.0 and result.epochs == 3
  assert result.model.cloze == (config.train.bert4rec_objective == "cloze")


def test_tensorboard_tags_have_one_prefix_and_no_at_sign():
  assert metric_log.tensorboard_tag("valid", "valid/full/ndcg@10") == "valid/full/ndcg_at_10"
  assert metric_log.tensorboard_tag("train", "loss") == "train/loss"
