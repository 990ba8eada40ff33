"""The unfiltered interactions and item table of one domain, as every reader returns them."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RawDomain:
  """One domain as read from disk, before text filtering, k-core and re-indexing.

  Interactions are in file order. Codes index the token tables: interaction t is user
  `user_tokens[user_codes[t]]` with item `item_tokens[item_codes[t]]` at time `times[t]`.

  name: domain name.
  user_tokens: [U0] object array of original user ids, in order of first appearance.
  item_tokens: [I0] object array of original item ids, in item-file order.
  item_fields: field name -> [I0] object array of raw strings ("" when empty).
  user_codes: [T] int64 in 0..U0-1.
  item_codes: [T] int64 in 0..I0-1.
  times: [T] float64.
  synthetic: whether the data came from the synthetic generator.
  """

  name: str
  user_tokens: np.ndarray
  item_tokens: np.ndarray
  item_fields: dict[str, np.ndarray]
  user_codes: np.ndarray
  item_codes: np.ndarray
  times: np.ndarray
  synthetic: bool = False

  @property
  def num_interactions(self) -> int:
    return int(self.user_codes.shape[0])
