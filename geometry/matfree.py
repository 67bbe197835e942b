"""Jacobian spectra without forming J: Golub–Kahan bidiagonalisation, stochastic Lanczos
quadrature and Hutchinson's estimator, from Jacobian-vector and vector-Jacobian products.

Every function takes the same `f` forms, `params=` and point shapes as
`geometry.jacobians.jacobian_field` (an NNX module, a bound method, a function of x, or
f(params, x) with `params=`), flattens each point's Jacobian to J (m, n), and touches J only
through products: J v by `jax.linearize` (one linearisation per point, reused) and Jᵀ u by
`jax.linear_transpose` of it. Memory per point is O(s · (m + n)) for s iterations, never m · n.
Points are vmapped in chunks and sharded over devices like `jacobian_field`.

Golub–Kahan (GK) with full reorthogonalisation: from a unit v₁, s steps give orthonormal
U (s, m), V (s, n) and an upper-bidiagonal B (s × s) with J Vᵀ = Uᵀ B and
Jᵀ Uᵀ = Vᵀ Bᵀ + β_s v_{s+1} e_sᵀ. The singular values of B (Ritz values) approximate those of
J from below; each Ritz triplet (σ_i, p_i, q_i) has residual ‖Jᵀ U p_i − σ_i V q_i‖ = β_s |p_i[s]|,
and Weyl's theorem for the augmented matrix [[0, J], [Jᵀ, 0]] puts a singular value of J within
that residual of σ_i: the reported `bound`. A value is `converged` when its bound is at most
`tol` · σ_max. With s = min(m, n) the bidiagonalisation is complete and the values exact (to
rounding), which is how `which="smallest"` gets the bottom of the spectrum by default.

Stochastic Lanczos quadrature (SLQ; Ubaru, Chen & Saad 2017): Lanczos on A = JᵀJ (or JJᵀ,
whichever is min(m, n) square) from a Rademacher probe z is GK from z/‖z‖, with tridiagonal
T = BᵀB, eigenvalues σ_j(B)² and first eigenvector components τ_j = q_j[1]; then
zᵀ g(A) z ≈ ‖z‖² Σ_j τ_j² g(σ_j²), exact for polynomials of degree < 2s. `log_volume` is
½ tr log A = Σ log σ_i (all min(m, n) of them); its error is the standard error over probes
plus the quadrature's own: for g = log the Gauss rule is an upper bound and the Gauss–Radau
rule with a node below the spectrum a lower bound (Golub & Meurant), and the half-width of
that bracket is reported (`krylov.log_rules`, `log_volume`). The same rules come from Lanczos on the
Gram matrix itself (`lanczos`, `krylov.log_rules_gram`: one orthogonalisation per step instead of two),
which `log_volume(kernel="gram" | "auto")` uses, adding its eigenvalues' rounding to the error
("auto" hands the points where that rounding matters to Golub–Kahan, the default kernel). `spectral_density` reports the difference to
the half-depth rule as its quadrature error (an estimate). `frobenius_norm_squared` is
Hutchinson's E_z ‖J z‖² (z Rademacher over the inputs), exact per probe: its whole error is the
standard error over probes.

Which error is a proof: log_volume's Gauss end always, its Gauss–Radau end when a lower bound
on σ_min is given (otherwise it rests on the Ritz estimate of λ_min), `singular_values`' bounds
always (Weyl); the standard errors are 1-σ Monte Carlo errors; the dense route's rounding and
spectral_density's quadrature error are first-order estimates.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from geometry import jacobians, krylov
from geometry.shapes import AnyArray, Shaped, shape_checked

WHICH = ("largest", "smallest")
BLOCK_STEPS = 8  # singular_values' adaptive steps grow by this many between convergence checks


@dataclasses.dataclass(frozen=True)
class _TopSingular:
    """x ↦ (Ritz values (k,), bounds (k,), steps used) of J(x) from `steps` GK iterations, or, with
    `cap` > steps, from `steps` and then blocks of BLOCK_STEPS more until the k largest converge."""

    pure: Callable
    k: int
    steps: int
    which: str
    transpose: bool  # run on Jᵀ (when m < n: its GK space is the smaller one)
    cap: int = 0
    tol: float = 0.0

    def __call__(self, params, x, start):
        matvec, rmatvec, m, n = krylov.oriented(self.pure, params, x, self.transpose)
        if self.cap > self.steps:
            return krylov.bidiagonalise_until_converged(matvec, rmatvec, start[:n], m, self.k, self.steps, BLOCK_STEPS,
                                                 self.cap, self.tol)
        alphas, betas = krylov.bidiagonalise(matvec, rmatvec, start[:n], m, self.steps)
        sigma, bounds = krylov.leading_ritz(alphas, betas, self.steps)  # the whole B: nothing masked
        used = jnp.full((), self.steps)
        if self.which == "largest":
            return sigma[: self.k], bounds[: self.k], used
        return sigma[::-1][: self.k], bounds[::-1][: self.k], used

    @staticmethod
    def canary_view(output):  # the Ritz values; their bounds are rounding-level residuals
        return output[0]


@dataclasses.dataclass(frozen=True)
class _Nodes:
    """x ↦ SLQ nodes and weights (P, s) of the smaller Gram matrix of J(x), one row per probe."""

    pure: Callable
    steps: int
    transpose: bool

    def __call__(self, params, x, probes):
        matvec, rmatvec, m, n = krylov.oriented(self.pure, params, x, self.transpose)
        return jax.vmap(lambda z: krylov.nodes_and_weights(matvec, rmatvec, m, z[:n], self.steps))(probes)


@dataclasses.dataclass(frozen=True)
class _LogQuadraticGram:
    """x ↦ per-probe (Gauss, Gauss–Radau, rounding) (P, 3) of zᵀ log(A) z by Lanczos on A, the
    smaller Gram matrix of J(x) (`lanczos`)."""

    pure: Callable
    steps: int
    transpose: bool

    def __call__(self, params, x, probes_and_lower):
        probes, lower_squared = probes_and_lower
        matvec, rmatvec, m, n = krylov.oriented(self.pure, params, x, self.transpose)

        def one(z):
            alphas, betas = krylov.lanczos(lambda v: rmatvec(matvec(v)), z[:n], self.steps)
            return jnp.sum(z[:n] ** 2) * jnp.stack(krylov.log_rules_gram(alphas, betas, lower_squared, n))

        return jax.vmap(one)(probes)

    @staticmethod
    def canary_view(output):  # the Gauss and Gauss–Radau estimates, not the rounding estimate
        return output[..., :2]


@dataclasses.dataclass(frozen=True)
class _LogQuadratic:
    """x ↦ per-probe (Gauss, Gauss–Radau) estimates (P, 2) of zᵀ log(A) z ≈ ‖z‖² e₁ᵀ log(T) e₁,
    A the smaller Gram matrix of J(x)."""

    pure: Callable
    steps: int
    transpose: bool

    def __call__(self, params, x, probes_and_lower):  # probes: (P, max(m, n)) of ±1
        probes, lower_squared = probes_and_lower
        matvec, rmatvec, m, n = krylov.oriented(self.pure, params, x, self.transpose)

        def one(z):
            alphas, betas = krylov.bidiagonalise(matvec, rmatvec, z[:n], m, self.steps)
            return jnp.sum(z[:n] ** 2) * jnp.stack(krylov.log_rules(alphas, betas, lower_squared))

        return jax.vmap(one)(probes)


@dataclasses.dataclass(frozen=True)
class _Hutchinson:
    """x ↦ per-probe ‖J z‖² (z over the inputs)."""

    pure: Callable

    def __call__(self, params, x, probes):
        matvec, _, _, n = krylov.operators(self.pure, params, x)
        return jax.vmap(lambda z: jnp.sum(matvec(z[:n]) ** 2))(probes)


def _prepare(f, points, params, batched=False, model_kwargs=None):
    pure, params = jacobians.as_pure_function(f, params, batched=batched, model_kwargs=model_kwargs)
    points = jacobians.check_points(points)
    shapes = jacobians.output_shapes(pure, params, points[:1], batched=batched)
    if not isinstance(shapes, jax.ShapeDtypeStruct):
        raise ValueError("matfree needs f to return one array per point (not a pytree)")
    if not jnp.issubdtype(shapes.dtype, jnp.floating):
        raise ValueError(f"f returns {shapes.dtype} values; matfree takes real floating-point outputs (the Krylov "
                         "recurrences here are for real Jacobians): return jnp.real / jnp.imag parts, or stack both")
    m, n = math.prod(shapes.shape), math.prod(points.shape[1:])  # per point
    if m == 0:
        raise ValueError("f returns an empty output: there is no Jacobian")
    return pure, params, points, m, n


@shape_checked
def singular_values(f, points: Shaped[AnyArray, "N *input"], k: int, *, which: str = "largest", params=None, steps: int | None = None,
                    tol: float = 1e-5, strict: bool = False, seed: int = 0, chunk_size: int | None = None,
                    devices=None, batched: bool = False, model_kwargs=None) -> dict:
    """The k largest (or smallest) singular values of each point's Jacobian without forming it.

    Steps for "largest" by default: min(r, 2k + 32) first, then BLOCK_STEPS more at a time — the
    same Krylov space extended, nothing recomputed — until the k largest are converged or about
    min(r, 4k + 40) steps are done (r = min(m, n); the former fixed default). The top 16 of a
    1024-wide tanh network's Jacobian (a continuous bulk, no spectral gap) stop at 72 steps
    (benchmarks/matfree.py), well-separated values at the first check. A given `steps` runs
    exactly that many. "smallest" runs r steps by default (a complete bidiagonalisation: exact).
    `strict=True` raises ValueError when any value has not converged instead of flagging it.

    Args:
        f: an `nnx.Module`, a bound method, a function of one example x, or `f(params, x)` with
            `params=` (e.g. one layer from `probe.layer_function`); its output is flattened.
        points: (N, *input_shape) finite floating-point inputs.
        k: how many singular values (1 ≤ k ≤ min(m, n)).
        which: "largest" or "smallest".
        params: the parameters of `f(params, x)`.
        steps: Golub–Kahan steps (None: adaptive for "largest", r for "smallest").
        tol: a value is converged when its residual bound ≤ tol · σ_max (finite, > 0).
        strict: raise instead of flagging values that have not converged.
        seed: seeds the probes and start vectors (a new seed reuses the compiled program).
        chunk_size: points per vmapped batch (memory is bounded by the chunk).
        devices: the devices to spread the points over (default: every device JAX sees).
        batched: f is written batch-first: it is called on x[None].
        model_kwargs: keyword arguments of every call, held fixed.

    Returns:
        dict: "values" (N, k), descending for "largest", ascending for "smallest"; "bounds" (N, k)
        residual bounds (module docstring); "converged" (N, k) bool (bound ≤ tol · σ_max); "steps"
        (N,) the Golub–Kahan steps used at each point.

    Raises:
        ValueError: k or steps out of range, an unknown `which`, a tol that is not finite and
            positive, non-finite points, or (with `strict=True`) a value that has not converged.
        batching.CompilerFaultError: the batched computation disagrees with its unbatched
            recomputation at the points the canary checks (a compiler fault).
    """
    if which not in WHICH:
        raise ValueError(f"unknown which={which!r}; valid: {', '.join(WHICH)}")
    pure, params, points, m, n = _prepare(f, points, params, batched, model_kwargs)
    r = min(m, n)
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= r:
        raise ValueError(f"k must be an integer in [1, min(m, n) = {r}], got {k}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number (relative to σ_max), got {tol}")
    adaptive = steps is None and which == "largest"
    steps = (min(r, 2 * int(k) + 32) if which == "largest" else r) if steps is None else int(steps)
    if not k <= steps <= r:
        raise ValueError(f"steps must be in [k, min(m, n)] = [{k}, {r}], got {steps}")
    start = jax.random.normal(jax.random.key(seed), (max(m, n),), points.dtype)
    cap = steps + BLOCK_STEPS * ((min(r, 4 * int(k) + 40) - steps) // BLOCK_STEPS) if adaptive else 0
    per_point = _TopSingular(pure, int(k), steps, which, transpose=m < n, cap=cap, tol=float(tol))
    values, bounds, used = jacobians.map_points(krylov.WithExtra(per_point), (params, start), points, chunk_size=chunk_size,
                                                devices=devices)
    jacobians.check_finite_result(values, "the singular values")
    values, bounds = np.asarray(values), np.asarray(bounds)
    top = values.max(axis=1, keepdims=True) if which == "smallest" else values[:, :1]
    converged = bounds <= tol * np.maximum(top, np.finfo(values.dtype).tiny)
    if strict and not converged.all():
        bad = np.flatnonzero(~converged.all(axis=1))
        raise ValueError(f"{bad.size} points did not converge to tol={tol} in {int(np.max(used))} steps (first: "
                         f"{bad[:5].tolist()}; worst bound / σ_max {float(np.max(bounds / np.maximum(top, 1e-300))):.3g}); "
                         "raise steps")
    return {"values": values, "bounds": bounds, "converged": converged, "steps": np.asarray(used, int)}


def _per_probe(per_point, f, points, params, probes, steps, default_steps, seed, chunk_size, devices, batched=False,
               model_kwargs=None):
    """(per_point(params, x, probes) at every point as float64 (N, P), steps)."""
    pure, params, points, m, n = _prepare(f, points, params, batched, model_kwargs)
    steps, signs = krylov.probes(probes, steps, default_steps, m, n, seed, points.dtype)
    values = jacobians.map_points(krylov.WithExtra(per_point(pure, steps, m < n)), (params, signs), points,
                                  chunk_size=chunk_size, devices=devices)
    return np.asarray(values, np.float64), steps


FIRST_STEPS = 32  # log_volume's first Krylov depth; doubled while the quadrature bracket is too wide


@dataclasses.dataclass(frozen=True)
class _DenseLogVolume:
    """x ↦ (Σ log σ_i, its rounding error) of the dense J(x): the exact route for points SLQ would
    need full depth for. A backward-stable SVD moves each σ_i by about eps · σ_max, so log σ_i by
    eps · σ_max / σ_i: their sum is the error reported (a first-order estimate, not a bound)."""

    pure: Callable

    def __call__(self, params, x):
        J = jacobians.jacobian_at(functools.partial(self.pure, params), x, "forward", as_matrix=True)
        sigma = jnp.linalg.svd(J, compute_uv=False)
        rounding = jnp.finfo(sigma.dtype).eps * jnp.sum(sigma[0] / sigma)
        return jnp.sum(jnp.log(sigma)), rounding, jacobians.sketch(J, J.shape[1])

    @staticmethod
    def canary_view(output):  # a sketch of J: the log determinant of a near-singular J is ill-conditioned
        return output[2]


@shape_checked
def log_volume(f, points: Shaped[AnyArray, "N *input"], *, params=None, probes: int = 32, steps: int | None = None,
               tol: float = 0.02, sigma_min_lower: float | None = None, strict: bool = False, seed: int = 0,
               kernel: str = "bidiagonal", chunk_size: int | None = None, devices=None, batched: bool = False,
               model_kwargs=None) -> dict:
    """Σ log σ_i over the min(m, n) singular values of each point's Jacobian, by SLQ, with its whole error.

    Each probe's quadratic form zᵀ log(A) z is bracketed between its Gauss–Radau and Gauss rules
    (`krylov.log_rules`): the value is the middle of the bracket averaged over probes, and
    "quadrature_error" its half-width (the bias the probes' standard error does not see: the
    Gauss rule alone is always too high, by 16% at 30 steps on a tanh layer of condition 1e5).
    "total_error" = quadrature_error + standard_error.

    Steps: with `steps=None` they start at 32 and double, for the points whose quadrature
    error exceeds tol · max(|value|, r) (r = min(m, n)), until it does not; a point whose next
    round would cost more Jacobian products (2 · probes · steps) than the r of its dense
    Jacobian is computed from that instead (exact up to rounding, and cheaper there), and so is a
    point whose quadrature converged but whose probes' standard error is above the tolerance,
    where the probes that would bring it there, probes · (SE / room)², cost more than r. A fixed
    `steps` runs once and reports. SLQ pays off for Jacobians too large to form, or when 32
    steps suffice.

    The bracket's upper end is rigorous; its lower end is rigorous when `sigma_min_lower`
    (a lower bound on every point's σ_min) is given, and otherwise uses the estimate
    λ_min ≈ θ_min²/θ_max from the Ritz values θ — "rigorous" (N,) says which points are
    covered by a proof (given bound, complete bidiagonalisation or the dense route).
    `strict=True` raises ValueError where total_error > tol · max(|value|, r).

    Kernel: "bidiagonal" (default) runs Golub–Kahan on J itself (`bidiagonalise`: no squaring,
    accurate at any condition number float32 can hold). "gram" runs Lanczos on the smaller Gram
    matrix A (`lanczos`: one orthogonalisation per step instead of two) and adds its eigenvalues'
    rounding (n · eps · θ_max / θ_j, τ²-weighted) to the quadrature error; "auto" does that and
    redoes by Golub–Kahan the points where the rounding exceeds a tenth of the tolerance.
    Measured (benchmarks/matfree_peer.py): "gram" is 1.1–1.5× faster on well-conditioned
    Jacobians, but in float32 at cond(J) = 1e3 it was 2% off at full depth where Golub–Kahan is
    exact, and "auto" pays for both routes wherever it hands over — hence the default.
    "lanczos_on_gram" (N,) says which kernel each point's value came from.

    Args:
        f: an `nnx.Module`, a bound method, a function of one example x, or `f(params, x)` with
            `params=` (e.g. one layer from `probe.layer_function`); its output is flattened.
        points: (N, *input_shape) finite floating-point inputs.
        params: the parameters of `f(params, x)`.
        probes: Rademacher probes per point (≥ 1).
        steps: quadrature steps (None: adaptive from 32, doubling until the tolerance is met).
        tol: relative tolerance of the total error, against max(|value|, r).
        sigma_min_lower: a proven lower bound on every point's σ_min, making the Gauss–Radau end
            of the bracket rigorous (None: estimated from the Ritz values).
        strict: raise where total_error > tol · max(|value|, r) instead of reporting it.
        seed: seeds the probes and start vectors (a new seed reuses the compiled program).
        kernel: "bidiagonal" (Golub–Kahan on J), "gram" (Lanczos on the Gram matrix) or "auto".
        chunk_size: points per vmapped batch (memory is bounded by the chunk).
        devices: the devices to spread the points over (default: every device JAX sees).
        batched: f is written batch-first: it is called on x[None].
        model_kwargs: keyword arguments of every call, held fixed.

    Returns:
        dict: "values", "standard_error", "quadrature_error", "total_error", "lower", "upper"
        (N,); "steps" (N,) (0 for the dense route, whose error is its rounding); "rigorous",
        "converged", "lanczos_on_gram" (N,) bool; "probes"; "tol".

    Raises:
        ValueError: a numerically singular J (its log volume is −inf), probes / steps / tol /
            sigma_min_lower out of range, an unknown kernel, non-finite points, or (with
            `strict=True`) a point beyond the tolerance.
        batching.CompilerFaultError: the batched computation disagrees with its unbatched
            recomputation at the points the canary checks (a compiler fault).
    """
    pure, params, points, m, n = _prepare(f, points, params, batched, model_kwargs)
    r = min(m, n)
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1) (relative to max(|log volume|, min(m, n))), got {tol}")
    if kernel not in ("bidiagonal", "gram", "auto"):
        raise ValueError(f"kernel must be 'bidiagonal', 'gram' or 'auto', got {kernel!r}")
    if sigma_min_lower is not None and not (isinstance(sigma_min_lower, (int, float)) and sigma_min_lower > 0):
        raise ValueError(f"sigma_min_lower must be a positive number (a lower bound on σ_min), got {sigma_min_lower}")
    first, signs = krylov.probes(probes, steps, FIRST_STEPS, m, n, seed, points.dtype)
    lower_squared = jnp.asarray(0.0 if sigma_min_lower is None else float(sigma_min_lower) ** 2, points.dtype)
    count = points.shape[0]
    out = {key: np.zeros(count) for key in ("values", "standard_error", "quadrature_error", "lower", "upper")}
    used, rigorous = np.zeros(count, int), np.zeros(count, bool)
    todo, current = np.arange(count), first
    gram = np.zeros(count, bool)

    def dense_route(at):  # exact up to rounding: no quadrature, no sampling
        exact, rounding = (np.asarray(a, np.float64) for a in jacobians.map_points(
            _DenseLogVolume(pure), params, points[at], chunk_size=chunk_size, devices=devices)[:2])
        if not np.all(np.isfinite(exact)):
            raise ValueError("the Jacobian is singular at some points: its log volume is -inf")
        for key, value in (("values", exact), ("lower", exact - rounding), ("upper", exact + rounding)):
            out[key][at] = value
        out["standard_error"][at], out["quadrature_error"][at] = 0.0, rounding  # no probes; rounding only
        used[at], rigorous[at], gram[at] = 0, True, False

    while todo.size:
        def rules_of(kernel, at):
            per_point = krylov.WithExtra(kernel(pure, current, m < n))
            rules = jacobians.map_points(per_point, (params, (signs, lower_squared)), points[at], chunk_size=chunk_size,
                                         devices=devices)
            return 0.5 * np.asarray(rules, np.float64)  # ½ zᵀ log(A) z estimates ½ tr log A = Σ log σ

        if kernel == "bidiagonal":
            rules = np.concatenate([rules_of(_LogQuadratic, todo), np.zeros((todo.size, probes, 1))], axis=2)
            rough = np.zeros(todo.size, bool)
        else:  # Lanczos on the Gram matrix; "auto": Golub–Kahan again where its rounding would matter
            rules = rules_of(_LogQuadraticGram, todo)  # (n_todo, P, 3): Gauss, Gauss–Radau, rounding
            rough = rules[..., 2].mean(axis=1) > 0.1 * tol * np.maximum(np.abs(rules[..., 0].mean(axis=1)), r)
            rough = (rough | ~np.all(np.isfinite(rules), axis=(1, 2))) if kernel == "auto" else np.zeros_like(rough)
            if rough.any():
                rules[rough, :, :2], rules[rough, :, 2] = rules_of(_LogQuadratic, todo[rough]), 0.0
        gram[todo] = (kernel != "bidiagonal") & ~rough
        if not np.all(np.isfinite(rules)):
            raise ValueError("the Jacobian is singular at some points (a zero Ritz value): its log volume is -inf; "
                             "use geometry.spectra.log_volume on the dense Jacobian there")
        upper, lower = rules[..., 0], rules[..., 1]
        middle = 0.5 * (upper + lower)
        values = middle.mean(axis=1)
        half_width = 0.5 * (upper - lower).mean(axis=1) + rules[..., 2].mean(axis=1)
        for key, value in (("values", values), ("standard_error", middle.std(axis=1, ddof=1) / math.sqrt(probes)),
                           ("quadrature_error", half_width),
                           ("lower", lower.mean(axis=1) - rules[..., 2].mean(axis=1)),
                           ("upper", upper.mean(axis=1) + rules[..., 2].mean(axis=1))):  # rounding widens both ends
            out[key][todo] = value
        used[todo] = current
        rigorous[todo] = sigma_min_lower is not None or current >= r
        done = half_width <= tol * np.maximum(np.abs(values), r)
        if steps is not None or current >= r:
            break
        todo = todo[~done]
        current = min(2 * current, r)
        # the next round costs 2 · P · s Jacobian products per point, the dense J about r (plus an SVD):
        # where the round costs more, the exact route is also the cheaper one
        if todo.size and (2 * probes * current >= r or current >= r // 2):
            dense_route(todo)
            break
    if steps is None:
        # the quadrature has converged but the probes' standard error has not: the probes needed,
        # P · (SE / room)², cost 2 · P' · s products; where the dense J (r products) is cheaper, use it
        room = tol * np.maximum(np.abs(out["values"]), r) - out["quadrature_error"]
        short = (used > 0) & (out["standard_error"] > np.maximum(room, 0.0))
        needed = probes * (out["standard_error"] / np.maximum(room, 1e-300)) ** 2
        cheaper = np.flatnonzero(short & (2 * needed * used >= r))
        if cheaper.size:
            dense_route(cheaper)
    total = out["quadrature_error"] + out["standard_error"]
    converged = total <= tol * np.maximum(np.abs(out["values"]), r)
    if strict and not converged.all():
        bad = np.flatnonzero(~converged)
        raise ValueError(f"log_volume: {bad.size} points have a total error above tol={tol} of max(|value|, {r}) "
                         f"(first: {bad[:5].tolist()}; worst quadrature error {out['quadrature_error'][bad].max():.3g}, "
                         f"standard error {out['standard_error'][bad].max():.3g}): raise steps or probes")
    return {**out, "total_error": total, "steps": used, "rigorous": rigorous, "converged": converged,
            "lanczos_on_gram": gram, "probes": int(probes), "tol": float(tol)}


@shape_checked
def frobenius_norm_squared(f, points: Shaped[AnyArray, "N *input"], *, params=None, probes: int = 32, seed: int = 0,
                           chunk_size: int | None = None, devices=None, batched: bool = False, model_kwargs=None) -> dict:
    """‖J‖_F² = tr JᵀJ at each point by Hutchinson's estimator E_z ‖J z‖² (z Rademacher). Each
    probe's ‖J z‖² is computed exactly (no quadrature), so the whole error is the probes'
    standard error.

    Args:
        f: an `nnx.Module`, a bound method, a function of one example x, or `f(params, x)` with
            `params=` (e.g. one layer from `probe.layer_function`); its output is flattened.
        points: (N, *input_shape) finite floating-point inputs.
        params: the parameters of `f(params, x)`.
        probes: Rademacher probes per point (≥ 2, for a standard error).
        seed: seeds the probes and start vectors (a new seed reuses the compiled program).
        chunk_size: points per vmapped batch (memory is bounded by the chunk).
        devices: the devices to spread the points over (default: every device JAX sees).
        batched: f is written batch-first: it is called on x[None].
        model_kwargs: keyword arguments of every call, held fixed.

    Returns:
        dict: "values" (N,), "standard_error" (N,), "total_error" (N,), "probes".

    Raises:
        ValueError: probes out of range, or non-finite points.
        batching.CompilerFaultError: the batched computation disagrees with its unbatched
            recomputation at the points the canary checks (a compiler fault).
    """
    frobenius, _ = _per_probe(lambda pure, steps, transpose: _Hutchinson(pure), f, points, params, probes, 1, 1,
                              seed, chunk_size, devices, batched, model_kwargs)
    standard_error = frobenius.std(axis=1, ddof=1) / math.sqrt(probes)
    return {"values": frobenius.mean(axis=1), "standard_error": standard_error, "total_error": standard_error,
            "probes": int(probes)}


@shape_checked
def spectral_density(f, x: Shaped[AnyArray, "*input"], *, params=None, probes: int = 16, steps: int | None = None, grid=None,
                     bandwidth: float | None = None, seed: int = 0, batched: bool = False, model_kwargs=None) -> dict:
    """The density of the squared singular values λ = σ² of J at ONE point x (the eigenvalues of
    the smaller Gram matrix, normalised to total mass 1), by SLQ: each probe gives a discrete
    measure Σ_j τ_j² δ(λ − θ_j); their mean is smoothed with a Gaussian of width `bandwidth`
    (default 2% of the node range) on `grid` (default 200 points over the nodes).

    Its whole error: "standard_error" (G,) over probes, and "quadrature_error" (G,), the
    difference between the s-step smoothed density and the one of the rule of the first ⌈s/2⌉
    steps (the leading block of the same bidiagonal matrix, so no extra products) — an
    *estimate*, not a bound (the smoothed density is no function with signed derivatives for a
    Gauss–Radau bracket); it is large where the quadrature has not resolved the spectrum at the
    bandwidth, and shrinks as steps grow. "total_error" = standard_error + quadrature_error.
    Polynomial moments Σ τ_j² θ_j^k of degree k < 2s are exact per probe (no quadrature error).

    Args:
        f: an `nnx.Module`, a bound method, a function of one example x, or `f(params, x)` with
            `params=` (e.g. one layer from `probe.layer_function`); its output is flattened.
        x: ONE input point (*input_shape).
        params: the parameters of `f(params, x)`.
        probes: Rademacher probes (≥ 1).
        steps: Lanczos steps per probe (None: min(r, 64)).
        grid: (G,) values of λ the density is evaluated at (None: 200 points over the nodes).
        bandwidth: the Gaussian smoothing width (None: 2% of the node range; finite, > 0).
        seed: seeds the probes and start vectors (a new seed reuses the compiled program).
        batched: f is written batch-first: it is called on x[None].
        model_kwargs: keyword arguments of the call, held fixed.

    Returns:
        dict: "grid" (G,), "density" (G,), "standard_error", "quadrature_error", "total_error"
        (G,), "nodes" (P, s), "weights" (P, s), "probes", "steps".

    Raises:
        ValueError: probes, steps or bandwidth out of range, a grid that is not finite, or a
            non-finite point.
    """
    x = jnp.asarray(x)
    pure, params, points, m, n = _prepare(f, x[None], params, batched, model_kwargs)
    steps, signs = krylov.probes(probes, steps, 40, m, n, seed, points.dtype)
    # jitted with the parameters as arguments: a model's weights never become compile-time constants
    nodes, weights, half_nodes, half_weights = (np.asarray(a, np.float64) for a in jax.jit(
        _Nodes(pure, steps, transpose=m < n))(params, points[0], signs))
    if not (np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))):
        raise ValueError("the Jacobian is NaN or inf at x: the model produces non-finite derivatives there")
    span = max(float(nodes.max() - nodes.min()), float(np.abs(nodes).max()) * 1e-6, 1e-30)
    bandwidth = 0.02 * span if bandwidth is None else float(bandwidth)
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    grid = np.linspace(nodes.min() - 3 * bandwidth, nodes.max() + 3 * bandwidth, 200) if grid is None else (
        np.asarray(grid, np.float64))

    def smoothed(nodes, weights):  # (P, G)
        kernel = np.exp(-0.5 * ((grid[None, None, :] - nodes[..., None]) / bandwidth) ** 2) / (bandwidth * np.sqrt(2 * np.pi))
        return np.sum(weights[..., None] * kernel, axis=1)

    per_probe = smoothed(nodes, weights)
    density = per_probe.mean(axis=0)
    standard_error = per_probe.std(axis=0, ddof=1) / math.sqrt(probes)
    quadrature_error = np.abs(density - smoothed(half_nodes, half_weights).mean(axis=0))
    return {"grid": grid, "density": density, "standard_error": standard_error, "quadrature_error": quadrature_error,
            "total_error": standard_error + quadrature_error, "nodes": nodes, "weights": weights,
            "probes": int(probes), "steps": steps}
