"""Parity of the Flax Llama/Qwen2/Mistral decoder with transformers (torch), causal and bidirectional."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from recg_jax.encoders import llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_TINY = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    attn_implementation="eager",
)
# Each family exercises one extra feature: Llama-3 RoPE scaling, Qwen2 q/k/v biases + linear RoPE scaling,
# Mistral's sliding window (4 < T, so it matters).
_FAMILIES = {
    "llama": (
        "LlamaConfig",
        "LlamaModel",
        dict(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "qwen2": ("Qwen2Config", "Qwen2Model", dict(rope_scaling={"type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", "MistralModel", dict(sliding_window=4)),
}
_B, _T = 3, 10
_LENGTHS = (10, 6, 3)  # right padding in rows 1 and 2


def _batch():
  ids = np.random.RandomState(0).randint(0, 100, (_B, _T)).astype(np.int32)
  mask = (np.arange(_T)[None, :] < np.asarray(_LENGTHS)[:, None]).astype(np.int32)
  return ids, mask


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> (torch model, config.json dict, safetensors tensors), saved and read back like a real one."""
  out = {}
  for family, (config_cls, model_cls, extra) in _FAMILIES.items():
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**_TINY, **extra)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that both are really tested
      for name, p in model.named_parameters():
        if p.ndim == 1:
          p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    folder = tmp_path_factory.mktemp(family)
    model.save_pretrained(folder, safe_serialization=True)
    hf_config = json.loads((folder / "config.json").read_text())
    out[family] = (model, hf_config, load_file(str(folder / "model.safetensors")))
  return out


def _torch_hidden(model, ids, mask, bidirectional):
  with torch.no_grad():
    if not bidirectional:
      attn = torch.tensor(mask, dtype=torch.long)
    else:
      # A prepared 4-D additive mask is used as is: every query sees every real key, no causal part.
      attn = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
      attn.masked_fill_(torch.tensor(mask)[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=attn).last_hidden_state.numpy()


@pytest.mark.parametrize("family", sorted(_FAMILIES))
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_matches_transformers(checkpoints, family, attention):
  model, hf_config, tensors = checkpoints[family]
  module, params = llama.build(hf_config, tensors, {"attention": attention, "dtype": "float32"})
  ids, mask = _batch()
  ours = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask))
  ref = _torch_hidden(model, ids, mask, attention == "bidirectional")
  assert ours.shape == (_B, _T, 64) and ours.dtype == np.float32
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


def test_attention_modes_differ_where_they_should(checkpoints):
  """Causal: a later token never changes earlier positions. Bidirectional: it does."""
  _, hf_config, tensors = checkpoints["llama"]
  ids, mask = _batch()
  changed = ids.copy()
  changed[0, 7] = (changed[0, 7] + 1) % 100
  for attention in ("causal", "bidirectional"):
    module, params = llama.build(hf_config, tensors, {"attention": attention})
    fn = jax.jit(module.apply)
    a = np.asarray(fn({"params": params}, ids, mask))[0]
    b = np.asarray(fn({"params": params}, changed, mask))[0]
    if attention == "causal":
      np.testing.assert_array_equal(a[:7], b[:7])
    else:
      assert np.abs(a[:7] - b[:7]).max() > 1e-3
    assert np.abs(a[7:] - b[7:]).max() > 1e-3


def test_auto_attention_is_causal(checkpoints):
  _, hf_config, tensors = checkpoints["qwen2"]
  assert not llama.build(hf_config, tensors, {"attention": "auto"})[0].bidirectional
  assert llama.build(hf_config, tensors, {"attention": "bidirectional"})[0].bidirectional


def test_config_features_are_active(checkpoints):
  """The parity tests only prove scaling / windows / biases if these really change something."""
  default = llama.rope_inv_freq({"rope_theta": 500000.0}, 16)
  assert not np.allclose(llama.rope_inv_freq(checkpoints["llama"][1], 16), default)
  qwen = llama.decoder_config(checkpoints["qwen2"][1])
  assert qwen.qkv_bias and not qwen.o_bias
  np.testing.assert_allclose(qwen.inv_freq, llama.rope_inv_freq({}, 16) / 2.0, rtol=1e-6)
  mistral = llama.decoder_config(checkpoints["mistral"][1])
  assert mistral.sliding_window == 4 and all(mistral.sliding_layers)
  assert llama.decoder_config(checkpoints["llama"][1]).sliding_window is None


def test_params_match_module_init(checkpoints):
  _, hf_config, tensors = checkpoints["qwen2"]
  module, params = llama.build(hf_config, tensors)
  ids, mask = _batch()
  shapes = jax.eval_shape(module.init, jax.random.key(0), ids, mask)["params"]
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  for want, got in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(params)):
    assert want.shape == got.shape and want.dtype == got.dtype
  assert params["layers"]["self_attn"]["q_proj"]["kernel"].shape == (2, 64, 64)
  assert params["layers"]["self_attn"]["k_proj"]["bias"].shape == (2, 32)


def test_bfloat16_close_to_float32(checkpoints):
  _, hf_config, tensors = checkpoints["llama"]
  ids, mask = _batch()
  m32, p32 = llama.build(hf_config, tensors, {"dtype": "float32"})
  m16, p16 = llama.build(hf_config, tensors, {"dtype": "bfloat16"})
  assert p16["layers"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
  h32 = np.asarray(jax.jit(m32.apply)({"params": p32}, ids, mask))
  h16 = np.asarray(jax.jit(m16.apply)({"params": p16}, ids, mask))
  assert h16.dtype == np.float32 and np.isfinite(h16).all()
  real = mask.astype(bool)
  assert np.abs(h16[real] - h32[real]).max() < 0.1 * np.abs(h32[real]).max()


def test_all_padding_row_stays_finite(checkpoints):
  _, hf_config, tensors = checkpoints["mistral"]
  module, params = llama.build(hf_config, tensors, {"attention": "bidirectional"})
  ids, mask = _batch()
  mask[2] = 0
  assert np.isfinite(np.asarray(jax.jit(module.apply)({"params": params}, ids, mask))).all()


def test_clear_errors(checkpoints):
  _, hf_config, tensors = checkpoints["llama"]
  with pytest.raises(ValueError, match="rope type 'yarnish'"):
    llama.build({**hf_config, "rope_parameters": {"rope_type": "yarnish", "rope_theta": 1e4}}, tensors)
  with pytest.raises(ValueError, match="model_type 'gpt2'"):
    llama.build({**hf_config, "model_type": "gpt2"}, tensors)
  with pytest.raises(ValueError, match="layers.1.mlp.up_proj.weight"):
    llama.build(hf_config, {k: v for k, v in tensors.items() if k != "layers.1.mlp.up_proj.weight"})
  with pytest.raises(ValueError, match="embed_tokens.weight.*shape"):
    llama.build(hf_config, {**tensors, "embed_tokens.weight": np.zeros((99, 64), np.float32)})
  with pytest.raises(ValueError, match="encoder.attention"):
    llama.build(hf_config, tensors, {"attention": "sideways"})
  with pytest.raises(ValueError, match="encoder.dtype"):
    llama.build(hf_config, tensors, {"dtype": "int8"})


def test_old_style_rope_config_equals_new_style():
  """transformers<5 writes rope_theta + rope_scaling at the top level; both spellings give the same angles."""
  new = {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}}
  old = {"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 4.0}}
  np.testing.assert_array_equal(llama.rope_inv_freq(new, 32), llama.rope_inv_freq(old, 32))
  factors = np.linspace(1.0, 8.0, 16)
  np.testing.assert_allclose(
      llama.rope_inv_freq(
          {"rope_theta": 1e6, "rope_scaling": {"rope_type": "freq_factors", "freq_factors": list(factors)}},
          32,
      ),
      llama.rope_inv_freq({"rope_theta": 1e6}, 32) / factors,
      rtol=1e-6,
  )
