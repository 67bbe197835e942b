"""Neural-collapse statistics as a cited study's own code defines them, selected by name.

Classes whose means coincide, or a mean equal to the global mean, make the study's CDNV and
log norms infinite: that is refused with ValueError (as the default convention refuses it).

`geometry.collapse.collapse_metrics(..., convention=NAME)` (and `CollapseAccumulator.result`)
dispatch here. One convention so far:

"linguistic_collapse" — Wu & Papyan (2024), "Linguistic Collapse: Neural Collapse in (Large)
Language Models" (arXiv 2405.17767): the columns of its published results table
(`analyze.py` of rhubarbwu/linguistic-collapse over the `neural_collapse` package), read from
that code and re-implemented here. With M (C, d) the means of the included classes, μ_G their
unweighted mean, M̄ = M − μ_G, u_c = M̄_c / (‖M̄_c‖ + ε) (ε = float64 machine epsilon, as the
package's `normalize` adds its dtype's ε), σ_c² = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖², W (C, d) the
head's rows of the included classes, "pairs" the C(C − 1)/2 pairs c < c':

    cdnv             mean over pairs of ((σ_c² + σ_c'²)/2) / ‖μ_c − μ_c'‖⁴  — the fourth power
                     (`variability_cdnv(V, M, dist_exp=2)` squares the squared distance), so
                     it is not scale invariant, unlike Galanti et al.'s ‖·‖² (our `cdnv`)
    norms_mean/var   mean and variance (ddof = 1) of ‖M̄_c‖
    norms_log_*      the same of log ‖M̄_c‖
    interfere_*      mean and variance over pairs of M̄_c · M̄_c' (un-normalised inner products)
    etf_error        ‖G/‖G‖_F − (I − 11ᵀ/C)/√(C − 1)‖_F,  G = M̄ M̄ᵀ
    log_kern_*       mean and variance over pairs of log(1/‖u_c − u_c'‖)  (the study reads the
                     variance as GNC2; our `gnc2` is the mean); +inf when two centred means
                     point the same way, as in the study's code
    dual_error       the same ETF error for G = W M̄ᵀ (self-duality against the ETF, not our
                     ‖W/‖W‖ − M̄/‖M̄‖‖)
    simdot_*         mean and variance (ddof = 1) of W_c · M̄_c
    simcos_*         the same of cos(W_c, M̄_c)
    dists_*          the same of ‖W_c/(‖W_c‖ + ε) − u_c‖
    hits, misses     tokens (of included classes) where the nearest class mean and the head's
                     argmax agree / disagree, both decided over ALL classes: the head without
                     its bias, and class means where a class never seen has mean 0 (the
                     study's accumulator divides its zero total by n + ε)

Variances over pairs are population variances (the package's `kernel_stats`); per-class
series use ddof = 1 (`torch.Tensor.var`). The study keeps every class seen at least once
(`min_per_class = 1`); pass `min_count=1` to match it (the default 10 is this library's).
"""

from __future__ import annotations

import numpy as np

CONVENTIONS = ("default", "linguistic_collapse")
LINGUISTIC_COLLAPSE_COLUMNS = (
    "cdnv", "norms_mean", "norms_var", "norms_log_mean", "norms_log_var", "interfere_mean", "interfere_var",
    "etf_error", "log_kern_mean", "log_kern_var", "dual_error", "simdot_mean", "simdot_var", "simcos_mean",
    "simcos_var", "dists_mean", "dists_var", "hits", "misses",
)
EPS = np.finfo(np.float64).eps


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)} "
                         "(see geometry.collapse_studies)")


def pairs(matrix: np.ndarray) -> np.ndarray:
    """Entries above the diagonal of a (C, C) matrix: one per unordered pair."""
    return matrix[np.triu_indices(matrix.shape[0], k=1)]


def _etf_error(gram: np.ndarray) -> float:
    C = len(gram)
    ideal = (np.eye(C) - np.ones((C, C)) / C) / np.sqrt(C - 1)  # unit Frobenius norm
    return float(np.linalg.norm(gram / np.linalg.norm(gram) - ideal))


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + EPS)


def study_decisions(H: np.ndarray, y: np.ndarray, means: np.ndarray, counted: np.ndarray,
                    W: np.ndarray) -> tuple[int, int]:
    """(hits, tokens) of the study's NC4 over the tokens whose label is `counted`: nearest mean
    among all classes' means (a never-seen class at 0) vs the bias-free head's argmax over all rows."""
    H = H[counted[y]]
    nearest = np.argmin(np.sum(means**2, axis=1) - 2.0 * H @ means.T, axis=1)
    head = np.argmax(H @ W.T, axis=1)
    return int(np.sum(nearest == head)), len(H)


def linguistic_collapse(counts, means, within_sq, included, W=None, decided=None) -> dict:
    """The study's columns (module docstring) from per-class counts (K,), means (K, d),
    Σ‖h − μ_c‖² (K,), the included-class mask (K,), the head W (K, d) and (hits, tokens)."""
    C = int(included.sum())
    if C < 2:
        raise ValueError(f"need at least 2 classes with enough samples, got {C}")
    mu = means[included]  # (C, d)
    centred = mu - mu.mean(axis=0)  # M̄, (C, d)
    variances = within_sq[included] / counts[included]  # σ_c²
    squared = np.sum(mu**2, axis=1)
    mean_distances2 = np.clip(squared[:, None] + squared[None, :] - 2.0 * mu @ mu.T, 0.0, None)  # (C, C)
    norms = np.linalg.norm(centred, axis=1)
    scale = max(float(np.max(squared)), np.finfo(np.float64).tiny)
    if np.any(pairs(mean_distances2) <= 1e-24 * scale) or np.any(norms**2 <= 1e-24 * scale):
        # the study's code would return inf (or log 0) here; a number nobody can compare is refused instead
        raise ValueError("two included classes have the same mean, or a class mean equals the global mean: the "
                         "study's CDNV (÷‖μ_c − μ_c'‖⁴) and log norms are undefined")
    unit = _unit(centred)
    unit_distances = np.sqrt(np.clip(pairs(2.0 - 2.0 * unit @ unit.T), 0.0, None))
    inner = pairs(centred @ centred.T)
    with np.errstate(divide="ignore"):  # unit vectors can still coincide: −log 0 = inf, reported as such
        cdnv_pairs = pairs(variances[:, None] + variances[None, :]) / 2.0 / pairs(mean_distances2) ** 2
        log_kernel = -np.log(unit_distances)
        log_norms = np.log(norms)
    result = {
        "convention": "linguistic_collapse",
        "cdnv": float(np.mean(cdnv_pairs)),
        "norms_mean": float(np.mean(norms)), "norms_var": float(np.var(norms, ddof=1)),
        "norms_log_mean": float(np.mean(log_norms)), "norms_log_var": float(np.var(log_norms, ddof=1)),
        "interfere_mean": float(np.mean(inner)), "interfere_var": float(np.var(inner)),
        "etf_error": _etf_error(centred @ centred.T),
        "log_kern_mean": float(np.mean(log_kernel)), "log_kern_var": float(np.var(log_kernel)),
        "dual_error": None, "simdot_mean": None, "simdot_var": None, "simcos_mean": None, "simcos_var": None,
        "dists_mean": None, "dists_var": None, "hits": None, "misses": None,
        "classes": C,
        "classes_excluded": int(np.sum(~included & (counts > 0))),
        "tokens": int(counts[included].sum()),
        "tokens_excluded": int(counts[~included].sum()),
    }
    if W is not None:
        weights = np.asarray(W, dtype=np.float64)[included]  # (C, d)
        dots = np.sum(weights * centred, axis=1)
        weight_norms = np.linalg.norm(weights, axis=1)
        cosines = dots / np.maximum(weight_norms * norms, 1e-8)  # torch's cosine_similarity clamps at 1e-8
        distances = np.linalg.norm(_unit(weights) - unit, axis=1)
        result.update({
            "dual_error": _etf_error(weights @ centred.T),
            "simdot_mean": float(np.mean(dots)), "simdot_var": float(np.var(dots, ddof=1)),
            "simcos_mean": float(np.mean(cosines)), "simcos_var": float(np.var(cosines, ddof=1)),
            "dists_mean": float(np.mean(distances)), "dists_var": float(np.var(distances, ddof=1)),
        })
    if decided is not None and decided[1] > 0:
        result["hits"], result["misses"] = int(decided[0]), int(decided[1] - decided[0])
    return result
