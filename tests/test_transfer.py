"""Zero-shot transfer: the whole pipeline on tiny synthetic data, and what the swap may and may not change."""

import json

import jax
import numpy as np
import pytest

from configs import quickstart
from recg_jax import pipeline
from recg_jax import transfer
from recg_jax.data import prepare


def _tiny_config():
  config = quickstart.get_config()
  config.data.synthetic.num_users = 60
  config.data.synthetic.num_items = 40
  config.data.synthetic.max_history = 10
  config.data.max_len = 8
  config.text.max_tokens = 32
  config.encoder.bucket_sizes = (32,)
  config.model.hidden_dim = 16
  config.train.num_epochs = 2
  config.train.batch_size = 32
  config.gen_loss.samples_per_domain = 8
  config.transfer.num_clusters = 4
  config.transfer.kmeans_restarts = 1
  config.transfer.wf_epochs = 2
  config.eval.batch_size = 32
  config.train.length_buckets = ()  # one compiled step shape keeps this test fast
  config.eval.length_buckets = ()
  config.eval.num_sampled_negatives = 20  # the catalogues hold 40 items
  config.eval.protocols = ("full", "sampled20")
  return config


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("zero_shot")
  config = _tiny_config()
  records = pipeline.run(config, str(workdir))
  return config, workdir, records


def test_pipeline_reports_source_and_every_target(zero_shot_run):
  config, workdir, records = zero_shot_run
  rows = {(r["stage"], r["domain"]) for r in records}
  assert rows == {("in_domain", "Alpha"), ("zero_shot", "Beta"), ("zero_shot", "Gamma")}
  for r in records:
    assert r["data"] == "synthetic data"
    for protocol in ("full", "sampled20"):
      split = "test" if r["stage"] == "in_domain" else "zero_shot"
      value = r["metrics"][f"{split}/{protocol}/ndcg@10"]
      assert 0.0 <= value <= 1.0
  saved = json.loads((workdir / "results.json").read_text())
  assert len(saved["records"]) == 3
  assert "zero_shot" in (workdir / "results.md").read_text()


@pytest.fixture(scope="module")
def trained(zero_shot_run):
  """The trained model of the run above (restored from its workdir: a finished run is not retrained)."""
  config, workdir, _ = zero_shot_run
  domains = prepare.load_domains(config, workdir, log=lambda *_: None)
  tables = pipeline.embed_domains(config, workdir, domains)
  from recg_jax import train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(config, workdir / "again", domains, tables)
  return config, domains, tables, result


def test_swapping_the_table_changes_no_parameter(trained):
  config, domains, tables, result = trained
  seq = transfer.fit_sequence_transfer(config, result.model, result.params, tables["Alpha"],
                                       domains["Alpha"])
  before = jax.tree.map(np.copy, (result.params, seq.fusion_params, seq.centres_KxD))
  transfer.evaluate_domain(config, result.model, result.params, tables["Beta"], domains["Beta"], seq, "test")
  after = (result.params, seq.fusion_params, seq.centres_KxD)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_one_pass_with_and_without_the_sequence_step_equals_two_passes(trained):
  config, domains, tables, result = trained
  seq = transfer.fit_sequence_transfer(config, result.model, result.params, tables["Alpha"],
                                       domains["Alpha"])
  args = (config, result.model, result.params, tables["Beta"], domains["Beta"])
  both = transfer.evaluate_domain_heads(*args, seq, "test")
  assert both["fused"] == transfer.evaluate_domain(*args, seq, "test")
  assert both["plain"] == transfer.evaluate_domain(*args, None, "test")
  assert both["fused"] != both["plain"]


def test_fusion_at_identity_init_leaves_user_vectors_unchanged(trained):
  config, domains, tables, result = trained
  seq = transfer.fit_sequence_transfer(config, result.model, result.params,
                                       tables["Alpha"], domains["Alpha"])
  kernel = np.zeros_like(seq.fusion_params["W_f"]["kernel"])
  d = kernel.shape[1]
  kernel[:d] = np.eye(d)
  identity = transfer.SequenceTransfer(centres_KxD=seq.centres_KxD, inertia=seq.inertia,
                                       fusion_params={"W_f": {"kernel": kernel}})
  seq_BxL = np.asarray(domains["Beta"].items[:8].reshape(1, 8), np.int32)
  plain = transfer.fused_user_fn(result.model, result.params, tables["Beta"], None)(seq_BxL)
  fused = transfer.fused_user_fn(result.model, result.params, tables["Beta"], identity)(seq_BxL)
  np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), rtol=1e-5, atol=1e-6)
  # Training moved W_f away from [I | 0].
  assert not np.allclose(seq.fusion_params["W_f"]["kernel"], kernel)


def test_id_variant_refuses_zero_shot(tmp_path):
  config = _tiny_config()
  config.model.variant = "id"
  with pytest.raises(ValueError, match="cannot transfer"):
    transfer.run_zero_shot(config, tmp_path, {}, None)
