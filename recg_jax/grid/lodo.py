"""The leave-one-domain-out study: every domain is the zero-shot target of models trained on all the others.

`python -m recg_jax.baselines --config=configs/lodo_shared.py --workdir=DIR` (experiment.study =
'leave_one_out'). Four kinds of run, each in its own folder under DIR/runs/:

  lodo/<target>/<preset>/seed<k>      experiment.presets trained on every domain but <target> (data.source
                                      'A+B+...'), zero-shot on <target>;
  text/<domain>/<preset>/seed0        experiment.text_presets (no training) on <domain>: its test split is
                                      what the method scores zero-shot there, whatever it was 'trained' on;
  single/<domain>/<preset>/seed<k>    experiment.single_source_presets trained on <domain> alone, zero-shot
                                      on every other domain (and in-domain on <domain>);
  in_domain/<domain>/<preset>/seed<k> experiment.in_domain_presets trained and tested on <domain>.

Every choice is made on experiment.validation_domains' columns only, which the tables mark and never
quote as results: the text baseline (the best text preset by mean NDCG@10 under `full` over them), a mix
model's target weight, and for each target the best single source. DIR/results.md is rewritten after
every group of runs, so the tables are never behind the runs; a restarted study skips finished runs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from recg_jax import compile_stats
from recg_jax import config as config_lib
from recg_jax import distributed
from recg_jax import errors
from recg_jax import paths
from recg_jax import pipeline
from recg_jax.config.presets import PRESETS
from recg_jax.data import types
from recg_jax.grid import archive
from recg_jax.grid import baselines
from recg_jax.grid import lodo_report
from recg_jax.grid import planning
from recg_jax.grid import runner

KINDS = ("lodo", "text", "single", "in_domain")


@dataclasses.dataclass(frozen=True)
class Item:
  """One run of the study: its kind, the domain it is about (the held-out target, or the domain it is
  trained on), its preset and seed."""

  kind: str
  domain: str
  preset: str
  seed: int

  @property
  def relpath(self) -> str:
    return f"runs/{self.kind}/{self.domain}/{self.preset}/seed{self.seed}"


def _check_presets(names: Sequence[str], field: str) -> None:
  bad = [p for p in names if p not in PRESETS]
  if bad:
    raise errors.ConfigError(f"config.experiment.{field}: {bad} not in {sorted(PRESETS)}")


def plan(config: ml_collections.ConfigDict) -> list[Item]:
  """Every run, training-free ones first, then seed by seed (an interrupted study has whole seeds)."""
  ec = config.experiment
  domains = planning.grid_domains(config)
  for field in ("presets", "text_presets", "single_source_presets", "in_domain_presets"):
    _check_presets(tuple(ec[field]), field)
  for field in ("validation_domains", "held_out_domains"):
    bad = [d for d in ec[field] if d not in domains]
    if bad:
      raise errors.ConfigError(f"config.experiment.{field}: {bad} not in {domains}")
  held_out = tuple(ec.held_out_domains) or domains
  seeds = tuple(int(s) for s in ec.seeds)
  if not seeds:
    raise errors.ConfigError("config.experiment.seeds is empty")
  items = [Item("text", d, p, 0) for p in ec.text_presets for d in domains]
  for seed in seeds:
    items += [Item("in_domain", d, p, seed) for p in ec.in_domain_presets for d in domains]
    items += [Item("single", d, p, seed) for p in ec.single_source_presets for d in domains]
    items += [Item("lodo", d, p, seed) for p in ec.presets for d in domains if d in held_out]
  return items


def run_config(
    config: ml_collections.ConfigDict, item: Item, domains: Sequence[str]
) -> ml_collections.ConfigDict:
  """The config of one run: its sources, targets, mode and seed, then its preset."""
  c = copy.deepcopy(config)
  others = tuple(d for d in domains if d != item.domain)
  if item.kind == "lodo":
    c.data.source, c.data.targets = types.SOURCE_SEPARATOR.join(others), (item.domain,)
  elif item.kind == "single":
    c.data.source, c.data.targets = item.domain, others
  else:
    c.data.source, c.data.targets = item.domain, ()
  c.data.auxiliary = ()
  c.train.seed = int(item.seed)
  if item.kind == "text":
    # Nothing is trained: every user is evaluated, as every zero-shot target is, so the text baseline
    # and the trained rows it is held against are measured on the same users.
    c.train.max_users_per_source = 0
  c.experiment.mode = "in_domain" if item.kind in ("text", "in_domain") else "zero_shot"
  c.experiment.name = f"{config.experiment.name or 'lodo'}/{item.relpath.removeprefix('runs/')}"
  return config_lib.apply_preset(c, item.preset)


def _embedding_key(config: ml_collections.ConfigDict) -> str:
  """What decides a domain's frozen table: the text fields and template, and the encoder."""
  return json.dumps(
      [list(config.data.text_fields), config.text.to_dict(), config.encoder.to_dict()],
      sort_keys=True,
      default=str,
  )


def with_text_of(domain: types.DomainData, config: ml_collections.ConfigDict) -> types.DomainData:
  """The domain's own users and items, their text rendered from config.data.text_fields instead: a
  text-fields preset changes what is embedded, never which items and users are compared (preparing the
  data under its fields would drop the items without those fields and change the domain)."""
  from recg_jax.data import text  # pylint: disable=g-import-not-at-top

  missing = [f for f in config.data.text_fields if f not in domain.item_fields]
  if missing:
    raise errors.ConfigError(
        f"config.data.text_fields={tuple(config.data.text_fields)}: {domain.name} was prepared with the "
        f"fields {sorted(domain.item_fields)}, without {missing}; a study's text-fields preset can only "
        "embed fields the study's data has"
    )
  texts, _ = text.render_rows(domain.item_fields, config.text, config.data.text_fields)
  texts[0] = domain.item_text[0]  # the padding row
  return dataclasses.replace(domain, item_text=texts)


class _Tables:
  """The frozen tables of every domain, loaded once per embedding key (a text-fields preset has its own).

  The study's own key keeps its embeddings in the workdir's cache; any other key embeds the same domains'
  items (with_text_of) in a folder of its own (tables/<hash>/), since the embedding cache holds one table
  per domain name: sharing it, two keys would rebuild each other's tables at every start."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: paths.Path, order: Sequence[str]):
    self.workdir, self.order, self.cache = workdir, tuple(order), {}
    self.main_key = _embedding_key(config)
    self.domains, tables = runner.load_domains(config, workdir, self.order, with_tables=True)
    self.cache[self.main_key] = tables

  def __call__(self, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    key = _embedding_key(config)
    if key not in self.cache:
      root = self.workdir / "tables" / hashlib.sha256(key.encode()).hexdigest()[:12]
      root.mkdir(parents=True, exist_ok=True)
      self.cache[key] = {
          name: pipeline.embed_domains(config, root, {name: with_text_of(domain, config)})[name]
          for name, domain in self.domains.items()
      }
    return self.cache[key]


def _pending(config, items, domains_order, workdir, aggregate_only) -> list[runner.PendingRun]:
  pending = []
  for i, item in enumerate(items, 1):
    rc = run_config(config, item, domains_order)
    run_dir = workdir / item.relpath
    tag = f"[lodo] {i}/{len(items)} {item.relpath}"
    if runner.finished(run_dir, rc):
      distributed.say(f"{tag}: skip (finished)")
    elif not aggregate_only:
      spec = planning.RunSpec(str(rc.data.source), str(rc.model.backbone), str(rc.model.variant), item.seed)
      pending.append(runner.PendingRun(rc, spec, run_dir, tag, item.preset, item.relpath))
  return pending


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    command: str = "",
    aggregate_only: bool = False,
) -> dict[str, Any]:
  """Runs every unfinished run, rewriting DIR/results.md after each group; returns what ran and failed."""
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  archive.sync(workdir, archive.folder(config))
  order = planning.grid_domains(config)
  items = plan(config)
  tables = _Tables(config, workdir, order)
  baselines.write_random(workdir, config, tables.domains)
  meta = runner.study_meta(command, order, [i.relpath for i in items])
  pending = _pending(config, items, order, workdir, aggregate_only)
  compile_stats.install()
  ran, failed = [], []
  # Runs of one embedding key go through the runner together (their tables are the same).
  for key in dict.fromkeys(_embedding_key(p.config) for p in pending):
    group = [p for p in pending if _embedding_key(p.config) == key]
    done, bad = runner.run_pending(
        group,
        tables.domains,
        tables(group[0].config),
        workdir,
        meta["machine"],
        int(config.experiment.member_group_size),
        "[lodo]",
        after_each=lambda: lodo_report.write_report(workdir, config, meta),
    )
    ran, failed = ran + done, failed + bad
  path = lodo_report.write_report(workdir, config, meta)
  return {"ran": ran, "failed": failed, "tables": str(path)}
