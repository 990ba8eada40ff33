"""Synthetic multi-domain generator: seeded, shared topics, domain vocabulary, drifting users."""

import numpy as np
import pytest

from recg_jax.config import default
from recg_jax.data import prepare
from recg_jax.data import synthetic
from recg_jax.data.errors import DataError


def small_config(seed=0, drift=0.15):
  config = default.get_config()
  config.data.format = "synthetic"
  config.data.source = "Alpha"
  config.data.targets = ("Beta", "Gamma")
  s = config.data.synthetic
  s.num_users, s.num_items, s.num_topics, s.seed, s.drift = 60, 40, 4, seed, drift
  return config


def test_seeded_and_written_files_are_reproducible(tmp_path):
  config = small_config()
  a = synthetic.write_all(config.data, tmp_path / "a")
  b = synthetic.write_all(config.data, tmp_path / "b")
  c = synthetic.write_all(small_config(seed=1).data, tmp_path / "c")
  for fa, fb, fc in zip(a, b, c):
    for ext in ("inter", "item"):
      name = f"{fa.name}.{ext}"
      assert (fa / name).read_bytes() == (fb / name).read_bytes()
      assert (fa / name).read_bytes() != (fc / name).read_bytes()


def test_domains_share_topics_but_not_vocabulary():
  config = small_config()
  domains = [
      synthetic.generate_domain(config.data.synthetic, i, n)
      for i, n in enumerate(config.data.synthetic.domains)
  ]
  words = []
  for d in domains:
    assert len(d.item_tokens) == 40 and len(d.user_tokens) == 60
    np.testing.assert_array_equal(np.bincount(d.item_topics), [10, 10, 10, 10])
    # Every topic's category names the shared topic; the root names the domain.
    for i, topic in enumerate(d.item_topics):
      assert d.fields["categories"][i].endswith(f"{synthetic.TOPICS[topic][0].capitalize()} Collection")
      assert d.fields["title"][i].split()[0].lower() in synthetic.TOPICS[topic][1]
    words.append(
        {
            w.lower().strip(".,;")
            for t in d.fields["description"] + d.fields["title"]
            for w in t.split()
            if not any(ch.isdigit() for ch in w)
        }
    )  # model numbers aside
  topic_words = {w for _, ws in synthetic.TOPICS for w in ws}
  for i in range(3):
    for j in range(i + 1, 3):
      shared = (words[i] & words[j]) - topic_words
      # Beyond topic words, domains share only function words: the semantic bias is real.
      assert len(shared) < 0.2 * min(len(words[i] - topic_words), len(words[j] - topic_words)), shared
  assert {d.fields["categories"][0].split(",")[0] for d in domains} == {
      "Lab & Industrial",
      "Office Supplies",
      "Video Games",
  }


def test_histories_follow_drifting_topics():
  def same_topic_rate(drift):
    s = small_config(drift=drift).data.synthetic
    d = synthetic.generate_domain(s, 0, "Alpha")
    lengths = [len(h) for h in d.histories]
    assert min(lengths) >= s.min_history and max(lengths) <= s.max_history
    assert all(len(set(h.tolist())) == len(h) for h in d.histories)  # no repeats
    assert all((np.diff(t) > 0).all() for t in d.times)
    return np.mean(np.concatenate([d.item_topics[h[1:]] == d.item_topics[h[:-1]] for h in d.histories]))

  sticky, drifting = same_topic_rate(0.15), same_topic_rate(1.0)
  assert sticky > 0.75 and drifting < sticky - 0.2, (sticky, drifting)


def test_load_domains_synthetic_is_labelled_and_reuses_files(tmp_path, capsys):
  config = small_config()
  domains = prepare.load_domains(config, tmp_path)
  assert list(domains) == ["Alpha", "Beta", "Gamma"]
  for d in domains.values():
    assert d.synthetic and d.num_users == 60 and d.num_items == 40
    assert d.lengths.min() >= 6
    assert all(t.startswith("title: ") and "categories: " in t for t in d.item_text[1:])
    assert not any("&amp;" in t for t in d.item_text)
  assert "generated 3 domains" in capsys.readouterr().out
  prepare.load_domains(config, tmp_path)
  out = capsys.readouterr().out
  assert "reused generated files" in out and out.count("reused cache") == 3
  assert "| Alpha | 60 | 40 |" in prepare.domain_table(domains)
  config.data.targets = ("Delta",)
  with pytest.raises(DataError, match="not one of data.synthetic.domains"):
    prepare.load_domains(config, tmp_path)
