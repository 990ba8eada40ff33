"""Data-parallel training over 2 simulated CPU devices matches 1 device (recg_jax/train.py), and so does
the cross-entropy over the catalogue in slices with its batch split over them (recg_jax/losses.py).

The cheap form of test_mesh.py (8 devices, one driver process per device count; both in the slow tier,
as each starts a subprocess that compiles its own programs): a subprocess
with 2 devices trains the session's tiny run (tiny_trained_run, trained on this process's one device) again.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import _train_driver as driver
from conftest import read_jsonl

HERE = pathlib.Path(__file__).resolve().parent
LR = 3e-3  # driver.tiny_config()

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    import _train_driver as driver
    from recg_jax import training
    assert jax.device_count() == 2, jax.devices()
    workdir, overrides = sys.argv[2], json.loads(sys.argv[3])
    domains = driver.tiny_domains()
    result = training.train_and_evaluate(driver.tiny_config(**overrides), workdir, domains,
                                      driver.tiny_tables(domains))
    np.savez(workdir + ".npz", **driver.params_by_path(result.params))
    with open(workdir + ".json", "w") as f:
      json.dump({"metrics": result.metrics, "best_step": result.best_step}, f)
""")


def _train_events(workdir):
  return [e for e in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl") if e["kind"] == "train"]


def _run_on_two_devices(*args: str) -> subprocess.CompletedProcess:
  """`python -c args...` in a subprocess that sees 2 simulated CPU devices; fails the test if it fails."""
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
  env = dict(
      os.environ,
      XLA_FLAGS=xla_flags,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
  )
  proc = subprocess.run(
      [sys.executable, "-c", *args],
      env=env,
      cwd=HERE.parent,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.mark.slow
def test_two_devices_match_one(tiny_trained_run, tiny_trained_overrides, tmp_path):
  _, one = tiny_trained_run
  workdir = tmp_path / "two"
  _run_on_two_devices(_SCRIPT, str(HERE), str(workdir), json.dumps(tiny_trained_overrides))
  two = json.loads((tmp_path / "two.json").read_text())
  with np.load(tmp_path / "two.npz") as f:
    p2 = {k: f[k] for k in f.files}
  p1 = driver.params_by_path(one.params)

  # Same batches and step keys on both meshes; only the reduction order differs.
  l1, l2 = _train_events(one.workdir), _train_events(workdir)
  assert [e["step"] for e in l1] == [e["step"] for e in l2] and len(l1) >= 2
  for key in ("loss", "rec_loss", "gen_loss", "grad_norm"):
    np.testing.assert_allclose([e[key] for e in l2], [e[key] for e in l1], rtol=1e-5, err_msg=key)
  assert two["best_step"] == one.best_step
  driver.assert_params_close(p2, p1, rtol=1e-5, atol=1e-6, noise_atol=LR / 2)
  assert two["metrics"].keys() == one.metrics.keys()
  for k, v in one.metrics.items():
    assert abs(two["metrics"][k] - v) < 0.05, (k, v, two["metrics"][k])


_SLICED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from recg_jax import losses
    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(5)
    user = jnp.asarray(rng.normal(size=(4, 5, 8)), jnp.float32)
    items = jnp.asarray(rng.normal(size=(12, 8)), jnp.float32)
    history = jnp.asarray(rng.integers(0, 10, size=(4, 5)), jnp.int32)
    targets = jnp.asarray(rng.integers(1, 10, size=(4, 5)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, size=(4, 5)), jnp.float32).at[:, -1].set(1.0)

    def loss(u, t, y, w, h, chunk_rows):
      return losses.softmax_loss(u, t, y, w, h, jnp.int32(10), chunk_rows=chunk_rows)

    whole = jax.value_and_grad(loss, argnums=(0, 1))(user, items, targets, weights, history, 0)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    args = [jax.device_put(x, s) for x, s in
            ((user, rows), (items, same), (targets, rows), (weights, rows), (history, rows))]
    step = jax.jit(jax.value_and_grad(lambda *a: loss(*a, 8), argnums=(0, 1)))  # 8 // 4 = 2 positions
    assert "while" in step.lower(*args).as_text()  # it does slice
    sliced = step(*args)
    assert sliced[1][0].sharding.spec == P("data"), sliced[1][0].sharding
    for got, want in zip(jax.tree.leaves(sliced), jax.tree.leaves(whole)):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    print("sliced over 2 devices == whole on 1")
""")


@pytest.mark.slow
def test_the_softmax_in_slices_over_a_batch_split_on_two_devices_equals_the_whole_on_one():
  """Loss and gradients of the sliced cross-entropy, batch sharded over 2 devices, items replicated (as
  the train step lays them out), against the whole batch at once, unsharded."""
  proc = _run_on_two_devices(_SLICED_SCRIPT)
  assert "sliced over 2 devices == whole on 1" in proc.stdout
