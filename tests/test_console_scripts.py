"""Every console script that `pip install .` puts on the path explains itself: `--help` prints the command
module's description and the command's own flags, as `python -m recg_jax.<command> --help` does."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import tomllib

# Installs the package and starts every command: the slow tier.
pytestmark = pytest.mark.slow

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SCRIPTS = tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# Flags each command must list under --help (its own and the shared ones it reads).
_FLAGS = {
    "recg-jax": ("--config", "--workdir", "--distributed", "--verbose"),
    "recg-jax-experiments": ("--config", "--workdir", "--aggregate_only", "--plots"),
    "recg-jax-baselines": ("--config", "--workdir", "--aggregate_only"),
    "recg-jax-recommend": ("--workdir", "--config", "--catalogue", "--histories", "--out", "--method"),
    "recg-jax-tune": ("--config", "--workdir"),
}


@pytest.fixture(scope="module")
def helps(tmp_path_factory):
  """{script: (exit status, stdout, stderr)} of `<script> --help`, each console script as pip installs it:
  the package (without dependencies, which this environment has) in a folder of its own, the scripts in
  its bin/. The commands run side by side (each spends seconds importing jax)."""
  target = tmp_path_factory.mktemp("site")
  proc = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
      + [str(target), str(_ROOT)],
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  env = {**os.environ, "PYTHONPATH": str(target)}
  running = {
      script: subprocess.Popen(
          [str(target / "bin" / script), "--help"],
          cwd=tmp_path_factory.mktemp("elsewhere"),
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for script in _SCRIPTS
  }
  outputs = {script: p.communicate(timeout=300) for script, p in running.items()}
  return {script: (running[script].returncode, *outputs[script]) for script in running}


def test_every_script_has_its_expected_flags():
  assert set(_FLAGS) == set(_SCRIPTS)


@pytest.mark.parametrize("script", sorted(_SCRIPTS))
def test_help_describes_the_command_and_lists_its_flags(script, helps):
  status, out, err = helps[script]
  module = _SCRIPTS[script].partition(":")[0]
  doc = ast.get_docstring(ast.parse((_ROOT / (module.replace(".", "/") + ".py")).read_text()))
  # absl ends --help with exit status 1, as it does under `python -m`; anything else is a crash.
  assert status == 1 and "Traceback" not in err, err
  assert out.startswith(doc.splitlines()[0]), out[:300]
  listed = {line.split(":")[0].strip().replace("--[no]", "--") for line in out.splitlines()}
  missing = [f for f in _FLAGS[script] if f not in listed]
  assert not missing, f"{script} --help does not list {missing}:\n{out}"
