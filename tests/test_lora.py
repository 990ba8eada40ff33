"""LoRA merge against PEFT: merged weights and the forward pass of the adapted model."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from recg_jax.encoders import llama
from recg_jax.encoders import lora

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

_TINY = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    attn_implementation="eager",
)
_ADAPTERS = {
    # Per-module rank and alpha overrides, and an embedding adapter (saved with its base layer).
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        rank_pattern={"down_proj": 2},
        alpha_pattern={"v_proj": 16},
    ),
    "rslora": dict(
        r=8, lora_alpha=4, target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"], use_rslora=True
    ),
}


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
  """name -> (base tensors, config.json, adapter folder, PEFT model)."""
  out = {}
  for name, kwargs in _ADAPTERS.items():
    torch.manual_seed(1)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_TINY)).eval()
    base_dir = tmp_path_factory.mktemp(f"base_{name}")
    base.save_pretrained(base_dir, safe_serialization=True)
    # init_lora_weights=False: B is random, not zero, so the adapter really changes the output.
    model = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, **kwargs)).eval()
    adapter_dir = tmp_path_factory.mktemp(f"adapter_{name}")
    model.save_pretrained(adapter_dir)
    out[name] = (
        load_file(str(base_dir / "model.safetensors")),
        json.loads((base_dir / "config.json").read_text()),
        adapter_dir,
        model,
    )
  return out


@pytest.mark.parametrize("name", sorted(_ADAPTERS))
def test_merged_forward_matches_peft(adapted, name):
  tensors, hf_config, adapter_dir, model = adapted[name]
  merged = lora.merge_lora(tensors, adapter_dir)
  ids = np.random.RandomState(0).randint(0, 100, (2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 4:] = 0
  module, params = llama.build(hf_config, merged, {"attention": "causal"})
  ours = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask))
  with torch.no_grad():
    ref = model.base_model.model.model(
        input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long)
    ).last_hidden_state
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], ref.numpy()[real], atol=1e-5, rtol=0)
  # The adapter matters: the base model gives something else.
  module, base_params = llama.build(hf_config, tensors, {"attention": "causal"})
  base_out = np.asarray(jax.jit(module.apply)({"params": base_params}, ids, mask))
  assert np.abs(base_out[real] - ours[real]).max() > 1e-2


@pytest.mark.parametrize("name", sorted(_ADAPTERS))
def test_merged_weights_match_merge_and_unload(adapted, name):
  tensors, _, adapter_dir, model = adapted[name]
  merged = lora.merge_lora(tensors, adapter_dir)
  with torch.no_grad():
    reference = {k: v.numpy() for k, v in model.merge_and_unload(safe_merge=True).state_dict().items()}
  changed = [k for k in tensors if not np.array_equal(tensors[k], merged[k])]
  assert len(changed) == {"patterns": 7, "rslora": 8}[name]
  for key in tensors:
    np.testing.assert_allclose(merged[key], reference[key], atol=1e-6, rtol=0, err_msg=key)


def test_merge_handles_prefixless_base_names(adapted):
  """A LlamaModel checkpoint has no `model.` prefix; the adapter (saved on a *ForCausalLM) still applies."""
  tensors, _, adapter_dir, _ = adapted["rslora"]
  bare = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
  merged = lora.merge_lora(tensors, adapter_dir)
  merged_bare = lora.merge_lora(bare, adapter_dir)
  for key, value in merged_bare.items():
    np.testing.assert_array_equal(value, merged["model." + key])


def test_clear_errors(adapted, tmp_path):
  tensors, _, adapter_dir, _ = adapted["rslora"]
  with pytest.raises(FileNotFoundError, match="adapter_config.json"):
    lora.merge_lora(tensors, tmp_path)
  bad = tmp_path / "dora"
  bad.mkdir()
  config = json.loads((adapter_dir / "adapter_config.json").read_text())
  (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
  (bad / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
  with pytest.raises(ValueError, match="DoRA"):
    lora.merge_lora(tensors, bad)
  missing = {k: v for k, v in tensors.items() if "layers.1.self_attn.k_proj" not in k}
  with pytest.raises(ValueError, match="layers.1.self_attn.k_proj"):
    lora.merge_lora(missing, adapter_dir)
