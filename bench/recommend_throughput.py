r"""Recommendation throughput and peak memory: blocked top-k against one full [B, N] score matrix.

Two catalogues; each side runs in a process of its own (so the peak memory is its own), and the sides
alternate over rounds:

  games  the real path on the Games catalogue (RecBole Games.item under $RECG_DATA_ROOT, every item of the
         file): the catalogue and the histories of every Games user (Games.inter) are read, the items
         embedded with the run's encoder into its cache (once; later processes reuse it), then
         Run.recommend ranks the catalogue for every user: user vectors and top-k. Users/s of that call.
  1m     the scoring stage alone on a generated catalogue of 2^20 items: seeded random item vectors of the
         run's width (embedding a million texts with MiniLM takes hours on a CPU), the run's user vectors
         of the first --users_1m Games users, their Games histories excluded. Users/s of topk.rank.

Sides: `blocked` (recg_jax/config/serving.py's item_block_rows) and `full` (item_block_rows=0: the whole
catalogue as one block, i.e. one [batch, N] score matrix and one lax.top_k, the naive form). Each process
times --repeats warm calls after one cold call (compiling, and embedding when not cached) and reports the
median; the report gives the median over rounds. Memory: the process's peak resident set (ru_maxrss), its
growth from just before the first ranking call to the end, and the temporary buffers XLA allocates for
one call of the compiled top-k program (memory_analysis).

  python bench/recommend_throughput.py --workdir=RUN --out=results/bench/recommend_throughput.md

RUN is a finished run on the shared data, e.g.
  python -m recg_jax.main --config=configs/amazon_shared.py --workdir=RUN --config.model.hidden_dim=64 \
      --config.model.num_layers=1 --config.train.num_epochs=3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax.config import default  # pylint: disable=g-import-not-at-top,wrong-import-position

SIDES = ("blocked", "full")
STAGES = ("games", "1m")
ITEMS_1M = 1 << 20


def _maxrss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _settings(args, side: str):
  from recg_jax.config import serving as serving_config  # pylint: disable=g-import-not-at-top

  settings = serving_config.get_config()
  settings.user_batch_size = args.user_batch
  settings.item_block_rows = args.block_rows if side == "blocked" else 0
  return settings


def _xla_temp_mib(blocks, batch: int, dim: int, hist_width: int, num_items: int, k: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top

  from recg_jax.serving import topk  # pylint: disable=g-import-not-at-top

  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  compiled = topk.blocked_top_k.lower(
      spec((batch, dim), np.float32), blocks, spec((batch, hist_width), np.int32), np.int32(num_items), k=k
  ).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def _first_users(histories, n: int):
  n = min(n, histories.num_users)
  end = int(histories.offsets[n])
  return dataclasses.replace(
      histories,
      user_ids=histories.user_ids[:n],
      offsets=histories.offsets[: n + 1],
      items=histories.items[:end],
  )


def child(args) -> dict:
  """One side of one stage, in this process: prints its figures as one JSON line."""
  import jax  # pylint: disable=g-import-not-at-top

  from recg_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  from recg_jax import serving  # pylint: disable=g-import-not-at-top
  from recg_jax.serving import topk  # pylint: disable=g-import-not-at-top

  stage, side = args.child.split(":")
  root = pathlib.Path(os.environ.get(default.DATA_ROOT_ENV, "")) / "Games"
  run = serving.load(args.workdir, settings=_settings(args, side), progress=False)
  if stage == "prepare":  # the catalogue's embeddings into the run's cache, before anything is timed
    t0 = time.perf_counter()
    run.embeddings(run.catalogue(root / "Games.item"))
    return {"stage": stage, "embed_s": time.perf_counter() - t0}
  t0 = time.perf_counter()
  catalogue = run.catalogue(root / "Games.item")
  histories = run.histories(root / "Games.inter", catalogue)
  read_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  items = run.item_vectors(catalogue)  # embeds (or reads the cache) and projects the catalogue
  prepare_s = time.perf_counter() - t0
  dim, k, batch = items.shape[1], args.k, min(args.user_batch, histories.num_users)
  out = {
      "stage": stage,
      "side": side,
      "run": f"{run.config.model.backbone}-{run.config.model.variant} "
      f"({results_lib.config_summary(run.config)}), source {run.config.data.source}, {run.head} head",
      "dim": dim,
      "k": k,
      "user_batch": batch,
      "read_s": read_s,
      "embed_and_project_s": prepare_s,
      "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
  }

  if stage == "games":
    users, num_items = histories.num_users, catalogue.num_items
    call = lambda: run.recommend(histories, k=k)
    blocks = run._prepared.blocks  # pylint: disable=protected-access
  else:
    subset = _first_users(histories, args.users_1m)
    user_UxD = run.user_vectors(subset)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((ITEMS_1M + 1, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
    vectors[0] = 0.0
    rows = args.block_rows if side == "blocked" else ITEMS_1M + 1
    blocks = jax.device_put(topk.pad_blocks(vectors, rows))
    del vectors
    users, num_items = subset.num_users, ITEMS_1M

    def batches():
      for lo in range(0, users, batch):
        users_B = np.minimum(np.arange(lo, lo + batch), users - 1)
        yield (
            users_B,
            min(batch, users - lo),
            jax.device_put(user_UxD[users_B]),
            subset.exclusion_rows(users_B, 64),
        )

    call = lambda: topk.rank(batches(), blocks, num_items, users, k)
    histories = subset
  hist_width = histories.exclusion_rows(np.arange(1), 64).shape[1]
  out["xla_temp_mib"] = _xla_temp_mib(blocks, batch, dim, hist_width, num_items, k)
  out.update(users=users, items=num_items)
  rss_before = _maxrss_mib()
  t0 = time.perf_counter()
  call()
  out["cold_s"] = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  out.update(
      seconds=times,
      median_s=statistics.median(times),
      users_per_s=users / statistics.median(times),
      maxrss_mib=_maxrss_mib(),
      rss_growth_mib=_maxrss_mib() - rss_before,
  )
  return out


def _run_child(args, stage: str, side: str) -> dict:
  cmd = [
      sys.executable,
      __file__,
      f"--child={stage}:{side}",
      f"--workdir={args.workdir}",
      f"--repeats={args.repeats}",
      f"--k={args.k}",
      f"--user_batch={args.user_batch}",
      f"--block_rows={args.block_rows}",
      f"--users_1m={args.users_1m}",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{stage}:{side} failed:\n{proc.stderr[-4000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  print(json.dumps(result), flush=True)
  return result


def _report(args, results: list[dict], embed_s: float, wall_s: float) -> str:
  by = {
      (s, side): [r for r in results if r["stage"] == s and r["side"] == side]
      for s in STAGES
      for side in SIDES
  }
  med = lambda rs, key: statistics.median(r[key] for r in rs)
  first = results[0]
  lines = [
      "# Recommendation throughput: blocked top-k against one full score matrix",
      "",
      f"- command: `python bench/recommend_throughput.py --workdir=RUN --rounds={args.rounds} "
      f"--repeats={args.repeats} --k={args.k} --user_batch={args.user_batch} --block_rows={args.block_rows} "
      f"--users_1m={args.users_1m}`",
      f"- machine: {os.cpu_count()} CPUs, {first['devices']}; load average at the end "
      f"{os.getloadavg()[0]:.1f}; whole benchmark {wall_s / 60:.1f} min",
      f"- run: {first['run']}",
      f"- model: the run's user and item vectors, width {first['dim']}; top {args.k}; "
      f"{first['user_batch']} users per batch; blocked = {args.block_rows} catalogue rows per block, full = "
      "the whole catalogue as one block",
      "- games: the real path (Games.item and Games.inter, every user; user vectors + top-k, warm). "
      f"1m: top-k alone over {ITEMS_1M:,} generated item vectors (seeded random, not embedded texts) for the "
      f"first {args.users_1m:,} Games users' real vectors",
      f"- each cell: median over {args.rounds} processes (sides alternating) of each process's median of "
      f"{args.repeats} warm calls",
      "",
      "| catalogue | items | users | side | users/s | ratio | peak RSS (MiB) | "
      "RSS growth while ranking (MiB) | "
      "XLA temp buffers per call (MiB) |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for stage in STAGES:
    base = med(by[(stage, "full")], "users_per_s")
    for side in SIDES:
      rs = by[(stage, side)]
      lines.append(
          f"| {stage} | {rs[0]['items']:,} | {rs[0]['users']:,} | {side} | "
          f"{med(rs, 'users_per_s'):,.0f} | "
          f"{med(rs, 'users_per_s') / base:.2f}x | {med(rs, 'maxrss_mib'):,.0f} | "
          f"{med(rs, 'rss_growth_mib'):,.0f} | {med(rs, 'xla_temp_mib'):,.1f} |"
      )
  cold = [r for r in results if r["stage"] == "games"]
  lines += [
      "",
      f"Games, first call in a process (compiling included): {med(cold, 'cold_s'):.1f} s; reading "
      f"Games.item and Games.inter: {med(cold, 'read_s'):.1f} s; reading the catalogue's embeddings "
      "from "
      f"the cache and projecting them: {med(cold, 'embed_and_project_s'):.1f} s; before the rounds, "
      f"embedding Games.item (or finding it cached): {embed_s:.0f} s.",
      "",
  ]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a finished run on the shared data")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--k", type=int, default=20)
  parser.add_argument("--user_batch", type=int, default=512)
  parser.add_argument("--block_rows", type=int, default=8192)
  parser.add_argument("--users_1m", type=int, default=1024)
  parser.add_argument("--out", default="", help="also write the markdown report here")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args)), flush=True)
    return
  if not os.environ.get(default.DATA_ROOT_ENV):
    sys.exit(f"set {default.DATA_ROOT_ENV} to the folder holding Games/Games.item and Games/Games.inter")
  start = time.perf_counter()
  prepared = _run_child(args, "prepare", SIDES[0])
  results = []
  for r in range(args.rounds):
    for stage in STAGES:
      for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
        results.append(_run_child(args, stage, side))
  report = _report(args, results, prepared["embed_s"], time.perf_counter() - start)
  print(report)
  if args.out:
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = "\n".join(json.dumps(r) for r in results)
    path.write_text(f"{report}\nEvery process's figures:\n\n```\n{raw}\n```\n")


if __name__ == "__main__":
  main()
