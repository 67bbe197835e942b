"""Centered kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019) between representations.

For representations X (n, p) and Y (n, q) of the same n examples, with Gram matrices
K = k(X), L = l(Y) and centring H = I − 11ᵀ/n:

    HSIC(K, L) = tr(K H L H) / (n − 1)²,     CKA = HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)).

Linear kernel: K = X Xᵀ (then CKA = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) for centred X, Y).
RBF kernel: K_ij = exp(−‖x_i − x_j‖² / (2σ²)), σ = `sigma_scale` × the median pairwise
distance (Kornblith et al.'s convention, computed separately for X and Y).
Debiased: HSIC replaced by the unbiased estimator of Song et al. (2012), which needs
n ≥ 4 and drives CKA of independent representations to ≈ 0 instead of a positive bias.
CKA is invariant to orthogonal transforms and isotropic scaling of either side (and,
for the linear kernel, to translations).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from geometry.shapes import AnyArray, Shaped, shape_checked

KERNELS = ("linear", "rbf")


def _check(X, Y, debiased: bool):
    X, Y = np.asarray(X), np.asarray(Y)
    X = X.reshape(len(X), -1) if X.ndim > 2 else X
    Y = Y.reshape(len(Y), -1) if Y.ndim > 2 else Y
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"representations must be (n, features) arrays, got shapes {X.shape} and {Y.shape}")
    if len(X) != len(Y):
        raise ValueError(f"X and Y must hold the same examples: {len(X)} != {len(Y)} rows")
    minimum = 4 if debiased else 2
    if len(X) < minimum:
        raise ValueError(f"CKA needs at least {minimum} examples{' (debiased)' if debiased else ''}, got {len(X)}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Y))):
        raise ValueError("representations contain NaN or inf")
    return jnp.asarray(X), jnp.asarray(Y)


def gram(X, kernel: str = "linear", sigma_scale: float = 1.0) -> jnp.ndarray:
    """(n, n) Gram matrix of the rows of X."""
    X = jnp.asarray(X)
    if kernel == "linear":
        return X @ X.T
    if kernel == "rbf":
        squared = jnp.sum(X**2, axis=1)
        distances2 = jnp.clip(squared[:, None] + squared[None, :] - 2 * X @ X.T, 0.0, None)
        off_diagonal = distances2[~np.eye(len(X), dtype=bool)]
        sigma = sigma_scale * jnp.sqrt(jnp.median(off_diagonal))
        return jnp.exp(-distances2 / (2 * jnp.maximum(sigma, 1e-30) ** 2))
    raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")


def hsic(K, L, debiased: bool = False) -> jnp.ndarray:
    """Biased HSIC tr(KHLH)/(n−1)², or the unbiased estimator of Song et al. (2012)."""
    n = K.shape[0]
    if not debiased:
        Kc = K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()
        Lc = L - L.mean(axis=0, keepdims=True) - L.mean(axis=1, keepdims=True) + L.mean()
        return jnp.sum(Kc * Lc) / (n - 1) ** 2
    K = K * (1 - jnp.eye(n, dtype=K.dtype))
    L = L * (1 - jnp.eye(n, dtype=L.dtype))
    trace_term = jnp.sum(K * L)
    sums_term = K.sum() * L.sum() / ((n - 1) * (n - 2))
    cross_term = 2.0 / (n - 2) * jnp.sum(K.sum(axis=0) * L.sum(axis=0))
    return (trace_term + sums_term - cross_term) / (n * (n - 3))


@shape_checked
def cka(X: Shaped[AnyArray, "N p"], Y: Shaped[AnyArray, "N q"], kernel: str = "linear", debiased: bool = False,
        sigma_scale: float = 1.0) -> float:
    """CKA between representations X (n, p) and Y (n, q) of the same n examples."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    X, Y = _check(X, Y, debiased)
    K, L = gram(X, kernel, sigma_scale), gram(Y, kernel, sigma_scale)
    denominator = jnp.sqrt(hsic(K, K, debiased) * hsic(L, L, debiased))
    return float(jnp.where(denominator > 0, hsic(K, L, debiased) / jnp.where(denominator > 0, denominator, 1.0), 0.0))
