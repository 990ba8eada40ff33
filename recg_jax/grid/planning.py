"""The plan of an experiment grid: which runs it holds and the config of each.

RunSpec names one run (source, backbone, variant, seed, ablation or alpha-sweep point) and its folder;
grid_axes resolves config.experiment into the grid's axes, plan_runs lists every run without repeats and
shard_of picks one process's share. run_config derives a run's config from the grid config. Nothing here
trains or reads a run folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any, Sequence

import ml_collections

from recg_jax import config as config_lib
from recg_jax import errors
from recg_jax import paths

VARIANTS = ("id", "sem", "recg", "text_knn")
# Ablations of docs/method.md ("Variants that every experiment reports"): config overrides of the RecG run.
# `no_seq` trains exactly the RecG model (training never reads config.transfer), so it is not run again:
# its numbers are the full run's `zero_shot_no_seq` / `test_no_seq` metrics, recorded by transfer.py.
ABLATIONS: dict[str, dict[str, Any] | None] = {
    "no_item_loss": {"gen_loss.enabled": False},
    "no_intra": {"gen_loss.use_intra": False},
    "no_inter": {"gen_loss.use_inter": False},
    "no_seq": None,
    "printed_sign": {"gen_loss.inter_sign": -1},
    "merge_identity": {"model.merge_init": "identity"},
}
ABLATION_LABELS = {
    "no_item_loss": "no item-level loss (L_gen off)",
    "no_intra": "no intra-domain term",
    "no_inter": "no inter-domain term",
    "no_seq": "no sequence-level step",
    "printed_sign": "printed sign of Eq. 9/13 (inter_sign = -1)",
    "merge_identity": "merge initialised to [I | 0] (not in the paper)",
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the grid. `ablation` is '' (main grid), a key of ABLATIONS, or 'alpha=<value>'."""

  source: str
  backbone: str
  variant: str
  seed: int
  ablation: str = ""
  alpha: float | None = None  # the alpha-sweep value (ablation 'alpha=...')

  @property
  def name(self) -> str:
    name = f"{self.backbone}-{self.variant}"
    if self.ablation.startswith("alpha="):
      return f"{name}-alpha{self.alpha:g}"
    return f"{name}-{self.ablation}" if self.ablation else name

  @property
  def setting(self) -> str:
    """Table label: 'id', 'sem', 'recg', 'recg:no_intra', 'recg:alpha=0.01', ..."""
    return f"{self.variant}:{self.ablation}" if self.ablation else self.variant

  @property
  def relpath(self) -> paths.Path:
    return paths.as_path("runs") / self.source / self.name / f"seed{self.seed}"

  @property
  def mode(self) -> str:
    return "in_domain" if self.variant == "id" else "zero_shot"

  def overrides(self) -> dict[str, Any]:
    """'section.field' -> value, on top of the grid config (besides source, targets, backbone, seed)."""
    out: dict[str, Any] = {"model.variant": self.variant}
    if self.ablation.startswith("alpha="):
      out["gen_loss.alpha"] = float(self.alpha)
    elif self.ablation:
      out.update(ABLATIONS[self.ablation] or {})
    return out

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def grid_domains(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """experiment.domains, or data.source + data.targets + data.auxiliary when it is empty."""
  ec, dc = config.experiment, config.data
  names = tuple(ec.domains) or (dc.source, *dc.targets, *dc.auxiliary)
  if len(set(names)) != len(names):
    raise errors.ConfigError(f"config.experiment.domains={names!r} names a domain twice")
  return tuple(str(n) for n in names)


def grid_axes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """The resolved grid: domains, sources, backbones, variants, seeds, ablations, alphas, ablation_*."""
  ec = config.experiment
  domains = grid_domains(config)
  sources = tuple(ec.sources) or (str(config.data.source),)
  for s in sources:
    if s not in domains:
      raise errors.ConfigError(f"config.experiment.sources: {s!r} is not in the grid's domains {domains}")
  if len(domains) < 2:
    raise errors.ConfigError(f"the grid needs at least two domains (a source and a target), got {domains}")
  backbones = tuple(ec.backbones) or (str(config.model.backbone),)
  variants = tuple(ec.variants) or (str(config.model.variant),)
  bad = [v for v in variants if v not in VARIANTS]
  if bad:
    raise errors.ConfigError(f"config.experiment.variants: {bad} not in {VARIANTS}")
  ablations = tuple(ec.ablations)
  bad = [a for a in ablations if a not in ABLATIONS]
  if bad:
    raise errors.ConfigError(f"config.experiment.ablations: {bad} not in {sorted(ABLATIONS)}")
  seeds = tuple(int(s) for s in ec.seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise errors.ConfigError(f"config.experiment.seeds={ec.seeds!r}: give one or more distinct seeds")
  ablation_source = str(ec.ablation_source) or sources[0]
  if ablation_source not in domains:
    raise errors.ConfigError(f"config.experiment.ablation_source={ablation_source!r} is not in {domains}")
  alphas = tuple(float(a) for a in ec.alphas)
  if any(not a > 0 for a in alphas):
    raise errors.ConfigError(f"config.experiment.alphas={ec.alphas!r}: every alpha must be > 0")
  return {
      "domains": domains,
      "sources": sources,
      "backbones": backbones,
      "variants": variants,
      "seeds": seeds,
      "ablations": ablations,
      "alphas": alphas,
      "ablation_backbone": (str(ec.ablation_backbone) or backbones[0],),
      "ablation_source": (ablation_source,),
      "ablation_seeds": tuple(int(s) for s in ec.ablation_seeds) or seeds,
  }


def plan_runs(config: ml_collections.ConfigDict) -> list[RunSpec]:
  """Every run of the grid, without repeats: the main grid seed by seed (so an interrupted grid has whole
  seeds), then the ablations and the alpha sweep. An ablation or sweep point that is the plain RecG run
  (no_seq, alpha = gen_loss.alpha) is that run; the Sem and RecG runs they are compared with are added."""
  axes = grid_axes(config)
  specs: dict[paths.Path, RunSpec] = {}

  def add(spec: RunSpec) -> None:
    specs.setdefault(spec.relpath, spec)

  for seed in axes["seeds"]:
    for source in axes["sources"]:
      for backbone in axes["backbones"]:
        for variant in axes["variants"]:
          if variant == "text_knn" and backbone != axes["backbones"][0]:
            continue  # no backbone, no parameters: one run per source and seed
          add(RunSpec(source, backbone, variant, seed))
  if axes["ablations"] or axes["alphas"]:
    source, backbone = axes["ablation_source"][0], axes["ablation_backbone"][0]
    default_alpha = float(config.gen_loss.alpha)
    for seed in axes["ablation_seeds"]:
      add(RunSpec(source, backbone, "sem", seed))
      add(RunSpec(source, backbone, "recg", seed))
      for ablation in axes["ablations"]:
        if ABLATIONS[ablation] is not None:
          add(RunSpec(source, backbone, "recg", seed, ablation))
      for alpha in axes["alphas"]:
        if not math.isclose(alpha, default_alpha, rel_tol=1e-9):
          add(RunSpec(source, backbone, "recg", seed, f"alpha={alpha:g}", alpha))
  return list(specs.values())


def shard_of(specs: Sequence[RunSpec], config: ml_collections.ConfigDict) -> list[RunSpec]:
  """The runs this process executes: every num_shards-th planned run from shard_index on. Round robin,
  so that the seed-major plan hands each shard a share of every seed and of the expensive backbones."""
  num, index = int(config.experiment.num_shards), int(config.experiment.shard_index)
  if num < 1 or not 0 <= index < num:
    raise errors.ConfigError(
        f"config.experiment.shard_index={index} with num_shards={num}: need 0 <= shard_index < num_shards"
    )
  return list(specs[index::num])


def run_config(
    config: ml_collections.ConfigDict, spec: RunSpec, domains: Sequence[str]
) -> ml_collections.ConfigDict:
  """A copy of the grid config for one run: its source, every other domain as a target (and so as a
  generalization-loss domain), its backbone, variant, seed and overrides."""
  c = copy.deepcopy(config)
  c.data.source = spec.source
  c.data.targets = tuple(d for d in domains if d != spec.source)
  c.data.auxiliary = ()
  c.model.backbone = spec.backbone
  c.train.seed = int(spec.seed)
  c.experiment.mode = spec.mode
  c.experiment.name = f"{config.experiment.name or 'grid'}/{spec.relpath.as_posix()}"
  return config_lib.override(c, spec.overrides(), what=f"run {spec.name}")


def member_groups(
    items: Sequence[tuple[ml_collections.ConfigDict, Any]], max_size: int
) -> list[list[tuple[ml_collections.ConfigDict, Any]]]:
  """(run config, payload) items in groups that train as one program (training.train_members):
  configs equal outside the traced fields (seeds, alphas, L_gen switches), at most max_size per group
  (<= 1: every run alone), in plan order of each group's first run. text_knn trains nothing: alone."""
  from recg_jax.training import members  # pylint: disable=g-import-not-at-top

  groups: dict[str, list] = {}
  for i, (rc, payload) in enumerate(items):
    # text_knn trains nothing, nor does a fusion over a finished run's trained part.
    alone = (
        max_size <= 1 or rc.model.variant == "text_knn" or bool(rc.fusion.enabled and rc.fusion.trained_run)
    )
    key = f"alone:{i}" if alone else json.dumps(members.shared_fields(rc), sort_keys=True, default=str)
    groups.setdefault(key, []).append((rc, payload))
  size = max(int(max_size), 1)
  return [g[lo : lo + size] for g in groups.values() for lo in range(0, len(g), size)]


def budget_label(budget: float) -> str:
  """A training budget as its folder and column name: 0.05 -> '5pct'."""
  return f"{100 * float(budget):g}pct"


def budgets(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """experiment.budgets, checked: shares in (0, 1], ascending, without repeats."""
  values = tuple(float(b) for b in config.experiment.budgets)
  if not values or any(not 0.0 < b <= 1.0 for b in values) or list(values) != sorted(set(values)):
    raise errors.ConfigError(
        f"config.experiment.budgets={values}: expected shares in (0, 1], ascending, without repeats"
    )
  return values
