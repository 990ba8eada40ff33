"""A tuned encoder as an artefact: a Hugging Face folder the encoder loader reads (encoder.model = its path).

  config.json, tokenizer files    copied from the base checkpoint
  model.safetensors               the tuned weights, float32, in the base's tensor names and layouts
  manifest.json                   base model and its weights hash, the source domains tuned on, the tuning
                                  config, steps, the code's commit when known

Its embeddings caches are keyed by its own weights hash (encoders.embed), never mixed with the base's.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import safetensors.numpy

from recg_jax import paths
from recg_jax.encoders import bert
from recg_jax.encoders import sources

MANIFEST = "manifest.json"
# What is copied from the base checkpoint besides the weights (those present).
_COPIED = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "LICENSE",
    "NOTICE",
)


def commit() -> str:
  """The code's git commit, or '' outside a checkout."""
  try:
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=pathlib.Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else ""
  except OSError:
    return ""


def save(
    folder: str | os.PathLike, base: sources.Checkpoint, params, manifest: dict[str, Any]
) -> pathlib.Path:
  """Writes the tuned encoder (BERT family) into folder; returns it."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  config = bert.BertConfig.from_hf(sources.read_config(base.path))
  tensors = bert.to_tensors(config, params)
  tmp = folder / "model.safetensors.tmp"
  safetensors.numpy.save_file(tensors, str(tmp), metadata={"format": "pt"})
  tmp.replace(folder / "model.safetensors")
  for name in _COPIED:
    if (base.path / name).is_file():
      shutil.copyfile(base.path / name, folder / name)
  paths.write_json_atomic(folder / MANIFEST, {**manifest, "commit": commit()}, sort_keys=True)
  return folder


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
  return json.loads((pathlib.Path(folder) / MANIFEST).read_text(encoding="utf-8"))
