"""Settings of `python -m recg_jax.recommend` and `recg_jax.serving` that do not come from the run.

The run's own config (its results.json) fixes the model, the text template, the encoder, the table
transform and the evaluation's length buckets; these fields only set how much work is done at once. Any
field can be set with `--config.<field>=value` on the command line.
"""

import ml_collections

from recg_jax.config import presets

# What `recommend` serves when it is given no run: the training-free method chosen on the validation
# domains, whole and item-subsampled to 50, 200 and 1,000 items (results/small_catalogues/results.md;
# docs/method.md, "The day-one default on small catalogues"): text embeddings centred on the catalogue's
# own items, each user scored by a recency-weighted soft maximum over their history. Whitening the
# catalogue (`text_knn_whiten_soft02`, the leave-one-domain-out study's choice on the whole validation
# domains) loses up to 24% on their small subsamples, and on Games at every size.
DEFAULT_METHOD = presets.TEXT_BASELINE


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Users whose vectors are computed and scored together ([batch, width] model inputs, [batch, block]
  # scores). 0 = the run's eval.batch_size.
  c.user_batch_size = 0
  # Catalogue rows scored per top-k step: the device holds a [user_batch_size, item_block_rows] float32
  # score matrix at a time, whatever the catalogue's size (bench/recommend_throughput.py). 0 = the whole
  # catalogue in one block (one [user_batch_size, N] matrix: the naive form).
  c.item_block_rows = 8192
  # Length buckets of the user inputs; None = the run's eval.length_buckets (as evaluation groups users).
  c.length_buckets = ml_collections.config_dict.placeholder(tuple)
  # The history-exclusion rows are padded to a multiple of this width, so catalogues and history files of
  # similar shape reuse one compiled top-k program.
  c.history_width_multiple = 64
  return c
