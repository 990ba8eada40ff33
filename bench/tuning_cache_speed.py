"""A top-blocks tuning step on cached frozen blocks against the same step running the whole encoder.

  RECG_DATA_ROOT=<folder with Scientific/> python bench/tuning_cache_speed.py [--top_layers 2 --batch 64
      --rounds 3 --steps 5] [--out results/bench/tuning_cache_speed.md]

The tuning of the leave-one-domain-out study (MiniLM's top --top_layers blocks, --batch examples of 8
history items and 2 hard negatives, 64 tokens) on Scientific's training histories, the same batches in the
same order on both sides: `tuning.cache_frozen_blocks=False` runs the embeddings and all six blocks every
step; `True` runs the frozen part once per item before the first step (its time is reported apart) and
only the top blocks per step. The rounds alternate sides; examples/s is the median over rounds, and the
break-even is the number of steps after which the cache's one-off pass has paid for itself.
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

from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import encoders  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax import tuning  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.tuning import examples as examples_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from recg_jax.tuning import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=protected-access


def _side(config, base, cache: bool):
  config = config.copy_and_resolve_references()
  config.tuning.cache_frozen_blocks = cache
  spec = tuning._spec(config, base)
  mesh = trainer_lib.make_mesh()
  state = lambda: step_lib.TuningState(
      step=jnp.zeros((), jnp.int32),
      params=base.params,
      opt_state=step_lib.optimizer(spec, base.params).init(base.params),
      log_temperature=jnp.log(jnp.float32(config.tuning.temperature)),
  )
  return spec, step_lib.compiled_step(spec, mesh), state


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--domain", default="Scientific")
  parser.add_argument("--top_layers", type=int, default=2)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  config = config_lib.get_config()
  config.data.root = os.environ.get(config_lib.DATA_ROOT_ENV, "")
  config.data.source, config.data.targets = args.domain, ()
  config.tuning.trainable, config.tuning.top_layers = "top_layers", args.top_layers
  config.tuning.batch_size = args.batch
  tc = config.tuning
  with tempfile.TemporaryDirectory() as tmp:
    domain = prepare.load_domains(config, tmp, log=lambda _: None)[args.domain]
  base = encoders.load_encoder(config.encoder)
  texts = embed.prepare_texts(list(domain.item_text), config.text.empty_fallback)
  table = embed.embed_texts(base, texts, config.encoder, config.text, progress=True)
  examples = examples_lib.build([domain], [table], int(tc.history_len), int(tc.hard_pool))
  ids, mask = tuning._tokens(base, config, [domain])
  batches = [
      examples_lib.sample(examples, args.batch, int(tc.hard_negatives), 0, s)
      for s in range(args.rounds * args.steps + 1)
  ]
  whole, cached = _side(config, base, False), _side(config, base, True)
  t0 = time.perf_counter()
  frozen = tuning._frozen_states(cached[0], base.params, ids, mask, int(tc.cache_batch_size), progress=True)
  cache_s = time.perf_counter() - t0
  rates = {"whole encoder": [], "cached frozen blocks": []}
  for name, (_, fn, state), items in (
      ("whole encoder", whole, None),
      ("cached frozen blocks", cached, frozen),
  ):
    warm = fn(state(), tuning._device_batch(batches[-1], ids, mask, items), base.params)  # compiles
    jax.block_until_ready(warm)
  for r in range(args.rounds):
    for name, (_, fn, state), items in (
        ("whole encoder", whole, None),
        ("cached frozen blocks", cached, frozen),
    ):
      s = state()
      t0 = time.perf_counter()
      for b in batches[r * args.steps : (r + 1) * args.steps]:
        s, metrics = fn(s, tuning._device_batch(b, ids, mask, items), base.params)
      jax.block_until_ready(metrics)
      rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
      print(f"round {r} {name}: {rates[name][-1]:.1f} examples/s", flush=True)
  med = {k: statistics.median(v) for k, v in rates.items()}
  per_step = {k: args.batch / v for k, v in med.items()}
  saved = per_step["whole encoder"] - per_step["cached frozen blocks"]
  payback = f"paid back after {cache_s / saved:.0f} steps" if saved > 0 else "never paid back"
  lines = [
      f"# Tuning the top {args.top_layers} of MiniLM's 6 blocks: cached frozen blocks against the whole "
      "encoder",
      "",
      f"{args.domain} ({len(ids) - 1:,} items, 64 tokens), batches of {args.batch} examples (8 history "
      f"items, {tc.hard_negatives} hard negatives), float32, {os.cpu_count()} CPUs, load average "
      f"{os.getloadavg()[0]:.1f}; {args.rounds} alternating rounds of {args.steps} steps, medians. "
      "`python bench/tuning_cache_speed.py`",
      "",
      "| step runs | examples/s | rounds |",
      "|---|---|---|",
      *(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in rates.items()),
      "",
      f"Cached: {med['cached frozen blocks'] / med['whole encoder']:.2f}x the examples/s. The one-off pass "
      f"over every item took {cache_s:.0f} s ({len(ids) / cache_s:.0f} items/s), {payback}.",
  ]
  text = "\n".join(lines) + "\n"
  print("\n" + text)
  if args.out:
    pathlib.Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
  main()
