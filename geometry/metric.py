"""The pullback metric g(x) = J(x)ᵀ J(x) a layer induces on its input space.

For F(x) = φ(Wx + b), g = Wᵀ D_φ² W: the eigenvalues of g are the squared singular
values of J, and ½ log det g is the log volume element (`spectra.log_volume`).

Also here: finite-distance fidelity of a representation — distance distortion, k-nearest-
neighbour agreement and the Spearman correlation of pairwise distances.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg  # eigh_tridiagonal, solve_triangular
import numpy as np

from geometry import layers
from geometry.shapes import AnyArray, Float, Shaped, as_float_array, real_numeric, shape_checked


def _finite(name: str, value, minimum_rows: int = 1) -> jax.Array:
    """value as a floating JAX array with >= minimum_rows rows and no NaN/inf (not checked under a trace)."""
    array = as_float_array(name, value, finite=True)
    if array.ndim and (array.shape[0] < minimum_rows or 0 in array.shape):
        raise ValueError(f"{name} must hold at least {minimum_rows} non-empty rows, got shape {tuple(array.shape)}")
    return array


def _host_float64(name: str, value) -> np.ndarray:
    """value as a float64 NumPy array whatever jax_enable_x64 says (a float64 input stays exact),
    refusing non-real data and NaN/inf like `_finite`."""
    array = np.asarray(value)
    if not real_numeric(array.dtype):
        raise ValueError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or inf values (first at index {np.argwhere(~np.isfinite(array))[0].tolist()})")
    return array


@shape_checked
def pullback_metric(J: Float[AnyArray, "*batch m n"]) -> Float[jax.Array, "*batch n n"]:
    """Pullback metric g = JᵀJ of a map with Jacobian J: the inner product the layer induces on
    its input space, ‖J v‖² = vᵀ g v.

    Args:
        J: (..., m, n) Jacobians, batched over every leading axis.

    Returns:
        (..., n, n) symmetric positive semi-definite matrices; singular exactly where J has a
        null direction (rank < n).

    Raises:
        ValueError: J is not a real floating array of at least two axes, or holds NaN or inf.
    """
    J = _finite("J", J)
    g = jnp.einsum("...ki,...kj->...ij", J, J)
    if not isinstance(g, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(g))):
        raise ValueError(f"JᵀJ overflows {g.dtype} (|J| up to {float(jnp.max(jnp.abs(J))):.3g}): rescale J, or enable "
                         "float64 with jax.config.update('jax_enable_x64', True)")
    return g


@shape_checked
def dense_layer_singular_values(weight, derivatives: Float[AnyArray, "N m"], *, layout: str = "out_in", refine: int = 16,
                                chunk_size: int = 64) -> jax.Array:
    """Singular values of J = D_φ W at many inputs, from the metric instead of an SVD of J.

    weight: W (m, n) — a `geometry.layers.Dense`, a Flax `nnx.Linear` (its (n, m) kernel is
    transposed), or an array read in `layout` ("out_in": (m, n), the default; "in_out": a Flax
    kernel (n, m)). derivatives (N, m): the values φ'(z) at each input. Returns (N, min(m, n)),
    descending. The squared singular values are the eigenvalues of the pullback metric
    g = Wᵀ D² W, and — the same nonzero eigenvalues — of J Jᵀ = D (W Wᵀ) D = (W Wᵀ) ⊙ d dᵀ.
    The smaller side is used: for m ≤ n the Gram matrix W Wᵀ is formed once and each input
    costs an elementwise product and one symmetric eigenvalue problem (tridiagonalisation and
    bisection, no eigenvectors), with no per-input matrix product and no SVD.

    Squaring costs accuracy at the bottom of the spectrum: an eigenvalue error of ~eps σ_max²
    is an error of ~eps σ_max² / σ in σ (float32: ~2e-4 σ_max for a square Gaussian W, whose
    σ_min ≈ σ_max / 4n). So the `refine` smallest values are recomputed without squaring
    (Rayleigh–Ritz): a basis V of the metric's bottom eigenvectors (inverse iteration on the
    tridiagonal matrix, mapped back through its Householder reflectors) gives them as the
    singular values of Jᵀ V (or J V), an (n, refine) matrix whose rounding error is ~eps σ_max.
    V itself carries the float32 tridiagonalisation's error, which reaches the refined squared
    values as ~(eps σ_max²)² / σ_refine², and values above the refined ones keep
    ~eps σ_max² / σ; both shrink as `refine` grows. For m = n = 1024 in float32 the largest
    error is 2e-4 σ_max with refine=0 (which skips the step), 1e-5 with refine=16 and 4e-6
    with refine=32 (a float32 SVD of D W: 6e-6); refine=16 added 7–20% to the time on CPU.
    Raise `refine` when more singular values than that lie below ~1e-2 σ_max (many dead or
    saturated units); float64 inputs make every value accurate to ~1e-12 σ_max.
    """
    weight, derivatives = layers.dense_weight(weight, layout=layout), _finite("derivatives", derivatives)
    weight = _finite("weight", weight)
    m, n = weight.shape
    if derivatives.ndim != 2 or derivatives.shape[1] != m:
        flax_hint = (" — the weight looks like a Flax kernel (in, out): pass layout='in_out' or the nnx.Linear"
                     if derivatives.ndim == 2 and derivatives.shape[1] == n else "")
        raise ValueError(f"derivatives must have shape (N, {m}) for a weight read as (out, in) = {(m, n)} "
                         f"(layout={layout!r}), got {tuple(derivatives.shape)}{flax_hint}")
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    return _dense_layer_singular_values(weight, derivatives, min(chunk_size, derivatives.shape[0]), m <= n,
                                        min(refine, m, n))


@functools.partial(jax.jit, static_argnames=("chunk_size", "gram_side", "refine"))
def _dense_layer_singular_values(weight, derivatives, chunk_size, gram_side, refine):
    gram = weight @ weight.T if gram_side else None  # (m, m), once for every input

    def one(d):  # d: (m,)
        if gram_side:
            metric = gram * jnp.outer(d, d)  # J Jᵀ, (m, m)
        else:
            scaled = d[:, None] * weight
            metric = scaled.T @ scaled  # Wᵀ D² W, (n, n)
        # Householder tridiagonalisation, then bisection: no eigenvectors (jnp.linalg.eigvalsh
        # computes them too and took 2.7× as long for k = 1024 on CPU)
        packed, diagonal, off_diagonal, taus = jax.lax.linalg.tridiagonal(metric, lower=True)
        eigenvalues = jnp.sort(jax.scipy.linalg.eigh_tridiagonal(diagonal, off_diagonal, eigvals_only=True))
        values = jnp.sqrt(jnp.clip(eigenvalues, 0.0, None))  # ascending
        if refine:
            bottom = tridiagonal_bottom_eigenvectors(diagonal, off_diagonal, eigenvalues[:refine])
            basis = apply_tridiagonal_q(packed, taus, bottom)  # the metric's bottom eigenvectors, (k, refine)
            factor = weight.T @ (d[:, None] * basis) if gram_side else d[:, None] * (weight @ basis)
            values = jnp.sort(values.at[:refine].set(jnp.linalg.svd(factor, compute_uv=False)))
        return values[::-1]

    return jax.lax.map(one, derivatives, batch_size=chunk_size)


def chain_log_volume(weights, derivatives, *, layout: str = "out_in") -> dict:
    """Σ log σ_i of the Jacobian J = D_L W_L ⋯ D_1 W_1 of a stack of dense layers with elementwise
    activations, at many inputs, exactly and without forming J or any per-input matrix.

    weights: the L layers' W_l (each as `dense_layer_singular_values` takes it: a `layers.Dense`,
    an `nnx.Linear` or an array in `layout`), sizes n_0 → n_1 → … → n_L; derivatives: L arrays
    (N, n_l) of φ_l'(z_l) at each input (φ' = 1 for a layer without activation).

    With r = min(n_0, n_L) and every inner width n_1, …, n_{L−1} equal to r, J is a product of
    square r × r factors, a wide first one and, if n_L > r, a tall last one, and its
    log volume splits over the layers: for each factor with r outputs,
    log vol(D_l W_l) = Σ_i log |d_l,i| + Σ log σ(W_l) (J Jᵀ = D W Wᵀ D, det = det D² det W Wᵀ),
    where Σ log σ(W_l) is the same for every input and computed once (float64 SVD); a tall last
    factor takes ½ log det(W_Lᵀ D_L² W_L) per input from `dense_layer_singular_values`. One forward
    pass for the derivatives is then the whole per-input cost — where SLQ needs a Krylov depth near r at
    condition numbers like 1e7 (`geometry.matfree.log_volume`). Other widths make J's rank smaller
    than min(m, n) or the split false: ValueError naming the matrix-free and dense routes.

    Returns {"values": (N,) float64 (−inf where some d_l,i = 0: J is singular), "per_layer": (N, L)
    each factor's log volume (how much volume each layer takes away), "rounding": (N,)
    a first-order estimate of the error from the float64 SVDs and sums (the derivatives are
    taken as given: their own rounding is the caller's)}."""
    if not isinstance(weights, (list, tuple)) or not isinstance(derivatives, (list, tuple)) or not weights:
        raise ValueError("weights and derivatives must be non-empty lists, one entry per layer")
    if len(weights) != len(derivatives):
        raise ValueError(f"got {len(weights)} weights but {len(derivatives)} derivative arrays: one per layer")
    weights = [_host_float64(f"weights[{i}]", layers.dense_weight(w, layout=layout)) for i, w in enumerate(weights)]
    derivatives = [_host_float64(f"derivatives[{i}]", d) for i, d in enumerate(derivatives)]
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    for i, w in enumerate(weights):
        if w.shape[1] != sizes[i]:
            raise ValueError(f"weights[{i}] takes {w.shape[1]} inputs but layer {i - 1} gives {sizes[i]} outputs "
                             f"(sizes read as (out, in) with layout={layout!r})")
    count = derivatives[0].shape[0] if derivatives[0].ndim == 2 else -1
    for i, d in enumerate(derivatives):
        if d.ndim != 2 or d.shape != (count, sizes[i + 1]):
            raise ValueError(f"derivatives[{i}] must have shape (N, {sizes[i + 1]}) with the same N for every "
                             f"layer, got {tuple(d.shape)}")
    r = min(sizes[0], sizes[-1])
    if any(size != r for size in sizes[1:-1]):
        raise ValueError(f"layer sizes {sizes}: the log volume splits over the layers only when every inner width "
                         f"equals min(n_0, n_L) = {r}; use geometry.matfree.log_volume (SLQ with its error) or "
                         "geometry.spectra.log_volume on the dense Jacobian")
    eps = np.finfo(np.float64).eps
    per_layer, rounding = np.zeros((count, len(weights))), np.zeros(count)
    with np.errstate(divide="ignore"):  # a zero derivative is a singular J: −inf, reported as such
        for i, (w, d) in enumerate(zip(weights, derivatives)):
            if w.shape[0] == r:  # D on the short side: its determinant factors out
                sigma = np.linalg.svd(w, compute_uv=False)
                logs = np.log(np.abs(d))
                per_layer[:, i] = logs.sum(axis=1) + np.log(sigma).sum()
                rounding += eps * (np.sum(sigma[0] / sigma) + np.abs(logs).sum(axis=1))
            else:  # a tall last factor: ½ log det(Wᵀ D² W) at each input
                with jax.enable_x64(True):
                    sigma = np.asarray(dense_layer_singular_values(w, d))  # (N, r)
                per_layer[:, i] = np.log(sigma).sum(axis=1)
                rounding += eps * np.sum(sigma[:, :1] / sigma, axis=1)
    return {"values": per_layer.sum(axis=1), "per_layer": per_layer, "rounding": rounding}


def tridiagonal_bottom_eigenvectors(diagonal, off_diagonal, shifts, iterations: int = 3):
    """Orthonormal basis (k, len(shifts)) of the eigenvectors of the symmetric tridiagonal
    matrix for its eigenvalues nearest `shifts` (approximate eigenvalues, ascending).

    Inverse iteration, each vector with its own shift, the block re-orthonormalised by QR
    after each solve: close eigenvalues (clusters at zero) then still give independent
    vectors spanning the invariant subspace, which is all the Rayleigh–Ritz step needs.
    """
    size = diagonal.shape[0]
    lower = jnp.broadcast_to(jnp.pad(off_diagonal, (1, 0)), (len(shifts), size))
    upper = jnp.broadcast_to(jnp.pad(off_diagonal, (0, 1)), (len(shifts), size))
    shifted = diagonal[None, :] - shifts[:, None]  # (refine, k)

    def step(_, vectors):  # (refine, k), orthonormal rows
        solved = jax.lax.linalg.tridiagonal_solve(lower, shifted, upper, vectors[:, :, None],
                                                  perturb_singular=True)[:, :, 0]
        solved = solved / jnp.linalg.norm(solved, axis=1, keepdims=True)  # QR's accuracy is normwise
        return jnp.linalg.qr(solved.T)[0].T

    start = jax.random.normal(jax.random.key(0), (len(shifts), size), diagonal.dtype)
    return jax.lax.fori_loop(0, iterations, step, jnp.linalg.qr(start.T)[0].T).T


def apply_tridiagonal_q(packed, taus, vectors, block: int = 16):
    """Q @ vectors for the Q of `jax.lax.linalg.tridiagonal(A, lower=True)`, A = Q T Qᵀ.

    LAPACK's sytrd ('L') leaves Q = H_0 H_1 … H_(k−2), H_i = I − τ_i v_i v_iᵀ with
    v_i = e_(i+1) + packed[i+2:, i]. Reflectors are applied a block at a time as
    I − V T Vᵀ (compact WY), T upper triangular with T⁻¹ = diag(1/τ) + strictly-upper(VᵀV),
    so a block costs matrix products and a small triangular solve instead of `block`
    rank-one updates. Block j's reflectors vanish above row j·block + 1, so only the rows
    below are read and updated (half the work of full-height blocks). Identity reflectors
    (τ = 0) are dropped. The loop over blocks is unrolled: static slices let XLA read each
    block in place, where a `fori_loop` of dynamic slices took twice as long on CPU; blocks
    grow past `block` for k > 64 · block, so that at most 64 are unrolled.
    """
    size = packed.shape[0]
    block = max(block, -(-size // 64))
    taus = jnp.pad(taus, (0, 1))  # H_(k−1) = I: one τ per column
    for start in reversed(range(0, size, block)):  # Q v = H_0 (H_1 (… v)): last block first
        stop = min(start + block, size)
        rows = jnp.arange(start, size)[:, None]
        columns = jnp.arange(start, stop)[None, :]
        tau = taus[start:stop][None, :]
        active = tau != 0
        reflectors = (jnp.where(rows > columns + 1, packed[start:, start:stop], 0.0)
                       + (rows == columns + 1).astype(packed.dtype))
        reflectors = jnp.where(active, reflectors, 0.0)  # (k − start, block)
        inverse_factor = (jnp.triu(reflectors.T @ reflectors, 1)
                          + jnp.diag(1.0 / jnp.where(active, tau, 1.0)[0]))
        coefficients = jax.scipy.linalg.solve_triangular(inverse_factor, reflectors.T @ vectors[start:], lower=False)
        vectors = vectors.at[start:].add(-(reflectors @ coefficients))
    return vectors


@shape_checked
def metric_ellipse(g: Float[AnyArray, "*batch 2 2"]) -> tuple[Float[jax.Array, "*batch 2"],
                                                     Float[jax.Array, "*batch"]]:
    """Glyph of a 2×2 metric: (semi_axes (..., 2), angle (...,)).

    The ellipse is the image shape of the unit circle under the layer: semi-axes
    √λ_max ≥ √λ_min (λ the eigenvalues of g, i.e. the singular values of J), the major
    axis at `angle` radians from the first input coordinate (the input direction that
    is stretched most). A degenerate metric gives a zero minor axis.
    """
    if g.shape[-2:] != (2, 2):
        raise ValueError(f"metric_ellipse needs 2x2 metrics, got shape {tuple(g.shape)}")
    g = _finite("g", g)
    eigenvalues, eigenvectors = jnp.linalg.eigh(g)  # ascending
    semi_axes = jnp.sqrt(jnp.clip(eigenvalues[..., ::-1], 0.0, None))
    major = eigenvectors[..., :, 1]
    return semi_axes, jnp.arctan2(major[..., 1], major[..., 0])


def distance_distortion(f, x: jax.Array, y: jax.Array) -> jax.Array:
    """‖f(x) − f(y)‖ / ‖x − y‖ for batched pairs x, y of shape (N, n)."""
    fx, fy = jax.vmap(f)(x), jax.vmap(f)(y)
    return jnp.linalg.norm((fx - fy).reshape(len(x), -1), axis=-1) / jnp.linalg.norm(x - y, axis=-1)


@shape_checked
def pairwise_distances(X: Float[AnyArray, "N d"]) -> Float[jax.Array, "N N"]:
    """(N, N) Euclidean distances between the rows of X (N, d)."""
    X = _finite("X", X)
    scale = jnp.max(jnp.abs(X))
    scale = jnp.where(scale > 0, scale, 1.0)
    X = X / scale  # squares of large features would overflow float32; distances scale back exactly
    squared = jnp.sum(X**2, axis=1)
    gram = X @ X.T
    distances = scale * jnp.sqrt(jnp.clip(squared[:, None] + squared[None, :] - 2 * gram, 0.0, None))
    return jnp.where(jnp.eye(len(X), dtype=bool), 0.0, distances)  # a point's own distance is 0, not √rounding


def _point_sets(X, Y, minimum: int):
    """Two representations of the same points: (N, ...) arrays with equal N >= minimum, finite."""
    if np.ndim(X) < 2 or np.ndim(Y) < 2:
        raise ValueError(f"X and Y must be (N, features...) arrays of the same points, got shapes {np.shape(X)} and "
                         f"{np.shape(Y)}")
    if len(X) != len(Y) or len(X) < minimum:
        raise ValueError(f"X and Y must hold the same points, at least {minimum}: got {len(X)} and {len(Y)} rows")
    X, Y = _finite("X", X, minimum), _finite("Y", Y, minimum)
    return X.reshape(len(X), -1), Y.reshape(len(Y), -1)


@shape_checked
def knn_agreement(X: Shaped[AnyArray, "N ..."], Y: Shaped[AnyArray, "N ..."], k: int = 10) -> float:
    """Mean over points of |N_k^X(i) ∩ N_k^Y(i)| / k: how much of each point's k-nearest-
    neighbour set in X survives in Y (1 = neighbourhoods preserved; k/(N−1) = chance).
    Ties in Y (e.g. points a ReLU layer collapsed together) are broken by index."""
    X, Y = _point_sets(X, Y, minimum=2)
    n = len(X)
    if isinstance(k, bool) or int(k) != k or not 0 < k < n:
        raise ValueError(f"need 0 < k < number of points ({n}), got k={k}")
    neighbours = []
    for distances in (np.array(pairwise_distances(X), np.float64), np.array(pairwise_distances(Y), np.float64)):
        np.fill_diagonal(distances, np.inf)
        neighbours.append(np.argsort(distances, axis=1, kind="stable")[:, :k])
    overlap = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(*neighbours)]
    return float(np.mean(overlap) / k)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their mean rank (as Spearman's ρ requires)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
    ends = np.concatenate([starts[1:], [len(values)]])
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length vectors (average ranks for ties)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two vectors of the same length >= 2, got {len(a)} and {len(b)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("spearman: the vectors contain NaN or inf")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra**2) * np.sum(rb**2))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else 0.0


@shape_checked
def distance_rank_correlation(X: Shaped[AnyArray, "N ..."], Y: Shaped[AnyArray, "N ..."]) -> float:
    """Spearman ρ between all pairwise distances in X and the same pairs' distances in Y."""
    X, Y = _point_sets(X, Y, minimum=3)
    upper = np.triu_indices(len(X), k=1)
    return spearman(np.asarray(pairwise_distances(X))[upper], np.asarray(pairwise_distances(Y))[upper])
