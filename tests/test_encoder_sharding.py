"""FSDP-style parameter sharding: the axis rule, and equal embeddings on an 8-device CPU mesh."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recg_jax.encoders import sharding


def test_shard_axis_rule():
  assert sharding.shard_axis((1024, 64), 8, min_size=0) == 0
  assert sharding.shard_axis((64, 1024), 8, min_size=0) == 1
  assert sharding.shard_axis((2, 64, 64), 8, min_size=0) == 2  # tie: the later (feature) axis
  assert sharding.shard_axis((30, 576, 192), 8, min_size=0) == 1
  assert sharding.shard_axis((100, 63), 8, min_size=0) is None  # nothing divisible: replicate
  assert sharding.shard_axis((100, 60), 8, min_size=0) is None
  assert sharding.shard_axis((49152, 576), 8) == 0
  assert sharding.shard_axis((576,), 8) is None  # small: replicate
  assert sharding.shard_axis((1 << 20,), 1) is None  # one device: nothing to split


_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from recg_jax.encoders import llama, sharding

    assert jax.device_count() == 8, jax.devices()
    hf = dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6)
    rng = np.random.RandomState(0)
    shapes = {"embed_tokens.weight": (128, 64), "norm.weight": (64,)}
    for i in range(2):
      for name, shape in [("self_attn.q_proj", (64, 64)), ("self_attn.k_proj", (32, 64)),
                          ("self_attn.v_proj", (32, 64)), ("self_attn.o_proj", (64, 64)),
                          ("mlp.gate_proj", (128, 64)), ("mlp.up_proj", (128, 64)),
                          ("mlp.down_proj", (64, 128))]:
        shapes[f"layers.{i}.{name}.weight"] = shape
      shapes[f"layers.{i}.input_layernorm.weight"] = (64,)
      shapes[f"layers.{i}.post_attention_layernorm.weight"] = (64,)
    tensors = {k: (rng.randn(*s) * 0.2 + (1.0 if "norm" in k else 0.0)).astype(np.float32)
               for k, s in shapes.items()}
    module, params = llama.build(hf, tensors, {"attention": "bidirectional"})

    ids = rng.randint(0, 128, (8, 12)).astype(np.int32)
    mask = (np.arange(12)[None, :] < rng.randint(3, 13, (8, 1))).astype(np.int32)

    def embed(p, ids, mask):
      h = module.apply({"params": p}, ids, mask)
      return (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    expected = np.asarray(jax.jit(embed)(params, ids, mask))

    mesh = Mesh(np.array(jax.devices()), ("data",))
    shardings = sharding.param_sharding(params, mesh, min_size=1024)
    sharded = sharding.shard_params(params, mesh, min_size=1024)
    split = [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(sharded)
             if not leaf.sharding.is_fully_replicated]
    assert split, "no parameter was sharded"
    for name, leaf in split:  # each device holds 1/8 of a split array
      assert leaf.addressable_shards[0].data.size * 8 == leaf.size, name
    emb = sharded["embed_tokens"]["embedding"]
    assert emb.sharding.spec == P("data", None), emb.sharding.spec
    assert sharded["norm"]["scale"].sharding.is_fully_replicated
    assert shardings["layers"]["mlp"]["down_proj"]["kernel"].spec == P(None, "data", None)

    batch = NamedSharding(mesh, P("data"))
    got = jax.jit(embed)(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
    print("OK", len(split))
""")


def test_sharded_params_give_the_same_embeddings():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run(
      [sys.executable, "-c", _SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.strip().startswith("OK")


def test_mesh_without_data_axis_is_an_error():
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top

  mesh = Mesh(np.array(jax.devices()[:1]), ("model",))
  with pytest.raises(ValueError, match="'data'"):
    sharding.param_sharding({"w": np.zeros((4, 4))}, mesh)
