"""Our encoder-tuning step against sentence-transformers' own fine-tuning of the same MiniLM, side by side.

  RECG_DATA_ROOT=<folder with Scientific/> python bench/tuning_speed.py [--batch 32 --tokens 64 --rounds 3
      --steps 10] [--out results/bench/tuning_speed.md]

The same (item, next item) text pairs of Scientific's training histories, the same batches in the same
order, batch size, sequence length, learning rate (AdamW 2e-5, weight decay 0.01, no warmup), loss
(in-batch InfoNCE at scale 20 = temperature 0.05: sentence-transformers' MultipleNegativesRankingLoss; ours
with history_len 1, no hard negatives, the batch's positives as candidates) and threads (every core, both
sides). Each side trains --rounds x --steps steps; the rounds alternate sides and each is timed, pairs/s is
the median over rounds. Then both sides' models (and the untuned one) are scored on the same held-out
pairs: the mean reciprocal rank of each pair's second item among every held-out second item, by cosine
with its first item. Ours runs in float32 and in bfloat16 (the tuning.dtype of an accelerator).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import encoders  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import tuning  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import types  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.encoders import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.tuning import examples as examples_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.tuning import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def pairs_of(domain: types.DomainData, seed: int = 0) -> np.ndarray:
  """[N, 2] (item, next item) of every training history, shuffled."""
  out = [(p[t - 1], p[t]) for p in types.training_histories(domain) for t in range(1, len(p))]
  return np.random.default_rng(seed).permutation(np.asarray(out, np.int64))


class Ours:
  """The project's tuning step on pairs."""

  def __init__(self, config, domain, pairs, dtype: str):
    config = config_lib.override(config.copy_and_resolve_references(), {"tuning.dtype": dtype})
    self.base = encoders.load_encoder(config.encoder)
    self.spec = tuning._spec(config, self.base)  # pylint: disable=protected-access
    self.examples = examples_lib.Examples(
        domain_N=np.zeros(len(pairs), np.int64),
        history_NxH=pairs[:, :1],
        positive_N=pairs[:, 1],
        neighbours_GxP=np.zeros((domain.num_items + 1, 0), np.int64),
        offsets=np.array([0, domain.num_items + 1]),
    )
    self.ids, self.mask = tuning._tokens(self.base, config, [domain])  # pylint: disable=protected-access
    mesh = trainer_lib.make_mesh()
    params = jax.device_put(self.base.params)
    self.pretrained = params
    self.state = step_lib.TuningState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=step_lib.optimizer(self.spec, params).init(params),
        log_temperature=jnp.log(jnp.float32(config.tuning.temperature)),
    )
    self.step_fn = step_lib.compiled_step(self.spec, mesh)
    self.config = config

  def train(self, picks_list) -> None:
    for picks in picks_list:
      batch = examples_lib.batch_of(self.examples, picks, 0, np.random.default_rng(0), positives_only=True)
      self.state, metrics = self.step_fn(
          self.state,
          tuning._device_batch(batch, self.ids, self.mask),  # pylint: disable=protected-access
          self.pretrained,
      )
    jax.block_until_ready(metrics["loss"])

  def embed(self, texts) -> np.ndarray:
    import dataclasses  # pylint: disable=g-import-not-at-top

    encoder = dataclasses.replace(self.base, params=jax.device_get(self.state.params))
    c = self.config.encoder.copy_and_resolve_references()
    c.dtype = "float32"
    return embed.embed_texts(encoder, texts, c, self.config.text, progress=False)


class SentenceTransformers:
  """sentence-transformers' MultipleNegativesRankingLoss on the same model, a plain AdamW loop."""

  def __init__(self, folder: str, texts, tokens: int):
    from sentence_transformers import losses  # pylint: disable=g-import-not-at-top
    from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top

    torch.manual_seed(0)
    self.torch, self.texts = torch, texts
    self.model = SentenceTransformer(folder, device="cpu")
    self.model.max_seq_length = tokens
    self.loss = losses.MultipleNegativesRankingLoss(self.model, scale=20.0)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-5, weight_decay=0.01)

  def train(self, picks_list, pairs) -> None:
    self.model.train()
    for picks in picks_list:
      features = [self.model.tokenize([self.texts[i] for i in pairs[picks, k]]) for k in (0, 1)]
      loss = self.loss(features, None)
      loss.backward()
      self.opt.step()
      self.opt.zero_grad()

  def embed(self, texts) -> np.ndarray:
    self.model.eval()
    return self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def mrr(first: np.ndarray, second: np.ndarray) -> float:
  """Mean reciprocal rank of row i of `second` among all rows, by cosine with row i of `first`."""
  first = first / np.linalg.norm(first, axis=1, keepdims=True)
  second = second / np.linalg.norm(second, axis=1, keepdims=True)
  sims = first @ second.T
  ranks = (sims > np.diag(sims)[:, None]).sum(axis=1) + 1
  return float(np.mean(1.0 / ranks))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--tokens", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--heldout", type=int, default=1000)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  root = os.environ.get(config_lib.DATA_ROOT_ENV, "")
  config = config_lib.get_config()
  config_lib.override(
      config,
      {
          "data.root": root,
          "data.source": "Scientific",
          "data.targets": (),
          "tuning.max_tokens": args.tokens,
          "tuning.learning_rate": 2e-5,
          "tuning.warmup_steps": 0,
          "tuning.weight_decay": 0.01,
          "tuning.history_len": 1,
          "tuning.hard_negatives": 0,
      },
  )
  with tempfile.TemporaryDirectory() as tmp:
    domain = prepare.load_domains(config, tmp, log=lambda _: None)["Scientific"]
  texts = embed.prepare_texts(list(domain.item_text), config.text.empty_fallback)
  pairs = pairs_of(domain)
  train, held = pairs[: -args.heldout], pairs[-args.heldout :]
  folder = str(sources.resolve(config.encoder.model, config.encoder.revision).path)
  sides = {
      "ours float32": Ours(config, domain, train, "float32"),
      "ours bfloat16": Ours(config, domain, train, "bfloat16"),
      "sentence-transformers": SentenceTransformers(folder, texts, args.tokens),
  }
  batches = [np.arange(i * args.batch, (i + 1) * args.batch) for i in range(args.rounds * args.steps + 1)]
  sides["ours float32"].train(batches[-1:])  # compile before the clock starts (sentence-transformers has
  sides["ours bfloat16"].train(batches[-1:])  # no compile); the warm-up batch is one no round sees
  seconds = {name: [] for name in sides}
  for r in range(args.rounds):
    for name, side in sides.items():
      chunk = batches[r * args.steps : (r + 1) * args.steps]
      t0 = time.perf_counter()
      side.train(chunk, train) if isinstance(side, SentenceTransformers) else side.train(chunk)
      seconds[name].append(time.perf_counter() - t0)
  held_first, held_second = [texts[i] for i in held[:, 0]], [texts[i] for i in held[:, 1]]
  untuned = Ours(config, domain, train, "float32")
  quality = {"untuned": mrr(untuned.embed(held_first), untuned.embed(held_second))}
  quality.update({name: mrr(side.embed(held_first), side.embed(held_second)) for name, side in sides.items()})
  st_rate = args.batch * args.steps / statistics.median(seconds["sentence-transformers"])
  lines = [
      "# Encoder tuning, ours against sentence-transformers (MultipleNegativesRankingLoss), "
      f"{os.cpu_count()} CPUs",
      "",
      f"`python bench/tuning_speed.py --batch {args.batch} --tokens {args.tokens} --rounds {args.rounds} "
      f"--steps {args.steps}`; Scientific's (item, next item) pairs, {len(held)} held-out pairs; "
      f"load average "
      f"{os.getloadavg()[0]:.1f} at the end",
      "",
      "| side | pairs/s (median of rounds) | vs sentence-transformers | held-out MRR after "
      f"{args.rounds * args.steps} steps (untuned {quality['untuned']:.4f}) |",
      "|---|---|---|---|",
  ]
  for name in sides:
    rate = args.batch * args.steps / statistics.median(seconds[name])
    lines.append(f"| {name} | {rate:.1f} | {rate / st_rate:.2f}x | {quality[name]:.4f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
