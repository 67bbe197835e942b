"""Centered kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019) between representations.

For representations X (n, p) and Y (n, q) of the same n examples, with Gram matrices
K = k(X), L = l(Y) and centring H = I − 11ᵀ/n:

    HSIC(K, L) = tr(K H L H) / (n − 1)²,     CKA = HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)).

Linear kernel: K = X Xᵀ (then CKA = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) for centred X, Y).
RBF kernel: K_ij = exp(−‖x_i − x_j‖² / (2σ²)), σ² = `sigma_scale`² × a median of squared
distances, computed separately for X and Y. `sigma_convention` names which median:

    "kornblith"     the median over all n² entries of the squared-distance matrix, its zero
                    diagonal included — what Kornblith et al.'s reference code does (default);
    "off_diagonal"  the median over the n(n − 1) distinct pairs only (this library's
                    convention before; 1.3e-3 apart in CKA at n = 200).

Debiased: HSIC replaced by the unbiased estimator of Song et al. (2012), which needs
n ≥ 4 and drives CKA of independent representations to ≈ 0 instead of a positive bias.

Numerics: every Gram matrix and HSIC is computed in float64 whatever JAX's default, after
centring each representation and scaling it to unit Frobenius norm (CKA is invariant to
both), so features of any scale — 3e-6 in a vanishing tanh layer, 1e6 in an exploding
one — give the same answer as at unit scale. Integer features are converted first. A
representation that is constant across the examples has no geometry to compare: CKA is
undefined and raises `ValueError` rather than returning 0.

`cka_permutation_test` calibrates a CKA value: it recomputes CKA with Y's examples
shuffled (a seeded permutation of the pairing) and reports the p-value
(1 + #{null ≥ observed}) / (1 + permutations).
CKA is invariant to orthogonal transforms and isotropic scaling of either side (and,
for the linear kernel, to translations).
"""

from __future__ import annotations

import numpy as np

from geometry.shapes import AnyArray, Shaped, real_numeric, shape_checked

KERNELS = ("linear", "rbf")
SIGMA_CONVENTIONS = ("kornblith", "off_diagonal")


def _features(name: str, X) -> np.ndarray:
    """X as a centred float64 (n, features) array of unit Frobenius norm."""
    X = np.asarray(X)
    if not real_numeric(X.dtype):
        raise ValueError(f"{name} must be a real numeric array, got dtype {X.dtype} (a complex part would be "
                         "dropped: two arrays differing only there would look identical)")
    X = X.astype(np.float64).reshape(len(X), -1) if X.ndim > 2 else X.astype(np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise ValueError(f"{name} must be an (n, features) array with at least one feature, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or inf in {int((~np.isfinite(X)).any(axis=1).sum())} of {len(X)} rows")
    peak = np.max(np.abs(X)) if X.size else 0.0
    X = X / peak if peak > 0 else X  # first to O(1): centring and norms neither underflow nor overflow
    X = X - X.mean(axis=0)
    norm = np.linalg.norm(X)
    if norm == 0:
        raise ValueError(f"{name} is constant across the {len(X)} examples: CKA is undefined (no geometry to "
                         "compare); drop this representation or check the layer that produced it")
    return X / norm


def _check(X, Y, debiased: bool, kernel: str, sigma_convention: str) -> tuple[np.ndarray, np.ndarray]:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    if sigma_convention not in SIGMA_CONVENTIONS:
        raise ValueError(f"unknown sigma_convention {sigma_convention!r}; valid: {', '.join(SIGMA_CONVENTIONS)}")
    if len(np.shape(X)) < 2 or len(np.shape(Y)) < 2:
        raise ValueError(f"representations must be (n, features) arrays, got shapes {np.shape(X)} and {np.shape(Y)}")
    if len(X) != len(Y):
        raise ValueError(f"X and Y must hold the same examples: {len(X)} != {len(Y)} rows")
    minimum = 4 if debiased else 2
    if len(X) < minimum:
        raise ValueError(f"CKA needs at least {minimum} examples{' (debiased)' if debiased else ''}, got {len(X)}")
    return _features("X", X), _features("Y", Y)


def gram(X, kernel: str = "linear", sigma_scale: float = 1.0, sigma_convention: str = "kornblith") -> np.ndarray:
    """(n, n) float64 Gram matrix of the rows of X (taken as given: no centring or scaling)."""
    X = np.asarray(X)
    if X.dtype == bool or not np.issubdtype(X.dtype, np.number) or X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X must be a non-empty numeric (n, features) array, got {X.dtype} {X.shape}")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf")
    if kernel == "linear":
        return X @ X.T
    if kernel != "rbf":
        raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    if not (np.isfinite(sigma_scale) and sigma_scale > 0):
        raise ValueError(f"sigma_scale must be a positive number, got {sigma_scale}")
    squared = np.sum(X**2, axis=1)
    distances2 = np.clip(squared[:, None] + squared[None, :] - 2 * X @ X.T, 0.0, None)  # (n, n)
    np.fill_diagonal(distances2, 0.0)
    if sigma_convention == "kornblith":
        median = np.median(distances2)
    elif sigma_convention == "off_diagonal":
        median = np.median(distances2[~np.eye(len(X), dtype=bool)])
    else:
        raise ValueError(f"unknown sigma_convention {sigma_convention!r}; valid: {', '.join(SIGMA_CONVENTIONS)}")
    if median <= 0:
        raise ValueError("the median squared distance between examples is 0 (most of them coincide): the RBF "
                         "bandwidth is undefined; use kernel='linear' or fewer duplicate examples")
    return np.exp(-distances2 / (2 * sigma_scale**2 * median))


def _double_centred(K: np.ndarray) -> np.ndarray:
    """H K H, H = I − 11ᵀ/n."""
    return K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()


def _hollow(K: np.ndarray) -> np.ndarray:
    """K with its diagonal set to 0 (the unbiased estimator's K̃)."""
    return K - np.diag(np.diag(K))


def hsic(K, L, debiased: bool = False) -> float:
    """Biased HSIC tr(KHLH)/(n−1)², or the unbiased estimator of Song et al. (2012); float64."""
    K, L = np.asarray(K), np.asarray(L)
    minimum = 4 if debiased else 2
    for name, M in (("K", K), ("L", L)):
        if M.dtype == bool or not np.issubdtype(M.dtype, np.number) or M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise ValueError(f"{name} must be a square numeric (n, n) Gram matrix, got {M.dtype} {M.shape}")
    if K.shape != L.shape or len(K) < minimum:
        raise ValueError(f"K and L must be Gram matrices of the same n >= {minimum} examples, got {K.shape}, {L.shape}")
    K, L = K.astype(np.float64), L.astype(np.float64)
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(L))):
        raise ValueError("K or L contains NaN or inf")
    n = K.shape[0]
    if not debiased:
        Kc, Lc = _double_centred(K), _double_centred(L)
        return float(np.sum(Kc * Lc) / (n - 1) ** 2)
    K, L = _hollow(K), _hollow(L)
    trace_term = np.sum(K * L)
    sums_term = K.sum() * L.sum() / ((n - 1) * (n - 2))
    cross_term = 2.0 / (n - 2) * np.sum(K.sum(axis=0) * L.sum(axis=0))
    return float((trace_term + sums_term - cross_term) / (n * (n - 3)))


def _grams(X, Y, kernel, debiased, sigma_scale, sigma_convention):
    X, Y = _check(X, Y, debiased, kernel, sigma_convention)
    K, L = gram(X, kernel, sigma_scale, sigma_convention), gram(Y, kernel, sigma_scale, sigma_convention)
    self_k, self_l = hsic(K, K, debiased), hsic(L, L, debiased)
    if self_k <= 0 or self_l <= 0:
        # only the debiased estimator can get here (e.g. n = 4 with one dominant example)
        raise ValueError(f"HSIC of a representation with itself is {min(self_k, self_l):.3g} <= 0: too few examples "
                         "for the debiased estimator; use more examples or debiased=False")
    return K, L, np.sqrt(self_k * self_l)


@shape_checked
def cka(X: Shaped[AnyArray, "N ..."], Y: Shaped[AnyArray, "N ..."], kernel: str = "linear", debiased: bool = False,
        sigma_scale: float = 1.0, sigma_convention: str = "kornblith") -> float:
    """Centred kernel alignment between two representations of the same examples (Kornblith et al.
    2019): HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) of their Gram matrices, computed in float64
    after centring and unit-norm scaling whatever the input dtype or scale.

    Args:
        X: (N, ...) representation of N examples (flattened to (N, d₁) per example).
        Y: (N, ...) another representation of the same N examples, in the same order.
        kernel: "linear" or "rbf" (Gaussian, bandwidth σ = sigma_scale · median distance).
        debiased: use Song et al.'s (2012) unbiased HSIC (needs N ≥ 4) instead of the biased one.
        sigma_scale: multiplier of the RBF bandwidth (finite, > 0); ignored for "linear".
        sigma_convention: "kornblith" (median of all N² squared distances, the zero diagonal
            included, as Kornblith et al.'s code) or "off_diagonal" (distinct pairs only).

    Returns:
        CKA in [0, 1] (the debiased estimate can dip slightly below 0): 1 for representations equal
        up to an orthogonal map and isotropic scaling (linear kernel).

    Raises:
        ValueError: X and Y disagree in N, N < 2 (N < 4 when debiased), a representation is
            constant (CKA undefined), holds NaN or inf, or kernel / sigma_convention is unknown.
    """
    K, L, denominator = _grams(X, Y, kernel, debiased, sigma_scale, sigma_convention)
    return float(hsic(K, L, debiased) / denominator)


def cka_matrix(representations, kernel: str = "linear", debiased: bool = False, **options) -> np.ndarray:
    """(L, L) CKA between every pair of L representations of the same N examples (for instance
    the input, each layer's output and the logits, as `probe.outputs` gives them); each entry is
    `cka(representations[i], representations[j], ...)`."""
    if len(representations) == 0:
        raise ValueError("cka_matrix needs at least one representation")
    return np.array([[cka(a, b, kernel, debiased, **options) for b in representations] for a in representations])


@shape_checked
def cka_permutation_test(X: Shaped[AnyArray, "N ..."], Y: Shaped[AnyArray, "N ..."], kernel: str = "linear",
                         debiased: bool = False, *, permutations: int = 1000, seed: int = 0, sigma_scale: float = 1.0,
                         sigma_convention: str = "kornblith") -> dict:
    """CKA with a permutation p-value: how often CKA with Y's examples shuffled (the pairing
    with X broken) is at least the observed value. Returns {"cka", "p_value", "null_mean",
    "null_std", "null_quantile_95", "permutations", "seed"}; the smallest possible p-value is
    1 / (permutations + 1)."""
    if int(permutations) != permutations or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations}")
    K, L, denominator = _grams(X, Y, kernel, debiased, sigma_scale, sigma_convention)
    observed = float(hsic(K, L, debiased) / denominator)
    n = len(K)
    # HSIC(L, L) is permutation invariant, and so are the sums in the debiased estimator: only
    # the n² trace term (and the debiased cross term) is recomputed per shuffle
    if debiased:
        K, L = _hollow(K), _hollow(L)
        fixed = K.sum() * L.sum() / ((n - 1) * (n - 2))
        k_columns, l_columns = K.sum(axis=0), L.sum(axis=0)

        def statistic(order):
            cross = 2.0 / (n - 2) * np.sum(k_columns * l_columns[order])
            return (np.sum(K * L[np.ix_(order, order)]) + fixed - cross) / (n * (n - 3))
    else:
        K, L = _double_centred(K), _double_centred(L)

        def statistic(order):  # centring commutes with permuting rows and columns together
            return np.sum(K * L[np.ix_(order, order)]) / (n - 1) ** 2
    rng = np.random.default_rng(seed)
    null = np.array([statistic(rng.permutation(n)) / denominator for _ in range(int(permutations))])
    # a tolerance so that a permutation reproducing the observed value to rounding counts as "at least"
    exceed = int(np.sum(null >= observed - 1e-12 * max(1.0, abs(observed))))
    return {"cka": observed, "p_value": (1 + exceed) / (1 + int(permutations)), "null_mean": float(null.mean()),
            "null_std": float(null.std()), "null_quantile_95": float(np.quantile(null, 0.95)),
            "permutations": int(permutations), "seed": int(seed)}
