"""Tests of recg_jax.models: shapes, causality, padding invariance, GRU parity, heads, Cloze, training."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recg_jax import config as config_lib
from recg_jax import losses
from recg_jax.models import bert4rec as bert4rec_lib
from recg_jax.models import gru4rec as gru4rec_lib
from recg_jax.models import heads
from recg_jax.models import sasrec as sasrec_lib
from recg_jax.models.recommender import build_model
from recg_jax.models.recommender import init_variables
from recg_jax.models.recommender import MASK_TOKEN_ID
from recg_jax.models.recommender import Recommender

D, L, I, H = 16, 8, 20, 12  # hidden, max_len, items, frozen-table width
HISTORY = np.array([3, 7, 2, 9, 4], np.int32)


def _model(backbone, variant="sem", pre_ln=False, num_layers=1, **kw):
  return Recommender(
      backbone=backbone,
      variant=variant,
      num_items=I,
      hidden_dim=D,
      num_layers=num_layers,
      num_heads=2,
      dropout=0.2,
      emb_dropout=0.2,
      max_len=L,
      pre_ln=pre_ln,
      **kw,
  )


def _pad(history, length):
  out = np.zeros((1, length), np.int32)
  out[0, length - len(history) :] = history
  return jnp.asarray(out)


@pytest.fixture(scope="module")
def table():
  t = jax.random.normal(jax.random.PRNGKey(7), (I + 1, H))
  return t.at[0].set(0.0)


@pytest.fixture(scope="module")
def built(table):
  """One initialised model per backbone ('sem'); sasrec is pre-LN, the others post-LN."""
  out = {}
  for i, backbone in enumerate(("sasrec", "bert4rec", "gru4rec")):
    model = _model(backbone, pre_ln=backbone == "sasrec", num_layers=2)
    out[backbone] = (model, init_variables(model, jax.random.PRNGKey(i), table))
  return out


def _full_seq(seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(1, I + 1, size=(2, L)), jnp.int32)


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
def test_shapes_and_padding_outputs(built, table, backbone):
  model, variables = built[backbone]
  seq = jnp.asarray(np.stack([np.asarray(_pad(HISTORY, L))[0], np.arange(1, L + 1)]))
  user = model.apply(variables, seq, table, False)
  hidden = model.apply(variables, seq, table, False, method=Recommender.encode_positions)
  items = model.apply(variables, table, method=Recommender.item_vectors)
  chex.assert_shape(user, (2, D))
  chex.assert_shape(hidden, (2, L, D))
  chex.assert_shape(items, (I + 1, D))
  chex.assert_tree_all_finite((user, hidden, items))
  np.testing.assert_array_equal(user, hidden[:, -1])
  np.testing.assert_array_equal(hidden[0, : L - len(HISTORY)], 0.0)  # padding positions
  assert np.all(np.abs(np.asarray(hidden[0, L - len(HISTORY) :])).sum(-1) > 0)
  np.testing.assert_array_equal(items[0], 0.0)
  assert model.is_causal == (backbone != "bert4rec")


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_causal_backbones_ignore_future_items(built, table, backbone):
  model, variables = built[backbone]
  seq = _full_seq()
  t = 4
  changed = seq.at[:, t + 1 :].set((seq[:, t + 1 :] % I) + 1)  # every later item differs
  a = model.apply(variables, seq, table, False, method=Recommender.encode_positions)
  b = model.apply(variables, changed, table, False, method=Recommender.encode_positions)
  np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])  # bit-exact
  assert np.abs(np.asarray(a[:, t + 1 :] - b[:, t + 1 :])).max() > 1e-4


def test_bert4rec_sees_future_items(built, table):
  model, variables = built["bert4rec"]
  seq = _full_seq()
  changed = seq.at[:, -1].set((seq[:, -1] % I) + 1)
  a = model.apply(variables, seq, table, False, method=Recommender.encode_positions)
  b = model.apply(variables, changed, table, False, method=Recommender.encode_positions)
  assert np.abs(np.asarray(a[:, 0] - b[:, 0])).max() > 1e-4


def _backbone(kind, pre_ln):
  if kind == "gru4rec":
    return gru4rec_lib.GRU4Rec(hidden_dim=D, num_layers=2, dropout=0.0)
  make = sasrec_lib.SASRec if kind == "sasrec" else bert4rec_lib.BERT4Rec
  return make(hidden_dim=D, num_layers=2, num_heads=2, dropout=0.0, max_len=L, pre_ln=pre_ln)


@pytest.mark.parametrize(
    "kind,pre_ln", [("sasrec", False), ("sasrec", True), ("gru4rec", False), ("bert4rec", False)]
)
def test_jacobian_wrt_later_inputs(kind, pre_ln):
  """d out[t] / d x[s] is exactly zero for s > t in causal backbones, and not in BERT4Rec."""
  module = _backbone(kind, pre_ln)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, L, D))
  valid = jnp.ones((1, L), bool).at[0, 0].set(False)  # one leading pad too
  params = module.init(jax.random.PRNGKey(1), x, valid)
  t = 4
  jac = jax.jit(jax.jacrev(lambda x: module.apply(params, x, valid)[0, t]))(x)  # [D, 1, L, D]
  chex.assert_shape(jac, (D, 1, L, D))
  jac = np.abs(np.asarray(jac))
  assert jac[:, :, 1 : t + 1].max() > 0
  np.testing.assert_array_equal(jac[:, :, 0], 0.0)  # padding input never matters
  if kind == "bert4rec":
    assert jac[:, :, t + 1 :].max() > 0
  else:
    np.testing.assert_array_equal(jac[:, :, t + 1 :], 0.0)


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
def test_padding_invariance(built, table, backbone):
  """The same history gives the same user vector whatever the number of left pads and batch mates."""
  model, variables = built[backbone]
  users = [model.apply(variables, _pad(HISTORY, n), table, False)[0] for n in (L, 6, 5)]
  batch = jnp.concatenate([_pad(HISTORY, L), _pad(np.arange(1, L + 1), L)], axis=0)
  users.append(model.apply(variables, batch, table, False)[0])
  for u in users[1:]:
    np.testing.assert_allclose(u, users[0], rtol=1e-5, atol=1e-6)


def test_longer_than_max_len_rejected(built, table):
  model, variables = built["sasrec"]
  with pytest.raises(ValueError, match="max_len"):
    model.apply(variables, jnp.ones((1, L + 1), jnp.int32), table, False)


def test_gru4rec_matches_left_aligned_flax_rnn():
  """Right-aligned with held carries == left-aligned through flax nn.RNN with seq_lengths."""
  module = gru4rec_lib.GRU4Rec(hidden_dim=D, num_layers=2, dropout=0.0)
  lengths = np.array([3, 8, 1, 5])
  x_right = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (4, L, D)))
  valid = np.arange(L)[None, :] >= (L - lengths)[:, None]
  x_right = np.where(valid[..., None], x_right, 0.0)
  x_left = np.zeros_like(x_right)
  for b, n in enumerate(lengths):
    x_left[b, :n] = x_right[b, L - n :]
  params = module.init(jax.random.PRNGKey(4), jnp.asarray(x_right), jnp.asarray(valid))["params"]
  ours = module.apply({"params": params}, jnp.asarray(x_right), jnp.asarray(valid))[:, -1]

  h = jnp.asarray(x_left)
  for i in range(2):
    rnn = nn.RNN(nn.GRUCell(D))
    h = rnn.apply({"params": {"cell": params[f"layer_{i}"]["cell"]}}, h, seq_lengths=jnp.asarray(lengths))
  h = nn.Dense(D).apply({"params": params["out"]}, h)
  reference = h[jnp.arange(4), lengths - 1]
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_frozen_table_is_an_argument_not_a_parameter(table):
  for variant in ("sem", "recg"):
    model = _model("sasrec", variant)
    params = init_variables(model, jax.random.PRNGKey(0), table)["params"]
    shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(params)]
    assert table.shape not in shapes
    assert params["items"]["W_p"]["kernel"].shape == (H, D)
    assert ("W_a" in params["items"]) == (variant == "recg")
    assert ("merge" in params["items"]) == (variant == "recg")
    if variant == "recg":
      assert params["items"]["merge"]["kernel"].shape == (2 * D, D)
      z = model.apply({"params": params}, table[1:4], method=Recommender.align)
      w_a = params["items"]["W_a"]
      np.testing.assert_allclose(z, table[1:4] @ w_a["kernel"] + w_a["bias"], rtol=1e-5, atol=1e-6)
  # Zero-shot: a target table with another catalogue size and the same width just works.
  target = jax.random.normal(jax.random.PRNGKey(9), (33, H)).at[0].set(0.0)
  items = model.apply({"params": params}, target, method=Recommender.item_vectors)
  chex.assert_shape(items, (33, D))
  w_p = params["items"]["W_p"]
  np.testing.assert_allclose(items[1:], target[1:] @ w_p["kernel"] + w_p["bias"], rtol=1e-5, atol=1e-6)
  chex.assert_shape(model.apply({"params": params}, jnp.array([[0, 31, 32]]), target, False), (1, D))
  ids = jnp.array([[[0, 5], [32, 1]]])
  cand = model.apply({"params": params}, ids, target, method=Recommender.candidate_vectors)
  chex.assert_shape(cand, (1, 2, 2, D))
  np.testing.assert_allclose(cand, items[ids], rtol=1e-6, atol=1e-6)


def test_id_variant_has_no_projection(table):
  model = _model("sasrec", "id")
  params = init_variables(model, jax.random.PRNGKey(0), None)["params"]
  assert set(params["items"]) == {"item_embedding"}
  assert params["items"]["item_embedding"]["embedding"].shape == (I + 1, D)
  items = model.apply({"params": params}, None, method=Recommender.item_vectors)
  np.testing.assert_array_equal(items[1:], params["items"]["item_embedding"]["embedding"][1:])
  np.testing.assert_array_equal(items[0], 0.0)
  ids = jnp.array([[0, 3, I]])
  np.testing.assert_array_equal(
      model.apply({"params": params}, ids, None, method=Recommender.candidate_vectors), items[ids]
  )
  dummy = jnp.zeros((I + 1, 1))
  np.testing.assert_array_equal(
      model.apply({"params": params}, _pad(HISTORY, L), dummy, False),
      model.apply({"params": params}, _pad(HISTORY, L), None, False),
  )
  with pytest.raises(ValueError, match="recg"):
    model.apply({"params": params}, table[1:3], method=Recommender.align)


def test_item_projection_inputs_zero_padding_and_recg_merge(table):
  head = heads.ItemProjection(variant="recg", num_items=I, features=D, emb_dropout=0.5)
  seq = jnp.array([[0, 0, 4, 2]])
  params = head.init(jax.random.PRNGKey(0), seq, table, False)["params"]
  x = head.apply({"params": params}, seq, table, False)
  np.testing.assert_array_equal(x[0, :2], 0.0)
  e = table[jnp.array([4, 2])]
  dense = lambda p, v: v @ p["kernel"] + p["bias"]
  expected = dense(
      params["merge"], jnp.concatenate([dense(params["W_p"], e), dense(params["W_a"], e)], axis=-1)
  )
  np.testing.assert_allclose(x[0, 2:], expected, rtol=1e-5, atol=1e-6)
  # Training mode drops inputs (rate 0.5) with the given key, and only then.
  x_train = head.apply({"params": params}, seq, table, True, rngs={"dropout": jax.random.PRNGKey(1)})
  assert np.abs(np.asarray(x_train - x)).max() > 1e-3
  np.testing.assert_array_equal(x_train[0, :2], 0.0)


def test_identity_merge_starts_as_the_sem_input(table):
  seq = jnp.array([[0, 3, 4, 2]])
  recg = heads.ItemProjection(variant="recg", num_items=I, features=D, merge_init="identity")
  params = recg.init(jax.random.PRNGKey(0), seq, table, False)["params"]
  sem = heads.ItemProjection(variant="sem", num_items=I, features=D)
  x_sem = sem.apply({"params": {"W_p": params["W_p"]}}, seq, table, False)
  np.testing.assert_allclose(recg.apply({"params": params}, seq, table, False), x_sem, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="merge_init"):
    heads.ItemProjection(variant="recg", num_items=I, features=D, merge_init="zeros").init(
        jax.random.PRNGKey(0), seq, table, False
    )


def test_sequence_fusion_starts_as_identity():
  fusion = heads.SequenceFusion(features=D)
  y = jax.random.normal(jax.random.PRNGKey(0), (3, D))
  s = jax.random.normal(jax.random.PRNGKey(1), (3, D))
  params = fusion.init(jax.random.PRNGKey(2), y, s)["params"]
  assert set(params) == {"W_f"} and set(params["W_f"]) == {"kernel"}  # no bias
  assert params["W_f"]["kernel"].shape == (2 * D, D)
  np.testing.assert_array_equal(fusion.apply({"params": params}, y, s), y)


def test_bert4rec_reads_item_num_items_plus_one_of_a_larger_target(built, table):
  # Zero-shot, a model trained on I items meets a target with more: its item I + 1 is a real item, read
  # from the target's table, never the mask.
  model, variables = built["bert4rec"]
  rng = np.random.default_rng(3)
  target = jnp.asarray(np.concatenate([table, rng.normal(size=(4, table.shape[1]))]).astype(np.float32))
  seq = _pad(np.append(HISTORY, I + 1), L)
  other = target.at[I + 1].set(jnp.asarray(rng.normal(size=table.shape[1]), jnp.float32))
  a = model.apply(variables, seq, target, False)
  b = model.apply(variables, seq, other, False)
  assert np.abs(np.asarray(a - b)).max() > 1e-4


def test_dropout_only_in_training(built, table):
  model, variables = built["sasrec"]
  seq = _full_seq()
  a, b = (model.apply(variables, seq, table, True, rngs={"dropout": jax.random.PRNGKey(k)}) for k in (0, 1))
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  np.testing.assert_array_equal(
      model.apply(variables, seq, table, False), model.apply(variables, seq, table, False)
  )


def test_cloze_mask_token_and_inference(built, table):
  model, variables = built["bert4rec"]
  mask_id = MASK_TOKEN_ID
  seq = _pad(HISTORY, L)
  masked = seq.at[0, -2].set(mask_id)
  hidden = model.apply(variables, masked, table, False, method=Recommender.encode_positions)
  chex.assert_tree_all_finite(hidden)
  # The mask position's input is the learned vector: moving it changes the output.
  variables2 = jax.tree_util.tree_map(lambda v: v, variables)
  # (A random shift: a constant one would vanish in the input LayerNorm.)
  variables2["params"]["mask_vector"] = jax.random.normal(jax.random.PRNGKey(5), (D,))
  hidden2 = model.apply(variables2, masked, table, False, method=Recommender.encode_positions)
  assert np.abs(np.asarray(hidden2 - hidden)).max() > 1e-3
  # Cloze inference = encode(history shifted left + mask)[:, -1], on the same parameters.
  cloze_model = model.clone(cloze=True)
  user = cloze_model.apply(variables, seq, table, False)
  shifted = jnp.concatenate([seq[:, 1:], jnp.array([[mask_id]])], axis=1)
  expected = model.apply(variables, shifted, table, False, method=Recommender.encode_positions)[:, -1]
  np.testing.assert_array_equal(user, expected)


def test_build_model_and_validation():
  cfg = config_lib.override(
      config_lib.get_config(),
      {
          "model.backbone": "gru4rec",
          "model.variant": "id",
          "model.hidden_dim": D,
          "model.num_layers": 1,
          "model.num_heads": 2,
          "model.dropout": 0.1,
          "model.emb_dropout": 0.3,
          "model.pre_ln": True,
          "data.max_len": L,
      },
  )
  model = build_model(cfg, num_items=I)
  assert (
      model.backbone,
      model.variant,
      model.num_items,
      model.hidden_dim,
      model.num_layers,
      model.emb_dropout,
      model.max_len,
      model.pre_ln,
      model.cloze,
  ) == ("gru4rec", "id", I, D, 1, 0.3, L, True, False)
  assert model.is_causal
  with pytest.raises(ValueError, match="backbone"):
    init_variables(_model("transformer"), jax.random.PRNGKey(0), None)
  with pytest.raises(ValueError, match="variant"):
    init_variables(_model("sasrec", "llm"), jax.random.PRNGKey(0), None)


def test_training_reduces_bpr_loss(table):
  """A few Adam steps of SASRec-RecG with on-device negatives fit a fixed batch."""
  model = _model("sasrec", "recg")
  params = init_variables(model, jax.random.PRNGKey(0), table)["params"]
  seq = jnp.asarray(np.random.default_rng(1).integers(1, I + 1, size=(8, L + 1)), jnp.int32)
  inputs, targets = seq[:, :-1], seq[:, 1:]
  mask = jnp.ones_like(targets, bool)
  opt = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, key):
    k_neg, k_drop = jax.random.split(key)
    negs = losses.sample_negatives(k_neg, targets, I, 3, inputs)

    def loss_fn(p):
      hidden = model.apply(
          {"params": p}, inputs, table, True, rngs={"dropout": k_drop}, method=Recommender.encode_positions
      )
      vecs = lambda ids: model.apply({"params": p}, ids, table, method=Recommender.candidate_vectors)
      return losses.bpr_loss(hidden, vecs(targets), vecs(negs), mask)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = opt.init(params)
  history = []
  for i in range(25):
    params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(i))
    history.append(float(loss))
  assert np.isfinite(history).all()
  assert history[0] > 0.6  # ~log 2 at initialisation
  assert np.mean(history[-5:]) < 0.5 * history[0]


def test_sasrec_block_fields_reach_the_blocks(table):
  """RecBole's SASRec blocks (FFN 4d, exact GELU, LN epsilon, N(0, 0.02) kernels) from config fields."""
  model = _model(
      "sasrec",
      sasrec_ffn_multiplier=4,
      sasrec_activation="gelu",
      sasrec_ln_epsilon=1e-12,
      sasrec_init_std=0.02,
  )
  params = init_variables(model, jax.random.PRNGKey(0), table)["params"]
  block = params["encoder"]["transformer"]["block_0"]
  assert block["ffn_in"]["kernel"].shape == (D, 4 * D)
  assert float(jnp.std(block["ffn_in"]["kernel"])) == pytest.approx(0.02, rel=0.25)
  default = init_variables(_model("sasrec"), jax.random.PRNGKey(0), table)["params"]
  assert default["encoder"]["transformer"]["block_0"]["ffn_in"]["kernel"].shape == (D, D)
  seq = _pad(HISTORY, L)
  assert not np.allclose(
      model.apply({"params": params}, seq, table, False),
      _model("sasrec", sasrec_ffn_multiplier=4, sasrec_ln_epsilon=1e-12, sasrec_init_std=0.02).apply(
          {"params": params}, seq, table, False
      ),
  )
  with pytest.raises(ValueError, match="sasrec_activation"):
    init_variables(_model("sasrec", sasrec_activation="tanh"), jax.random.PRNGKey(0), table)
