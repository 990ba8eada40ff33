"""RecBole's SASRec against ours on Games, side by side in one process: training targets/s, full evaluation.

  pip install --no-deps recbole==1.2.1 colorlog==4.7.2 colorama==0.4.4 tabulate texttable thop
  pip install pandas tensorboard        # RecBole's remaining imports (torch comes from requirements-dev.txt)
  RECG_DATA_ROOT=<folder with Games/Games.inter> python bench/recbole_side_by_side.py --rounds 2

RecBole is a benchmark-only dependency (its `quick_start` imports ray, so this script builds the dataset,
model and trainer from RecBole's lower-level modules). Both sides read the same RecBole atomic file
(Games.inter, 5-core), use the same sizes (SASRec with item-ID embeddings, d=256, 2 layers, 2 heads,
max_len 50, batch 128) and every CPU thread of the machine (torch.set_num_threads(os.cpu_count()); XLA's
CPU client takes all cores).

What a "target" is: RecBole trains one row per prefix of each training history (one next-item target per
row; BPR with one uniform negative). Ours trains one row per user with a target at every position (all
prefixes at once; BPR with 5 negatives outside the history). Targets/s counts next-item targets per
second on both sides: the unit a training epoch is made of.

Full evaluation: every Games user's test item ranked against all items. RecBole: `Trainer.evaluate` on
its test split (history items masked, Recall/NDCG@10). Ours: `train.evaluate_split` on the validation
split, both protocols (full + sampled100), as bench/train_throughput.py does; the work per user is the
same (one model pass, one score row over the catalogue).

Rounds alternate RecBole and ours (`--rounds`); medians over rounds are printed with the load average,
since a shared machine moves absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import types as pytypes

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from train_throughput import run_one  # pylint: disable=wrong-import-position

from recg_jax.config import default  # pylint: disable=wrong-import-position

from games import games_domain  # pylint: disable=wrong-import-position


def recbole_config_dict(root: str, workdir: str, overrides: dict) -> dict:
  """RecBole settings shared by the benchmarks (CPU, this machine's threads, the RecBole atomic file's
  fields, 5-core, leave-one-out by time, full ranking, Recall/NDCG@10), updated with `overrides`.
  Also sets torch's thread count and the NumPy 1 aliases RecBole 1.2.1 needs."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  # RecBole 1.2.1 predates NumPy 2: its Config re-creates NumPy 1 aliases from names NumPy 2 removed.
  for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
    if old not in np.__dict__:
      setattr(np, old, new)
  return {
      "data_path": root,
      "checkpoint_dir": workdir,
      "device": "cpu",
      "use_gpu": False,
      "gpu_id": "",
      "show_progress": False,
      "save_dataset": False,
      "save_dataloaders": False,
      "USER_ID_FIELD": "user_id",
      "ITEM_ID_FIELD": "item_id",
      "TIME_FIELD": "timestamp",
      "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
      "user_inter_num_interval": "[5,inf)",
      "item_inter_num_interval": "[5,inf)",
      "hidden_dropout_prob": 0.5,
      "attn_dropout_prob": 0.5,
      "eval_batch_size": 4096,
      "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
      "metrics": ["Recall", "NDCG"],
      "topk": [10],
      "valid_metric": "NDCG@10",
      **overrides,
  }


def recbole_setup(root: str, hidden: int, layers: int, heads: int, batch: int, max_len: int, workdir: str):
  """(config, train_data, test_data, trainer, dataset) of RecBole's SASRec on Games."""
  from recbole.config import Config  # pylint: disable=g-import-not-at-top
  from recbole.data import create_dataset  # pylint: disable=g-import-not-at-top
  from recbole.data import data_preparation  # pylint: disable=g-import-not-at-top
  from recbole.model.sequential_recommender import SASRec  # pylint: disable=g-import-not-at-top
  from recbole.trainer import Trainer  # pylint: disable=g-import-not-at-top
  from recbole.utils import init_seed  # pylint: disable=g-import-not-at-top

  config = Config(
      model="SASRec",
      dataset="Games",
      config_dict=recbole_config_dict(
          root,
          workdir,
          {
              "seed": 0,
              "MAX_ITEM_LIST_LENGTH": max_len,
              "hidden_size": hidden,
              "inner_size": hidden,
              "n_layers": layers,
              "n_heads": heads,
              "loss_type": "BPR",
              "train_neg_sample_args": {
                  "distribution": "uniform",
                  "sample_num": 1,
                  "alpha": 1.0,
                  "dynamic": False,
                  "candidate_num": 0,
              },
              "train_batch_size": batch,
              "learning_rate": 1e-4,
          },
      ),
  )
  init_seed(config["seed"], config["reproducibility"])
  dataset = create_dataset(config)
  train_data, _, test_data = data_preparation(config, dataset)
  model = SASRec(config, train_data._dataset if hasattr(train_data, "_dataset") else train_data.dataset)
  trainer = Trainer(config, model)
  return config, train_data, test_data, trainer, dataset


def recbole_round(setup, args) -> dict:
  """Median step time over windows of RecBole training batches, then one full evaluation."""
  import torch  # pylint: disable=g-import-not-at-top

  config, train_data, test_data, trainer, dataset = setup
  model = trainer.model
  model.train()
  optimizer = trainer.optimizer
  batches = iter(train_data)

  def steps(n):
    nonlocal batches
    rows = 0
    for _ in range(n):
      try:
        interaction = next(batches)
      except StopIteration:
        batches = iter(train_data)
        interaction = next(batches)
      optimizer.zero_grad()
      loss = model.calculate_loss(interaction)
      loss.backward()
      optimizer.step()
      rows += len(interaction)
    return rows

  steps(1)  # warm-up
  rates = []
  for _ in range(args.windows):
    t0 = time.perf_counter()
    rows = steps(args.steps)
    rates.append(rows / (time.perf_counter() - t0))
  t0 = time.perf_counter()
  with torch.no_grad():
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
  eval_s = time.perf_counter() - t0
  return {
      "side": "recbole",
      "train_targets_per_s": round(statistics.median(rates), 1),
      "eval_s": round(eval_s, 2),
      "eval_users": int(dataset.user_num - 1),
      "test_ndcg@10_untrained": round(float(result["ndcg@10"]), 5),
  }


def ours_round(domain, args) -> dict:
  bench_args = pytypes.SimpleNamespace(windows=args.windows, steps=args.ours_steps, eval_repeats=1)
  r = run_one(domain, {}, "sasrec", "id", args.batch, bench_args, {})
  return {
      "side": "ours",
      "train_targets_per_s": r["train_targets_per_s"],
      "train_sequences_per_s": r["train_sequences_per_s"],
      "eval_s": r["eval_s"],
      "eval_users": domain.num_users,
      "warmup_s": r["warmup_s"],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--steps", type=int, default=20, help="RecBole batches per timed window")
  parser.add_argument("--ours_steps", type=int, default=5, help="our batches per bucket per timed window")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--out", default="", help="append the JSON lines to this file")
  args = parser.parse_args()
  root = os.environ.get(default.DATA_ROOT_ENV, "")
  if not root or not (pathlib.Path(root) / "Games" / "Games.inter").is_file():
    raise SystemExit(f"set {default.DATA_ROOT_ENV} to the folder that holds Games/Games.inter")
  root = str(pathlib.Path(root).absolute())
  out = str(pathlib.Path(args.out).absolute()) if args.out else ""

  with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)  # RecBole writes log/ and log_tensorboard/ into the working directory
    domain, label = games_domain(False, tmp)
    setup = recbole_setup(root, 256, 2, 2, args.batch, 50, tmp)
    print(
        f"RecBole Games: {setup[4].user_num - 1} users, {setup[4].item_num - 1} items; ours ({label}): "
        f"{domain.num_users} users, {domain.num_items} items",
        flush=True,
    )
    rows = []
    for i in range(args.rounds):
      for fn in (lambda: recbole_round(setup, args), lambda: ours_round(domain, args)):
        r = dict(fn(), round=i, load_avg_1m=round(os.getloadavg()[0], 2), cpus=os.cpu_count())
        print(json.dumps(r), flush=True)
        if out:
          with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        rows.append(r)

  med = lambda side, key: statistics.median(r[key] for r in rows if r["side"] == side)
  print(
      f"\nSASRec (ID), Games, d=256, 2 layers, 2 heads, max_len 50, batch {args.batch}, {os.cpu_count()} "
      f"CPUs; medians of {args.rounds} alternating rounds"
  )
  print("| side | training targets/s | full evaluation of all users, s |")
  print("|---|---|---|")
  for side in ("recbole", "ours"):
    print(f"| {side} | {med(side, 'train_targets_per_s'):,.0f} | {med(side, 'eval_s'):.1f} |")
  print(
      f"| ours / RecBole | {med('ours', 'train_targets_per_s') / med('recbole', 'train_targets_per_s'):.1f}x "
      f"| {med('recbole', 'eval_s') / med('ours', 'eval_s'):.1f}x faster |"
  )


if __name__ == "__main__":
  main()
