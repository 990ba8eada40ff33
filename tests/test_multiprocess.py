"""Two processes on this machine run one config end to end, as two hosts would: data, embedding, training,
the sequence-level transfer and evaluation, joined by jax.distributed over CPU collectives (gloo).

The reference is one process with two devices: the same global mesh and the same global batches, so the
two-process run must give the same losses (float tolerance: the all-reduce crosses processes) and the
same metrics. A two-process run killed mid-epoch resumes to exactly the numbers of the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from recg_jax import distributed

import _train_driver as driver
from conftest import read_jsonl

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# 64 synthetic users, batch 8 (4 rows per process): 8 steps per epoch, a checkpoint after every step.
_OVERRIDES = {
    "data.synthetic.num_users": 64,
    "data.synthetic.num_items": 40,
    "data.synthetic.max_history": 10,
    "data.max_len": 8,
    "text.max_tokens": 32,
    "encoder.bucket_sizes": "(32,)",
    "model.hidden_dim": 16,
    "train.batch_size": 8,
    "train.num_epochs": 2,
    "train.length_buckets": "()",
    "eval.length_buckets": "()",
    "train.log_every_steps": 1,
    "train.checkpoint_every_steps": 1,
    "transfer.num_clusters": 4,
    "transfer.kmeans_restarts": 1,
    "transfer.wf_epochs": 1,
    "eval.protocols": "('full','sampled10')",
    "eval.num_sampled_negatives": 10,
}
STEPS_PER_EPOCH = 8
_TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir: pathlib.Path, extra: tuple[str, ...] = (), overrides: dict | None = None) -> list[str]:
  return [
      sys.executable,
      "-m",
      "recg_jax.main",
      "--config=configs/quickstart.py",
      f"--workdir={workdir}",
      *(f"--config.{k}={v}" for k, v in {**_OVERRIDES, **(overrides or {})}.items()),
      *extra,
  ]


def _env(tmp_path_factory, devices: int) -> dict[str, str]:
  env = {**os.environ, **driver.cache_env(tmp_path_factory), "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _start(
    workdir: pathlib.Path, tmp_path_factory, processes: int, extra_overrides: dict | None = None
) -> list[subprocess.Popen]:
  """`processes` local processes of one run (one device each), or one process with two devices."""
  if processes == 1:
    cmds = [_command(workdir, overrides=extra_overrides)]
    env = _env(tmp_path_factory, devices=2)
  else:
    port = _free_port()
    cmds = [
        _command(
            workdir,
            (
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
            ),
            extra_overrides,
        )
        for i in range(processes)
    ]
    env = _env(tmp_path_factory, devices=1)
  workdir.mkdir(parents=True, exist_ok=True)
  return [
      subprocess.Popen(
          cmd,
          cwd=_ROOT,
          env=env,
          stdout=open(workdir.parent / f"{workdir.name}.{i}.log", "w"),
          stderr=subprocess.STDOUT,
      )
      for i, cmd in enumerate(cmds)
  ]


def _log(workdir: pathlib.Path, index: int) -> str:
  return (workdir.parent / f"{workdir.name}.{index}.log").read_text()


def _finish(procs: list[subprocess.Popen], workdir: pathlib.Path) -> None:
  deadline = time.time() + _TIMEOUT_S
  for p in procs:
    try:
      p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"run in {workdir} timed out:\n" + _log(workdir, procs.index(p))[-3000:])
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} failed:\n" + _log(workdir, i)[-5000:]


def _run(workdir: pathlib.Path, tmp_path_factory, processes: int) -> pathlib.Path:
  _finish(_start(workdir, tmp_path_factory, processes), workdir)
  return workdir


def _train_losses(workdir: pathlib.Path) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if r["kind"] == "train"}


def _metrics(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  records = json.loads((workdir / "results.json").read_text())["records"]
  return {r["domain"]: r["metrics"] for r in records}


def _latest_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / "checkpoints" / "latest"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("mp") / "two", tmp_path_factory, processes=2)


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path_factory, two_process_run):
  one = _run(tmp_path_factory.mktemp("mp") / "one", tmp_path_factory, processes=1)
  got, want = _train_losses(two_process_run), _train_losses(one)
  assert sorted(got) == sorted(want) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)
  got_m, want_m = _metrics(two_process_run), _metrics(one)
  assert got_m.keys() == want_m.keys() == {"Alpha", "Beta", "Gamma"}
  for domain, metrics in want_m.items():
    assert got_m[domain].keys() == metrics.keys()
    np.testing.assert_allclose(
        [got_m[domain][k] for k in metrics], list(metrics.values()), atol=1e-6, err_msg=domain
    )
  # Both processes took part; only process 0 wrote the log (a second writer would repeat every record).
  assert "process 1/2" in _log(two_process_run, 1) and "process 0/2" in _log(two_process_run, 0)
  # Only process 0 prints what a user reads: stage lines, progress bars, epoch lines, tables.
  for needle in (
      "[embeddings]",
      "epoch 0:",
      "epoch 1: valid/",
      "[transfer] k-means",
      "W_f epoch",
      "[results]",
  ):
    assert needle in _log(two_process_run, 0) and needle not in _log(two_process_run, 1), needle
  records = read_jsonl(two_process_run / "metrics.jsonl")
  keys = [(r["kind"], r["step"]) for r in records]
  assert len(keys) == len(set(keys)), keys


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_to_the_same_metrics(tmp_path_factory, two_process_run):
  workdir = tmp_path_factory.mktemp("mp") / "killed"
  procs = _start(workdir, tmp_path_factory, processes=2)
  killed_at = None
  deadline = time.time() + _TIMEOUT_S
  try:
    while time.time() < deadline and all(p.poll() is None for p in procs):
      mid = [s for s in _latest_steps(workdir) if s % STEPS_PER_EPOCH]
      if mid:
        killed_at = mid[-1]
        break
      time.sleep(0.01)
  finally:
    for p in procs:
      p.send_signal(signal.SIGKILL)
      p.wait()
  assert killed_at is not None, "no mid-epoch checkpoint before the run ended:\n" + _log(workdir, 0)[-3000:]
  assert not (workdir / "results.json").exists()
  saved = _latest_steps(workdir)
  assert saved and saved[-1] < 2 * STEPS_PER_EPOCH, saved

  _run(workdir, tmp_path_factory, processes=2)
  assert "resuming" in _log(workdir, 0)
  assert _metrics(workdir) == _metrics(two_process_run)  # exact
  losses, want = _train_losses(workdir), _train_losses(two_process_run)
  assert losses == want


@pytest.mark.slow
def test_two_processes_stop_with_a_clear_error_on_an_odd_batch(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mp") / "odd"
  procs = _start(workdir, tmp_path_factory, processes=2, extra_overrides={"train.batch_size": 9})
  for p in procs:
    p.wait(timeout=_TIMEOUT_S)
  for i, p in enumerate(procs):
    assert p.returncode != 0
    assert "config.train.batch_size=9 is not a multiple of the number of processes (2)" in _log(
        workdir, i
    ), _log(workdir, i)[-3000:]


def test_batch_not_divisible_by_processes_is_an_error_in_check_batch_size(monkeypatch):
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 3)
  with pytest.raises(
      ValueError, match=r"train.batch_size=64 is not a multiple of the number of processes \(3\)"
  ):
    distributed.check_batch_size(64)
  distributed.check_batch_size(96)


@pytest.mark.parametrize("count", [2, 3, 5])
def test_process_shares_tile_in_order_and_none_is_empty(monkeypatch, count):
  monkeypatch.setattr(distributed.jax, "process_count", lambda: count)
  for num in (count, 7, 40):
    blocks = [distributed.process_share(num, i) for i in range(count)]
    assert blocks[0].start == 0 and blocks[-1].stop == num
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    sizes = [b.stop - b.start for b in blocks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


_GATHER_WORKER = """
import sys
import numpy as np
from recg_jax import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
total = 7  # blocks of 3 and 4 rows
rows = np.arange(total * 2, dtype=np.float32).reshape(total, 2)
mine = rows[distributed.process_share(total)]
np.testing.assert_array_equal(distributed.gather_rows(mine, total), rows)
ones = np.zeros(total, np.float32)
ones[distributed.process_share(total)] = 1.0
np.testing.assert_array_equal(distributed.sum_over_processes(ones), np.ones(total, np.float32))
print("ok", flush=True)
"""


@pytest.mark.slow
def test_gather_rows_and_sums_across_two_processes(tmp_path):
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", _GATHER_WORKER, f"127.0.0.1:{port}", str(i)],
          cwd=_ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(2)
  ]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0 and out.strip().endswith("ok"), out[-3000:]
