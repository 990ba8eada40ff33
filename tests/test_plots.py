"""Figures (recg_jax/plots.py): projections against references, and PNG files that hold what was drawn."""

import matplotlib.image
import numpy as np
import pytest

from recg_jax import plots


def _png_ok(path, min_bytes=5000):
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  # Not a blank canvas: many distinct colours were drawn.
  assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20
  return image


def test_pca_matches_sklearn_up_to_sign():
  from sklearn.decomposition import PCA

  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.2, 0.1]) + 3.0
  ours = plots.pca_2d(x)
  ref = PCA(n_components=2).fit_transform(x)
  assert ours.shape == (200, 2)
  for c in range(2):
    sign = np.sign(ours[:, c] @ ref[:, c])
    np.testing.assert_allclose(sign * ours[:, c], ref[:, c], rtol=1e-4, atol=1e-4)
  # Points on a line have no second component.
  line = np.outer(np.linspace(-1, 1, 50), rng.normal(size=8))
  assert np.abs(plots.pca_2d(line)[:, 1]).max() < 1e-5


def test_domain_silhouette_separated_vs_mixed():
  rng = np.random.default_rng(1)
  centres = np.eye(4)[:3] * 10
  apart = {f"d{i}": centres[i] + rng.normal(size=(60, 4)) * 0.1 for i in range(3)}
  mixed = {f"d{i}": rng.normal(size=(60, 4)) for i in range(3)}
  assert plots.domain_silhouette(apart) > 0.9
  assert abs(plots.domain_silhouette(mixed)) < 0.1
  assert np.isnan(plots.domain_silhouette({"only": rng.normal(size=(10, 4))}))


def test_embedding_projection_png(tmp_path):
  rng = np.random.default_rng(2)
  sem = {d: rng.normal(size=(80, 16)) + 4 * i for i, d in enumerate(("A", "B", "C"))}
  recg = {d: rng.normal(size=(80, 16)) for d in ("A", "B", "C")}
  path = plots.embedding_projection([("Sem", sem), ("RecG", recg)], tmp_path / "items_pca.png", title="test")
  image = _png_ok(path)
  assert image.shape[1] > 1.6 * image.shape[0]  # two panels side by side
  small = {d: v[:20] for d, v in sem.items()}
  _png_ok(
      plots.embedding_projection(
          [("Sem", small)], tmp_path / "items_tsne.png", method="tsne", seed=0, tsne_iters=250
      )
  )
  # t-SNE keeps well-separated domains apart.
  xy = plots.tsne_2d(np.concatenate(list(small.values())), seed=0, max_iter=250)
  labels = np.repeat(np.arange(3), 20)
  centres = np.stack([xy[labels == i].mean(0) for i in range(3)])
  spread = max(np.linalg.norm(xy[labels == i] - centres[i], axis=1).mean() for i in range(3))
  assert min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)) > 2 * spread
  with pytest.raises(ValueError, match="method"):
    plots.embedding_projection([("Sem", sem)], tmp_path / "x.png", method="umap")


def test_alpha_and_pair_bar_pngs(tmp_path):
  alphas = [5e-2, 1e-2, 5e-3, 1e-3, 5e-4, 1e-4]
  series = {
      "B ← A": {
          "recall@10": [(a, (0.3 + 0.01 * i, 0.01)) for i, a in enumerate(alphas)],
          "ndcg@10": [(a, (0.15 + 0.01 * i, None)) for i, a in enumerate(alphas)],
      },
      "A (in-domain)": {"recall@10": [(a, (0.5, 0.02)) for a in alphas], "ndcg@10": []},
  }
  _png_ok(
      plots.alpha_sensitivity(
          series, ("recall@10", "ndcg@10"), tmp_path / "alpha.png", title="t", default_alpha=1e-3
      )
  )
  bars = {
      b: {
          "recall@10": [("B←A", (0.3, 0.02), (0.36, 0.01)), ("C←A", (0.25, None), None)],
          "ndcg@10": [("B←A", (0.15, 0.01), (0.18, 0.01))],
      }
      for b in ("sasrec", "gru4rec")
  }
  image = _png_ok(plots.pair_bars(bars, ("recall@10", "ndcg@10"), tmp_path / "pairs.png", title="t"))
  assert image.shape[1] > image.shape[0]  # two backbones side by side
