"""The item-level generalization loss L_gen (docs/method.md step 6).

Each training step samples B real items per domain (source, targets and auxiliary domains alike), maps their
frozen embeddings through the alignment projection, z = W_a e_sem + b_a, and computes

  intra-domain diversity  H_intra = mean_{d,i} H(softmax_j(cos(z_i, z_j) / tau)),  j over domain d (j = i too)
  inter-domain compactness H_inter = mean_i H(softmax_{d != d_i}(cos(z_i, c_d) / tau)),  c_d = mean_i z_i
  L_gen = -alpha * H_intra + inter_sign * beta * H_inter,  beta = alpha * N / D^3,  N = B * D.

`inter_sign = +1` minimises the inter-domain entropy (the paper's prose and the authors' code); -1 is the
sign printed in the paper's Eq. 9/13. With D = 2 the only "other" centre gets all the mass, so the inter
term and its gradient are exactly zero: callers should train with at least 3 domains.
"""

from __future__ import annotations

from typing import Sequence
import warnings

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from recg_jax import errors

# Logit given to an item's own domain centre. Finite, so that softmax/log_softmax and their gradients stay
# finite (exp underflows to exactly 0 and 0 * finite = 0); -inf would give 0 * inf = nan in the entropy.
_MASK_LOGIT = -1e9
# Norm floor: z / max(|z|, eps) has a finite gradient even at z = 0, unlike z / |z|.
_NORM_EPS = 1e-12
# The similarity products are tiny (B x B per domain); full f32 keeps accelerators off TF32/bf16 passes.
_HIGHEST = jax.lax.Precision.HIGHEST

_warned_num_domains: set[int] = set()


def check_num_domains(num_domains: int) -> bool:
  """Warns (once per distinct count) when the inter-domain term is degenerate; returns True if D >= 3.

  With one domain there is no other centre, with two there is exactly one, so Q is one-hot and H_inter is
  identically zero either way.
  """
  if num_domains >= 3:
    return True
  if num_domains not in _warned_num_domains:
    _warned_num_domains.add(num_domains)
    message = (
        f"generalization loss with {num_domains} domain(s): the inter-domain entropy is identically "
        "zero for D < 3 (docs/method.md step 6); add target or auxiliary domains (data.targets, "
        "data.auxiliary) to use the inter-domain term"
    )
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    logging.warning(message)
  return False


def sample_domain_items(key: jax.Array, num_items_D: Sequence[int], samples_per_domain: int) -> jax.Array:
  """Draws `samples_per_domain` items per domain uniformly (with replacement) from the real items.

  Args:
    key: PRNG key.
    num_items_D: number of real items I_d of each domain (indices 1..I_d; 0 is padding and never drawn).
    samples_per_domain: B.

  Returns:
    idx_DxB int32 with idx[d] in 1..I_d. Each domain uses its own subkey, so draws are independent across
    domains (one key for all rows would reuse the same random bits in every row).
  """
  num_items = tuple(int(n) for n in num_items_D)
  if not num_items:
    raise ValueError("sample_domain_items: num_items_D is empty; need at least one domain")
  bad = [n for n in num_items if n < 1]
  if bad:
    raise ValueError(
        f"sample_domain_items: every domain needs at least one real item, got num_items_D={num_items}"
    )
  if samples_per_domain < 1:
    raise errors.ConfigError(
        f"sample_domain_items: samples_per_domain must be >= 1, got {samples_per_domain} "
        "(config.gen_loss.samples_per_domain)"
    )
  keys = jax.random.split(key, len(num_items))
  maxval_D = jnp.asarray(num_items, jnp.int32) + 1  # randint's maxval is exclusive

  def one_domain(k, maxval):
    return jax.random.randint(k, (samples_per_domain,), 1, maxval, dtype=jnp.int32)

  return jax.vmap(one_domain)(keys, maxval_D)


def _normalize(x: jax.Array) -> jax.Array:
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, _NORM_EPS**2))


def _entropy(logits: jax.Array) -> jax.Array:
  """Entropy of softmax(logits) along the last axis; log_softmax keeps 0 * log 0 at exactly 0."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def intra_entropy(z_DxBxH: jax.Array, tau) -> jax.Array:
  """[D, B] entropy of each item's softmax over its own domain's sampled items (itself included)."""
  zn = _normalize(z_DxBxH)
  cos_DxBxB = jnp.einsum("dih,djh->dij", zn, zn, precision=_HIGHEST)
  return _entropy(cos_DxBxB / tau)


def inter_entropy(z_DxBxH: jax.Array, tau) -> jax.Array:
  """[D, B] entropy of each item's softmax over the other domains' centres (own domain masked out)."""
  num_domains = z_DxBxH.shape[0]
  centres_DxH = jnp.mean(z_DxBxH, axis=1)  # unnormalised z, as in docs/method.md; cos normalises below
  cos_DxBxE = jnp.einsum("dih,eh->die", _normalize(z_DxBxH), _normalize(centres_DxH), precision=_HIGHEST)
  own_DxE = jnp.eye(num_domains, dtype=bool)[:, None, :]
  logits = jnp.where(own_DxE, _MASK_LOGIT, cos_DxBxE / tau)
  return _entropy(logits)


def generalization_loss(
    z_DxBxH: jax.Array, alpha, tau, inter_sign=1, use_intra: bool = True, use_inter: bool = True
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_gen of docs/method.md step 6 on the aligned vectors of B sampled items from each of D domains.

  Args:
    z_DxBxH: alignment projections z = W_a e_sem + b_a, domain-major. Computed in float32.
    alpha: weight of the intra term (config.gen_loss.alpha); beta = alpha * N / D^3 is derived from it.
    tau: softmax temperature (config.gen_loss.tau), > 0.
    inter_sign: +1 minimises H_inter (default), -1 maximises it (the printed Eq. 9/13).
    use_intra, use_inter: Python bools, or 0/1 float gates (traced inside a compiled train step, so that
      the ablations share one program); a disabled term contributes exactly zero to loss and gradient
      (its entropy is still reported in the metrics).

  Returns:
    (loss, metrics) with metrics 'h_intra', 'h_inter', 'beta', 'loss' (scalars).
  """
  if z_DxBxH.ndim != 3:
    raise ValueError(f"generalization_loss: expected z of shape [domains, samples, dim], got {z_DxBxH.shape}")
  for name, gate in (("use_intra", use_intra), ("use_inter", use_inter)):
    if not isinstance(gate, (bool, jax.Array, np.ndarray)):
      raise TypeError(
          f"generalization_loss: {name} must be a Python bool or a 0/1 array gate "
          f"(config.gen_loss.{name}), got {type(gate).__name__}"
      )
  if isinstance(inter_sign, (int, float)) and inter_sign not in (1, -1):
    raise errors.ConfigError(
        f"generalization_loss: inter_sign must be +1 or -1, got {inter_sign} (config.gen_loss.inter_sign)"
    )
  if isinstance(tau, (int, float)) and tau <= 0:
    raise errors.ConfigError(f"generalization_loss: tau must be > 0, got {tau} (config.gen_loss.tau)")
  num_domains, samples, _ = z_DxBxH.shape
  if use_inter is not False:
    check_num_domains(num_domains)
  z = z_DxBxH.astype(jnp.float32)

  h_intra = jnp.mean(intra_entropy(z, tau))
  h_inter = jnp.mean(inter_entropy(z, tau))
  # beta = alpha * N / D^3 with N = B * D.
  beta = jnp.asarray(alpha, jnp.float32) * (samples * num_domains) / num_domains**3
  loss = jnp.zeros((), jnp.float32)
  # A gate multiplies a finite entropy, so a 0 gate gives exactly zero loss and gradient, as a False does.
  if use_intra is True:
    loss = loss - alpha * h_intra
  elif use_intra is not False:
    loss = loss - jnp.asarray(use_intra, jnp.float32) * alpha * h_intra
  if use_inter is True:
    loss = loss + inter_sign * beta * h_inter
  elif use_inter is not False:
    loss = loss + jnp.asarray(use_inter, jnp.float32) * inter_sign * beta * h_inter
  metrics = {"h_intra": h_intra, "h_inter": h_inter, "beta": beta, "loss": loss}
  return loss, metrics
