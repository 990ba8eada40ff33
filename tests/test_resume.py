"""A run killed mid-epoch resumes from its last checkpoint and ends exactly where an uninterrupted run does.

Also: a NaN loss stops the run with a clear message and leaves the last good checkpoint in place, and a
finished workdir is not trained again.
"""

import json
import os
import signal
import time

import numpy as np
import pytest

import _train_driver as driver
from conftest import read_jsonl

# 48 users in two length buckets, batch 16: 4 steps per epoch (2 per bucket, shuffled together);
# mid-epoch checkpoints at steps 2, 6, 10 and 14.
ARGS = ("train.num_epochs=4", "train.checkpoint_every_steps=2")
SPE = driver.tiny_layout()["steps_per_epoch"]


def _latest_steps(workdir):
  path = workdir / "checkpoints" / "latest"
  if not path.exists():
    return []
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _params(out):
  with np.load(str(out) + ".params.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path, tmp_path_factory):
  env = driver.cache_env(tmp_path_factory)
  ref_out = tmp_path / "ref.json"
  ref = driver.run(tmp_path / "ref", ref_out, *ARGS, env=env)
  assert ref.returncode == 0, ref.stdout + ref.stderr
  want = json.loads(ref_out.read_text())

  # Slow the input pipeline so the run is still going when its first mid-epoch checkpoint lands.
  wd = tmp_path / "killed"
  proc = driver.run(
      wd, tmp_path / "killed.json", *ARGS, env={**env, "RECG_TEST_STEP_DELAY": "0.4"}, background=True
  )
  killed_at = None
  deadline = time.time() + 180
  try:
    while time.time() < deadline and proc.poll() is None:
      mid = [s for s in _latest_steps(wd) if s % SPE]
      if mid:
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = mid[-1]
        break
      time.sleep(0.02)
  finally:
    if proc.poll() is None and killed_at is None:
      proc.kill()
    proc.wait()
  assert killed_at is not None, (
      "no mid-epoch checkpoint appeared before the run ended:\n" + proc.stdout.read()
  )
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / "killed.json").exists()
  saved = _latest_steps(wd)
  assert saved and saved[-1] % SPE, saved  # resuming from the middle of an epoch

  # A NaN loss (every table row poisoned) stops the run; the good checkpoint stays the latest one.
  nan = driver.run(wd, tmp_path / "nan.json", *ARGS, "poison=1", env=env)
  assert nan.returncode != 0
  assert f"NonFiniteLossError: training loss is nan at step {saved[-1] + 1}" in nan.stderr, nan.stderr
  assert f"last good checkpoint is step {saved[-1]}" in nan.stderr
  assert _latest_steps(wd) == saved[-1:]

  out = tmp_path / "resumed.json"
  resumed = driver.run(wd, out, *ARGS, env=env)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"from step {saved[-1]} (epoch {saved[-1] // SPE}, batch {saved[-1] % SPE})" in resumed.stdout
  got = json.loads(out.read_text())
  assert got["metrics"] == want["metrics"]  # exact, not approximate
  assert got["best_step"] == want["best_step"]
  ref_params, res_params = _params(ref_out), _params(out)
  assert ref_params.keys() == res_params.keys()
  for k in ref_params:
    np.testing.assert_array_equal(res_params[k], ref_params[k], err_msg=k)

  # The log has no duplicated steps from the replayed part of the epoch.
  events = read_jsonl(wd / "metrics.jsonl")
  train_steps = [e["step"] for e in events if e["kind"] == "train"]
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 4 * SPE
  assert [e["epoch"] for e in events if e["kind"] == "valid"] == [1, 2, 3, 4]
  ref_losses = [
      e["loss"]
      for e in read_jsonl(tmp_path / "ref" / "metrics.jsonl")
      if e["kind"] == "train" and e["step"] > saved[-1] + 1
  ]
  assert [e["loss"] for e in events if e["kind"] == "train" and e["step"] > saved[-1] + 1] == ref_losses

  # A finished workdir only re-tests the best checkpoint.
  again = driver.run(wd, tmp_path / "again.json", *ARGS, env=env)
  assert again.returncode == 0, again.stderr
  payload = json.loads((tmp_path / "again.json").read_text())
  assert payload["metrics"] == want["metrics"] and "train_step" not in payload["trace_counts"]

  # Raising num_epochs (constant learning rate) continues the finished run instead of starting over.
  more = driver.run(
      wd, tmp_path / "more.json", "train.num_epochs=5", "train.checkpoint_every_steps=2", env=env
  )
  assert more.returncode == 0, more.stderr
  assert f"from step {4 * SPE} (epoch 4, batch 0)" in more.stdout
  assert json.loads((tmp_path / "more.json").read_text())["epochs"] == 5
  assert _latest_steps(wd) == [5 * SPE]
