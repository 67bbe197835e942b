"""Closed forms in geometry.theory against exact values and Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geometry import theory


def test_prob_any_dead_closed_form_and_monte_carlo():
    np.testing.assert_allclose(theory.prob_any_dead([0, 1, 2, 10]), [0, 0.5, 0.75, 1 - 2**-10], rtol=1e-15)
    rng = np.random.default_rng(0)
    trials = 200_000
    for n in (1, 3, 6):
        z = rng.standard_normal((trials, n))
        measured = np.mean(np.any(z <= 0, axis=1))
        p = theory.prob_any_dead(n)
        assert abs(measured - p) < 5 * math.sqrt(p * (1 - p) / trials)


def test_prob_any_dead_deep_layers_monte_carlo():
    # zero-bias He ReLU net: once a layer is all dead, later pre-activations are exactly 0
    key = jax.random.key(1)
    trials, n, depth = 100_000, 2, 3
    keys = jax.random.split(key, depth + 1)
    h = jax.random.normal(keys[0], (trials, 5))
    for l in range(depth):
        w = jax.random.normal(keys[l + 1], (trials, n, h.shape[1])) * jnp.sqrt(2.0 / h.shape[1])
        z = jnp.einsum("tij,tj->ti", w, h)
        measured = float(jnp.mean(jnp.any(z <= 0, axis=1)))
        p = float(theory.prob_any_dead(n, layer=l + 1))
        assert abs(measured - p) < 5 * math.sqrt(p * (1 - p) / trials), (l, measured, p)
        h = jax.nn.relu(z)


def test_prob_relu_rank_deficient_exact_and_monte_carlo():
    assert theory.prob_relu_rank_deficient(4, 2) == 5 / 16  # C(4,0)+C(4,1) = 5
    assert theory.prob_relu_rank_deficient(3, 5) == 1.0  # m < n: never full column rank
    for m, n in ((7, 3), (30, 10)):
        expected = sum(math.comb(m, k) for k in range(n)) / 2**m
        np.testing.assert_allclose(theory.prob_relu_rank_deficient(m, n), expected, rtol=1e-15)
    rng = np.random.default_rng(2)
    trials, m, n = 20_000, 6, 3
    W = rng.standard_normal((trials, m, n))
    x = rng.standard_normal((trials, n))
    active = np.einsum("tij,tj->ti", W, x) > 0
    ranks = np.array([np.linalg.matrix_rank(w[a]) if a.any() else 0 for w, a in zip(W, active)])
    p = theory.prob_relu_rank_deficient(m, n)
    assert abs(np.mean(ranks < n) - p) < 5 * math.sqrt(p * (1 - p) / trials)
    with pytest.raises(ValueError):
        theory.prob_relu_rank_deficient(0, 2)


def test_mean_field_closed_forms():
    # ReLU: q* = σ_b² / (1 − σ_w²/2), χ₁ = σ_w²/2; identity: q* = σ_b²/(1 − σ_w²), χ₁ = σ_w²
    q, chi = theory.mean_field("relu", 1.5, 0.1)
    np.testing.assert_allclose([q, chi], [0.1 / 0.25, 0.75], rtol=1e-10)
    q, chi = theory.mean_field("identity", 0.5, 0.2)
    np.testing.assert_allclose([q, chi], [0.4, 0.5], rtol=1e-10)
    q, chi = theory.mean_field("relu", 3.0, 0.0)
    assert q == math.inf and chi == pytest.approx(1.5, rel=1e-12)
    q, chi = theory.mean_field("tanh", 1.0, 0.0)  # critical point: q* = 0, χ₁ = 1
    assert q < 1e-8 and chi == pytest.approx(1.0, abs=1e-8)
    q, chi = theory.mean_field("relu", 1.5, 0.0)  # q → 0 geometrically, but χ₁ is still σ_w²/2
    assert q == 0.0 and chi == pytest.approx(0.75, rel=1e-12)
    q, chi = theory.mean_field("relu", 2.0, 0.0, q0=3.0)  # degenerate criticality: every q is fixed
    assert q == pytest.approx(3.0, rel=1e-12) and chi == pytest.approx(1.0, rel=1e-12)
    q, _ = theory.mean_field("relu", 1.9999, 0.3)  # near-critical: q* = σ_b² / (1 − σ_w²/2) = 6000
    assert q == pytest.approx(6000.0, rel=1e-8)


def test_mean_field_tanh_against_monte_carlo():
    sigma_w2, sigma_b2 = 1.8, 0.05
    q_star, chi1 = theory.mean_field("tanh", sigma_w2, sigma_b2)
    z = np.random.default_rng(3).standard_normal(2_000_000)
    # the fixed point satisfies its own length map, checked with an independent estimator
    mapped = sigma_w2 * np.mean(np.tanh(np.sqrt(q_star) * z) ** 2) + sigma_b2
    np.testing.assert_allclose(mapped, q_star, rtol=3e-3)
    np.testing.assert_allclose(sigma_w2 * np.mean((1 - np.tanh(np.sqrt(q_star) * z) ** 2) ** 2), chi1, rtol=3e-3)
    # and a wide random tanh network's pre-activation variance settles at q*
    rng = np.random.default_rng(4)
    width = 2000
    h = rng.standard_normal(width)
    for _ in range(12):
        z_l = rng.standard_normal((width, width)) @ h * np.sqrt(sigma_w2 / width) + rng.standard_normal(width) * np.sqrt(sigma_b2)
        h = np.tanh(z_l)
    np.testing.assert_allclose(np.mean(z_l**2), q_star, rtol=0.08)


def test_fuss_catalan_numbers_and_gaussian_products():
    assert [theory.fuss_catalan(1, k) for k in range(7)] == [1, 1, 2, 5, 14, 42, 132]  # Catalan
    assert [theory.fuss_catalan(2, k) for k in range(5)] == [1, 1, 3, 12, 55]
    rng = np.random.default_rng(5)
    N, L, draws = 300, 2, 6
    moments = np.zeros(3)
    for _ in range(draws):
        M = np.eye(N)
        for _ in range(L):
            M = rng.standard_normal((N, N)) / np.sqrt(N) @ M
        eig = np.linalg.eigvalsh(M @ M.T)
        moments += [np.mean(eig**k) for k in (1, 2, 3)] / np.float64(draws)
    np.testing.assert_allclose(moments, [theory.fuss_catalan(L, k) for k in (1, 2, 3)], rtol=0.06)


def test_isometry_prediction_of_linear_gaussian_chain_is_fuss_catalan():
    # identity, Gaussian weights: mean 1 and variance/mean² = L = FC(L,2) − FC(L,1)²
    for L in (1, 3, 8):
        pred = theory.isometry_prediction("identity", 1.0, 0.0, L)
        assert pred["mean"] == pytest.approx(1.0)
        assert pred["variance_over_mean2"] == pytest.approx(theory.fuss_catalan(L, 2) - theory.fuss_catalan(L, 1) ** 2)
        assert theory.isometry_prediction("identity", 1.0, 0.0, L, weights="orthogonal")["variance_over_mean2"] == 0.0
    with pytest.raises(ValueError):
        theory.isometry_prediction("relu", 2.0, 0.0, 3, weights="sparse")


def test_critical_line():
    # ReLU: χ₁ = σ_w²/2 whatever σ_b², so the critical σ_w² is 2; tanh at σ_b² = 0 is critical at σ_w² = 1
    np.testing.assert_allclose(theory.critical_sigma_w2("relu", 0.3, lo=0.5, hi=5.0), 2.0, rtol=1e-8)
    # χ₁ − 1 grows only quadratically above σ_w² = 1 (≈3e-9 at 1.0001), so float64 pins the crossing to ~1e-6
    np.testing.assert_allclose(theory.critical_sigma_w2("tanh", 0.0, lo=0.5, hi=5.0), 1.0, rtol=1e-5)
    sigma_w2 = theory.critical_sigma_w2("tanh", 0.05)
    assert sigma_w2 > 1.0
    np.testing.assert_allclose(theory.mean_field("tanh", sigma_w2, 0.05)[1], 1.0, rtol=1e-8)
    with pytest.raises(ValueError, match="does not change sign"):
        theory.critical_sigma_w2("tanh", 0.05, lo=3.0, hi=5.0)


def test_low_derivative_zones_and_probability():
    from geometry import activations

    # tanh' = 1 − tanh² < t  ⇔  |z| > atanh(√(1 − t))
    c = math.atanh(math.sqrt(0.95))
    (a0, b0), (a1, b1) = activations.low_derivative_zones("tanh", 0.05, z_max=8.0)
    np.testing.assert_allclose([b0, a1], [-c, c], rtol=1e-10)
    assert a0 == -8.0 and b1 == 8.0
    for q in (0.5, 1.0, 9.0):
        np.testing.assert_allclose(theory.prob_low_derivative("tanh", q), math.erfc(c / math.sqrt(2 * q)), rtol=1e-10)
    assert theory.prob_low_derivative("relu", 3.0) == pytest.approx(0.5, abs=1e-12)
    assert theory.prob_low_derivative("identity", 3.0) == 0.0
    z = np.random.default_rng(6).standard_normal(1_000_000) * 1.7
    from geometry.activations import get

    measured = np.mean(np.abs(np.asarray(get("gelu").derivative(z))) < 0.05)
    np.testing.assert_allclose(theory.prob_low_derivative("gelu", 1.7**2), measured, atol=5 * math.sqrt(0.1 / 1e6))
