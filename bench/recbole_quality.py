"""RecBole's SASRec against ours, trained to convergence on the same file and split, in one invocation.

  pip install --no-deps recbole==1.2.1 colorlog==4.7.2 colorama==0.4.4 tabulate texttable thop
  pip install pandas tensorboard
  RECG_DATA_ROOT=<folder with Scientific/Scientific.inter> python bench/recbole_quality.py

Both sides: SASRec with item-ID embeddings at RecBole's sizes (d=64, 2 layers, 2 heads, max_len 50),
softmax cross-entropy over the catalogue, Adam lr 1e-3, dropout 0.5, early stopping on validation NDCG@10
under full ranking with patience 10, the best checkpoint tested; leave-one-out split of the same RecBole
atomic file; full ranking. RecBole's full sort does not mask the user's history for a sequential model
(its FullSortEvalDataLoader gives sequential models no history items), ours masks it by default
(eval.mask_history): the `_unmasked` rows rank as RecBole does. Differences that stay: RecBole trains one
row per prefix (`--batch` prefix rows per step), ours one row per user with a target at every prefix
(`--ours_batch` users per step, about 5x more targets per step on Scientific).

`--ours` lists our settings to run, each `name:field=value,field=value` (config.model / config.train
fields); the default runs our SASRec as it is, then with RecBole's block details (FFN 4d GELU, LayerNorm
epsilon 1e-12, N(0, 0.02) kernels), then also with RecBole's number of updates per epoch (a smaller user
batch). Each line prints test NDCG@10 / Recall@10, the best epoch and the wall time to reach it.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import amazon_shared  # pylint: disable=wrong-import-position
from recg_jax import config as config_lib  # pylint: disable=wrong-import-position

from recbole_side_by_side import recbole_config_dict  # pylint: disable=wrong-import-position

RECBOLE_BLOCKS = {
    "model.sasrec_ffn_multiplier": 4,
    "model.sasrec_activation": "gelu",
    "model.sasrec_ln_epsilon": 1e-12,
    "model.sasrec_init_std": 0.02,
}
_BLOCKS = ",".join(f"{k}={v}" for k, v in RECBOLE_BLOCKS.items())
# RecBole's full sort does not mask a sequential model's history (its FullSortEvalDataLoader hands
# sequential models no history items): the `_unmasked` rows rank as it does, in validation and test.
DEFAULT_OURS = (
    "ours",
    f"recbole_blocks:{_BLOCKS}",
    f"recbole_blocks_batch32:{_BLOCKS},train.batch_size=32",
    "ours_unmasked:eval.mask_history=False",
    f"recbole_blocks_unmasked:{_BLOCKS},eval.mask_history=False",
)


def run_recbole(root: str, domain: str, args, workdir: str) -> dict:
  from recbole.config import Config  # pylint: disable=g-import-not-at-top
  from recbole.data import create_dataset  # pylint: disable=g-import-not-at-top
  from recbole.data import data_preparation  # pylint: disable=g-import-not-at-top
  from recbole.model.sequential_recommender import SASRec  # pylint: disable=g-import-not-at-top
  from recbole.trainer import Trainer  # pylint: disable=g-import-not-at-top
  from recbole.utils import init_seed  # pylint: disable=g-import-not-at-top

  config = Config(
      model="SASRec",
      dataset=domain,
      config_dict=recbole_config_dict(
          root,
          workdir,
          {
              "seed": args.seed,
              "MAX_ITEM_LIST_LENGTH": 50,
              "hidden_size": 64,
              "inner_size": 256,
              "n_layers": 2,
              "n_heads": 2,
              "hidden_act": "gelu",
              "layer_norm_eps": 1e-12,
              "initializer_range": 0.02,
              "loss_type": "CE",
              "train_neg_sample_args": None,
              "train_batch_size": args.batch,
              "learning_rate": 1e-3,
              "epochs": args.max_epochs,
              "stopping_step": args.patience,
              "eval_step": 1,
          },
      ),
  )
  init_seed(config["seed"], config["reproducibility"])
  dataset = create_dataset(config)
  train_data, valid_data, test_data = data_preparation(config, dataset)
  model = SASRec(config, train_data._dataset if hasattr(train_data, "_dataset") else train_data.dataset)
  trainer = Trainer(config, model)
  t0 = time.perf_counter()
  times = {}
  best = {"score": -1.0, "epoch": -1}

  def on_epoch(epoch_idx, valid_score):
    times[epoch_idx] = time.perf_counter() - t0
    if valid_score > best["score"]:
      # The best weights stay in memory: RecBole 1.2.1 reloads its own checkpoint with torch.load, which
      # PyTorch >= 2.6 refuses by default (weights_only), after hours of training.
      state = {k: v.detach().clone() for k, v in model.state_dict().items()}
      best.update(score=float(valid_score), epoch=int(epoch_idx), state=state)

  trainer.fit(train_data, valid_data, verbose=False, saved=False, show_progress=False, callback_fn=on_epoch)
  total = time.perf_counter() - t0
  model.load_state_dict(best["state"])
  test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
  return {
      "side": "recbole",
      "name": "recbole",
      "test_ndcg@10": float(test["ndcg@10"]),
      "test_recall@10": float(test["recall@10"]),
      "best_valid_ndcg@10": best["score"],
      "best_epoch": best["epoch"] + 1,
      "epochs": len(times),
      "time_to_best_s": times.get(best["epoch"]),
      "total_s": total,
      "users": int(dataset.user_num - 1),
      "items": int(dataset.item_num - 1),
  }


def _literal(value: str):
  """A Python literal (4, 1e-12, True, (1, 2)), else the string itself ('gelu')."""
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def run_ours(root: str, domain: str, spec: str, args, workdir: str) -> dict:
  from recg_jax import pipeline  # pylint: disable=g-import-not-at-top
  from recg_jax import training

  name, _, overrides = spec.partition(":")
  config = amazon_shared.get_config(f"source={domain}")
  config.data.root = root
  config.data.targets = ()
  config.model.variant = "id"
  config.model.hidden_dim, config.model.num_layers, config.model.num_heads = 64, 2, 2
  config.model.dropout = config.model.emb_dropout = 0.5
  config.train.loss = "softmax"
  config.train.learning_rate = 1e-3
  config.train.batch_size = args.ours_batch
  config.train.num_epochs = args.max_epochs
  config.train.patience = args.patience
  config.train.seed = args.seed
  config.train.checkpoint_every_steps = 0
  pairs = [item.partition("=")[::2] for item in filter(None, overrides.split(","))]
  config_lib.override(config, {key: _literal(value) for key, value in pairs}, what=f"--ours {name}")
  run_dir = pathlib.Path(workdir) / name
  domains = pipeline.prepare_data(config, pathlib.Path(workdir))
  t0 = time.perf_counter()
  result = training.train_and_evaluate(config, run_dir, domains, None)
  total = time.perf_counter() - t0
  valid = [
      json.loads(line)
      for line in (run_dir / "metrics.jsonl").read_text().splitlines()
      if '"kind": "valid"' in line
  ]
  best = next(v for v in valid if v["epoch"] == result.best_epoch)
  return {
      "side": "ours",
      "name": name,
      "test_ndcg@10": result.metrics["test/full/ndcg@10"],
      "test_recall@10": result.metrics["test/full/recall@10"],
      "best_valid_ndcg@10": result.metrics["valid/full/ndcg@10"],
      "best_epoch": result.best_epoch,
      "epochs": result.epochs,
      "time_to_best_s": best.get("elapsed_s"),
      "total_s": total,
      "overrides": overrides,
      "users": domains[domain].num_users,
      "items": domains[domain].num_items,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--domain", default="Scientific")
  parser.add_argument("--batch", type=int, default=128, help="RecBole: prefix rows per step")
  parser.add_argument("--ours_batch", type=int, default=128, help="ours: users per step")
  parser.add_argument("--max_epochs", type=int, default=200)
  parser.add_argument("--patience", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ours", nargs="*", default=list(DEFAULT_OURS))
  parser.add_argument("--skip_recbole", action="store_true")
  parser.add_argument("--out", default="", help="append the JSON lines to this file")
  parser.add_argument("--md", default="", help="write the markdown report here")
  parser.add_argument("--report", default="", help="only render the report of this JSON-lines file")
  args = parser.parse_args()
  if args.report:
    rows = [json.loads(line) for line in pathlib.Path(args.report).read_text().splitlines() if line.strip()]
    text = render(rows, args.patience)
    print(text)
    if args.md:
      pathlib.Path(args.md).write_text(text, encoding="utf-8")
    return
  root = os.environ.get(config_lib.DATA_ROOT_ENV, "")
  if not root or not (pathlib.Path(root) / args.domain / f"{args.domain}.inter").is_file():
    raise SystemExit(
        f"set {config_lib.DATA_ROOT_ENV} to the folder that holds {args.domain}/{args.domain}.inter"
    )
  root = str(pathlib.Path(root).absolute())
  out = str(pathlib.Path(args.out).absolute()) if args.out else ""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)  # RecBole writes log/ and log_tensorboard/ into the working directory
    # Ours first: minutes, where RecBole takes hours on a busy CPU.
    jobs = [lambda s=s: run_ours(root, args.domain, s, args, tmp) for s in args.ours]
    jobs += [] if args.skip_recbole else [lambda: run_recbole(root, args.domain, args, tmp)]
    for job in jobs:
      r = dict(
          job(),
          domain=args.domain,
          seed=args.seed,
          cpus=os.cpu_count(),
          load_avg_1m=round(os.getloadavg()[0], 2),
      )
      print(json.dumps(r), flush=True)
      rows.append(r)
      if out:
        with open(out, "a", encoding="utf-8") as f:
          f.write(json.dumps(r) + "\n")
  text = render(rows, args.patience)
  print("\n" + text)
  if args.md:
    pathlib.Path(args.md).write_text(text, encoding="utf-8")


def render(rows: list[dict], patience: int) -> str:
  """The markdown report of the JSON lines: test metrics against RecBole's, epochs and time to the best
  validation NDCG@10 (and its ratio to RecBole's)."""
  ref = next((r for r in rows if r["side"] == "recbole"), None)
  first = rows[0]
  lines = [
      f"# SASRec-ID: RecBole 1.2.1 against ours on {first['domain']}",
      "",
      f"d=64, 2 layers, 2 heads, max_len 50, softmax over the catalogue, Adam lr 1e-3, dropout 0.5, early "
      f"stopping on validation NDCG@10 (full ranking) with patience {patience}, best weights tested; "
      f"leave-one-out split of the same atomic file, full ranking (RecBole's does not mask the user's "
      f"history for a sequential model; ours masks it unless the row says eval.mask_history=False); "
      f"{first['cpus']} CPUs. `python bench/recbole_quality.py --out FILE.jsonl --md FILE.md`; "
      "`--report FILE.jsonl` re-renders. Wall times are those of a shared machine: the load average at "
      "each run's end is in the last column.",
      "",
      "| run | overrides | seed | test NDCG@10 (%) | vs RecBole | test Recall@10 (%) | vs RecBole | "
      "best epoch | epochs run | time to best, s | vs RecBole | load |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  rel = lambda r, key: f"{100 * (r[key] / ref[key] - 1):+.1f}%" if ref and r is not ref else "—"
  for r in rows:
    tb = r.get("time_to_best_s")
    speed = f"{ref['time_to_best_s'] / tb:.1f}x faster" if ref and tb and r is not ref else "—"
    lines.append(
        f"| {r['name']} | {r.get('overrides') or '—'} | {r['seed']} | {100 * r['test_ndcg@10']:.2f} | "
        f"{rel(r, 'test_ndcg@10')} | {100 * r['test_recall@10']:.2f} | {rel(r, 'test_recall@10')} | "
        f"{r['best_epoch']} | {r['epochs']} | {'—' if tb is None else f'{tb:.0f}'} | {speed} | "
        f"{r['load_avg_1m']} |"
    )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
