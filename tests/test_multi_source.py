"""Several source domains in one run (data.source 'A+B'): balanced batches, one domain per batch, capped
users, each batch scored against its own catalogue, validation on every source, records per source."""

import numpy as np
import pytest

from recg_jax import input_pipeline
from recg_jax import pipeline
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.training import step as step_lib
from recg_jax.training import trainer as trainer_lib


def test_source_names_and_user_subset(tiny_problem):
  assert types.source_names("Alpha") == ("Alpha",)
  assert types.source_names("Alpha+Beta") == ("Alpha", "Beta")
  domain = tiny_problem[0]["Alpha"]
  sub = types.user_subset(domain, 10)
  assert sub.num_users == 10 and sub.num_items == domain.num_items
  kept = [list(domain.user_tokens).index(u) for u in sub.user_tokens]
  assert kept == sorted(kept)
  for i, u in enumerate(kept):
    np.testing.assert_array_equal(sub.history(i), domain.history(u))
  assert types.user_subset(domain, 0) is domain and types.user_subset(domain, 10).user_tokens.tolist() == (
      sub.user_tokens.tolist()
  )  # the same sample every time


def test_every_domain_gets_the_same_batches_each_epoch(tiny_config, tiny_problem):
  domains, _ = tiny_problem
  config = tiny_config(**{"data.source": "Alpha+Beta", "model.variant": "sem"})
  model = recommender_lib.build_model(config, 40)
  small = types.user_subset(domains["Beta"], 16)
  rows = trainer_lib.training_rows(config, model, [domains["Alpha"], small])
  assert isinstance(rows, input_pipeline.MultiRows)
  own = [input_pipeline.steps_per_epoch(r, 16) for r in rows.domains]
  assert rows.batches_per_domain == round(np.mean(own)) and own[1] < rows.batches_per_domain
  plans = [input_pipeline.plan_of(rows, 16, seed, 3) for seed in (0, 1)]
  for plan in plans:
    assert [d for _, _, d in plan] == [0, 1] * rows.batches_per_domain  # turns, one domain a batch
  assert [(w, d) for w, _, d in plans[0]] == [(w, d) for w, _, d in plans[1]]  # seed-independent shapes
  batches = list(input_pipeline.epoch_batches(rows, 16, 0, 3))
  assert [int(b["domain"][0]) for b in batches] == [0, 1] * rows.batches_per_domain
  assert all((b["domain"] == b["domain"][0]).all() for b in batches)
  beta = batches[1]
  assert beta["targets"].max() <= small.num_items


def test_sources_are_stacked_and_padded(tiny_config, tiny_problem):
  _, tables = tiny_problem
  config = tiny_config(
      **{
          "data.source": "Alpha+Gamma",
          "data.targets": ("Beta",),
          "model.variant": "sem",
          "train.source_table_rows": 60,
      }
  )
  st = step_lib.build_step_tables(config, tables)
  assert st.arrays["sources"].shape == (2, 60, 24) and st.arrays["counts"].tolist() == [30, 38]
  np.testing.assert_array_equal(st.arrays["sources"][1, :39], tables["Gamma"])
  assert not st.arrays["sources"][0, 31:].any()


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant,extra",
    [
        (
            "sem",
            {
                "train.loss": "softmax",
                "model.score_space": "text",
                "model.text_user": "mix",
                "train.softmax_mask_history": True,
            },
        ),
        ("recg", {"gen_loss.include_targets": False}),
    ],
    ids=["text-mix-masked-softmax", "recg-bpr"],
)
def test_a_multi_source_run_trains_validates_and_transfers(
    tiny_config, tiny_problem, tmp_path, variant, extra
):
  domains, tables = tiny_problem
  config = tiny_config(
      **{
          "data.source": "Alpha+Beta",
          "data.targets": ("Gamma",),
          "model.variant": variant,
          "train.num_epochs": 2,
          "train.max_users_per_source": 40,
          "train.length_buckets": (),
          "eval.length_buckets": (),
          "transfer.num_clusters": 4,
          "transfer.wf_epochs": 1,
          **extra,
      }
  )
  (records,) = pipeline.train_and_transfer([config], [tmp_path], domains, tables)
  assert not isinstance(records, Exception), getattr(records, "traceback", records)
  assert [(r["stage"], r["domain"], r["source"]) for r in records] == [
      ("in_domain", "Alpha", "Alpha+Beta"),
      ("in_domain", "Beta", "Alpha+Beta"),
      ("zero_shot", "Gamma", "Alpha+Beta"),
  ]
  valid = [e for e in _events(tmp_path) if e["kind"] == "valid"]
  assert len(valid) == 2
  for e in valid:  # early stopping reads the mean of the sources' validation metrics
    mean = np.mean([e["valid@Alpha/full/ndcg@10"], e["valid@Beta/full/ndcg@10"]])
    assert e["valid/full/ndcg@10"] == pytest.approx(mean)
  setup = next(e for e in _events(tmp_path) if e["kind"] == "setup")
  assert setup["rows"] == 80  # 40 users of each source
  for r in records:
    assert all(0.0 <= v <= 1.0 for v in r["metrics"].values())


def _events(workdir):
  from conftest import read_jsonl  # pylint: disable=g-import-not-at-top

  return read_jsonl(workdir / "metrics.jsonl")
