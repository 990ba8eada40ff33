"""The sequential recommender: item inputs (heads.py) + one backbone (SASRec, BERT4Rec or GRU4Rec).

API (every method is pure; call it as `model.apply(variables, ..., method=...)`, and pass
`rngs={'dropout': key}` when `train=True`):

  model = build_model(config, num_items)   # or Recommender(...) directly
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
  model.output_dim(H)                                  width of user and candidate vectors (d_l, or the
                                                       table's H in the text space; H + d_l for 'mix')
  MASK_TOKEN_ID = 2**31 - 1                            the BERT4Rec Cloze mask token (any domain)

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
- Cloze (`cloze=True`, bert4rec only): inputs equal to MASK_TOKEN_ID are replaced by a learned
  vector in input space, and __call__ drops the oldest item, appends the mask token and reads the output
  there (BERT4Rec inference). encode_positions never shifts. Without cloze, the mask token is still
  understood by encode_positions (the learned vector exists for every bert4rec model).
- Padding positions produce zero inputs and zero outputs.
- Mixed precision (`dtype`, from config.train.compute_dtype): the item heads and the backbone compute in
  `dtype` (the frozen float32 rows are cast where they enter); parameters are float32, and what leaves the
  model (user vectors, per-position outputs, candidate vectors, the alignment projection) is float32, so
  scores, losses and metrics are computed in float32 in any case. dtype float32 is the plain model.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from recg_jax import errors
from recg_jax.models import bert4rec as bert4rec_lib
from recg_jax.models import gru4rec as gru4rec_lib
from recg_jax.models import heads
from recg_jax.models import sasrec as sasrec_lib
from recg_jax.models import scoring
from recg_jax.models import text_hybrid
from recg_jax.models import text_space

BACKBONES = ("sasrec", "bert4rec", "gru4rec")
# 'text_knn' has no parameters: the user vector is the recency-weighted mean of the history's frozen rows
# and the candidates are the frozen rows themselves (models/text_space.py); it is never trained.
VARIANTS = heads.VARIANTS + ("text_knn",)
SCORE_SPACES = ("projected", "text")
TEXT_USERS = ("readout", "residual", "attention", "mix", "offset")
# The text users an ID model (variant 'id') can join with the text: both keep the ID half whole.
ID_TEXT_USERS = ("mix", "offset")
KNN_AGGREGATES = ("mean", "max", "softmax")
MASK_TOKEN_ID = bert4rec_lib.MASK_TOKEN_ID
# config.train.compute_dtype -> the dtype of activations and matmuls (parameters stay float32).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """The compute dtype named by config.train.compute_dtype."""
  if name not in COMPUTE_DTYPES:
    raise errors.ConfigError(
        f"config.train.compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {name!r}"
    )
  return COMPUTE_DTYPES[name]


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
  # 'projected': candidates are W_p e + b_p and the user vector is the backbone's output (the paper).
  # 'text': candidates are the frozen rows e themselves, so a target keeps its own text geometry; the
  # backbone's output is read out into the table's space (TextReadout) and scored by cosine with a learned
  # temperature. Variants 'sem' and 'recg' only.
  score_space: str = "projected"
  # score_space 'text', how the user vector is made (each starts or ends in the table's space):
  #   'readout':   u = W_o h (h the backbone's output);
  #   'residual':  u = history mean + W_o h, W_o starting at zero: the model starts as text_knn;
  #   'attention': u = sum_s a_s e[x_s], a convex mix of the history's own frozen rows whose weights the
  #                backbone learns (starting as text_knn's recency weights), so a target user's vector
  #                never leaves the span of the target's items;
  #   'mix':       u = [s * unit(history mean); h] against candidates [e; W_p e + b_p]: the score is
  #                text_knn's cosine with a learned scale s plus the Sem (or ID, variant 'id': candidates
  #                [e; E_i]) model's score, trained together, so the backbone learns what the text misses.
  #   'offset':    (variant 'id') the score is b * text_knn's score (its aggregate, knn_aggregate, over the
  #                frozen rows) plus <h, E_i>: the text baseline as a fixed logit offset with one learned
  #                scale b, and an ID model trained on top of it, which learns only what the text misses.
  text_user: str = "readout"
  knn_decay: float = 0.5  # recency weight of the history mean (text_knn and the text_user modes using it)
  # text_knn: 'mean' (cosine with the history mean), 'max' or 'softmax' over the history's own cosines (one
  # vector per history item: see `scorer`), with knn_temperature for 'softmax'.
  knn_aggregate: str = "mean"
  knn_temperature: float = 0.1
  text_temperature: float = 0.05  # initial temperature of the cosine scores (score_space 'text')
  # variant 'text_id': the leading columns of the text coordinates that never train (0: every column
  # trains, an ID table initialised from the texts).
  text_id_frozen_dims: int = 0
  # SASRec's block details (RecBole's SASRec: 4, 'gelu', 1e-12, 0.02).
  sasrec_ffn_multiplier: int = 1
  sasrec_activation: str = "relu"
  sasrec_ln_epsilon: float = 1e-6
  sasrec_init_std: float = 0.0
  # Compute dtype of the heads and the backbone (COMPUTE_DTYPES); parameters and outputs are float32.
  dtype: Any = jnp.float32

  @property
  def is_causal(self) -> bool:
    return self.backbone in ("sasrec", "gru4rec")

  @property
  def knn_scorer(self) -> tuple:
    """The scorer of text_knn's aggregate (knn_aggregate): ('dot',) for the history mean, ('max',) or
    ('softmax', temperature) over the history's rows."""
    if self.knn_aggregate == "mean":
      return ("dot",)
    return ("max",) if self.knn_aggregate == "max" else ("softmax", float(self.knn_temperature))

  @property
  def is_offset(self) -> bool:
    return self.score_space == "text" and self.text_user == "offset"

  @property
  def scorer(self) -> tuple:
    """How evaluation scores this model's user output against the item vectors: ('dot',) for one user
    vector per user; ('max',) or ('softmax', temperature) for text_knn's multi-interest aggregates, whose
    user output is [B, L, H + 1]: every history row with its log recency weight (-inf at padding); for
    text_user 'offset' the sum of text_knn's aggregate and the ID score (models/scoring.py 'fuse'), its
    user output (text_knn's, h / b): the trained score divided by the text's learned scale b ranks
    exactly as b * text + <h, E>."""
    if self.is_offset:
      return scoring.fuse((self.knn_scorer, scoring.DOT), (1.0, 1.0), standardize=False)
    if self.variant != "text_knn":
      return scoring.DOT
    return self.knn_scorer

  @property
  def in_text_space(self) -> bool:
    """User and candidate vectors live in the frozen table's space (width H), not in d_l."""
    return self.variant == "text_knn" or self.score_space == "text"

  def output_dim(self, table_width: int) -> int:
    """Width of user and candidate vectors for a table of this width (of the ID part, for 'offset')."""
    if self.score_space == "text" and self.text_user == "mix":
      return table_width + self.hidden_dim
    if self.is_offset:
      return self.hidden_dim
    return table_width if self.in_text_space else self.hidden_dim

  def setup(self):
    _check_fields(self)
    if self.variant == "text_knn":
      return  # no parameters
    self.items = heads.ItemProjection(
        variant=self.variant,
        num_items=self.num_items,
        features=self.hidden_dim,
        emb_dropout=self.emb_dropout,
        merge_init=self.merge_init,
        frozen_dims=self.text_id_frozen_dims,
        dtype=self.dtype,
        name="items",
    )
    self.encoder = _backbone(self)
    if self.backbone == "bert4rec":
      self.mask_vector = self.param("mask_vector", nn.initializers.normal(0.02), (self.hidden_dim,))
    if self.score_space == "text":
      if self.text_user in ID_TEXT_USERS:  # 'mix' and 'offset': the text's learned scale
        self.knn_log_scale = self.param(
            "knn_log_scale", nn.initializers.constant(-jnp.log(self.text_temperature)), ()
        )
      elif self.text_user == "attention":
        self.readout = HistoryAttention(
            decay=self.knn_decay, temperature=self.text_temperature, dtype=self.dtype, name="readout"
        )
      else:
        self.readout = TextReadout(
            zero_init=self.text_user == "residual",
            temperature=self.text_temperature,
            dtype=self.dtype,
            name="readout",
        )

  def _inputs(
      self, seq_BxL: jax.Array, table_NxH: jax.Array | None, train: bool
  ) -> tuple[jax.Array, jax.Array]:
    """Item inputs x_BxLxD (zero at padding) and the validity mask valid_BxL."""
    if seq_BxL.ndim != 2:
      raise ValueError(f"seq_BxL must be [batch, length], got shape {seq_BxL.shape}")
    seq_BxL = seq_BxL.astype(jnp.int32)
    valid_BxL = seq_BxL > 0
    if self.backbone == "bert4rec":
      is_mask_BxL = seq_BxL == MASK_TOKEN_ID
      # The table has no mask row: look up the padding row there, then swap in the learned vector.
      x_BxLxD = self.items(jnp.where(is_mask_BxL, 0, seq_BxL), table_NxH, train)
      x_BxLxD = jnp.where(is_mask_BxL[..., None], self.mask_vector.astype(x_BxLxD.dtype), x_BxLxD)
    else:
      x_BxLxD = self.items(seq_BxL, table_NxH, train)
    return x_BxLxD, valid_BxL

  def encode_positions(
      self, seq_BxL: jax.Array, table_NxH: jax.Array | None, train: bool = False
  ) -> jax.Array:
    """Per-position outputs hidden_BxLxD (zero at padding); D = output_dim(H)."""
    if self.variant == "text_knn":
      return text_space.history_mean_positions(seq_BxL, _frozen(table_NxH), self.knn_decay)
    x_BxLxD, valid_BxL = self._inputs(seq_BxL, table_NxH, train)
    hidden_BxLxD = self.encoder(x_BxLxD, valid_BxL, train).astype(jnp.float32)
    if self.score_space != "text" or self.is_offset:  # 'offset': the ID part (text_offset_logits adds it)
      return hidden_BxLxD
    if self.text_user == "mix":
      mean_BxLxH = text_space.history_mean_positions(seq_BxL, _frozen(table_NxH), self.knn_decay)
      knn_BxLxH = jnp.where((seq_BxL > 0)[..., None], _scaled_unit(mean_BxLxH, self.knn_log_scale), 0.0)
      return jnp.concatenate([knn_BxLxH, hidden_BxLxD], axis=-1)
    if self.text_user == "attention":
      return self.readout(hidden_BxLxD, seq_BxL, _frozen(table_NxH))
    base_BxLxH = (
        text_space.history_mean_positions(seq_BxL, _frozen(table_NxH), self.knn_decay)
        if self.text_user == "residual"
        else None
    )
    return self.readout(hidden_BxLxD, seq_BxL > 0, table_NxH.shape[-1], base_BxLxH)

  def __call__(self, seq_BxL: jax.Array, table_NxH: jax.Array | None, train: bool = False) -> jax.Array:
    """User vectors user_BxD: the output at position L-1 (the newest item, or the appended mask)."""
    if self.cloze:
      mask_B1 = jnp.full((seq_BxL.shape[0], 1), MASK_TOKEN_ID, seq_BxL.dtype)
      seq_BxL = jnp.concatenate([seq_BxL[:, 1:], mask_B1], axis=1)
    if self.is_offset:
      hidden_BxD = self.encode_positions(seq_BxL, table_NxH, train)[:, -1]
      return (self._knn_user(seq_BxL, table_NxH), hidden_BxD * jnp.exp(-self.knn_log_scale))
    if self.scorer[0] != "dot":
      return self._knn_user(seq_BxL, table_NxH)
    return self.encode_positions(seq_BxL, table_NxH, train)[:, -1]

  def _knn_user(self, seq_BxL: jax.Array, table_NxH: jax.Array | None) -> jax.Array:
    """text_knn's user output (knn_scorer): the history mean [B, H], or the history rows [B, L, H + 1]."""
    if self.knn_aggregate == "mean":
      return text_space.history_mean_positions(seq_BxL, _frozen(table_NxH), self.knn_decay)[:, -1]
    return text_space.history_rows(seq_BxL, _frozen(table_NxH), self.knn_decay)

  def text_offset_logits(self, seq_BxL: jax.Array, table_NxH: jax.Array | None) -> jax.Array:
    """'offset': b * text_knn's score of every item at every position, [B, L, N] (no gradient but b's)."""
    table = _frozen(table_NxH)
    scores = text_hybrid.prefix_knn_scores(
        seq_BxL, table, table, self.knn_decay, self.knn_aggregate, self.knn_temperature
    )
    return jnp.exp(self.knn_log_scale) * jax.lax.stop_gradient(scores)

  def item_vectors(self, table_NxH: jax.Array | None) -> jax.Array:
    """Scoring vectors items_NxD, N = num_items + 1, row 0 (padding) = 0. No dropout."""
    if self.score_space == "text" and self.text_user == "mix":
      return jnp.concatenate([_frozen(table_NxH).at[0].set(0.0), self.items.item_vectors(table_NxH)], -1)
    if self.is_offset:
      return (_frozen(table_NxH).at[0].set(0.0), self.items.item_vectors(table_NxH))
    if self.in_text_space:
      return _frozen(table_NxH).at[0].set(0.0)
    return self.items.item_vectors(table_NxH)

  def candidate_vectors(self, item_ids: jax.Array, table_NxH: jax.Array | None) -> jax.Array:
    """item_vectors(table)[item_ids] (any shape of ids -> ids.shape + (D,)) without projecting the whole
    catalogue: the cheap way to get positive/negative vectors for BPR."""
    ids = item_ids.astype(jnp.int32)
    if self.is_offset:
      raise errors.ConfigError(
          "config.model.text_user='offset' scores every item (its text offset is a softmax over the "
          "catalogue): train it with config.train.loss='softmax'"
      )
    if not self.in_text_space:
      return self.items.candidate_vectors(ids, table_NxH)
    rows = jnp.where((ids > 0)[..., None], jnp.take(_frozen(table_NxH), ids, axis=0, mode="clip"), 0.0)
    if self.text_user == "mix":
      return jnp.concatenate([rows, self.items.candidate_vectors(ids, table_NxH)], axis=-1)
    return rows

  def align(self, table_rows_MxH: jax.Array) -> jax.Array:
    """The alignment projection z_MxD = W_a e + b_a (variant 'recg' only), for the generalization loss."""
    return self.items.align(table_rows_MxH)


def _check_fields(m: Recommender) -> None:
  """Raises on a field combination the model cannot build (named by its config field)."""
  if m.knn_aggregate not in KNN_AGGREGATES:
    raise errors.ConfigError(
        f"config.model.knn_aggregate must be one of {KNN_AGGREGATES}, got {m.knn_aggregate!r}"
    )
  if m.knn_aggregate != "mean" and m.variant != "text_knn" and m.text_user != "offset":
    raise errors.ConfigError(
        "config.model.knn_aggregate applies to variant 'text_knn' and text_user 'offset' only"
    )
  if not m.knn_temperature > 0:
    raise errors.ConfigError(f"config.model.knn_temperature must be > 0, got {m.knn_temperature}")
  if m.backbone not in BACKBONES:
    raise errors.ConfigError(f"config.model.backbone must be one of {BACKBONES}, got {m.backbone!r}")
  if m.variant not in VARIANTS:
    raise errors.ConfigError(f"config.model.variant must be one of {VARIANTS}, got {m.variant!r}")
  if m.num_items < 1:
    raise ValueError(f"num_items must be >= 1, got {m.num_items}")
  if m.cloze and m.backbone != "bert4rec":
    raise ValueError(f"cloze=True needs backbone 'bert4rec', got {m.backbone!r}")
  if m.score_space not in SCORE_SPACES:
    raise errors.ConfigError(f"config.model.score_space must be one of {SCORE_SPACES}, got {m.score_space!r}")
  if m.score_space == "text" and m.variant not in ("sem", "recg", "id"):
    raise errors.ConfigError(
        f"config.model.score_space='text' needs variant 'sem' or 'recg' (a frozen table), got "
        f"{m.variant!r}"
    )
  if m.score_space == "text" and m.variant == "id" and m.text_user not in ID_TEXT_USERS:
    raise errors.ConfigError(
        f"variant 'id' joins the text with config.model.text_user in {ID_TEXT_USERS}, got {m.text_user!r}"
    )
  if m.text_user == "offset" and m.variant != "id":
    raise errors.ConfigError(
        f"config.model.text_user='offset' puts an ID model (variant 'id') on top of the text, got variant "
        f"{m.variant!r}"
    )
  if m.score_space == "text" and m.cloze:
    raise errors.ConfigError(
        "config.model.score_space='text' does not support the Cloze objective (the mask token "
        "has no row in the frozen table)"
    )
  if m.text_user not in TEXT_USERS:
    raise errors.ConfigError(f"config.model.text_user must be one of {TEXT_USERS}, got {m.text_user!r}")
  if m.text_user != "readout" and m.score_space != "text":
    raise errors.ConfigError(f"config.model.text_user={m.text_user!r} needs config.model.score_space='text'")
  if jnp.dtype(m.dtype).name not in COMPUTE_DTYPES:
    raise errors.ConfigError(
        f"Recommender.dtype (config.train.compute_dtype) must be one of "
        f"{tuple(COMPUTE_DTYPES)}, got {m.dtype!r}"
    )


def _backbone(m: Recommender) -> nn.Module:
  """The sequence model of m.backbone, named 'encoder' (built inside Recommender.setup)."""
  if m.backbone == "gru4rec":
    return gru4rec_lib.GRU4Rec(
        hidden_dim=m.hidden_dim, num_layers=m.num_layers, dropout=m.dropout, dtype=m.dtype, name="encoder"
    )
  elif m.backbone == "sasrec":
    return sasrec_lib.SASRec(
        hidden_dim=m.hidden_dim,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        dropout=m.dropout,
        max_len=m.max_len,
        pre_ln=m.pre_ln,
        ffn_multiplier=m.sasrec_ffn_multiplier,
        activation=m.sasrec_activation,
        ln_epsilon=m.sasrec_ln_epsilon,
        init_std=m.sasrec_init_std,
        dtype=m.dtype,
        name="encoder",
    )
  else:
    return bert4rec_lib.BERT4Rec(
        hidden_dim=m.hidden_dim,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        dropout=m.dropout,
        max_len=m.max_len,
        pre_ln=m.pre_ln,
        dtype=m.dtype,
        name="encoder",
    )


def _frozen(table_NxH: jax.Array | None) -> jax.Array:
  if table_NxH is None or table_NxH.ndim != 2:
    raise errors.ConfigError(
        "a text-space model needs the frozen table [num_items + 1, H], got "
        f"{None if table_NxH is None else table_NxH.shape}"
    )
  return jax.lax.stop_gradient(table_NxH)


class TextReadout(nn.Module):
  """u = W_o h + b_o (+ base), scored as exp(log_scale) * u / |u|: cosine scores with a learned
  temperature, in the frozen table's space. With zero_init the read-out starts at 0, so u = base."""

  zero_init: bool = False
  temperature: float = 0.05
  dtype: Any = jnp.float32  # of W_o; the cosine and its norm are float32

  @nn.compact
  def __call__(
      self, hidden_BxLxD: jax.Array, valid_BxL: jax.Array, width: int, base_BxLxH: jax.Array | None
  ) -> jax.Array:
    if not self.temperature > 0:
      raise errors.ConfigError(f"config.model.text_temperature must be > 0, got {self.temperature}")
    init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
    u = nn.Dense(width, kernel_init=init, dtype=self.dtype, name="W_o")(hidden_BxLxD).astype(jnp.float32)
    if base_BxLxH is not None:
      u = u + base_BxLxH
    log_scale = self.param("log_scale", nn.initializers.constant(-jnp.log(self.temperature)), ())
    return jnp.where(valid_BxL[..., None], _scaled_unit(u, log_scale), 0.0)


def _scaled_unit(u_BxLxH: jax.Array, log_scale: jax.Array) -> jax.Array:
  # Not jnp.linalg.norm: its gradient at u = 0 (padding positions) is NaN, and a NaN survives `where`.
  norm = jnp.sqrt(jnp.sum(jnp.square(u_BxLxH), axis=-1, keepdims=True) + 1e-12)
  return jnp.exp(log_scale) * u_BxLxH / norm


class HistoryAttention(nn.Module):
  """u_t = sum_{s<=t} a_ts e[x_s], a_t = softmax_s(<q_t, k_s> / sqrt(D) + (t - s) log decay), with
  q = W_q h (starting at zero) and k = W_k h from the backbone's outputs h: at initialisation a_t is
  text_knn's recency weighting, and training can only re-weight the history's own frozen rows. Scored as
  exp(log_scale) * u / |u| (cosine with a learned temperature)."""

  decay: float = 0.5
  temperature: float = 0.05
  dtype: Any = jnp.float32  # of W_q and W_k; the logits, softmax and the mix of rows are float32

  @nn.compact
  def __call__(self, hidden_BxLxD: jax.Array, seq_BxL: jax.Array, table_NxH: jax.Array) -> jax.Array:
    if not self.temperature > 0:
      raise errors.ConfigError(f"config.model.text_temperature must be > 0, got {self.temperature}")
    d = hidden_BxLxD.shape[-1]
    q = nn.Dense(d, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="W_q")(hidden_BxLxD)
    k = nn.Dense(d, dtype=self.dtype, name="W_k")(hidden_BxLxD)
    length = seq_BxL.shape[1]
    t = jnp.arange(length)
    age_LxL = (t[:, None] - t[None, :]).astype(jnp.float32)
    # decay 0 (the newest item alone) as a very steep finite slope: no -inf reaches the softmax.
    prior_LxL = age_LxL * jnp.log(jnp.maximum(jnp.float32(self.decay), 1e-6))
    valid_BxL = seq_BxL > 0
    allowed_BxLxL = (age_LxL >= 0)[None] & valid_BxL[:, None, :]
    logits = jnp.einsum("btd,bsd->bts", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(d)) + prior_LxL
    logits = jnp.where(allowed_BxLxL, logits, -1e9)
    weights_BxLxL = jax.nn.softmax(logits, axis=-1)
    rows_BxLxH = jnp.take(table_NxH, seq_BxL.astype(jnp.int32), axis=0, mode="clip")
    u = jnp.einsum("bts,bsh->bth", weights_BxLxL, jnp.where(valid_BxL[..., None], rows_BxLxH, 0.0))
    log_scale = self.param("log_scale", nn.initializers.constant(-jnp.log(self.temperature)), ())
    return jnp.where(valid_BxL[..., None], _scaled_unit(u, log_scale), 0.0)


def reads_table(model_config: Any) -> bool:
  """Whether a model of config.model reads its domain's frozen text table: every variant but a plain ID
  model (variant 'id' joined with the text in score_space 'text' reads it too)."""
  return str(model_config.variant) != "id" or str(model_config.score_space) == "text"


def build_model(config: Any, num_items: int) -> Recommender:
  """The model a run's config describes (config.model, with data.max_len, the BERT4Rec objective and
  train.compute_dtype), for a domain of num_items items (only an ID table depends on it)."""
  mc = config.model
  return Recommender(
      backbone=str(mc.backbone),
      variant=str(mc.variant),
      num_items=int(num_items),
      hidden_dim=int(mc.hidden_dim),
      num_layers=int(mc.num_layers),
      num_heads=int(mc.num_heads),
      dropout=float(mc.dropout),
      emb_dropout=float(mc.emb_dropout),
      max_len=int(config.data.max_len),
      pre_ln=bool(mc.pre_ln),
      merge_init=str(mc.merge_init),
      cloze=str(mc.backbone) == "bert4rec" and config.train.bert4rec_objective == "cloze",
      score_space=str(mc.score_space),
      text_user=str(mc.text_user),
      knn_decay=float(mc.knn_decay),
      knn_aggregate=str(mc.knn_aggregate),
      knn_temperature=float(mc.knn_temperature),
      text_temperature=float(mc.text_temperature),
      text_id_frozen_dims=int(mc.text_id_frozen_dims),
      sasrec_ffn_multiplier=int(mc.sasrec_ffn_multiplier),
      sasrec_activation=str(mc.sasrec_activation),
      sasrec_ln_epsilon=float(mc.sasrec_ln_epsilon),
      sasrec_init_std=float(mc.sasrec_init_std),
      dtype=compute_dtype(str(config.train.compute_dtype)),
  )


def init_variables(
    model: Recommender, key: jax.Array, table_NxH: jax.Array | None, seq_len: int | None = None
) -> dict:
  """Initialises every parameter of `model` (one dummy row of length seq_len, default max_len)."""
  seq_1xL = jnp.zeros((1, seq_len or model.max_len), jnp.int32).at[0, -1].set(1)
  return model.init({"params": key}, seq_1xL, table_NxH, False)
