"""The sequential recommender: item inputs (heads.py) + one backbone (SASRec, BERT4Rec or GRU4Rec).

API (every method is pure; call it as `model.apply(variables, ..., method=...)`, and pass
`rngs={'dropout': key}` when `train=True`):

  model = Recommender.from_config(config.model, num_items, max_len)   # or Recommender(...) directly
  variables = model.init({'params': key}, seq_BxL, table_NxH)          # or init_variables(model, key, table)

  model.apply(v, seq_BxL, table_NxH, train)          -> user_BxD     output at position L-1
  model.apply(v, seq_BxL, table_NxH, train,
              method=Recommender.encode_positions)   -> hidden_BxLxD per-position outputs
  model.apply(v, table_NxH, method=Recommender.item_vectors) -> items_NxD   scoring vectors, row 0 = 0
                                                       (pass the whole table: its row 0 is zeroed)
  model.apply(v, ids_BxPxK, table_NxH,
              method=Recommender.candidate_vectors)  -> vecs_BxPxKxD  = item_vectors(table)[ids], cheap
  model.apply(v, rows_MxH, method=Recommender.align) -> z_MxD        W_a e + b_a (variant 'recg' only)
  model.is_causal                                      True for sasrec and gru4rec
  mask_token_id(num_items) = num_items + 1             the BERT4Rec Cloze mask token

  scores_BxN = user_BxD @ items_NxD.T

Conventions:
- seq_BxL: int32 item indices, right-aligned (left-padded with 0; the newest item at L-1; see
  data/types.right_aligned). L may be shorter than max_len: positions are counted from the right, so the
  same history gives the same user vector whatever L is. L > max_len is an error.
- table_NxH: the frozen LLM embedding table of the domain, N = num_items + 1, row 0 = padding. It is an
  argument, never a parameter, so it stays out of params and optimiser state and can be swapped for a
  target domain's table at zero-shot time. For variant 'id' it is ignored (pass None or a dummy
  [num_items + 1, 1] array).
- encode_positions: for causal backbones (sasrec, gru4rec) position t depends only on seq[:, :t+1], so
  all prefixes can be trained in one pass. For bert4rec (not causal) position t sees the whole sequence,
  including later items: next-item training over all prefixes from one encode_positions call would leak
  the targets; give each prefix its own row, use the last target only, or the Cloze objective.
- Cloze (`cloze=True`, bert4rec only): inputs equal to mask_token_id(num_items) are replaced by a learned
  vector in input space, and __call__ drops the oldest item, appends the mask token and reads the output
  there (BERT4Rec inference). encode_positions never shifts. Without cloze, the mask token is still
  understood by encode_positions (the learned vector exists for every bert4rec model).
- Padding positions produce zero inputs and zero outputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from recg_jax.models import bert4rec as bert4rec_lib
from recg_jax.models import gru4rec as gru4rec_lib
from recg_jax.models import heads
from recg_jax.models import sasrec as sasrec_lib

BACKBONES = ("sasrec", "bert4rec", "gru4rec")
VARIANTS = heads.VARIANTS
mask_token_id = bert4rec_lib.mask_token_id


class Recommender(nn.Module):
  """Item inputs + backbone. Fields mirror config.model (see from_config)."""

  backbone: str = "sasrec"  # sasrec | bert4rec | gru4rec
  variant: str = "recg"  # id | sem | recg
  num_items: int = 0  # real items 1..num_items; sizes the ID table (variant 'id') and the mask token
  hidden_dim: int = 256  # d_l
  num_layers: int = 2
  num_heads: int = 2  # transformers only
  dropout: float = 0.5  # inside the backbone (attention, residual, FFN, between GRU layers)
  emb_dropout: float = 0.5  # on item inputs (heads.ItemProjection)
  max_len: int = 50  # number of learned positions (transformers)
  pre_ln: bool = False  # transformers: pre-LN blocks + final LayerNorm, else post-LN (BERT-style)
  merge_init: str = "default"  # recg: initial merge kernel, 'default' or 'identity' (heads.ItemProjection)
  cloze: bool = False  # bert4rec: read the user vector at an appended mask token (Cloze-trained models)

  @classmethod
  def from_config(cls, model_config: Any, num_items: int, max_len: int, *,
                  cloze: bool = False) -> "Recommender":
    """Builds the model from config.model. `cloze` = (config.train.bert4rec_objective == 'cloze')."""
    return cls(backbone=str(model_config.backbone), variant=str(model_config.variant),
               num_items=int(num_items), hidden_dim=int(model_config.hidden_dim),
               num_layers=int(model_config.num_layers), num_heads=int(model_config.num_heads),
               dropout=float(model_config.dropout), emb_dropout=float(model_config.emb_dropout),
               max_len=int(max_len), pre_ln=bool(model_config.pre_ln),
               merge_init=str(model_config.get("merge_init", "default")),
               cloze=bool(cloze) and str(model_config.backbone) == "bert4rec")

  @property
  def is_causal(self) -> bool:
    return self.backbone in ("sasrec", "gru4rec")

  def setup(self):
    if self.backbone not in BACKBONES:
      raise ValueError(f"config.model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
    if self.variant not in VARIANTS:
      raise ValueError(f"config.model.variant must be one of {VARIANTS}, got {self.variant!r}")
    if self.num_items < 1:
      raise ValueError(f"num_items must be >= 1, got {self.num_items}")
    if self.cloze and self.backbone != "bert4rec":
      raise ValueError(f"cloze=True needs backbone 'bert4rec', got {self.backbone!r}")
    self.items = heads.ItemProjection(variant=self.variant, num_items=self.num_items,
                                      features=self.hidden_dim, emb_dropout=self.emb_dropout,
                                      merge_init=self.merge_init, name="items")
    if self.backbone == "gru4rec":
      self.encoder = gru4rec_lib.GRU4Rec(hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                                         dropout=self.dropout, name="encoder")
    else:
      make = sasrec_lib.SASRec if self.backbone == "sasrec" else bert4rec_lib.BERT4Rec
      self.encoder = make(hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                          num_heads=self.num_heads, dropout=self.dropout, max_len=self.max_len,
                          pre_ln=self.pre_ln, name="encoder")
    if self.backbone == "bert4rec":
      self.mask_vector = self.param("mask_vector", nn.initializers.normal(0.02), (self.hidden_dim,))

  def _inputs(self, seq_BxL: jax.Array, table_NxH: jax.Array | None,
              train: bool) -> tuple[jax.Array, jax.Array]:
    """Item inputs x_BxLxD (zero at padding) and the validity mask valid_BxL."""
    if seq_BxL.ndim != 2:
      raise ValueError(f"seq_BxL must be [batch, length], got shape {seq_BxL.shape}")
    seq_BxL = seq_BxL.astype(jnp.int32)
    valid_BxL = seq_BxL > 0
    if self.backbone == "bert4rec":
      is_mask_BxL = seq_BxL == mask_token_id(self.num_items)
      # The table has no mask row: look up the padding row there, then swap in the learned vector.
      x_BxLxD = self.items(jnp.where(is_mask_BxL, 0, seq_BxL), table_NxH, train)
      x_BxLxD = jnp.where(is_mask_BxL[..., None], self.mask_vector.astype(x_BxLxD.dtype), x_BxLxD)
    else:
      x_BxLxD = self.items(seq_BxL, table_NxH, train)
    return x_BxLxD, valid_BxL

  def encode_positions(self, seq_BxL: jax.Array, table_NxH: jax.Array | None,
                       train: bool = False) -> jax.Array:
    """Per-position outputs hidden_BxLxD (zero at padding)."""
    x_BxLxD, valid_BxL = self._inputs(seq_BxL, table_NxH, train)
    return self.encoder(x_BxLxD, valid_BxL, train)

  def __call__(self, seq_BxL: jax.Array, table_NxH: jax.Array | None,
               train: bool = False) -> jax.Array:
    """User vectors user_BxD: the output at position L-1 (the newest item, or the appended mask)."""
    if self.cloze:
      mask_B1 = jnp.full((seq_BxL.shape[0], 1), mask_token_id(self.num_items), seq_BxL.dtype)
      seq_BxL = jnp.concatenate([seq_BxL[:, 1:], mask_B1], axis=1)
    return self.encode_positions(seq_BxL, table_NxH, train)[:, -1]

  def item_vectors(self, table_NxH: jax.Array | None) -> jax.Array:
    """Scoring vectors items_NxD, N = num_items + 1, row 0 (padding) = 0. No dropout."""
    return self.items.item_vectors(table_NxH)

  def candidate_vectors(self, item_ids: jax.Array, table_NxH: jax.Array | None) -> jax.Array:
    """item_vectors(table)[item_ids] (any shape of ids -> ids.shape + (D,)) without projecting the whole
    catalogue: the cheap way to get positive/negative vectors for BPR."""
    return self.items.candidate_vectors(item_ids.astype(jnp.int32), table_NxH)

  def align(self, table_rows_MxH: jax.Array) -> jax.Array:
    """The alignment projection z_MxD = W_a e + b_a (variant 'recg' only), for the generalization loss."""
    return self.items.align(table_rows_MxH)


def init_variables(model: Recommender, key: jax.Array, table_NxH: jax.Array | None,
                   seq_len: int | None = None) -> dict:
  """Initialises every parameter of `model` (one dummy row of length seq_len, default max_len)."""
  seq_1xL = jnp.zeros((1, seq_len or model.max_len), jnp.int32).at[0, -1].set(1)
  return model.init({"params": key}, seq_1xL, table_NxH, False)
