"""Throughput of full evaluation (both protocols, history masking) on a Games-sized domain.

Scores every user against every item with random user and item vectors (no model: the user vector is
looked up by the last input item), so it measures the evaluation machinery alone: batching, one [B, I+1]
matrix product per batch, masking, ranking, gathering the sampled candidates, metrics.

  python bench/eval_throughput.py                       # Games via recg_jax.data if the data is reachable
  python bench/eval_throughput.py --synthetic           # Games-like sizes, generated
  python bench/eval_throughput.py --dim=64 --batch_size=512

Prints one JSON line with seconds and users/s for a cold call (negatives sampling + compile) and the best
of --repeats warm calls, the process CPU seconds of the best warm call (all threads; a steadier figure
than wall time on a shared machine) and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from recg_jax import eval_negatives as negatives
from recg_jax import evaluate as ev
from recg_jax.config import default  # pylint: disable=g-import-not-at-top
from recg_jax.data import types

from games import games_domain  # pylint: disable=g-import-not-at-top


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--synthetic", action="store_true", help="skip the real data")
  parser.add_argument("--workdir", default="", help="data cache folder (default: a temporary one)")
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=default.get_eval_config().batch_size)
  parser.add_argument("--split", default="test", choices=("valid", "test"))
  parser.add_argument("--score_block_rows", type=int, default=default.get_eval_config().score_block_rows)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  domain, source = games_domain(args.synthetic, args.workdir)
  eval_config = default.get_eval_config()
  eval_config.batch_size = args.batch_size
  eval_config.score_block_rows = args.score_block_rows
  max_len = default.get_data_config().max_len
  split = types.leave_one_out(domain, args.split, max_len)

  rng = np.random.default_rng(0)
  item_vecs = rng.standard_normal((domain.num_items + 1, args.dim), dtype=np.float32)
  item_vecs[0] = 0
  in_table = jnp.asarray(rng.standard_normal((domain.num_items + 1, args.dim), dtype=np.float32))
  # No model: a random user vector, looked up by the user's last input item (nearly free, so the figures
  # are those of the evaluation alone).
  user_fn = jax.jit(lambda seq_BxL: jnp.take(in_table, seq_BxL[:, -1], axis=0))

  t0 = time.perf_counter()
  metrics = ev.evaluate(user_fn, item_vecs, split, domain, eval_config)
  cold = time.perf_counter() - t0
  warm, warm_cpu = [], []
  for _ in range(args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    again = ev.evaluate(user_fn, item_vecs, split, domain, eval_config)
    warm.append(time.perf_counter() - t0)
    warm_cpu.append(time.process_time() - c0)
    assert again == metrics, "evaluation is not deterministic"
  t0 = time.perf_counter()
  negatives.sample_eval_negatives(domain, eval_config.num_sampled_negatives, eval_config.seed)
  sampling = time.perf_counter() - t0
  best = min(warm) if warm else cold
  print(
      json.dumps(
          {
              "data": source,
              "users": domain.num_users,
              "items": domain.num_items,
              "dim": args.dim,
              "batch_size": args.batch_size,
              "protocols": list(eval_config.protocols),
              "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
              "score_block_rows": args.score_block_rows,
              "cpu_count": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2),
              "negatives_s": round(sampling, 3),
              "cold_s": round(cold, 3),
              "warm_s": round(best, 3),
              "warm_cpu_s": round(min(warm_cpu), 3) if warm_cpu else None,
              "users_per_s": round(domain.num_users / best),
              "full/ndcg@10": round(metrics["full/ndcg@10"], 5),
          }
      )
  )


if __name__ == "__main__":
  main()
