"""Every command fails like a tool: an error the project raises on purpose (bad input, a bad config, a
missing run) ends it with one line on stderr, `<command>: error: <what failed and what to do>`, and exit
status 1, every time (no abort on the way out), with no traceback unless --verbose or RECG_VERBOSE asks
for one; a programming error keeps its traceback."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

from recg_jax import pipeline

_ROOT = pathlib.Path(__file__).resolve().parents[1]
REPEATS = 20  # the abort this guards against showed in about 1 run of 8 (6 to 15 here)


def _command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, *args],
      cwd=_ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )


def _repeated(*args: str) -> list[subprocess.CompletedProcess]:
  """The command REPEATS times, three at a time (each is mostly Python and JAX starting up)."""
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    return list(pool.map(lambda _: _command(*args), range(REPEATS)))


def _assert_one_line_every_time(runs, expected: str) -> None:
  outcomes = {(r.returncode, r.stderr) for r in runs}
  assert outcomes == {(1, expected + "\n")}, sorted(outcomes)[:3]


@pytest.fixture(scope="module")
def text_knn_run(tmp_path_factory, tiny_config, tiny_problem):
  """A finished run that needs no checkpoint (text_knn), a RecBole catalogue of Beta's items, and a
  history file that is not UTF-8 on its second line."""
  root = tmp_path_factory.mktemp("cli_errors")
  domains, tables = tiny_problem
  pipeline.evaluate_untrained(tiny_config(**{"model.variant": "text_knn"}), root / "run", domains, tables)
  beta = domains["Beta"]
  catalogue = root / "Beta.item"
  catalogue.write_text(
      "item_id:token\ttitle:token_seq\n"
      + "".join(f"{token}\t{text}\n" for token, text in zip(beta.item_tokens[1:], beta.item_text[1:])),
      encoding="utf-8",
  )
  histories = root / "histories.jsonl"
  histories.write_bytes(b'{"user_id": "u1", "items": ["B1"]}\n{"user_id": "u\xff\xfe2", "items": ["B2"]}\n')
  return root / "run", catalogue, histories


def _recommend_args(run, catalogue, histories, out):
  return [
      "-m",
      "recg_jax.recommend",
      f"--workdir={run}",
      f"--catalogue={catalogue}",
      f"--histories={histories}",
      f"--out={out}",
  ]


@pytest.mark.slow
def test_recommend_with_a_history_file_that_is_not_utf8(text_knn_run, tmp_path):
  run, catalogue, histories = text_knn_run
  runs = _repeated(*_recommend_args(run, catalogue, histories, tmp_path / "recs.jsonl"))
  _assert_one_line_every_time(
      runs,
      f"recommend: error: {histories}, line 2: invalid UTF-8 (byte 0xff at column 15); save the file as "
      "UTF-8",
  )
  assert not (tmp_path / "recs.jsonl").exists()


@pytest.mark.slow
def test_main_with_a_data_folder_that_is_not_there(tmp_path):
  runs = _repeated(
      "-m",
      "recg_jax.main",
      "--config=configs/amazon_shared.py",
      f"--workdir={tmp_path / 'wd'}",
      f"--config.data.root={tmp_path / 'nowhere'}",
  )
  _assert_one_line_every_time(
      runs,
      f"main: error: {tmp_path / 'nowhere' / 'Scientific'}: domain folder not found (expected "
      "Scientific/Scientific.inter and Scientific/Scientific.item under data root "
      f"'{tmp_path / 'nowhere'}'); point --config.data.root (or RECG_DATA_ROOT) at the folder that holds "
      "one folder per domain",
  )


@pytest.mark.slow
def test_verbose_and_the_environment_show_the_traceback(text_knn_run, tmp_path):
  run, catalogue, histories = text_knn_run
  args = _recommend_args(tmp_path / "not_a_run", catalogue, histories, tmp_path / "recs.jsonl")
  quiet = _command(*args)
  assert quiet.returncode == 1 and quiet.stderr.splitlines() == [
      f"recommend: error: {tmp_path / 'not_a_run'} is not a finished run: no such folder"
  ]
  for loud in (_command(*args, "--verbose"), _command(*args, env={"RECG_VERBOSE": "1"})):
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
    assert "NotAFinishedRunError: " in loud.stderr


def test_a_programming_error_keeps_its_traceback():
  proc = _command("-c", "from recg_jax import cli; cli.run(lambda argv: 1 / 0, 'broken')")
  assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
  assert "ZeroDivisionError" in proc.stderr and "broken: error" not in proc.stderr
