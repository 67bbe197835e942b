"""The pullback metric g(x) = J(x)ᵀ J(x) a layer induces on its input space.

For F(x) = φ(Wx + b), g = Wᵀ D_φ² W: the eigenvalues of g are the squared singular
values of J, and ½ log det g is the log volume element (`spectra.log_volume`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pullback_metric(J: jax.Array) -> jax.Array:
    """Jᵀ J for J of shape (..., m, n): a (..., n, n) symmetric PSD matrix."""
    return jnp.einsum("...ki,...kj->...ij", J, J)


def metric_ellipse(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Glyph of a 2×2 metric: (semi_axes (..., 2), angle (...,)).

    The ellipse is the image shape of the unit circle under the layer: semi-axes
    √λ_max ≥ √λ_min (λ the eigenvalues of g, i.e. the singular values of J), the major
    axis at `angle` radians from the first input coordinate (the input direction that
    is stretched most). A degenerate metric gives a zero minor axis.
    """
    if g.shape[-2:] != (2, 2):
        raise ValueError(f"metric_ellipse needs 2x2 metrics, got shape {tuple(g.shape)}")
    eigenvalues, eigenvectors = jnp.linalg.eigh(g)  # ascending
    semi_axes = jnp.sqrt(jnp.clip(eigenvalues[..., ::-1], 0.0, None))
    major = eigenvectors[..., :, 1]
    return semi_axes, jnp.arctan2(major[..., 1], major[..., 0])


def distance_distortion(f, x: jax.Array, y: jax.Array) -> jax.Array:
    """‖f(x) − f(y)‖ / ‖x − y‖ for batched pairs x, y of shape (N, n)."""
    fx, fy = jax.vmap(f)(x), jax.vmap(f)(y)
    return jnp.linalg.norm((fx - fy).reshape(len(x), -1), axis=-1) / jnp.linalg.norm(x - y, axis=-1)
