"""The cross-entropy ID reference (`id_ce`) against RecBole's SASRec on Games: one training epoch and one
full-ranking validation pass, side by side in one invocation.

  pip install --no-deps recbole==1.2.1 colorlog==4.7.2 colorama==0.4.4 tabulate texttable thop
  pip install pandas tensorboard
  RECG_DATA_ROOT=<folder with Games/Games.inter> python bench/id_ce_epoch.py --rounds 3 --out FILE.jsonl

Both sides: SASRec over item ids with RecBole's blocks at RecBole's sizes (d=64, 2 layers, 2 heads, FFN 256
with GELU, LayerNorm epsilon 1e-12, N(0, 0.02) weights, dropout 0.5), max_len 50, softmax cross-entropy
over the catalogue, Adam at 1e-3, batch 128, the same 5-core Games file and leave-one-out split, every CPU
thread (torch.set_num_threads(os.cpu_count()); XLA takes all cores). Ours is the `id_ce` preset exactly.

An epoch is what each library calls one: RecBole one row per prefix of each training history (128 prefix
rows a step), ours one row per user with a target at every prefix (128 users a step): the same training
targets, in about 5x fewer, wider steps. The timed epoch is every step of one epoch, after a first epoch
that compiles (ours) or warms up (RecBole); validation is the full ranking of every user's validation
item (ours: both protocols, history masked; RecBole: its full sort). Rounds alternate the two sides;
medians over rounds, with the load average, since a shared machine moves absolute figures.
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

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import amazon_shared  # pylint: disable=wrong-import-position
from recg_jax.config import default  # pylint: disable=wrong-import-position

from recbole_side_by_side import recbole_config_dict  # pylint: disable=wrong-import-position


def recbole_setup(root: str, workdir: str):
  """(trainer, train_data, valid_data, dataset) of RecBole's SASRec at id_ce's settings on Games."""
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
              "train_batch_size": 128,
              "learning_rate": 1e-3,
          },
      ),
  )
  init_seed(config["seed"], config["reproducibility"])
  dataset = create_dataset(config)
  train_data, valid_data, _ = data_preparation(config, dataset)
  model = SASRec(config, train_data._dataset if hasattr(train_data, "_dataset") else train_data.dataset)
  return Trainer(config, model), train_data, valid_data, dataset


def recbole_round(setup, epoch: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  trainer, train_data, valid_data, dataset = setup
  t0 = time.perf_counter()
  trainer._train_epoch(train_data, epoch, show_progress=False)  # pylint: disable=protected-access
  train_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  with torch.no_grad():
    trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
  return {
      "side": "recbole",
      "epoch_s": train_s,
      "valid_s": time.perf_counter() - t0,
      "steps": len(train_data),
      "users": int(dataset.user_num - 1),
  }


class Ours:
  """id_ce on Games: its trainer, state and the epochs run so far."""

  def __init__(self, root: str, workdir: str):
    from recg_jax import pipeline  # pylint: disable=g-import-not-at-top
    from recg_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

    config = amazon_shared.get_config("source=Games,preset=id_ce")
    config.data.root, config.data.targets = root, ()
    self.config = config
    self.domain = pipeline.prepare_data(config, pathlib.Path(workdir))["Games"]
    self.trainer = trainer_lib.create_trainer(config, self.domain, None)
    self.state, self.trainer.state = self.trainer.state, None
    self.epoch = 0

  def epoch_seconds(self) -> float:
    from recg_jax import distributed  # pylint: disable=g-import-not-at-top
    from recg_jax import input_pipeline  # pylint: disable=g-import-not-at-top

    t, bs = self.trainer, int(self.config.train.batch_size)
    batches = input_pipeline.prefetch(
        input_pipeline.stacked_epoch_batches(
            t.rows, bs, t.seeds, self.epoch, 0, part=distributed.local_rows(bs)
        ),
        2,
        t.batch_sharding,
    )
    t0 = time.perf_counter()
    for batch in batches:
      self.state, _ = t.step(self.state, batch)
    jax.block_until_ready(self.state)
    self.epoch += 1
    return time.perf_counter() - t0

  def valid_seconds(self) -> float:
    from recg_jax import evaluate  # pylint: disable=g-import-not-at-top
    from recg_jax.data import types  # pylint: disable=g-import-not-at-top

    params = jax.tree.map(lambda x: x[0], self.state.params)  # the one member
    split = types.leave_one_out(self.domain, "valid", int(self.config.data.max_len))
    t0 = time.perf_counter()
    evaluate.evaluate_split(self.trainer.model, params, None, split, self.domain, self.config.eval, None)
    return time.perf_counter() - t0

  def round(self) -> dict:
    return {
        "side": "ours",
        "epoch_s": self.epoch_seconds(),
        "valid_s": self.valid_seconds(),
        "steps": self.trainer.steps_per_epoch,
        "users": self.domain.num_users,
    }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default="", help="append the JSON lines to this file")
  parser.add_argument("--report", default="", help="only render the table of this JSON-lines file")
  args = parser.parse_args()
  if args.report:
    print(render([json.loads(x) for x in pathlib.Path(args.report).read_text().splitlines() if x.strip()]))
    return
  root = os.environ.get(default.DATA_ROOT_ENV, "")
  if not root or not (pathlib.Path(root) / "Games" / "Games.inter").is_file():
    raise SystemExit(f"set {default.DATA_ROOT_ENV} to the folder that holds Games/Games.inter")
  root = str(pathlib.Path(root).absolute())
  out = str(pathlib.Path(args.out).absolute()) if args.out else ""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)  # RecBole writes log/ and log_tensorboard/ into the working directory
    recbole, ours = recbole_setup(root, tmp), Ours(root, tmp)
    # A first epoch and validation on each side: compiling (ours), allocator and data warm-up (RecBole).
    recbole_round(recbole, 0)
    ours.round()
    for i in range(args.rounds):
      for fn in (lambda i=i: recbole_round(recbole, i + 1), ours.round):
        r = dict(fn(), round=i, load_avg_1m=round(os.getloadavg()[0], 2), cpus=os.cpu_count())
        print(json.dumps(r), flush=True)
        rows.append(r)
        if out:
          with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
  print("\n" + render(rows))


def render(rows: list[dict]) -> str:
  med = lambda side, key: statistics.median(r[key] for r in rows if r["side"] == side)
  n = sum(r["side"] == "ours" for r in rows)
  load = [r["load_avg_1m"] for r in rows]
  lines = [
      f"SASRec-ID with cross-entropy (id_ce), Games ({rows[0]['users']:,} users), {rows[0]['cpus']} CPUs; "
      f"medians of {n} alternating rounds after a warm-up round; load average {min(load)}-{max(load)}",
      "",
      "| side | steps per epoch | training epoch, s | full validation of every user, s |",
      "|---|---|---|---|",
  ]
  for side in ("recbole", "ours"):
    lines.append(
        f"| {side} | {med(side, 'steps'):,} | {med(side, 'epoch_s'):.0f} | {med(side, 'valid_s'):.1f} |"
    )
  lines.append(
      f"| RecBole / ours | | {med('recbole', 'epoch_s') / med('ours', 'epoch_s'):.1f}x | "
      f"{med('recbole', 'valid_s') / med('ours', 'valid_s'):.1f}x |"
  )
  return "\n".join(lines)


if __name__ == "__main__":
  main()
