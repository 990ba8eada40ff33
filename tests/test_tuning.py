"""Contrastive tuning of the text encoder (recg_jax/tuning/): the loss against NumPy, frozen layers get no
gradient, a tiny tuning lowers the loss on what it saw, a stopped tuning resumes to exactly the
uninterrupted one, and the saved encoder reloads to the same embeddings (the last three tune MiniLM for a
few steps and write its checkpoints: slow tier)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import encoders
from recg_jax import errors
from recg_jax import tuning
from recg_jax.encoders import bert
from recg_jax.encoders import embed
from recg_jax.tuning import artefact
from recg_jax.tuning import examples as examples_lib
from recg_jax.tuning import step as step_lib

TUNE = {
    "data.source": "Alpha+Beta",
    "tuning.batch_size": 8,
    "tuning.history_len": 3,
    "tuning.hard_negatives": 2,
    "tuning.hard_pool": 5,
    "tuning.max_tokens": 16,
    "tuning.log_every_steps": 1,
    "tuning.checkpoint_every_steps": 2,
    "tuning.learning_rate": 3e-4,
    "tuning.warmup_steps": 1,
}


def test_infonce_and_user_vectors_match_numpy():
  rng = np.random.default_rng(0)
  items = rng.normal(size=(7, 4)).astype(np.float32)
  items /= np.linalg.norm(items, axis=1, keepdims=True)
  history = np.array([[-1, 2, 3], [0, 1, 4]], np.int32)
  users = np.asarray(step_lib.user_vectors(jnp.asarray(items), jnp.asarray(history), 0.5))
  for b, row in enumerate(history):
    w = np.array([0.25, 0.5, 1.0])[row >= 0]
    want = (w[:, None] * items[row[row >= 0]]).sum(0)
    np.testing.assert_allclose(users[b], want / np.linalg.norm(want), rtol=1e-5)
  ok = np.ones((2, 7), bool)
  ok[0, [2, 3]] = False  # example 0's history
  positive = np.array([5, 6])
  loss, accuracy = step_lib.infonce(
      jnp.asarray(users), jnp.asarray(items), jnp.asarray(positive), jnp.asarray(ok), 0.1
  )
  logits = users @ items.T / 0.1
  want = np.mean([np.log(np.exp(logits[b][ok[b]]).sum()) - logits[b, positive[b]] for b in range(2)])
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(accuracy) == pytest.approx(
      np.mean([logits[b][ok[b]].max() == logits[b, positive[b]] for b in range(2)])
  )


@pytest.fixture(scope="module")
def batch_and_base(tiny_problem):
  from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  import conftest  # pylint: disable=g-import-not-at-top

  domains, tables = tiny_problem
  config = conftest.tiny_config(**TUNE)
  base = encoders.load_encoder(config.encoder)
  ex = examples_lib.build([domains["Alpha"], domains["Beta"]], [tables["Alpha"], tables["Beta"]], 3, 5)
  ids, mask = tuning._tokens(base, config, [domains["Alpha"], domains["Beta"]])  # pylint: disable=protected-access
  batch = tuning._device_batch(examples_lib.sample(ex, 8, 2, 0, 0), ids, mask)  # pylint: disable=protected-access
  del config_lib
  return config, base, batch


def test_frozen_layers_get_no_gradient(batch_and_base):
  config, base, batch = batch_and_base
  config = config.copy_and_resolve_references()
  config.tuning.trainable, config.tuning.top_layers = "top_layers", 1
  config.tuning.cache_frozen_blocks = False  # the whole encoder runs: the lower blocks see the gradient stop
  spec = tuning._spec(config, base)  # pylint: disable=protected-access
  grads = jax.grad(lambda p: step_lib.loss_fn(spec, p, jnp.log(0.05), base.params, batch)[0])(base.params)
  norms = {k: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(v))) for k, v in grads.items()}
  last = f"layer_{spec.num_layers - 1}"
  assert norms[last] > 0 and all(n == 0.0 for k, n in norms.items() if k != last), norms


def _top2_specs(config, base):
  """(uncached, cached) specs of a top-two-blocks tuning."""
  config = config.copy_and_resolve_references()
  config.tuning.trainable, config.tuning.top_layers = "top_layers", 2
  cached = tuning_spec(config, base)
  config.tuning.cache_frozen_blocks = False
  return tuning_spec(config, base), cached


def test_the_encoder_split_at_the_frozen_blocks_equals_the_whole_encoder(batch_and_base):
  config, base, batch = batch_and_base
  _, spec = _top2_specs(config, base)
  ids, mask = batch["ids"], batch["mask"]
  states = tuning._frozen_states(spec, base.params, ids, mask, 5, progress=False)  # pylint: disable=protected-access
  assert len(ids) % 5 and states.shape == (*ids.shape, 384)  # the last pass wraps around
  top = bert.BertBlocks(spec.module.config, 4, spec.module.dtype)
  got = top.apply({"params": {k: base.params[k] for k in ("layer_4", "layer_5")}}, states, mask)
  want = base.module.apply({"params": base.params}, ids, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_a_step_on_cached_frozen_blocks_has_the_loss_and_gradients_of_the_whole_encoder(batch_and_base):
  config, base, batch = batch_and_base
  whole, cached = _top2_specs(config, base)
  hidden = step_lib.frozen_hidden(cached, base.params, batch["ids"], batch["mask"])
  cached_batch = {**{k: v for k, v in batch.items() if k != "ids"}, "hidden": hidden}
  grad = lambda spec, b: jax.value_and_grad(
      lambda p: step_lib.loss_fn(spec, p, jnp.log(0.05), base.params, b)[0]
  )
  loss_whole, grads_whole = grad(whole, batch)(base.params)
  loss_cached, grads_cached = grad(cached, cached_batch)(base.params)
  assert float(loss_cached) == pytest.approx(float(loss_whole), rel=1e-5)
  for layer in ("layer_4", "layer_5"):
    for a, b in zip(jax.tree.leaves(grads_cached[layer]), jax.tree.leaves(grads_whole[layer])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)
  frozen = [g for k, v in grads_cached.items() if k not in ("layer_4", "layer_5") for g in jax.tree.leaves(v)]
  assert all(float(jnp.abs(g).sum()) == 0.0 for g in frozen)


def _lora_spec(config, base, **tuning):
  config = config.copy_and_resolve_references()
  config.tuning.trainable = "lora"
  for key, value in tuning.items():
    config.tuning[key] = value
  return tuning_spec(config, base)


def tuning_spec(config, base):
  return tuning._spec(config, base)  # pylint: disable=protected-access


def test_lora_starts_at_the_pretrained_encoder_and_merges_as_w_plus_scaled_ab(batch_and_base):
  config, base, _ = batch_and_base
  spec = _lora_spec(config, base, lora_rank=4, lora_alpha=8.0, lora_targets=("qkv", "ffn_out"))
  adaptors = step_lib.lora_init(base.params, spec, jax.random.key(0))
  at_start = step_lib.encoder_params(spec, adaptors, base.params)
  for a, b in zip(jax.tree.leaves(at_start), jax.tree.leaves(base.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rng = np.random.default_rng(0)
  adaptors = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), adaptors)
  merged = step_lib.encoder_params(spec, adaptors, base.params)
  flat_merged = dict(jax.tree_util.tree_leaves_with_path(merged))
  for path, pretrained in jax.tree_util.tree_leaves_with_path(base.params):
    keys = [k.key for k in path]
    got, want = np.asarray(flat_merged[path]), np.asarray(pretrained)
    if len(keys) == 3 and keys[1] in ("qkv", "ffn_out") and keys[2] == "kernel":
      ab = adaptors[keys[0]][keys[1]]
      want = want + 2.0 * np.asarray(ab["a"]) @ np.asarray(ab["b"])
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_array_equal(got, want)


def test_lora_gradients_reach_the_adaptors_and_the_pull_is_their_squared_delta(batch_and_base):
  config, base, batch = batch_and_base
  spec = _lora_spec(config, base, lora_rank=2, pull=0.5)
  adaptors = step_lib.lora_init(base.params, spec, jax.random.key(1))
  full = dataclasses.replace(spec, trainable="full", pull=0.0)
  lora_loss, aux = step_lib.loss_fn(spec, adaptors, jnp.log(0.05), base.params, batch)
  want_loss = step_lib.loss_fn(full, base.params, jnp.log(0.05), base.params, batch)[0]
  assert float(lora_loss) == pytest.approx(float(want_loss), rel=1e-6) and float(aux["pull"]) == 0.0
  grads = jax.grad(lambda p: step_lib.loss_fn(spec, p, jnp.log(0.05), base.params, batch)[0])(adaptors)
  for layer, targets in grads.items():
    for target, g in targets.items():
      assert float(jnp.abs(g["b"]).sum()) > 0, (layer, target)  # b = 0: a's gradient starts at zero
  moved = jax.tree.map(lambda x: x + 0.01, adaptors)
  scale = spec.lora_alpha / spec.lora_rank
  want_pull = 0.5 * sum(
      float(np.sum(np.square(scale * np.asarray(ab["a"]) @ np.asarray(ab["b"]))))
      for targets in moved.values()
      for ab in targets.values()
  )
  _, aux = step_lib.loss_fn(spec, moved, jnp.log(0.05), base.params, batch)
  assert float(aux["pull"]) == pytest.approx(want_pull, rel=1e-4)


def test_lora_targets_must_be_block_kernels(batch_and_base):
  config, base, _ = batch_and_base
  with pytest.raises(errors.ConfigError, match="lora_targets"):
    _lora_spec(config, base, lora_targets=("query",))


@pytest.fixture(scope="module")
def tuned_runs(tmp_path_factory, tiny_problem):
  """Four steps uninterrupted; and the same tuning stopped after its step-2 checkpoint, then restarted."""
  import conftest  # pylint: disable=g-import-not-at-top

  domains, tables = tiny_problem
  root = tmp_path_factory.mktemp("tuning")
  whole = tuning.tune(
      conftest.tiny_config(**TUNE, **{"tuning.steps": 4}), root / "whole", domains, tables, progress=False
  )
  tuning.tune(
      conftest.tiny_config(**TUNE, **{"tuning.steps": 2}), root / "split", domains, tables, progress=False
  )
  resumed = tuning.tune(
      conftest.tiny_config(**TUNE, **{"tuning.steps": 4}), root / "split", domains, tables, progress=False
  )
  return whole, resumed


@pytest.mark.slow
def test_a_stopped_tuning_resumes_to_the_uninterrupted_one(tuned_runs):
  whole, resumed = tuned_runs
  for a, b in zip(jax.tree.leaves(whole.encoder.params), jax.tree.leaves(resumed.encoder.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert whole.metrics == resumed.metrics


@pytest.mark.slow
def test_tuning_lowers_the_loss_on_what_it_saw(tuned_runs, batch_and_base):
  whole, _ = tuned_runs
  config, base, batch = batch_and_base  # the first step's batch
  spec = tuning._spec(config, base)  # pylint: disable=protected-access
  before = step_lib.loss_fn(spec, base.params, jnp.log(0.05), base.params, batch)[0]
  after = step_lib.loss_fn(spec, whole.encoder.params, jnp.log(0.05), base.params, batch)[0]
  assert float(after) < float(before)
  assert not np.allclose(
      np.asarray(whole.encoder.params["layer_5"]["ffn_in"]["kernel"]),
      np.asarray(base.params["layer_5"]["ffn_in"]["kernel"]),
  )


@pytest.mark.slow
def test_a_lora_tuning_lowers_the_loss_and_moves_only_the_adapted_kernels(
    tmp_path, tiny_problem, batch_and_base
):
  import conftest  # pylint: disable=g-import-not-at-top

  domains, tables = tiny_problem
  config, base, batch = batch_and_base
  overrides = {**TUNE, "tuning.steps": 4, "tuning.trainable": "lora", "tuning.learning_rate": 3e-3}
  tuned = tuning.tune(conftest.tiny_config(**overrides), tmp_path, domains, tables, progress=False)
  spec = tuning_spec(config, base)
  before = step_lib.loss_fn(spec, base.params, jnp.log(0.05), base.params, batch)[0]
  after = step_lib.loss_fn(spec, tuned.encoder.params, jnp.log(0.05), base.params, batch)[0]
  assert float(after) < float(before)
  flat_tuned = dict(jax.tree_util.tree_leaves_with_path(tuned.encoder.params))
  for path, pretrained in jax.tree_util.tree_leaves_with_path(base.params):
    keys = [k.key for k in path]
    same = np.array_equal(np.asarray(flat_tuned[path]), np.asarray(pretrained))
    assert same != (keys[1:] in (["qkv", "kernel"], ["attn_out", "kernel"])), keys


@pytest.mark.slow
def test_a_tuning_on_cached_frozen_blocks_ends_where_the_uncached_one_does(tmp_path, tiny_problem):
  import conftest  # pylint: disable=g-import-not-at-top

  domains, tables = tiny_problem
  overrides = {**TUNE, "tuning.steps": 3, "tuning.trainable": "top_layers", "tuning.top_layers": 2}
  runs = [
      tuning.tune(
          conftest.tiny_config(**overrides, **{"tuning.cache_frozen_blocks": cache}),
          tmp_path / str(cache),
          domains,
          tables,
          progress=False,
      )
      for cache in (False, True)
  ]
  base = encoders.load_encoder(conftest.tiny_config().encoder).params
  flat = [dict(jax.tree_util.tree_leaves_with_path(r.encoder.params)) for r in runs]
  for path, pretrained in jax.tree_util.tree_leaves_with_path(base):
    whole, cached = (np.asarray(f[path]) - np.asarray(pretrained) for f in flat)
    if path[0].key in ("layer_4", "layer_5"):
      # Adam turns float-noise-sized gradients into lr-sized steps: compare where the weights went.
      assert np.linalg.norm(cached - whole) <= 0.05 * np.linalg.norm(whole), path
    else:
      assert not whole.any() and not cached.any(), path
  assert runs[0].metrics["loss"] == pytest.approx(runs[1].metrics["loss"], rel=1e-4)


@pytest.mark.slow
def test_the_saved_encoder_reloads_to_the_same_embeddings(tuned_runs, batch_and_base):
  whole, _ = tuned_runs
  config, _, _ = batch_and_base
  encoder_config = config.encoder.copy_and_resolve_references()
  encoder_config.model = str(whole.folder)
  reloaded = encoders.load_encoder(encoder_config)
  texts = ["title: Digital caliper; brand: Neiko", "title: copy paper, 500 sheets"]
  got = embed.embed_texts(reloaded, texts, encoder_config, config.text, progress=False)
  want = embed.embed_texts(
      dataclasses.replace(whole.encoder), texts, encoder_config, config.text, progress=False
  )
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  manifest = artefact.read_manifest(whole.folder)
  assert manifest["sources"] == ["Alpha", "Beta"] and manifest["steps"] == 4
  assert (
      reloaded.weights_hash
      == whole.encoder.weights_hash
      != encoders.load_encoder(config.encoder).weights_hash
  )


@pytest.mark.slow
def test_tune_command_writes_an_encoder_that_loads(tmp_path):
  from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  import conftest  # pylint: disable=g-import-not-at-top

  overrides = [f"--config.{k}={v}" for k, v in {**TUNE, "tuning.steps": 2}.items()]
  proc = conftest.run_module(
      "recg_jax.tune", "--config=tests/conftest.py", f"--workdir={tmp_path}", *overrides, timeout=600
  )
  folder = tmp_path / "encoder"
  assert f"--config.encoder.model={folder}" in proc.stdout
  c = config_lib.get_config().encoder
  c.model = str(folder)
  assert encoders.load_encoder(c).model_id != encoders.load_encoder(config_lib.get_config().encoder).model_id
