"""Tiny training fixtures shared by the training tests, and a subprocess driver.

As a module: `tiny_domains()` and `tiny_tables()` build a three-domain problem that the tests' one tiny
config (conftest.tiny_config: D=16, L=8, one layer) trains in seconds on a CPU. Sequences follow a noisy
"next item = item + 1" walk, so a model that learns anything beats chance by far.

As a script: `python tests/_train_driver.py WORKDIR OUT_JSON [key=value ...]` runs train_and_evaluate on
that problem (overrides are config paths such as train.num_epochs=3) and writes the returned metrics to
OUT_JSON. The resume and mesh tests run it in subprocesses.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from recg_jax.data import types  # pylint: disable=g-import-not-at-top,wrong-import-position

from conftest import FAST_COMPILE_FLAGS  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position

DOMAINS = ("Alpha", "Beta", "Gamma")


def tiny_domain(name: str, num_users: int = 48, num_items: int = 30, seed: int = 0) -> types.DomainData:
  rng = np.random.default_rng([seed, len(name), ord(name[0])])
  rows = []
  for _ in range(num_users):
    n = int(rng.integers(5, 12))
    start = int(rng.integers(1, num_items + 1))
    seq = [start]
    for _ in range(n - 1):
      step = 1 if rng.random() < 0.8 else int(rng.integers(2, 5))
      seq.append((seq[-1] - 1 + step) % num_items + 1)
    rows.append(np.asarray(seq, np.int32))
  offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
  titles = np.array([""] + [f"{name} item {i}" for i in range(1, num_items + 1)], dtype=object)
  return types.DomainData(
      name=name,
      item_tokens=np.array(["[PAD]"] + [f"{name[0]}{i}" for i in range(1, num_items + 1)], dtype=object),
      item_fields={"title": titles},
      item_text=titles,
      user_tokens=np.array([f"u{u}" for u in range(num_users)], dtype=object),
      offsets=offsets,
      items=np.concatenate(rows).astype(np.int32),
      synthetic=True,
  )


def tiny_domains() -> dict[str, types.DomainData]:
  return {name: tiny_domain(name, num_items=30 + 4 * i) for i, name in enumerate(DOMAINS)}


def tiny_tables(domains: dict[str, types.DomainData], dim: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
  out = {}
  for i, (name, d) in enumerate(domains.items()):
    t = np.random.default_rng([seed, i]).normal(size=(d.num_items + 1, dim)).astype(np.float32)
    t[0] = 0.0
    out[name] = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6)
  return out


def tiny_layout(**overrides) -> dict[str, int]:
  """What a tiny_config(**overrides) run does per epoch: steps, and train / eval input widths in use."""
  from recg_jax import evaluate  # pylint: disable=g-import-not-at-top
  from recg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from recg_jax.models import recommender as recommender_lib  # pylint: disable=g-import-not-at-top
  from recg_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  config = tiny_config(**overrides)
  domain = tiny_domains()[config.data.source]
  rows = trainer_lib.build_rows(config, recommender_lib.build_model(config, domain.num_items), domain)
  eval_widths = {
      w
      for split in ("valid", "test")
      for w, _ in evaluate.length_groups(
          types.leave_one_out(domain, split, config.data.max_len).inputs_UxL, config.eval.length_buckets
      )
  }
  return {
      "steps_per_epoch": input_pipeline.steps_per_epoch(rows, config.train.batch_size),
      "train_widths": len(input_pipeline.bucket_sizes(rows)),
      "eval_widths": len(eval_widths),
  }


# Attention key biases get a zero loss gradient in exact arithmetic (softmax is invariant to a shift shared
# by all keys); Adam normalises their rounding noise into steps of up to the learning rate, whose signs
# depend on the reduction order, so two programs of the same run never agree on them.
NOISE_DRIVEN = ("['key']['bias']",)


def params_by_path(tree) -> dict[str, np.ndarray]:
  """{keystr path: numpy array} of a parameter tree (the layout of the driver's .params.npz)."""
  import jax  # pylint: disable=g-import-not-at-top

  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_params_close(
    actual: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    rtol: float,
    atol: float,
    noise_atol: float,
) -> None:
  """Same paths; NOISE_DRIVEN leaves within noise_atol (e.g. a few learning rates), the rest rtol/atol."""
  assert actual.keys() == expected.keys() and len(expected) > 5
  for path, want in expected.items():
    if any(n in path for n in NOISE_DRIVEN):
      np.testing.assert_allclose(actual[path], want, atol=noise_atol, err_msg=path)
    else:
      np.testing.assert_allclose(actual[path], want, rtol=rtol, atol=atol, err_msg=path)


def _parse(value: str):
  try:
    return json.loads(value)
  except json.JSONDecodeError:
    return value


def main(argv: list[str]) -> None:
  """Driver entry point. Extra flags (not config fields): poison=1 makes every table row NaN."""
  workdir, out_json = argv[1], argv[2]
  overrides, poison = {}, False
  for arg in argv[3:]:
    key, value = arg.split("=", 1)
    if key == "poison":
      poison = bool(int(value))
    else:
      overrides[key] = _parse(value)
  import jax  # pylint: disable=g-import-not-at-top

  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # Subprocess tests share compiled executables: only the first one pays the XLA compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from recg_jax import compile_stats  # pylint: disable=g-import-not-at-top
  from recg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from recg_jax import training  # pylint: disable=g-import-not-at-top

  delay = float(os.environ.get("RECG_TEST_STEP_DELAY", "0"))
  if delay:
    # Slows the host pipeline so a test can kill the run between two checkpoints.
    batches = input_pipeline.epoch_batches

    def slow_batches(*args, **kwargs):
      for batch in batches(*args, **kwargs):
        time.sleep(delay)
        yield batch

    input_pipeline.epoch_batches = slow_batches
  config = tiny_config(**overrides)
  domains = tiny_domains()
  tables = None if config.model.variant == "id" else tiny_tables(domains)
  if poison and tables is not None:
    tables = {k: np.full_like(v, np.nan) for k, v in tables.items()}
  result = training.train_and_evaluate(config, workdir, domains, tables)
  np.savez(out_json + ".params.npz", **params_by_path(result.params))
  payload = {
      "metrics": result.metrics,
      "best_step": result.best_step,
      "epochs": result.epochs,
      "stop_reason": result.stop_reason,
      "devices": len(jax.devices()),
      "trace_counts": dict(compile_stats.TRACE_COUNTS),
  }
  pathlib.Path(out_json).write_text(json.dumps(payload))


def cache_env(tmp_path_factory) -> dict[str, str]:
  """Environment sharing one persistent XLA cache between every driver subprocess of a pytest session.

  Add XLA flags to its XLA_FLAGS entry rather than replacing it.
  """
  path = tmp_path_factory.getbasetemp() / "xla_cache"
  path.mkdir(exist_ok=True)
  return {"JAX_COMPILATION_CACHE_DIR": str(path), "XLA_FLAGS": FAST_COMPILE_FLAGS}


def run(
    workdir,
    out_json,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    background: bool = False,
):
  """Runs this driver in a fresh Python process (so XLA_FLAGS etc. apply); returns the Popen/Completed."""
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), str(workdir), str(out_json), *args]
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  if background:
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main(sys.argv)
