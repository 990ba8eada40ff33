"""Training and evaluation throughput per backbone on Games (d=256, 2 layers, 2 heads, max_len 50).

  python bench/train_throughput.py                                  # all backbones, batch 128 and 1024
  python bench/train_throughput.py --backbones=sasrec --batch_sizes=128 --windows=2 --steps=3   # quick
  python bench/train_throughput.py --synthetic                      # Games-sized generated data

Games comes from recg_jax.data.prepare (RECG_DATA_ROOT, or ../shared/data/amazon beside the checkout);
--synthetic (or no data found) uses generated data with Games' sizes after 5-core filtering (50,335 users,
16,428 items, history lengths 5..50), which gives the same step shapes, so the same per-step cost.

The frozen item tables are RANDOM 384-d unit vectors (MiniLM's width), not MiniLM embeddings: throughput
does not depend on their values. With --variant=recg (default) the step includes L_gen over three domains:
Games plus two random tables sized like Scientific (4,344 items) and Office (2,420).

Per (backbone, batch size): training sequences/s and targets/s (the real next-item targets a second:
all prefixes per user for SASRec/GRU4Rec, one per prefix row for BERT4Rec), as the median of --windows
timed windows of --steps steps each, after --warmup steps (compile included there); and full-ranking
evaluation users/s on the validation split (both protocols), median of --eval_repeats calls after one
warm-up call. Prints one JSON line per configuration (also appended to --out) and a markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import types  # pylint: disable=g-import-not-at-top,wrong-import-position

GAMES_USERS, GAMES_ITEMS, GAMES_INTERACTIONS = 50_335, 16_428, 437_772
AUX_ITEMS = {"Scientific": 4_344, "Office": 2_420}
TABLE_DIM = 384


def synthetic_games(seed: int = 0) -> types.DomainData:
  """Games' sizes: lengths 5..50 (mean ~8.7), popularity-skewed items."""
  rng = np.random.default_rng(seed)
  extra = rng.geometric(1.0 / (GAMES_INTERACTIONS / GAMES_USERS - 4.0), GAMES_USERS) - 1
  lengths = np.clip(5 + extra, 5, 50)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  popularity = 1.0 / np.arange(1, GAMES_ITEMS + 1) ** 0.8
  items = rng.choice(np.arange(1, GAMES_ITEMS + 1), size=int(offsets[-1]),
                     p=popularity / popularity.sum()).astype(np.int32)
  empty = np.array([""] * (GAMES_ITEMS + 1), dtype=object)
  return types.DomainData(name="Games", item_tokens=np.arange(GAMES_ITEMS + 1).astype(str).astype(object),
                          item_fields={}, item_text=empty,
                          user_tokens=np.arange(GAMES_USERS).astype(str).astype(object), offsets=offsets,
                          items=items, synthetic=True)


def load_games(workdir: str) -> types.DomainData | None:
  root = os.environ.get(default.DATA_ROOT_ENV, "")
  if not root:
    guess = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon"
    root = str(guess) if (guess / "Games" / "Games.inter").exists() else ""
  if not root:
    return None
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data.root = root
  config.data.source, config.data.targets, config.data.auxiliary = "Games", (), ()
  return prepare.load_domains(config, pathlib.Path(workdir))["Games"]


def random_table(num_items: int, seed: int) -> np.ndarray:
  t = np.random.default_rng(seed).standard_normal((num_items + 1, TABLE_DIM)).astype(np.float32)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  t[0] = 0.0
  return t


def bench_config(backbone: str, variant: str, batch_size: int):
  config = default.get_config()
  config.data.source, config.data.targets, config.data.auxiliary = "Games", tuple(AUX_ITEMS), ()
  config.data.max_len = 50
  config.model.backbone, config.model.variant = backbone, variant
  config.model.hidden_dim, config.model.num_layers, config.model.num_heads = 256, 2, 2
  config.train.batch_size = batch_size
  return config


def run_one(domain, tables, backbone, variant, batch_size, args) -> dict:
  config = bench_config(backbone, variant, batch_size)
  trainer = train.create_trainer(config, domain, tables if variant != "id" else None)
  rows = trainer.rows
  real_rows = collections.deque()

  def batches():
    epoch = 0
    while True:
      for batch in input_pipeline.epoch_batches(rows, batch_size, 0, epoch):
        real_rows.append(int((batch["weights"].sum(axis=1) > 0).sum()))
        yield batch
      epoch += 1

  stream = input_pipeline.prefetch(batches(), 2, trainer.batch_sharding)
  state = trainer.state
  trainer.state = None

  def steps(n):
    nonlocal state
    done_rows, targets = 0, []
    for _ in range(n):
      state, metrics = trainer.train_step(state, next(stream), trainer.tables_on_device, trainer.step_key)
      done_rows += real_rows.popleft()
      targets.append(metrics["targets"])
    jax.block_until_ready(state)
    return done_rows, float(np.sum(jax.device_get(targets)))

  t0 = time.perf_counter()
  steps(args.warmup)
  warmup_s = time.perf_counter() - t0
  seq_rates, tgt_rates = [], []
  for _ in range(args.windows):
    t0 = time.perf_counter()
    n_rows, n_targets = steps(args.steps)
    dt = time.perf_counter() - t0
    seq_rates.append(n_rows / dt)
    tgt_rates.append(n_targets / dt)
  stream.close()

  eval_fns = train.make_eval_fns(trainer.model)
  split = types.leave_one_out(domain, "valid", int(config.data.max_len))
  table = trainer.tables_on_device["source"]
  t0 = time.perf_counter()
  train.evaluate_split(eval_fns, state.params, table, split, domain, config.eval, trainer.mesh)
  eval_cold_s = time.perf_counter() - t0
  eval_rates = []
  for _ in range(args.eval_repeats):
    t0 = time.perf_counter()
    train.evaluate_split(eval_fns, state.params, table, split, domain, config.eval, trainer.mesh)
    eval_rates.append(domain.num_users / (time.perf_counter() - t0))
  return {
      "backbone": backbone, "variant": variant, "batch_size": batch_size, "training_rows": rows.num_rows,
      "train_sequences_per_s": round(statistics.median(seq_rates), 1),
      "train_targets_per_s": round(statistics.median(tgt_rates), 1),
      "eval_users_per_s": round(statistics.median(eval_rates), 1) if eval_rates else None,
      "warmup_s": round(warmup_s, 2), "eval_cold_s": round(eval_cold_s, 2),
      "windows": args.windows, "steps_per_window": args.steps,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--synthetic", action="store_true", help="Games-sized generated data")
  parser.add_argument("--workdir", default="", help="data cache folder (default: a temporary one)")
  parser.add_argument("--backbones", default="sasrec,bert4rec,gru4rec")
  parser.add_argument("--batch_sizes", default="128,1024")
  parser.add_argument("--variant", default="recg", choices=("id", "sem", "recg"))
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--eval_repeats", type=int, default=3)
  parser.add_argument("--out", default="", help="append the JSON lines to this file")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    domain = None if args.synthetic else load_games(args.workdir or tmp)
  data = "real Games (recg_jax.data.prepare)" if domain is not None else "synthetic, Games-sized"
  if domain is None:
    domain = synthetic_games()
  tables = {"Games": random_table(domain.num_items, 0)}
  tables.update({name: random_table(n, i + 1) for i, (name, n) in enumerate(AUX_ITEMS.items())})
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  results = []
  for backbone in args.backbones.split(","):
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
      r = run_one(domain, tables, backbone, args.variant, batch_size, args)
      r.update(data=data, users=domain.num_users, items=domain.num_items, device=device,
               jax=jax.__version__, table="random 384-d (not MiniLM)")
      print(json.dumps(r), flush=True)
      if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
          f.write(json.dumps(r) + "\n")
      results.append(r)
  print(f"\n{data}, {device}, d=256, 2 layers, 2 heads, max_len 50, variant {args.variant}, random 384-d "
        "tables; medians")
  print("| backbone | batch | train seq/s | train targets/s | eval users/s (full + sampled100) |")
  print("|---|---|---|---|---|")
  for r in results:
    print(f"| {r['backbone']} | {r['batch_size']} | {r['train_sequences_per_s']:,.0f} | "
          f"{r['train_targets_per_s']:,.0f} | {r['eval_users_per_s'] or 0:,.0f} |")


if __name__ == "__main__":
  main()
