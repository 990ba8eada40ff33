"""A `gs://` workdir is a bucket, not a local folder named `gs:`: every stage that writes under the workdir
goes through the one path type (recg_jax.paths, etils.epath).

No network here: fsspec's in-memory file system stands in for Google Cloud Storage under the `gs`
scheme (epath reaches gs:// through fsspec when TensorFlow is absent), so the same code path runs as on
a pod. Orbax checkpoints are not covered: orbax writes gs:// through tensorstore's own GCS driver.
"""

from __future__ import annotations

import json

import fsspec
from fsspec.implementations import memory
import numpy as np
import pytest

from recg_jax import paths
from recg_jax import pipeline
from recg_jax import plots
from recg_jax import results
from recg_jax.training import metric_log


class _FakeBucket(memory.MemoryFileSystem):
  """Its own store, so the test leaves fsspec's shared memory file system alone. Keys keep the scheme:
  'gs://bucket/run/...'."""

  store: dict = {}
  pseudo_dirs = [""]
  protocol = ("gs", "gcs")


@pytest.fixture
def bucket(monkeypatch):
  _FakeBucket.store = {}
  _FakeBucket.pseudo_dirs = [""]
  _FakeBucket.clear_instance_cache()
  monkeypatch.setenv("EPATH_USE_TF", "false")
  for protocol in ("gs", "gcs"):  # epath asks fsspec for 'gcs'
    fsspec.register_implementation(protocol, _FakeBucket, clobber=True)
  yield _FakeBucket()
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, "gcsfs.GCSFileSystem", clobber=True)


def test_remote_paths_stay_remote():
  p = paths.as_path("gs://bucket/run") / "cache" / "embeddings"
  assert str(p) == "gs://bucket/run/cache/embeddings"
  assert paths.is_remote(p) and not paths.is_remote(paths.as_path("runs/x"))
  assert paths.absolute("gs://bucket/run") == paths.as_path("gs://bucket/run")


@pytest.mark.slow
def test_data_and_embedding_stages_write_into_the_bucket(bucket, tiny_config, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a local folder named 'gs:' would appear here
  config = tiny_config(pipeline=True, **{"experiment.mode": "embed"})
  assert pipeline.run(config, "gs://bucket/run") is None
  files = set(bucket.store)
  assert any(f.endswith("/synthetic/Alpha/Alpha.inter") for f in files), files
  for name in ("Alpha", "Beta", "Gamma"):
    assert any(f"/cache/data/{name}-" in f and f.endswith("arrays.npz") for f in files)
    table_file = f"gs://bucket/run/cache/embeddings/{name}/embeddings.npy"
    assert table_file in files
    with bucket.open(table_file, "rb") as f:
      table = np.load(f)
    manifest = json.loads(bucket.cat(f"gs://bucket/run/cache/embeddings/{name}/manifest.json"))
    assert list(table.shape) == manifest["shape"] and np.all(table[0] == 0)
  assert not any(".tmp" in f for f in files)  # temporary siblings were moved into place
  assert not (tmp_path / "gs:").exists()
  # A second run reuses both caches from the bucket.
  assert pipeline.run(config, "gs://bucket/run") is None
  assert set(bucket.store) == files


def test_metric_log_rewrites_a_remote_file_and_trims_on_resume(bucket):
  log = metric_log.MetricLog(paths.as_path("gs://bucket/run"), resume_step=0)
  for step in (1, 2, 3):
    log.write("train", step, {"loss": 1.0 / step})
  log.write("valid", 3, {"valid/full/ndcg@10": 0.5})  # an evaluation syncs the file at once
  assert [json.loads(line)["step"] for line in bucket.cat("gs://bucket/run/metrics.jsonl").splitlines()] == [
      1,
      2,
      3,
      3,
  ]
  log.close()
  resumed = metric_log.MetricLog(paths.as_path("gs://bucket/run"), resume_step=2)
  resumed.close()
  assert [json.loads(line)["step"] for line in bucket.cat("gs://bucket/run/metrics.jsonl").splitlines()] == [
      1,
      2,
  ]


def test_results_and_plots_write_into_the_bucket(bucket, tiny_config):
  config = tiny_config()
  record = results.make_record(config, "in_domain", "Alpha", {"test/full/ndcg@10": 0.25})
  json_path, md_path = results.write_results("gs://bucket/run", [record], config)
  assert str(json_path) == "gs://bucket/run/results.json"
  assert results.read_records(json_path)[0]["metrics"]["test/full/ndcg@10"] == 0.25
  assert "Results" in bucket.cat("gs://bucket/run/results.md").decode()
  png = plots.alpha_sensitivity(
      {"RecG": {"full/ndcg@10": [(1e-3, (0.2, None)), (1e-2, (0.3, None))]}},
      ["full/ndcg@10"],
      "gs://bucket/run/plots/alpha.png",
  )
  assert str(png) == "gs://bucket/run/plots/alpha.png"
  assert bucket.cat("gs://bucket/run/plots/alpha.png")[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("gz", [False, True])
def test_raw_amazon2023_files_are_read_from_the_bucket(bucket, tmp_path, gz):
  import test_data_amazon2023 as amazon  # pylint: disable=g-import-not-at-top

  from recg_jax.data import amazon2023  # pylint: disable=g-import-not-at-top

  amazon.write_category(paths.as_path("gs://bucket/raw"), "Tools", gz=gz)
  amazon.write_category(tmp_path, "Tools", gz=gz)
  config = amazon.config_for(tmp_path)
  remote = amazon2023.read_amazon2023("gs://bucket/raw", "Tools", config.data)
  local = amazon2023.read_amazon2023(tmp_path, "Tools", config.data)
  assert remote.user_tokens.tolist() == local.user_tokens.tolist()
  assert remote.item_fields["title"].tolist() == local.item_fields["title"].tolist()
  assert remote.num_interactions == local.num_interactions > 0


def test_the_downloader_refuses_a_remote_folder(bucket):
  import test_data_amazon2023 as amazon  # pylint: disable=g-import-not-at-top

  from recg_jax.data import amazon2023  # pylint: disable=g-import-not-at-top
  from recg_jax.data.errors import DataError  # pylint: disable=g-import-not-at-top

  config = amazon.config_for("gs://bucket/raw")
  config.data.amazon2023.download = True
  with pytest.raises(DataError, match="writes to a local folder"):
    amazon2023.find_files("gs://bucket/raw", "Tools", config.data.amazon2023)
