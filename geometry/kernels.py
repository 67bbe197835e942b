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
import numpy as np

from geometry.shapes import AnyArray, Float, Shaped, as_float_array, shape_checked


def _finite_float(name: str, value, shape_rule: str) -> jax.Array:
    """value as a floating JAX array, refusing NaN/inf and non-numeric input (checks skipped under a trace)."""
    try:
        return as_float_array(name, value, finite=True)
    except ValueError as error:
        raise ValueError(f"{error} (expected {shape_rule})") from None


def _square(K) -> jax.Array:
    K = _finite_float("K", K, "(..., n, n)")
    if K.ndim < 2 or K.shape[-1] != K.shape[-2] or K.shape[-1] == 0:
        raise ValueError(f"K must be a non-empty square matrix (..., n, n), got shape {K.shape}")
    return K


def yat(x: jax.Array, z: jax.Array, b: float = 0.0, epsilon: float = 1e-3) -> jax.Array:
    """(x·z + b)² / (‖x − z‖² + ε) for one pair of vectors."""
    return (jnp.dot(x, z) + b) ** 2 / (jnp.sum((x - z) ** 2) + epsilon)


def rbf(x: jax.Array, z: jax.Array, sigma: float = 1.0) -> jax.Array:
    """exp(−‖x − z‖² / (2σ²)) for one pair of vectors."""
    return jnp.exp(-jnp.sum((x - z) ** 2) / (2.0 * sigma**2))


@shape_checked
def gram(kernel, X: Shaped[AnyArray, "n d"], Z: Shaped[AnyArray, "m d"] | None = None,
         **params) -> Float[jax.Array, "n _"]:
    """(n, m) matrix k(x_i, z_j); Z defaults to X."""
    X = _finite_float("X", X, "(n, d)")
    Z = X if Z is None else _finite_float("Z", Z, "(m, d)")
    if X.ndim != 2 or Z.ndim != 2 or X.shape[1] != Z.shape[1]:
        raise ValueError(f"X and Z must be (n, d) and (m, d) arrays with the same d, got {X.shape} and {Z.shape}")
    return jax.vmap(lambda x: jax.vmap(lambda z: kernel(x, z, **params))(Z))(X)


@shape_checked
def min_eigenvalue(K: Shaped[AnyArray, "*batch n n"]) -> Float[jax.Array, "*batch"]:
    """Smallest eigenvalue of the symmetric part of K."""
    K = _square(K)
    return jnp.linalg.eigvalsh(0.5 * (K + jnp.swapaxes(K, -1, -2)))[..., 0]


@shape_checked
def is_psd(K: Shaped[AnyArray, "*batch n n"], rtol: float = 1e-6) -> Shaped[jax.Array, "*batch"]:
    """λ_min ≥ −rtol · λ_max (see the module docstring for why a tolerance)."""
    K = _square(K)
    if not (np.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"rtol must be a non-negative number, got {rtol}")
    eigenvalues = jnp.linalg.eigvalsh(0.5 * (K + jnp.swapaxes(K, -1, -2)))
    return eigenvalues[..., 0] >= -rtol * jnp.abs(eigenvalues[..., -1])


@shape_checked
def rkhs_norm(alpha: Shaped[AnyArray, "m *outputs"], K: Shaped[AnyArray, "m m"]) -> Float[jax.Array, "*outputs"]:
    """‖f‖²_H = αᵀ K α for f = Σ_j α_j k(·, z_j); α of shape (m,) or (m, outputs)."""
    K = _square(K)
    alpha = _finite_float("alpha", alpha, "(m,) or (m, outputs)")
    if alpha.ndim not in (1, 2) or alpha.shape[0] != K.shape[-1] or K.ndim != 2:
        raise ValueError(f"alpha must be (m,) or (m, outputs) for an (m, m) K, got alpha {alpha.shape}, K {K.shape}")
    return jnp.einsum("i...,ij,j...->...", alpha, K, alpha)
