"""Seeded synthetic multi-domain data, written as RecBole atomic files (quickstart and tests).

Generative story, per domain:
- Latent topics are shared by every domain ("ocean", "castle", ...): each has a few core words.
- Each domain describes its items in its own vocabulary (product nouns, adjectives, category root,
  brand suffix and description sentences). The same topic therefore reads differently in every domain:
  the domain semantic bias that the generalization loss has to overcome.
- Each item has one topic; titles, brands, categories, descriptions and features mix the topic's core
  words with the domain's vocabulary. Some descriptions and brands are empty, as in real catalogues.
- Each user has a sparse Dirichlet preference over topics. Along the history the user stays on a
  current topic and, at every step with probability `drift`, switches to a topic drawn from the
  preference, so interest drifts and recent items predict the next one. Within a topic, items are
  drawn by a Zipf-like popularity, without repeating items the user already has.
- Timestamps increase along each history; rows are written in shuffled order (the reader sorts).
"""

from __future__ import annotations

import dataclasses
import os
import re

import ml_collections
import numpy as np

from recg_jax import paths
from recg_jax.data.errors import DataError

# Shared latent topics: name and core words. Every domain uses the same topics.
TOPICS = (
    ("ocean", ("ocean", "coral", "tide", "marine", "reef", "wave")),
    ("forest", ("forest", "pine", "moss", "oak", "fern", "timber")),
    ("desert", ("desert", "dune", "cactus", "sand", "canyon", "mirage")),
    ("space", ("space", "star", "orbit", "comet", "galaxy", "rocket")),
    ("winter", ("winter", "snow", "frost", "glacier", "ice", "polar")),
    ("music", ("music", "rhythm", "melody", "guitar", "drum", "chord")),
    ("city", ("city", "metro", "street", "neon", "urban", "skyline")),
    ("garden", ("garden", "flower", "rose", "bloom", "petal", "herb")),
    ("retro", ("retro", "vintage", "classic", "antique", "heritage", "vinyl")),
    ("sport", ("sport", "racing", "sprint", "goal", "arena", "champion")),
    ("wildlife", ("wolf", "fox", "eagle", "bear", "tiger", "owl")),
    ("fire", ("fire", "ember", "flame", "volcano", "lava", "blaze")),
    ("storm", ("sky", "cloud", "storm", "thunder", "rain", "breeze")),
    ("robot", ("robot", "circuit", "laser", "cyber", "pixel", "quantum")),
    ("castle", ("castle", "knight", "dragon", "kingdom", "crown", "sword")),
    ("island", ("island", "palm", "lagoon", "tropic", "shell", "harbor")),
)


_ARTICLE = re.compile(r"\b([Aa]) ([aeiouAEIOU])")


@dataclasses.dataclass(frozen=True)
class _Style:
  """A domain's own vocabulary."""

  root: str
  nouns: tuple[str, ...]
  adjectives: tuple[str, ...]
  brand_suffix: str
  sentences: tuple[str, ...]  # "{w}" = a topic word, "{a}" = a domain adjective, "{n}" = the noun
  features: tuple[str, ...]


_STYLES = (
    _Style(
        "Lab & Industrial",
        ("beaker set", "digital caliper", "multimeter", "test tube rack", "sensor kit", "safety goggles"),
        ("precision", "heavy-duty", "calibrated", "industrial", "corrosion-resistant"),
        "Scientific",
        (
            "Engineered for accurate measurement in {w} field research.",
            "A {a} {n} with a {w} themed housing &amp; a lifetime warranty.",
            "Trusted by labs and workshops that study the {w}.",
            "Meets ANSI standards; the {w} edition adds a {a} coating.",
        ),
        ("ANSI certified", "stainless steel", "lab grade", "includes carrying case"),
    ),
    _Style(
        "Office Supplies",
        ("notebook", "desk organizer", "stapler", "planner", "pen set", "binder"),
        ("ergonomic", "premium", "compact", "refillable", "recycled"),
        "Paperworks",
        (
            "Keeps your desk tidy with a {a} {w} design.",
            "A {n} for meetings, notes &amp; daily planning, printed with {w} art.",
            "Brighten the office with a calm {w} look.",
            "Made from {a} materials; the {w} cover resists stains.",
        ),
        ("acid-free paper", "100 sheets", "refill available", "fits A4 folders"),
    ),
    _Style(
        "Video Games",
        (
            "adventure game",
            "puzzle game",
            "strategy game",
            "racing game",
            "arcade collection",
            "controller skin",
        ),
        ("epic", "multiplayer", "open-world", "retro-style", "award-winning"),
        "Interactive",
        (
            "Explore a {a} {w} world across dozens of levels.",
            "Play solo or with friends online &amp; unlock the {w} campaign.",
            "A {n} where every {w} hides a secret boss.",
            "Rated T for Teen; features an original {w} soundtrack.",
        ),
        ("single player", "online co-op", "HD graphics", "downloadable content"),
    ),
    _Style(
        "Home & Kitchen",
        ("mug", "cutting board", "tea kettle", "apron", "serving bowl", "spice rack"),
        ("handmade", "dishwasher-safe", "rustic", "stoneware", "non-stick"),
        "Home",
        (
            "Bring a {w} mood to your kitchen with this {a} {n}.",
            "Dishwasher safe &amp; built for everyday {w} dinners.",
            "Glazed by hand with a {w} pattern.",
            "A {a} gift for anyone who loves the {w}.",
        ),
        ("dishwasher safe", "BPA free", "gift boxed", "microwave safe"),
    ),
    _Style(
        "Books",
        ("novel", "picture book", "field guide", "cookbook", "poetry collection", "graphic novel"),
        ("bestselling", "illustrated", "hardcover", "annotated", "first-edition"),
        "Press",
        (
            "A {a} story set among the {w}.",
            "Readers follow a young hero through the {w} &amp; beyond.",
            "An {n} that celebrates the {w} in vivid prose.",
            "Includes maps, notes and a foreword about the {w}.",
        ),
        ("320 pages", "hardcover", "illustrated edition", "large print"),
    ),
)


@dataclasses.dataclass(frozen=True)
class SyntheticDomain:
  """One generated domain. Item rows are 0-based here (the files carry their tokens)."""

  name: str
  item_tokens: list[str]
  item_topics: np.ndarray  # [I] int topic of each item
  fields: dict[str, list[str]]  # title, brand, categories, description, features -> [I]
  user_tokens: list[str]
  histories: list[np.ndarray]  # per user, item rows in time order
  times: list[np.ndarray]  # per user, increasing timestamps (seconds)


def _items(rng: np.random.Generator, style: _Style, num_items: int, num_topics: int):
  topics = rng.permutation(np.arange(num_items) % num_topics)
  fields = {n: [] for n in ("title", "brand", "categories", "description", "features")}
  for i, topic in enumerate(topics):
    name, words = TOPICS[topic]
    w1, w2 = rng.choice(words, size=2, replace=False)
    noun, adj = rng.choice(style.nouns), rng.choice(style.adjectives)
    # The brand usually follows the topic (a topical signal), sometimes another topic's (noise).
    brand_topic = topic if rng.random() < 0.8 else rng.integers(num_topics)
    brand = f"{TOPICS[brand_topic][1][0].capitalize()} {style.brand_suffix}"
    fields["title"].append(f"{w1.capitalize()} {adj} {noun} {'ABCDEFGH'[i % 8]}{100 + i}")
    fields["brand"].append("" if rng.random() < 0.05 else brand)
    fields["categories"].append(f"{style.root}, {name.capitalize()} Collection")
    sentences = rng.choice(len(style.sentences), size=2, replace=False)
    description = " ".join(style.sentences[s].format(w=w, a=adj, n=noun) for s, w in zip(sentences, (w1, w2)))
    description = _ARTICLE.sub(r"\1n \2", description)
    fields["description"].append("" if rng.random() < 0.2 else description)
    fields["features"].append(f"{w2} theme, {rng.choice(style.features)}")
  return topics, fields


def generate_domain(synthetic_config: ml_collections.ConfigDict, index: int, name: str) -> SyntheticDomain:
  """Generates domain number `index` of synthetic_config.domains; depends only on (seed, index)."""
  c = synthetic_config
  if not 1 <= c.num_topics <= len(TOPICS):
    raise DataError(f"must be in 1..{len(TOPICS)}, got {c.num_topics}", field="data.synthetic.num_topics")
  if not 1 <= c.min_history <= c.max_history:
    raise DataError(
        f"need 1 <= min_history <= max_history, got {c.min_history}, {c.max_history}",
        field="data.synthetic.min_history",
    )
  if c.num_items < c.num_topics or c.num_users < 1:
    raise DataError(
        f"need num_items >= num_topics and num_users >= 1, got {c.num_items} items, " f"{c.num_users} users",
        field="data.synthetic.num_items",
    )
  rng = np.random.default_rng([c.seed, index])
  style = _STYLES[index % len(_STYLES)]
  topics, fields = _items(rng, style, c.num_items, c.num_topics)
  members = [np.flatnonzero(topics == k) for k in range(c.num_topics)]
  # Zipf-like popularity within each topic (a random order decides who is popular).
  popularity = [1.0 / (1.0 + rng.permutation(len(m))) ** 0.7 for m in members]

  prefix = name[:1].upper() or "X"
  histories, times = [], []
  for _ in range(c.num_users):
    preference = rng.dirichlet(np.full(c.num_topics, 0.3))
    length = int(rng.integers(c.min_history, c.max_history + 1))
    topic = rng.choice(c.num_topics, p=preference)
    seen = np.zeros(c.num_items, bool)
    history = []
    for _ in range(length):
      if rng.random() < c.drift:
        topic = rng.choice(c.num_topics, p=preference)
      left = np.bincount(topics[~seen], minlength=c.num_topics)
      if not left[topic] and left.any():  # topic exhausted: move to a preferred topic with new items
        p = (preference + 1e-9) * (left > 0)
        topic = rng.choice(c.num_topics, p=p / p.sum())
      weights = popularity[topic] * (~seen[members[topic]] if left[topic] else 1.0)
      item = int(rng.choice(members[topic], p=weights / weights.sum()))
      seen[item] = True
      history.append(item)
    histories.append(np.array(history, np.int64))
    times.append(1.6e9 + rng.integers(0, 10**7) + np.cumsum(rng.integers(60, 86400 * 30, size=length)))
  return SyntheticDomain(
      name=name,
      item_tokens=[f"{prefix}I{i:05d}" for i in range(c.num_items)],
      item_topics=topics,
      fields=fields,
      user_tokens=[f"{prefix}U{u:05d}" for u in range(c.num_users)],
      histories=histories,
      times=[t.astype(np.float64) for t in times],
  )


def write_recbole(
    domain: SyntheticDomain,
    folder: str | os.PathLike[str],
    data_config: ml_collections.ConfigDict,
    seed: int = 0,
) -> None:
  """Writes `<folder>/<name>.inter` and `.item` in RecBole atomic format, rows in shuffled order."""
  folder = paths.as_path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  users = np.concatenate([np.full(len(h), u) for u, h in enumerate(domain.histories)])
  items = np.concatenate(domain.histories)
  times = np.concatenate(domain.times)
  order = np.random.default_rng(seed).permutation(len(users))
  with (folder / f"{domain.name}.inter").open("w", encoding="utf-8") as f:
    f.write(
        f"{data_config.user_field}:token\t{data_config.item_field}:token\t"
        f"{data_config.time_field}:float\n"
    )
    for t in order:
      f.write(f"{domain.user_tokens[users[t]]}\t{domain.item_tokens[items[t]]}\t{times[t]:.0f}\n")
  names = list(domain.fields)
  with (folder / f"{domain.name}.item").open("w", encoding="utf-8") as f:
    f.write("\t".join([f"{data_config.item_field}:token"] + [f"{n}:token_seq" for n in names]) + "\n")
    for i, token in enumerate(domain.item_tokens):
      f.write("\t".join([token] + [domain.fields[n][i] for n in names]) + "\n")


def write_all(data_config: ml_collections.ConfigDict, root: str | os.PathLike[str]) -> list[paths.Path]:
  """Generates every domain of data_config.synthetic.domains into `<root>/<Domain>/`."""
  folders = []
  for index, name in enumerate(data_config.synthetic.domains):
    folder = paths.as_path(root) / name
    write_recbole(
        generate_domain(data_config.synthetic, index, name),
        folder,
        data_config,
        seed=data_config.synthetic.seed + index,
    )
    folders.append(folder)
  return folders
