"""Data-parallel training over 8 simulated CPU devices matches the 1-device run (recg_jax/train.py)."""

import json

import numpy as np
import pytest

import _train_driver as driver
from conftest import read_jsonl

# One epoch (3 steps of batch 16, one length bucket: the 8-device compile is the slow part of this test),
# each step logged on its own, then one evaluation of each split.
ARGS = ("train.num_epochs=1", "train.log_every_steps=1", "train.length_buckets=[]")
LR = 3e-3  # driver.tiny_config()


def _run(tmp_path, name, env):
  out = tmp_path / f"{name}.json"
  proc = driver.run(tmp_path / name, out, *ARGS, env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with np.load(str(out) + ".params.npz") as f:
    params = {k: f[k] for k in f.files}
  events = [e for e in read_jsonl(tmp_path / name / "metrics.jsonl") if e["kind"] == "train"]
  return json.loads(out.read_text()), params, events


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path, tmp_path_factory):
  env = driver.cache_env(tmp_path_factory)
  one, p1, l1 = _run(tmp_path, "one", env)
  eight, p8, l8 = _run(
      tmp_path, "eight", {**env, "XLA_FLAGS": env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8"}
  )
  assert one["devices"] == 1 and eight["devices"] == 8
  # Same batches, same step keys (threefry is partitionable), only the reduction order differs.
  spe = driver.tiny_layout(**{"train.length_buckets": ()})["steps_per_epoch"]
  assert [e["step"] for e in l1] == [e["step"] for e in l8] == list(range(1, spe + 1))
  for key in ("loss", "rec_loss", "gen_loss", "grad_norm"):
    np.testing.assert_allclose([e[key] for e in l8], [e[key] for e in l1], rtol=1e-5, err_msg=key)
  driver.assert_params_close(p8, p1, rtol=1e-5, atol=1e-6, noise_atol=LR / 2)
  for k, v in one["metrics"].items():
    assert abs(eight["metrics"][k] - v) < 0.05, (k, v, eight["metrics"][k])
