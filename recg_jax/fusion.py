"""Late fusion of a trained recommender with a training-free text recommender (config.fusion).

For every user, both score every item of the catalogue; each part's scores are standardised over the
catalogue's items (per-user z-scores, models/scoring.py) and the fused score is

  (1 - theta) * z_text + theta * z_trained,          theta in [0, 1]

so theta = 0 is the text recommender alone (config.fusion.text_preset, a text_knn preset) and theta = 1
the trained model alone; theta / (1 - theta) is the trained part's weight against the text's. theta is
fitted on the source's validation split, on eval.select_metric: every theta = k / fusion.steps over the
whole of [0, 1], every weighting ranked from one scoring pass (evaluate.head_ranks' weight_grid). The
edges are the parts alone, so no edge of the search decides anything but "this part alone". A tie keeps
the smaller theta: the text recommender, which needs no training, is what a
weak trained part falls back to. The fit is written to <workdir>/fusion.json and into every record.

Evaluation, the studies and serving score a fused run through the same scorer ('fuse'), so a served list
ranks as evaluation does. The trained part is trained by the run itself, or read from a finished run
(fusion.trained_run: nothing is trained; the studies reuse the run of the trained part's own preset).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from recg_jax import config as config_lib
from recg_jax import distributed
from recg_jax import errors
from recg_jax import evaluate as evaluate_lib
from recg_jax import finished_run
from recg_jax import paths
from recg_jax.config import roles
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.models import scoring

FUSION_FILE = "fusion.json"


@dataclasses.dataclass(frozen=True)
class Part:
  """One scorer of a fusion on one domain: its model, parameters and the table it reads (None: none)."""

  model: recommender_lib.Recommender
  params: Any
  table: Any

  def user_fn(self) -> Callable[[jax.Array], Any]:
    user_jit, _ = evaluate_lib.eval_programs(self.model)
    return lambda seq: user_jit(self.params, self.table, seq)

  def item_vectors(self) -> Any:
    _, items_jit = evaluate_lib.eval_programs(self.model)
    return items_jit(self.params, self.table)


@dataclasses.dataclass(frozen=True)
class Fused:
  """A text part and a trained part, and the trained part's share theta of the standardised scores."""

  text: Part
  trained: Part
  theta: float = 0.5

  def scorer(self, theta: float | None = None) -> tuple:
    t = self.theta if theta is None else float(theta)
    return scoring.fuse((self.text.model.scorer, self.trained.model.scorer), (1.0 - t, t), standardize=True)

  def user_fn(self) -> Callable[[jax.Array], tuple]:
    text_fn, trained_fn = self.text.user_fn(), self.trained.user_fn()
    return lambda seq: (text_fn(seq), trained_fn(seq))

  def item_vectors(self) -> tuple:
    return (self.text.item_vectors(), self.trained.item_vectors())


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on fusion settings that cannot be fitted."""
  if int(config.fusion.steps) < 1:
    raise errors.ConfigError(f"config.fusion.steps must be >= 1, got {config.fusion.steps}")
  text = text_config(config)
  if str(text.model.variant) != "text_knn":
    raise errors.ConfigError(
        f"config.fusion.text_preset={config.fusion.text_preset!r} is not a training-free text_knn preset"
    )
  if str(config.model.variant) == "text_knn":
    raise errors.ConfigError(
        "config.fusion fuses a trained model with the text: variant 'text_knn' trains none"
    )


def text_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with fusion.text_preset applied: the text part's model settings."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.fusion.enabled = False
  return config_lib.apply_preset(c, str(config.fusion.text_preset))


def text_part(config: ml_collections.ConfigDict, domain: types.DomainData, raw_table: np.ndarray) -> Part:
  """The training-free part on one domain: its model and its table (the preset's transform applied)."""
  from recg_jax import pipeline  # pylint: disable=g-import-not-at-top  (pipeline imports this module)

  tc = text_config(config)
  table = pipeline.model_table(tc, raw_table)
  return Part(recommender_lib.build_model(tc, domain.num_items), {}, jax.device_put(table))


def fused_on(
    config: ml_collections.ConfigDict, domain: types.DomainData, raw_table: np.ndarray, model, params
) -> Fused:
  """The fusion of config on one domain: the text part, and the trained part (model, params) with the
  table its model reads (none for a plain 'id' model), at the default theta."""
  from recg_jax import pipeline  # pylint: disable=g-import-not-at-top  (pipeline imports this module)

  reads = recommender_lib.reads_table(config.model)
  trained = Part(model, params, pipeline.model_table(config, raw_table) if reads else None)
  return Fused(text_part(config, domain, raw_table), trained)


def theta_grid(lo: float, hi: float, steps: int) -> list[float]:
  return [float(v) for v in np.linspace(lo, hi, int(steps) + 1)]


def _select(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(protocol, metric) of eval.select_metric ('valid/full/ndcg@10' -> 'full', 'ndcg@10')."""
  _, protocol, metric = str(config.eval.select_metric).split("/")
  return protocol, metric


def curve(
    config: ml_collections.ConfigDict,
    fused: Fused,
    domain: types.DomainData,
    thetas: list[float],
    split: str = "valid",
) -> list[float]:
  """eval.select_metric of every theta on the domain's split, from one scoring pass."""
  protocol, metric = _select(config)
  rows = types.leave_one_out(domain, split, int(config.data.max_len))
  user_fn = fused.user_fn()
  ranks = evaluate_lib.head_ranks(
      lambda seq: {"": user_fn(seq)},
      fused.item_vectors(),
      rows,
      domain,
      config.eval,
      protocols=(protocol,),
      scorer=fused.scorer(),
      weight_grid=[(1.0 - t, t) for t in thetas],
  )[""]
  name = next(iter(ranks))  # the only protocol asked for ('sampled' resolves to 'sampled<N>')
  ranks_UxK = ranks[name]
  ks = sorted({*config.eval.ks, int(metric.split("@")[1])})
  return [evaluate_lib.metrics_from_ranks(ranks_UxK[:, k], ks)[metric] for k in range(len(thetas))]


@dataclasses.dataclass(frozen=True)
class Fit:
  """The fitted theta and every theta tried with its validation value."""

  theta: float
  value: float
  tried: tuple[tuple[float, float], ...]

  def as_extra(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {
        "theta": self.theta,
        "trained_weight": None if self.theta >= 1.0 else self.theta / (1.0 - self.theta),
        "text_preset": str(config.fusion.text_preset),
        "select_metric": str(config.eval.select_metric),
        "valid_value": self.value,
        "tried": [list(t) for t in self.tried],
    }


def fit(config: ml_collections.ConfigDict, fused: Fused, domain: types.DomainData) -> Fit:
  """theta with the best validation eval.select_metric over theta = k / fusion.steps; the smaller theta on
  ties."""
  thetas = theta_grid(0.0, 1.0, int(config.fusion.steps))
  tried = dict(zip(thetas, curve(config, fused, domain, thetas)))
  best = min(tried, key=lambda t: (-tried[t], t))
  return Fit(theta=best, value=tried[best], tried=tuple(sorted(tried.items())))


def evaluate_split(
    config: ml_collections.ConfigDict, fused: Fused, domain: types.DomainData, split: str
) -> dict[str, float]:
  """Both protocols' metrics of the fused scorer at its theta on the domain's split."""
  rows = types.leave_one_out(domain, split, int(config.data.max_len))
  return evaluate_lib.evaluate(
      fused.user_fn(), fused.item_vectors(), rows, domain, config.eval, scorer=fused.scorer()
  )


def write_fit(workdir: paths.Path, config: ml_collections.ConfigDict, fitted: Fit) -> None:
  paths.write_json_atomic(paths.as_path(workdir) / FUSION_FILE, fitted.as_extra(config))


def read_fit(workdir: str | os.PathLike) -> dict[str, Any] | None:
  path = paths.as_path(workdir) / FUSION_FILE
  if not path.is_file():
    return None
  return json.loads(path.read_text(encoding="utf-8"))


def trained_run_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> paths.Path | None:
  """The folder of fusion.trained_run (relative to the run's own folder when relative), or None."""
  run = str(config.fusion.trained_run)
  if not run:
    return None
  path = paths.as_path(run)
  return path if path.is_absolute() else paths.as_path(workdir) / path


def finished_trained_part(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> tuple[Any, list[dict[str, Any]]]:
  """(best parameters, records) of the finished run fusion.trained_run, after checking that it trained
  this run's model on this run's data (its fingerprint equals this config's outside the fusion section)."""
  run_dir = trained_run_dir(config, workdir)
  run_config, records = finished_run.config_and_records(run_dir)
  strip = lambda c: {k: v for k, v in roles.fingerprint(c).items() if k != "fusion"}
  diff = roles.diff(strip(run_config), strip(config))
  if diff:
    raise errors.ConfigError(
        f"config.fusion.trained_run={str(config.fusion.trained_run)!r} was trained with other settings "
        f"(differs in {diff}): it cannot be this run's trained part"
    )
  return finished_run.best_params(run_dir, run_config), records


def announce(fitted: Fit, source: str) -> None:
  weight = "inf" if fitted.theta >= 1.0 else f"{fitted.theta / (1.0 - fitted.theta):.3g}"
  distributed.say(
      f"[fusion] {source}: theta {fitted.theta:.3f} (trained weight {weight}), validation {fitted.value:.4f}"
  )
