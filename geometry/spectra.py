"""Spectral summaries of Jacobians, batched over any leading axes.

Every function takes J of shape (..., m, n) and reduces the last two axes. With
σ_1 ≥ … ≥ σ_r the r = min(m, n) singular values:

* numerical rank: #{σ_i > tol}. Tolerance convention (NumPy's `matrix_rank`):
  tol = σ_1 · max(m, n) · eps(dtype) by default, or tol = rtol · σ_1 when `rtol` is given.
  An all-zero matrix has rank 0.
* effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σ_j σ_j, H the Shannon
  entropy with 0 log 0 = 0. Of I_k it is k. Of a zero matrix, 0.
* stable rank: ‖J‖_F² / ‖J‖₂² = Σ σ_i² / σ_1² (0 for a zero matrix).
* condition number: σ_1 / σ_r, and +inf when J is numerically rank-deficient
  (numerical rank < r, same tolerance as above).
* log volume: Σ_i log σ_i = ½ log det(JᵀJ) for m ≥ n; −inf when rank-deficient.

Wide Jacobians (m < n, e.g. a classifier's 10 logits of a 64-pixel input) have at most
m nonzero singular values, so r = min(m, n) = m: the log volume is then the log
*pseudo-volume* Σ_{i ≤ m} log σ_i = ½ log det(J Jᵀ) (the volume the map gives the
row space of J, the directions it does not ignore), and the condition number σ_1 / σ_m
is that of J restricted to its row space. Full rank then means rank m, not n. Nothing
changes for m ≥ n.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from geometry.shapes import AnyArray, Float, Int, as_float_array, shape_checked


def _refuse_nonfinite(values: jax.Array, axes: tuple[int, ...], what: str, unit: str) -> None:
    """ValueError naming which `unit`s (reduced over `axes`) hold NaN or inf; skipped under a trace:
    the spectra of a non-finite Jacobian would read as rank 0, condition inf, log volume −inf."""
    if isinstance(values, jax.core.Tracer):
        return
    finite = np.asarray(jnp.all(jnp.isfinite(values), axis=axes)).reshape(-1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{what} contains NaN or inf in {bad.size} of {finite.size} {unit} (first, flat index: "
                         f"{bad[:5].tolist()}); spectra of it would read as total rank collapse. Find where the "
                         "model produces them (jacobian_field raises there by default).")


def _checked(J):
    """J as a floating JAX array; ValueError for empty matrices, for NaN or inf, and for float64 values
    that float32 would turn into inf or 0 (shapes.as_float_array)."""
    J = as_float_array("J", J)
    if jnp.finfo(J.dtype).bits < 32:  # float16 / bfloat16: no SVD kernel; their values are exact in float32
        J = J.astype(jnp.float32)
    if J.shape[-1] == 0 or J.shape[-2] == 0:
        raise ValueError(f"J has empty matrices, shape {tuple(J.shape)}")
    _refuse_nonfinite(J, (-2, -1), "J", "matrices")
    return J


@shape_checked
def singular_values(J: Float[AnyArray, "*batch m n"]) -> Float[jax.Array, "*batch r"]:
    """Singular values of every matrix, in descending order.

    Args:
        J: (..., m, n) Jacobians (any real dtype; float16 / bfloat16 are computed in float32),
            batched over every leading axis.

    Returns:
        (..., min(m, n)) singular values, σ₁ ≥ … ≥ σ_r ≥ 0.

    Raises:
        ValueError: J is not a real floating array of at least two axes, has an empty matrix, or holds
            NaN or inf (whose spectra would read as total rank collapse).
    """
    return jnp.linalg.svd(_checked(J), compute_uv=False)


def _tolerance(sigma: jax.Array, shape: tuple[int, ...], dtype, rtol: float | None) -> jax.Array:
    if rtol is None:
        rtol = max(shape[-2:]) * jnp.finfo(dtype).eps
    return rtol * sigma[..., 0]


def _rank_from_sigma(sigma, shape, dtype, rtol):
    tol = _tolerance(sigma, shape, dtype, rtol)
    return jnp.sum(sigma > tol[..., None], axis=-1)


@shape_checked
def numerical_rank(J: Float[AnyArray, "*batch m n"], rtol: float | None = None) -> Int[jax.Array, "*batch"]:
    """Numerical rank: the number of singular values above the tolerance.

    An all-zero matrix has rank 0. A wide J (m < n) has rank at most m.

    Args:
        J: (..., m, n) Jacobians (any real dtype; float16 / bfloat16 are computed in float32),
            batched over every leading axis.
        rtol: relative tolerance: singular values ≤ rtol · σ₁ count as zero. None (default):
            max(m, n) · eps(dtype), NumPy's `matrix_rank` convention.

    Returns:
        (...,) integer ranks.

    Raises:
        ValueError: J is not a real floating array of at least two axes, has an empty matrix, or holds
            NaN or inf (whose spectra would read as total rank collapse).
    """
    J = _checked(J)
    return _rank_from_sigma(singular_values(J), J.shape, J.dtype, rtol)


def _effective_rank_from_sigma(sigma):
    total = jnp.sum(sigma, axis=-1, keepdims=True)
    p = sigma / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return jnp.where(total[..., 0] > 0, jnp.exp(entropy), 0.0)


@shape_checked
def effective_rank(J: Float[AnyArray, "*batch m n"]) -> Float[jax.Array, "*batch"]:
    """Roy & Vetterli's (2007) effective rank exp(H(p)), p = σ / ‖σ‖₁, H the Shannon entropy.

    Of the identity I_k it is k; of a zero matrix, 0. Unlike the numerical rank it needs no
    tolerance and moves continuously as singular values shrink.

    Args:
        J: (..., m, n) Jacobians (any real dtype; float16 / bfloat16 are computed in float32),
            batched over every leading axis.

    Returns:
        (...,) effective ranks in [0, min(m, n)] (1 for a rank-one matrix).

    Raises:
        ValueError: J is not a real floating array of at least two axes, has an empty matrix, or holds
            NaN or inf (whose spectra would read as total rank collapse).
    """
    return _effective_rank_from_sigma(singular_values(J))


def _stable_rank_from_sigma(sigma):
    top = sigma[..., :1]
    relative = sigma / jnp.where(top > 0, top, 1.0)  # σ_i/σ_max first: σ² overflows float32 beyond ~1e19
    return jnp.where(top[..., 0] > 0, jnp.sum(relative**2, axis=-1), 0.0)


@shape_checked
def stable_rank(J: Float[AnyArray, "*batch m n"]) -> Float[jax.Array, "*batch"]:
    """Stable rank ‖J‖_F² / ‖J‖₂² = Σ σ_i² / σ₁² (0 for a zero matrix).

    Args:
        J: (..., m, n) Jacobians (any real dtype; float16 / bfloat16 are computed in float32),
            batched over every leading axis.

    Returns:
        (...,) stable ranks in [1, min(m, n)] (0 for a zero matrix).

    Raises:
        ValueError: J is not a real floating array of at least two axes, has an empty matrix, or holds
            NaN or inf (whose spectra would read as total rank collapse).
    """
    return _stable_rank_from_sigma(singular_values(J))


def _singular_mask(sigma, shape, dtype, rtol):
    return _rank_from_sigma(sigma, shape, dtype, rtol) < sigma.shape[-1]


def _condition_from_sigma(sigma, singular):
    return jnp.where(singular, jnp.inf, sigma[..., 0] / jnp.where(singular, 1.0, sigma[..., -1]))


def _log_volume_from_sigma(sigma, singular):
    safe = jnp.where(singular[..., None], 1.0, sigma)
    return jnp.where(singular, -jnp.inf, jnp.sum(jnp.log(safe), axis=-1))


@shape_checked
def condition_number(J: Float[AnyArray, "*batch m n"], rtol: float | None = None) -> Float[jax.Array, "*batch"]:
    """Condition number σ₁ / σ_r over the r = min(m, n) singular values; +inf where J is
    numerically rank-deficient (rank < r with the `numerical_rank` tolerance).

    For a wide J (m < n) this is the conditioning of J on its row space.

    Args:
        J: (..., m, n) Jacobians (any real dtype; float16 / bfloat16 are computed in float32),
            batched over every leading axis.
        rtol: relative tolerance: singular values ≤ rtol · σ₁ count as zero. None (default):
            max(m, n) · eps(dtype), NumPy's `matrix_rank` convention.

    Returns:
        (...,) condition numbers ≥ 1, or +inf.

    Raises:
        ValueError: J is not a real floating array of at least two axes, has an empty matrix, or holds
            NaN or inf (whose spectra would read as total rank collapse).
    """
    J = _checked(J)
    sigma = singular_values(J)
    return _condition_from_sigma(sigma, _singular_mask(sigma, J.shape, J.dtype, rtol))


@shape_checked
def log_volume(J: Float[AnyArray, "*batch m n"], rtol: float | None = None) -> Float[jax.Array, "*batch"]:
    """Log volume element Σ_{i ≤ r} log σ_i = ½ log det(JᵀJ) for m ≥ n (½ log det(J Jᵀ), the
    log pseudo-volume of the row space, for a wide J); −inf where J is numerically rank-deficient.

    Args:
        J: (..., m, n) Jacobians (any real dtype; float16 / bfloat16 are computed in float32),
            batched over every leading axis.
        rtol: relative tolerance: singular values ≤ rtol · σ₁ count as zero. None (default):
            max(m, n) · eps(dtype), NumPy's `matrix_rank` convention.

    Returns:
        (...,) log volumes, or −inf.

    Raises:
        ValueError: J is not a real floating array of at least two axes, has an empty matrix, or holds
            NaN or inf (whose spectra would read as total rank collapse).
    """
    J = _checked(J)
    sigma = singular_values(J)
    return _log_volume_from_sigma(sigma, _singular_mask(sigma, J.shape, J.dtype, rtol))


@shape_checked
def summary(J: Float[AnyArray, "*batch m n"], rtol: float | None = None) -> dict[str, jax.Array]:
    """Every spectral statistic of this module from one SVD per matrix.

    Args:
        J: (..., m, n) Jacobians (any real dtype; float16 / bfloat16 are computed in float32),
            batched over every leading axis.
        rtol: relative tolerance: singular values ≤ rtol · σ₁ count as zero. None (default):
            max(m, n) · eps(dtype), NumPy's `matrix_rank` convention.

    Returns:
        dict of (...,) arrays: "sigma_max", "sigma_min", "numerical_rank", "effective_rank",
        "stable_rank", "condition_number", "log_volume" (each as its function defines it).

    Raises:
        ValueError: J is not a real floating array of at least two axes, has an empty matrix, or holds
            NaN or inf (whose spectra would read as total rank collapse).
    """
    J = _checked(J)
    return summarize_singular_values(singular_values(J), J.shape[-2:], J.dtype, rtol)


@shape_checked
def summarize_singular_values(sigma: Float[AnyArray, "*batch r"], matrix_shape: tuple[int, int], dtype,
                              rtol: float | None = None) -> dict[str, jax.Array]:
    """`summary` from precomputed singular values, for fields computed with
    `jacobian_field(..., reduce=spectra.singular_values)`, which never hold the Jacobians.

    Args:
        sigma: (..., r) singular values in descending order.
        matrix_shape: (m, n), the shape of the matrices they came from (sets the default tolerance).
        dtype: the dtype the matrices had (sets eps in the default tolerance).
        rtol: relative tolerance: singular values ≤ rtol · σ₁ count as zero. None (default):
            max(m, n) · eps(dtype), NumPy's `matrix_rank` convention.

    Returns:
        dict of (...,) arrays, as `summary` returns.

    Raises:
        ValueError: sigma holds NaN or inf.
    """
    sigma = jnp.asarray(sigma)
    _refuse_nonfinite(sigma, (-1,), "sigma", "sets of singular values")
    rank = _rank_from_sigma(sigma, tuple(matrix_shape), dtype, rtol)
    singular = rank < sigma.shape[-1]
    return {
        "sigma_max": sigma[..., 0],
        "sigma_min": sigma[..., -1],
        "numerical_rank": rank,
        "effective_rank": _effective_rank_from_sigma(sigma),
        "stable_rank": _stable_rank_from_sigma(sigma),
        "condition_number": _condition_from_sigma(sigma, singular),
        "log_volume": _log_volume_from_sigma(sigma, singular),
    }


def chained_ranks(layer_jacobians, rtol: float | None = None) -> list[jax.Array]:
    """Ranks of the products J_l ⋯ J_1 for l = 1..L, computed stably.

    rank(J_l ⋯ J_1) = rank(J_l Q), Q an orthonormal basis of the column space of the product so
    far, so each step factors one layer's matrix times an orthonormal basis: the condition number
    of the whole product — which for deep random networks exceeds 1/eps even in float64 — never
    enters. Ranks use the `numerical_rank` tolerance per step.

    Args:
        layer_jacobians: a non-empty sequence of (..., k_l, k_{l−1}) arrays, one per layer, with the
            same leading (batch) axes.
        rtol: as in `numerical_rank`, applied at every step.

    Returns:
        list of L (...,) integer arrays: the rank after layers 1, 2, …, L.

    Raises:
        ValueError: an empty sequence, a single array instead of a sequence, shapes that do not
            chain (k_l of one layer ≠ the input size of the next), or NaN / inf in a Jacobian.
    """
    if isinstance(layer_jacobians, (jax.Array, np.ndarray)) or len(layer_jacobians) == 0:
        raise ValueError("layer_jacobians must be a non-empty sequence of (..., k_l, k_{l-1}) arrays, one per layer")
    layer_jacobians = [_checked(J) if jnp.ndim(J) >= 2 else _checked(jnp.zeros((0, 0))) for J in layer_jacobians]
    for l, (J, previous) in enumerate(zip(layer_jacobians[1:], layer_jacobians), start=1):
        if J.shape[-1] != previous.shape[-2] or J.shape[:-2] != previous.shape[:-2]:
            raise ValueError(f"layer {l}'s Jacobian {tuple(J.shape)} does not chain with layer {l - 1}'s "
                             f"{tuple(previous.shape)}: need (..., k_l, k_(l-1)) with the same leading axes")
    ranks = []
    first = layer_jacobians[0]
    n0 = first.shape[-1]
    basis = jnp.broadcast_to(jnp.eye(n0, dtype=first.dtype), first.shape[:-2] + (n0, n0))
    for J in layer_jacobians:
        product = J @ basis  # (..., k_l, r): the product's image, one layer at a time
        u, sigma, _ = jnp.linalg.svd(product, full_matrices=False)
        rank = _rank_from_sigma(sigma, product.shape[-2:], product.dtype, rtol)
        ranks.append(rank)
        # keep the leading `rank` left singular vectors; zero the rest so shapes stay static
        columns = jnp.arange(u.shape[-1]).reshape((1,) * rank.ndim + (-1,))
        keep = columns < rank[..., None]
        basis = jnp.where(keep[..., None, :], u, 0.0)
    return ranks
