"""Tests of the generalization loss against a float64 numpy reference, finite differences and goldens."""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recg_jax import gen_loss


def _np_softmax_entropy(logits):
  logits = logits - logits.max()
  p = np.exp(logits) / np.exp(logits).sum()
  nz = p > 0
  return -np.sum(p[nz] * np.log(p[nz]))


def reference_loss(z, alpha, tau, inter_sign=1, use_intra=True, use_inter=True):
  """docs/method.md step 6 written out item by item in float64 numpy."""
  z = np.asarray(z, np.float64)
  num_domains, samples, _ = z.shape
  unit = z / np.linalg.norm(z, axis=-1, keepdims=True)
  centres = z.mean(axis=1)
  unit_centres = centres / np.linalg.norm(centres, axis=-1, keepdims=True)
  h_intra, h_inter = [], []
  for d in range(num_domains):
    for i in range(samples):
      h_intra.append(_np_softmax_entropy(np.array([unit[d, i] @ unit[d, j] for j in range(samples)]) / tau))
      others = [e for e in range(num_domains) if e != d]
      h_inter.append(_np_softmax_entropy(np.array([unit[d, i] @ unit_centres[e] for e in others]) / tau))
  h_intra, h_inter = np.mean(h_intra), np.mean(h_inter)
  n = samples * num_domains
  beta = alpha * n / num_domains**3
  loss = -alpha * h_intra * use_intra + inter_sign * beta * h_inter * use_inter
  return loss, {"h_intra": h_intra, "h_inter": h_inter, "beta": beta, "loss": loss}


def independent_jnp_loss(z, alpha, tau, inter_sign=1):
  """A second jnp version written differently: explicit other-domain gather, softmax then log, no mask."""
  num_domains, samples, _ = z.shape
  unit = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  flat = unit.reshape(num_domains * samples, -1)
  h_intra = 0.0
  for d in range(num_domains):
    block = flat[d * samples : (d + 1) * samples]
    p = jax.nn.softmax(block @ block.T / tau, axis=1)
    h_intra += -jnp.sum(p * jnp.log(p)) / (num_domains * samples)
  centres = jnp.stack([z[d].sum(0) / samples for d in range(num_domains)])
  unit_c = centres / jnp.linalg.norm(centres, axis=-1, keepdims=True)
  h_inter = 0.0
  for d in range(num_domains):
    others = unit_c[jnp.array([e for e in range(num_domains) if e != d])]
    q = jax.nn.softmax(unit[d] @ others.T / tau, axis=1)
    h_inter += -jnp.sum(q * jnp.log(q)) / (num_domains * samples)
  beta = alpha * samples / num_domains**2
  return -alpha * h_intra + inter_sign * beta * h_inter


def _grad(fn):
  # One compile per function is much faster on CPU than differentiating op by op.
  return jax.jit(jax.grad(fn))


def _z(shape, seed=0, scale=1.0):
  return np.asarray(np.random.default_rng(seed).normal(size=shape) * scale, np.float32)


@pytest.mark.parametrize(
    "tau,inter_sign,use_intra,use_inter",
    [
        (1.0, 1, True, True),
        (0.2, -1, True, True),
        (0.5, 1, False, True),
        (0.5, 1, True, False),
    ],
)
def test_matches_numpy_reference(tau, inter_sign, use_intra, use_inter):
  z = _z((4, 6, 5), seed=1) + 0.3  # offset so that centres are not near zero
  alpha = 0.01
  loss, metrics = gen_loss.generalization_loss(jnp.asarray(z), alpha, tau, inter_sign, use_intra, use_inter)
  ref_loss, ref_metrics = reference_loss(z, alpha, tau, inter_sign, use_intra, use_inter)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-5, atol=1e-8)
  assert set(metrics) == {"h_intra", "h_inter", "beta", "loss"}
  for name, value in ref_metrics.items():
    np.testing.assert_allclose(float(metrics[name]), value, rtol=2e-5, atol=1e-8, err_msg=name)
  # beta = alpha * N / D^3 with N = B * D.
  np.testing.assert_allclose(float(metrics["beta"]), alpha * 24 / 64, rtol=1e-6)


def test_gradient_matches_float64_finite_differences():
  z = _z((3, 4, 3), seed=2) + 0.2
  alpha, tau = 0.1, 0.5
  grad = np.asarray(_grad(lambda v: gen_loss.generalization_loss(v, alpha, tau)[0])(jnp.asarray(z)))
  z64 = z.astype(np.float64)
  fd = np.zeros_like(z64)
  h = 1e-6
  for idx in np.ndindex(z64.shape):
    plus, minus = z64.copy(), z64.copy()
    plus[idx] += h
    minus[idx] -= h
    fd[idx] = (reference_loss(plus, alpha, tau)[0] - reference_loss(minus, alpha, tau)[0]) / (2 * h)
  assert np.abs(fd).max() > 1e-3  # the check is not vacuous
  np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=2e-6)


@pytest.mark.parametrize("inter_sign", [1, -1])
def test_gradient_matches_independent_implementation(inter_sign):
  z = jnp.asarray(_z((3, 5, 4), seed=3) + 0.1)
  ours = _grad(lambda v: gen_loss.generalization_loss(v, 0.05, 0.3, inter_sign)[0])(z)
  theirs = _grad(lambda v: independent_jnp_loss(v, 0.05, 0.3, inter_sign))(z)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-7)


def test_uniform_golden():
  # Every item of domain d equals e_d (orthonormal): each intra row is uniform over B items, and every item
  # is orthogonal to both other centres, so each inter row is uniform over D - 1 = 2 centres.
  samples = 5
  z = np.repeat(np.eye(3, 4, dtype=np.float32)[:, None, :], samples, axis=1) * 2.5
  _, metrics = gen_loss.generalization_loss(jnp.asarray(z), 0.001, 0.7)
  np.testing.assert_allclose(float(metrics["h_intra"]), math.log(samples), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["h_inter"]), math.log(2), rtol=1e-6)
  expected = -0.001 * math.log(samples) + 0.001 * samples / 9 * math.log(2)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-6)


def test_two_domains_inter_term_and_gradient_are_exactly_zero():
  z = jnp.asarray(_z((2, 6, 4), seed=4, scale=3.0))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    inter_only = lambda v: gen_loss.generalization_loss(v, 0.1, 0.05, 1, use_intra=False)[0]
    loss, metrics = gen_loss.generalization_loss(z, 0.1, 0.05, 1)
    assert float(inter_only(z)) == 0.0
    assert float(metrics["h_inter"]) == 0.0
    assert np.all(np.asarray(_grad(inter_only)(z)) == 0.0)
    # With both terms the gradient is the intra gradient (up to XLA's reassociation under jit).
    both = _grad(lambda v: gen_loss.generalization_loss(v, 0.1, 0.05, 1)[0])(z)
    intra = _grad(lambda v: gen_loss.generalization_loss(v, 0.1, 0.05, 1, use_inter=False)[0])(z)
  np.testing.assert_allclose(np.asarray(both), np.asarray(intra), rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(float(loss), -0.1 * float(metrics["h_intra"]), rtol=1e-7)


def test_warns_once_for_fewer_than_three_domains(monkeypatch):
  monkeypatch.setattr(gen_loss, "_warned_num_domains", set())
  z = jnp.asarray(_z((2, 3, 4)))
  with pytest.warns(RuntimeWarning, match="2 domain"):
    gen_loss.generalization_loss(z, 0.1, 1.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a second call must stay silent
    gen_loss.generalization_loss(z, 0.1, 1.0)
    assert gen_loss.check_num_domains(3)
  with pytest.warns(RuntimeWarning, match="1 domain"):
    assert not gen_loss.check_num_domains(1)


def test_inter_sign_flips_inter_contribution():
  z = jnp.asarray(_z((3, 4, 5), seed=5))
  plus = gen_loss.generalization_loss(z, 0.02, 0.5, 1)[1]
  minus = gen_loss.generalization_loss(z, 0.02, 0.5, -1)[1]
  np.testing.assert_allclose(
      float(plus["loss"] - minus["loss"]), 2 * float(plus["beta"] * plus["h_inter"]), rtol=1e-5
  )
  grad_fn = lambda s: _grad(lambda v: gen_loss.generalization_loss(v, 0.02, 0.5, s, use_intra=False)[0])
  grad_plus, grad_minus = np.asarray(grad_fn(1)(z)), np.asarray(grad_fn(-1)(z))
  np.testing.assert_allclose(grad_plus, -grad_minus, rtol=1e-6)
  assert np.abs(grad_plus).max() > 0


def test_switches_zero_their_terms():
  z = jnp.asarray(_z((3, 4, 5), seed=6))
  alpha = 0.03
  m = gen_loss.generalization_loss(z, alpha, 1.0)[1]
  intra_only = gen_loss.generalization_loss(z, alpha, 1.0, use_inter=False)[0]
  inter_only = gen_loss.generalization_loss(z, alpha, 1.0, use_intra=False)[0]
  np.testing.assert_allclose(float(intra_only), -alpha * float(m["h_intra"]), rtol=1e-6)
  np.testing.assert_allclose(float(inter_only), float(m["beta"] * m["h_inter"]), rtol=1e-6)
  np.testing.assert_allclose(float(intra_only + inter_only), float(m["loss"]), rtol=1e-6)
  none = lambda v: gen_loss.generalization_loss(v, alpha, 1.0, use_intra=False, use_inter=False)[0]
  assert float(none(z)) == 0.0
  assert np.all(np.asarray(_grad(none)(z)) == 0.0)


def test_gradients_finite_with_mask_small_tau_and_zero_vector():
  z = _z((3, 4, 5), seed=7, scale=100.0)
  z[1, 2] = 0.0  # a zero vector: normalisation must not divide by zero
  grad = _grad(lambda v: gen_loss.generalization_loss(v, 0.1, 0.01)[0])(jnp.asarray(z))
  assert np.all(np.isfinite(np.asarray(grad)))
  loss, metrics = gen_loss.generalization_loss(jnp.asarray(z), 0.1, 0.01)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # Entropies are bounded by the log of the support sizes.
  assert 0.0 <= float(metrics["h_intra"]) <= math.log(4) + 1e-6
  assert 0.0 <= float(metrics["h_inter"]) <= math.log(2) + 1e-6


def test_jit_matches_eager_and_bfloat16_input():
  z = jnp.asarray(_z((3, 4, 5), seed=8))
  fn = jax.jit(functools.partial(gen_loss.generalization_loss, inter_sign=1, use_intra=True, use_inter=True))
  np.testing.assert_allclose(
      float(fn(z, 0.01, 0.5)[0]), float(gen_loss.generalization_loss(z, 0.01, 0.5)[0]), rtol=1e-6
  )
  loss_bf16 = gen_loss.generalization_loss(z.astype(jnp.bfloat16), 0.01, 0.5)[0]
  assert loss_bf16.dtype == jnp.float32


def test_bad_arguments_raise():
  z = jnp.ones((3, 2, 4))
  with pytest.raises(ValueError, match="inter_sign"):
    gen_loss.generalization_loss(z, 0.1, 1.0, inter_sign=0)
  with pytest.raises(ValueError, match="tau"):
    gen_loss.generalization_loss(z, 0.1, 0.0)
  with pytest.raises(ValueError, match="shape"):
    gen_loss.generalization_loss(jnp.ones((3, 4)), 0.1, 1.0)
  with pytest.raises(ValueError, match="samples_per_domain"):
    gen_loss.sample_domain_items(jax.random.key(0), (3,), 0)
  with pytest.raises(ValueError, match="at least one real item"):
    gen_loss.sample_domain_items(jax.random.key(0), (3, 0), 4)


def test_sample_domain_items_range_uniformity_and_determinism():
  num_items = (1, 2, 7, 7)
  idx = gen_loss.sample_domain_items(jax.random.key(0), num_items, 14000)
  assert idx.shape == (4, 14000) and idx.dtype == jnp.int32
  idx = np.asarray(idx)
  assert idx.min() >= 1  # the padding row 0 is never drawn
  for d, n in enumerate(num_items):
    assert idx[d].max() <= n
    counts = np.bincount(idx[d], minlength=n + 1)
    assert counts[0] == 0
    # Uniform over 1..n: each count within 5 standard deviations of 14000 / n.
    expected = 14000 / n
    sd = math.sqrt(14000 * (1 / n) * (1 - 1 / n)) if n > 1 else 0.0
    assert np.all(np.abs(counts[1:] - expected) <= 5 * sd + 1e-9), counts
  # Independent draws for equal-sized domains; same key, same draw.
  assert not np.array_equal(idx[2], idx[3])
  again = np.asarray(gen_loss.sample_domain_items(jax.random.key(0), num_items, 14000))
  np.testing.assert_array_equal(idx, again)


def test_traced_gates_equal_the_switches_under_jit():
  # The train step passes use_intra / use_inter as traced 0/1 gates, so that ablations share one program.
  z = jnp.asarray(_z((3, 4, 5), seed=7))
  gated = jax.jit(lambda v, gi, ge: gen_loss.generalization_loss(v, 0.03, 0.7, 1, gi, ge)[0])
  for intra, inter in ((True, True), (True, False), (False, True), (False, False)):
    want = gen_loss.generalization_loss(z, 0.03, 0.7, 1, intra, inter)[0]
    got = gated(z, jnp.float32(intra), jnp.float32(inter))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=0)
  # A 0 gate contributes exactly nothing, to the loss and to the gradient.
  both_off = jax.grad(lambda v: gated(v, jnp.float32(0), jnp.float32(0)))(z)
  assert float(gated(z, jnp.float32(0), jnp.float32(0))) == 0.0 and np.all(np.asarray(both_off) == 0.0)
  with pytest.raises(TypeError, match="use_intra"):
    gen_loss.generalization_loss(z, 0.03, 0.7, 1, 1, True)
