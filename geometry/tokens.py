"""Token collapse: how far the tokens of a sequence are from all being one vector.

A sequence's representation at some layer is a token matrix X (T, d), one row per token.
Pure self-attention averages rows, so depth drives every row toward one shared vector x:
X → 1xᵀ, a rank-1 matrix (Dong, Cordonnier & Loukas 2021, "Attention is not all you need:
pure attention loses rank doubly exponentially with depth", arXiv 2103.03404). Every measure
here takes X (..., T, d), batched over leading axes, and is float64 NumPy (these are
statistics of recorded activations, not parts of a differentiated model).

* `residual(X, norm, center)`: res(X) = X − 1xᵀ. Dong et al. define x as the minimiser of
  ‖X − 1xᵀ‖ and measure it in the composite norm ‖M‖₁,∞ = √(‖M‖₁ ‖M‖∞), with ‖M‖₁ the largest
  column sum and ‖M‖∞ the largest row sum of |M| (their bound: ‖res(SAN(X))‖ ≤ c‖res(X)‖³ per
  layer, so ‖res‖ falls doubly exponentially in depth). No closed form gives their minimiser
  in that norm; `center` names the x used: "mean" (the token mean, which minimises the
  Frobenius norm: the default), or "median" (the coordinate-wise median, which minimises the
  ‖·‖₁ factor exactly). `center="best"` takes the smaller composite residual of the two: an
  upper bound on Dong et al.'s minimum, never below it.
* `relative_residual(X, ...)`: ‖res(X)‖ / ‖X‖ in the same norm (scale free; 0 iff collapsed).
* `mean_pairwise_cosine(X)`: the mean cosine over pairs of distinct tokens (Noci et al. 2022,
  arXiv 2206.03126, track its rise with depth at initialisation); 1 when all tokens point one
  way, 0 for orthogonal tokens.
* `token_ranks(X)`: numerical and effective rank of X and of the centred X − 1x̄ᵀ, with
  `geometry.spectra`'s conventions (tolerance max(T, d)·eps·σ_max; Roy–Vetterli effective rank)
  in float64: collapse is rank 1 and centred rank 0.
* `attention_entropy_ratio(weights)`: each attention row's entropy over log(number of keys it
  can see) (`language_model.attention_entropy`): 1 for uniform attention, the averaging that
  collapses tokens fastest.
"""

from __future__ import annotations

import numpy as np

from geometry import validation
from geometry.shapes import real_numeric

NORMS = ("composite", "frobenius")
CENTERS = ("mean", "median", "best")


def _tokens(X) -> np.ndarray:
    X = np.asarray(X)
    if not real_numeric(X.dtype):
        raise ValueError(f"the token matrix must be real numbers, got dtype {X.dtype}")
    if X.ndim < 2 or X.shape[-2] < 1 or X.shape[-1] < 1:
        raise ValueError(f"the token matrix must have shape (..., T, d) with T, d >= 1, got {X.shape}")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("the token matrix contains NaN or inf")
    return X


def matrix_norm(M, norm: str = "composite") -> np.ndarray:
    """‖M‖ over the last two axes: "composite" √(‖M‖₁ ‖M‖∞) (Dong et al.) or "frobenius"."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    M = np.abs(np.asarray(M, np.float64))
    if norm == "frobenius":
        return np.sqrt(np.sum(M**2, axis=(-2, -1)))
    largest_column_sum = np.max(np.sum(M, axis=-2), axis=-1)  # ‖M‖₁
    largest_row_sum = np.max(np.sum(M, axis=-1), axis=-1)  # ‖M‖∞
    return np.sqrt(largest_column_sum * largest_row_sum)


def residual(X, norm: str = "composite", center: str = "mean") -> np.ndarray:
    """‖X − 1xᵀ‖ (...,) with x the token mean or median (see the module docstring)."""
    if center not in CENTERS:
        raise ValueError(f"unknown center {center!r}; valid: {', '.join(CENTERS)}")
    X = _tokens(X)
    if center == "best":
        return np.minimum(residual(X, norm, "mean"), residual(X, norm, "median"))
    x = np.mean(X, axis=-2, keepdims=True) if center == "mean" else np.median(X, axis=-2, keepdims=True)
    return matrix_norm(X - x, norm)


def relative_residual(X, norm: str = "composite", center: str = "mean") -> np.ndarray:
    """‖res(X)‖ / ‖X‖ (...,): 0 when every token is the same vector."""
    X = _tokens(X)
    scale = matrix_norm(X, norm)
    return np.divide(residual(X, norm, center), scale, out=np.zeros_like(scale), where=scale > 0)


def mean_pairwise_cosine(X) -> np.ndarray:
    """Mean of cos(x_s, x_t) over ordered pairs s ≠ t of tokens (...,); a zero token counts as 0."""
    X = _tokens(X)
    count = X.shape[-2]
    if count < 2:
        raise ValueError("the mean pairwise cosine needs at least two tokens")
    lengths = np.linalg.norm(X, axis=-1, keepdims=True)
    unit = np.divide(X, lengths, out=np.zeros_like(X), where=lengths > 0)
    total = np.sum(unit, axis=-2)
    # Σ_{s≠t} cos = ‖Σ_t u_t‖² − Σ_t ‖u_t‖², without the (T, T) Gram matrix
    self_terms = np.sum(unit**2, axis=(-2, -1))
    return (np.sum(total**2, axis=-1) - self_terms) / (count * (count - 1))


def token_ranks(X, rtol: float | None = None) -> dict[str, np.ndarray]:
    """{"rank", "effective_rank", "centred_rank", "centred_effective_rank"} of X (..., T, d):
    numerical rank at `spectra`'s tolerance (max(T, d) · eps(float64) · σ_max unless `rtol`),
    and the Roy–Vetterli effective rank exp(H(σ/‖σ‖₁)) (1 for a rank-1 matrix). A centred
    matrix of zeros (complete collapse) has rank 0 and effective rank 0."""
    X = _tokens(X)
    result = {}
    for prefix, M in (("", X), ("centred_", X - np.mean(X, axis=-2, keepdims=True))):
        sigma = np.linalg.svd(M, compute_uv=False)  # (..., r) descending
        top = sigma[..., :1]
        tolerance = (max(M.shape[-2:]) * np.finfo(np.float64).eps if rtol is None else rtol) * top
        rank = np.sum(sigma > tolerance, axis=-1)
        result[f"{prefix}rank"], result[f"{prefix}effective_rank"] = rank, effective_rank(sigma)
    return result


def effective_rank(sigma) -> np.ndarray:
    """Roy–Vetterli effective rank exp(H(σ/‖σ‖₁)) of singular values σ (..., r), float64; 0 for σ = 0."""
    sigma = np.asarray(sigma, np.float64)
    total = np.sum(sigma, axis=-1, keepdims=True)
    p = np.divide(sigma, total, out=np.zeros_like(sigma), where=total > 0)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.where(total[..., 0] > 0, np.exp(entropy), 0.0)


def attention_entropy_ratio(weights, causal: bool) -> np.ndarray:
    """Entropy of each attention row over log(keys it can see) (..., T): 1 for uniform rows.
    `causal`: row t sees t + 1 keys (the first row, one key, is 1 by convention); otherwise T."""
    weights = validation.finite_array("weights", weights, min_ndim=2)
    rows, length = weights.shape[-2:]
    if weights.min() < 0 or not np.allclose(weights.sum(axis=-1), 1.0, rtol=0, atol=1e-3):
        raise ValueError("weights must be attention probabilities: every entry ≥ 0 and every row summing to 1 "
                         f"(smallest entry {weights.min():.3g}, row sums in [{weights.sum(-1).min():.4g}, "
                         f"{weights.sum(-1).max():.4g}]); pass softmax(scores), not the scores")
    entropy = -np.sum(np.where(weights > 0, weights * np.log(np.where(weights > 0, weights, 1.0)), 0.0), axis=-1)
    visible = np.arange(1, rows + 1) if causal else np.full(rows, length)
    most = np.broadcast_to(np.log(visible.astype(np.float64)), entropy.shape)
    return np.divide(entropy, most, out=np.ones_like(entropy), where=most > 0)


RESIDUAL_FLOOR = 1e-12  # float64 rounding leaves relative residuals of ~1e-16·√(T·d): below this, noise


def collapse_rate(relative_residuals, layers=None, floor: float = RESIDUAL_FLOOR) -> dict:
    """Dong et al.'s law ‖res_{l+1}‖ ≤ c ‖res_l‖³ makes log(−log ‖res_l‖) linear in l with slope
    log 3. Fits log(−log r_l) = a + l · log ρ by least squares over the layers with r_l < 1,
    up to the first layer whose residual reaches `floor` (after it only rounding is left), and
    returns {"rate": ρ (3 under the bound's cubic law), "slope", "intercept", "layers_used",
    "geometric_factor": q of the singly exponential fit r_l ≈ C q^l over the same layers};
    ρ < 3 means the collapse is slower than the cubic law, ρ > 3 faster (then c < 1 matters);
    ρ near 1 with q < 1 is a geometric, not doubly exponential, collapse."""
    r = np.asarray(relative_residuals, np.float64)
    layers = np.arange(1, len(r) + 1) if layers is None else np.asarray(layers)
    reached = np.flatnonzero(r <= floor)
    before_floor = np.arange(len(r)) < (reached[0] if reached.size else len(r))
    usable = before_floor & (r < 1.0)
    if usable.sum() < 2:
        return {"rate": float("nan"), "slope": float("nan"), "intercept": float("nan"),
                "geometric_factor": float("nan"), "layers_used": int(usable.sum())}
    slope, intercept = np.polyfit(layers[usable], np.log(-np.log(r[usable])), 1)
    # the singly exponential reading of the same layers: r_l ≈ C q^l (q = 1: no collapse)
    geometric_slope, _ = np.polyfit(layers[usable], np.log(r[usable]), 1)
    return {"rate": float(np.exp(slope)), "slope": float(slope), "intercept": float(intercept),
            "geometric_factor": float(np.exp(geometric_slope)), "layers_used": int(usable.sum())}
