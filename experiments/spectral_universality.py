"""Spectral universality: spectra of end-to-end Jacobians at widths where a dense SVD is out of
reach, against the free-probability predictions of Pennington, Schoenholz & Ganguli (2017, 2018).

Command:  python -m experiments spectral_universality [--quick]
Writes:   figures/spectral_universality.{png,pdf,json}
Runtime:  ~3 min on 2 CPU cores (quick: ~10 s)

Networks h_l = φ(W_l h_{l−1} + b_l), N × N weights with entries of variance σ_w²/N (Gaussian) or
σ_w × a Haar-orthogonal matrix, biases N(0, σ_b²), at criticality (χ₁ = 1): linear (σ_w² = 1),
ReLU (σ_w² = 2, σ_b² = 0) and tanh (σ_b² = 0.05, σ_w² on the critical line). The input is drawn
so that the first pre-activations are at the mean-field fixed point (‖x‖²/N = (q* − σ_b²)/σ_w²). The spectrum of JJᵀ, J = ∂h_L/∂x, comes from
`geometry.matfree.spectral_density` — stochastic Lanczos quadrature on J·v and Jᵀ·u products,
never forming J (at N = 4096 a dense J is 64 MB per point and its SVD minutes; here only
O(steps · N) memory per probe). Deeper networks reuse the first L layers of the deepest one.

Predictions (`geometry.free_probability.jacobian_moments`): moments k ≤ 4 of (1/N) tr (JJᵀ)^k from
the product of the layers' S-transforms, with μ_k = E[φ'(h)^{2k}] at q*; for linear Gaussian
layers they are the Fuss–Catalan numbers, and the whole density is known
(`free_probability.fuss_catalan_density`): there the distance of each probe's quadrature to the
Fuss–Catalan law is reported too, through the Chebyshev–Markov–Stieltjes inequalities
(`cms_distance`: 0 when the law is the measure the quadrature came from). The SLQ measure of
each probe reproduces zᵀ(JJᵀ)^k z exactly for k < 2·steps, so the moment errors are the Monte
Carlo error over probes (reported as standard errors; "total_errors" = them, "quadrature_errors"
0 by that exactness) plus finite-N corrections, which grow with depth. The smoothed densities
drawn carry `spectral_density`'s quadrature error estimate (the s- against the s/2-step rule);
its largest value per network is in the JSON beside the largest standard error.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from geometry import free_probability, layers, matfree, theory

ACTIVATIONS = {"linear": (lambda h: h, 1.0, 0.0), "relu": (jax.nn.relu, 2.0, 0.0), "tanh": (jnp.tanh, None, 0.05)}
THEORY_NAMES = {"linear": "identity", "relu": "relu", "tanh": "tanh"}
MOMENTS = 4


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (1024, 4096)
    depths: tuple[int, ...] = (2, 8, 32, 64)
    max_depth_at_largest_width: int = 32  # memory: 32 layers of 4096² float32 weights are 2 GB
    activations: tuple[str, ...] = ("linear", "relu", "tanh")
    weights: tuple[str, ...] = ("gaussian", "orthogonal")
    probes: int = 8
    steps: int = 30


QUICK = Config(widths=(256,), depths=(2, 8), max_depth_at_largest_width=8, probes=4, steps=16)


def sigma_w2_of(activation: str) -> tuple[float, float]:
    _, sigma_w2, sigma_b2 = ACTIVATIONS[activation]
    if sigma_w2 is None:
        sigma_w2 = theory.critical_sigma_w2(THEORY_NAMES[activation], sigma_b2)
    return float(sigma_w2), float(sigma_b2)


def weight_stack(kind: str, width: int, depth: int, seed: int) -> jax.Array:
    """(depth, N, N) unit-scale weights from the library's initialisers: N(0, 1/N) entries
    ("gaussian", σ_w² = 1) or Haar orthogonal."""
    keys = jax.random.split(jax.random.key(seed), depth)
    return jnp.stack([layers.init_weight(key, width, width, kind, None, jnp.float32) for key in keys])


def network(activation: str):
    phi = ACTIVATIONS[activation][0]

    def f(params, x):
        weights, biases, scale = params
        h = x
        for W, b in zip(weights, biases):
            h = phi(scale * (W @ h) + b)
        return h

    return f


def measure(activation: str, kind: str, width: int, depth: int, stack, config: Config, seed: int) -> dict:
    sigma_w2, sigma_b2 = sigma_w2_of(activation)
    q_star, chi1 = theory.mean_field(THEORY_NAMES[activation], sigma_w2, sigma_b2)
    q = q_star if np.isfinite(q_star) and q_star > 0 else 1.0
    key_b, key_x = jax.random.split(jax.random.key(seed + 1))
    biases = np.sqrt(sigma_b2) * jax.random.normal(key_b, (depth, width))
    # the first pre-activation W x + b must have variance q*: ‖x‖²/N = (q* − σ_b²)/σ_w²
    # exactly, not only in expectation: a random norm would move q by ~√(2/N) (9% at N = 256), a
    # finite-N error of the input that the prediction at q* does not describe
    direction = jax.random.normal(key_x, (width,))
    x = np.sqrt(max(q - sigma_b2, 0.0) / sigma_w2 * width) * direction / jnp.linalg.norm(direction)
    params = (list(stack[:depth]), list(biases), jnp.float32(np.sqrt(sigma_w2)))
    slq = matfree.spectral_density(network(activation), x, params=params, probes=config.probes, steps=config.steps,
                                   seed=seed)
    nodes, weights = slq["nodes"], slq["weights"]  # (P, s)
    per_probe = np.stack([np.sum(weights * nodes**k, axis=1) for k in range(1, MOMENTS + 1)], axis=1)  # (P, K)
    measured = per_probe.mean(axis=0)
    standard_error = per_probe.std(axis=0, ddof=1) / np.sqrt(config.probes)
    mu = [theory.derivative_moment(THEORY_NAMES[activation], q, k) for k in range(1, MOMENTS + 1)]
    predicted = free_probability.jacobian_moments(mu, sigma_w2, depth, kind)
    record = {"width": width, "depth": depth, "sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "q_star": q,
              "chi1": chi1, "measured_moments": measured.tolist(), "standard_errors": standard_error.tolist(),
              "predicted_moments": predicted.tolist(),
              "relative_errors": (np.abs(measured - predicted) / predicted).tolist(),
              "errors_in_standard_errors": (np.abs(measured - predicted) / np.maximum(standard_error, 1e-300)).tolist(),
              # the moments' whole error: the Gauss rule of s steps is exact for degree < 2s (here k ≤ 4 < 2s), so
              # nothing is added for quadrature; float32 rounding of the nodes is below the standard errors
              "quadrature_errors": [0.0] * MOMENTS, "total_errors": standard_error.tolist(),
              "density_quadrature_error_max": float(slq["quadrature_error"].max()),
              "density_standard_error_max": float(slq["standard_error"].max()),
              "nodes": nodes.tolist(), "weights": weights.tolist()}
    if activation == "linear" and kind == "gaussian":
        record["cms_distance_fuss_catalan"] = cms_distance(nodes, weights, depth)
    return record


def cms_distance(nodes: np.ndarray, weights: np.ndarray, depth: int) -> float:
    """Mean over probes of max_j dist(F(θ_j), [Σ_{i<j} w_i, Σ_{i≤j} w_i]), F the Fuss–Catalan CDF.

    By the Chebyshev–Markov–Stieltjes inequalities the CDF of the measure a Gauss quadrature
    comes from lies in that interval at every node, so this is 0 when the probe's spectral
    measure is the law; unlike a Kolmogorov–Smirnov distance to the discrete quadrature
    measure, it does not charge the quadrature for lumping an edge singularity into one node."""
    distances = []
    for theta, w in zip(nodes, weights):
        order = np.argsort(theta)
        theta, w = theta[order], w[order]
        after = np.cumsum(w)
        before = after - w
        law = free_probability.fuss_catalan_cdf(depth, theta)
        distances.append(float(np.max(np.maximum(before - law, 0.0) + np.maximum(law - after, 0.0))))
    return float(np.mean(distances))


def run(config: Config, context) -> dict:
    results = {}
    cases = [(w, kind) for w in config.widths for kind in config.weights]
    for width, kind in context.progress(cases, "width × weights"):
        depths = [d for d in config.depths if width < max(config.widths) or d <= config.max_depth_at_largest_width]
        stack = weight_stack(kind, width, max(depths), context.seed)
        for activation in config.activations:
            for depth in depths:
                results[f"{activation}/{kind}/N{width}/L{depth}"] = measure(activation, kind, width, depth, stack,
                                                                            config, context.seed)
        del stack
    summary = {}
    for key, r in results.items():
        errors = np.array(r["relative_errors"])
        summary[key] = {"max_relative_error_moments_1_to_4": float(errors.max()),
                        "relative_error_mean": float(errors[0]), "relative_error_second_moment": float(errors[1]),
                        "cms_distance_fuss_catalan": r.get("cms_distance_fuss_catalan")}
    worst = {k: max(v["max_relative_error_moments_1_to_4"] for key, v in summary.items() if key.startswith(k))
             for k in {key.rsplit("/", 2)[0] for key in summary}}
    return {"results": results, "summary": summary, "worst_relative_moment_error_by_family": worst,
            "largest_width": max(config.widths)}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    results = numbers["results"]
    width = max(config.widths)
    fig, axes = plt.subplots(len(config.weights), len(config.activations) + 1,
                             figsize=(4.0 * (len(config.activations) + 1), 3.4 * len(config.weights)), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(config.depths)))
    for i, kind in enumerate(config.weights):
        for j, activation in enumerate(config.activations):
            ax = axes[i, j]
            for c, depth in zip(colors, config.depths):
                r = results.get(f"{activation}/{kind}/N{width}/L{depth}")
                if r is None:
                    continue
                nodes, weights = np.array(r["nodes"]).ravel(), np.array(r["weights"]).ravel() / config.probes
                positive = nodes > 0
                bins = np.geomspace(max(nodes[positive].min(), 1e-12), nodes.max() * 1.0001, 30)
                mass, _ = np.histogram(nodes[positive], bins=bins, weights=weights[positive])
                centres = np.sqrt(bins[1:] * bins[:-1])
                ax.step(centres, mass, where="mid", color=c, label=f"L = {depth}")
                if activation == "linear" and kind == "gaussian":
                    law = np.diff(free_probability.fuss_catalan_cdf(depth, bins))
                    ax.plot(centres, law, "k:", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("λ (eigenvalue of JJᵀ)")
            ax.set_title(f"{activation}, {kind}, N = {width}" + (" (dotted: Fuss–Catalan)" if activation == "linear"
                                                                and kind == "gaussian" else ""), fontsize=8)
            ax.set_ylabel("mass per bin")
        ax = axes[i, -1]
        for activation, marker in zip(config.activations, "os^"):
            keys = [k for k in results if k.startswith(f"{activation}/{kind}/")]
            depths = [results[k]["depth"] for k in keys]
            errors = [max(results[k]["relative_errors"]) for k in keys]
            ax.scatter(depths, errors, marker=marker, label=activation, s=18)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth L")
        ax.set_title(f"{kind}: max relative error, moments 1–4", fontsize=8)
        ax.legend(fontsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Spectra of end-to-end Jacobians by stochastic Lanczos quadrature (J never formed)")
    fig.tight_layout()
    return {"": fig}
