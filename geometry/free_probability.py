"""Free-probability predictions for the spectrum of deep-network Jacobians (Pennington, Schoenholz
& Ganguli 2017, 2018), as truncated power series, and the Fuss–Catalan density.

For J = D_L W_L ⋯ D_1 W_1 with N × N weights (entries of variance σ_w²/N, or σ_w × an orthogonal
matrix) and D_l = diag φ'(h_l) at the mean-field fixed point, the layers are asymptotically free,
so the S-transform of JJᵀ is the product of the layers':

    S_{JJᵀ}(z) = (S_{WWᵀ}(z) · S_{D²}(z))^L,   S_{WWᵀ} = 1/(σ_w²(1 + z)) (Gaussian), 1/σ_w² (orthogonal),

with S_X(z) = (1 + z)/z · ψ_X⁻¹(z) and ψ_X(x) = Σ_{k≥1} m_k(X) x^k the moment series. The moments
m_k(JJᵀ) = (1/N) tr (JJᵀ)^k follow by series reversion; D² enters through μ_k = E[φ'(h)^{2k}]
(`theory.derivative_moment`). Linear Gaussian layers give the Fuss–Catalan numbers (`theory.fuss_catalan`).

Fuss–Catalan density of the squared singular values of a product of L square Gaussian matrices
(Haagerup & Möller 2012; Neuschel 2014), parametrised by φ ∈ (0, π/(L + 1)):

    x(φ) = sin((L+1)φ)^(L+1) / (sin φ · sin(Lφ)^L),   ρ(x(φ)) = sin(φ)² sin(Lφ)^(L−1) / (π sin((L+1)φ)^L),

supported on (0, (L+1)^(L+1)/L^L].
"""

from __future__ import annotations

import numpy as np


def _multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.convolve(a, b)[: len(a)]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer(inner(z)) truncated, for inner with no constant term."""
    result, power = np.zeros_like(inner), np.zeros_like(inner)
    power[0] = 1.0
    for coefficient in outer:
        result = result + coefficient * power
        power = _multiply(power, inner)
    return result


def _reverse(series: np.ndarray) -> np.ndarray:
    """The compositional inverse of c₁z + c₂z² + … (c₀ = 0, c₁ ≠ 0), truncated to the same order."""
    if series[0] != 0 or series[1] == 0:
        raise ValueError("series reversion needs c0 = 0 and c1 != 0 (a first moment > 0)")
    inverse = np.zeros_like(series)
    inverse[1] = 1.0 / series[1]
    for n in range(2, len(series)):
        inverse[n] = -_compose(series, inverse)[n] / series[1]
    return inverse


def s_transform_from_moments(moments) -> np.ndarray:
    """Series of S(z) (coefficients of z⁰ … z^(K−1)) from moments m₁ … m_K."""
    psi = np.concatenate([[0.0], np.asarray(moments, np.float64)])  # ψ(x) = Σ m_k x^k
    chi = _reverse(psi)  # ψ⁻¹(z) = χ₁ z + …
    over_z = chi[1:]  # χ(z)/z
    one_plus_z = np.zeros(len(over_z))
    one_plus_z[0] = 1.0
    if len(over_z) > 1:
        one_plus_z[1] = 1.0
    return _multiply(one_plus_z, over_z)


def moments_from_s_transform(s_series) -> np.ndarray:
    """Moments m₁ … m_K from the series of S(z) (K coefficients)."""
    s_series = np.asarray(s_series, np.float64)
    K = len(s_series)
    geometric = (-1.0) ** np.arange(K)  # 1/(1 + z)
    chi = np.concatenate([[0.0], _multiply(s_series, geometric)])  # ψ⁻¹(z) = z S(z)/(1 + z)
    return _reverse(chi)[1:]


def jacobian_moments(derivative_moments, sigma_w2: float, depth: int, weights: str = "gaussian") -> np.ndarray:
    """Predicted m_k((1/N) tr (JJᵀ)^k), k = 1 … K, for K = len(derivative_moments) (μ_k = E φ'^{2k})."""
    if weights not in ("gaussian", "orthogonal"):
        raise ValueError(f"weights must be 'gaussian' or 'orthogonal', got {weights!r}")
    if not (np.isfinite(sigma_w2) and sigma_w2 > 0) or int(depth) != depth or depth < 1:
        raise ValueError(f"need sigma_w2 > 0 and an integer depth >= 1, got {sigma_w2}, {depth}")
    K = len(derivative_moments)
    s_weights = np.zeros(K)
    if weights == "gaussian":
        s_weights = ((-1.0) ** np.arange(K)) / sigma_w2  # 1/(σ_w²(1 + z))
    else:
        s_weights[0] = 1.0 / sigma_w2
    layer = _multiply(s_weights, s_transform_from_moments(derivative_moments))
    total = np.zeros(K)
    total[0] = 1.0
    for _ in range(int(depth)):
        total = _multiply(total, layer)
    return moments_from_s_transform(total)


def fuss_catalan_density(L: int, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """(x ascending, ρ(x)) of the squared singular values of a product of L square Gaussian matrices."""
    if int(L) != L or L < 1:
        raise ValueError(f"L must be an integer >= 1, got {L}")
    phi = np.linspace(0.0, np.pi / (L + 1), points + 2)[1:-1]
    x = np.sin((L + 1) * phi) ** (L + 1) / (np.sin(phi) * np.sin(L * phi) ** L)
    density = np.sin(phi) ** 2 * np.sin(L * phi) ** (L - 1) / (np.pi * np.sin((L + 1) * phi) ** L)
    order = np.argsort(x)
    return x[order], density[order]


def fuss_catalan_cdf(L: int, x) -> np.ndarray:
    """P(λ ≤ x) under the Fuss–Catalan law (trapezoid integral of the density, with the mass in the
    integrable singularity at 0 recovered as 1 − the integral over the grid)."""
    grid, density = fuss_catalan_density(L)
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    cumulative += 1.0 - cumulative[-1]  # the part below grid[0] (ρ ~ x^(−L/(L+1)) there)
    return np.interp(np.asarray(x, np.float64), grid, cumulative, left=0.0, right=1.0)
