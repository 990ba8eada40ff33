"""Shared fixtures. The real data lives outside the project; tests find it through RECG_DATA_ROOT.

Before JAX, NumPy or PyTorch is imported, this module sets two things for the tests and the subprocesses
they start (results stay within every test's tolerance):
  * XLA compiles with less optimisation. Tests compile many small programs and run each a few times, so
    compiling dominates: this takes about half the compile time off;
  * OpenMP libraries (scikit-learn's t-SNE and k-means, PyTorch) use one thread unless OMP_NUM_THREADS says
    otherwise: the tests give them tiny inputs, and on a 2-core machine their thread pools mostly waited on
    each other (t-SNE of 60 points took 2 to 15 s with threads, under 2 s without).
"""

import os
import pathlib

# Put before (never replacing) XLA_FLAGS from the environment: flags given there win, as XLA keeps the last
# value of a repeated flag (XLA_FLAGS=--xla_backend_optimization_level=3 restores full optimisation).
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                      " --xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon"


def shared_data_root() -> pathlib.Path | None:
  root = os.environ.get("RECG_DATA_ROOT") or str(_DEFAULT_SHARED)
  path = pathlib.Path(root)
  return path if (path / "Scientific" / "Scientific.inter").exists() else None


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  root = shared_data_root()
  if root is None:
    pytest.skip("real Amazon data not found: set RECG_DATA_ROOT")
  return root


# ----------------------------------------------------------------------------------------------------------
# The tiny three-domain training problem of tests/_train_driver.py, shared by the training-level tests.

# A whole pipeline run on top of the tiny config: generated synthetic data (3 domains x 40 items) embedded
# by the packaged MiniLM, one compiled step shape, a small sequence-level transfer step.
TINY_PIPELINE_OVERRIDES = {
    "data.synthetic.num_users": 60, "data.synthetic.num_items": 40, "data.synthetic.max_history": 10,
    "text.max_tokens": 32, "encoder.bucket_sizes": (32,),
    "train.num_epochs": 2, "train.length_buckets": (), "eval.length_buckets": (),
    "transfer.num_clusters": 4, "transfer.kmeans_restarts": 1, "transfer.wf_epochs": 2,
}

# What the session's tiny trained run (tiny_trained_run) changes in the tiny config.
TINY_TRAINED_OVERRIDES = {
    "train.num_epochs": 2, "train.length_buckets": (), "eval.length_buckets": (),
    "transfer.num_clusters": 4, "transfer.kmeans_restarts": 1, "transfer.wf_epochs": 2,
}


def make_tiny_config(pipeline: bool = False, **overrides):
  """tests/_train_driver.py's tiny config (D=16, L=8, one layer), then overrides by config path.

  Args:
    pipeline: also apply TINY_PIPELINE_OVERRIDES (for runs that generate and embed their own data).
    **overrides: config paths of any depth, e.g. **{"train.num_epochs": 1, "data.synthetic.num_items": 30}.

  Returns:
    A new ConfigDict (a test may change it).
  """
  import _train_driver  # pylint: disable=g-import-not-at-top
  config = _train_driver.tiny_config()
  for path, value in {**(TINY_PIPELINE_OVERRIDES if pipeline else {}), **overrides}.items():
    *parents, field = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    if field not in node:
      raise KeyError(f"no config field {path!r}")
    node[field] = value
  return config


@pytest.fixture(scope="session")
def tiny_config():
  """make_tiny_config, as a fixture: tiny_config(**{"train.num_epochs": 1})."""
  return make_tiny_config


def _read_only(array):
  array = np.asarray(array)
  array.flags.writeable = False
  return array


@pytest.fixture(scope="session")
def tiny_problem():
  """(domains, tables) of the tiny problem, built once per session; their arrays are read-only."""
  import _train_driver  # pylint: disable=g-import-not-at-top
  domains = _train_driver.tiny_domains()
  tables = {name: _read_only(t) for name, t in _train_driver.tiny_tables(domains).items()}
  for domain in domains.values():
    for field in ("offsets", "items", "item_tokens", "item_text", "user_tokens"):
      _read_only(getattr(domain, field))
    for values in domain.item_fields.values():
      _read_only(values)
  return domains, tables


@pytest.fixture(scope="session")
def tiny_trained_overrides():
  """TINY_TRAINED_OVERRIDES (a copy): to train tiny_trained_run's model again, e.g. in a subprocess."""
  return dict(TINY_TRAINED_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory, tiny_problem):
  """One tiny SASRec-RecG trained on Alpha for two epochs (one compiled step shape), once per session:
  (config, TrainResult). Read it through `tiny_trained`, which gives each test its own config copy."""
  import jax  # pylint: disable=g-import-not-at-top
  from recg_jax import train  # pylint: disable=g-import-not-at-top
  config = make_tiny_config(**TINY_TRAINED_OVERRIDES)
  domains, tables = tiny_problem
  result = train.train_and_evaluate(config, tmp_path_factory.mktemp("tiny_trained"), domains, tables)
  for leaf in jax.tree_util.tree_leaves(result.params):
    if isinstance(leaf, np.ndarray):
      leaf.flags.writeable = False
  return config, result


@pytest.fixture
def tiny_trained(tiny_trained_run):
  """(config, TrainResult) of the session's tiny trained run; the config is this test's own copy."""
  config, result = tiny_trained_run
  return config.copy_and_resolve_references(), result
