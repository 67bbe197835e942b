"""What a layer's weights say on their own: the empirical spectral density of WᵀW and its power-law tail.

Heavy-tailed self-regularisation (Martin & Mahoney) reads a trained layer from the eigenvalues
λ_i = σ_i(W)² of its weight matrix: their stable rank Σλ / λ_max, and the exponent α of a power
law p(λ) ∝ λ^(−α) fitted to their tail. The tail's start λ_min is chosen as Clauset, Shalizi &
Newman (2009) choose it: for every candidate λ_min (each distinct eigenvalue but the largest),
the maximum-likelihood α̂ = 1 + n / Σ_{λ ≥ λ_min} log(λ / λ_min) over the n eigenvalues in the
tail, and the Kolmogorov–Smirnov distance between the tail's empirical CDF (k/n at its k-th
value, k = 0 … n − 1, as the `powerlaw` package writes it) and the fitted
1 − (λ/λ_min)^(1−α̂); the candidate with the smallest distance wins. Its standard error is
(α̂ − 1)/√n. All candidates are fitted at once (suffix sums, one (candidates × eigenvalues)
array), not in a loop. WeightWatcher fits the same way with the `powerlaw` package; the tests
compare this fit with that package's on the same eigenvalues.

Layouts (Flax's): a dense kernel (in, out) is W; a convolution kernel (*window, in, out) is read as
WeightWatcher reads one: an (in, out) matrix per window position, the eigenvalues of all of them
pooled into one density.
"""

from __future__ import annotations

import math

import numpy as np

from geometry import validation

MIN_TAIL = 2  # fewer tail eigenvalues than this: no fit (NaN, with the reason); Clauset et al. take any


def eigenvalues(kernel) -> np.ndarray:
    """The eigenvalues of WᵀW (squared singular values of W), pooled over a convolution's window as
    WeightWatcher reads it.

    Args:
        kernel: a dense kernel (in, out) or a convolution kernel (*window, in, out) (Flax layouts).

    Returns:
        (K,) float64, ascending.

    Raises:
        ValueError: a kernel with fewer than two axes, empty, or holding NaN or inf.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"a weight matrix needs at least 2 axes (in, out), got shape {kernel.shape}")
    kernel = validation.finite_array("kernel", kernel)
    matrices = kernel.reshape(-1, *kernel.shape[-2:])  # (positions, in, out)
    values = np.linalg.svd(matrices, compute_uv=False) ** 2
    return np.sort(values.reshape(-1))


def stable_rank(values: np.ndarray) -> float:
    """Stable rank Σ λ / max λ of the eigenvalues λ of WᵀW (‖W‖_F² / ‖W‖₂²).

    Args:
        values: (K,) eigenvalues of WᵀW (`eigenvalues`), non-negative.

    Returns:
        The stable rank in [1, K] (NaN when every eigenvalue is 0).

    Raises:
        ValueError: values that are empty, negative or not finite.
    """
    values = validation.finite_array("values", values, ndim=1)
    if values.min() < 0:
        raise ValueError(f"values must be eigenvalues of WᵀW, all ≥ 0; the smallest is {values.min():.3g}")
    return float(values.sum() / values.max()) if values.max() > 0 else float("nan")


def power_law_fit(values: np.ndarray, min_tail: int = MIN_TAIL) -> dict:
    """Clauset–Shalizi–Newman power-law fit of the tail of positive values (module docstring): the
    tail start x_min minimising the Kolmogorov–Smirnov distance, the maximum-likelihood α above it,
    vectorised over every candidate tail.

    Args:
        values: (K,) eigenvalues (or any positive sample); zeros and negatives are dropped.
        min_tail: the fewest values a tail may hold (≥ 2).

    Returns:
        dict: "alpha", "alpha_error" ((α − 1)/√n), "xmin", "tail" (n), "ks_distance", "reason" —
        alpha NaN with a reason when there are too few distinct positive values.

    Raises:
        ValueError: values that are not finite, or min_tail < 2.
    """
    min_tail = validation.integer("min_tail", min_tail, low=2)
    data = np.sort(validation.finite_array("values", values, nonempty=False).reshape(-1))
    data = data[data > 0]
    nan = {"alpha": float("nan"), "alpha_error": float("nan"), "xmin": float("nan"), "tail": 0,
           "ks_distance": float("nan")}
    candidates = np.unique(data)[:-1]
    if data.size < min_tail or candidates.size < 1:
        return {**nan, "reason": f"{data.size} positive eigenvalues, {np.unique(data).size} distinct: too few to fit"}
    total = data.size
    starts = np.searchsorted(data, candidates, side="left")  # first index of each candidate's tail
    counts = total - starts
    keep = counts >= min_tail
    if not keep.any():
        return {**nan, "reason": f"no tail of at least {min_tail} eigenvalues"}
    starts, counts, candidates = starts[keep], counts[keep], candidates[keep]
    logs = np.log(data)
    suffix = np.concatenate([np.cumsum(logs[::-1])[::-1], [0.0]])  # suffix[i] = Σ_{j ≥ i} log x_j
    alphas = 1 + counts / (suffix[starts] - counts * np.log(candidates))
    distances = np.empty(candidates.size)
    chunk = max(1, (1 << 22) // total)
    positions = np.arange(total)
    for lo in range(0, candidates.size, chunk):
        hi = min(lo + chunk, candidates.size)
        start, count, alpha, xmin = (a[lo:hi, None] for a in (starts, counts, alphas, candidates))
        inside = positions[None, :] >= start  # (c, K): the tail of each candidate
        empirical = (positions[None, :] - start) / count
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            fitted = 1 - (data[None, :] / xmin) ** (1 - alpha)
        distances[lo:hi] = np.max(np.where(inside, np.abs(fitted - empirical), -np.inf), axis=1)
    valid = np.isfinite(alphas) & (alphas > 1)
    if not valid.any():
        return {**nan, "reason": "no candidate tail gives alpha > 1"}
    best = int(np.argmin(np.where(valid, distances, np.inf)))
    alpha, count = float(alphas[best]), int(counts[best])
    return {"alpha": alpha, "alpha_error": (alpha - 1) / math.sqrt(count), "xmin": float(candidates[best]),
            "tail": count, "ks_distance": float(distances[best]), "reason": ""}
