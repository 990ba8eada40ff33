"""Training and evaluation throughput per backbone on Games (d=256, 2 layers, 2 heads, max_len 50).

  python bench/train_throughput.py                                  # all backbones, batch 128 and 1024
  python bench/train_throughput.py --backbones=sasrec --batch_sizes=128 --windows=2 --steps=3   # quick
  python bench/train_throughput.py --synthetic                      # Games-sized generated data
  python bench/train_throughput.py --backbones=sasrec --batch_sizes=128 --variant=sem --baseline
      # also the unbucketed, full-catalogue setup, side by side in the same process
  python bench/train_throughput.py --backbones=sasrec --batch_sizes=128 --compute_dtypes=float32,bfloat16
      # each setup in every listed train.compute_dtype, side by side in the same process

Games comes from recg_jax.data.prepare (the RecBole folders under RECG_DATA_ROOT);
--synthetic (or no data found) uses generated data with Games' sizes after 5-core filtering (50,335 users,
16,428 items, history lengths 5..50), which gives the same step shapes, so the same per-step cost.

The frozen item tables are RANDOM 384-d unit vectors (MiniLM's width), not MiniLM embeddings: throughput
does not depend on their values. With --variant=recg (default) the step includes L_gen over three domains:
Games plus two random tables sized like Scientific (4,344 items) and Office (2,420).

Batches are length-bucketed as in training (train.length_buckets, default from recg_jax/config/default.py;
--length_buckets overrides it, an empty value means no bucketing: every row padded to max_len). Each
bucket width has its own step shape and cost, so it is timed on its own: after one warm-up step (the
compile), --windows timed windows of --steps steps each of that bucket's batches, median step time. The
epoch time is then the sum over buckets of (batches per epoch x median step time), and the rates are per
epoch: training sequences/s and targets/s (the real next-item targets a second: all prefixes per user for
SASRec/GRU4Rec, one per prefix row for BERT4Rec). Full-ranking evaluation users/s on the validation split
(both protocols, users bucketed by eval.length_buckets, or --eval_length_buckets): median of
--eval_repeats calls after one warm-up call (compile included there, reported as eval_cold_s).

--baseline also runs, in the same process and first, the setup without length buckets and with the
whole catalogue projected every step (train.candidate_scores=full), for a side-by-side comparison. On a
shared machine compare the two only within one invocation; the process CPU seconds (epoch_cpu_s,
eval_cpu_s; all threads) move less with the machine's load than wall time. Prints one JSON line per
configuration (also appended to --out), the 1-minute load average, and a markdown table.

--compute_dtypes runs every setup once per listed train.compute_dtype (mixed precision), one after the
other for each backbone and batch size, so that they share the process, the data and the thread count.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax import evaluate as evaluate_lib
from recg_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.config import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import types  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.training import members as members_lib
from recg_jax.training import trainer as trainer_lib

from games import AUX_ITEMS  # pylint: disable=g-import-not-at-top,wrong-import-position
from games import games_domain  # pylint: disable=g-import-not-at-top,wrong-import-position
from games import TABLE_DIM  # pylint: disable=g-import-not-at-top,wrong-import-position


def random_table(num_items: int, seed: int) -> np.ndarray:
  t = np.random.default_rng(seed).standard_normal((num_items + 1, TABLE_DIM)).astype(np.float32)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  t[0] = 0.0
  return t


def bench_config(
    backbone: str,
    variant: str,
    batch_size: int,
    length_buckets=None,
    eval_length_buckets=None,
    candidate_scores=None,
    compute_dtype=None,
):
  """The benchmarked run's config; None keeps the default value of a field (recg_jax/config/default.py)."""
  config = default.get_config()
  config.data.source, config.data.targets, config.data.auxiliary = "Games", tuple(AUX_ITEMS), ()
  config.data.max_len = 50
  config.model.backbone, config.model.variant = backbone, variant
  config.model.hidden_dim, config.model.num_layers, config.model.num_heads = 256, 2, 2
  config.train.batch_size = batch_size
  if length_buckets is not None:
    config.train.length_buckets = tuple(length_buckets)
  if eval_length_buckets is not None:
    config.eval.length_buckets = tuple(eval_length_buckets)
  if candidate_scores is not None:
    config.train.candidate_scores = candidate_scores
  if compute_dtype is not None:
    config.train.compute_dtype = compute_dtype
  return config


def _per_bucket_batches(rows, batch_size: int, width: int):
  """Endless numpy batches of one bucket, in epoch order (epochs 0, 1, ...), for one member [1, B, ...]."""
  epoch = 0
  while True:
    plan = input_pipeline.epoch_plan(rows, batch_size, 0, epoch)
    for (w, _), batch in zip(plan, input_pipeline.stacked_epoch_batches(rows, batch_size, (0,), epoch)):
      if w == width:
        yield batch
    epoch += 1


def run_one(domain, tables, backbone, variant, batch_size, args, setup: dict) -> dict:
  config = bench_config(backbone, variant, batch_size, **setup)
  trainer = trainer_lib.create_trainer(config, domain, tables if variant != "id" else None)
  rows = trainer.rows
  state = trainer.state
  trainer.state = None
  plan = input_pipeline.epoch_plan(rows, batch_size, 0, 0)
  batches_per_width = collections.Counter(w for w, _ in plan)

  buckets, warmup_s = [], 0.0
  for width in sorted(batches_per_width):
    stream = input_pipeline.prefetch(_per_bucket_batches(rows, batch_size, width), 2, trainer.batch_sharding)

    def steps(n, stream):
      nonlocal state
      for _ in range(n):
        state, _ = trainer.step(state, next(stream))
      jax.block_until_ready(state)

    t0 = time.perf_counter()
    steps(1, stream)  # compile
    warmup_s += time.perf_counter() - t0
    times, cpu_times = [], []
    for _ in range(args.windows):
      t0, c0 = time.perf_counter(), time.process_time()
      steps(args.steps, stream)
      times.append((time.perf_counter() - t0) / args.steps)
      cpu_times.append((time.process_time() - c0) / args.steps)
    stream.close()
    buckets.append(
        {
            "width": width,
            "batches": batches_per_width[width],
            "step_ms": round(1000 * statistics.median(times), 1),
            "step_cpu_ms": round(1000 * statistics.median(cpu_times), 1),
        }
    )
  epoch_s = sum(b["batches"] * b["step_ms"] / 1000 for b in buckets)
  epoch_cpu_s = sum(b["batches"] * b["step_cpu_ms"] / 1000 for b in buckets)

  split = types.leave_one_out(domain, "valid", int(config.data.max_len))
  table = trainer.tables_on_device["source"]
  t0 = time.perf_counter()
  params = members_lib.member_tree(state.params, 0)
  evaluate_lib.evaluate_split(trainer.model, params, table, split, domain, config.eval, trainer.mesh)
  eval_cold_s = time.perf_counter() - t0
  eval_times, eval_cpu = [], []
  for _ in range(args.eval_repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    evaluate_lib.evaluate_split(trainer.model, params, table, split, domain, config.eval, trainer.mesh)
    eval_times.append(time.perf_counter() - t0)
    eval_cpu.append(time.process_time() - c0)
  eval_s = statistics.median(eval_times) if eval_times else None
  return {
      "backbone": backbone,
      "variant": variant,
      "batch_size": batch_size,
      "training_rows": rows.num_rows,
      "length_buckets": list(config.train.length_buckets),
      "candidate_scores": config.train.candidate_scores,
      "compute_dtype": config.train.compute_dtype,
      "eval_length_buckets": list(config.eval.length_buckets),
      "train_sequences_per_s": round(rows.num_rows / epoch_s, 1),
      "train_targets_per_s": round(rows.num_targets / epoch_s, 1),
      "epoch_s": round(epoch_s, 1),
      "epoch_cpu_s": round(epoch_cpu_s, 1),
      "buckets": buckets,
      "eval_users_per_s": round(domain.num_users / eval_s, 1) if eval_s else None,
      "eval_s": round(eval_s, 2) if eval_s else None,
      "eval_cpu_s": round(statistics.median(eval_cpu), 2) if eval_cpu else None,
      "warmup_s": round(warmup_s, 2),
      "eval_cold_s": round(eval_cold_s, 2),
      "windows": args.windows,
      "steps_per_window": args.steps,
  }


def _buckets_arg(value: str | None):
  if value is None:
    return None
  return tuple(int(v) for v in value.split(",") if v.strip())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--synthetic", action="store_true", help="Games-sized generated data")
  parser.add_argument("--workdir", default="", help="data cache folder (default: a temporary one)")
  parser.add_argument("--backbones", default="sasrec,bert4rec,gru4rec")
  parser.add_argument("--batch_sizes", default="128,1024")
  parser.add_argument("--variant", default="recg", choices=("id", "sem", "recg"))
  parser.add_argument(
      "--length_buckets",
      default=None,
      help="comma-separated widths; empty = no bucketing (default: train.length_buckets)",
  )
  parser.add_argument(
      "--eval_length_buckets",
      default=None,
      help="comma-separated widths; empty = none (default: eval.length_buckets)",
  )
  parser.add_argument(
      "--candidate_scores",
      default=None,
      choices=("auto", "factored", "gather", "full"),
      help="train.candidate_scores (default: the config's)",
  )
  parser.add_argument(
      "--compute_dtypes",
      default="float32",
      help="comma-separated train.compute_dtype values, each run side by side (float32, bfloat16)",
  )
  parser.add_argument(
      "--baseline",
      action="store_true",
      help="also run without buckets, with the full-catalogue projection every step",
  )
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--eval_repeats", type=int, default=3)
  parser.add_argument("--out", default="", help="append the JSON lines to this file")
  args = parser.parse_args()

  domain, data = games_domain(args.synthetic, args.workdir)
  tables = {"Games": random_table(domain.num_items, 0)}
  tables.update({name: random_table(n, i + 1) for i, (name, n) in enumerate(AUX_ITEMS.items())})
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  setups = []
  if args.baseline:
    setups.append({"length_buckets": (), "eval_length_buckets": (), "candidate_scores": "full"})
  setups.append(
      {
          "length_buckets": _buckets_arg(args.length_buckets),
          "eval_length_buckets": _buckets_arg(args.eval_length_buckets),
          "candidate_scores": args.candidate_scores,
      }
  )
  setups = [{**setup, "compute_dtype": dtype} for setup in setups for dtype in args.compute_dtypes.split(",")]
  results = []
  load_before = os.getloadavg()[0]
  for backbone in args.backbones.split(","):
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
      for setup in setups:
        r = run_one(domain, tables, backbone, args.variant, batch_size, args, setup)
        r.update(
            data=data,
            users=domain.num_users,
            items=domain.num_items,
            device=device,
            jax=jax.__version__,
            table="random 384-d (not MiniLM)",
            load_avg_1m=round(os.getloadavg()[0], 2),
        )
        print(json.dumps(r), flush=True)
        if args.out:
          with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        results.append(r)
  print(
      f"\n{data}, {device}, d=256, 2 layers, 2 heads, max_len 50, variant {args.variant}, random 384-d "
      f"tables; medians; 1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
      f"({os.cpu_count()} CPUs)"
  )
  print(
      "| backbone | batch | length buckets | candidate scores | compute dtype | train seq/s "
      "| train targets/s | epoch s (CPU s) | eval users/s (full + sampled100) | eval s (CPU s) "
      "| eval buckets |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  fmt = lambda b: ",".join(map(str, b)) or "none"
  for r in results:
    print(
        f"| {r['backbone']} | {r['batch_size']} | {fmt(r['length_buckets'])} | {r['candidate_scores']} | "
        f"{r['compute_dtype']} | {r['train_sequences_per_s']:,.0f} | {r['train_targets_per_s']:,.0f} | "
        f"{r['epoch_s']:,.0f} "
        f"({r['epoch_cpu_s']:,.0f}) | {r['eval_users_per_s'] or 0:,.0f} | {r['eval_s'] or 0:.1f} "
        f"({r['eval_cpu_s'] or 0:.1f}) | {fmt(r['eval_length_buckets'])} |"
    )


if __name__ == "__main__":
  main()
