"""Neural-collapse metrics of last-layer features, in memory or streamed in three passes.

Notation: features h ∈ R^d with class labels y (for a language model, the next token);
n_c tokens of class c; μ_c the class mean; only classes with n_c ≥ `min_count` enter
(the others are counted in `classes_excluded` / `tokens_excluded`); C of them remain.
μ_G = (1/C) Σ_c μ_c, the plain, unweighted mean of class means (not the token mean, which
the frequent classes would dominate); M (C, d) has rows μ_c − μ_G.

    Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ       (N tokens of the included classes)
    Σ_B = (1/C) Mᵀ M
    nc1 = Tr(Σ_W Σ_B⁺) / C,   Σ_B⁺ keeping eigenvalues > PINV_RTOL · λ_max(Σ_B)
    σ_c² = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²
    cdnv = mean over pairs c < c' of (σ_c² + σ_c'²) / (2 ‖μ_c − μ_c'‖²)
    nc2_equinorm = std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖
    nc2_equiangle = std over pairs c < c' of cos(μ_c − μ_G, μ_c' − μ_G)   (a simplex ETF: all −1/(C−1))
    gnc2 = mean over pairs of log(1 / ‖μ̂_c − μ̂_c'‖), μ̂_c = (μ_c − μ_G)/‖μ_c − μ_G‖ (gnc2_std: their std)
    nc3 = ‖W/‖W‖_F − M/‖M‖_F‖_F,    W (C, d) the head's rows of the included classes
    unc3 = std_c cos(w_c, μ_c − μ_G) / mean_c cos(w_c, μ_c − μ_G)
    nc4 = fraction of evaluated tokens where the nearest class mean, argmin_c ‖h − μ_c‖, equals
          the head's decision argmax_c (w_c·h + b_c), both taken over the included classes

`collapse_metrics(H, y, W)` holds H in memory. `CollapseAccumulator` streams batches in
three passes (1: per-class sums and counts; 2: per-class Σ‖h − μ_c‖² and the d × d Σ_W sum;
3: decisions on, e.g., validation tokens) with O(C·d + d²) memory, never O(N·d). All
statistics are accumulated in float64.

Conventions, metric by metric (what a cited study does differently, and how to get it):
ddof 0 everywhere (std over classes and over pairs); μ_G the unweighted mean of class
means; Σ_B⁺ drops eigenvalues below PINV_RTOL · λ_max (torch.linalg.pinv drops those
below d · eps · λ_max, which on near-degenerate means can differ by orders of magnitude);
nc4 decides with the head's bias, among the included classes only; cdnv divides by
‖μ_c − μ_c'‖² (Galanti et al.). `convention="linguistic_collapse"` returns instead the
columns of Wu & Papyan's (2024) published table, each as their code computes it
(`geometry.collapse_studies` documents every difference).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from geometry import collapse_studies, layers
from geometry.collapse_studies import pairs  # one definition for both conventions
from geometry.shapes import AnyArray, Shaped, real_numeric, shape_checked

PINV_RTOL = 1e-10
MAX_FEATURE = 1e75
DEFAULT_MIN_COUNT = 10
METRICS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangle", "gnc2", "nc3", "unc3", "nc4")


MAX_SPARSE_CLASSES = 2**17  # labels beyond both this and the point count are not class indices


def _check(H, y, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    H, y = np.asarray(H), np.asarray(y)
    if not real_numeric(H.dtype):
        raise ValueError(f"features must be real numbers, got dtype {H.dtype} (a complex part would be dropped)")
    H = H.astype(np.float64)
    if H.ndim != 2 or H.shape[0] == 0 or H.shape[1] == 0:
        raise ValueError(f"features must be a non-empty (N, d) array with d >= 1, got shape {H.shape}")
    if y.shape != (H.shape[0],):
        raise ValueError(f"labels must have shape ({H.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if not np.all(np.isfinite(H)):
        raise ValueError(f"features contain NaN or inf in {int((~np.isfinite(H)).any(1).sum())} rows")
    if np.max(np.abs(H)) > MAX_FEATURE:
        # the statistics square distances (the study's CDNV takes them to the fourth power)
        raise ValueError(f"features reach {np.max(np.abs(H)):.3g}, beyond ±{MAX_FEATURE:g}: their squared distances "
                         "overflow float64; rescale the features")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes}): min {int(y.min())}, max {int(y.max())}")
    if num_classes is None and int(y.max()) >= max(len(y), MAX_SPARSE_CLASSES):
        # every class 0..max gets a mean: a label of 2^40 would ask for terabytes
        raise ValueError(f"labels go up to {int(y.max())} with only {len(y)} points: labels must be class indices "
                         "0..C-1 (relabel with np.unique(y, return_inverse=True)[1]), or pass num_classes")
    return H, y.astype(np.int64)


def _cv(values: np.ndarray) -> float:
    return float(np.std(values) / np.mean(values))


def head_decisions(H: np.ndarray, W: np.ndarray, bias: np.ndarray | None, included: np.ndarray) -> np.ndarray:
    logits = H @ W[included].T + (0.0 if bias is None else bias[included])  # (N, C)
    return np.argmax(logits, axis=1)


def nearest_mean_decisions(H: np.ndarray, means: np.ndarray) -> np.ndarray:
    # argmin ‖h − μ_c‖² = argmin (‖μ_c‖² − 2 h·μ_c): no (N, C, d) difference array
    return np.argmin(np.sum(means**2, axis=1) - 2.0 * H @ means.T, axis=1)


def agreement(H: np.ndarray, y: np.ndarray, means: np.ndarray, included: np.ndarray, W: np.ndarray,
              bias: np.ndarray | None) -> tuple[int, int]:
    """(tokens where the nearest class mean and the head decide alike, tokens evaluated), over the
    tokens whose label is an included class."""
    H = H[included[y]]
    same = nearest_mean_decisions(H, means[included]) == head_decisions(H, W, bias, included)
    return int(same.sum()), len(H)


def _check_min_count(min_count) -> None:
    if int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1 (classes with fewer samples are left out), got {min_count}")


def metrics_from_statistics(counts, means, within_sq, within_cov, included, W=None, decided=None,
                            pinv_rtol: float = PINV_RTOL) -> dict:
    """The metrics from class statistics (see module docstring); `decided` = (agree, total) for nc4."""
    C = int(included.sum())
    if C < 2:
        raise ValueError(f"need at least 2 classes with enough samples, got {C}")
    mu = means[included]  # (C, d)
    centred = mu - mu.mean(axis=0)  # M, (C, d)
    n_included = counts[included].sum()
    sigma_w = within_cov / n_included
    sigma_b = centred.T @ centred / C
    eigenvalues, eigenvectors = np.linalg.eigh(sigma_b)
    keep = eigenvalues > pinv_rtol * eigenvalues.max()
    projected = np.einsum("dk,de,ek->k", eigenvectors[:, keep], sigma_w, eigenvectors[:, keep])
    nc1 = float(np.sum(projected / eigenvalues[keep]) / C)

    variances = within_sq[included] / counts[included]  # σ_c²
    squared_norms = np.sum(centred**2, axis=1)  # centred: the same distances, less cancellation
    mean_distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * centred @ centred.T  # (C, C)
    coincide = mean_distances <= 1e-12 * max(float(squared_norms.max()), np.finfo(np.float64).tiny)  # to rounding
    if np.any(pairs(coincide)):
        first, second = np.argwhere(np.triu(coincide, 1))[0]
        labels = np.flatnonzero(included)
        raise ValueError(f"classes {labels[first]} and {labels[second]} have identical means: CDNV and the NC2 angles "
                         "are undefined (no separation to measure)")
    cdnv = float(np.mean(pairs(variances[:, None] + variances[None, :]) / (2.0 * pairs(mean_distances))))

    norms = np.linalg.norm(centred, axis=1)
    unit = centred / norms[:, None]
    cosines = pairs(unit @ unit.T)
    unit_distances = np.sqrt(np.maximum(2.0 - 2.0 * cosines, np.finfo(np.float64).tiny))
    result = {
        "nc1": nc1,
        "cdnv": cdnv,
        "nc2_equinorm": _cv(norms),
        "nc2_equiangle": float(np.std(cosines)),
        "mean_cosine": float(np.mean(cosines)),
        "simplex_cosine": -1.0 / (C - 1),
        "gnc2": float(np.mean(-np.log(unit_distances))),
        "gnc2_std": float(np.std(-np.log(unit_distances))),
        "nc3": None, "unc3": None, "nc4": None,
        "classes": C,
        "classes_excluded": int(np.sum(~included & (counts > 0))),
        "tokens": int(n_included),
        "tokens_excluded": int(counts[~included].sum()),
        "pinv_kept": int(keep.sum()),  # eigenvalues of Σ_B above the cut-off
        "pinv_rtol": pinv_rtol,
        "global_mean": "unweighted mean of class means",
    }
    if W is not None:
        weights = np.asarray(W, dtype=np.float64)[included]
        result["nc3"] = float(np.linalg.norm(weights / np.linalg.norm(weights) - centred / np.linalg.norm(centred)))
        alignment = np.sum(weights * centred, axis=1) / (np.linalg.norm(weights, axis=1) * norms)
        result["unc3"] = _cv(alignment)
    if decided is not None and decided[1] > 0:
        result["nc4"] = decided[0] / decided[1]
        result["nc4_tokens"] = int(decided[1])
    return result


def _real_finite(name: str, value) -> np.ndarray:
    """float64 copy of a real, finite array: a NaN head would make nc3 NaN and nc4 a number that
    means nothing, a complex one would silently lose its imaginary part."""
    array = np.asarray(value)
    if not real_numeric(array.dtype):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf ({int(np.sum(~np.isfinite(array)))} entries): the head is "
                         "broken (a diverged training?); the metrics that use it would be meaningless")
    return array


def _check_head(W, bias, num_classes: int, dim: int, layout: str = "out_in"):
    """The head as float64 (classes, features) weights and bias. W may be an `nnx.Linear` or a
    `geometry.layers.Dense` (their bias is used unless one is given) or an array in `layout`."""
    if isinstance(W, nnx.Module):
        bias = layers.dense_bias(W) if bias is None else bias
    W = _real_finite("head weights W", layers.dense_weight(W, layout=layout))
    if W.shape != (num_classes, dim):
        flax_hint = (" — that is a Flax kernel's (features, classes) layout: pass layout='in_out' or the nnx.Linear"
                     if W.shape == (dim, num_classes) else "")
        raise ValueError(f"head weights must be ({num_classes}, {dim}) (classes, features) after reading them as "
                         f"layout={layout!r}, got {W.shape}{flax_hint}")
    if bias is not None:
        bias = _real_finite("head bias", bias)
        if bias.shape != (num_classes,):
            raise ValueError(f"head bias must have shape ({num_classes},), got {bias.shape}")
    return W, bias


@shape_checked
def collapse_metrics(H: Shaped[AnyArray, "N d"], y: Shaped[AnyArray, "N"], W=None, bias=None, *, num_classes: int | None = None, min_count: int = DEFAULT_MIN_COUNT,
                     H_eval=None, y_eval=None, layout: str = "out_in", convention: str = "default",
                     pinv_rtol: float = PINV_RTOL) -> dict:
    """Neural-collapse metrics of penultimate features, all in memory (`CollapseAccumulator` streams
    the same in three passes).

    Definitions (module docstring): nc1 = Tr(Σ_W Σ_B⁺)/C; cdnv (Galanti et al.); nc2_equinorm
    (CoV of ‖μ_c − μ_G‖), nc2_equiangle (std of the cosines between centred means); gnc2; nc3
    (‖W/‖W‖_F − M̄/‖M̄‖_F‖_F, Papyan et al.) and unc3; nc4 (nearest-class-mean decisions against the
    head's). Classes with fewer than `min_count` samples are left out and listed.

    Args:
        H: (N, d) features.
        y: (N,) integer labels.
        W: the linear head, needed for nc3, unc3 and nc4: an `nnx.Linear`, a `geometry.layers.Dense`
            (bias taken from it) or a weight array read in `layout`. None: those metrics are None.
        bias: (C,) head bias when W is an array (None: no bias).
        num_classes: C (None: max(y) + 1).
        min_count: classes with fewer samples are excluded (≥ 1).
        H_eval: (N', d) features nc4 is measured on (validation tokens), only those whose label is an
            included class; None: H.
        y_eval: (N',) labels of H_eval.
        layout: "out_in" ((C, d), the default) or "in_out" ((d, C), a Flax kernel) for an array W.
        convention: "default" (this library's definitions) or "linguistic_collapse" (Wu & Papyan's
            code definitions, `geometry.collapse_studies`).
        pinv_rtol: relative eigenvalue cut-off of Σ_B⁺ (torch.linalg.pinv's is d · eps).

    Returns:
        dict: "nc1", "cdnv", "nc2_equinorm", "nc2_equiangle", "gnc2", "gnc2_std", "nc3", "unc3",
        "nc4" (floats; nc3 / unc3 / nc4 None without W), "mean_cosine" and "simplex_cosine" (the
        centred means' mean cosine and the simplex ETF's −1/(C−1)), "global_mean", "pinv_kept" and
        "pinv_rtol" (Σ_B⁺'s eigenvalues kept and its cut-off), "classes" / "classes_excluded" and
        "tokens" / "tokens_excluded" (what was included); with `convention="linguistic_collapse"`
        the study's CSV columns instead.

    Raises:
        ValueError: shapes that disagree (H and y, W and d or C), non-integer or negative labels,
            NaN or inf in H or W, fewer than two included classes, an unknown convention (or layout, with W),
            or a pinv_rtol / min_count out of range.
    """
    if not (np.isfinite(pinv_rtol) and 0 <= pinv_rtol < 1):
        raise ValueError(f"pinv_rtol must be in [0, 1), got {pinv_rtol}")
    collapse_studies.check_convention(convention)
    _check_min_count(min_count)
    H, y = _check(H, y, num_classes)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    counts = np.bincount(y, minlength=num_classes)
    order = np.argsort(y, kind="stable")
    groups = np.split(H[order], np.cumsum(counts)[:-1])
    means = np.stack([g.mean(axis=0) if len(g) else np.zeros(H.shape[1]) for g in groups])  # (K, d)
    included = counts >= min_count
    keep = included[y]
    residuals = H[keep] - means[y[keep]]  # (N_kept, d)
    within_sq = np.bincount(y[keep], weights=np.sum(residuals**2, axis=1), minlength=num_classes)
    decided = None
    if W is not None:
        W, bias = _check_head(W, bias, num_classes, H.shape[1], layout)
        H_eval, y_eval = (H, y) if H_eval is None else _check(H_eval, y_eval, num_classes)
        if convention == "linguistic_collapse":
            decided = collapse_studies.study_decisions(H_eval, y_eval, means, included, W)
        else:
            decided = agreement(H_eval, y_eval, means, included, W, bias)
    if convention == "linguistic_collapse":
        return collapse_studies.linguistic_collapse(counts, means, within_sq, included, W, decided)
    return metrics_from_statistics(counts, means, within_sq, residuals.T @ residuals, included, W, decided, pinv_rtol)


class CollapseAccumulator:
    """The same metrics from batches, in three passes:

        acc = CollapseAccumulator(num_classes, dim)
        for H, y in batches: acc.add_means(H, y)          # pass 1
        for H, y in batches: acc.add_variability(H, y)    # pass 2
        for H, y in eval_batches: acc.add_decisions(H, y, W, bias)   # pass 3 (optional)
        metrics = acc.result(W)
    """

    def __init__(self, num_classes: int, dim: int, *, min_count: int = DEFAULT_MIN_COUNT):
        _check_min_count(min_count)
        self.num_classes, self.dim, self.min_count = num_classes, dim, min_count
        self.variability_tokens = 0
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.sums = np.zeros((num_classes, dim))
        self.within_sq = np.zeros(num_classes)
        self.within_cov = np.zeros((dim, dim))
        self.agree = self.evaluated = 0
        self.study_hits = self.study_evaluated = 0  # the linguistic_collapse convention's NC4
        self._means = None

    def _batch(self, H, y) -> tuple[np.ndarray, np.ndarray]:
        H, y = _check(H, y, self.num_classes)
        if H.shape[1] != self.dim:
            raise ValueError(f"features of dimension {H.shape[1]}, but the accumulator was made for dim={self.dim}: "
                             "pass the same layer's features in every batch, or make it with the right dim")
        return H, y

    def add_means(self, H, y) -> None:
        if self._means is not None:
            raise RuntimeError("pass 1 (add_means) must finish before pass 2 (add_variability) starts")
        H, y = self._batch(H, y)
        np.add.at(self.sums, y, H)
        self.counts += np.bincount(y, minlength=self.num_classes)

    @property
    def means(self) -> np.ndarray:
        if self._means is None:
            if not self.counts.any():
                raise ValueError("no features were added (pass 1 saw no data)")
            self._means = self.sums / np.maximum(self.counts, 1)[:, None]
        return self._means

    @property
    def included(self) -> np.ndarray:
        return self.counts >= self.min_count

    def add_variability(self, H, y) -> None:
        H, y = self._batch(H, y)
        keep = self.included[y]
        residuals = H[keep] - self.means[y[keep]]
        self.within_sq += np.bincount(y[keep], weights=np.sum(residuals**2, axis=1), minlength=self.num_classes)
        self.within_cov += residuals.T @ residuals
        self.variability_tokens += int(keep.sum())

    def add_decisions(self, H, y, W, bias=None, *, layout: str = "out_in") -> None:
        H, y = self._batch(H, y)
        W, bias = _check_head(W, bias, self.num_classes, self.dim, layout)
        agree, evaluated = agreement(H, y, self.means, self.included, W, bias)
        self.agree += agree
        self.evaluated += evaluated
        hits, evaluated = collapse_studies.study_decisions(H, y, self.means, self.included, W)
        self.study_hits += hits
        self.study_evaluated += evaluated

    def result(self, W=None, *, layout: str = "out_in", convention: str = "default") -> dict:
        """The metrics in `convention` ("default" or "linguistic_collapse"; see collapse_metrics)."""
        collapse_studies.check_convention(convention)
        expected = int(self.counts[self.included].sum())
        if self.variability_tokens != expected:
            # without pass 2 the within-class scatter is 0 and nc1 = cdnv = 0 would read as perfect collapse
            raise ValueError(f"pass 2 (add_variability) saw {self.variability_tokens} tokens of the included classes, "
                             f"pass 1 saw {expected}: run add_variability over the same data as add_means")
        decided = (self.agree, self.evaluated) if self.evaluated else None
        if W is not None:
            W, _ = _check_head(W, None, self.num_classes, self.dim, layout)
        if convention == "linguistic_collapse":
            decided = (self.study_hits, self.study_evaluated) if self.study_evaluated else None
            return collapse_studies.linguistic_collapse(self.counts, self.means, self.within_sq, self.included, W,
                                                        decided)
        return metrics_from_statistics(self.counts, self.means, self.within_sq, self.within_cov, self.included,
                                       W, decided)
