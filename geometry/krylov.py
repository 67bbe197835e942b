"""Krylov iterations on a Jacobian seen only through products, and the Gauss rules they give.

`geometry.matfree` estimates spectra of J (m × n) from J v and Jᵀ u alone; this module holds the
iterations and quadrature rules it is built from (the module docstring of `geometry.matfree`
states the mathematics and which errors are proofs):

* `operators(pure, params, x)`: (J v, Jᵀ u, m, n) at one point, by `jax.linearize` (one
  linearisation, reused) and `jax.linear_transpose`; `oriented` runs on Jᵀ when that is smaller.
* `bidiagonalise`: s Golub–Kahan steps with full reorthogonalisation from a start vector,
  (alphas, betas) of the upper-bidiagonal B; `bidiagonalise_until_converged` extends the same
  Krylov space by blocks of steps until the k largest Ritz values are certified.
* `leading_ritz`: Ritz values of B and their residual bounds (Weyl).
* `lanczos`: Lanczos on a symmetric operator (the Gram matrix JᵀJ) from a start vector.
* `nodes_and_weights`: the SLQ quadrature nodes σ_j² and weights τ_j² from one probe.
* `probes`: checked Rademacher probes; `WithExtra`: a per-point function of (params, x, start
  vector or probes) in the form `geometry.batching.map_points` maps, the extra as an argument.
* `log_rules` / `log_rules_gram`: the Gauss (upper) and Gauss–Radau (lower) rules for
  e₁ᵀ log(T) e₁, from Golub–Kahan and from Lanczos on the Gram matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def operators(pure, params, x):
    """(J·, Jᵀ·, m, n) at one point, on flattened vectors."""
    shape = x.shape

    def flat(v):
        out = pure(params, v.reshape(shape))
        return out.reshape(-1)

    y, jvp = jax.linearize(flat, x.reshape(-1))
    vjp = jax.linear_transpose(jvp, x.reshape(-1))
    return jvp, (lambda u: vjp(u)[0]), y.size, x.size


def varying_like(value, reference):
    """`value` marked as varying over the same shard_map axes as `reference`. Under
    `jacobians.map_points`' shard_map (several devices or processes) a point varies over the
    points axis while the start vector and probes, shared by all points, do not; linearised
    functions and loop carries insist that the two types agree."""
    def varying(array):  # jax 0.10 keeps it in `manual_axis_type`; earlier releases in `vma`
        kind = jax.typeof(array)
        return getattr(getattr(kind, "manual_axis_type", None), "varying", None) or getattr(kind, "vma", frozenset())

    missing = tuple(sorted(varying(reference) - varying(value)))
    return jax.lax.pcast(value, missing, to="varying") if missing else value


def normalise(w):
    norm = jnp.linalg.norm(w)
    tiny = jnp.finfo(w.dtype).tiny / jnp.finfo(w.dtype).eps
    ok = norm > tiny
    # an exhausted Krylov space gives an exact 0; a NaN/inf product must stay NaN (never a silent 0)
    bad = ~jnp.isfinite(norm)
    vector = jnp.where(ok, w / jnp.where(ok, norm, 1.0), jnp.where(bad, jnp.nan, 0.0))
    return vector, jnp.where(ok | bad, norm, 0.0)


def orthogonalise(w, basis):
    # twice is enough (Kahan–Parlett); the unfilled rows of `basis` are zero and drop out
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def golub_kahan_step(matvec, rmatvec, steps: int, guard_last: bool = True):
    """One step j → j + 1 of Golub–Kahan with full reorthogonalisation on the carry (U, V,
    alphas, betas) of arrays sized for `steps`: fills V[j + 1], betas[j] and (below `steps`, or
    always without `guard_last`, whose caller leaves a spare row) U[j + 1], alphas[j + 1]."""
    def step(j, carry):
        U, V, alphas, betas = carry
        w = orthogonalise(rmatvec(U[j]) - alphas[j] * V[j], V)
        v_next, beta = normalise(w)
        V = V.at[j + 1].set(v_next)
        betas = betas.at[j].set(beta)
        z = orthogonalise(matvec(v_next) - beta * U[j], U)
        u_next, alpha = normalise(z)
        if not guard_last:
            return U.at[j + 1].set(u_next), V, alphas.at[j + 1].set(alpha), betas
        last = j + 1 >= steps  # the final step only needs β_s
        U = jnp.where(last, U, U.at[jnp.minimum(j + 1, steps - 1)].set(u_next))
        alphas = jnp.where(last, alphas, alphas.at[jnp.minimum(j + 1, steps - 1)].set(alpha))
        return U, V, alphas, betas

    return step


def golub_kahan_start(matvec, start: jax.Array, m: int, steps: int):
    """The carry (U, V, alphas, betas) after v₁ = start/‖start‖ and u₁ = J v₁ / α₁."""
    dtype = start.dtype
    v, _ = normalise(start)
    u, alpha0 = normalise(matvec(v))
    carry = (jnp.zeros((steps, m), dtype).at[0].set(u), jnp.zeros((steps + 1, start.size), dtype).at[0].set(v),
             jnp.zeros(steps, dtype).at[0].set(alpha0), jnp.zeros(steps, dtype))
    return jax.tree_util.tree_map(lambda a: varying_like(a, start), carry)  # see varying_like


def bidiagonalise(matvec: Callable, rmatvec: Callable, start: jax.Array, m: int, steps: int):
    """(alphas (s,), betas (s,)) of Golub–Kahan with full reorthogonalisation from `start` (n,):
    B has diagonal alphas and superdiagonal betas[:-1]; betas[-1] is the residual factor β_s."""
    carry = golub_kahan_start(matvec, start, m, steps)
    _, _, alphas, betas = jax.lax.fori_loop(0, steps, golub_kahan_step(matvec, rmatvec, steps), carry)
    return alphas, betas


def leading_ritz(alphas, betas, done):
    """Ritz values (descending) and residual bounds of the leading done × done block of B, from
    arrays sized for more steps: the unfilled part is masked to zero, so its SVD holds the block's
    singular values first and zeros after, and the block's residual factor is betas[done − 1]."""
    index = jnp.arange(alphas.shape[0])
    leading = bidiagonal_matrix(jnp.where(index < done, alphas, 0.0), jnp.where(index < done - 1, betas, 0.0))
    P, sigma, _ = jnp.linalg.svd(leading)
    return sigma, jnp.abs(betas[done - 1] * P[done - 1, :])


def bidiagonalise_until_converged(matvec: Callable, rmatvec: Callable, start: jax.Array, m: int, k: int, first: int,
                                  block: int, cap: int, tol: float):
    """(top-k Ritz values, their bounds, steps used) of Golub–Kahan from `start`, run `first` steps
    and then `block` more at a time (the same Krylov space, extended: nothing is recomputed) until
    the k largest have bound ≤ tol · σ_max or `cap` steps are done (cap − first a multiple of
    block). Under `jax.vmap` the loop runs until the slowest point of the batch stops, the others'
    carries left as they were; each block has a fixed trip count and the arrays a spare row, so
    no step selects between whole carries (a per-step select over U and V doubled the time), and
    the first steps orthogonalise against arrays sized for them alone."""
    # every step reorthogonalises against all rows of U and V, zero or not, and that memory traffic is most of a
    # step's cost beside the products: the first steps run on arrays sized for them, padded only to extend
    carry = golub_kahan_start(matvec, start, m, first + 1)  # a spare row: step j writes row j + 1 unguarded
    carry = jax.lax.fori_loop(0, first, golub_kahan_step(matvec, rmatvec, first + 1, guard_last=False), carry)
    carry = tuple(jnp.pad(a, [(0, cap - first)] + [(0, 0)] * (a.ndim - 1)) for a in carry)
    step = golub_kahan_step(matvec, rmatvec, cap + 1, guard_last=False)

    def converged(carry, done):
        sigma, bounds = leading_ritz(carry[2], carry[3], done)
        return jnp.all(bounds[:k] <= tol * sigma[0])

    def advance(state):
        carry, done, _ = state
        carry = jax.lax.fori_loop(0, block, lambda i, c: step(done + i, c), carry)
        return carry, done + block, converged(carry, done + block)

    state = (carry, jnp.asarray(first), converged(carry, first))
    carry, done, _ = jax.lax.while_loop(lambda s: (s[1] < cap) & ~s[2], advance, state)
    sigma, bounds = leading_ritz(carry[2], carry[3], done)
    return sigma[:k], bounds[:k], done


def lanczos(gram: Callable, start: jax.Array, steps: int):
    """(alphas (s,), betas (s,)) of Lanczos with full reorthogonalisation on the symmetric operator
    `gram` (n → n) from `start`: T has diagonal alphas and off-diagonal betas[:-1]; betas[-1] is
    the residual norm β_s. One product with the Gram matrix (a J·v and a Jᵀ·u) and one
    orthogonalisation of an n-vector per step, where Golub–Kahan orthogonalises an m- and an n-vector."""
    dtype = start.dtype
    q, _ = normalise(start)
    Q = jnp.zeros((steps + 1, start.size), dtype).at[0].set(q)
    alphas, betas = jnp.zeros(steps, dtype), jnp.zeros(steps, dtype)

    def step(j, carry):
        Q, alphas, betas = carry
        w = gram(Q[j])
        alpha = Q[j] @ w
        q_next, beta = normalise(orthogonalise(w, Q))  # removes α q_j and β q_{j−1} with the rest
        return Q.at[j + 1].set(q_next), alphas.at[j].set(alpha), betas.at[j].set(beta)

    carry = jax.tree_util.tree_map(lambda a: varying_like(a, start), (Q, alphas, betas))
    _, alphas, betas = jax.lax.fori_loop(0, steps, step, carry)
    return alphas, betas


def bidiagonal_matrix(alphas, betas):
    return jnp.diag(alphas) + jnp.diag(betas[:-1], 1)


def oriented(pure, params, x, transpose: bool):
    """(J·, Jᵀ·, m, n) at one point, or those of Jᵀ when `transpose` (so that n = min side)."""
    matvec, rmatvec, m, n = operators(pure, params, x)
    return (rmatvec, matvec, n, m) if transpose else (matvec, rmatvec, m, n)


def nodes_and_weights(matvec, rmatvec, m: int, z, steps: int):
    """SLQ from unit-normalised z: nodes σ_j(B)² and weights τ_j² (first components of the
    eigenvectors of T = BᵀB), for the s-step rule and for the rule of the first ⌈s/2⌉ steps (the
    leading block of the same B: no more products), whose difference estimates the quadrature error."""
    alphas, betas = bidiagonalise(matvec, rmatvec, z, m, steps)
    B = bidiagonal_matrix(alphas, betas)
    _, sigma, Qt = jnp.linalg.svd(B)
    half = (steps + 1) // 2
    _, sigma_half, Qt_half = jnp.linalg.svd(B[:half, :half])
    return sigma**2, Qt[:, 0] ** 2, sigma_half**2, Qt_half[:, 0] ** 2


def log_rules(alphas, betas, lower_squared):
    """(Gauss, Gauss–Radau) estimates of e₁ᵀ log(A) e₁ from s GK steps (module docstring).

    log has negative even derivatives, so the s-node Gauss rule is never below the truth (a
    rigorous upper bound), and the Gauss–Radau rule with a node fixed at a ≤ λ_min(A) never
    above it (a lower bound, rigorous when a is; Golub & Meurant). The Radau rule extends the
    Lanczos matrix T = BᵀB by one row so that a is an eigenvalue: T̃ = [[T, η e_s], [η e_sᵀ, ω]]
    with η = α_s β_s and ω = a + η² [(T − aI)⁻¹]_ss, written as B̃ᵀB̃ for the bidiagonal B̃ that
    appends the column (β_s e_s, α̃), α̃² = ω − β_s², so its nodes come from an SVD (no squaring).
    `lower_squared` ≤ 0 means none is known: a = θ_min²/θ_max from the Ritz values, an estimate.
    """
    steps = alphas.shape[0]
    B = bidiagonal_matrix(alphas, betas)
    _, sigma, Qt = jnp.linalg.svd(B)
    theta = sigma**2  # Ritz values of A, descending
    gauss = jnp.sum(Qt[:, 0] ** 2 * jnp.log(theta))
    eps = jnp.finfo(theta.dtype).eps
    a = jnp.where(lower_squared > 0, lower_squared, theta[-1] ** 2 / theta[0])
    a = jnp.minimum(a, theta[-1] * (1 - 16 * eps))  # Radau's node lies below every Ritz value
    eta = alphas[-1] * betas[-1]
    omega = a + eta**2 * jnp.sum(Qt[:, -1] ** 2 / (theta - a))
    extra = jnp.sqrt(jnp.maximum(omega - betas[-1] ** 2, 0.0))
    extended = jnp.zeros((steps + 1, steps + 1), B.dtype).at[:steps, :steps].set(B)
    extended = extended.at[steps - 1, steps].set(betas[-1]).at[steps, steps].set(extra)
    _, sigma_radau, Qt_radau = jnp.linalg.svd(extended)
    radau = jnp.sum(Qt_radau[:, 0] ** 2 * jnp.log(jnp.maximum(sigma_radau**2, a)))
    return gauss, jnp.where(betas[-1] == 0, gauss, jnp.minimum(radau, gauss))  # an exhausted space is exact


def log_rules_gram(alphas, betas, lower_squared, dimension: int):
    """(Gauss, Gauss–Radau, rounding) estimates of e₁ᵀ log(A) e₁ from s Lanczos steps on A itself
    (T tridiagonal): the same rules as `log_rules`, from eigh(T) instead of an SVD of B. Lanczos
    in floating point (products with A = JᵀJ included) gives Ritz values with absolute errors up
    to about n · eps · θ_max (Paige's analysis; measured: a full-depth float32 run at cond(A) = 1e6
    was 2% off, 40× the eps · θ_max estimate), so log θ_j is off by up to n · eps · θ_max / θ_j:
    their τ²-weighted sum is the rounding returned (large when A is ill-conditioned, where
    `log_volume` uses the bidiagonal route instead)."""
    steps = alphas.shape[0]
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    theta, Q = jnp.linalg.eigh(T)  # ascending
    eps = jnp.finfo(theta.dtype).eps
    floor = jnp.maximum(theta, eps * theta[-1])  # rounding can make a tiny eigenvalue ≤ 0
    gauss = jnp.sum(Q[0] ** 2 * jnp.log(floor))
    rounding = jnp.sum(Q[0] ** 2 * dimension * eps * theta[-1] / floor)
    a = jnp.where(lower_squared > 0, lower_squared, floor[0] ** 2 / theta[-1])
    a = jnp.minimum(a, floor[0] * (1 - 16 * eps))
    beta = betas[-1]
    omega = a + beta**2 * jnp.sum(Q[-1] ** 2 / (theta - a))
    extended = jnp.zeros((steps + 1, steps + 1), T.dtype).at[:steps, :steps].set(T)
    extended = extended.at[steps - 1, steps].set(beta).at[steps, steps - 1].set(beta).at[steps, steps].set(omega)
    theta_radau, Q_radau = jnp.linalg.eigh(extended)
    radau = jnp.sum(Q_radau[0] ** 2 * jnp.log(jnp.maximum(theta_radau, a)))
    return gauss, jnp.where(beta == 0, gauss, jnp.minimum(radau, gauss)), rounding


@dataclasses.dataclass(frozen=True)
class WithExtra:
    """per_point(params, x, extra) as map_points' per_point((params, extra), x): the start vector or
    the probes travel as an argument of the compiled program (a new seed or new probes reuse it;
    baked in as constants they recompiled every time and made XLA constant-fold them)."""

    per_point: Callable
    # the canary recomputes one point: a Krylov iteration's steps run one after another, so an unbatched
    # point costs about what the whole batched map does (geometry.batching.check_sample)
    canary_max_points = 1
    # Lanczos amplifies rounding (on the Gram matrix, by its condition number): two right programs give
    # quadrature estimates up to a few percent apart in float32; a compiler fault is tens of percent
    canary_rtol_floor = 0.1

    def __call__(self, params_and_extra, x):
        params, extra = params_and_extra
        return self.per_point(params, x, jax.tree_util.tree_map(lambda e: varying_like(e, x), extra))

    def canary_view(self, output):
        view = getattr(self.per_point, "canary_view", None)
        return output if view is None else view(output)


def probes(probes: int, steps: int | None, default_steps: int, m: int, n: int, seed: int, dtype):
    """(steps, Rademacher probes (P, max(m, n))) after checking both."""
    if isinstance(probes, bool) or int(probes) != probes or probes < 2:
        raise ValueError(f"probes must be an integer >= 2 (the error estimate needs two), got {probes}")
    r = min(m, n)
    steps = min(r, default_steps) if steps is None else int(steps)
    if not 1 <= steps <= r:
        raise ValueError(f"steps must be in [1, min(m, n) = {r}], got {steps}")
    return steps, jax.random.rademacher(jax.random.key(seed), (int(probes), max(m, n)), dtype)
