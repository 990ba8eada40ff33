"""Zero-shot transfer: the whole pipeline on tiny synthetic data (slow tier), and what the swap may and may
not change (on the session's tiny trained run)."""

import json

import jax
import numpy as np
import pytest

from recg_jax import pipeline
from recg_jax import transfer


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory, tiny_config):
  workdir = tmp_path_factory.mktemp("zero_shot")
  config = tiny_config(pipeline=True)
  records = pipeline.run(config, str(workdir))
  return config, workdir, records


@pytest.mark.slow
def test_pipeline_reports_source_and_every_target(zero_shot_run):
  config, workdir, records = zero_shot_run
  rows = {(r["stage"], r["domain"]) for r in records}
  assert rows == {("in_domain", "Alpha"), ("zero_shot", "Beta"), ("zero_shot", "Gamma")}
  for r in records:
    assert r["data"] == "synthetic data"
    for protocol in ("full", "sampled10"):
      split = "test" if r["stage"] == "in_domain" else "zero_shot"
      value = r["metrics"][f"{split}/{protocol}/ndcg@10"]
      assert 0.0 <= value <= 1.0
  saved = json.loads((workdir / "results.json").read_text())
  assert len(saved["records"]) == 3
  assert "zero_shot" in (workdir / "results.md").read_text()


@pytest.fixture
def trained(tiny_trained, tiny_problem):
  """The session's tiny trained RecG model (source Alpha)."""
  config, result = tiny_trained
  domains, tables = tiny_problem
  return config, domains, tables, result


def test_trained_run_reports_source_and_every_target(trained, tmp_path):
  """What train_and_transfer does after training (the slow pipeline test above runs it all from a
  config)."""
  config, domains, tables, result = trained
  records = pipeline.transfer_trained(config, tmp_path, domains, tables, result)
  assert [(r["stage"], r["domain"]) for r in records] == [
      ("in_domain", "Alpha"),
      ("zero_shot", "Beta"),
      ("zero_shot", "Gamma"),
  ]
  for r in records:
    assert r["data"] == "synthetic data"
    split = "test" if r["stage"] == "in_domain" else "zero_shot"
    for protocol in ("full", "sampled10"):
      for key in (f"{split}/{protocol}/ndcg@10", f"{split}_no_seq/{protocol}/ndcg@10"):
        assert 0.0 <= r["metrics"][key] <= 1.0, key
  # The source's test split without the sequence step is the trained model's own test result.
  assert records[0]["metrics"]["test_no_seq/full/ndcg@10"] == result.metrics["test/full/ndcg@10"]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert len(saved["records"]) == 3
  assert "zero_shot" in (tmp_path / "results.md").read_text()


def test_swapping_the_table_changes_no_parameter(trained):
  config, domains, tables, result = trained
  seq = transfer.fit_sequence_transfer(config, result.model, result.params, tables["Alpha"], domains["Alpha"])
  before = jax.tree.map(np.copy, (result.params, seq.fusion_params, seq.centres_KxD))
  transfer.evaluate_domain(config, result.model, result.params, tables["Beta"], domains["Beta"], seq, "test")
  after = (result.params, seq.fusion_params, seq.centres_KxD)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_one_pass_with_and_without_the_sequence_step_equals_two_passes(trained):
  config, domains, tables, result = trained
  seq = transfer.fit_sequence_transfer(config, result.model, result.params, tables["Alpha"], domains["Alpha"])
  args = (config, result.model, result.params, tables["Beta"], domains["Beta"])
  both = transfer.evaluate_domain_heads(*args, seq, "test")
  assert both["fused"] == transfer.evaluate_domain(*args, seq, "test")
  assert both["plain"] == transfer.evaluate_domain(*args, None, "test")
  assert both["fused"] != both["plain"]


def test_fusion_at_identity_init_leaves_user_vectors_unchanged(trained):
  config, domains, tables, result = trained
  seq = transfer.fit_sequence_transfer(config, result.model, result.params, tables["Alpha"], domains["Alpha"])
  kernel = np.zeros_like(seq.fusion_params["W_f"]["kernel"])
  d = kernel.shape[1]
  kernel[:d] = np.eye(d)
  identity = transfer.SequenceTransfer(
      centres_KxD=seq.centres_KxD, inertia=seq.inertia, fusion_params={"W_f": {"kernel": kernel}}
  )
  seq_BxL = np.asarray(domains["Beta"].items[:8].reshape(1, 8), np.int32)
  plain = transfer.user_heads_fn(result.model, result.params, tables["Beta"], None)(seq_BxL)["plain"]
  fused = transfer.user_heads_fn(result.model, result.params, tables["Beta"], identity)(seq_BxL)["fused"]
  np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), rtol=1e-5, atol=1e-6)
  # Training moved W_f away from [I | 0].
  assert not np.allclose(seq.fusion_params["W_f"]["kernel"], kernel)


def test_id_variant_refuses_zero_shot(tmp_path, tiny_config):
  config = tiny_config(**{"model.variant": "id"})
  with pytest.raises(ValueError, match="cannot transfer"):
    pipeline.train_and_transfer([config], [tmp_path], {}, None)
