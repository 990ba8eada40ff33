"""Item text templates: golden strings."""

import numpy as np
import pytest

from recg_jax.config import default
from recg_jax.data import text
from recg_jax.data.errors import DataError

FIELDS = {
    "title": np.array(["", "Foo &amp; Bar  Baz", "", "Only title"], object),
    "brand": np.array(["", "", "", "  "], object),
    "categories": np.array(["", "Tools, Hand Tools", "", ""], object),
    "description": np.array(["", "Line one.\n  Line&nbsp;two &lt;b&gt;", "", ""], object),
    "features": np.array(["", "steel, 3 pack", "", ""], object),
}
TEXT_FIELDS = ("title", "brand", "categories", "description")


def _texts(fields, text_config, text_fields):
  """The rendered texts of items 1.. (row 0 of FIELDS is the padding item)."""
  return text.render_rows(fields, text_config, text_fields)[0][1:]


def test_fields_template_golden():
  out = _texts(FIELDS, default.get_text_config(), TEXT_FIELDS)
  assert out.tolist() == [
      "title: Foo & Bar Baz; categories: Tools, Hand Tools; description: Line one. Line two <b>",
      "unknown item",
      "title: Only title",
  ]


def test_fields_template_follows_text_fields_order_and_missing_fields_are_empty():
  out = _texts(FIELDS, default.get_text_config(), ("description", "title", "store"))
  assert out[0] == "description: Line one. Line two <b>; title: Foo & Bar Baz"


def test_paper_template_golden():
  config = default.get_text_config()
  config.template = "paper"
  out = _texts(FIELDS, config, TEXT_FIELDS)
  assert out[0] == (
      "Please summarize the following item based on the provided information: "
      "title: Foo & Bar Baz.\n Feature: steel, 3 pack.\n Description: Line one. Line two <b>"
  )
  assert out[2] == (
      "Please summarize the following item based on the provided information: "
      "title: Only title.\n Feature: .\n Description: "
  )
  assert out[1] == "unknown item"
  # Without a features field at all (RecBole folders), {features} renders as "".
  no_features = {k: v for k, v in FIELDS.items() if k != "features"}
  assert "Feature: .\n" in _texts(no_features, config, TEXT_FIELDS)[0]


def test_has_text_and_unknown_template():
  _, has_text = text.render_rows(FIELDS, default.get_text_config(), TEXT_FIELDS)
  np.testing.assert_array_equal(has_text, [False, True, False, True])
  config = default.get_text_config()
  config.template = "nope"
  with pytest.raises(DataError, match="text.template"):
    _texts(FIELDS, config, TEXT_FIELDS)
