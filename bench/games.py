"""Games for the benchmarks: the real 5-core domain through recg_jax.data, or a generated one of its sizes."""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from recg_jax.config import default  # pylint: disable=wrong-import-position
from recg_jax.data import types  # pylint: disable=wrong-import-position

GAMES_USERS, GAMES_ITEMS, GAMES_INTERACTIONS = 50_335, 16_428, 437_772
AUX_ITEMS = {"Scientific": 4_344, "Office": 2_420}
TABLE_DIM = 384


def synthetic_games(seed: int = 0) -> types.DomainData:
  """Games' sizes: lengths 5..50 (mean ~8.7), popularity-skewed items."""
  rng = np.random.default_rng(seed)
  extra = rng.geometric(1.0 / (GAMES_INTERACTIONS / GAMES_USERS - 4.0), GAMES_USERS) - 1
  lengths = np.clip(5 + extra, 5, 50)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  popularity = 1.0 / np.arange(1, GAMES_ITEMS + 1) ** 0.8
  items = rng.choice(
      np.arange(1, GAMES_ITEMS + 1), size=int(offsets[-1]), p=popularity / popularity.sum()
  ).astype(np.int32)
  empty = np.array([""] * (GAMES_ITEMS + 1), dtype=object)
  return types.DomainData(
      name="Games",
      item_tokens=np.arange(GAMES_ITEMS + 1).astype(str).astype(object),
      item_fields={},
      item_text=empty,
      user_tokens=np.arange(GAMES_USERS).astype(str).astype(object),
      offsets=offsets,
      items=items,
      synthetic=True,
  )


def load_games(workdir: str) -> types.DomainData | None:
  root = os.environ.get(default.DATA_ROOT_ENV, "")
  if not root:
    return None
  from recg_jax.data import prepare  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.data.root = root
  config.data.source, config.data.targets, config.data.auxiliary = "Games", (), ()
  return prepare.load_domains(config, pathlib.Path(workdir))["Games"]


def games_domain(synthetic: bool, workdir: str = "") -> tuple[types.DomainData, str]:
  """(domain, label): the real Games unless `synthetic` or the data is missing, then a generated one."""
  domain = None
  if not synthetic:
    with tempfile.TemporaryDirectory() as tmp:
      domain = load_games(workdir or tmp)
  if domain is None:
    return synthetic_games(), "synthetic, Games-sized"
  return domain, "real Games (recg_jax.data.prepare)"
