"""Item-text embeddings: bucketed, jit-compiled, batch-sharded encoder inference, and their on-disk cache.

`embed_texts` tokenises every text once, sorts texts by token length, cuts them into fixed-size batches
(the last one padded) and pads each batch to the smallest bucket length that fits it, so XLA compiles one
program per bucket length and no batch pays for the catalogue's longest text. Batches are split over the
'data' axis of a mesh of all local devices; parameters are replicated (or FSDP-sharded with
`encoder.shard_params`). Pooling and L2 normalisation run inside the compiled program, in float32.

`domain_embeddings` caches one [I+1, H] float32 table per domain (row 0 = padding = zeros) under
`<workdir>/cache/embeddings/<domain>/` with a manifest of everything that determines its values; a
matching manifest means reuse, anything else means rebuild.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
from tqdm import tqdm

from recg_jax import distributed
from recg_jax import errors
from recg_jax import paths
from recg_jax.encoders import pooling as pooling_lib

DATA_AXIS = "data"
MANIFEST_VERSION = 1
# Batches dispatched ahead of the one being read back: keeps the device busy while the host pads.
_IN_FLIGHT = 3


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all local devices, batch axis 'data'."""
  devices = list(devices) if devices is not None else jax.local_devices()
  return Mesh(np.array(devices), (DATA_AXIS,))


def param_sharding(params: Any, mesh: Mesh, shard_params: bool = False) -> Any:
  """Sharding of every parameter: replicated, or (shard_params) FSDP over the 'data' axis.

  FSDP is `recg_jax.encoders.sharding.param_sharding`: big arrays split along one axis, small ones
  replicated; XLA gathers each weight where it is used, so one device never holds the whole model.
  """
  if shard_params and mesh.shape[DATA_AXIS] > 1:
    from recg_jax.encoders import sharding  # pylint: disable=g-import-not-at-top

    return sharding.param_sharding(params, mesh, axis_name=DATA_AXIS)
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda _: replicated, params)


# XLA:CPU options for the encoder's forward pass, by compute dtype (encoder.xla_cpu_tuning). Measured on
# MiniLM (one core, CPU seconds, jaxlib 0.10.2): with XLA's YNNPACK fusions the float32 forward pass took
# about 1.3x as long as with them off (Eigen GEMMs), while bfloat16 needs them for its 2x faster GEMMs;
# so they are off for float32 and left on for bfloat16.
_XLA_CPU_OPTIONS = {
    "float32": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "bfloat16": {},
}


def compiler_options(compute_dtype, tuning: bool = True) -> dict | None:
  """The XLA compiler options to jit the forward pass with (None: XLA's defaults).

  Only on CPU; an option this jaxlib does not know is dropped (XLA's experimental flags come and go).
  """
  if not tuning or jax.default_backend() != "cpu":
    return None
  options = dict(_XLA_CPU_OPTIONS.get(jnp.dtype(compute_dtype).name, {}))
  if not options:
    return None
  key = tuple(sorted(options.items()))
  if key not in _checked_options:
    try:
      jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
      _checked_options[key] = options
    except Exception:  # pylint: disable=broad-except  (unknown flag: XlaRuntimeError or ValueError)
      _checked_options[key] = None
  return _checked_options[key]


_checked_options: dict[tuple, dict | None] = {}


def effective_buckets(bucket_sizes: Sequence[int], cap: int) -> tuple[int, ...]:
  """Sorted bucket lengths below `cap`, plus `cap` itself (every text fits the last bucket)."""
  if cap < 1:
    raise ValueError(f"max tokens must be >= 1, got {cap}")
  sizes = sorted({int(b) for b in bucket_sizes if 0 < int(b) < cap})
  return (*sizes, cap)


def prepare_texts(texts: Sequence[str], empty_fallback: str) -> list[str]:
  """Texts as the encoder sees them: empty or whitespace-only texts become `empty_fallback`.

  An empty string would give a [CLS] [SEP]-only input whose embedding depends on nothing but position
  biases; a fixed placeholder at least makes all empty items equal and explicit.
  """
  out = []
  for t in texts:
    t = "" if t is None else str(t)
    out.append(t if t.strip() else empty_fallback)
  return out


def tokenize(tokenizer, texts: Sequence[str], cap: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
  """Token ids [N, cap] int32 (right-padded with 0) and lengths [N], truncating each text to `cap` tokens.

  Truncation counts special tokens, so the model never sees more than `cap` positions; tokenisation runs
  in chunks to keep the tokenizer's per-text objects from piling up on big catalogues.
  """
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=cap)
  ids = np.zeros((len(texts), cap), np.int32)
  lengths = np.zeros((len(texts),), np.int32)
  for start in range(0, len(texts), chunk):
    for i, enc in enumerate(tokenizer.encode_batch(list(texts[start : start + chunk])), start):
      row = enc.ids[:cap]
      ids[i, : len(row)] = row
      lengths[i] = len(row)
  return ids, lengths


def plan_batches(
    lengths: np.ndarray, batch_size: int, buckets: Sequence[int]
) -> list[tuple[np.ndarray, int]]:
  """Fixed-size batches of text indices, longest texts first, each with its padded length.

  Returns [(indices (<= batch_size,), bucket)]; only the last batch may be short.
  """
  order = np.argsort(-lengths, kind="stable")
  buckets_arr = np.asarray(buckets)
  plan = []
  for start in range(0, len(order), batch_size):
    idx = order[start : start + batch_size]
    longest = int(lengths[idx].max())
    bucket = int(buckets_arr[np.searchsorted(buckets_arr, longest)])
    plan.append((idx, bucket))
  return plan


class _Runner:
  """A compiled forward pass (jit caches one executable per bucket shape) and its placed parameters."""

  def __init__(
      self,
      module,
      params,
      pooling: str,
      normalize: bool,
      mesh: Mesh,
      shard_params: bool,
      compute_dtype,
      options: dict | None,
  ):
    self.mesh = mesh
    self.data_sharding = NamedSharding(mesh, P(DATA_AXIS))

    def cast(x):
      # Matrices in the compute dtype, cast once here rather than in every step; vectors (biases,
      # LayerNorm scales) stay float32, as the residual stream and normalisation do.
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      if compute_dtype != jnp.float32 and x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(compute_dtype)
      return x

    params = jax.tree.map(cast, params)
    self.params = jax.device_put(params, param_sharding(params, mesh, shard_params))

    def forward(params, ids_BxT, mask_BxT):
      hidden_BxTxH = module.apply({"params": params}, ids_BxT, mask_BxT)
      vec_BxH = pooling_lib.pool(hidden_BxTxH, mask_BxT, pooling)
      return pooling_lib.l2_normalize(vec_BxH) if normalize else vec_BxH

    self.forward = jax.jit(forward, out_shardings=self.data_sharding, compiler_options=options)

  def __call__(self, ids_BxT: np.ndarray, mask_BxT: np.ndarray) -> jax.Array:
    ids = jax.device_put(ids_BxT, self.data_sharding)
    mask = jax.device_put(mask_BxT, self.data_sharding)
    return self.forward(self.params, ids, mask)


_runner_lock = threading.Lock()
_runners: dict[tuple, tuple[Any, _Runner]] = {}


def _runner(encoder, mesh: Mesh, compute_dtype, shard_params: bool, tuning: bool) -> _Runner:
  module = encoder.module
  if getattr(module, "dtype", compute_dtype) != compute_dtype:
    module = module.clone(dtype=compute_dtype)
  key = (id(encoder), id(mesh), jnp.dtype(compute_dtype).name, shard_params, tuning)
  with _runner_lock:
    hit = _runners.get(key)
    # The encoder is kept in the value, so its id cannot be reused by another object while cached.
    if hit is not None and hit[0] is encoder:
      return hit[1]
    runner = _Runner(
        module,
        encoder.params,
        encoder.pooling,
        encoder.normalize,
        mesh,
        shard_params,
        compute_dtype,
        compiler_options(compute_dtype, tuning),
    )
    if len(_runners) >= 4:  # a run uses one or two encoders; don't pin old parameters forever
      _runners.pop(next(iter(_runners)))
    _runners[key] = (encoder, runner)
    return runner


def embed_texts(
    encoder,
    texts: Sequence[str],
    encoder_config,
    text_config,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> np.ndarray:
  """Embeds `texts` with `encoder`; returns [N, H] float32 in the order of `texts`.

  Texts are truncated to text_config.max_tokens tokens (and to the encoder's position table); empty or
  whitespace-only texts are replaced by text_config.empty_fallback. encoder_config.dtype is the compute
  dtype; the output is float32. `mesh` defaults to all local devices; the batch size is rounded up to a
  multiple of the device count.
  """
  compute_dtype = jnp.dtype(encoder_config.dtype)
  if compute_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise errors.ConfigError(f"encoder.dtype={encoder_config.dtype!r}; expected 'float32' or 'bfloat16'")
  mesh = mesh if mesh is not None else _default_mesh()
  n_dev = mesh.shape[DATA_AXIS]
  batch_size = int(encoder_config.batch_size)
  if batch_size < 1:
    raise errors.ConfigError(f"encoder.batch_size must be >= 1, got {batch_size}")
  batch_size = -(-batch_size // n_dev) * n_dev
  cap = int(text_config.max_tokens)
  if encoder.max_tokens:
    cap = min(cap, int(encoder.max_tokens))
  buckets = effective_buckets(encoder_config.bucket_sizes, cap)

  out = np.zeros((len(texts), encoder.hidden_dim), np.float32)
  if not len(texts):
    return out
  prepared = prepare_texts(texts, text_config.empty_fallback)
  ids_NxC, lengths_N = tokenize(encoder.tokenizer, prepared, cap)
  runner = _runner(
      encoder,
      mesh,
      compute_dtype,
      bool(encoder_config.shard_params),
      bool(encoder_config.get("xla_cpu_tuning", True)),
  )

  pending: collections.deque = collections.deque()
  bar = tqdm(
      total=len(texts),
      unit="item",
      desc="embed",
      disable=not progress or not distributed.is_primary(),
      smoothing=0.1,
  )

  def drain_one():
    idx, vec = pending.popleft()
    out[idx] = np.asarray(vec)[: len(idx)]
    bar.update(len(idx))

  for idx, bucket in plan_batches(lengths_N, batch_size, buckets):
    ids_BxT = np.zeros((batch_size, bucket), np.int32)
    ids_BxT[: len(idx)] = ids_NxC[idx, :bucket]
    mask_BxT = (np.arange(bucket)[None, :] < lengths_N[idx][:, None]).astype(np.int32)
    # Filler rows of the last batch get one visible token so no row is all padding.
    mask_BxT = np.concatenate([mask_BxT, np.zeros((batch_size - len(idx), bucket), np.int32)])
    mask_BxT[len(idx) :, 0] = 1
    pending.append((idx, runner(ids_BxT, mask_BxT)))
    if len(pending) > _IN_FLIGHT:
      drain_one()
  while pending:
    drain_one()
  bar.close()
  return out


_mesh_cache: list[Mesh] = []


def _default_mesh() -> Mesh:
  # One mesh object per process, so that compiled runners keyed by mesh are reused across calls.
  if not _mesh_cache:
    _mesh_cache.append(make_mesh())
  return _mesh_cache[0]


def texts_sha256(texts: Sequence[str]) -> str:
  digest = hashlib.sha256()
  for t in texts:
    b = str(t).encode("utf-8")
    digest.update(len(b).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] != ["a", "bc"]
    digest.update(b)
  return digest.hexdigest()


def cache_dir(workdir: str | os.PathLike, domain_name: str) -> paths.Path:
  return paths.as_path(workdir) / "cache" / "embeddings" / domain_name


def expected_manifest(
    config, domain, model_id: str, weights_hash: str, pooling: str, normalize: bool
) -> dict:
  """Everything that determines the cached table's values (the shape is added once known)."""
  return {
      "version": MANIFEST_VERSION,
      "domain": domain.name,
      "model_id": model_id,
      "weights_hash": weights_hash,
      "template": config.text.template,
      "pooling": pooling,
      "normalize": bool(normalize),
      "dtype": str(config.encoder.dtype),
      "max_tokens": int(config.text.max_tokens),
      "empty_fallback": config.text.empty_fallback,
      "text_sha256": texts_sha256(domain.item_text[1:]),
      "num_items": int(domain.num_items),
  }


def _read_cache(folder: paths.Path, want: dict) -> tuple[np.ndarray | None, str]:
  """(table, '') when the cache matches `want`, else (None, why it cannot be used)."""
  manifest_path, table_path = folder / "manifest.json", folder / "embeddings.npy"
  if not manifest_path.exists() or not table_path.exists():
    return None, "no cache"
  try:
    have = json.loads(manifest_path.read_text())
  except (OSError, ValueError) as e:
    return None, f"unreadable manifest ({e})"
  diff = sorted(k for k in want if have.get(k) != want[k])
  if diff:
    return None, "manifest differs in " + ", ".join(diff)
  try:
    with table_path.open("rb") as f:
      table = np.load(f)
  except (OSError, ValueError) as e:
    return None, f"unreadable table ({e})"
  if list(table.shape) != have.get("shape") or table.dtype != np.float32:
    return None, f"table shape {table.shape} {table.dtype} disagrees with manifest {have.get('shape')}"
  return table, ""


def _manifest_weights_hash(folder: paths.Path) -> str:
  """The weights hash a cache was built with ('' when there is no readable manifest)."""
  try:
    return str(json.loads((folder / "manifest.json").read_text()).get("weights_hash", ""))
  except (OSError, ValueError):
    return ""


_encoder_cache: dict[str, Any] = {}


def _shared_encoder(encoder_config, weights_hash: str):
  """One loaded encoder for consecutive domains of a run, so it is read and compiled once."""
  from recg_jax import encoders  # pylint: disable=g-import-not-at-top

  key = json.dumps(
      {
          "config": encoder_config.to_dict() if hasattr(encoder_config, "to_dict") else dict(encoder_config),
          "weights_hash": weights_hash,
      },
      sort_keys=True,
      default=str,
  )
  if key not in _encoder_cache:
    _encoder_cache.clear()  # keep one model in memory, not one per configuration ever used
    _encoder_cache[key] = encoders.load_encoder(encoder_config)
  return _encoder_cache[key]


def domain_embeddings(config, domain, workdir: str | os.PathLike, encoder=None) -> np.ndarray:
  """[I+1, H] float32 table of `domain`'s item-text embeddings (row 0 zeros), cached under workdir.

  The cache is reused when its manifest matches the current model, weights, text settings and item texts,
  and rebuilt otherwise; which of the two happened is printed. Without `encoder`, the model is loaded only
  when a rebuild is needed (the weights hash is read from the checkpoint files).
  """
  from recg_jax import encoders  # pylint: disable=g-import-not-at-top  (the package imports this module)

  folder = cache_dir(workdir, domain.name)
  cache_only = encoder is None and bool(config.encoder.get("cache_only", False))
  if encoder is not None:
    model_id, weights_hash = encoder.model_id, encoder.weights_hash
    pooling, normalize = encoder.pooling, encoder.normalize
  elif cache_only:
    model_id, weights_hash = encoders.model_id(config.encoder), _manifest_weights_hash(folder)
    pooling, normalize = config.encoder.pooling, bool(config.encoder.normalize)
  else:
    model_id, weights_hash = encoders.identity(config.encoder)
    pooling, normalize = config.encoder.pooling, bool(config.encoder.normalize)
  want = expected_manifest(config, domain, model_id, weights_hash, pooling, normalize)
  table, why = _read_cache(folder, want)
  if table is None and cache_only:
    raise errors.ConfigError(
        f"encoder.cache_only is set but the embedding cache of {domain.name} in {folder} "
        f"cannot be used ({why}); embed it where the checkpoint is (experiment.mode=embed) "
        "and copy the folder, or unset encoder.cache_only"
    )
  if table is not None:
    distributed.say(
        f"[embeddings] {domain.name}: reused cache {folder} ({table.shape[0] - 1} items x "
        f"{table.shape[1]}, {model_id})"
    )
    return table
  distributed.say(f"[embeddings] {domain.name}: building ({why}) with {model_id}")
  if encoder is None:
    encoder = _shared_encoder(config.encoder, weights_hash)
  # With several processes each encodes its share of the items on its own devices; all get the whole.
  texts = list(domain.item_text[1:])
  vectors = embed_texts(encoder, texts[distributed.process_share(len(texts))], config.encoder, config.text)
  vectors = distributed.gather_rows(vectors, len(texts))
  table = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors])
  if distributed.is_primary():
    folder.mkdir(parents=True, exist_ok=True)
    manifest = dict(want, shape=list(table.shape))
    # The manifest goes last: a crash mid-write leaves no manifest, hence a rebuild, never a stale table.
    (folder / "manifest.json").unlink(missing_ok=True)
    paths.write_atomic(folder / "embeddings.npy", lambda f: np.save(f, table))
    paths.write_json_atomic(folder / "manifest.json", manifest, indent=2, sort_keys=True)
    distributed.say(
        f"[embeddings] {domain.name}: wrote {folder} ({table.shape[0] - 1} items x {table.shape[1]})"
    )
  distributed.barrier(f"embeddings {domain.name}")
  return table
