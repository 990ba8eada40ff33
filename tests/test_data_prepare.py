"""Processed cache, load_domains, domain_table, config errors, and leave-one-out on a tiny domain."""

import numpy as np
import pytest

from recg_jax.config import default
from recg_jax.data import prepare
from recg_jax.data import types
from recg_jax.data.errors import DataError

ITEMS = (
    "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tdescription:token_seq\n"
    "a\tAxe\tAcme\t\t\nb\tBolt\t\t\t\nc\tClamp\t\t\t\nd\tDrill\t\t\t\ne\t\t\t\t\n"
)
INTERS = (
    "user_id:token\titem_id:token\ttimestamp:float\n"
    "u2\tb\t1\nu1\ta\t1\nu1\tb\t2\nu2\tc\t2\nu1\tc\t3\nu1\td\t4\nu2\ta\t3\nu2\te\t4\n"
)


def write_domain(root, name, inter=INTERS, item=ITEMS):
  folder = root / name
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{name}.inter").write_text(inter)
  (folder / f"{name}.item").write_text(item)
  return folder


def tiny_config(root, source="D", targets=()):
  config = default.get_config()
  config.data.root = str(root)
  config.data.source, config.data.targets = source, targets
  config.data.min_user_interactions = 1
  config.data.min_item_interactions = 1
  return config


@pytest.fixture
def tiny(tmp_path):
  write_domain(tmp_path / "data", "D")
  return tiny_config(tmp_path / "data"), tmp_path / "work"


def test_tiny_domain_and_leave_one_out_golden(tiny):
  config, workdir = tiny
  d = prepare.load_domains(config, workdir, log=lambda _: None)["D"]
  # Item e has no text and is dropped; items are numbered in .item order: a=1, b=2, c=3, d=4.
  assert d.item_tokens.tolist() == ["[PAD]", "a", "b", "c", "d"]
  assert d.user_tokens.tolist() == ["u2", "u1"]
  np.testing.assert_array_equal(d.offsets, [0, 3, 7])
  np.testing.assert_array_equal(d.items, [2, 3, 1, 1, 2, 3, 4])
  assert d.items.dtype == np.int32 and d.offsets.dtype == np.int64

  valid = types.leave_one_out(d, "valid", max_len=3)
  np.testing.assert_array_equal(valid.targets_U, [3, 3])
  np.testing.assert_array_equal(valid.inputs_UxL, [[0, 0, 2], [0, 1, 2]])
  test = types.leave_one_out(d, "test", max_len=3)
  np.testing.assert_array_equal(test.targets_U, [1, 4])
  np.testing.assert_array_equal(test.inputs_UxL, [[0, 2, 3], [1, 2, 3]])
  np.testing.assert_array_equal(types.leave_one_out(d, "test", max_len=2).inputs_UxL, [[2, 3], [2, 3]])
  assert [h.tolist() for h in types.training_histories(d)] == [[2], [1, 2]]


def test_cache_reuse_and_rebuild(tiny, capsys):
  config, workdir = tiny
  first = prepare.load_domains(config, workdir)["D"]
  assert "D: built cache" in capsys.readouterr().out
  again = prepare.load_domains(config, workdir)["D"]
  assert "D: reused cache" in capsys.readouterr().out
  for field in ("item_tokens", "item_text", "user_tokens", "offsets", "items"):
    np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    assert getattr(again, field).dtype == getattr(first, field).dtype
  assert again.item_fields.keys() == first.item_fields.keys() and not again.synthetic
  folders = sorted(p.name for p in (workdir / "cache" / "data").iterdir())
  assert len(folders) == 1 and folders[0].startswith("D-")

  # A changed config field that matters rebuilds; one that does not (max_len) reuses.
  config.text.template = "paper"
  paper = prepare.load_domains(config, workdir)["D"]
  assert "D: built cache" in capsys.readouterr().out
  assert paper.item_text[1].startswith("Please summarize")
  config.text.template = "fields"
  config.data.max_len = 7
  prepare.load_domains(config, workdir)
  assert "D: reused cache" in capsys.readouterr().out

  # A changed input file rebuilds.
  with open(workdir.parent / "data" / "D" / "D.inter", "a") as f:
    f.write("u2\td\t9\n")
  changed = prepare.load_domains(config, workdir)["D"]
  assert "D: built cache" in capsys.readouterr().out
  np.testing.assert_array_equal(changed.history(0), [2, 3, 1, 4])

  # A damaged cache is rebuilt rather than trusted.
  for folder in (workdir / "cache" / "data").iterdir():
    (folder / "strings.json").write_text("{")
  prepare.load_domains(config, workdir)
  out = capsys.readouterr().out
  assert "unreadable cache" in out and "D: built cache" in out
  prepare.load_domains(config, workdir)
  assert "D: reused cache" in capsys.readouterr().out
  assert not [p for p in (workdir / "cache" / "data").iterdir() if p.name.startswith(".tmp")]


def test_load_domains_order_and_same_domain_twice(tmp_path):
  for name in ("S", "T1", "T2", "X"):
    write_domain(tmp_path / "data", name)
  config = tiny_config(tmp_path / "data", "T2", ("S", "X"))
  config.data.auxiliary = ("T1",)
  assert list(prepare.load_domains(config, tmp_path / "w", log=lambda _: None)) == ["T2", "S", "X", "T1"]
  config.data.targets = ("S", "T2")
  with pytest.raises(DataError, match="'T2' given twice") as info:
    prepare.load_domains(config, tmp_path / "w", log=lambda _: None)
  assert info.value.field == "data.targets"
  config.data.targets = ("S",)
  config.data.auxiliary = ("X", "S")
  with pytest.raises(DataError, match="'S' given twice") as info:
    prepare.load_domains(config, tmp_path / "w", log=lambda _: None)
  assert info.value.field == "data.auxiliary"


def test_domain_left_empty_by_filtering(tmp_path):
  write_domain(tmp_path / "data", "D")
  config = tiny_config(tmp_path / "data")
  config.data.min_item_interactions = 5  # no item of D has 5 interactions
  with pytest.raises(DataError, match="'D' is empty after filtering") as info:
    prepare.load_domains(config, tmp_path / "w", log=lambda _: None)
  assert "read 8 interactions" in str(info.value) and "1 items without text" in str(info.value)
  assert info.value.path.endswith("D.inter")
  # A header-only file is read as zero rows and reported the same way.
  write_domain(tmp_path / "data", "D", inter=INTERS.splitlines()[0] + "\n")
  config.data.min_item_interactions = 1
  with pytest.raises(DataError, match="read 0 interactions"):
    prepare.load_domains(config, tmp_path / "w", log=lambda _: None)
  cache = tmp_path / "w" / "cache" / "data"
  assert not cache.exists() or not any(cache.iterdir())


def test_missing_root_folder_and_unknown_format(tmp_path):
  config = tiny_config("")
  with pytest.raises(DataError, match="RECG_DATA_ROOT") as info:
    prepare.load_domains(config, tmp_path)
  assert info.value.field == "data.root"
  config = tiny_config(tmp_path / "nowhere")
  with pytest.raises(DataError, match="domain folder not found"):
    prepare.load_domains(config, tmp_path)
  config.data.format = "csv"
  with pytest.raises(DataError, match="unknown format"):
    prepare.load_domains(config, tmp_path)


def test_domain_table_golden(tiny):
  config, workdir = tiny
  domains = prepare.load_domains(config, workdir, log=lambda _: None)
  assert prepare.domain_table(domains) == (
      "| domain | users | items | interactions | mean history | title | brand | categories | description "
      "| synthetic |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n"
      "| D | 2 | 4 | 7 | 3.50 | 100.0% | 25.0% | 0.0% | 0.0% | no |"
  )
