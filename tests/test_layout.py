"""The house rules of the package: libraries never import the configs/ folder, modules and functions stay
small, every declared config role names a real field, and `pip install .` gives a package that runs from
any folder."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import tomllib

from recg_jax import config as config_lib
from recg_jax.config import roles

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_MODULES = sorted((_ROOT / "recg_jax").rglob("*.py"))
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 80


def _imported_modules(tree: ast.AST) -> set[str]:
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module or "")
  return names


def test_no_library_module_imports_the_configs_folder():
  offenders = [
      str(p.relative_to(_ROOT))
      for p in _MODULES
      if any(
          m == "configs" or m.startswith("configs.")
          for m in _imported_modules(ast.parse(p.read_text(encoding="utf-8")))
      )
  ]
  assert offenders == []


def test_modules_and_functions_stay_small():
  too_long = []
  for path in _MODULES:
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(_ROOT)
    if text.count("\n") > MAX_MODULE_LINES:
      too_long.append(f"{rel}: {text.count(chr(10))} lines")
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
          too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
  assert too_long == []


def test_every_declared_role_names_a_field():
  config = config_lib.get_config()
  for name in roles.ROLES:
    section, _, field = name.partition(".")
    assert section in config and (not field or field in config[section]), name
  assert ("train", "seed") in roles.TRACED_FIELDS and ("experiment", "mode") not in roles.TRACED_FIELDS


def test_console_scripts_name_command_entry_points():
  scripts = tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
  assert set(scripts) == {
      "recg-jax",
      "recg-jax-experiments",
      "recg-jax-baselines",
      "recg-jax-recommend",
      "recg-jax-tune",
  }
  for target in scripts.values():
    module, _, function = target.partition(":")
    assert (_ROOT / (module.replace(".", "/") + ".py")).is_file(), target
    assert f"def {function}()" in (_ROOT / (module.replace(".", "/") + ".py")).read_text(), target


@pytest.mark.slow
def test_installed_package_runs_from_another_folder(tmp_path):
  """`pip install .` (here into a target folder, without dependencies, which this environment has) gives
  an importable recg_jax, configs and all, that needs neither the repository root nor its configs/."""
  target = tmp_path / "site"
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "pip",
          "install",
          "--quiet",
          "--no-deps",
          "--no-build-isolation",
          "--target",
          str(target),
          str(_ROOT),
      ],
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  code = (
      "import recg_jax, recg_jax.config, recg_jax.pipeline, recg_jax.main, recg_jax.serving; "
      "print(recg_jax.__file__); print(recg_jax.config.get_config().model.variant)"
  )
  env = {**os.environ, "PYTHONPATH": str(target)}
  proc = subprocess.run(
      [sys.executable, "-c", code],
      cwd=elsewhere,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr
  where, variant = proc.stdout.split()
  assert pathlib.Path(where).is_relative_to(target) and variant == "recg"
  assert not (target / "configs").exists() and not (target / "tests").exists()
