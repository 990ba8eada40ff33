"""The role of every config field, declared once.

A field not named in ROLES is structural: it shapes what a run computes, so it is part of everything below.
The others play one role each:

  PLAN       names and plans runs (the grid, the studies); no stage reads it to compute a number.
  TRACED     an input of the compiled train step (or of its initial state), not a constant baked into it:
             runs that differ only in traced fields share one program and train together as members of
             one stacked step.
  RESUMABLE  changes what a run computes but may change when it resumes (how long it trains, how often
             it validates).
  COSMETIC   how much work is done at once, or where the inputs are: no number depends on it (it may
             change on resume too).

From the roles come the three views of a config that the project compares:
  run_signature  what a training checkpoint depends on: TRAINING_SCOPE without RESUMABLE and COSMETIC
                 fields; a workdir whose checkpoint disagrees is not resumed;
  fingerprint    what decides a finished run's numbers: every section without PLAN and COSMETIC fields; a
                 study reuses a finished run only under an equal fingerprint;
  shared_fields  what runs trained together must agree on: every section without PLAN and TRACED fields.

A recorded view (a checkpoint's run_config.json, a finished run's fingerprint) is compared by recorded_diff,
after merging it over today's defaults: a field added later, at its default, never makes old runs differ.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from recg_jax.config import default
from recg_jax.config import overrides

PLAN = "plan"
TRACED = "traced"
RESUMABLE = "resumable"
COSMETIC = "cosmetic"

# 'section' or 'section.field' -> role.
ROLES: dict[str, str] = {
    "experiment": PLAN,
    # The step's hyperparameters (training.members.step_hparams turns them into its inputs).
    "train.seed": TRACED,
    "train.learning_rate": TRACED,
    "train.warmup_steps": TRACED,
    "train.weight_decay": TRACED,
    "train.grad_clip": TRACED,
    "train.cloze_last_item_prob": TRACED,
    "model.mask_prob": TRACED,
    "gen_loss.alpha": TRACED,
    "gen_loss.tau": TRACED,
    "gen_loss.inter_sign": TRACED,
    "gen_loss.use_intra": TRACED,
    "gen_loss.use_inter": TRACED,
    # Each member may start from its own finished run (or from scratch): it decides the initial
    # parameters, not the compiled step.
    "train.init_from": TRACED,
    # A constant-rate run may train longer, or validate less often, after a restart. (The cosine schedule
    # spans num_epochs: there, run_signature keeps it.)
    "train.num_epochs": RESUMABLE,
    "train.patience": RESUMABLE,
    "train.eval_every_epochs": RESUMABLE,
    "tuning.steps": RESUMABLE,  # a constant rate after the warmup: a tuning may run on
    "data.root": COSMETIC,
    "encoder.batch_size": COSMETIC,
    "encoder.bucket_sizes": COSMETIC,
    "encoder.cache_only": COSMETIC,
    "train.log_every_steps": COSMETIC,
    "train.prefetch": COSMETIC,
    "train.softmax_chunk_rows": COSMETIC,  # the same loss, up to float rounding
    "train.checkpoint_every_steps": COSMETIC,
    "train.max_to_keep": COSMETIC,
    "train.member_axis": COSMETIC,
    "train.source_table_rows": COSMETIC,
    "tuning.checkpoint_every_steps": COSMETIC,
    "tuning.log_every_steps": COSMETIC,
    "eval.batch_size": COSMETIC,
    "eval.score_block_rows": COSMETIC,
    "eval.max_scores_per_block": COSMETIC,
    # Where a fusion's trained part was trained: the same model whichever run trained it.
    "fusion.trained_run": COSMETIC,
}

# What training reads ('section' or 'section.field'): the scope of a checkpoint's run signature.
TRAINING_SCOPE = (
    "data.source",
    "data.targets",
    "data.auxiliary",
    "data.max_len",
    "model",
    "train",
    "gen_loss",
)


def fields_with(role: str) -> tuple[tuple[str, str], ...]:
  """(section, field) of every field declared with `role`, in declaration order."""
  return tuple(tuple(name.split(".")) for name, r in ROLES.items() if r == role and "." in name)


TRACED_FIELDS = fields_with(TRACED)


def as_dict(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
  """The config as plain JSON types (tuples become lists), a new dict."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=list))


def without(config: ml_collections.ConfigDict | dict[str, Any], roles: Iterable[str]) -> dict[str, Any]:
  """as_dict(config) without the sections and fields declared with any of `roles`."""
  d = as_dict(config)
  roles = set(roles)
  for name, role in ROLES.items():
    if role not in roles:
      continue
    section, _, field = name.partition(".")
    if not field:
      d.pop(section, None)
    elif isinstance(d.get(section), dict):
      d[section].pop(field, None)
  return d


def run_signature(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
  """The fields a training checkpoint depends on (TRAINING_SCOPE without RESUMABLE and COSMETIC fields)."""
  full = as_dict(config)
  kept = without(full, (RESUMABLE, COSMETIC))
  if full.get("train", {}).get("decay") == "cosine":
    kept["train"]["num_epochs"] = full["train"]["num_epochs"]
  out: dict[str, Any] = {}
  for name in TRAINING_SCOPE:
    section, _, field = name.partition(".")
    if field:
      out.setdefault(section, {})[field] = kept[section][field]
    else:
      out[section] = kept[section]
  return out


def fingerprint(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
  """The fields that decide a finished run's numbers (no PLAN and no COSMETIC fields)."""
  return without(config, (PLAN, COSMETIC))


def shared_fields(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
  """What runs trained as members of one stacked step must agree on (no PLAN and no TRACED fields)."""
  return without(config, (PLAN, TRACED))


def traced_values(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'section.field': value} of the traced fields: what tells the members of a stacked run apart."""
  return {f"{section}.{field}": config[section][field] for section, field in TRACED_FIELDS}


_MISSING = object()


def _paths(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [
        p
        for k in sorted(set(a) | set(b))
        for p in _paths(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")
    ]
  return [] if a == b else [prefix.rstrip(".")]


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
  """Dotted names of the fields where two views (nested dicts of plain JSON types) differ."""
  return _paths(as_dict(a), as_dict(b))


def members_over_defaults(recorded: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """A recorded member list (a group checkpoint's traced values, one dict per member), each merged over
  today's default traced values: a traced field added since, at its default, never makes a group differ."""
  defaults = as_dict(traced_values(default.get_config()))
  return [{**defaults, **dict(m)} for m in recorded]


def recorded_diff(
    recorded: dict[str, Any], config: ml_collections.ConfigDict, view: Callable[[Any], dict[str, Any]]
) -> list[str]:
  """diff of a view an earlier run recorded (run_signature, fingerprint) against the same view of `config`,
  the record merged over today's defaults first: a field added since, at its default, never differs."""
  return diff(view(overrides.merged_over_defaults(recorded)), view(config))
