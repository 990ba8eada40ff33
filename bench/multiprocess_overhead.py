"""What running as several processes costs: one config trained as one process with one device, one process
with two devices, and two processes with one device each (jax.distributed, CPU collectives over gloo).

  python bench/multiprocess_overhead.py --workdir=DIR --repeats=3

Each setup is a fresh in-domain run of configs/quickstart.py (synthetic data, MiniLM embeddings copied in
from a warm-up run, so no setup re-embeds) started with `python -m recg_jax.main`. The setups alternate
within each repeat. Reported per setup, medians over repeats: the wall time of the whole command, and the
training sequences/s of metrics.jsonl's records after the first epoch (compiles excluded). On one machine
the processes share its cores, so this measures the cost of the machinery (collectives, per-process
copies), not the gain of more hosts. Writes a markdown table to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parents[1]
SETUPS = ("1 process, 1 device", "1 process, 2 devices", "2 processes, 1 device each")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(setup: str, workdir: pathlib.Path, epochs: int, warm_cache: pathlib.Path | None) -> float:
  if workdir.exists():
    shutil.rmtree(workdir)
  if warm_cache is not None:
    shutil.copytree(warm_cache, workdir / "cache")
  base = [
      sys.executable,
      "-m",
      "recg_jax.main",
      "--config=configs/quickstart.py",
      f"--workdir={workdir}",
      "--config.experiment.mode=in_domain",
      f"--config.train.num_epochs={epochs}",
      f"--config.train.patience={epochs}",
      "--config.train.checkpoint_every_steps=0",
  ]
  devices = 2 if setup == SETUPS[1] else 1
  env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",
  }
  if setup == SETUPS[2]:
    port = _free_port()
    cmds = [
        base
        + [
            "--distributed",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        ]
        for i in range(2)
    ]
  else:
    cmds = [base]
  start = time.perf_counter()
  procs = [
      subprocess.Popen(c, cwd=_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for c in cmds
  ]
  for p in procs:
    _, err = p.communicate()
    if p.returncode:
      raise RuntimeError(f"{setup} failed:\n{err[-3000:]}")
  return time.perf_counter() - start


def _steady_rate(workdir: pathlib.Path, steps_per_epoch: int) -> float:
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
  rates = [r["sequences_per_s"] for r in records if r["kind"] == "train" and r["step"] > steps_per_epoch]
  return statistics.median(rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=6)
  parser.add_argument("--out", default="results/bench/multiprocess_overhead.md")
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)
  warm = root / "warm"
  _run(SETUPS[0], warm, 1, None)  # data and embedding caches for every later run
  spe = next(
      json.loads(line)["steps_per_epoch"]
      for line in (warm / "metrics.jsonl").read_text().splitlines()
      if json.loads(line)["kind"] == "setup"
  )
  walls = {s: [] for s in SETUPS}
  rates = {s: [] for s in SETUPS}
  for r in range(args.repeats):
    for i, setup in enumerate(SETUPS):
      wd = root / f"run{i}"
      walls[setup].append(_run(setup, wd, args.epochs, warm / "cache"))
      rates[setup].append(_steady_rate(wd, spe))
      print(
          json.dumps(
              {
                  "repeat": r,
                  "setup": setup,
                  "wall_s": round(walls[setup][-1], 2),
                  "sequences_per_s": round(rates[setup][-1], 1),
                  "load": os.getloadavg()[0],
              }
          ),
          flush=True,
      )
  base_rate = statistics.median(rates[SETUPS[0]])
  lines = [
      f"# Several processes on one CPU ({os.cpu_count()} cores)",
      "",
      f"`python bench/multiprocess_overhead.py --workdir=DIR --repeats={args.repeats} --epochs={args.epochs}`"
      f" (configs/quickstart.py, in-domain, {args.epochs} epochs, medians of {args.repeats} alternating "
      "repeats)",
      "",
      "| setup | wall time of the command | training sequences/s after epoch 1 "
      "| vs one process, one device |",
      "|---|---|---|---|",
  ]
  for setup in SETUPS:
    rate = statistics.median(rates[setup])
    lines.append(
        f"| {setup} | {statistics.median(walls[setup]):.1f} s | {rate:,.0f} | {rate / base_rate:.2f}x |"
    )
  text = "\n".join(lines) + "\n"
  print(text)
  out = _ROOT / args.out
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(text)


if __name__ == "__main__":
  main()
