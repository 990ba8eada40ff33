"""The warm-start study: from a new catalogue's first interactions to all of them, when does training on
them beat text similarity?

`python -m recg_jax.baselines --config=configs/warm_start_shared.py --workdir=DIR
--config.experiment.init_study=LODO_DIR` (experiment.study = 'warm_start'). For every domain of
experiment.domains and every budget of experiment.budgets (train.budget: the fewest users, in one seeded
order, whose training parts hold that share of the domain's training interactions; nested budgets), three
kinds of run, each in its own folder under DIR/runs/:

  text/<domain>/<preset>/seed0                  experiment.text_presets: no training, every user;
  scratch/<domain>/<budget>/<preset>/seed<k>    experiment.presets trained on the budget alone;
  finetune/<domain>/<budget>/<preset>/seed<k>   experiment.finetune_presets started from seed k of the
                                                 same preset in a finished leave-one-out study
                                                 (LODO_DIR/runs/lodo/<domain>/..., trained on every other
                                                 domain: the domain itself never seen) and trained on
                                                 the budget.

A trained run validates (early stopping) on its budget's users and is tested over every user of the domain
(pipeline's 'budget' records): the users whose first interactions it trained on and all the others. A
fine-tuned run whose starting run is not finished yet is skipped until it is. DIR/results.md and the
crossover figure are rewritten after every group of runs (recg_jax/grid/warm_start_report.py).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import ml_collections

from recg_jax import compile_stats
from recg_jax import config as config_lib
from recg_jax import distributed
from recg_jax import errors
from recg_jax import fusion
from recg_jax import paths
from recg_jax.config import roles
from recg_jax.config.presets import PRESETS
from recg_jax.grid import archive
from recg_jax.grid import baselines
from recg_jax.grid import in_domain_report
from recg_jax.grid import planning
from recg_jax.grid import runner
from recg_jax.grid import warm_start_report

KINDS = ("text", "scratch", "finetune")
# The tables of each study this module runs: the warm-start study, and the in-domain study (its budget of
# 100% alone).
REPORTS = {"warm_start": warm_start_report.write_report, "in_domain": in_domain_report.write_report}


@dataclasses.dataclass(frozen=True)
class Item:
  """One run of the study: its kind, domain, budget (1.0 for a text preset), preset and seed."""

  kind: str
  domain: str
  budget: float
  preset: str
  seed: int

  @property
  def relpath(self) -> str:
    if self.kind == "text":
      return f"runs/text/{self.domain}/{self.preset}/seed{self.seed}"
    return (
        f"runs/{self.kind}/{self.domain}/{planning.budget_label(self.budget)}/{self.preset}/seed{self.seed}"
    )


def plan(config: ml_collections.ConfigDict) -> list[Item]:
  """Every run: the text presets first, then domain by domain, budget by budget (the smallest first), seed
  by seed, so that an interrupted study has whole curves of its first domains."""
  ec = config.experiment
  domains = planning.grid_domains(config)
  for field in ("presets", "text_presets", "finetune_presets"):
    bad = [p for p in ec[field] if p not in PRESETS]
    if bad:
      raise errors.ConfigError(f"config.experiment.{field}: {bad} not in {sorted(PRESETS)}")
  if tuple(ec.finetune_presets) and not str(ec.init_study):
    raise errors.ConfigError(
        "config.experiment.finetune_presets need config.experiment.init_study: the folder of a finished "
        "leave-one-out study (configs/lodo_shared.py) whose runs they start from"
    )
  bad = [d for d in ec.validation_domains if d not in domains]
  if bad:
    raise errors.ConfigError(f"config.experiment.validation_domains: {bad} not in {domains}")
  seeds = tuple(int(s) for s in ec.seeds)
  if not seeds:
    raise errors.ConfigError("config.experiment.seeds is empty")
  items = [Item("text", d, 1.0, p, 0) for p in ec.text_presets for d in domains]
  study_budgets = (1.0,) if str(ec.study) == "in_domain" else planning.budgets(config)
  for d in domains:
    for b in study_budgets:
      for seed in seeds:
        items += [Item("scratch", d, b, p, seed) for p in ec.presets]
        items += [Item("finetune", d, b, p, seed) for p in ec.finetune_presets]
  return items


def init_run(config: ml_collections.ConfigDict, item: Item) -> paths.Path:
  """The leave-one-out run a fine-tuned item starts from: the same preset and seed, its domain held out."""
  return (
      paths.as_path(config.experiment.init_study)
      / "runs"
      / "lodo"
      / item.domain
      / item.preset
      / (f"seed{item.seed}")
  )


def _plain_run_config(config: ml_collections.ConfigDict, item: Item) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config)
  c.data.source, c.data.targets, c.data.auxiliary = item.domain, (), ()
  c.experiment.mode = "in_domain"
  c.train.seed = int(item.seed)
  c.train.max_users_per_source = 0  # every user is tested; the budget decides who trains
  c.train.budget = float(item.budget)
  c.train.init_from = str(init_run(config, item)) if item.kind == "finetune" else ""
  c.experiment.name = f"{config.experiment.name or 'warm_start'}/{item.relpath.removeprefix('runs/')}"
  return config_lib.apply_preset(c, item.preset)


def _without_fusion(c: ml_collections.ConfigDict) -> dict[str, Any]:
  return {k: v for k, v in roles.fingerprint(c).items() if k not in ("fusion", "experiment")}


def trained_part_of(config: ml_collections.ConfigDict, item: Item) -> Item | None:
  """For a fusion preset, the study's run (same kind, domain, budget and seed) of the first preset that
  trains exactly its trained part, if any: the fusion then fits over that run instead of training again."""
  if item.kind == "text" or not PRESETS[item.preset].get("fusion.enabled"):
    return None
  c = _plain_run_config(config, item)
  if fusion.trains_its_part(c):
    return None
  mine = _without_fusion(c)
  for preset in config.experiment.presets:
    if preset == item.preset or PRESETS[preset].get("fusion.enabled"):
      continue
    other = dataclasses.replace(item, preset=preset)
    if _without_fusion(_plain_run_config(config, other)) == mine:
      return other
  return None


def run_config(config: ml_collections.ConfigDict, item: Item) -> ml_collections.ConfigDict:
  """The config of one run: in-domain on its domain, its budget, seed and starting point, then its preset
  (a fusion over the run of the study's preset that trains its trained part, when there is one)."""
  c = _plain_run_config(config, item)
  base = trained_part_of(config, item)
  if base is not None:  # relative to the fusion's own folder, so that a moved study keeps working
    c.fusion.trained_run = os.path.relpath(base.relpath, item.relpath)
  return c


def _pending(config, items, workdir, aggregate_only) -> tuple[list[runner.PendingRun], list[str]]:
  """The runs to execute now, and the relpaths of those that wait: a fine-tuned run for its starting run, a
  fusion for the run of its trained part (unless that run is planned now). A fusion over a finished run
  restored from an archive (no parameters left) trains its part itself."""
  pending, waiting, planned = [], [], set()  # planned: the relpaths of `pending`
  for i, item in enumerate(items, 1):
    rc = run_config(config, item)
    run_dir = workdir / item.relpath
    tag = f"[warm_start] {i}/{len(items)} {item.relpath}"
    if runner.finished(run_dir, rc):
      distributed.say(f"{tag}: skip (finished)")
    elif item.kind == "finetune" and runner.read_done(init_run(config, item)) is None:
      waiting.append(item.relpath)
      distributed.say(f"{tag}: waits for its starting run {init_run(config, item)} to finish")
    elif (base := trained_part_of(config, item)) and not (
        runner.read_done(workdir / base.relpath) is not None or base.relpath in planned
    ):
      waiting.append(item.relpath)
      distributed.say(f"{tag}: waits for the run of its trained part, {base.relpath}")
    elif not aggregate_only:
      if base and base.relpath not in planned:
        if not archive.has_parameters(workdir / base.relpath):  # restored from an archive: train it here
          rc.fusion.trained_run = ""
      spec = planning.RunSpec(item.domain, str(rc.model.backbone), str(rc.model.variant), item.seed)
      pending.append(runner.PendingRun(rc, spec, run_dir, tag, item.preset, item.relpath))
      planned.add(item.relpath)
  return pending, waiting


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    command: str = "",
    aggregate_only: bool = False,
) -> dict[str, Any]:
  """Runs every unfinished run whose start is there, rewriting DIR/results.md after each group; returns
  what ran, failed and waits."""
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  archive.sync(workdir, archive.folder(config))
  order = planning.grid_domains(config)
  items = plan(config)
  domains, tables = runner.load_domains(config, workdir, order, with_tables=True)
  baselines.write_random(workdir, config, domains)
  meta = runner.study_meta(command, order, [i.relpath for i in items])
  pending, waiting = _pending(config, items, workdir, aggregate_only)
  write_report = REPORTS[str(config.experiment.study)]
  compile_stats.install()
  ran, failed = runner.run_pending(
      pending,
      domains,
      tables,
      workdir,
      meta["machine"],
      int(config.experiment.member_group_size),
      "[warm_start]",
      after_each=lambda: write_report(workdir, config, meta),
  )
  path = write_report(workdir, config, meta)
  return {"ran": ran, "failed": failed, "waiting": waiting, "tables": str(path)}
