"""Data preparation: read each domain, filter, index, render item text, and cache the result.

Per domain: reader (RecBole atomic, Amazon 2023 raw, or synthetic written as RecBole) -> items without
text dropped -> iterated k-core -> (Amazon 2023 only) seeded user cap and k-core again -> items and users
re-indexed (items 1..I in item-file order, users in order of first appearance) -> each history sorted by
time (stable, so equal times keep file order) -> item text rendered.

Users need at least MIN_HISTORY interactions whatever min_user_interactions says: leave-one-out takes
two items out and the training part must keep one.

Cache: `<workdir>/cache/data/<Domain>-<key>/` holds arrays.npz (offsets, items), strings.json (ids, item
fields, item text) and manifest.json. The key is a SHA-256 over
- the identity of every input file: its name, size and full SHA-256 for files up to 256 MiB; for larger
  files (raw Amazon 2023 dumps) size, modification time and the SHA-256 of the first and last MiB;
- the data/text config fields that change the result (format, field names, filters, template, prompt,
  fallback, Amazon 2023 and synthetic settings), and a version number of this code's output.
The folder is written under a temporary name and renamed, so a crash never leaves a half cache.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import hashlib
import json
import os
import time

import ml_collections
import numpy as np

from recg_jax import paths
from recg_jax.data import amazon2023
from recg_jax.data import filters
from recg_jax.data import recbole
from recg_jax.data import synthetic
from recg_jax.data import text
from recg_jax.data import types
from recg_jax.data.errors import DataError
from recg_jax.data.raw import RawDomain
from recg_jax.data.types import DomainData

CACHE_VERSION = 1
MIN_HISTORY = 3
FORMATS = ("recbole", "amazon2023", "synthetic")
_FULL_HASH_MAX = 256 << 20
_EDGE = 1 << 20


def _names(value: object) -> tuple[str, ...]:
  """A tuple of domain names from a config value (a comma-separated string is accepted too)."""
  if value is None:
    return ()
  if isinstance(value, str):
    return tuple(v.strip() for v in value.split(",") if v.strip())
  return tuple(value)


def domain_names(data_config: ml_collections.ConfigDict) -> list[str]:
  """Source, then targets, then auxiliary; raises DataError when a name is empty or repeated."""
  if not isinstance(data_config.source, str) or not types.source_names(data_config.source):
    raise DataError("no source domain given", field="data.source")
  roles = [("data.source", n) for n in types.source_names(data_config.source)]
  roles += [("data.targets", n) for n in _names(data_config.targets)]
  roles += [("data.auxiliary", n) for n in _names(data_config.auxiliary)]
  seen: dict[str, str] = {}
  for role, name in roles:
    if name in seen:
      raise DataError(
          f"domain {name!r} given twice (in {seen[name]} and {role}); each domain may play one role",
          field=role,
      )
    seen[name] = role
  return [name for _, name in roles]


def file_identity(path: paths.Path) -> dict:
  """What the cache key knows of an input file (see the module docstring)."""
  path = paths.as_path(path)
  stat = path.stat()
  identity = {"name": path.name, "size": stat.length}
  digest = hashlib.sha256()
  with path.open("rb") as f:
    if stat.length <= _FULL_HASH_MAX:
      while chunk := f.read(1 << 22):
        digest.update(chunk)
      identity["sha256"] = digest.hexdigest()
    else:
      digest.update(f.read(_EDGE))
      f.seek(stat.length - _EDGE)
      digest.update(f.read(_EDGE))
      identity["mtime"] = stat.mtime
      identity["edges_sha256"] = digest.hexdigest()
  return identity


def _config_key(config: ml_collections.ConfigDict) -> dict:
  d, t = config.data, config.text
  key = {
      "version": CACHE_VERSION,
      "format": d.format,
      "fields": [d.user_field, d.item_field, d.time_field, list(d.text_fields)],
      "min_user": max(int(d.min_user_interactions), MIN_HISTORY),
      "min_item": int(d.min_item_interactions),
      "drop_items_without_text": bool(d.drop_items_without_text),
      "template": t.template,
      "paper_prompt": t.paper_prompt if t.template == "paper" else None,
      "empty_fallback": t.empty_fallback,
  }
  if d.format == "amazon2023":
    key["amazon2023"] = [
        int(d.amazon2023.min_year),
        int(d.amazon2023.max_users),
        int(d.amazon2023.subsample_seed),
    ]
  if d.format == "synthetic":
    key["synthetic"] = json.loads(json.dumps(d.synthetic.to_dict()))
  return key


def _synthetic_root(
    config: ml_collections.ConfigDict, workdir: paths.Path, log: Callable[[str], None]
) -> paths.Path:
  """Writes the synthetic domains as RecBole files under <workdir>/synthetic/ unless already there."""
  d = config.data
  root = workdir / "synthetic"
  manifest = {
      "version": CACHE_VERSION,
      "synthetic": json.loads(json.dumps(d.synthetic.to_dict())),
      "fields": [d.user_field, d.item_field, d.time_field],
  }
  try:
    if json.loads((root / "manifest.json").read_text()) == manifest and all(
        (root / n / f"{n}.{ext}").is_file() for n in d.synthetic.domains for ext in ("inter", "item")
    ):
      log(f"[data] synthetic: reused generated files in {root}")
      return root
  except (OSError, ValueError):
    pass
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = _fresh_sibling(root, "tmp")
  synthetic.write_all(d, tmp)
  (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
  if root.exists():
    old = _fresh_sibling(root, "old")
    root.rename(old)
    old.rmtree(missing_ok=True)
  tmp.rename(root)
  log(f"[data] synthetic: generated {len(d.synthetic.domains)} domains in {root}")
  return root


def _inputs(
    config: ml_collections.ConfigDict, name: str, workdir: paths.Path, log: Callable[[str], None]
) -> tuple[str, list[paths.Path]]:
  """(root folder handed to the reader, input files whose identity keys the cache)."""
  d = config.data
  if d.format not in FORMATS:
    raise DataError(
        f"unknown format {d.format!r} (expected one of {', '.join(FORMATS)})", field="data.format"
    )
  if d.format == "synthetic":
    if name not in tuple(d.synthetic.domains):
      raise DataError(
          f"domain {name!r} is not one of data.synthetic.domains " f"({', '.join(d.synthetic.domains)})",
          field="data.synthetic.domains",
      )
    root = _synthetic_root(config, workdir, log)
    return str(root), list(recbole.domain_files(root, name))
  if d.format == "recbole":
    if not d.root:
      raise DataError(
          "data root not set: set data.root or the RECG_DATA_ROOT environment variable", field="data.root"
      )
    return d.root, list(recbole.domain_files(d.root, name))
  raw_dir = d.amazon2023.raw_dir or d.root
  if not raw_dir:
    if not d.amazon2023.download:
      raise DataError(
          "no folder for the raw files: set data.amazon2023.raw_dir (or data.root)",
          field="data.amazon2023.raw_dir",
      )
    raw_dir = str(workdir / "raw" / "amazon2023")
  return raw_dir, list(amazon2023.find_files(raw_dir, name, d.amazon2023))


def _read(config: ml_collections.ConfigDict, root: str, name: str) -> RawDomain:
  if config.data.format == "amazon2023":
    return amazon2023.read_amazon2023(root, name, config.data)
  return recbole.read_recbole(root, name, config.data)


def build_domain(raw: RawDomain, config: ml_collections.ConfigDict) -> DomainData:
  """Filters, re-indexes, sorts and renders one RawDomain (see the module docstring)."""
  d = config.data
  texts, has_text = text.render_rows(raw.item_fields, config.text, d.text_fields)
  keep = np.ones(raw.num_interactions, bool)
  if d.drop_items_without_text:
    keep &= has_text[raw.item_codes]
  min_user = max(int(d.min_user_interactions), MIN_HISTORY)
  min_item = int(d.min_item_interactions)
  keep = filters.kcore(raw.user_codes, raw.item_codes, min_user, min_item, keep)
  if d.format == "amazon2023" and d.amazon2023.max_users > 0:
    keep = filters.cap_users(raw.user_codes, keep, d.amazon2023.max_users, d.amazon2023.subsample_seed)
    keep = filters.kcore(raw.user_codes, raw.item_codes, min_user, min_item, keep)
  if not keep.any():
    no_text = int((~has_text).sum())
    raise DataError(
        f"domain {raw.name!r} is empty after filtering: read {raw.num_interactions} interactions, "
        f"{len(raw.user_tokens)} users, {len(raw.item_tokens)} items ({no_text} items without text"
        f"{', dropped' if d.drop_items_without_text else ''}); the k-core needs {min_user} per user and "
        f"{min_item} per item",
        field="data.min_user_interactions",
    )

  users, items, times = raw.user_codes[keep], raw.item_codes[keep], raw.times[keep]
  item_rows, item_index = np.unique(items, return_inverse=True)  # item-file order
  user_rows, user_index = np.unique(users, return_inverse=True)  # first-appearance order
  order = np.argsort(times, kind="stable")
  order = order[np.argsort(user_index[order], kind="stable")]
  counts = np.bincount(user_index, minlength=len(user_rows))

  def padded(values: np.ndarray, pad: str) -> np.ndarray:
    out = np.empty(len(item_rows) + 1, object)
    out[0] = pad
    out[1:] = values[item_rows]
    return out

  item_text = padded(texts, "")
  return DomainData(
      name=raw.name,
      item_tokens=padded(raw.item_tokens, "[PAD]"),
      item_fields={n: padded(v, "") for n, v in raw.item_fields.items()},
      item_text=item_text,
      user_tokens=np.asarray(raw.user_tokens, object)[user_rows],
      offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
      items=(item_index[order] + 1).astype(np.int32),
      synthetic=raw.synthetic,
  )


def _fresh_sibling(folder: paths.Path, kind: str) -> paths.Path:
  """A new, empty folder beside `folder`, unique to this process and moment (local or remote)."""
  sibling = folder.parent / f".{folder.name}-{kind}-{os.getpid()}-{time.time_ns()}"
  sibling.mkdir(parents=True)
  return sibling


def _save(domain: DomainData, folder: paths.Path, manifest: dict) -> None:
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = _fresh_sibling(folder, "tmp")
  try:
    with (tmp / "arrays.npz").open("wb") as f:
      np.savez(f, offsets=domain.offsets, items=domain.items)
    strings = {
        "name": domain.name,
        "synthetic": domain.synthetic,
        "item_tokens": domain.item_tokens.tolist(),
        "user_tokens": domain.user_tokens.tolist(),
        "item_fields": {n: v.tolist() for n, v in domain.item_fields.items()},
        "item_text": domain.item_text.tolist(),
    }
    (tmp / "strings.json").write_text(json.dumps(strings, ensure_ascii=False), encoding="utf-8")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    try:
      tmp.rename(folder)
    except OSError:
      if not (folder / "manifest.json").is_file():  # not a concurrent writer of the same key
        raise
  finally:
    if tmp.exists():
      tmp.rmtree(missing_ok=True)


def _object_array(values: list) -> np.ndarray:
  out = np.empty(len(values), object)
  out[:] = values
  return out


def _load(folder: paths.Path) -> DomainData:
  with (folder / "arrays.npz").open("rb") as f, np.load(f) as arrays:
    offsets, items = arrays["offsets"], arrays["items"]
  strings = json.loads((folder / "strings.json").read_text(encoding="utf-8"))
  return DomainData(
      name=strings["name"],
      item_tokens=_object_array(strings["item_tokens"]),
      item_fields={n: _object_array(v) for n, v in strings["item_fields"].items()},
      item_text=_object_array(strings["item_text"]),
      user_tokens=_object_array(strings["user_tokens"]),
      offsets=offsets,
      items=items,
      synthetic=bool(strings["synthetic"]),
  )


def load_domain(
    config: ml_collections.ConfigDict,
    name: str,
    workdir: str | os.PathLike[str],
    log: Callable[[str], None] = print,
) -> DomainData:
  """One domain, from its processed cache when the inputs and config are unchanged."""
  workdir = paths.as_path(workdir)
  root, files = _inputs(config, name, workdir, log)
  key_inputs = {"domain": name, "config": _config_key(config), "files": [file_identity(p) for p in files]}
  key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()[:16]
  folder = workdir / "cache" / "data" / f"{name}-{key}"
  if (folder / "manifest.json").is_file():
    try:
      domain = _load(folder)
    except (OSError, ValueError, KeyError) as e:
      log(f"[data] {name}: unreadable cache {folder} ({e}); rebuilding")
      folder.rmtree(missing_ok=True)
    else:
      log(f"[data] {name}: reused cache {folder}")
      return domain
  start = time.perf_counter()
  raw = _read(config, root, name)
  if config.data.format == "synthetic":
    raw = dataclasses.replace(raw, synthetic=True)
  try:
    domain = build_domain(raw, config)
  except DataError as e:
    if e.path is not None:
      raise
    raise DataError(e.reason, path=files[0], field=e.field) from None
  manifest = {
      **key_inputs,
      "key": key,
      "users": domain.num_users,
      "items": domain.num_items,
      "interactions": domain.num_interactions,
      "synthetic": domain.synthetic,
  }
  _save(domain, folder, manifest)
  log(
      f"[data] {name}: built cache {folder} in {time.perf_counter() - start:.1f}s "
      f"({domain.num_users} users, {domain.num_items} items, {domain.num_interactions} interactions)"
  )
  return domain


def load_domains(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], log: Callable[[str], None] = print
) -> dict[str, DomainData]:
  """Every domain of config.data.source, .targets and .auxiliary, source first (docs/method.md data)."""
  names = domain_names(config.data)
  return {name: load_domain(config, name, workdir, log) for name in names}


def domain_table(domains: dict[str, DomainData]) -> str:
  """Markdown table: sizes, mean history length, share of items with each text field non-empty."""
  fields: list[str] = []
  for domain in domains.values():
    fields += [n for n in domain.item_fields if n not in fields]
  header = ["domain", "users", "items", "interactions", "mean history"] + fields + ["synthetic"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for domain in domains.values():
    row = [
        domain.name,
        f"{domain.num_users:,}",
        f"{domain.num_items:,}",
        f"{domain.num_interactions:,}",
        f"{domain.num_interactions / max(domain.num_users, 1):.2f}",
    ]
    for n in fields:
      values = domain.item_fields.get(n)
      if values is None:
        row.append("-")
      else:
        filled = sum(1 for v in values[1:] if text.clean(v))
        row.append(f"{100.0 * filled / max(domain.num_items, 1):.1f}%")
    row.append("yes" if domain.synthetic else "no")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)
