"""Amazon Reviews 2023 raw reader (jsonl and jsonl.gz) and the resumable downloader."""

import calendar
import gzip
import http.server
import json
import threading

import numpy as np
import pytest

from recg_jax.config import default
from recg_jax.data import amazon2023
from recg_jax.data import download
from recg_jax.data import prepare
from recg_jax.data.errors import DataError


def ms(year, day=1, hour=0):
  return calendar.timegm((year, 1, day, hour, 0, 0)) * 1000


META = [
    {
        "main_category": "Tools",
        "title": "Drill &amp; Bits",
        "average_rating": 4.5,
        "features": ["18V", "2 batteries"],
        "description": ["Cordless drill.", "Ships fast."],
        "price": None,
        "images": [],
        "store": "Acme",
        "categories": ["Tools", "Power Tools"],
        "details": {"Weight": "2 kg"},
        "parent_asin": "P1",
    },
    {"title": "Saw", "features": [], "description": [], "store": None, "categories": [], "parent_asin": "P2"},
    {
        "title": "Hammer",
        "features": ["steel"],
        "description": [],
        "store": "Bolt",
        "categories": ["Tools"],
        "parent_asin": "P3",
    },
    {
        "title": "Level",
        "features": [],
        "description": ["Bubble level."],
        "store": "Acme",
        "categories": [],
        "parent_asin": "P4",
    },
    {"title": "", "features": [], "description": [], "store": "", "categories": [], "parent_asin": "P5"},
    {"title": "Never reviewed", "parent_asin": "P9"},
    # P6 has reviews but no metadata row.
]


def reviews():
  rows = []
  # Users A..D review P1..P4 over 2020; user E only twice. P5 (no text) and P6 (no meta) are reviewed too.
  for u, user in enumerate("ABCD"):
    for k, item in enumerate(["P3", "P1", "P4", "P2"] if u % 2 else ["P1", "P2", "P3", "P4"]):
      rows.append(
          {
              "rating": 5.0,
              "title": "ok",
              "text": "fine",
              "images": [],
              "asin": item + "x",
              "parent_asin": item,
              "user_id": user,
              "timestamp": ms(2020, 1 + k, u),
              "helpful_vote": 0,
              "verified_purchase": True,
          }
      )
    rows.append({"user_id": user, "parent_asin": "P5", "timestamp": ms(2020, 20), "rating": 1.0})
    rows.append({"user_id": user, "parent_asin": "P6", "timestamp": ms(2020, 21), "rating": 1.0})
  rows.append({"user_id": "E", "parent_asin": "P1", "timestamp": ms(2020, 2), "rating": 3.0})
  rows.append({"user_id": "E", "parent_asin": "P2", "timestamp": ms(2020, 3), "rating": 3.0})
  # Before min_year=2019: dropped while streaming.
  rows.append({"user_id": "A", "parent_asin": "P4", "timestamp": ms(2015), "rating": 2.0})
  # A repeat of (B, P1), later than the first: only the earliest is kept.
  rows.append({"user_id": "B", "parent_asin": "P1", "timestamp": ms(2021), "rating": 2.0})
  return rows


def write_category(folder, name, gz, review_rows=None, meta_rows=None):
  folder.mkdir(parents=True, exist_ok=True)
  for stem, rows in ((name, review_rows or reviews()), (f"meta_{name}", meta_rows or META)):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if gz:
      (folder / f"{stem}.jsonl.gz").write_bytes(gzip.compress(data))
    else:
      (folder / f"{stem}.jsonl").write_bytes(data)


def config_for(folder):
  config = default.get_config()
  config.data.format = "amazon2023"
  config.data.amazon2023.raw_dir = str(folder)
  config.data.amazon2023.min_year = 2019
  config.data.min_user_interactions = 3
  config.data.min_item_interactions = 3
  return config


@pytest.mark.parametrize("gz", [False, True])
def test_reader_filters_and_fields(tmp_path, gz):
  write_category(tmp_path, "Tools", gz)
  config = config_for(tmp_path)
  raw = amazon2023.read_amazon2023(tmp_path, "Tools", config.data)
  # 2015 review dropped; the repeated (B, P1) dropped; everything else kept.
  assert raw.num_interactions == 4 * 6 + 2
  assert raw.user_tokens.tolist() == ["A", "B", "C", "D", "E"]
  assert raw.item_tokens.tolist() == ["P1", "P2", "P3", "P4", "P5", "P6"]
  p1 = {n: v[0] for n, v in raw.item_fields.items()}
  assert p1 == {
      "title": "Drill &amp; Bits",
      "brand": "Acme",
      "categories": "Tools, Power Tools",
      "description": "Cordless drill. Ships fast.",
      "features": "18V 2 batteries",
  }
  assert raw.item_fields["title"][5] == ""  # P6: no metadata row

  domain = prepare.build_domain(raw, config)
  # P5 (no text) and P6 (no meta) are dropped; E has 2 < 3 interactions; then all of A..D stay.
  assert domain.item_tokens.tolist() == ["[PAD]", "P1", "P2", "P3", "P4"]
  assert domain.user_tokens.tolist() == ["A", "B", "C", "D"]
  np.testing.assert_array_equal(domain.offsets, [0, 4, 8, 12, 16])
  np.testing.assert_array_equal(domain.history(0), [1, 2, 3, 4])
  np.testing.assert_array_equal(domain.history(1), [3, 1, 4, 2])
  assert domain.item_text[1] == (
      "title: Drill & Bits; brand: Acme; categories: Tools, Power Tools; "
      "description: Cordless drill. Ships fast."
  )
  assert domain.item_text[2] == "title: Saw"
  config.text.template = "paper"
  paper = prepare.build_domain(raw, config)
  assert paper.item_text[3].endswith("title: Hammer.\n Feature: steel.\n Description: ")


def test_gz_and_plain_agree_and_store_can_be_a_text_field(tmp_path):
  write_category(tmp_path / "a", "Tools", gz=False)
  write_category(tmp_path / "b", "Tools", gz=True)
  config = config_for(tmp_path / "a")
  config.data.text_fields = ("title", "store", "features")
  a = amazon2023.read_amazon2023(tmp_path / "a", "Tools", config.data)
  b = amazon2023.read_amazon2023(tmp_path / "b", "Tools", config.data)
  for x, y in ((a.user_codes, b.user_codes), (a.item_codes, b.item_codes), (a.times, b.times)):
    np.testing.assert_array_equal(x, y)
  assert a.item_fields["store"][0] == "Acme" == a.item_fields["brand"][0]
  d = prepare.build_domain(a, config)
  assert d.item_text[1] == "title: Drill & Bits; store: Acme; features: 18V 2 batteries"


@pytest.mark.parametrize("text_fields", [("title", "brand"), ("title", "details")])
def test_arrow_fast_path_matches_line_reader(tmp_path, text_fields):
  write_category(tmp_path, "Tools", gz=True)
  config = config_for(tmp_path)
  config.data.text_fields = text_fields  # `details` is free-form: its metadata goes the line-reader way
  fast = amazon2023.read_amazon2023(tmp_path, "Tools", config.data, fast=True)
  exact = amazon2023.read_amazon2023(tmp_path, "Tools", config.data, fast=False)
  for name in ("user_tokens", "item_tokens", "user_codes", "item_codes", "times"):
    np.testing.assert_array_equal(getattr(fast, name), getattr(exact, name))
  assert fast.item_fields.keys() == exact.item_fields.keys()
  for name in fast.item_fields:
    assert fast.item_fields[name].tolist() == exact.item_fields[name].tolist()
  if "details" in text_fields:
    assert fast.item_fields["details"][0] == "Weight: 2 kg"


def test_user_cap_is_seeded(tmp_path):
  rows = [
      {"user_id": f"U{u}", "parent_asin": f"P{(u + k) % 4 + 1}", "timestamp": ms(2020, 1 + k)}
      for u in range(30)
      for k in range(4)
  ]
  write_category(tmp_path, "Tools", gz=False, review_rows=rows)
  config = config_for(tmp_path)
  config.data.amazon2023.max_users = 10
  raw = amazon2023.read_amazon2023(tmp_path, "Tools", config.data)
  a = prepare.build_domain(raw, config)
  b = prepare.build_domain(raw, config)
  config.data.amazon2023.subsample_seed = 1
  c = prepare.build_domain(raw, config)
  assert a.num_users == 10 and a.user_tokens.tolist() == b.user_tokens.tolist()
  assert c.num_users == 10 and a.user_tokens.tolist() != c.user_tokens.tolist()


@pytest.mark.parametrize(
    "line,field,reason",
    [
        ('{"user_id": "A", "parent_asin": "P1", "timestamp": 1', None, "invalid JSON"),
        ('{"parent_asin": "P1", "timestamp": 1}', "user_id", "non-empty string"),
        ('{"user_id": "A", "parent_asin": "P1", "timestamp": "soon"}', "timestamp", "'soon'"),
        ("[1, 2]", None, "JSON object"),
    ],
)
def test_bad_review_line(tmp_path, line, field, reason):
  good = json.dumps({"user_id": "A", "parent_asin": "P1", "timestamp": 1}) + "\n"
  (tmp_path / "Tools.jsonl").write_text(good + "\n" + line + "\n")
  (tmp_path / "meta_Tools.jsonl").write_text(json.dumps(META[0]) + "\n")
  with pytest.raises(DataError) as info:
    amazon2023.read_amazon2023(tmp_path, "Tools", config_for(tmp_path).data)
  assert info.value.path.endswith("Tools.jsonl") and info.value.line == 3 and info.value.field == field
  assert reason in str(info.value) and "Tools.jsonl, line 3" in str(info.value)


def test_invalid_utf8_and_missing_files(tmp_path):
  (tmp_path / "Tools.jsonl").write_bytes(b'{"user_id": "Caf\xe9", "parent_asin": "P1", "timestamp": 1}\n')
  (tmp_path / "meta_Tools.jsonl").write_text("")
  with pytest.raises(DataError, match="UTF-8") as info:
    amazon2023.read_amazon2023(tmp_path, "Tools", config_for(tmp_path).data)
  assert info.value.line == 1
  with pytest.raises(DataError, match="file not found") as info:
    amazon2023.find_files(tmp_path, "Books", config_for(tmp_path).data.amazon2023)
  assert info.value.path.endswith("Books.jsonl.gz")


# --- Downloader.


def test_download_file_url_and_resume(tmp_path):
  payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
  source = tmp_path / "src" / "blob.bin"
  source.parent.mkdir()
  source.write_bytes(payload)
  url = source.as_uri()

  dest = tmp_path / "out" / "blob.bin"
  assert download.download_file(url, dest, progress=False, chunk_size=4096) == dest
  assert dest.read_bytes() == payload and not (tmp_path / "out" / "blob.bin.part").exists()

  # A partial file is continued, not restarted: its (deliberately wrong) bytes stay in front.
  dest2 = tmp_path / "out" / "blob2.bin"
  (tmp_path / "out" / "blob2.bin.part").write_bytes(b"\0" * 1000)
  download.download_file(url, dest2, progress=False)
  assert dest2.read_bytes() == b"\0" * 1000 + payload[1000:]

  # An existing destination is not downloaded again.
  source.write_bytes(b"changed")
  download.download_file(url, dest, progress=False)
  assert dest.read_bytes() == payload
  with pytest.raises(DataError, match="not found"):
    download.download_file((tmp_path / "missing").as_uri(), tmp_path / "x", progress=False)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
  payload = b""

  def do_GET(self):  # noqa: N802 (http.server API)
    start = 0
    if rng := self.headers.get("Range"):
      start = int(rng.split("=")[1].split("-")[0])
    body = self.payload[start:]
    self.send_response(206 if start else 200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


def test_download_http_range_resume(tmp_path):
  _RangeHandler.payload = bytes(range(256)) * 400
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    url = f"http://127.0.0.1:{server.server_port}/f.bin"
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"\xff" * 10)
    download.download_file(url, tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == b"\xff" * 10 + _RangeHandler.payload[10:]
  finally:
    server.shutdown()
    server.server_close()


def test_find_files_downloads_from_url_template(tmp_path):
  remote = tmp_path / "remote"
  write_category(remote / "tmp", "Tools", gz=True)
  (remote / "review").mkdir()
  (remote / "meta").mkdir()
  (remote / "tmp" / "Tools.jsonl.gz").rename(remote / "review" / "Tools.jsonl.gz")
  (remote / "tmp" / "meta_Tools.jsonl.gz").rename(remote / "meta" / "meta_Tools.jsonl.gz")
  config = config_for(tmp_path / "raw")
  config.data.amazon2023.download = True
  config.data.amazon2023.url_template = remote.as_uri() + "/{kind}/{file}"
  reviews_path, meta_path = amazon2023.find_files(tmp_path / "raw", "Tools", config.data.amazon2023)
  assert reviews_path == tmp_path / "raw" / "Tools.jsonl.gz"
  assert meta_path.read_bytes() == (remote / "meta" / "meta_Tools.jsonl.gz").read_bytes()
  domain = prepare.build_domain(amazon2023.read_amazon2023(tmp_path / "raw", "Tools", config.data), config)
  assert domain.num_users == 4 and domain.num_items == 4


def test_load_domains_amazon2023_with_cache(tmp_path, capsys):
  write_category(tmp_path / "raw", "Tools", gz=True)
  config = config_for(tmp_path / "raw")
  config.data.source, config.data.targets = "Tools", ()
  first = prepare.load_domains(config, tmp_path / "work")["Tools"]
  second = prepare.load_domains(config, tmp_path / "work")["Tools"]
  out = capsys.readouterr().out
  assert "Tools: built cache" in out and "Tools: reused cache" in out
  np.testing.assert_array_equal(first.items, second.items)
  assert second.item_fields["features"].tolist() == first.item_fields["features"].tolist()
  config.data.amazon2023.min_year = 2021  # only B's late repeat is left: nothing survives the k-core
  with pytest.raises(DataError, match="empty after filtering"):
    prepare.load_domains(config, tmp_path / "work")
