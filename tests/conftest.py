"""Shared fixtures. The real data lives outside the project; tests find it through RECG_DATA_ROOT."""

import os
import pathlib

import pytest

_DEFAULT_SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon"


def shared_data_root() -> pathlib.Path | None:
  root = os.environ.get("RECG_DATA_ROOT") or str(_DEFAULT_SHARED)
  path = pathlib.Path(root)
  return path if (path / "Scientific" / "Scientific.inter").exists() else None


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  root = shared_data_root()
  if root is None:
    pytest.skip("real Amazon data not found: set RECG_DATA_ROOT")
  return root
