"""Shared fixtures. The real data lives outside the project; tests find it through RECG_DATA_ROOT.

Before JAX, NumPy or PyTorch is imported, this module sets two things for the tests and the subprocesses
they start (results stay within every test's tolerance):
  * XLA compiles with less optimisation. Tests compile many small programs and run each a few times, so
    compiling dominates: this takes about half the compile time off;
  * OpenMP libraries (scikit-learn's t-SNE and k-means, PyTorch) use one thread unless OMP_NUM_THREADS says
    otherwise: the tests give them tiny inputs, and on a 2-core machine their thread pools mostly waited on
    each other (t-SNE of 60 points took 2 to 15 s with threads, under 2 s without).
"""

import json
import os
import pathlib

# Put before (never replacing) XLA_FLAGS from the environment: flags given there win, as XLA keeps the last
# value of a repeated flag (XLA_FLAGS=--xla_backend_optimization_level=3 restores full optimisation).
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false"
)
os.environ["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon"


def read_jsonl(path) -> list[dict]:
  """The records of a JSON-lines file (metrics.jsonl, recommendations)."""
  return [
      json.loads(line) for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
  ]


def write_jsonl(path, rows):
  """Writes `rows` as a JSON-lines file; returns its path."""
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return path


def inputs_before_test(domain):
  """{user: ids of every item before the test target}: the inputs of the `test` split, oldest first."""
  return {u: list(domain.item_tokens[domain.history(i)[:-1]]) for i, u in enumerate(domain.user_tokens)}


def write_domain_files(tmp_path, domain):
  """(catalogue, histories): a domain's items with every text field, and every user's inputs before the
  test target, as the JSONL files `recommend` reads (<name in lower case>.jsonl, users.jsonl)."""
  rows = [
      {"item_id": i, **{f: v[row] for f, v in domain.item_fields.items()}}
      for row, i in enumerate(domain.item_tokens[1:], start=1)
  ]
  catalogue = write_jsonl(tmp_path / f"{domain.name.lower()}.jsonl", rows)
  users = write_jsonl(
      tmp_path / "users.jsonl", [{"user_id": u, "items": h} for u, h in inputs_before_test(domain).items()]
  )
  return catalogue, users


def run_module(module: str, *args: str, timeout: int = 300, **env: str):
  """Runs `python -m module args` from the repository root (extra environment variables in `env`) and
  asserts it exits 0; returns the CompletedProcess."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  proc = subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=pathlib.Path(__file__).resolve().parents[1],
      env=dict(os.environ, **env),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


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
# The one tiny config of the tests, and the tiny three-domain training problem of tests/_train_driver.py.

# D=16, L=8, one layer, three domains: trains in seconds on a CPU. Two length buckets, 4 and 8 (= max_len),
# in training and evaluation: every run exercises bucketing.
TINY = {
    "data.format": "synthetic",
    "data.source": "Alpha",
    "data.targets": ("Beta", "Gamma"),
    "data.max_len": 8,
    "model.hidden_dim": 16,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.dropout": 0.1,
    "model.emb_dropout": 0.1,
    "train.batch_size": 16,
    "train.num_epochs": 4,
    "train.learning_rate": 3e-3,
    "train.log_every_steps": 2,
    "train.checkpoint_every_steps": 0,
    "train.prefetch": 2,
    "train.patience": 10,
    "train.length_buckets": (4,),
    "eval.length_buckets": (4,),
    "gen_loss.samples_per_domain": 8,
    "eval.protocols": ("full", "sampled10"),
    "eval.num_sampled_negatives": 10,
    "eval.ks": (5, 10),
    "eval.batch_size": 32,
}

# A whole pipeline run on top of the tiny config: generated synthetic data (3 domains x 40 items) embedded
# by the packaged MiniLM, one compiled step shape, a small sequence-level transfer step.
TINY_PIPELINE_OVERRIDES = {
    "data.synthetic.num_users": 60,
    "data.synthetic.num_items": 40,
    "data.synthetic.max_history": 10,
    "text.max_tokens": 32,
    "encoder.bucket_sizes": (32,),
    "train.num_epochs": 2,
    "train.length_buckets": (),
    "eval.length_buckets": (),
    "transfer.num_clusters": 4,
    "transfer.kmeans_restarts": 1,
    "transfer.wf_epochs": 2,
}

# A tiny in-domain SASRec-ID trained one epoch with the softmax loss: the trained part of the fusion tests.
TINY_IN_DOMAIN_ID = {
    "model.variant": "id",
    "train.loss": "softmax",
    "train.num_epochs": 1,
    "train.length_buckets": (),
    "eval.length_buckets": (),
    "experiment.mode": "in_domain",
}
# Its fusion with the text baseline, theta on a coarse grid.
TINY_FUSION = {"fusion.enabled": True, "fusion.text_preset": "text_knn_center_soft02", "fusion.steps": 4}

# What the session's tiny trained run (tiny_trained_run) changes in the tiny config.
TINY_TRAINED_OVERRIDES = {
    "train.num_epochs": 2,
    "train.length_buckets": (),
    "eval.length_buckets": (),
    "transfer.num_clusters": 4,
    "transfer.kmeans_restarts": 1,
    "transfer.wf_epochs": 2,
}

# The tiny grid (tests/test_experiments.py): on the pipeline config, ID, Sem, RecG and text_knn on one
# source with two seeds, one ablation and one alpha-sweep point on one seed.
TINY_GRID = {
    "train.batch_size": 32,
    "transfer.wf_epochs": 1,
    "eval.batch_size": 64,
    "experiment.name": "tiny_grid",
    "experiment.sources": ("Alpha",),
    "experiment.backbones": ("sasrec",),
    "experiment.variants": ("id", "sem", "recg", "text_knn"),
    "experiment.seeds": (0, 1),
    "experiment.ablations": ("no_intra", "no_seq"),
    "experiment.alphas": (0.01, 0.001),
    "experiment.ablation_seeds": (0,),
    "experiment.plot_items_per_domain": 30,
}

# The tiny baselines study (tests/test_baselines.py): on the pipeline config, three presets, two seeds.
TINY_STUDY = {
    "train.batch_size": 32,
    "train.num_epochs": 1,
    "eval.batch_size": 64,
    "experiment.name": "tiny_baselines",
    "experiment.domains": ("Alpha", "Beta", "Gamma"),
    "experiment.sources": ("Alpha",),
    "experiment.seeds": (0, 1),
    "experiment.presets": ("text_knn", "sem", "text_mix"),
    "experiment.validation_domain": "Gamma",
}


def tiny_config(pipeline: bool = False, **overrides):
  """The tiny config (TINY), then overrides by config path (any depth) through the package's one override
  helper.

  Args:
    pipeline: also apply TINY_PIPELINE_OVERRIDES (for runs that generate and embed their own data).
    **overrides: config paths, e.g. **{"train.num_epochs": 1, "data.synthetic.num_items": 30}.

  Returns:
    A new ConfigDict (a test may change it).
  """
  from recg_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.override(config_lib.get_config(), TINY, what="the tiny config")
  if pipeline:
    config_lib.override(config, TINY_PIPELINE_OVERRIDES, what="the tiny pipeline config")
  return config_lib.override(config, overrides, what="a test")


def get_config(arg: str | None = None):
  """This module as a config file of the command lines: `--config=tests/conftest.py:grid` (or `:study`,
  or no argument for the tiny pipeline config)."""
  extra = {"grid": TINY_GRID, "study": TINY_STUDY, None: {}, "": {}}[arg]
  return tiny_config(pipeline=True, **extra)


@pytest.fixture(name="tiny_config", scope="session")
def tiny_config_fixture():
  """tiny_config, as a fixture: tiny_config(**{"train.num_epochs": 1})."""
  return tiny_config


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

  from recg_jax import training

  config = tiny_config(**TINY_TRAINED_OVERRIDES)
  domains, tables = tiny_problem
  result = training.train_and_evaluate(config, tmp_path_factory.mktemp("tiny_trained"), domains, tables)
  for leaf in jax.tree_util.tree_leaves(result.params):
    if isinstance(leaf, np.ndarray):
      leaf.flags.writeable = False
  return config, result


@pytest.fixture
def tiny_trained(tiny_trained_run):
  """(config, TrainResult) of the session's tiny trained run; the config is this test's own copy."""
  config, result = tiny_trained_run
  return config.copy_and_resolve_references(), result
