"""A failed download removes the folders and the empty part file it created, and nothing else; a part file
that holds bytes stays for the next call to resume from. No network: file:// URLs and a stream that fails."""

import io

import ml_collections
import pytest

from recg_jax.data import amazon2023
from recg_jax.data import download
from recg_jax.data.errors import DataError


def _missing_url(tmp_path):
  return (tmp_path / "nowhere" / "blob.bin").as_uri()


class _FailingStream(io.BytesIO):
  """Gives `good` bytes, then fails as a dropped connection does."""

  def __init__(self, good: bytes):
    super().__init__(good)

  def read(self, size=-1):
    chunk = super().read(size)
    if chunk:
      return chunk
    raise ConnectionResetError("connection reset by peer")


def _failing_open(good: bytes, total: int):
  def fake_open(url, offset, timeout):
    del url, offset, timeout
    return _FailingStream(good), total, True

  return fake_open


def test_failed_download_removes_the_folders_it_created(tmp_path):
  dest = tmp_path / "work" / "raw" / "amazon2023" / "blob.bin"
  with pytest.raises(DataError, match="not found"):
    download.download_file(_missing_url(tmp_path), dest, progress=False)
  assert list(tmp_path.iterdir()) == []


def test_failed_download_keeps_folders_and_files_that_were_there(tmp_path):
  kept = tmp_path / "raw"
  kept.mkdir()
  (kept / "other.jsonl.gz").write_bytes(b"x")
  with pytest.raises(DataError):
    download.download_file(_missing_url(tmp_path), kept / "new" / "blob.bin", progress=False)
  assert sorted(p.name for p in kept.iterdir()) == ["other.jsonl.gz"]


def test_failure_before_the_first_byte_removes_the_empty_part_file(tmp_path, monkeypatch):
  monkeypatch.setattr(download, "_open", _failing_open(b"", 100))
  dest = tmp_path / "out" / "blob.bin"
  with pytest.raises(ConnectionResetError):
    download.download_file("https://example.invalid/blob.bin", dest, progress=False)
  assert not (tmp_path / "out").exists()


def test_failure_mid_transfer_keeps_the_part_file_to_resume_from(tmp_path, monkeypatch):
  payload = bytes(range(256)) * 8
  monkeypatch.setattr(download, "_open", _failing_open(payload[:1000], len(payload)))
  dest = tmp_path / "out" / "blob.bin"
  with pytest.raises(ConnectionResetError):
    download.download_file("https://example.invalid/blob.bin", dest, progress=False, chunk_size=100)
  part = tmp_path / "out" / "blob.bin.part"
  assert part.read_bytes() == payload[:1000] and not dest.exists()
  monkeypatch.undo()
  source = tmp_path / "source.bin"
  source.write_bytes(payload)
  download.download_file(source.as_uri(), dest, progress=False)
  assert dest.read_bytes() == payload and not part.exists()


def test_failed_download_never_removes_an_earlier_part_file(tmp_path):
  source = tmp_path / "source.bin"
  source.write_bytes(b"short")
  out = tmp_path / "out"
  out.mkdir()
  (out / "blob.bin.part").write_bytes(b"longer than the source")
  with pytest.raises(DataError, match="larger"):
    download.download_file(source.as_uri(), out / "blob.bin", progress=False)
  assert (out / "blob.bin.part").read_bytes() == b"longer than the source"


def test_failed_amazon2023_download_leaves_no_raw_folder(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  amazon = ml_collections.ConfigDict(
      {"download": True, "url_template": (tmp_path / "nowhere").as_uri() + "/{kind}/{file}"}
  )
  with pytest.raises(DataError, match="download"):
    amazon2023.find_files(workdir / "raw" / "amazon2023", "Books", amazon)
  assert list(workdir.iterdir()) == []
