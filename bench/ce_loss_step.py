"""The training softmax at Games' step shapes: the history mask's two forms, and the loss in slices.

  python bench/ce_loss_step.py --rounds 3 --out results/bench/ce_loss_step.md

Times value_and_grad of the whole cross-entropy loss over the catalogue (logits einsum, history mask if
any, negative log-likelihood) at Games' training step shapes: batch 128, d=64, 16,429 catalogue rows, each
of train.length_buckets' widths (4, 8, 16, 50), random histories and targets. Five setups:

- `boolean mask`: the history mask as the loss first built it, a [B, P, N] boolean array (a scatter into
  zeros, a compare with the targets, a select over the logits): three passes over an array as large as the
  logits. With config.train.softmax_mask_history (the `*_masked` text-space presets; knn_fit's fitted text
  baseline always) a position's input-history items, the target excepted, are no class of the softmax.
- `scatter-add mask`: losses.mask_seen_logits, B x P x L penalties added into the logits.
- `no mask`: what `id_ce` trains with (RecBole's SASRec masks nothing either), the whole B x P x N logits
  at once (train.softmax_chunk_rows=0).
- `no mask, sliced` and `scatter-add, sliced`: losses.softmax_loss with the default
  train.softmax_chunk_rows (512 pairs: 4 positions of the batch at a time, recomputed in the backward
  pass; batches of at most 1,024 pairs, widths 4 and 8, are computed at once). `--chunk_rows` sets another.

Both masks must give the same loss and gradients bit for bit, and each sliced setup the loss and gradients
of its whole-batch setup up to float rounding; the bench stops if not.

Per width: the median over --rounds rounds (the setups alternate within each round) of the median of
--repeats timed calls after one compile. The epoch row weighs each width by Games' batches per epoch in
that bucket (5-core Games, leave-one-out, 128 users a batch: 246, 86, 42 and 21 of 395 batches; from
input_pipeline.build_rows and bucket_sizes), the mix of a SASRec epoch on Games. One process, every core
XLA takes, the 1-minute load average printed beside.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import statistics
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from recg_jax import losses  # pylint: disable=wrong-import-position
from recg_jax.config import default  # pylint: disable=wrong-import-position

BATCH, DIM, ROWS = 128, 64, 16_429
# Games' batches per epoch in each bucket of train.length_buckets = (4, 8, 16, 50).
GAMES_BATCHES = {4: 246, 8: 86, 16: 42, 50: 21}


def boolean_mask(logits_BxPxN, inputs_BxL, targets_BxP):
  """The earlier mask: a [B, P, N] boolean array of each position's seen items, the target excepted."""
  batch, length = inputs_BxL.shape
  rows = logits_BxPxN.shape[-1]
  real_BxL = inputs_BxL > 0
  causal_PxL = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
  seen_BxPxL = causal_PxL[None] & real_BxL[:, None, :]
  b, p = jnp.arange(batch)[:, None, None], jnp.arange(length)[None, :, None]
  items_BxPxL = jnp.broadcast_to(inputs_BxL[:, None, :], (batch, length, length))
  seen_BxPxN = jnp.zeros(logits_BxPxN.shape, bool).at[b, p, items_BxPxL].max(seen_BxPxL)
  seen_BxPxN &= jnp.arange(rows)[None, None, :] != targets_BxP[..., None]
  return jnp.where(seen_BxPxN, jnp.finfo(logits_BxPxN.dtype).min, logits_BxPxN)


def no_mask(logits_BxPxN, inputs_BxL, targets_BxP):
  del inputs_BxL, targets_BxP
  return logits_BxPxN


def whole(mask):
  def loss(user_BxPxD, items_NxD, inputs_BxL, targets_BxP, weights_BxP):
    logits_BxPxN = mask(jnp.einsum("bpd,nd->bpn", user_BxPxD, items_NxD), inputs_BxL, targets_BxP)
    return losses.softmax_nll(logits_BxPxN, targets_BxP, weights_BxP)

  return loss


def sliced(masked: bool, chunk_rows: int):
  def loss(user_BxPxD, items_NxD, inputs_BxL, targets_BxP, weights_BxP):
    history = inputs_BxL if masked else None
    return losses.softmax_loss(user_BxPxD, items_NxD, targets_BxP, weights_BxP, history, None, chunk_rows)

  return loss


# name -> (the loss from chunk_rows, the setup it must agree with: exactly or up to rounding)
SETUPS = {
    "boolean mask": (lambda _: whole(boolean_mask), None),
    "scatter-add mask": (lambda _: whole(losses.mask_seen_logits), "boolean mask"),
    "scatter-add, sliced": (functools.partial(sliced, True), "scatter-add mask"),
    "no mask": (lambda _: whole(no_mask), None),
    "no mask, sliced": (functools.partial(sliced, False), "no mask"),
}


def inputs_for(width: int):
  rng = np.random.default_rng(width)
  user = jnp.asarray(rng.normal(size=(BATCH, width, DIM)), jnp.float32)
  items = jnp.asarray(rng.normal(size=(ROWS, DIM)) * 0.05, jnp.float32)
  inputs = jnp.asarray(rng.integers(1, ROWS, size=(BATCH, width)), jnp.int32)
  targets = jnp.asarray(rng.integers(1, ROWS, size=(BATCH, width)), jnp.int32)
  return user, items, inputs, targets, jnp.ones((BATCH, width), jnp.float32)


def timed(fn, args, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--widths", default="4,8,16,50")
  parser.add_argument("--chunk_rows", type=int, default=default.get_config().train.softmax_chunk_rows)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  losses_of = {name: make(args.chunk_rows) for name, (make, _) in SETUPS.items()}
  widths = [int(w) for w in args.widths.split(",")]
  fns = {name: jax.jit(jax.value_and_grad(loss, argnums=(0, 1))) for name, loss in losses_of.items()}
  seconds = {(name, w): [] for name in SETUPS for w in widths}
  for width in widths:
    batch = inputs_for(width)
    outs = {name: jax.block_until_ready(fn(*batch)) for name, fn in fns.items()}  # compiles
    for name, (_, reference) in SETUPS.items():
      if reference == "boolean mask":
        chex.assert_trees_all_equal(outs[name], outs[reference])
      elif reference:
        chex.assert_trees_all_close(outs[name], outs[reference], rtol=1e-4, atol=1e-6)
    for _ in range(args.rounds):
      for name, fn in fns.items():
        seconds[name, width].append(timed(fn, batch, args.repeats))
  median = {key: statistics.median(v) for key, v in seconds.items()}
  names = list(SETUPS)
  lines = [
      f"# Cross-entropy over the catalogue, value and gradients (batch {BATCH}, d={DIM}, {ROWS:,} rows)",
      "",
      f"`python bench/ce_loss_step.py --rounds {args.rounds} --repeats {args.repeats} "
      f"--chunk_rows {args.chunk_rows}`; jax "
      f"{jax.__version__}, {os.cpu_count()} CPU threads, {jax.devices()[0].platform}; 1-minute load average "
      f"{os.getloadavg()[0]:.2f} at the end. Seconds per call, median of {args.rounds} rounds. The two masks "
      "give the same loss and gradients bit for bit, the sliced setups those of their whole-batch ones up "
      "to float rounding.",
      "",
      "| width | batches / Games epoch | " + " | ".join(f"{n} (s)" for n in names) + " |",
      "|---" * (len(names) + 2) + "|",
  ]
  for w in widths:
    cells = " | ".join(f"{median[n, w]:.3f}" for n in names)
    lines.append(f"| {w} | {GAMES_BATCHES.get(w, '-')} | {cells} |")
  if sorted(widths) == sorted(GAMES_BATCHES):
    epoch = {n: sum(GAMES_BATCHES[w] * median[n, w] for w in widths) for n in names}
    cells = " | ".join(f"{epoch[n]:.0f}" for n in names)
    lines.append(f"| Games epoch (loss only) | {sum(GAMES_BATCHES.values())} | {cells} |")
    lines += [
        "",
        "Over a Games epoch: the scatter-add mask is "
        f"{epoch['boolean mask'] / epoch['scatter-add mask']:.2f}x as fast as the boolean one; slices make "
        "the unmasked loss "
        f"{epoch['no mask'] / epoch['no mask, sliced']:.2f}x and the masked one "
        f"{epoch['scatter-add mask'] / epoch['scatter-add, sliced']:.2f}x as fast.",
    ]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
