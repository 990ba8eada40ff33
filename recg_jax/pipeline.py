"""The stages of a run, in order, and the one way a model is run through them.

experiment.mode selects how far `run` (the `main` command) goes:
  data       prepare every configured domain and print the per-domain table;
  embed      + embed every item of every domain with the frozen text encoder (cached);
  in_domain  + train on the source and evaluate its test split;
  zero_shot  + sequence-level transfer and zero-shot evaluation on every target (the full method).

`train_and_transfer` takes one model, or several that differ only in traced fields (recg_jax/config/
roles.py), from prepared domains and tables to their result records: `text_knn` is evaluated without
training, every other variant is trained (together, as members of one stacked step) and, in zero_shot
mode, transferred (recg_jax/transfer.py) to every target. `main`, the experiment grid and the studies all
run their models through it. Each stage reads the cache of the stage before it and can be re-run alone.
"""

from __future__ import annotations

import copy
import traceback
from typing import Sequence

import ml_collections
import numpy as np

from recg_jax import distributed
from recg_jax import errors
from recg_jax import paths
from recg_jax import results as results_lib
from recg_jax.data import types

MODES = ("data", "embed", "in_domain", "zero_shot")
# A run whose model learns one vector per item of its catalogue writes that catalogue's item ids here, in
# the order of its tables (row 1 first): what serving maps a catalogue's items onto.
ITEM_IDS = "item_ids.json"
# A record list per run, or the exception the run ended with.
Outcome = list[dict] | Exception


def prepare_data(config: ml_collections.ConfigDict, workdir: paths.Path) -> dict[str, types.DomainData]:
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top
  # The primary process builds the caches; the others read them once it is done.
  if distributed.is_primary():
    domains = prepare.load_domains(config, workdir)
  distributed.barrier("data caches")
  if not distributed.is_primary():
    domains = prepare.load_domains(config, workdir, log=lambda _: None)
  distributed.say(prepare.domain_table(domains))
  return domains


def embed_domains(
    config: ml_collections.ConfigDict, workdir: paths.Path, domains: dict[str, types.DomainData]
) -> dict[str, np.ndarray]:
  """Frozen LLM table per domain ([I+1, H], row 0 zeros), computed once and cached."""
  from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top

  return {name: embed.domain_embeddings(config, domain, workdir) for name, domain in domains.items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict] | None:
  """The stages up to config.experiment.mode; the run's result records (None for 'data' and 'embed')."""
  mode = config.experiment.mode
  if mode not in MODES:
    raise errors.ConfigError(f"experiment.mode={mode!r}: expected one of {MODES}")
  workdir_path = paths.as_path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  if mode in ("data", "embed"):
    domains = prepare_data(config, workdir_path)
  else:  # only what the run reads: an in-domain run leaves its targets alone
    reads = copy.deepcopy(config)
    names = reads_domains(config)
    reads.data.source = "+".join(n for n in names if n in types.source_names(config.data.source))
    reads.data.targets = tuple(n for n in names if n in tuple(config.data.targets))
    reads.data.auxiliary = tuple(n for n in names if n in tuple(config.data.auxiliary))
    domains = prepare_data(reads, workdir_path)
  if mode == "data":
    return None
  tables = None
  if needs_tables(config) or mode == "embed":
    tables = embed_domains(config, workdir_path, domains)
  if mode == "embed":
    return None
  (outcome,) = train_and_transfer([config], [workdir_path], domains, tables)
  if isinstance(outcome, Exception):
    raise outcome
  return outcome


def run_domains(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The domains of a run's config: its source(s), targets and auxiliary domains, without repeats."""
  sources = types.source_names(config.data.source)
  return tuple(dict.fromkeys([*sources, *config.data.targets, *config.data.auxiliary]))


def reads_domains(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The domains a run reads: run_domains, but an in-domain run without RecG's generalization loss (which
  samples the other domains' items) reads its source(s) alone."""
  from recg_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  if str(config.experiment.mode) == "zero_shot" or step_lib.gen_loss_enabled(config):
    return run_domains(config)
  return types.source_names(config.data.source)


def _capped(config: ml_collections.ConfigDict, domains: dict[str, types.DomainData]) -> dict:
  """The run's domains with each source domain cut to train.max_users_per_source users (a seeded sample
  that does not depend on the run's seed), then, for a model that trains, to train.budget's users;
  targets are evaluated whole."""
  cap = int(config.train.max_users_per_source)
  budget = float(config.train.budget)
  if not 0.0 < budget <= 1.0:
    raise errors.ConfigError(f"config.train.budget={budget}: expected a share of the interactions in (0, 1]")
  budget = budget if config.model.variant != "text_knn" or config.knn_fit.enabled else 1.0
  sources = set(types.source_names(config.data.source))
  return {
      n: types.budget_subset(types.user_subset(d, cap), budget) if n in sources else d
      for n, d in domains.items()
  }


def _budget_records(
    config: ml_collections.ConfigDict,
    domains: dict[str, types.DomainData],
    evaluate_fn,
) -> list[dict]:
  """With train.budget < 1: each source's test split scored over all its users (those of the budget,
  whose training parts the model saw, and all the others, whose histories it reads only as inputs), as
  records of the stage 'budget'. None of it is seen in training or early stopping. evaluate_fn(source,
  domain, split) gives the method's metrics."""
  budget = float(config.train.budget)
  if budget >= 1.0:
    return []
  cap = int(config.train.max_users_per_source)
  records = []
  for source in types.source_names(config.data.source):
    whole = types.user_subset(domains[source], cap)
    metrics = evaluate_fn(source, whole, "test")
    extra = {
        "budget": budget,
        "budget_users": len(types.budget_users(whole, budget)),
        "users": whole.num_users,
    }
    records.append(
        results_lib.make_record(config, "budget", source, {f"test/{k}": v for k, v in metrics.items()}, extra)
    )
  return records


def needs_tables(config: ml_collections.ConfigDict) -> bool:
  """Whether a run reads item text embeddings: its model does (recommender.reads_table), or it fuses a
  trained model with a text recommender (config.fusion)."""
  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top

  return recommender.reads_table(config.model) or bool(config.fusion.enabled)


def model_tables(
    config: ml_collections.ConfigDict, tables: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray] | None:
  """The frozen tables of the run's domains as its model reads them (model.table_transform applied; for
  variant 'text_id' the texts' whitened coordinates reduced to model.hidden_dim); None for a model that
  reads no table (a plain variant 'id')."""
  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top

  if not recommender.reads_table(config.model) or tables is None:
    return None
  return {n: model_table(config, tables[n]) for n in reads_domains(config) if n in tables}


def model_table(config: ml_collections.ConfigDict, table: np.ndarray) -> np.ndarray:
  """One domain's frozen table as config.model reads it (see model_tables), from that table alone."""
  from recg_jax.models import text_hybrid  # pylint: disable=g-import-not-at-top
  from recg_jax.models import text_space  # pylint: disable=g-import-not-at-top

  mc = config.model
  if str(mc.variant) == "text_id":
    return text_hybrid.text_coordinates(
        table, int(mc.hidden_dim), float(mc.text_id_scale), float(mc.whiten_shrinkage)
    )
  return text_space.transform_tables({"": table}, str(mc.table_transform), float(mc.whiten_shrinkage))[""]


def train_and_transfer(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str | paths.Path],
    domains: dict[str, types.DomainData],
    tables: dict[str, np.ndarray] | None,
    group_dir: str | paths.Path | None = None,
) -> list[Outcome]:
  """Runs models that differ only in traced fields through training and transfer; one outcome per model.

  Each config's experiment.mode decides how far it goes: 'in_domain' trains and tests on the source,
  'zero_shot' also fits the sequence-level step (RecG) and evaluates every target. Variant 'text_knn'
  trains nothing. Every run writes results.json / results.md in its workdir. `domains` and `tables` may
  hold more domains than a run reads (the grid loads them all once). Runs trained together keep their
  shared checkpoint in group_dir. A member's failure after training is its outcome alone; a failure of
  the group's training is raised.
  """
  configs, workdirs = list(configs), [paths.as_path(w) for w in workdirs]
  config = configs[0]
  zero_shot = str(config.experiment.mode) == "zero_shot"
  if zero_shot and config.model.variant in ("id", "text_id"):
    raise errors.ConfigError(
        f"config.model.variant={config.model.variant!r} learns one vector per item of its source, so it "
        "cannot transfer to another domain: use experiment.mode=in_domain, or variant 'sem' / 'recg' for "
        "zero-shot runs"
    )
  if zero_shot and config.fusion.enabled:
    raise errors.ConfigError(
        "config.fusion fits its weight on the source's validation split, for the source: use "
        "experiment.mode=in_domain"
    )
  run_tables = model_tables(config, tables)
  names = reads_domains(config) if run_tables is not None else types.source_names(config.data.source)
  missing = [n for n in names if n not in domains]
  if missing:
    raise errors.ConfigError(
        f"the run reads domains {missing}, which were not loaded (loaded: {sorted(domains)})"
    )
  loaded = {n: domains[n] for n in names}
  run_domains_ = _capped(config, loaded)
  if config.model.variant == "text_knn":
    return [
        _outcome(lambda c=c, w=w: evaluate_text_knn(c, w, run_domains_, run_tables, zero_shot))
        for c, w in zip(configs, workdirs)
    ]
  if config.fusion.enabled and str(config.fusion.trained_run):  # nothing to train
    return [
        _outcome(lambda c=c, w=w: fuse_finished(c, w, run_domains_, loaded, tables))
        for c, w in zip(configs, workdirs)
    ]
  from recg_jax import fusion as fusion_lib  # pylint: disable=g-import-not-at-top
  from recg_jax import training  # pylint: disable=g-import-not-at-top

  # A fusion that fits theta on held-out users trains without them (fusion.holdout_users).
  train_domains, fit_domain = fusion_lib.held_out(config, run_domains_)
  trained = training.train_members(configs, workdirs, train_domains, run_tables, group_dir=group_dir)
  outcomes: list[Outcome] = []
  for c, w, result in zip(configs, workdirs, trained):
    if result.error:
      outcomes.append(training.NonFiniteLossError(result.error))
      continue

    def records_of(c=c, w=w, r=result) -> list[dict]:
      # transfer_trained writes and prints its records; an in-domain run's were written by training.
      if zero_shot:
        records = transfer_trained(c, w, run_domains_, run_tables, r)
      else:
        records = results_lib.read_records(w / "results.json") if distributed.is_primary() else []
        write_item_ids(w, c, run_domains_)
      if c.fusion.enabled:
        return fuse_trained(c, w, run_domains_, loaded, tables, r.model, r.params, records, fit_domain)
      extra = _budget_records(c, loaded, _trained_evaluation(c, r, run_tables))
      if extra:
        records = [*records, *extra]
        results_lib.write_results(w, records, c)
      if extra or not zero_shot:
        results_lib.print_summary(records, w / "results.md")
      return records

    outcomes.append(_outcome(records_of))
  return outcomes


def _trained_evaluation(config: ml_collections.ConfigDict, trained, run_tables):
  """(source, domain, split) -> the trained model's metrics on that split of the domain."""
  from recg_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top

  def evaluate_fn(source, domain, split):
    table = None if run_tables is None else run_tables[source]
    rows = types.leave_one_out(domain, split, int(config.data.max_len))
    return evaluate_lib.evaluate_split(trained.model, trained.params, table, rows, domain, config.eval, None)

  return evaluate_fn


def fuse_trained(
    config: ml_collections.ConfigDict,
    workdir: paths.Path,
    domains: dict[str, types.DomainData],
    whole: dict[str, types.DomainData],
    tables: dict[str, np.ndarray] | None,
    model,
    params,
    trained_records: Sequence[dict],
    fit_domain: types.DomainData | None = None,
) -> list[dict]:
  """config.fusion after the trained part: theta fitted on the validation split of fit_domain (the users
  held out of the trained part's training; None: the source), then the fused recommender's validation and
  test metrics on the source (and with a budget its 'budget' records over every user, from `whole`), the
  trained part's own metrics kept in each record's extra. Writes fusion.json, results.json and results.md
  in workdir; returns the records."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  from recg_jax import fusion as fusion_lib  # pylint: disable=g-import-not-at-top

  fusion_lib.check(config)
  (source,) = types.source_names(config.data.source)
  if tables is None or source not in tables:
    raise errors.ConfigError(f"config.fusion needs the frozen text table of {source!r}")
  fused = fusion_lib.fused_on(config, domains[source], tables[source], model, params)
  fitted = fusion_lib.fit(config, fused, domains[source] if fit_domain is None else fit_domain)
  fusion_lib.announce(fitted, source)
  fused = dataclasses.replace(fused, theta=fitted.theta)
  metrics = {
      f"{split}/{k}": v
      for split in ("valid", "test")
      for k, v in fusion_lib.evaluate_split(config, fused, domains[source], split).items()
  }
  base = next((r for r in trained_records if r.get("stage") == "in_domain"), {"extra": {}, "metrics": {}})
  extra = {**(base.get("extra") or {}), "fusion": fitted.as_extra(config), "trained_part": base["metrics"]}
  records = [results_lib.make_record(config, "in_domain", source, metrics, extra)]
  records += _budget_records(
      config, whole, lambda _, domain, split: fusion_lib.evaluate_split(config, fused, domain, split)
  )
  if distributed.is_primary():
    fusion_lib.write_fit(workdir, config, fitted)
  write_item_ids(workdir, config, domains)
  results_lib.write_and_print(workdir, records, config)
  return records


def fuse_finished(
    config: ml_collections.ConfigDict,
    workdir: str | paths.Path,
    domains: dict[str, types.DomainData],
    whole: dict[str, types.DomainData],
    tables: dict[str, np.ndarray] | None,
) -> list[dict]:
  """fuse_trained over the trained part of the finished run config.fusion.trained_run: nothing trains."""
  from recg_jax import fusion as fusion_lib  # pylint: disable=g-import-not-at-top
  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top

  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  params, records = fusion_lib.finished_trained_part(config, workdir)
  # Its training, resumed or not, was that run's cost, not this fusion's (runner.earlier_training_s).
  records = [
      {**r, "extra": {k: v for k, v in (r.get("extra") or {}).items() if k != "resumed_wall_s"}}
      for r in records
  ]
  (source,) = types.source_names(config.data.source)
  model = recommender.build_model(config, domains[source].num_items)
  return fuse_trained(config, workdir, domains, whole, tables, model, params, records)


def learns_items(config: ml_collections.ConfigDict) -> bool:
  """Whether the run's model learns a vector per item of its own catalogue (variants 'id' and 'text_id')."""
  return str(config.model.variant) in ("id", "text_id")


def write_item_ids(workdir: paths.Path, config: ml_collections.ConfigDict, domains: dict) -> None:
  """ITEM_IDS in workdir for a model that learns its items (nothing for the others)."""
  if not learns_items(config) or not distributed.is_primary():
    return
  (source,) = types.source_names(config.data.source)
  ids = [str(t) for t in domains[source].item_tokens[1:]]
  paths.write_json_atomic(paths.as_path(workdir) / ITEM_IDS, {"domain": source, "item_ids": ids})


def _outcome(run_one) -> Outcome:
  """run_one()'s records, or the exception it raised (with its traceback, for the grid's failure marker)."""
  try:
    return run_one()
  except Exception as e:  # pylint: disable=broad-except  (one run's failure is that run's alone)
    e.traceback = traceback.format_exc()
    return e


def evaluate_text_knn(
    config: ml_collections.ConfigDict,
    workdir: str | paths.Path,
    domains: dict[str, types.DomainData],
    tables: dict[str, np.ndarray],
    zero_shot: bool = True,
) -> list[dict]:
  """evaluate_untrained, after fitting the aggregation on the sources when config.knn_fit.enabled (its
  fitted values are in every record's extra)."""
  from recg_jax import knn_fit  # pylint: disable=g-import-not-at-top

  if not knn_fit.enabled(config):
    return evaluate_untrained(config, workdir, domains, tables, zero_shot)
  sources = types.source_names(config.data.source)
  missing = [d for d in sources if d not in tables]
  if missing:
    raise errors.ConfigError(f"config.knn_fit needs the frozen tables of {missing}")
  fitted = knn_fit.fit(config, [domains[s] for s in sources], [tables[s] for s in sources])
  distributed.say(
      f"[knn_fit] decay {fitted.decay:.3f}, temperature {fitted.temperature:.4f} (best epoch "
      f"{fitted.best_epoch} of {fitted.epochs_run})"
  )
  fitted_config = knn_fit.fitted_config(config, fitted)
  return evaluate_untrained(fitted_config, workdir, domains, tables, zero_shot, extra=fitted.as_extra())


def evaluate_untrained(
    config: ml_collections.ConfigDict,
    workdir: str | paths.Path,
    domains: dict[str, types.DomainData],
    tables: dict[str, np.ndarray],
    zero_shot: bool = True,
    extra: dict | None = None,
) -> list[dict]:
  """A model without parameters (variant 'text_knn'): every source's validation and test splits and,
  with zero_shot, every target's test split, through the same evaluation as the trained models. Writes
  results.json / results.md in workdir and returns the records (`extra` added to each record's)."""
  from recg_jax import transfer  # pylint: disable=g-import-not-at-top
  from recg_jax.models import recommender  # pylint: disable=g-import-not-at-top

  if str(config.model.variant) != "text_knn":
    raise errors.ConfigError(
        f"evaluate_untrained needs a model without parameters (variant 'text_knn'), got "
        f"{config.model.variant!r}"
    )
  sources = types.source_names(config.data.source)
  missing = [d for d in (*sources, *(config.data.targets if zero_shot else ())) if d not in tables]
  if missing:
    raise errors.ConfigError(f"variant 'text_knn' needs the frozen tables of {missing}")
  model, params = recommender.build_model(config, domains[sources[0]].num_items), {}
  records = []
  for source in sources:
    metrics = {}
    for split in ("valid", "test"):
      m = transfer.evaluate_domain(config, model, params, tables[source], domains[source], None, split)
      metrics.update({f"{split}/{k}": v for k, v in m.items()})
    records.append(
        results_lib.make_record(
            config, "in_domain", source, metrics, extra={"trained": extra is not None, **(extra or {})}
        )
    )
  for target in config.data.targets if zero_shot else ():
    m = transfer.evaluate_domain(config, model, params, tables[target], domains[target], None, "test")
    records.append(
        results_lib.make_record(
            config, "zero_shot", target, {f"zero_shot/{k}": v for k, v in m.items()}, extra=extra
        )
    )
  results_lib.write_and_print(workdir, records, config)
  return records


def transfer_trained(
    config: ml_collections.ConfigDict,
    workdir: str | paths.Path,
    domains: dict[str, types.DomainData],
    tables: dict[str, np.ndarray],
    trained,
) -> list[dict]:
  """After training (alone or as a member of training.train_members): the sequence-level step, every
  source's test split and every target; writes results.json / results.md in workdir and returns the
  records."""
  from recg_jax import transfer  # pylint: disable=g-import-not-at-top

  workdir = paths.as_path(workdir)
  sources = types.source_names(config.data.source)
  seq_transfer = None
  if transfer.sequence_step_enabled(config):
    if len(sources) == 1:
      fitted = transfer.fit_sequence_transfer(
          config, trained.model, trained.params, tables[sources[0]], domains[sources[0]]
      )
    else:
      fitted = transfer.fit_sequence_transfer(
          config, trained.model, trained.params, [tables[s] for s in sources], [domains[s] for s in sources]
      )
    seq_transfer = fitted
    transfer.save_sequence_transfer(workdir, seq_transfer)
  extra = {"best_epoch": trained.best_epoch, "stop_reason": trained.stop_reason}
  records = [
      results_lib.make_record(
          config,
          "in_domain",
          source,
          transfer.source_metrics(config, trained, tables[source], domains[source], seq_transfer),
          extra=extra,
      )
      for source in sources
  ]
  for target in config.data.targets:
    metrics = transfer.target_metrics(
        config, trained.model, trained.params, tables[target], domains[target], seq_transfer
    )
    records.append(results_lib.make_record(config, "zero_shot", target, metrics))
  results_lib.write_and_print(workdir, records, config)
  return records
