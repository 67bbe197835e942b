"""Closed forms: ground truth for tests and theory overlays for figures.

* ReLU dead units. With iid symmetric pre-activations, P(at least one of n units
  has z ≤ 0) = 1 − 2⁻ⁿ (deeper layers: see `prob_any_dead`). For an m×n Gaussian W and a fixed x ≠ 0 the pre-activations
  z = Wx are iid N(0, ‖x‖²σ²), and any k ≥ n rows of W span Rⁿ almost surely, so
  rank(D_φ W) < n iff fewer than n units are active: P = P(Binomial(m, ½) < n).
* Mean field (Poole et al. 2016; Schoenholz et al. 2017). Length map
  q ← σ_w² E[φ(√q z)²] + σ_b², z ~ N(0, 1), iterated to its fixed point q*;
  χ₁ = σ_w² E[φ'(√q* z)²] is the mean squared singular value of one layer's Jacobian,
  so the end-to-end Jacobian of L layers has mean eigenvalue of JJᵀ equal to χ₁^L.
* Free probability (Pennington et al. 2017/2018): with μ_k = E[φ'(√q* z)^{2k}], the
  eigenvalues of JJᵀ have variance / mean² = L (μ₂/μ₁² − 1 − s₁), s₁ = −1 for Gaussian
  and 0 for orthogonal weights.
* Products of L square Gaussian matrices (entries N(0, 1/N), N → ∞): the k-th moment of
  the eigenvalues of MMᵀ is the Fuss–Catalan number C((L+1)k, k) / (Lk + 1).

Expectations over z ~ N(0, 1) are computed by adaptive Gauss–Legendre quadrature
(`gaussian_expectation`): the line is cut at 0 (where ReLU, leaky ReLU and ELU have their
kink) and at multiples of 1/√q (where φ(√q z) changes on the scale of the integrand, however
narrow: tanh'(√q z)² at σ_w² = 100 lives within |z| < 0.3), and every piece whose 10- and
21-node rules disagree is halved until the total agrees to `EXPECTATION_RTOL`. Where that
cannot be reached the functions raise instead of returning a number. (A fixed 128-node
Gauss–Hermite rule, used before, gave χ₁ = 1.22 for tanh at σ_w² = 100 where the truth is 5.54.)
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np
from numpy.polynomial.legendre import leggauss

from geometry import activations, validation

EXPECTATION_RTOL = 1e-11  # the quadrature's target; a result it cannot bring within 1e-8 is refused
_REFUSE_RTOL = 1e-8
_Z_MAX = 40.0  # the Gaussian mass beyond |z| = 40 is below 1e-348: nothing float64 can hold
_COARSE, _FINE = leggauss(10), leggauss(21)  # nodes and weights on [−1, 1]
_MAX_ROUNDS = 60
_MAX_PIECES = 4096  # pieces refined at once: beyond, the integrand is too rough to be worth the memory


def prob_any_dead(n, layer: int = 1):
    """P(at least one of n units has z ≤ 0) at hidden layer `layer` of a zero-bias ReLU net with
    symmetric weights.

    Layer 1 (iid symmetric pre-activations): 1 − 2⁻ⁿ. Deeper, z_l is iid symmetric given h_{l−1}
    only when h_{l−1} ≠ 0; once a whole layer is dead, every later z is exactly 0. So P(no dead
    unit at layer l) = 2⁻ⁿ (1 − 2⁻ⁿ)^(l−1), which matters only for small n.

    Args:
        n: units per layer (a non-negative integer, or an integer array of them).
        layer: the hidden layer, 1-based.

    Returns:
        The probability (a float, or an array shaped like n).

    Raises:
        ValueError: n not a non-negative integer, or layer not an integer ≥ 1.
    """
    n = np.asarray(n, dtype=float)
    if (not np.all(np.isfinite(n)) or np.any(n < 0) or np.any(n != np.round(n)) or not math.isfinite(layer)
            or int(layer) != layer or layer < 1):
        raise ValueError(f"need integer width n >= 0 and integer layer >= 1, got n={n}, layer={layer}")
    log_all_alive = -n * math.log(2.0)
    if layer > 1:
        with np.errstate(divide="ignore"):  # n = 0: log1p(−1) = −inf, P = 1, as it should
            log_all_alive = log_all_alive + (layer - 1) * np.log1p(-np.exp(log_all_alive))
    return -np.expm1(log_all_alive)


MAX_EXACT_SIZE = 100_000


def prob_relu_rank_deficient(m: int, n: int) -> float:
    """P(rank D_φ(Wx) W < n) for an m × n Gaussian W under ReLU = P(Binomial(m, ½) < n): the layer
    keeps full rank n only when at least n of its m units are live.

    Args:
        m: output units (a positive integer).
        n: input dimension (a positive integer).

    Returns:
        The probability, exact (big-integer arithmetic) for m, n ≤ `MAX_EXACT_SIZE`.

    Raises:
        ValueError: m or n not a positive integer, or beyond `MAX_EXACT_SIZE`.
    """
    if (isinstance(m, bool) or isinstance(n, bool) or not (math.isfinite(m) and math.isfinite(n))
            or int(m) != m or int(n) != n or m < 1 or n < 1):
        raise ValueError(f"m and n must be positive integers, got m={m}, n={n}")
    if max(m, n) > MAX_EXACT_SIZE:
        raise ValueError(f"m and n must be <= {MAX_EXACT_SIZE:,} for the exact sum, got m={m}, n={n}")
    m, n = int(m), int(n)
    favourable = sum(math.comb(m, k) for k in range(min(n, m + 1)))
    return favourable / 2**m  # exact big-integer sum, rounded once


def _rule(g, scale, lo, hi, nodes_weights):
    """∫ g(scale·z) φ_N(z) dz over each interval [lo_i, hi_i], by one Gauss–Legendre rule: (I,)."""
    nodes, weights = nodes_weights
    half, middle = (hi - lo)[:, None] / 2, (hi + lo)[:, None] / 2
    z = middle + half * nodes[None, :]  # (I, n)
    with jax.enable_x64(True):
        values = np.asarray(g(scale * z), dtype=np.float64)
    density = np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    with np.errstate(invalid="ignore", over="ignore"):  # inf · 0 is NaN: the caller refuses it by name
        return np.sum(weights[None, :] * values * density, axis=1) * half[:, 0]


def gaussian_expectation(g: Callable, q: float = 1.0) -> float:
    """E[g(√q z)] for z ~ N(0, 1), to `EXPECTATION_RTOL` relative, by adaptive Gauss–Legendre
    quadrature in float64 (module docstring).

    Args:
        g: a vectorised function of the pre-activation (NumPy or JAX), e.g. `lambda h: phi(h)**2`.
        q: the pre-activation variance (finite, ≥ 0).

    Returns:
        The expectation.

    Raises:
        ValueError: q out of range, g not finite on the line, or an integrand whose estimated error
            stays above 1e-8 relative after the allowed refinements (a number would be wrong).
    """
    q = validation.number("q", q, low=0)
    scale = math.sqrt(q)
    # cut at 0 (kinks) and where the integrand changes: |z| = c/√q for the scales of g, and a few
    # fixed widths of the Gaussian itself
    cuts = {0.0, _Z_MAX, -_Z_MAX} | {s * c for c in (1.0, 3.0, 6.0, 10.0, 20.0) for s in (-1, 1)}
    if scale > 0:
        cuts |= {s * c / scale for c in (0.25, 1.0, 4.0, 16.0) for s in (-1, 1) if c / scale < _Z_MAX}
    edges = np.array(sorted(cuts))
    lo, hi = edges[:-1], edges[1:]
    done_total, done_error = 0.0, 0.0
    for _ in range(_MAX_ROUNDS):
        fine, coarse = _rule(g, scale, lo, hi, _FINE), _rule(g, scale, lo, hi, _COARSE)
        if not (np.all(np.isfinite(fine)) and np.all(np.isfinite(coarse))):
            raise ValueError("the integrand is NaN or inf on the line: its Gaussian expectation is undefined")
        error = np.abs(fine - coarse)
        total = done_total + float(fine.sum())
        budget = EXPECTATION_RTOL * max(abs(total), 1e-300)
        if done_error + float(error.sum()) <= budget:
            return total
        # keep the pieces that are accurate enough for their share of the budget; halve the rest
        share = budget * (hi - lo) / (2 * _Z_MAX)
        keep = error <= share
        done_total += float(fine[keep].sum())
        done_error += float(error[keep].sum())
        lo, hi = lo[~keep], hi[~keep]
        if 2 * lo.size > _MAX_PIECES:
            break
        middle = (lo + hi) / 2
        lo, hi = np.concatenate([lo, middle]), np.concatenate([middle, hi])
    estimate = done_error + float(error.sum())
    if estimate <= _REFUSE_RTOL * max(abs(total), 1e-300):
        return total
    raise ValueError(f"the Gaussian expectation at q = {q:g} did not reach 1e-8 relative accuracy (estimated error "
                     f"{estimate / max(abs(total), 1e-300):.2g} of {total:.6g}) within {_MAX_ROUNDS} refinements of "
                     f"at most {_MAX_PIECES} pieces; the integrand is too rough for this quadrature")


def prob_low_derivative(activation, q: float, threshold: float = 0.05) -> float:
    """P(|φ'(√q z)| < threshold), z ~ N(0, 1): the expected fraction of dead or saturated
    units when pre-activations are N(0, q). Exact Gaussian mass of the zones found by
    `activations.low_derivative_zones` (zones touching the search window extend to ±∞)."""
    if not (math.isfinite(q) and q >= 0):
        raise ValueError(f"q (the pre-activation variance) must be finite and >= 0, got {q}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be finite and > 0, got {threshold}")
    if q == 0:  # every pre-activation is 0
        return float(abs(float(np.asarray(activations.get(activation).derivative(np.float32(0.0))))) < threshold)
    z_max = 8.0 * max(1.0, math.sqrt(q))
    total = 0.0
    for a, b in activations.low_derivative_zones(activation, threshold, z_max=z_max):
        lo = -math.inf if a <= -z_max else a / math.sqrt(q)
        hi = math.inf if b >= z_max else b / math.sqrt(q)
        total += 0.5 * (math.erfc(-hi / math.sqrt(2)) - math.erfc(-lo / math.sqrt(2)))
    return total


def derivative_moment(activation, q: float, k: int = 1) -> float:
    """μ_k = E[φ'(√q z)^{2k}]."""
    derivative = activations.get(activation).derivative
    return gaussian_expectation(lambda z: derivative(z) ** (2 * k), q)


def length_map(activation, sigma_w2: float, sigma_b2: float, q: float) -> float:
    """One step of the length map: σ_w² E[φ(√q z)²] + σ_b²."""
    phi = activations.get(activation)
    return sigma_w2 * gaussian_expectation(lambda z: phi(z) ** 2, q) + sigma_b2


Q_ZERO = 1e-30  # q below this is 0 for every quantity derived from it


def fixed_point_q(activation, sigma_w2: float, sigma_b2: float, *, q0: float = 1.0, tol: float = 1e-12) -> float:
    """The fixed point q* that iterating the length map from q0 converges to.

    Iterating is slow near criticality (tanh, σ_w² = 1, σ_b² = 0: q_t ~ 1/t; ReLU near
    σ_w² = 2: geometric with ratio → 1), so the fixed point is found as a root instead:
    the iteration moves in the direction of F(q) = map(q) − q, so the root it reaches is
    the first sign change of F in that direction. It is bracketed by stepping q from q0
    by factors of 4 and refined by bisection to relative width `tol`. Returns +inf when
    no sign change exists below 1e12·max(1, q0) (the map diverges), and 0 when none
    exists above `Q_ZERO` (q decays to 0, e.g. tanh with σ_b² = 0, σ_w² ≤ 1).
    |F(q)| ≤ 1e-14·q counts as a root (ReLU at σ_w² = 2, σ_b² = 0: every q is one).
    """
    def excess(q):
        return length_map(activation, sigma_w2, sigma_b2, q) - q

    def is_root(q, f):  # zero up to the quadrature's float64 rounding
        return abs(f) <= 1e-14 * q

    q = float(q0)
    f = excess(q)
    if is_root(q, f):
        return q
    factor, limit = (4.0, 1e12 * max(1.0, q0)) if f > 0 else (0.25, Q_ZERO)
    while True:
        other = q * factor
        if (factor > 1 and other > limit) or (factor < 1 and other < limit):
            return math.inf if factor > 1 else 0.0
        f_other = excess(other)
        if not np.isfinite(f_other):
            return math.inf
        if is_root(other, f_other):
            return other
        if (f_other > 0) != (f > 0):
            break
        q, f = other, f_other
    lo, hi = sorted((q, other))
    f_lo = excess(lo)
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        f_mid = excess(mid)
        if f_mid == 0.0:
            return mid
        lo, hi, f_lo = (mid, hi, f_mid) if (f_mid > 0) == (f_lo > 0) else (lo, mid, f_lo)
    return 0.5 * (lo + hi)


MAX_VARIANCE = 1e6


def mean_field(activation, sigma_w2: float, sigma_b2: float, *, q0: float = 1.0) -> tuple[float, float]:
    """Mean-field fixed point q* and slope χ₁ of a deep network with weights N(0, σ_w²/fan_in) and
    biases N(0, σ_b²) (Poole et al. 2016; Schoenholz et al. 2017): q* solves
    q = σ_w² E[φ(√q z)²] + σ_b², and χ₁ = σ_w² E[φ'(√q* z)²], z ~ N(0, 1).

    If the length map diverges (e.g. ReLU with σ_w² > 2), q* = inf and χ₁ is evaluated at
    q = 1e12·q0; if q decays to 0, at q = `Q_ZERO`. For positively homogeneous φ (ReLU, leaky ReLU,
    identity) χ₁ does not depend on q, so both are exact. At the degenerate critical point of such
    φ (ReLU, σ_w² = 2, σ_b² = 0) every q is a fixed point and q* = q0.

    Args:
        activation: a name in `activations.NAMES` or an `Activation`.
        sigma_w2: weight variance σ_w² (finite, ≥ 0).
        sigma_b2: bias variance σ_b² (finite, ≥ 0).
        q0: the starting length of the iteration (finite, > 0).

    Returns:
        (q_star, chi1): floats; q_star may be inf (diverging length map).

    Raises:
        ValueError: an unknown activation, or a variance or q0 out of range.
    """
    if not (math.isfinite(sigma_w2) and math.isfinite(sigma_b2)) or sigma_w2 < 0 or sigma_b2 < 0:
        raise ValueError(f"variances must be finite and >= 0, got sigma_w2={sigma_w2}, sigma_b2={sigma_b2}")
    if max(sigma_w2, sigma_b2) > MAX_VARIANCE:
        # beyond this a bounded φ's finite q* ~ σ² comes near the 1e12·q0 divergence cap and would read as inf
        raise ValueError(f"variances above {MAX_VARIANCE:g} are outside the range this solver handles reliably, got "
                         f"sigma_w2={sigma_w2}, sigma_b2={sigma_b2}")
    if not (math.isfinite(q0) and q0 > 0):
        raise ValueError(f"the starting length q0 must be finite and > 0 (a squared length), got {q0}")
    q_star = fixed_point_q(activation, sigma_w2, sigma_b2, q0=q0)
    return q_star, sigma_w2 * derivative_moment(activation, _finite_q(q_star, q0), 1)


def _finite_q(q_star: float, q0: float = 1.0) -> float:
    """Where to evaluate φ' moments: q* itself, clamped into [Q_ZERO, 1e12·q0].

    q* = 0 means q → 0 along the iteration, never q = 0: the moments are their limits as
    q ↓ 0 (ReLU: ½, not relu'(0)² = 0), which a tiny positive q gives.
    """
    return min(max(q_star, Q_ZERO), 1e12 * max(1.0, q0))


def isometry_prediction(activation, sigma_w2: float, sigma_b2: float, depth: int,
                        weights: str = "gaussian") -> dict[str, float]:
    """Predicted mean and variance/mean² of the eigenvalues of JJᵀ after `depth` layers
    (mean = χ₁^depth: +inf where that exceeds float64, e.g. χ₁ = 2 at depth 1100)."""
    s1 = {"gaussian": -1.0, "orthogonal": 0.0}.get(weights)
    if s1 is None:
        raise ValueError(f"weights must be 'gaussian' or 'orthogonal', got {weights!r}")
    if isinstance(depth, bool) or not math.isfinite(depth) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth}")
    q_star, chi1 = mean_field(activation, sigma_w2, sigma_b2)
    mu1 = derivative_moment(activation, _finite_q(q_star), 1)
    mu2 = derivative_moment(activation, _finite_q(q_star), 2)
    log_mean = depth * math.log(chi1) if chi1 > 0 else -math.inf
    return {
        "q_star": q_star,
        "chi1": chi1,
        "mean": math.inf if log_mean > math.log(np.finfo(np.float64).max) else math.exp(log_mean),
        "variance_over_mean2": depth * (mu2 / mu1**2 - 1.0 - s1),
    }


def fuss_catalan(L: int, k: int) -> int:
    """Fuss–Catalan number C((L+1)k, k) / (Lk + 1): the k-th moment of the squared singular values of
    a product of L Gaussian matrices (free probability). L = 1 gives the Catalan numbers.

    Args:
        L: number of factors (≥ 0; L = 0 gives 1 for every k).
        k: moment order (≥ 0).

    Returns:
        The exact integer.

    Raises:
        ValueError: L or k not a non-negative integer, or beyond `MAX_EXACT_SIZE`.
    """
    if (isinstance(L, bool) or isinstance(k, bool) or not (math.isfinite(L) and math.isfinite(k))
            or int(L) != L or int(k) != k or L < 0 or k < 0):
        raise ValueError(f"L and k must be integers >= 0, got L={L}, k={k}")
    if max(L, k) > MAX_EXACT_SIZE:
        raise ValueError(f"L and k must be <= {MAX_EXACT_SIZE:,} (the exact integer grows as ~(L+1)^((L+1)k)), "
                         f"got L={L}, k={k}")
    L, k = int(L), int(k)
    return math.comb((L + 1) * k, k) // (L * k + 1)


def critical_sigma_w2(activation, sigma_b2: float, *, lo: float = 0.1, hi: float = 10.0, tol: float = 1e-10) -> float:
    """σ_w² on the edge of chaos, χ₁(σ_w², σ_b²) = 1, by bisection on [lo, hi].

    χ₁ increases with σ_w² for the activations studied here (tanh, ReLU); the bracket
    must contain the crossing, else ValueError.
    """
    def excess(sigma_w2):
        return mean_field(activation, sigma_w2, sigma_b2)[1] - 1.0

    f_lo, f_hi = excess(lo), excess(hi)
    if f_lo > 0 or f_hi < 0:
        raise ValueError(f"χ₁ − 1 does not change sign on [{lo}, {hi}] (values {f_lo:.3g}, {f_hi:.3g})")
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)
