"""The leave-one-domain-out study (recg_jax/grid/lodo.py, lodo_report.py): its plan, each run's config, and
a study of made-up runs whose choices are made on the validation domain only."""

import dataclasses

import numpy as np
import pytest

from configs import lodo_shared
from recg_jax import errors
from recg_jax import pipeline
from recg_jax.grid import lodo
from recg_jax.grid import lodo_report
from recg_jax.grid import runner

from _grid_fakes import fake_runs
from _grid_fakes import made_up
import conftest


def _tiny_config():
  config = conftest.get_config("study")
  ec = config.experiment
  ec.study, ec.validation_domains, ec.seeds = "leave_one_out", ("Beta",), (0, 1)
  ec.text_presets = ("text_knn", "text_knn_center")
  ec.presets = ("sem", "text_mix_center_masked")
  ec.single_source_presets, ec.in_domain_presets = ("text_mix_center_masked",), ("id",)
  return config


def test_plan_and_run_configs_of_the_shared_study():
  config = lodo_shared.get_config()
  items = lodo.plan(config)
  kinds = {k: sum(i.kind == k for i in items) for k in lodo.KINDS}
  assert kinds == {"lodo": 6 * 6 * 3, "text": 13 * 6, "single": 6 * 3, "in_domain": 2 * 6 * 3}
  assert [i.kind for i in items[:78]] == ["text"] * 78  # the training-free runs first
  kitchen = next(i for i in items if i.kind == "lodo" and i.domain == "Kitchen" and i.preset == "recg")
  rc = lodo.run_config(config, kitchen, lodo_shared.DOMAINS)
  assert rc.data.source == "Scientific+Office+Games+LuxuryBeauty+Food" and tuple(rc.data.targets) == (
      "Kitchen",
  )
  assert rc.experiment.mode == "zero_shot" and not rc.gen_loss.include_targets
  text = lodo.run_config(config, lodo.Item("text", "Food", "text_knn_center_title", 0), lodo_shared.DOMAINS)
  assert (text.data.source, tuple(text.data.targets), text.experiment.mode) == ("Food", (), "in_domain")
  assert tuple(text.data.text_fields) == ("title",)
  assert text.train.max_users_per_source == 0  # evaluated on every user, as a zero-shot target is
  assert rc.train.max_users_per_source == config.train.max_users_per_source > 0
  single = lodo.run_config(
      config, lodo.Item("single", "Games", "text_mix_center_masked", 1), lodo_shared.DOMAINS
  )
  assert single.data.source == "Games" and len(single.data.targets) == 5 and single.train.seed == 1


def test_held_out_domains_restrict_the_multi_source_runs_only():
  config = lodo_shared.get_config()
  config.experiment.held_out_domains = ("Office", "Kitchen")
  items = lodo.plan(config)
  assert {i.domain for i in items if i.kind == "lodo"} == {"Office", "Kitchen"}
  assert sum(i.kind == "lodo" for i in items) == len(lodo_shared.PRESETS) * 2 * 3
  assert {i.domain for i in items if i.kind != "lodo"} == set(lodo_shared.DOMAINS)
  config.experiment.held_out_domains = ("Books",)
  with pytest.raises(errors.ConfigError, match="held_out_domains"):
    lodo.plan(config)


@pytest.fixture
def made_up_study(tmp_path, monkeypatch):
  fake_runs(monkeypatch, calls := [])
  monkeypatch.setattr(
      pipeline,
      "embed_domains",
      lambda config, workdir, domains: {
          n: np.zeros((d.num_items + 1, 8), np.float32) for n, d in domains.items()
      },
  )
  summary = lodo.run_study(_tiny_config(), tmp_path, command="tiny")
  return tmp_path, calls, summary


@pytest.mark.slow
def test_a_made_up_study_runs_every_run_once_and_tables_it(made_up_study):
  workdir, calls, summary = made_up_study
  assert not summary["failed"] and len(summary["ran"]) == len(calls) == 2 * 3 + 2 * (3 + 3 + 2 * 3)
  md = (workdir / "results.md").read_text()
  for needle in (
      "| method | Alpha | Beta (validation) | Gamma |",
      "**text baseline** = `",
      "best single source",
      "`sem`, trained on the other domains",
      "in-domain `id`",
      "## Share of the best in-domain",
      "the goal is 3 of 2",
  ):
    assert needle in md, needle
  again = lodo.run_study(_tiny_config(), workdir, command="tiny")
  assert again["ran"] == [] and len(calls) == len(summary["ran"])


@pytest.mark.slow
def test_choices_read_the_validation_domain_only(made_up_study):
  workdir, _, _ = made_up_study
  config = _tiny_config()
  values = lodo_report.collect_values(runner.collect_markers(workdir, lodo_report.RUNS))
  key = lambda preset, d: ("text", d, d, preset, "full", "ndcg@10")
  want = max(("text_knn", "text_knn_center"), key=lambda p: made_up(p, "Beta", 0, "full/ndcg@10"))
  assert lodo_report.choose_text_baseline(values, config.experiment.text_presets, ("Beta",)) == want
  other = next(p for p in ("text_knn", "text_knn_center") if p != want)
  values[key(other, "Alpha")] = {0: 1.0}  # a test target's numbers never move a choice
  values[key(other, "Gamma")] = {0: 1.0}
  assert lodo_report.choose_text_baseline(values, config.experiment.text_presets, ("Beta",)) == want
  source = lodo_report.choose_source(
      values, "text_mix_center_masked", "Alpha", ["Alpha", "Beta", "Gamma"], ("Beta",)
  )
  assert source == "Gamma"  # the only source that is neither the target nor the validation domain


def _two_field_domains() -> dict:
  import _train_driver  # pylint: disable=g-import-not-at-top

  out = {}
  for name in ("Alpha", "Beta"):
    d = _train_driver.tiny_domain(name)
    titles = d.item_fields["title"]
    descriptions = np.array([""] + [f"about {t}" for t in titles[1:]], dtype=object)
    text = np.array([""] + [f"{t} | about {t}" for t in titles[1:]], dtype=object)
    out[name] = dataclasses.replace(
        d, item_fields={"title": titles, "description": descriptions}, item_text=text
    )
  return out


def test_a_text_fields_preset_embeds_the_studys_own_items_into_a_cache_of_its_own(tmp_path, monkeypatch):
  """A text-fields preset embeds other text of the same items and users (its own data preparation would
  drop the items lacking its fields), and two embedding keys never share the embedding cache, which holds
  one table per domain name."""
  domains, loads, embedded = _two_field_domains(), [], []
  monkeypatch.setattr(
      lodo.runner,
      "load_domains",
      lambda config, root, order, with_tables: loads.append(root) or (domains, {}),
  )

  def fake_embed(config, root, ds):
    embedded.append((root, {n: d.item_text for n, d in ds.items()}))
    return {n: np.zeros((d.num_items + 1, 4), np.float32) for n, d in ds.items()}

  monkeypatch.setattr(lodo.pipeline, "embed_domains", fake_embed)
  config = _tiny_config()
  config.data.text_fields = ("title", "description")
  tables = lodo._Tables(config, tmp_path, ("Alpha", "Beta"))  # pylint: disable=protected-access
  title = lodo.run_config(config, lodo.Item("text", "Beta", "text_knn_center_title", 0), ("Alpha", "Beta"))
  got = tables(title)
  assert tables(title) is got and loads == [tmp_path]  # the study's own domains, loaded once
  assert {n: t.shape[0] for n, t in got.items()} == {n: d.num_items + 1 for n, d in domains.items()}
  roots = {root for root, _ in embedded}
  assert len(roots) == 1 and next(iter(roots)).parent == tmp_path / "tables"
  for _, texts in embedded:
    for name, t in texts.items():
      titles = domains[name].item_fields["title"][1:]
      assert all(x.endswith(y) and "about" not in x for x, y in zip(t[1:], titles))  # the title alone


def test_a_text_fields_preset_needs_fields_the_study_prepared():
  domain = _two_field_domains()["Alpha"]
  config = _tiny_config()
  config.data.text_fields = ("brand",)
  with pytest.raises(errors.ConfigError, match="text_fields"):
    lodo.with_text_of(domain, config)
