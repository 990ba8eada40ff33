"""What a uniformly random ranking reaches under each protocol: the floor every study table shows.

`candidate_counts` counts the candidates each user's target is ranked among, exactly as evaluate.py ranks
them (under `full` the catalogue less the masked history, under `sampled<N>` N + 1), and
`random_expectation` turns them into the expected Recall@K and NDCG@K of a random order.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from recg_jax import evaluate
from recg_jax.data.types import DomainData
from recg_jax.data.types import EvalSplit


def candidate_counts(
    split: EvalSplit, domain: DomainData, eval_config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
  """{protocol name: C_U}, the number of candidates each user's target is ranked among (itself included):
  under `full` the catalogue less the masked history (the distinct items before the target, the target
  excepted) as `evaluate` masks it, under `sampled<N>` N + 1."""
  run_full, sampled_name = evaluate.parse_protocols(
      tuple(eval_config.protocols), int(eval_config.num_sampled_negatives)
  )
  counts: dict[str, np.ndarray] = {}
  if run_full:
    masked_U = np.zeros(domain.num_users, np.int64)
    if bool(eval_config.mask_history):
      end_U = evaluate.target_positions(split, domain)
      targets_U = np.asarray(split.targets_U)
      for u in range(domain.num_users):
        masked_U[u] = len(np.setdiff1d(domain.items[domain.offsets[u] : end_U[u]], targets_U[u : u + 1]))
    counts["full"] = domain.num_items - masked_U
  if sampled_name is not None:
    counts[sampled_name] = np.full(domain.num_users, int(eval_config.num_sampled_negatives) + 1, np.int64)
  return counts


def random_expectation(
    split: EvalSplit, domain: DomainData, eval_config: ml_collections.ConfigDict
) -> dict[str, float]:
  """Recall@K / NDCG@K a uniformly random ranking reaches in expectation, per protocol, averaged over the
  users of `split`: with C candidates the target's rank is uniform on 0..C-1, so Recall@K = min(K, C) / C
  and NDCG@K = sum_{r < min(K, C)} 1 / log2(r + 2) / C (C from candidate_counts)."""
  out = {}
  for name, c_U in candidate_counts(split, domain, eval_config).items():
    for k in eval_config.ks:
      top_U = np.minimum(int(k), c_U)
      gains_K = np.cumsum(1.0 / np.log2(np.arange(int(k)) + 2.0))
      out[f"{name}/recall@{k}"] = float(np.mean(top_U / c_U))
      out[f"{name}/ndcg@{k}"] = float(np.mean(gains_K[top_U - 1] / c_U))
  return out
