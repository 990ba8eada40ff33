"""Figures of the experiment grid (PNG, matplotlib's Agg backend, no display needed).

- `embedding_projection`: items of every domain in a model's item space, projected to 2-D (PCA by SVD, or
  t-SNE), coloured by domain, one panel per model (the paper's Fig. 3: Sem beside RecG). Each panel's
  title carries the cosine silhouette of the domain labels in the full space: near 1 when the domains sit
  apart, near 0 or below when they are mixed.
- `alpha_sensitivity`: metric vs alpha (log x), one line per evaluated domain, ± std over seeds.
- `pair_bars`: Sem and RecG per (target ← source) pair and backbone, ± std over seeds.

The functions take plain arrays and (mean, std) numbers; recg_jax.grid.figures builds them from the runs.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from recg_jax import paths

# (mean, std) with std None when there is one seed.
Stat = tuple[float, float | None]


def pca_2d(x_NxD: np.ndarray) -> np.ndarray:
  """The first two principal components of x (centred), via SVD: [N, 2]."""
  x = np.asarray(x_NxD, np.float64)
  x = x - x.mean(axis=0, keepdims=True)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return (x @ vt[:2].T).astype(np.float32)


def tsne_2d(x_NxD: np.ndarray, seed: int = 0, max_iter: int = 1000) -> np.ndarray:
  """t-SNE to 2-D (sklearn), PCA-initialised; perplexity capped for small samples: [N, 2]."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top

  n = len(x_NxD)
  perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
  tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed, max_iter=max_iter)
  return tsne.fit_transform(np.asarray(x_NxD, np.float32)).astype(np.float32)


def domain_silhouette(points: dict[str, np.ndarray], seed: int = 0, max_points: int = 6000) -> float:
  """Cosine silhouette of the domain labels (sklearn), on at most max_points points (seeded sample)."""
  from sklearn.metrics import silhouette_score  # pylint: disable=g-import-not-at-top

  x = np.concatenate(list(points.values()))
  labels = np.concatenate([np.full(len(v), i) for i, v in enumerate(points.values())])
  if len(points) < 2 or len(x) <= len(points):
    return float("nan")
  sample = min(max_points, len(x))
  return float(silhouette_score(x, labels, metric="cosine", sample_size=sample, random_state=seed))


def _save(fig, path: str | os.PathLike) -> paths.Path:
  path = paths.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:  # a file object: matplotlib knows no remote paths
    fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def embedding_projection(
    panels: Sequence[tuple[str, dict[str, np.ndarray]]],
    path: str | os.PathLike,
    method: str = "pca",
    seed: int = 0,
    title: str = "",
    tsne_iters: int = 1000,
) -> paths.Path:
  """One scatter per panel (title, {domain: items_NxD}); all domains of a panel are projected together.

  Colours are fixed per domain across panels.
  """
  if method not in ("pca", "tsne"):
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
  if not panels:
    raise ValueError("embedding_projection needs at least one panel")
  names = list(dict.fromkeys(n for _, pts in panels for n in pts))
  colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
  for ax, (panel_title, points) in zip(axes[0], panels):
    x = np.concatenate([points[n] for n in points])
    xy = pca_2d(x) if method == "pca" else tsne_2d(x, seed, tsne_iters)
    start = 0
    for n in points:
      m = len(points[n])
      ax.scatter(
          xy[start : start + m, 0],
          xy[start : start + m, 1],
          s=4,
          alpha=0.5,
          color=colours[n],
          label=f"{n} ({m})",
          rasterized=True,
      )
      start += m
    ax.set_title(
        f"{panel_title}\ndomain silhouette (cosine) {domain_silhouette(points, seed):.3f}", fontsize=9
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=3, loc="best")
  fig.suptitle(f"{title} — {method.upper()}" if title else method.upper(), fontsize=10, y=1.03)
  return _save(fig, path)


def alpha_sensitivity(
    series: dict[str, dict[str, list[tuple[float, Stat]]]],
    metrics: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    default_alpha: float | None = None,
) -> paths.Path:
  """One panel per metric: value (%) vs alpha on a log axis, one line per label (a target or the
  source's in-domain split), error bars = std over seeds.

  series: label -> metric -> [(alpha, (mean, std)), ...].
  """
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for label, by_metric in series.items():
      points = sorted(by_metric.get(metric, []))
      if not points:
        continue
      a = np.array([p[0] for p in points])
      mean = 100 * np.array([p[1][0] for p in points])
      std = 100 * np.array([p[1][1] or 0.0 for p in points])
      ax.errorbar(
          a,
          mean,
          yerr=std,
          marker="o",
          capsize=3,
          label=label,
          linestyle="--" if "in-domain" in label else "-",
      )
    if default_alpha is not None:
      ax.axvline(default_alpha, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def pair_bars(
    bars: dict[str, dict[str, list[tuple[str, Stat | None, Stat | None]]]],
    metrics: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> paths.Path:
  """Grouped bars (%): Sem and RecG for every pair, one panel per (metric, backbone); error bars = std.

  bars: backbone -> metric -> [(pair label, sem (mean, std) or None, recg (mean, std) or None), ...].
  """
  backbones = list(bars)
  fig, axes = plt.subplots(
      len(metrics),
      len(backbones),
      squeeze=False,
      figsize=(
          max(4.0, 1.1 * max(len(v) for b in bars.values() for v in b.values())) * len(backbones),
          3.2 * len(metrics),
      ),
  )
  width = 0.38
  for col, backbone in enumerate(backbones):
    for row, metric in enumerate(metrics):
      ax = axes[row][col]
      entries = bars[backbone].get(metric, [])
      x = np.arange(len(entries))
      for offset, which, name in ((-width / 2, 1, "Sem"), (width / 2, 2, "RecG")):
        stats = [e[which] for e in entries]
        mean = [100 * s[0] if s else np.nan for s in stats]
        std = [100 * (s[1] or 0.0) if s else 0.0 for s in stats]
        ax.bar(x + offset, mean, width, yerr=std, capsize=3, label=name)
      ax.set_xticks(x)
      ax.set_xticklabels([e[0] for e in entries], rotation=30, ha="right", fontsize=7)
      ax.set_ylabel(f"{metric} (%)")
      ax.set_title(backbone, fontsize=9)
      ax.grid(axis="y", alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def budget_curves(
    panels: Sequence[tuple[str, dict[str, list[tuple[float, Stat]]], float | None]],
    path: str | os.PathLike,
    ylabel: str,
    title: str = "",
) -> paths.Path:
  """One panel per (title, {method: [(budget, (mean, std)), ...]}, reference): value (%) against the share
  of the domain's training interactions trained on (log x), error bars = std over seeds, the training-free
  reference as a horizontal line; one legend for all panels, below them."""
  if not panels:
    raise ValueError("budget_curves needs at least one panel")
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
  names = list(dict.fromkeys(n for _, series, _ in panels for n in series))
  colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
  handles = {}
  for ax, (panel_title, series, reference) in zip(axes[0], panels):
    budgets = sorted({b for points in series.values() for b, _ in points})
    for name, points in series.items():
      if not points:
        continue
      points = sorted(points)
      x = 100 * np.array([p[0] for p in points])
      mean = 100 * np.array([p[1][0] for p in points])
      std = 100 * np.array([p[1][1] or 0.0 for p in points])
      handles[name] = ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, color=colours[name], label=name)
    if reference is not None:
      handles["text baseline"] = ax.axhline(
          100 * reference, color="black", linewidth=1.0, linestyle="--", label="text baseline"
      )
    ax.set_xscale("log")
    ax.set_xticks([100 * b for b in budgets], [f"{100 * b:g}" for b in budgets])
    ax.set_xlabel("training interactions (% of the domain's)")
    ax.set_ylabel(f"{ylabel} (%)")
    ax.set_title(panel_title, fontsize=9)
    ax.grid(alpha=0.3)
  # Anchored by its top at the figure's bottom edge: below the axis labels (the saved area grows to it).
  fig.legend(
      list(handles.values()),
      list(handles),
      loc="upper center",
      bbox_to_anchor=(0.5, 0.0),
      ncol=min(3, len(handles)),
      fontsize=8,
  )
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)
