"""The stages of a run, in order. Each reads the cache of the stage before it and can be re-run alone.

experiment.mode selects how far a run goes:
  data       prepare every configured domain and print the per-domain table;
  embed      + embed every item of every domain with the frozen text encoder (cached);
  in_domain  + train on the source and evaluate its test split;
  zero_shot  + sequence-level transfer and zero-shot evaluation on every target (the full method).
"""

from __future__ import annotations


import ml_collections

from recg_jax import distributed
from recg_jax import paths

MODES = ("data", "embed", "in_domain", "zero_shot")


def _say(message: str) -> None:
  """Stage output a user reads on the console (from the primary process only)."""
  if distributed.is_primary():
    print(message, flush=True)


def prepare_data(config: ml_collections.ConfigDict, workdir: paths.Path):
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top
  # The primary process builds the caches; the others read them once it is done.
  if distributed.is_primary():
    domains = prepare.load_domains(config, workdir)
  distributed.barrier("data caches")
  if not distributed.is_primary():
    domains = prepare.load_domains(config, workdir, log=lambda _: None)
  _say(prepare.domain_table(domains))
  return domains


def embed_domains(config: ml_collections.ConfigDict, workdir: paths.Path, domains):
  """Frozen LLM table per domain ([I+1, H], row 0 zeros), computed once and cached."""
  from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top
  return {name: embed.domain_embeddings(config, domain, workdir) for name, domain in domains.items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  mode = config.experiment.mode
  if mode not in MODES:
    raise ValueError(f"experiment.mode={mode!r}: expected one of {MODES}")
  workdir_path = paths.as_path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)

  domains = prepare_data(config, workdir_path)
  if mode == "data":
    return None
  tables = None
  if config.model.variant != "id" or mode == "embed":
    tables = embed_domains(config, workdir_path, domains)
  if mode == "embed":
    return None
  if tables is not None:
    from recg_jax.models import text_space  # pylint: disable=g-import-not-at-top
    tables = text_space.transform_tables(tables, str(config.model.table_transform))
  if mode == "in_domain" and config.model.variant == "text_knn":
    from recg_jax import transfer  # pylint: disable=g-import-not-at-top
    return transfer.evaluate_untrained(config, workdir_path, domains, tables, zero_shot=False)
  if mode == "in_domain":
    from recg_jax import results  # pylint: disable=g-import-not-at-top
    from recg_jax import train  # pylint: disable=g-import-not-at-top
    trained = train.train_and_evaluate(config, workdir_path, domains, tables)
    if distributed.is_primary():  # the file its process wrote
      _say(results.format_summary(results.read_records(workdir_path / "results.json")))
      _say(f"[results] {workdir_path / 'results.md'}")
    return trained
  from recg_jax import transfer  # pylint: disable=g-import-not-at-top
  return transfer.run_zero_shot(config, workdir_path, domains, tables)
