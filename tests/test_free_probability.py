"""Free-probability predictions (geometry.free_probability) against closed forms."""

import numpy as np
import pytest

from geometry import free_probability, theory


@pytest.mark.parametrize("L", [1, 2, 3, 6])
def test_linear_gaussian_layers_give_fuss_catalan_moments(L):
    moments = free_probability.jacobian_moments([1.0] * 5, 1.0, L)
    assert moments.tolist() == pytest.approx([theory.fuss_catalan(L, k) for k in range(1, 6)], rel=1e-12)


@pytest.mark.parametrize("weights, s1", [("gaussian", -1.0), ("orthogonal", 0.0)])
@pytest.mark.parametrize("mu", [(0.5, 0.5), (0.8, 0.7), (0.3, 0.12)])
def test_mean_and_variance_match_pennington_et_al(weights, s1, mu):
    """m₁ = (σ_w² μ₁)^L and m₂/m₁² − 1 = L(μ₂/μ₁² − 1 − s₁) (Pennington, Schoenholz & Ganguli 2017)."""
    sigma_w2, L = 1.7, 5
    m = free_probability.jacobian_moments([mu[0], mu[1], 0.1, 0.05], sigma_w2, L, weights)
    np.testing.assert_allclose(m[0], (sigma_w2 * mu[0]) ** L, rtol=1e-12)
    np.testing.assert_allclose(m[1] / m[0] ** 2 - 1, L * (mu[1] / mu[0] ** 2 - 1 - s1), rtol=1e-10)


def test_series_round_trip_and_marchenko_pastur():
    moments = np.array([1.0, 2.0, 5.0, 14.0])  # Marchenko–Pastur, ratio 1: S(z) = 1/(1 + z)
    s = free_probability.s_transform_from_moments(moments)
    np.testing.assert_allclose(s, [1.0, -1.0, 1.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(free_probability.moments_from_s_transform(s), moments, rtol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 4])
def test_fuss_catalan_density_has_unit_mass_and_the_right_moments(L):
    x, rho = free_probability.fuss_catalan_density(L, points=20000)
    assert x.max() == pytest.approx((L + 1) ** (L + 1) / L**L, rel=1e-6)
    for k in (1, 2):
        integrand = 0.5 * (rho[1:] * x[1:] ** k + rho[:-1] * x[:-1] ** k) * np.diff(x)
        np.testing.assert_allclose(integrand.sum(), theory.fuss_catalan(L, k), rtol=1e-4)
    cdf = free_probability.fuss_catalan_cdf(L, np.array([0.0, x.max() / 2, x.max() * 2]))
    assert cdf[0] == 0.0 and 0 < cdf[1] < 1 and cdf[2] == 1.0
    if L == 1:  # Marchenko–Pastur: P(λ ≤ 1) = 1/3 + √3/(2π)
        np.testing.assert_allclose(free_probability.fuss_catalan_cdf(1, 1.0), 1 / 3 + np.sqrt(3) / (2 * np.pi),
                                   atol=2e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="weights must be"):
        free_probability.jacobian_moments([1.0], 1.0, 2, "uniform")
    with pytest.raises(ValueError, match="depth"):
        free_probability.jacobian_moments([1.0], 1.0, 0)
    with pytest.raises(ValueError, match="first moment"):
        free_probability.jacobian_moments([0.0, 1.0], 1.0, 2)
    with pytest.raises(ValueError, match="L must be"):
        free_probability.fuss_catalan_density(0)
