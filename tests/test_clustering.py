"""K-means parity with scikit-learn, chunking invariance, empty clusters, and the attention read-out."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from recg_jax import clustering

NUM_POINTS, DIM, K, RESTARTS = 2000, 16, 8, 3


@pytest.fixture(scope="module", params=[1.0, 8.0], ids=["separated", "overlapping"])
def blobs(request):
  x, _ = make_blobs(NUM_POINTS, DIM, centers=K, cluster_std=request.param, random_state=0)
  return x.astype(np.float32)


def _np_inertia(x, centres):
  d2 = ((x[:, None, :].astype(np.float64) - np.asarray(centres, np.float64)[None]) ** 2).sum(-1)
  return d2.min(axis=1).sum()


def test_inertia_matches_sklearn(blobs):
  centres, inertia = clustering.kmeans(
      blobs, K, jax.random.key(0), iters=100, restarts=RESTARTS, tol=1e-6, chunk=512
  )
  assert centres.shape == (K, DIM) and centres.dtype == jnp.float32
  # The reported inertia is the objective of the returned centres.
  np.testing.assert_allclose(inertia, _np_inertia(blobs, centres), rtol=1e-5)
  reference = KMeans(K, init="k-means++", n_init=RESTARTS, tol=1e-6, random_state=0).fit(blobs).inertia_
  assert inertia <= 1.01 * reference, (inertia, reference)


def test_chunked_equals_unchunked_and_deterministic(blobs):
  key = jax.random.key(3)
  # 2000 points in chunks of 300: six full chunks and a padded seventh.
  chunked = clustering.kmeans(blobs, K, key, iters=50, restarts=1, tol=1e-6, chunk=300)
  whole = clustering.kmeans(blobs, K, key, iters=50, restarts=1, tol=1e-6, chunk=NUM_POINTS)
  np.testing.assert_allclose(np.asarray(chunked[0]), np.asarray(whole[0]), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5)
  again = clustering.kmeans(blobs, K, key, iters=50, restarts=1, tol=1e-6, chunk=300)
  np.testing.assert_array_equal(np.asarray(chunked[0]), np.asarray(again[0]))
  assert chunked[1] == again[1]


def test_assign_matches_brute_force(blobs):
  centres = blobs[:5] + 0.5
  labels, d2 = clustering.assign(blobs, centres, chunk=300)
  full = ((blobs[:, None, :].astype(np.float64) - centres[None].astype(np.float64)) ** 2).sum(-1)
  assert labels.shape == (NUM_POINTS,) and labels.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(labels), full.argmin(1))
  np.testing.assert_allclose(np.asarray(d2), full.min(1), rtol=1e-4, atol=1e-2)


def test_single_cluster_is_the_mean():
  x = np.random.default_rng(0).normal(size=(37, 3)).astype(np.float32) * 2 + 5
  centres, inertia = clustering.kmeans(x, 1, jax.random.key(0), iters=5, restarts=1, tol=0.0, chunk=10)
  np.testing.assert_allclose(np.asarray(centres)[0], x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(inertia, ((x - x.mean(0)) ** 2).sum(), rtol=1e-5)


def test_zero_iterations_returns_distinct_data_points():
  x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
  centres, _ = clustering.kmeans(x, 6, jax.random.key(2), iters=0, restarts=1, tol=0.0, chunk=16)
  # k-means++ seeds are data points (up to the centring round trip), and never the same one twice.
  nearest = ((np.asarray(centres)[:, None] - x[None]) ** 2).sum(-1)
  assert nearest.min(1).max() < 1e-10
  assert len(set(nearest.argmin(1).tolist())) == 6


def test_empty_cluster_moves_to_farthest_point():
  x = np.array([[0, 0], [0.1, 0], [0, 0.1], [5, 5], [5.1, 5], [9, 9]], np.float32)
  centres = np.array([[0, 0], [5, 5], [100, 100]], np.float32)  # the third centre attracts no point
  x_CxMxD, w_CxM = clustering._chunked(jnp.asarray(x), 4)  # padded: padding must never be chosen
  xsq = jnp.sum(x_CxMxD**2, -1)
  new = np.asarray(clustering._lloyd_update(x_CxMxD, xsq, w_CxM, jnp.asarray(centres)))
  np.testing.assert_allclose(new[0], x[:3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(new[1], x[3:].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(new[2], x[5])  # (9, 9) is the farthest from its centre


def test_fewer_distinct_points_than_clusters():
  x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
  centres, inertia = clustering.kmeans(x, 5, jax.random.key(0), iters=10, restarts=2, tol=1e-6, chunk=7)
  assert np.all(np.isfinite(np.asarray(centres)))
  assert inertia == pytest.approx(0.0, abs=1e-5)


def test_bad_input_raises():
  x = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match="k <= number of points"):
    clustering.kmeans(x, 5, jax.random.key(0))
  with pytest.raises(ValueError, match="NaN"):
    clustering.kmeans(np.full((4, 2), np.nan, np.float32), 2, jax.random.key(0))
  with pytest.raises(ValueError, match="restarts"):
    clustering.kmeans(x, 2, jax.random.key(0), restarts=0)


def test_aggregate_hand_example():
  users = jnp.array([[1.0, 0.0], [0.0, -2.0]])
  centres = jnp.array([[2.0, 0.0], [0.0, 3.0]])
  # User 1: cos = (1, 0); user 2: cos = (0, -1). a = softmax(cos), s~ = a @ centres.
  e = math.e
  expected_a = np.array([[e / (e + 1), 1 / (e + 1)], [1 / (1 + 1 / e), (1 / e) / (1 + 1 / e)]])
  expected = expected_a @ np.array([[2.0, 0.0], [0.0, 3.0]])
  np.testing.assert_allclose(np.asarray(clustering.cluster_attention(users, centres)), expected_a, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(clustering.aggregate(users, centres)), expected, rtol=1e-6)
  # Cosine attention ignores the users' norms, and the result is jittable.
  np.testing.assert_allclose(
      np.asarray(jax.jit(clustering.aggregate)(users * 7.0, centres)), expected, rtol=1e-6
  )
