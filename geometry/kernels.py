"""Kernel functions, Gram matrices and the facts that make a kernel a kernel.

* Yat kernel: k(x, z) = (x·z + b)² / (‖x − z‖² + ε). For b ≥ 0 and ε > 0 it is positive
  semi-definite: (x·z + b)² is a polynomial kernel with non-negative coefficients, and
  1/(‖x − z‖² + ε) is a completely monotone function of ‖x − z‖² (Schoenberg), so both
  are PSD and so is their product (Schur). With b < 0 the cross term 2b x·z is not, and
  Gram matrices can have negative eigenvalues.
* RBF kernel: k(x, z) = exp(−‖x − z‖² / (2σ²)), positive definite for σ > 0.

`min_eigenvalue` and `is_psd` check a Gram matrix (tolerance: λ_min ≥ −rtol·λ_max, rtol
1e-6 by default, because eigenvalues of an exactly PSD matrix come out of a float
eigensolver as small negatives of size ~eps·λ_max). `rkhs_norm` is ‖f‖²_H = αᵀ K α for
f = Σ_j α_j k(·, z_j).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def yat(x: jax.Array, z: jax.Array, b: float = 0.0, epsilon: float = 1e-3) -> jax.Array:
    """(x·z + b)² / (‖x − z‖² + ε) for one pair of vectors."""
    return (jnp.dot(x, z) + b) ** 2 / (jnp.sum((x - z) ** 2) + epsilon)


def rbf(x: jax.Array, z: jax.Array, sigma: float = 1.0) -> jax.Array:
    """exp(−‖x − z‖² / (2σ²)) for one pair of vectors."""
    return jnp.exp(-jnp.sum((x - z) ** 2) / (2.0 * sigma**2))


def gram(kernel, X: jax.Array, Z: jax.Array | None = None, **params) -> jax.Array:
    """(n, m) matrix k(x_i, z_j); Z defaults to X."""
    X = jnp.asarray(X)
    Z = X if Z is None else jnp.asarray(Z)
    return jax.vmap(lambda x: jax.vmap(lambda z: kernel(x, z, **params))(Z))(X)


def min_eigenvalue(K: jax.Array) -> jax.Array:
    """Smallest eigenvalue of the symmetric part of K."""
    K = jnp.asarray(K)
    return jnp.linalg.eigvalsh(0.5 * (K + jnp.swapaxes(K, -1, -2)))[..., 0]


def is_psd(K: jax.Array, rtol: float = 1e-6) -> jax.Array:
    """λ_min ≥ −rtol · λ_max (see the module docstring for why a tolerance)."""
    eigenvalues = jnp.linalg.eigvalsh(0.5 * (K + jnp.swapaxes(K, -1, -2)))
    return eigenvalues[..., 0] >= -rtol * jnp.abs(eigenvalues[..., -1])


def rkhs_norm(alpha: jax.Array, K: jax.Array) -> jax.Array:
    """‖f‖²_H = αᵀ K α for f = Σ_j α_j k(·, z_j); α of shape (m,) or (m, outputs)."""
    alpha = jnp.asarray(alpha)
    return jnp.einsum("i...,ij,j...->...", alpha, K, alpha)
