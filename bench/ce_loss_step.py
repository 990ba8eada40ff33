"""The cross-entropy loss's history mask: one B x P x N boolean mask against losses.mask_seen_logits.

  python bench/ce_loss_step.py --rounds 3 --out results/bench/ce_loss_step.md

With config.train.softmax_mask_history (the `*_masked` text-space presets; knn_fit's fitted text baseline
always) a position's input-history items, the target excepted, are no class of the training softmax, as
`full` evaluation leaves them out of the ranking. The loss first built that as a boolean [B, P, N] array (a
scatter into zeros, a compare with the targets, a select over the logits): three passes over an array as
large as the logits. losses.mask_seen_logits instead scatter-adds B x P x L penalties into the logits. This
bench times value_and_grad of the whole loss (logits einsum, mask, negative log-likelihood) with each, and
with no mask at all (what `id_ce` trains with: RecBole's SASRec masks nothing either), at Games' training
step shapes: batch 128, d=64, 16,429 catalogue rows, each of train.length_buckets' widths (4, 8, 16, 50),
random histories and targets. Both masks must give the same loss and gradients bit for bit; the bench stops
if they do not.

Per width: the median over --rounds rounds (the three setups alternate within each round) of the median of
--repeats timed calls after one compile. The epoch column weighs each width by Games' batches per epoch in
that bucket (5-core Games, leave-one-out, 128 users a batch: 246, 86, 42 and 21 of 395 batches; from
input_pipeline.build_rows and bucket_sizes), the mix of a SASRec epoch on Games. One process, every
core XLA takes, the 1-minute load average printed beside.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from recg_jax import losses  # pylint: disable=wrong-import-position

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


MASKS = {
    "boolean": boolean_mask,
    "scatter_add": losses.mask_seen_logits,
    "none": lambda logits, inputs, targets: logits,
}


def loss_and_grads(mask):
  def loss(user_BxPxD, items_NxD, inputs_BxL, targets_BxP, weights_BxP):
    logits_BxPxN = mask(jnp.einsum("bpd,nd->bpn", user_BxPxD, items_NxD), inputs_BxL, targets_BxP)
    return losses.softmax_nll(logits_BxPxN, targets_BxP, weights_BxP)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


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
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  widths = [int(w) for w in args.widths.split(",")]
  fns = {name: loss_and_grads(mask) for name, mask in MASKS.items()}
  seconds = {(name, w): [] for name in MASKS for w in widths}
  for width in widths:
    batch = inputs_for(width)
    outs = {name: jax.block_until_ready(fn(*batch)) for name, fn in fns.items()}  # compiles
    for got, want in zip(jax.tree.leaves(outs["scatter_add"]), jax.tree.leaves(outs["boolean"])):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for _ in range(args.rounds):
      for name, fn in fns.items():
        seconds[name, width].append(timed(fn, batch, args.repeats))
  median = {key: statistics.median(v) for key, v in seconds.items()}
  lines = [
      f"# History-masked cross-entropy, value and gradients (batch {BATCH}, d={DIM}, {ROWS:,} rows)",
      "",
      f"`python bench/ce_loss_step.py --rounds {args.rounds} --repeats {args.repeats}`; jax "
      f"{jax.__version__}, {os.cpu_count()} CPU threads, {jax.devices()[0].platform}; 1-minute load average "
      f"{os.getloadavg()[0]:.2f} at the end. Seconds per call, median of {args.rounds} rounds; both masks "
      "give the same loss and gradients bit for bit.",
      "",
      "| width | batches / Games epoch | boolean mask (s) | scatter-add (s) | no mask (s) "
      "| boolean / scatter-add |",
      "|---|---|---|---|---|---|",
  ]
  for w in widths:
    b, s, n = median["boolean", w], median["scatter_add", w], median["none", w]
    lines.append(f"| {w} | {GAMES_BATCHES.get(w, '-')} | {b:.3f} | {s:.3f} | {n:.3f} | {b / s:.2f}x |")
  if all(w in GAMES_BATCHES for w in widths) and len(widths) == len(GAMES_BATCHES):
    epoch = {name: sum(GAMES_BATCHES[w] * median[name, w] for w in widths) for name in MASKS}
    lines.append(
        f"| Games epoch (loss only) | {sum(GAMES_BATCHES.values())} | {epoch['boolean']:.0f} | "
        f"{epoch['scatter_add']:.0f} | {epoch['none']:.0f} | {epoch['boolean'] / epoch['scatter_add']:.2f}x |"
    )
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
