"""Item heads: how items enter the sequence model and how candidates are scored (docs/method.md steps 3, 7b).

ItemProjection, per variant:
- 'id':   a trainable table E (num_items + 1 rows). Inputs: dropout(E[i]); candidates: E[i].
- 'sem':  the frozen LLM table e (an argument) and W_p. Inputs: dropout(W_p e + b_p); candidates:
          W_p e + b_p.
- 'recg': adds the alignment projection W_a and an affine merge (2 d_l -> d_l). Inputs:
          merge([dropout(W_p e + b_p); dropout(W_a e + b_a)]); candidates: W_p e + b_p (as the authors'
          code; the paper only says "merge the outputs of both projection layers").
- 'text_id': the frozen table is the domain's text coordinates [N, d] (models/text_hybrid.py) and each
          item also has a trainable offset D_i, zero at the start, in the trailing d - frozen_dims
          columns: v_i = t_i + [0; D_i]. Inputs: dropout(v_i); candidates: v_i. frozen_dims = 0 is an ID
          table initialised from the item texts; frozen_dims > 0 keeps the texts' leading directions fixed
          and learns ids in the rest (AlphaFuse's construction).
With merge_init='identity' the merge starts as [I | 0], so a RecG input starts as the Sem input (W_p e,
the candidates' own space) and W_a enters only as training moves the merge away from it; not in the paper
or the authors' code, a variant for studying RecG against Sem.
The padding item 0 gives a zero input and a zero candidate vector in every variant.

`dtype` is the compute dtype (config.train.compute_dtype): the frozen float32 rows are cast to it where they
enter, and the sequence inputs come out in it. Parameters stay float32, and the candidate vectors and the
alignment projection come out in float32 whatever the compute dtype, so that scores, BPR / softmax and
L_gen are computed in float32.

SequenceFusion is the sequence-level transfer map g = W_f [y; s~] (no bias), initialised to [I | 0] so it
starts as the identity on y.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from recg_jax import errors

VARIANTS = ("id", "sem", "recg", "text_id")
MERGE_INITS = ("default", "identity")


def _zero_padding_row(items_NxD: jax.Array) -> jax.Array:
  return items_NxD.at[0].set(0.0)


class ItemProjection(nn.Module):
  """W_p / W_a / merge (or the ID table). Parameter names: W_p, W_a, merge, item_embedding."""

  variant: str
  num_items: int  # sizes the ID table (and text_id's offsets); unused by 'sem' and 'recg'
  features: int  # d_l
  frozen_dims: int = 0  # 'text_id': leading columns of the text coordinates that never train
  emb_dropout: float = 0.0
  merge_init: str = (
      "default"  # 'recg': 'default' (lecun normal) or 'identity' ([I | 0]: input = W_p e at start)
  )
  dtype: Any = jnp.float32  # compute dtype; parameters are float32

  def setup(self):
    if self.variant not in VARIANTS:
      raise errors.ConfigError(f"config.model.variant must be one of {VARIANTS}, got {self.variant!r}")
    if self.variant == "id":
      self.item_embedding = nn.Embed(
          self.num_items + 1, self.features, embedding_init=nn.initializers.normal(0.02), dtype=self.dtype
      )
    elif self.variant == "text_id":
      if not 0 <= self.frozen_dims < self.features:
        raise errors.ConfigError(
            f"config.model.text_id_frozen_dims={self.frozen_dims} must be in [0, hidden_dim="
            f"{self.features})"
        )
      self.id_offset = nn.Embed(
          self.num_items + 1,
          self.features - self.frozen_dims,
          embedding_init=nn.initializers.zeros,
          dtype=self.dtype,
      )
    else:
      self.W_p = nn.Dense(self.features, dtype=self.dtype)
      if self.variant == "recg":
        self.W_a = nn.Dense(self.features, dtype=self.dtype)
        if self.merge_init not in MERGE_INITS:
          raise errors.ConfigError(
              f"config.model.merge_init must be one of {MERGE_INITS}, got {self.merge_init!r}"
          )
        init = identity_concat_init if self.merge_init == "identity" else nn.linear.default_kernel_init
        self.merge = nn.Dense(self.features, kernel_init=init, dtype=self.dtype)
    self.drop = nn.Dropout(self.emb_dropout)

  def _lookup(self, seq_BxL: jax.Array, table_NxH: jax.Array | None) -> jax.Array:
    if table_NxH is None or table_NxH.ndim != 2:
      raise errors.ConfigError(
          f"variant {self.variant!r} needs the frozen table [num_items + 1, H], got "
          f"{None if table_NxH is None else table_NxH.shape}"
      )
    # Gather before projecting (and casting): B*L rows is far fewer than a whole catalogue of N rows.
    return jnp.take(jax.lax.stop_gradient(table_NxH), seq_BxL, axis=0, mode="clip").astype(self.dtype)

  def _text_id_vectors(self, ids: jax.Array, table_NxH: jax.Array | None, offsets) -> jax.Array:
    """'text_id': t_i + [0; D_i] of the given ids (offsets: their rows of the trainable table), float32."""
    text = self._lookup(ids, table_NxH).astype(jnp.float32)
    if text.shape[-1] != self.features:
      raise errors.ConfigError(
          f"variant 'text_id' reads the items' text coordinates reduced to hidden_dim={self.features}, got "
          f"a table {text.shape[-1]} wide (pipeline.model_tables makes them)"
      )
    frozen, trained = text[..., : self.frozen_dims], text[..., self.frozen_dims :]
    return jnp.concatenate([frozen, trained + offsets.astype(jnp.float32)], axis=-1)

  def __call__(self, seq_BxL: jax.Array, table_NxH: jax.Array | None, train: bool) -> jax.Array:
    """Sequence inputs x_BxLxD; zero where seq_BxL == 0."""
    valid_BxLx1 = (seq_BxL > 0)[..., None]
    if self.variant == "id":
      x = self.drop(self.item_embedding(seq_BxL), deterministic=not train)
    elif self.variant == "text_id":
      vectors = self._text_id_vectors(seq_BxL, table_NxH, self.id_offset(seq_BxL))
      x = self.drop(vectors.astype(self.dtype), deterministic=not train)
    else:
      e_BxLxH = self._lookup(seq_BxL, table_NxH)
      p = self.drop(self.W_p(e_BxLxH), deterministic=not train)
      if self.variant == "sem":
        x = p
      else:
        a = self.drop(self.W_a(e_BxLxH), deterministic=not train)
        x = self.merge(jnp.concatenate([p, a], axis=-1))
    return jnp.where(valid_BxLx1, x, 0.0)

  def item_vectors(self, table_NxH: jax.Array | None) -> jax.Array:
    """Candidate vectors items_NxD (no dropout, float32), row 0 = 0."""
    if self.variant == "id":
      return _zero_padding_row(self.item_embedding.embedding)
    if self.variant == "text_id":
      ids_N = jnp.arange(self.id_offset.embedding.shape[0])
      return _zero_padding_row(self._text_id_vectors(ids_N, table_NxH, self.id_offset.embedding))
    if table_NxH is None or table_NxH.ndim != 2:
      raise errors.ConfigError(
          f"variant {self.variant!r} needs the frozen table [num_items + 1, H], got "
          f"{None if table_NxH is None else table_NxH.shape}"
      )
    items_NxD = self.W_p(jax.lax.stop_gradient(table_NxH).astype(self.dtype))
    return _zero_padding_row(items_NxD.astype(jnp.float32))

  def candidate_vectors(self, ids: jax.Array, table_NxH: jax.Array | None) -> jax.Array:
    """Candidate vectors of the given item ids, shape ids.shape + (D,), float32, zero where ids == 0.

    Equal to item_vectors(table)[ids], without projecting the whole catalogue.
    """
    if self.variant == "id":
      # The float32 table itself, as item_vectors: Embed would cast the rows to the compute dtype.
      x = jnp.take(self.item_embedding.embedding, ids, axis=0)
    elif self.variant == "text_id":
      x = self._text_id_vectors(ids, table_NxH, jnp.take(self.id_offset.embedding, ids, axis=0))
    else:
      x = self.W_p(self._lookup(ids, table_NxH)).astype(jnp.float32)
    return jnp.where((ids > 0)[..., None], x, 0.0)

  def align(self, rows_MxH: jax.Array) -> jax.Array:
    """z_MxD = W_a e + b_a (float32), the space of the generalization loss ('recg' only)."""
    if self.variant != "recg":
      raise errors.ConfigError(f"align() exists only for variant 'recg', not {self.variant!r}")
    return self.W_a(jax.lax.stop_gradient(rows_MxH).astype(self.dtype)).astype(jnp.float32)


def identity_concat_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Kernel [[I], [0]] of shape (2 d, d): x @ kernel = x[:d], i.e. W_f = [I | 0] in column form."""
  del key
  in_dim, out_dim = shape
  if in_dim != 2 * out_dim:
    raise ValueError(f"identity_concat_init needs shape (2 d, d), got {shape}")
  return jnp.concatenate([jnp.eye(out_dim, dtype=dtype), jnp.zeros((out_dim, out_dim), dtype)], axis=0)


class SequenceFusion(nn.Module):
  """g = W_f [y; s~] with W_f: d_l x 2 d_l, no bias, initialised to [I | 0] (docs/method.md step 7b-c)."""

  features: int  # d_l

  @nn.compact
  def __call__(self, user_BxD: jax.Array, summary_BxD: jax.Array) -> jax.Array:
    if user_BxD.shape[-1] != self.features or summary_BxD.shape[-1] != self.features:
      raise ValueError(
          f"SequenceFusion(features={self.features}) got {user_BxD.shape} and " f"{summary_BxD.shape}"
      )
    y_s = jnp.concatenate([user_BxD, summary_BxD], axis=-1)
    return nn.Dense(self.features, use_bias=False, kernel_init=identity_concat_init, name="W_f")(y_s)
