"""bench/small_catalogues.py: the item subsamples a small-catalogue cell is measured on, and the rule that
chooses the default from the validation domains' cells."""

import importlib.util
import pathlib

import numpy as np
import pytest

from recg_jax.data import types

_PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "small_catalogues.py"
_SPEC = importlib.util.spec_from_file_location("small_catalogues", _PATH)
small = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(small)


def _domain(histories: list[list[int]], num_items: int) -> types.DomainData:
  lengths = [len(h) for h in histories]
  return types.DomainData(
      name="D",
      item_tokens=np.asarray(["[PAD]"] + [f"i{i}" for i in range(1, num_items + 1)], object),
      item_fields={"title": np.asarray([""] + [f"t{i}" for i in range(1, num_items + 1)], object)},
      item_text=np.asarray([""] + [f"text {i}" for i in range(1, num_items + 1)], object),
      user_tokens=np.asarray([f"u{u}" for u in range(len(histories))], object),
      offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
      items=np.concatenate([np.asarray(h, np.int32) for h in histories]),
  )


def test_item_subset_keeps_the_chosen_items_in_history_order_and_users_with_three():
  domain = _domain([[1, 5, 2, 7, 5], [3, 5, 4], [7, 2, 6, 5, 1], [2, 6]], num_items=7)
  sub = small.item_subset(domain, np.asarray([7, 2, 5]))  # renumbered 2 -> 1, 5 -> 2, 7 -> 3
  assert sub.num_items == 3
  assert list(sub.item_tokens) == ["[PAD]", "i2", "i5", "i7"]
  assert list(sub.item_text) == ["", "text 2", "text 5", "text 7"]
  assert list(sub.user_tokens) == ["u0", "u2"]  # u1 keeps one item, u3 one
  assert [list(sub.history(u)) for u in range(sub.num_users)] == [[2, 1, 3, 2], [3, 1, 2]]


def test_snowball_items_are_distinct_items_of_the_domain_and_depend_on_the_seed_alone():
  rng = np.random.default_rng(0)
  domain = _domain([list(rng.choice(60, 6, replace=False) + 1) for _ in range(80)], num_items=60)
  items = small.snowball_items(domain, 25, seed=1)
  assert len(items) == 25 and len(set(items.tolist())) == 25
  assert items.min() >= 1 and items.max() <= 60
  np.testing.assert_array_equal(items, small.snowball_items(domain, 25, seed=1))
  assert set(items.tolist()) != set(small.snowball_items(domain, 25, seed=2).tolist())
  with pytest.raises(ValueError, match="size"):
    small.snowball_items(domain, 60, seed=0)


def _cells(rel: dict) -> dict:
  """Result cells where the reference scores 0.1 and each method 0.1 * (1 + its relative change)."""
  cells = {}
  for (domain, size, method), r in rel.items():
    cells[small.cell_key(domain, size, 0, small.REFERENCE)] = {"full/ndcg@10": 0.1}
    cells[small.cell_key(domain, size, 0, method)] = {"full/ndcg@10": 0.1 * (1 + r)}
  return {"cells": cells, "catalogues": {}}


def test_the_choice_excludes_a_method_that_loses_more_than_two_percent_on_any_validation_cell():
  record = _cells(
      {
          ("Games", 50, "a"): -0.03,  # a gains most on average, but loses 3% here
          ("Food", "full", "a"): 0.20,
          ("Games", 50, "b"): -0.01,
          ("Food", "full", "b"): 0.02,
          ("Scientific", 50, "c"): 0.50,  # a test domain: never read
          ("Games", 50, "c"): -0.05,
          ("Food", "full", "c"): 0.0,
      }
  )
  choice, table = small.choose(record)
  assert choice == "b"
  np.testing.assert_allclose(table["a"], (-0.03, 0.085))
