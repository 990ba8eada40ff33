"""RecBole atomic reader: parsing, time order, field mapping, errors, and the real data's 5-core counts."""

import time

import numpy as np
import pytest

from recg_jax.config import default
from recg_jax.data import prepare
from recg_jax.data import recbole
from recg_jax.data.errors import DataError

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tdescription:token_seq\n"
ITEMS = ITEM_HEADER + 'a\tApple\tAcme\tFruit\t\nb\tBanana\t\t\t\nc\tCherry\t\t\t"red"\n'
INTERS = INTER_HEADER + "u1\tb\t20\nu2\ta\t1\nu1\ta\t5\nu2\tc\t1\nu1\tc\t20\nu2\tb\t0.5\n\n"


def write_domain(root, name, inter, item, mode="w"):
  folder = root / name
  folder.mkdir(parents=True, exist_ok=True)
  for ext, content in (("inter", inter), ("item", item)):
    if isinstance(content, bytes):
      (folder / f"{name}.{ext}").write_bytes(content)
    else:
      (folder / f"{name}.{ext}").write_text(content, encoding="utf-8")
  return folder


def small_config(root):
  config = default.get_config()
  config.data.root = str(root)
  config.data.min_user_interactions = 1
  config.data.min_item_interactions = 1
  return config


def test_reader_sorts_each_history_by_time_stably(tmp_path):
  write_domain(tmp_path, "D", INTERS, ITEMS)
  config = small_config(tmp_path)
  raw = recbole.read_recbole(tmp_path, "D", config.data)
  assert raw.user_tokens.tolist() == ["u1", "u2"]
  assert raw.item_tokens.tolist() == ["a", "b", "c"]
  assert raw.item_fields["description"].tolist() == ["", "", '"red"']  # no CSV quoting
  np.testing.assert_array_equal(raw.times, [20, 1, 5, 1, 20, 0.5])
  domain = prepare.build_domain(raw, config)
  assert domain.item_tokens.tolist() == ["[PAD]", "a", "b", "c"]
  assert domain.user_tokens.tolist() == ["u1", "u2"]
  np.testing.assert_array_equal(domain.offsets, [0, 3, 6])
  # u1: a@5, then b@20 and c@20 in file order (tie); u2: b@0.5, then a@1 and c@1 in file order.
  np.testing.assert_array_equal(domain.items, [1, 2, 3, 2, 1, 3])
  assert domain.item_fields["title"].tolist() == ["", "Apple", "Banana", "Cherry"]
  assert domain.item_text[1] == "title: Apple; brand: Acme; categories: Fruit"
  assert domain.item_text[3] == 'title: Cherry; description: "red"'
  assert not domain.synthetic


def test_field_names_come_from_config_and_extra_columns_are_kept(tmp_path):
  inter = "uid:token\tts:float\tiid:token\trating:float\nx\t3\tp\t5\nx\t1\tq\t4\nx\t2\tp\t1\n"
  item = "name:token_seq\tiid:token\tfeatures:token_seq\nPen\tp\tblue ink\nPad\tq\t\n"
  write_domain(tmp_path, "E", inter, item)
  config = small_config(tmp_path)
  config.data.user_field, config.data.item_field, config.data.time_field = "uid", "iid", "ts"
  config.data.text_fields = ("name",)
  domain = prepare.build_domain(recbole.read_recbole(tmp_path, "E", config.data), config)
  np.testing.assert_array_equal(domain.items, [2, 1, 1])  # q@1, p@2, p@3
  assert sorted(domain.item_fields) == ["features", "name"]
  assert domain.item_text.tolist() == ["", "name: Pen", "name: Pad"]


@pytest.mark.parametrize(
    "inter,item,file,line,field,reason",
    [
        # No typed header: the first line is data.
        ("u1\ta\t1\n", ITEMS, "D.inter", 1, "u1", "typed header"),
        (INTER_HEADER.replace("timestamp", "time"), ITEMS, "D.inter", 1, "timestamp", "missing column"),
        (INTERS, ITEM_HEADER.replace("\tbrand:token", ""), "D.item", 1, "brand", "missing column"),
        (INTER_HEADER + "u1\ta\t1\nu1\tb\t2\t7\n", ITEMS, "D.inter", 3, "timestamp", "found 4"),
        (INTER_HEADER + "u1\ta\t1\n\nu1\tb\n", ITEMS, "D.inter", 4, "timestamp", "found 2"),
        (INTER_HEADER + "u1\ta\t1\nu1\tb\tyesterday\n", ITEMS, "D.inter", 3, "timestamp", "'yesterday'"),
        (INTER_HEADER + "u1\ta\t1\n\nu1\tb\tnan\n", ITEMS, "D.inter", 4, "timestamp", "finite"),
        (INTER_HEADER + "u1\ta\t1\nu1\tzz\t2\n", ITEMS, "D.inter", 3, "item_id", "'zz' has no row"),
        (INTERS, ITEMS + "a\tApple again\t\t\t\n", "D.item", 5, "item_id", "appears twice"),
        (INTERS.encode(), ITEM_HEADER.encode() + b"a\tCaf\xe9\tAcme\t\t\n", "D.item", 2, "title", "UTF-8"),
        (INTERS, ITEM_HEADER + "a\tt\tb\tc\td\te\n", "D.item", 2, "description", "found 6"),
        (INTER_HEADER.replace("float", "number"), ITEMS, "D.inter", 1, "timestamp", "unknown column type"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, inter, item, file, line, field, reason):
  write_domain(tmp_path, "D", inter, item)
  with pytest.raises(DataError) as info:
    recbole.read_recbole(tmp_path, "D", small_config(tmp_path).data)
  error = info.value
  assert isinstance(error, ValueError)
  assert error.path.endswith(file) and error.line == line and error.field == field, str(error)
  assert reason in str(error)
  assert f"{file}, line {line}" in str(error) and repr(field) in str(error)


def test_missing_folder_and_file(tmp_path):
  config = small_config(tmp_path)
  with pytest.raises(DataError, match="domain folder not found") as info:
    recbole.read_recbole(tmp_path, "Nowhere", config.data)
  assert info.value.path.endswith("Nowhere")
  folder = write_domain(tmp_path, "D", INTERS, ITEMS)
  (folder / "D.item").unlink()
  with pytest.raises(DataError, match="file not found") as info:
    recbole.read_recbole(tmp_path, "D", config.data)
  assert info.value.path.endswith("D.item")


# --- The real data (README of the shared data): read once per session.

EXPECTED = {"Scientific": (8317, 4344, 58492), "Office": (4905, 2420, 53258), "Games": (50335, 16428, 437772)}


@pytest.fixture(scope="session")
def real_domains(data_root):
  config = default.get_config()
  config.data.root = str(data_root)
  start = time.perf_counter()
  raws = {name: recbole.read_recbole(data_root, name, config.data) for name in EXPECTED}
  domains = {name: prepare.build_domain(raw, config) for name, raw in raws.items()}
  return raws, domains, time.perf_counter() - start


def test_real_data_5core_counts(real_domains):
  raws, domains, seconds = real_domains
  for name, (users, items, interactions) in EXPECTED.items():
    d = domains[name]
    assert (d.num_users, d.num_items, d.num_interactions) == (users, items, interactions), name
    assert d.lengths.min() >= 5
    assert (np.bincount(d.items, minlength=d.num_items + 1)[1:] >= 5).all()
  # Scientific and Office are already 5-core; Games loses 388 sparse items and what cascades from them.
  assert raws["Scientific"].num_interactions == 58492
  assert raws["Games"].num_interactions == 440264 and len(raws["Games"].item_tokens) == 16859
  assert seconds < 30, seconds


def test_real_data_histories_follow_time_and_text_is_rendered(real_domains):
  raws, domains, _ = real_domains
  for name in ("Scientific", "Games"):
    raw, d = raws[name], domains[name]
    kept_items = set(d.item_tokens[1:])
    user_of = {tok: u for u, tok in enumerate(raw.user_tokens)}
    for u in range(0, d.num_users, max(1, d.num_users // 100)):
      rows = np.flatnonzero(raw.user_codes == user_of[d.user_tokens[u]])
      rows = rows[np.argsort(raw.times[rows], kind="stable")]
      expected = [raw.item_tokens[raw.item_codes[r]] for r in rows]
      expected = [tok for tok in expected if tok in kept_items]
      assert [d.item_tokens[i] for i in d.history(u)] == expected, (name, u)
  sci = domains["Scientific"]
  assert sci.item_text[0] == "" and sci.item_tokens[0] == "[PAD]"
  assert sci.item_text[1].startswith("title: SUPCO SPP6 Relay/Capacitor Hard Start Kit")
  assert "; brand: Sealed Unit Parts Co., Inc.; categories: Industrial & Scientific," in sci.item_text[1]
  assert not any("&amp;" in t for t in sci.item_text)
  assert all(t.startswith("title: ") and "; brand:" not in t for t in domains["Games"].item_text[1:])
