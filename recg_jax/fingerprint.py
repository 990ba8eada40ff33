"""Comparing the config a run was recorded with against the current one (checkpoint resume, grid skips).

A config field added after runs were recorded is listed in ADDED_FIELDS with the value that computes what
those runs computed: a record that lacks the field still matches a config that holds that value.
"""

from __future__ import annotations

from typing import Any

ADDED_FIELDS: dict[str, Any] = {
    "model.merge_init": "default",
    "model.score_space": "projected",
    "model.text_user": "readout",
    "model.knn_decay": 0.5,
    "model.text_temperature": 0.05,
    "model.table_transform": "none",
    "transfer.target_model_weights": (),
    "model.sasrec_ffn_multiplier": 1,
    "model.sasrec_activation": "relu",
    "model.sasrec_ln_epsilon": 1e-6,
    "model.sasrec_init_std": 0.0,
    "train.compute_dtype": "float32",
}
_MISSING = object()


def _get(tree: Any, path: str) -> Any:
  for part in path.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return _MISSING
    tree = tree[part]
  return tree


def _paths(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [p for k in sorted(set(a) | set(b))
            for p in _paths(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")]
  return [] if a == b else [prefix.rstrip(".")]


def diff(stored: Any, current: Any) -> list[str]:
  """Dotted names of the fields where `stored` and `current` (nested dicts) differ."""
  return [p for p in _paths(stored, current)
          if not (p in ADDED_FIELDS and _get(stored, p) is _MISSING
                  and _plain(_get(current, p)) == _plain(ADDED_FIELDS[p]))]


def _plain(value: Any) -> Any:
  """Tuples as lists: a config holds tuples where its JSON record holds lists."""
  return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value
