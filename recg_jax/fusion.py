"""Late fusion of a trained recommender with a training-free text recommender (config.fusion).

For every user, both score every item of the catalogue; each part's scores are standardised over the
catalogue's items (per-user z-scores, models/scoring.py) and the fused score is

  (1 - theta) * z_text + theta * z_trained,          theta in [0, 1]

so theta = 0 is the text recommender alone (config.fusion.text_preset, a text_knn preset) and theta = 1
the trained model alone; theta / (1 - theta) is the trained part's weight against the text's. theta is
fitted on the source's validation split, on eval.select_metric: every theta = k / fusion.steps over the
whole of [0, 1], every weighting ranked from one scoring pass (evaluate.head_ranks' weight_grid). The
edges are the parts alone, so no edge of the search decides anything but "this part alone". A tie keeps
the smaller theta: the text recommender, which needs no training, is what a weak trained part falls back
to. So does a trained part whose gain the validation split cannot show: the fitted theta stands only if
fitting it beats the text alone on validation users it was not fitted on, significantly
(cross_fitted_test, fusion.fallback_alpha); a few users' lucky hits in a small split choose nothing. The
fit is written to <workdir>/fusion.json and into every record.

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


def trains_its_part(config: ml_collections.ConfigDict) -> bool:
  """Whether a fusion must train its trained part itself, never reuse another run's: it holds users out of
  that training (fusion.holdout_users), as no other run does."""
  return float(config.fusion.holdout_users) > 0.0


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on fusion settings that cannot be fitted."""
  if int(config.fusion.steps) < 1:
    raise errors.ConfigError(f"config.fusion.steps must be >= 1, got {config.fusion.steps}")
  alpha, folds = config.fusion.fallback_alpha, config.fusion.fallback_folds
  if not 0.0 < float(alpha) <= 1.0:
    raise errors.ConfigError(f"config.fusion.fallback_alpha must be in (0, 1], got {alpha}")
  if int(folds) < 2:
    raise errors.ConfigError(f"config.fusion.fallback_folds must be >= 2, got {folds}")
  holdout = float(config.fusion.holdout_users)
  if not 0.0 <= holdout < 1.0:
    raise errors.ConfigError(f"config.fusion.holdout_users must be in [0, 1), got {holdout}")
  if trains_its_part(config) and str(config.fusion.trained_run):
    raise errors.ConfigError(
        f"config.fusion.holdout_users={holdout} holds users out of the trained part's training, so the part "
        f"trains here: config.fusion.trained_run={str(config.fusion.trained_run)!r} trained on every user"
    )
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


def held_out(
    config: ml_collections.ConfigDict, domains: dict[str, types.DomainData]
) -> tuple[dict[str, types.DomainData], types.DomainData | None]:
  """(the domains the trained part trains on, the source's users theta is fitted on): with
  fusion.holdout_users > 0 the source without its held-out users, and those users; else the domains as
  they are and None (theta is fitted on the source itself). Checks the fusion settings before anything
  trains."""
  if not config.fusion.enabled:
    return domains, None
  check(config)
  share = float(config.fusion.holdout_users)
  if share == 0.0:
    return domains, None
  (source,) = types.source_names(config.data.source)
  trained_on, held = types.split_users(domains[source], share)
  return {**domains, source: trained_on}, held


def theta_grid(lo: float, hi: float, steps: int) -> list[float]:
  return [float(v) for v in np.linspace(lo, hi, int(steps) + 1)]


def _select(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(protocol, metric) of eval.select_metric ('valid/full/ndcg@10' -> 'full', 'ndcg@10')."""
  _, protocol, metric = str(config.eval.select_metric).split("/")
  return protocol, metric


def per_user_curve(
    config: ml_collections.ConfigDict,
    fused: Fused,
    domain: types.DomainData,
    thetas: list[float],
    split: str = "valid",
) -> np.ndarray:
  """values_UxT: each user's eval.select_metric on the domain's split at every theta, from one scoring
  pass."""
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
  ranks_UxT = ranks[name]
  ks = (int(metric.split("@")[1]),)
  return np.stack(
      [evaluate_lib.per_user_metrics(ranks_UxT[:, t], ks)[metric] for t in range(len(thetas))], axis=1
  )


def best_column(values_UxT: np.ndarray) -> int:
  """The column with the best mean over users; the first (the smaller theta) on ties."""
  return int(np.argmax(values_UxT.mean(axis=0)))


def cross_fitted_test(values_UxT: np.ndarray, folds: int) -> tuple[float, float]:
  """(mean gain, one-sided p-value) of fitting theta over keeping theta = 0 (column 0), measured honestly.

  The users fall into `folds` folds (a fixed permutation, so the answer does not move with the run's seed);
  each fold's users are scored at the theta fitted on the other folds, so no user scores the theta chosen
  on their own outcome, and the best of many thetas cannot look like a gain by chance. The p-value is the
  exact sign test of these out-of-fold values against column 0, paired over users: how many gain against
  how many lose (users with no difference drop out; none left: 1.0). Not a signed-rank test: NDCG takes
  few distinct values, and its normal approximation under ties calls three lucky users of 53 significant."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  num_users = values_UxT.shape[0]
  folds = min(int(folds), num_users)
  if folds < 2:
    return 0.0, 1.0
  fold_U = np.random.default_rng(0).permutation(num_users) % folds
  out_of_fold_U = np.empty(num_users)
  for f in range(folds):
    held = fold_U == f
    out_of_fold_U[held] = values_UxT[held, best_column(values_UxT[~held])]
  diff_U = out_of_fold_U - values_UxT[:, 0]
  if not np.any(diff_U != 0):
    return 0.0, 1.0
  wins, losses = int(np.sum(diff_U > 0)), int(np.sum(diff_U < 0))
  return float(diff_U.mean()), float(stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


@dataclasses.dataclass(frozen=True)
class Fit:
  """The fitted theta, every theta tried with its validation value, and the fallback test.

  fitted_theta is the best theta on validation; theta is what the run uses: fitted_theta, or 0 (the text
  alone) when the cross-fitted gain over the text is not significant (p_value >= fusion.fallback_alpha)."""

  theta: float
  value: float
  tried: tuple[tuple[float, float], ...]
  fitted_theta: float
  gain: float  # the cross-fitted validation gain of fitted_theta over the text alone
  p_value: float
  users: int  # validation users

  @property
  def fell_back(self) -> bool:
    return self.theta != self.fitted_theta

  def as_extra(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {
        "theta": self.theta,
        "trained_weight": None if self.theta >= 1.0 else self.theta / (1.0 - self.theta),
        "text_preset": str(config.fusion.text_preset),
        "select_metric": str(config.eval.select_metric),
        "valid_value": self.value,
        "tried": [list(t) for t in self.tried],
        "fitted_theta": self.fitted_theta,
        "cross_fitted_gain": self.gain,
        "p_value": self.p_value,
        "fell_back": self.fell_back,
        "validation_users": self.users,
        "holdout_users": float(config.fusion.holdout_users),
    }


def fit(config: ml_collections.ConfigDict, fused: Fused, domain: types.DomainData) -> Fit:
  """theta with the best validation eval.select_metric over theta = k / fusion.steps (the smaller theta on
  ties), kept only if its cross-fitted gain over the text alone is significant (cross_fitted_test at
  fusion.fallback_alpha); else 0, the text alone. `domain`: the users it is fitted on (held_out's)."""
  thetas = theta_grid(0.0, 1.0, int(config.fusion.steps))
  values_UxT = per_user_curve(config, fused, domain, thetas)
  means = values_UxT.mean(axis=0)
  best = best_column(values_UxT)
  gain, p_value = cross_fitted_test(values_UxT, int(config.fusion.fallback_folds))
  alpha = float(config.fusion.fallback_alpha)
  chosen = best if alpha >= 1.0 or p_value < alpha else 0
  return Fit(
      theta=thetas[chosen],
      value=float(means[chosen]),
      tried=tuple((t, float(v)) for t, v in zip(thetas, means)),
      fitted_theta=thetas[best],
      gain=gain,
      p_value=p_value,
      users=int(values_UxT.shape[0]),
  )


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
  test = f"cross-fitted gain {fitted.gain:+.4f}, p {fitted.p_value:.3g} over {fitted.users} users"
  fallback = f"; fitted {fitted.fitted_theta:.3f} falls back to the text alone" if fitted.fell_back else ""
  distributed.say(
      f"[fusion] {source}: theta {fitted.theta:.3f} (trained weight {weight}), validation {fitted.value:.4f} "
      f"({test}{fallback})"
  )
