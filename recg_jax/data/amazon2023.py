"""Streaming reader of the raw Amazon Reviews 2023 files of one category.

Reviews: `<Category>.jsonl[.gz]`, one JSON object a line with `user_id`, `parent_asin`, `timestamp`
(Unix milliseconds) and `rating`. Metadata: `meta_<Category>.jsonl[.gz]` with `parent_asin`, `title`,
`features` (list), `description` (list), `categories` (list) and `store`.

Memory stays bounded by the compact result: each JSON object is dropped as soon as its few fields are
read; only id-to-code dictionaries, flat integer arrays, and the text of reviewed items are kept.
"""

from __future__ import annotations

import array
import calendar
from collections.abc import Iterator
import contextlib
import gzip
import json
import os

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from recg_jax import paths
from recg_jax.data import download
from recg_jax.data.errors import DataError
from recg_jax.data.raw import RawDomain

# How list-valued metadata becomes one string.
_JOIN = {"categories": ", ", "features": " ", "description": " "}
# Metadata keys the arrow fast path reads, with their types.
_META_TYPES = {
    "title": pa.string(),
    "store": pa.string(),
    "main_category": pa.string(),
    "categories": pa.list_(pa.string()),
    "description": pa.list_(pa.string()),
    "features": pa.list_(pa.string()),
}
_BLOCK = 16 << 20  # arrow block: bigger than any one JSON line
# (raw metadata key, item field name): `store` plays the role of the brand. A text field of the config
# that is none of these names is read from the metadata key of the same name (e.g. `store`, `details`).
_META_FIELDS = (
    ("title", "title"),
    ("store", "brand"),
    ("categories", "categories"),
    ("description", "description"),
    ("features", "features"),
)


def file_names(category: str) -> dict[str, str]:
  """The released (gzipped) file name of each kind, as the `{file}` of the URL template."""
  return {"review": f"{category}.jsonl.gz", "meta": f"meta_{category}.jsonl.gz"}


def find_files(
    raw_dir: str | os.PathLike[str], category: str, amazon_config: ml_collections.ConfigDict | None = None
) -> tuple[paths.Path, paths.Path]:
  """(reviews, meta) paths in raw_dir, plain `.jsonl` preferred over `.jsonl.gz`.

  Missing files are downloaded from amazon_config.url_template when amazon_config.download is set;
  otherwise they raise DataError.
  """
  raw_dir = paths.as_path(raw_dir)
  found = []
  for kind, name in file_names(category).items():
    plain = raw_dir / name[: -len(".gz")]
    if plain.is_file():
      found.append(plain)
    elif (raw_dir / name).is_file():
      found.append(raw_dir / name)
    elif amazon_config is not None and amazon_config.download:
      if paths.is_remote(raw_dir):
        raise DataError(
            "data.amazon2023.download writes to a local folder (it resumes by appending); "
            "download where the files are read locally, then copy them to the bucket",
            path=raw_dir,
            field="data.amazon2023.download",
        )
      url = amazon_config.url_template.format(kind=kind, file=name)
      try:
        found.append(download.download_file(url, raw_dir / name))
      except DataError as e:
        raise DataError(
            f"{e.reason}. Without network: download {name} elsewhere, put it in a folder and point "
            "data.amazon2023.raw_dir at it (--config.data.amazon2023.raw_dir=DIR), or use RecBole atomic "
            "files (--config.data.format=recbole --config.data.root=DIR)",
            path=url,
        ) from None
    else:
      raise DataError(
          f"file not found (looked for {plain.name} and {name}; set "
          "data.amazon2023.download=True to fetch it)",
          path=raw_dir / name,
      )
  return found[0], found[1]


def _json_lines(path: paths.Path) -> Iterator[tuple[int, dict]]:
  """Yields (1-based line number, object) for every non-blank line, decoding one line at a time."""
  try:
    with (
        path.open("rb") as stored,
        gzip.GzipFile(fileobj=stored) if path.name.endswith(".gz") else contextlib.nullcontext(stored) as f,
    ):
      for number, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        try:
          obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
          raise DataError(
              f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})", path=path, line=number
          ) from None
        except json.JSONDecodeError as e:
          raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path=path, line=number) from None
        if not isinstance(obj, dict):
          raise DataError("expected a JSON object", path=path, line=number)
        yield number, obj
  except (OSError, EOFError) as e:  # truncated or corrupt gzip
    raise DataError(f"could not read: {e}", path=path) from None


def _string(obj: dict, key: str, path: paths.Path, number: int) -> str:
  value = obj.get(key)
  if not isinstance(value, str) or not value:
    raise DataError("missing or not a non-empty string", path=path, line=number, field=key)
  return value


def _timestamp(obj: dict, path: paths.Path, number: int) -> int:
  value = obj.get("timestamp")
  if isinstance(value, str):
    try:
      value = float(value)
    except ValueError:
      pass
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
    raise DataError(
        f"not a number of milliseconds: {obj.get('timestamp')!r}", path=path, line=number, field="timestamp"
    )
  return int(value)


def _text(value: object, join: str) -> str:
  if value is None:
    return ""
  if isinstance(value, list):
    return join.join(str(v) for v in value if v is not None and str(v).strip())
  if isinstance(value, dict):  # e.g. `details`: {"Brand": "X", ...}
    return ", ".join(f"{k}: {v}" for k, v in value.items() if v is not None and str(v).strip())
  return str(value)


class _Fallback(Exception):
  """The arrow fast path met something it does not handle exactly; the line reader takes over."""


class _Codes:
  """Incremental string -> code table; codes follow first appearance, as in the line reader."""

  def __init__(self):
    self.index: dict[str, int] = {}

  def encode(self, values: pa.Array) -> np.ndarray:
    encoded = pc.dictionary_encode(values)  # dictionary in first-appearance order
    local = encoded.dictionary.to_pylist()
    table = np.fromiter((self.index.setdefault(v, len(self.index)) for v in local), np.int64, len(local))
    return table[encoded.indices.to_numpy(zero_copy_only=False)]


def _arrow_batches(path: paths.Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
  """Streams record batches holding only `schema`'s keys (the rest of each object is skipped)."""
  compression = "gzip" if path.name.endswith(".gz") else None
  # A local file is opened by arrow itself: its reader threads then hold no Python object, which they
  # would have to release after the interpreter has begun to exit (an error mid-file would abort the
  # process). A remote file is read through Python, by one thread.
  local = not paths.is_remote(path)
  with (
      contextlib.nullcontext(os.fspath(path)) if local else path.open("rb") as stored,
      pa.input_stream(stored, compression=compression) as stream,
  ):
    reader = pajson.open_json(
        stream,
        read_options=pajson.ReadOptions(block_size=_BLOCK, use_threads=local),
        parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )
    yield from reader


def _reviews_arrow(path: paths.Path, cutoff_ms: int | None):
  schema = pa.schema([("user_id", pa.string()), ("parent_asin", pa.string()), ("timestamp", pa.int64())])
  users, items = _Codes(), _Codes()
  user_parts, item_parts, time_parts = [], [], []
  for batch in _arrow_batches(path, schema):
    for name in ("user_id", "parent_asin"):
      column = batch.column(name)
      column.validate(full=True)  # invalid UTF-8 raises ArrowInvalid: the line reader names the line
      if column.null_count or (len(column) and pc.min(pc.utf8_length(column)).as_py() == 0):
        raise _Fallback
    if batch.column("timestamp").null_count:
      raise _Fallback
    if cutoff_ms is not None:
      batch = batch.filter(pc.greater_equal(batch.column("timestamp"), cutoff_ms))
    user_parts.append(users.encode(batch.column("user_id")))
    item_parts.append(items.encode(batch.column("parent_asin")))
    time_parts.append(batch.column("timestamp").to_numpy(zero_copy_only=False).astype(np.int64))
  cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
  return users.index, items.index, cat(user_parts), cat(item_parts), cat(time_parts)


def _reviews_lines(path: paths.Path, cutoff_ms: int | None):
  users: dict[str, int] = {}
  items: dict[str, int] = {}
  user_codes, item_codes, times = array.array("q"), array.array("q"), array.array("q")
  for number, obj in _json_lines(path):
    user = _string(obj, "user_id", path, number)
    item = _string(obj, "parent_asin", path, number)
    ts = _timestamp(obj, path, number)
    if cutoff_ms is not None and ts < cutoff_ms:
      continue
    user_codes.append(users.setdefault(user, len(users)))
    item_codes.append(items.setdefault(item, len(items)))
    times.append(ts)
  as_np = lambda a: np.frombuffer(a, np.int64).copy() if len(a) else np.zeros(0, np.int64)  # noqa: E731
  return users, items, as_np(user_codes), as_np(item_codes), as_np(times)


def _meta_arrow(path: paths.Path, items: dict[str, int], meta_fields: list[tuple[str, str]]):
  keys = sorted({key for key, _ in meta_fields})
  if not set(keys) <= set(_META_TYPES):
    raise _Fallback  # free-form keys (e.g. `details`) are read by the line reader
  schema = pa.schema([("parent_asin", pa.string())] + [(k, _META_TYPES[k]) for k in keys])
  wanted = pa.array(list(items), pa.string())
  fields = {name: [""] * len(items) for _, name in meta_fields}
  seen = np.zeros(len(items), bool)
  for batch in _arrow_batches(path, schema):
    asins = batch.column("parent_asin")
    asins.validate(full=True)
    if asins.null_count or (len(asins) and pc.min(pc.utf8_length(asins)).as_py() == 0):
      raise _Fallback
    batch = batch.filter(pc.is_in(asins, value_set=wanted))
    if not batch.num_rows:
      continue
    rows = batch.to_pylist()
    for row in rows:
      code = items[row["parent_asin"]]
      if seen[code]:
        continue
      seen[code] = True
      for key, name in meta_fields:
        fields[name][code] = _text(row.get(key), _JOIN.get(name, " "))
  return fields


def _meta_lines(path: paths.Path, items: dict[str, int], meta_fields: list[tuple[str, str]]):
  fields = {name: [""] * len(items) for _, name in meta_fields}
  seen = np.zeros(len(items), bool)
  for number, obj in _json_lines(path):
    code = items.get(_string(obj, "parent_asin", path, number))
    if code is None or seen[code]:  # not reviewed (or a repeated row): nothing to keep
      continue
    seen[code] = True
    for key, name in meta_fields:
      fields[name][code] = _text(obj.get(key), _JOIN.get(name, " "))
  return fields


def _fast_or_exact(fast, exact, *args):
  """Runs the arrow reader; on anything it cannot take exactly, reruns the line reader, which either
  accepts the input the same way or raises a DataError naming the line and field."""
  try:
    return fast(*args)
  except (_Fallback, pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
    return exact(*args)


def read_amazon2023(
    raw_dir: str | os.PathLike[str], category: str, data_config: ml_collections.ConfigDict, fast: bool = True
) -> RawDomain:
  """Reads one category into a RawDomain.

  Item fields: title, brand (from `store`), categories, description, features, plus any other
  data_config.text_fields name read from the metadata key of that name.

  Reviews before data_config.amazon2023.min_year (UTC) are dropped while streaming. Repeated
  (user, item) pairs keep only the earliest review. Reviewed items without a metadata row get empty
  fields (they are dropped later as items without text). k-core and the user cap come later.
  Both files are streamed in blocks by pyarrow (`fast`), falling back to a line-by-line reader that
  locates bad input; both give the same result (the fast path does not look at the bytes of keys it
  does not read, so it may accept, e.g., invalid UTF-8 in review text that the line reader rejects).
  """
  amazon = data_config.amazon2023
  reviews_path, meta_path = find_files(raw_dir, category, amazon)
  cutoff_ms = calendar.timegm((amazon.min_year, 1, 1, 0, 0, 0)) * 1000 if amazon.min_year > 0 else None
  if fast:
    users, items, user_np, item_np, time_np = _fast_or_exact(
        _reviews_arrow, _reviews_lines, reviews_path, cutoff_ms
    )
  else:
    users, items, user_np, item_np, time_np = _reviews_lines(reviews_path, cutoff_ms)

  meta_fields = list(_META_FIELDS)
  meta_fields += [(n, n) for n in data_config.text_fields if n not in {f for _, f in meta_fields}]
  if fast:
    fields = _fast_or_exact(_meta_arrow, _meta_lines, meta_path, items, meta_fields)
  else:
    fields = _meta_lines(meta_path, items, meta_fields)

  # Earliest review of each (user, item) pair, then back to file order.
  order = np.lexsort((time_np, item_np, user_np))
  first = np.ones(len(order), bool)
  first[1:] = (user_np[order][1:] != user_np[order][:-1]) | (item_np[order][1:] != item_np[order][:-1])
  kept = np.sort(order[first])
  return RawDomain(
      name=category,
      user_tokens=np.array(list(users), dtype=object),
      item_tokens=np.array(list(items), dtype=object),
      item_fields={n: np.array(v, dtype=object) for n, v in fields.items()},
      user_codes=user_np[kept],
      item_codes=item_np[kept],
      times=time_np[kept].astype(np.float64),
  )
