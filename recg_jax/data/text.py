"""One text string per item, from a template over its fields (docs/method.md, pipeline step 1).

Cutting the text to `max_tokens` is token-level and belongs to the encoder, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import html
import string

import ml_collections
import numpy as np

from recg_jax.data.errors import DataError

TEMPLATES = ("fields", "paper")


def clean(value: object) -> str:
  """HTML entities unescaped, runs of whitespace (any Unicode space) collapsed to one space, trimmed."""
  if value is None:
    return ""
  return " ".join(html.unescape(str(value)).split())


class _BlankMissing(dict):
  """format_map mapping that renders a field the item lacks as ""."""

  def __missing__(self, key: str) -> str:
    return ""


def _paper_fields(prompt: str) -> list[str]:
  return [name for _, name, _, _ in string.Formatter().parse(prompt) if name]


def render_rows(
    fields: Mapping[str, np.ndarray], text_config: ml_collections.ConfigDict, text_fields: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
  """Renders every row of `fields` (no padding row is assumed).

  Args:
    fields: field name -> [N] strings.
    text_config: config.text (template, paper_prompt, empty_fallback).
    text_fields: field order for the `fields` template.

  Returns:
    texts_N: object array of rendered strings, `empty_fallback` where the item has no text.
    has_text_N: bool, whether any field the template uses is non-empty after cleaning.
  """
  template = text_config.template
  if template == "fields":
    used = list(text_fields)
  elif template == "paper":
    used = _paper_fields(text_config.paper_prompt)
  else:
    raise DataError(
        f"unknown template {template!r} (expected one of {', '.join(TEMPLATES)})", field="text.template"
    )
  size = len(next(iter(fields.values()))) if fields else 0
  columns = {n: [clean(v) for v in fields[n]] if n in fields else [""] * size for n in used}
  texts = np.empty(size, object)
  has_text = np.zeros(size, bool)
  for i in range(size):
    values = {n: columns[n][i] for n in used}
    has_text[i] = any(values.values())
    if not has_text[i]:
      texts[i] = text_config.empty_fallback
    elif template == "fields":
      texts[i] = "; ".join(f"{n}: {v}" for n, v in values.items() if v)
    else:
      texts[i] = text_config.paper_prompt.format_map(_BlankMissing(values))
  return texts, has_text
