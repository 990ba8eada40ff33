"""The grid's figures (DIR/plots/*.png) and the trained parameters they need.

pair_bar_data and alpha_series turn the aggregates into the plain (mean, std) series that recg_jax.plots
draws; load_best_params restores a finished run's best checkpoint and projected_items maps every domain's
items through its heads, for the item-space projections of Sem beside RecG. write_plots draws them all.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from recg_jax import config as config_lib
from recg_jax import distributed
from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.grid import planning
from recg_jax.grid import report


def run_config_from_marker(marker: dict[str, Any]) -> ml_collections.ConfigDict:
  """The exact config a finished run used, over today's defaults (config.from_record)."""
  return config_lib.from_record(marker["config"])


def load_best_params(
    run_dir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    num_items: int,
    table_NxH: np.ndarray | None,
):
  """(model, params) of a finished run, from its best checkpoint (training.checkpoints)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top
  from recg_jax.training import checkpoints  # pylint: disable=g-import-not-at-top

  model = recommender.build_model(config, num_items)
  table = None if table_NxH is None else jnp.asarray(table_NxH)
  shapes = jax.eval_shape(lambda: recommender.init_variables(model, jax.random.key(0), table)["params"])
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
  ckpt = checkpoints.Checkpoints(paths.as_path(run_dir), config)
  try:
    restored = ckpt.restore_best(abstract)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{paths.as_path(run_dir) / 'checkpoints' / 'best'} holds no checkpoint")
  return model, jax.device_get(restored[0])


def projected_items(
    model, params, tables: dict[str, np.ndarray], max_items: int, seed: int, space: str = "item"
) -> dict[str, np.ndarray]:
  """Per domain, up to max_items real items (seeded sample) in the model's item space: 'item' = the
  scoring projection W_p e + b_p, 'align' = the alignment projection W_a e + b_a (recg only)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top

  method = recommender.Recommender.item_vectors if space == "item" else recommender.Recommender.align
  fn = jax.jit(lambda p, t: model.apply({"params": p}, t, method=method))
  rng = np.random.default_rng(seed)
  out = {}
  for name, table in tables.items():
    rows = np.arange(1, table.shape[0])
    if len(rows) > max_items:
      rows = np.sort(rng.choice(rows, max_items, replace=False))
    if space == "item":
      out[name] = np.asarray(fn(params, jnp.asarray(table)))[rows]
    else:
      out[name] = np.asarray(fn(params, jnp.asarray(table[rows])))
  return out


def _stat(agg: dict[str, Any] | None):
  return None if agg is None else (agg["mean"], agg["std"])


def pair_bar_data(aggregates, axes, protocol: str, metrics: Sequence[str]) -> dict:
  """backbone -> metric -> [(pair, Sem (mean, std), RecG (mean, std))] for plots.pair_bars."""
  out = {}
  for b in axes["backbones"]:
    out[b] = {}
    for m in metrics:
      entries = []
      for t in axes["domains"]:
        for s in axes["sources"]:
          if t == s:
            continue
          sem = aggregates.get(("zero_shot", s, t, b, "sem", protocol, m))
          recg = aggregates.get(("zero_shot", s, t, b, "recg", protocol, m))
          if sem is not None or recg is not None:
            entries.append((f"{t}←{s}", _stat(sem), _stat(recg)))
      out[b][m] = entries
  return out


def alpha_series(aggregates, axes, protocol: str, metrics: Sequence[str], default_alpha: float) -> dict:
  """label -> metric -> [(alpha, (mean, std))] of the alpha sweep, for plots.alpha_sensitivity."""
  source, b = axes["ablation_source"][0], axes["ablation_backbone"][0]
  out = {}
  for kind, d in report.ablation_columns(axes):
    label = f"{d} ← {source}" if kind == "zero_shot" else f"{d} (in-domain)"
    out[label] = {}
    for m in metrics:
      points = []
      for alpha in axes["alphas"]:
        agg = aggregates.get((kind, source, d, b, report.alpha_setting(alpha, default_alpha), protocol, m))
        if agg is not None:
          points.append((alpha, _stat(agg)))
      out[label][m] = points
  return out


def write_plots(workdir, config, aggregates, ablation_aggregates, markers, domains, tables) -> list[str]:
  """DIR/plots/*.png: item-space projections (Sem beside RecG), alpha sensitivity, per-pair bars."""
  from recg_jax import plots  # pylint: disable=g-import-not-at-top

  workdir = paths.as_path(workdir)
  out_dir = workdir / "plots"
  out_dir.mkdir(parents=True, exist_ok=True)
  axes = planning.grid_axes(config)
  written = []
  protocols = tuple(config.eval.protocols)
  metrics = report.table_metrics(config)
  data_note = results_lib.data_label(config)
  for protocol in protocols:
    bars = pair_bar_data(aggregates, axes, protocol, metrics)
    if any(entries for by_metric in bars.values() for entries in by_metric.values()):
      title = f"zero-shot, {protocol}, mean ± std over seeds ({data_note})"
      written.append(str(plots.pair_bars(bars, metrics, out_dir / f"pairs_{protocol}.png", title=title)))
    series = alpha_series(ablation_aggregates, axes, protocol, metrics, float(config.gen_loss.alpha))
    if any(points for by_metric in series.values() for points in by_metric.values()):
      source, backbone = axes["ablation_source"][0], axes["ablation_backbone"][0]
      written.append(
          str(
              plots.alpha_sensitivity(
                  series,
                  metrics,
                  out_dir / f"alpha_{protocol}.png",
                  default_alpha=float(config.gen_loss.alpha),
                  title=f"{backbone}-RecG trained on {source}: alpha sweep, {protocol} ({data_note})",
              )
          )
      )
  # Projections: the first seed's Sem and RecG runs of the ablation backbone on the ablation source.
  if tables is not None:
    source, backbone = axes["ablation_source"][0], axes["ablation_backbone"][0]
    by_path = {m["relpath"]: m for m in markers}
    panels = []
    max_items = int(config.experiment.plot_items_per_domain)
    for variant in ("sem", "recg"):
      seed = axes["ablation_seeds"][0] if (axes["ablations"] or axes["alphas"]) else axes["seeds"][0]
      spec = planning.RunSpec(source, backbone, variant, seed)
      marker = by_path.get(spec.relpath.as_posix())
      if marker is None:
        continue
      try:
        rc = run_config_from_marker(marker)
        model, params = load_best_params(
            workdir / spec.relpath, rc, domains[source].num_items, tables[source]
        )
      except (OSError, ValueError, KeyError) as e:
        distributed.say(f"[plots] cannot load {spec.relpath}: {e!r}; no projection for it")
        continue
      label = f"{backbone}-{'Sem' if variant == 'sem' else 'RecG'}"
      panels.append((f"{label}: W_p e", projected_items(model, params, tables, max_items, seed)))
      if variant == "recg":
        panels.append(
            (
                f"{label}: W_a e (alignment)",
                projected_items(model, params, tables, max_items, seed, space="align"),
            )
        )
    if panels:
      methods = ("pca", "tsne") if bool(config.experiment.tsne) else ("pca",)
      for method in methods:
        path = plots.embedding_projection(
            panels,
            out_dir / f"items_{method}.png",
            method=method,
            seed=int(axes["seeds"][0]),
            title=f"item space, trained on {source} ({data_note})",
        )
        written.append(str(path))
  for p in written:
    distributed.say(f"[plots] wrote {p}")
  return written
