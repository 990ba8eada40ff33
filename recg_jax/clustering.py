"""K-means over user vectors and the attention read-out of the sequence-level transfer (method step 7).

`kmeans` is Lloyd's algorithm in jnp with greedy k-means++ seeding (as in scikit-learn: each new centre is
the best of `local_trials` candidates drawn proportionally to D^2), several restarts (the lowest inertia
wins) and a point-chunked distance pass, so that N x K distances never exist at once: a pass scans over
fixed-size chunks of points (the last one zero-padded and masked) and accumulates per-cluster sums, counts
and the inertia. Memory is O(N*D + chunk*K + K*D).

Empty clusters: after an update, every cluster that received no point is moved onto one of the points
farthest from their assigned centre (the i-th empty cluster onto the i-th farthest point), as
scikit-learn does; the donor cluster keeps that point in its mean until the next assignment.

Convergence: iterations stop after `iters` updates or once the total squared centre shift is at most
`tol * mean_j Var(x[:, j])` (scikit-learn's relative tolerance). The returned inertia is recomputed with the
returned centres, so it is the exact k-means objective of those centres.
"""

from __future__ import annotations

import functools
import math

import jax
from jax import lax
import jax.numpy as jnp

from recg_jax import errors

# Distances use the expanded |x|^2 - 2 x.c + |c|^2; keep the full f32 product (no TF32/bf16 passes on
# accelerators), since the cancellation in that formula amplifies low-precision matmuls.
_HIGHEST = lax.Precision.HIGHEST
_NORM_EPS = 1e-12


def _sq_dist(x_MxD: jax.Array, xsq_M: jax.Array, c_KxD: jax.Array) -> jax.Array:
  """[M, K] squared Euclidean distances, clamped at 0 (rounding can make them slightly negative)."""
  csq_K = jnp.sum(c_KxD * c_KxD, axis=-1)
  cross = jnp.matmul(x_MxD, c_KxD.T, precision=_HIGHEST)
  return jnp.maximum(xsq_M[:, None] - 2.0 * cross + csq_K[None, :], 0.0)


def _pass(x_CxMxD, xsq_CxM, w_CxM, centres_KxD):
  """One assignment pass over the chunks.

  Returns per-point labels and squared distances [C, M], per-cluster weighted sums [K, D] and counts [K],
  and the weighted inertia.
  """
  k, dim = centres_KxD.shape

  def body(carry, chunk):
    sums, counts, inertia = carry
    x, xsq, w = chunk
    d2 = _sq_dist(x, xsq, centres_KxD)
    labels = jnp.argmin(d2, axis=-1)
    best = jnp.take_along_axis(d2, labels[:, None], axis=-1)[:, 0]
    onehot_MxK = jax.nn.one_hot(labels, k, dtype=x.dtype) * w[:, None]
    sums = sums + jnp.matmul(onehot_MxK.T, x, precision=_HIGHEST)
    counts = counts + jnp.sum(onehot_MxK, axis=0)
    inertia = inertia + jnp.sum(best * w)
    return (sums, counts, inertia), (labels, best)

  init = (jnp.zeros((k, dim), x_CxMxD.dtype), jnp.zeros((k,), x_CxMxD.dtype), jnp.zeros((), x_CxMxD.dtype))
  (sums, counts, inertia), (labels, d2) = lax.scan(body, init, (x_CxMxD, xsq_CxM, w_CxM))
  return labels, d2, sums, counts, inertia


def _kmeanspp(x_NxD, xsq_N, w_N, key, k: int, local_trials: int):
  """Greedy k-means++ seeding over the valid (w = 1) rows; returns [K, D] centres."""
  n = x_NxD.shape[0]
  uniform_N = w_N / jnp.sum(w_N)
  key, sub = jax.random.split(key)
  first = jax.random.choice(sub, n, p=uniform_N)
  centres = jnp.zeros((k, x_NxD.shape[1]), x_NxD.dtype).at[0].set(x_NxD[first])
  closest_N = _sq_dist(x_NxD, xsq_N, x_NxD[first][None])[:, 0] * w_N

  def step(i, carry):
    centres, closest_N, key = carry
    key, sub = jax.random.split(key)
    potential = jnp.sum(closest_N)
    # If every valid point already coincides with a centre (fewer distinct points than K), D^2 is all
    # zero; fall back to uniform draws rather than dividing by zero.
    p_N = jnp.where(potential > 0, closest_N / jnp.where(potential > 0, potential, 1.0), uniform_N)
    cand_T = jax.random.choice(sub, n, shape=(local_trials,), p=p_N)
    d2_NxT = _sq_dist(x_NxD, xsq_N, x_NxD[cand_T]) * w_N[:, None]
    new_NxT = jnp.minimum(closest_N[:, None], d2_NxT)
    best = jnp.argmin(jnp.sum(new_NxT, axis=0))
    centres = centres.at[i].set(x_NxD[cand_T[best]])
    return centres, new_NxT[:, best], key

  centres, _, _ = lax.fori_loop(1, k, step, (centres, closest_N, key))
  return centres


def _lloyd_update(x_CxMxD, xsq_CxM, w_CxM, centres_KxD):
  """One Lloyd step: assign, then move each centre to its cluster mean (empty clusters re-seeded)."""
  k = centres_KxD.shape[0]
  _, d2_CxM, sums, counts, _ = _pass(x_CxMxD, xsq_CxM, w_CxM, centres_KxD)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  empty_K = counts == 0

  def relocate(means):
    x_NxD = x_CxMxD.reshape(-1, x_CxMxD.shape[-1])
    # Padding rows get -1 so they are never chosen.
    num_far = min(k, x_NxD.shape[0])
    far_idx = lax.top_k(jnp.where(w_CxM > 0, d2_CxM, -1.0).reshape(-1), num_far)[1]
    rank_K = jnp.clip(jnp.cumsum(empty_K) - 1, 0, num_far - 1)
    return jnp.where(empty_K[:, None], x_NxD[far_idx[rank_K]], means)

  return lax.cond(jnp.any(empty_K), relocate, lambda m: m, means)


@functools.partial(jax.jit, static_argnames=("n", "k", "local_trials"))
def _kmeans_single(x_CxMxD, w_CxM, key, iters, tol_abs, n: int, k: int, local_trials: int):
  """One seeded k-means run on chunked, centred data. Returns (centres [K, D], inertia, iterations run)."""
  num_chunks, m, dim = x_CxMxD.shape
  xsq_CxM = jnp.sum(x_CxMxD * x_CxMxD, axis=-1)
  # Seed on the n real rows only, so the random draws (and the result) do not depend on the chunk size.
  x_NxD = x_CxMxD.reshape(num_chunks * m, dim)[:n]
  centres = _kmeanspp(x_NxD, xsq_CxM.reshape(-1)[:n], w_CxM.reshape(-1)[:n], key, k, local_trials)

  def cond(state):
    _, it, shift = state
    return jnp.logical_and(it < iters, shift > tol_abs)

  def body(state):
    centres, it, _ = state
    new = _lloyd_update(x_CxMxD, xsq_CxM, w_CxM, centres)
    shift = jnp.sum((new - centres) ** 2)
    return new, it + 1, shift

  init = (centres, jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, jnp.float32))
  centres, it, _ = lax.while_loop(cond, body, init)
  inertia = _pass(x_CxMxD, xsq_CxM, w_CxM, centres)[4]
  return centres, inertia, it


def _chunked(x_NxD: jax.Array, chunk: int):
  """Zero-pads N up to a multiple of `chunk` (at most N) and reshapes to [C, M, D] plus weights [C, M]."""
  n, dim = x_NxD.shape
  m = max(1, min(int(chunk), n))
  num_chunks = -(-n // m)
  pad = num_chunks * m - n
  x = jnp.pad(x_NxD, ((0, pad), (0, 0))).reshape(num_chunks, m, dim)
  w = jnp.pad(jnp.ones((n,), x_NxD.dtype), (0, pad)).reshape(num_chunks, m)
  return x, w


def _check_points(x_NxD, name: str) -> jax.Array:
  x = jnp.asarray(x_NxD, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f"{name}: expected points of shape [N, D], got {x.shape}")
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f"{name}: points contain NaN or inf")
  return x


def kmeans(
    x_NxD,
    k: int,
    key: jax.Array,
    iters: int = 100,
    restarts: int = 3,
    tol: float = 1e-6,
    chunk: int = 65536,
    local_trials: int | None = None,
) -> tuple[jax.Array, float]:
  """K-means (k-means++ seeding, Lloyd iterations, best of `restarts`) on the rows of x.

  Args:
    x_NxD: points (e.g. source user vectors), cast to float32.
    k: number of clusters (config.transfer.num_clusters); 1 <= k <= N.
    key: PRNG key; the result is a deterministic function of (x, k, key, ...).
    iters: maximum Lloyd updates per restart (config.transfer.kmeans_iters); 0 keeps the seeding.
    restarts: independent seedings; the lowest inertia wins (config.transfer.kmeans_restarts).
    tol: relative tolerance on the total squared centre shift (config.transfer.kmeans_tol).
    chunk: points per distance chunk (config.transfer.kmeans_chunk); bounds the [chunk, K] buffers.
    local_trials: k-means++ candidates per new centre; None = 2 + floor(ln k) (scikit-learn's greedy
      k-means++), 1 = classic k-means++.

  Returns:
    (centres_KxD float32, inertia): inertia = sum over points of the squared distance to the nearest
    returned centre.
  """
  x = _check_points(x_NxD, "kmeans")
  n = x.shape[0]
  if not 1 <= k <= n:
    raise errors.ConfigError(
        f"kmeans: need 1 <= k <= number of points, got k={k}, N={n} (config.transfer.num_clusters)"
    )
  if iters < 0:
    raise errors.ConfigError(f"kmeans: iters must be >= 0, got {iters} (config.transfer.kmeans_iters)")
  if restarts < 1:
    raise errors.ConfigError(
        f"kmeans: restarts must be >= 1, got {restarts} (config.transfer.kmeans_restarts)"
    )
  if chunk < 1:
    raise errors.ConfigError(f"kmeans: chunk must be >= 1, got {chunk} (config.transfer.kmeans_chunk)")
  if local_trials is None:
    local_trials = 2 + int(math.log(k))
  if local_trials < 1:
    raise ValueError(f"kmeans: local_trials must be >= 1, got {local_trials}")

  # Centring makes the expanded distance formula better conditioned; k-means is translation invariant.
  mean_D = jnp.mean(x, axis=0)
  xc = x - mean_D
  tol_abs = jnp.asarray(tol, jnp.float32) * jnp.mean(jnp.var(x, axis=0))
  x_CxMxD, w_CxM = _chunked(xc, chunk)
  best_centres, best_inertia = None, math.inf
  for restart_key in jax.random.split(key, restarts):
    centres, inertia, _ = _kmeans_single(
        x_CxMxD,
        w_CxM,
        restart_key,
        jnp.asarray(iters, jnp.int32),
        tol_abs,
        n=n,
        k=k,
        local_trials=local_trials,
    )
    inertia = float(inertia)
    if inertia < best_inertia:
      best_centres, best_inertia = centres, inertia
  if best_centres is None:  # every restart gave a non-finite inertia
    raise errors.NonFiniteError(
        "kmeans: inertia is not finite in any restart (the user vectors are not finite)"
    )
  return best_centres + mean_D, best_inertia


@jax.jit
def _assign(x_CxMxD, w_CxM, centres_KxD):
  labels, d2, _, _, _ = _pass(x_CxMxD, jnp.sum(x_CxMxD * x_CxMxD, axis=-1), w_CxM, centres_KxD)
  return labels.reshape(-1), d2.reshape(-1)


def assign(x_NxD, centres_KxD, chunk: int = 65536) -> tuple[jax.Array, jax.Array]:
  """Nearest centre of every point, chunked over points: (labels_N int32, squared distances_N)."""
  x = _check_points(x_NxD, "assign")
  centres = jnp.asarray(centres_KxD, jnp.float32)
  if centres.ndim != 2 or centres.shape[1] != x.shape[1]:
    raise ValueError(f"assign: centres must be [K, {x.shape[1]}], got {centres.shape}")
  n = x.shape[0]
  x_CxMxD, w_CxM = _chunked(x, chunk)
  labels, d2 = _assign(x_CxMxD, w_CxM, centres)
  return labels[:n].astype(jnp.int32), d2[:n]


def _normalize(x: jax.Array) -> jax.Array:
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, _NORM_EPS**2))


def cluster_attention(user_BxD: jax.Array, centres_KxD: jax.Array) -> jax.Array:
  """a_BxK = softmax_k(cos(y_b, s_k)) (temperature 1, docs/method.md step 7b)."""
  cos_BxK = jnp.einsum("bd,kd->bk", _normalize(user_BxD), _normalize(centres_KxD), precision=_HIGHEST)
  return jax.nn.softmax(cos_BxK, axis=-1)


def aggregate(user_BxD: jax.Array, centres_KxD: jax.Array) -> jax.Array:
  """s~_BxD = sum_k a_k s_k with a = cluster_attention(y, s); pure and jittable."""
  return jnp.einsum("bk,kd->bd", cluster_attention(user_BxD, centres_KxD), centres_KxD, precision=_HIGHEST)
