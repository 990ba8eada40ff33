"""Every relative link of README.md and docs/*.md reaches a file of the repository, and a `#anchor` into a
Markdown file names one of its headings (as GitHub turns headings into anchors)."""

import pathlib
import re

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PAGES = [_ROOT / "README.md", *sorted((_ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
  """The lines outside fenced code blocks, inline code removed."""
  lines, fenced = [], False
  for line in text.splitlines():
    if _FENCE.match(line):
      fenced = not fenced
    elif not fenced:
      lines.append(re.sub(r"`[^`]*`", "", line))
  return lines


def _anchors(page: pathlib.Path) -> set[str]:
  """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens, a repeated
  one numbered."""
  seen: dict[str, int] = {}
  anchors = set()
  for line in _prose(page.read_text(encoding="utf-8")):
    match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not match:
      continue
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))
    slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
    seen[slug] = seen.get(slug, 0) + 1
  return anchors


def _links(page: pathlib.Path) -> list[str]:
  """Link targets, a link's text may run over lines."""
  return [m.group(1) for m in _LINK.finditer("\n".join(_prose(page.read_text(encoding="utf-8"))))]


def _relative(target: str) -> bool:
  return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)


def test_the_pages_have_relative_links():
  assert sum(_relative(t) for page in _PAGES for t in _links(page)) > 20


@pytest.mark.parametrize("page", _PAGES, ids=lambda p: str(p.relative_to(_ROOT)))
def test_every_relative_link_reaches_a_file(page):
  broken = []
  for target in filter(_relative, _links(page)):
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists() or not dest.is_relative_to(_ROOT):
      broken.append(f"{target}: no such file")
    elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
      broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(_ROOT)}")
  assert not broken, f"{page.relative_to(_ROOT)}: " + "; ".join(broken)


def test_anchors_follow_github():
  page = _ROOT / "README.md"
  assert "which-method-when" in _anchors(page)
  assert "day-one-recommend-for-a-catalogue-with-no-interactions" in _anchors(page)
