"""Closed forms in geometry.theory against exact values and Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from geometry import activations, theory


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


# mpmath versions of every activation in NAMES: the reference shares no code with the library
_MP = {
    "identity": (lambda h: h, lambda h: 1),
    "relu": (lambda h: max(h, 0), lambda h: 1 if h > 0 else 0),
    "leaky_relu": (lambda h: h if h > 0 else 0.01 * h, lambda h: 1 if h > 0 else 0.01),
    "sigmoid": (lambda h: 1 / (1 + mpmath.exp(-h)), lambda h: mpmath.exp(-h) / (1 + mpmath.exp(-h)) ** 2),
    "tanh": (mpmath.tanh, lambda h: 1 / mpmath.cosh(h) ** 2),
    "gelu": (lambda h: h * mpmath.ncdf(h), lambda h: mpmath.ncdf(h) + h * mpmath.npdf(h)),
    "silu": (lambda h: h / (1 + mpmath.exp(-h)),
             lambda h: 1 / (1 + mpmath.exp(-h)) + h * mpmath.exp(-h) / (1 + mpmath.exp(-h)) ** 2),
    "softplus": (lambda h: mpmath.log1p(mpmath.exp(h)), lambda h: 1 / (1 + mpmath.exp(-h))),
    "elu": (lambda h: h if h > 0 else mpmath.expm1(h), lambda h: 1 if h > 0 else mpmath.exp(h)),
}


def _mp_expectation(g, q):
    """E[g(√q z)], z ~ N(0, 1), by mpmath's adaptive tanh-sinh quadrature in 25 digits, split at 0 and
    at the integrand's own scale ±1/√q."""
    with mpmath.workdps(25):
        s = mpmath.sqrt(q)
        points = sorted({-mpmath.inf, mpmath.inf, 0, -1 / s, 1 / s, -4 / s, 4 / s})
        return mpmath.quad(lambda z: g(s * z) * mpmath.npdf(z), points)


@pytest.mark.parametrize("name", sorted(_MP))
def test_mean_field_is_exact_for_every_activation_over_the_whole_range(name):
    """σ_w² from 0.1 to 100 and σ_b² from 0 to 2: q* is a fixed point of the length map and χ₁ the
    derivative moment at it, both to 1e-8 relative, against mpmath (the fixed 128-node rule was off by
    up to 4.5× at σ_w² = 100, and 0.9% for ELU at σ_w² = 1.7)."""
    assert set(_MP) == set(activations.NAMES)
    phi, derivative = _MP[name]
    for sigma_w2 in (0.1, 1.0, 1.7, 10.0, 100.0):
        for sigma_b2 in (0.0, 0.2, 2.0):
            q_star, chi1 = theory.mean_field(name, sigma_w2, sigma_b2)
            if not (1e-20 < q_star < np.inf):
                continue  # diverging or vanishing length maps (q* 0 up to Q_ZERO) have their own closed-form tests
            image = sigma_w2 * _mp_expectation(lambda h: phi(h) ** 2, q_star) + sigma_b2
            assert abs(float(image) - q_star) <= 1e-8 * q_star, (name, sigma_w2, sigma_b2, q_star, float(image))
            expected = sigma_w2 * _mp_expectation(lambda h: derivative(h) ** 2, q_star)
            assert abs(chi1 - float(expected)) <= 1e-8 * float(expected), (name, sigma_w2, sigma_b2, chi1, expected)


def test_the_referees_cases_and_a_monte_carlo_check():
    q_star, chi1 = theory.mean_field("elu", 1.7, 0.2)
    assert chi1 == pytest.approx(1.0048, abs=1e-4)  # the referee's adaptive-quadrature value (was 0.9960)
    q_star, chi1 = theory.mean_field("tanh", 100.0, 0.0)
    z = np.random.default_rng(0).standard_normal(2_000_000)
    monte_carlo = 100.0 * np.mean(1 / np.cosh(np.sqrt(q_star) * z) ** 4)
    assert chi1 == pytest.approx(monte_carlo, rel=5 * 100.0 * np.std(1 / np.cosh(np.sqrt(q_star) * z) ** 4)
                                 / np.sqrt(z.size) / monte_carlo)
    assert chi1 == pytest.approx(5.54, abs=0.01)  # was 1.22


def test_an_integrand_the_quadrature_cannot_resolve_is_refused():
    with pytest.raises(ValueError, match="NaN or inf on the line"):
        theory.gaussian_expectation(lambda h: np.where(h > 1, np.inf, 0.0))
    with pytest.raises(ValueError, match="did not reach 1e-8 relative accuracy"):
        theory.gaussian_expectation(lambda h: 1 / np.abs(h - 0.3))  # not integrable: no number is right
    # an integrand oscillating far below the first pieces' width is refined until it is resolved
    assert theory.gaussian_expectation(lambda h: np.cos(300 * h) + 2.0) == pytest.approx(2.0, rel=1e-10)
    with pytest.raises(ValueError, match="at most 4096 pieces"):
        theory.gaussian_expectation(lambda h: np.cos(1e6 * h) + 2.0)  # would need millions of pieces
    with pytest.raises(ValueError, match="q must be a finite number ≥ 0"):
        theory.gaussian_expectation(lambda h: h**2, q=float("nan"))
