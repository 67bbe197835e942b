"""Singular-value spectra of deep random networks against mean-field and free-probability theory.

Command:  python -m experiments dynamical_isometry [--quick]
Writes:   figures/dynamical_isometry.{png,pdf,json,npz}
Runtime:  ~4 min on 2 CPU cores (quick: ~20 s).

For an L-layer network h_l = φ(W_l h_{l−1} + b_l) of width N with W ~ N(0, σ_w²/N)
(or σ_w × orthogonal) and b ~ N(0, σ_b²), started at the fixed point q*, the end-to-end
Jacobian J = ∂h_L/∂h_0 = Π D_l W_l (from `jacobian_field`) has, as N → ∞,
  mean eigenvalue of JJᵀ          = χ₁^L,    χ₁ = σ_w² E[φ'(√q* z)²],
  variance / mean²                = L (μ₂/μ₁² − 1 − s₁),  μ_k = E[φ'(√q* z)^{2k}],
with s₁ = −1 (Gaussian) or 0 (orthogonal) (Pennington, Schoenholz & Ganguli 2017/2018).
For the linear Gaussian chain the eigenvalue moments are Fuss–Catalan numbers.

The mean is measured twice: from the full spectra (32 samples) and from JVPs
(Hutchinson, E‖Jv‖²/N over 512 inputs × 8 probes: ~4× smaller standard error); the 5%
check uses the more precise of the two and the JSON holds both with their errors.

Panels: (a) eigenvalue histograms of JJᵀ per case with the predicted mean; (b) the
Fuss–Catalan moments k = 1..3 of W_L⋯W_1 against L; (c) the tanh (σ_w², σ_b²) phase
diagram: log χ₁ from `theory.mean_field`, the χ₁ = 1 line, and χ₁ measured as the mean
squared singular value of one layer's Jacobian D_φ W deep in a random network.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from geometry import functional, jacobians, models, plotting, probe, spectra, theory

TANH_SIGMA_B2 = 0.05


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 1000
    depth: int = 8
    # (1/N) tr JJᵀ of one sample fluctuates by ~√(L/N) (≈9% at N = 1000, L = 8): 32 samples
    # bring the standard error of the mean under 2%
    networks: int = 8
    inputs_per_network: int = 4
    # the mean eigenvalue is also estimated from JVPs (Hutchinson) over many more samples
    mean_networks: int = 8
    mean_inputs: int = 64
    probes: int = 8
    linear_depths: tuple[int, ...] = (1, 2, 4, 8)
    linear_networks: int = 3
    phase_grid: tuple[int, int] = (36, 24)  # (σ_w² points, σ_b² points) for the theory map
    phase_width: int = 500
    phase_depth: int = 6
    tolerance_mean: float = 0.05
    tolerance_variance: float = 0.05
    tolerance_moments: float = 0.03


QUICK = Config(width=200, depth=4, networks=4, inputs_per_network=2, mean_networks=2, mean_inputs=16, probes=4, linear_depths=(1, 2), linear_networks=2,
               phase_grid=(12, 8), phase_width=150, phase_depth=3)


def cases() -> list[dict]:
    tanh_critical = theory.critical_sigma_w2("tanh", TANH_SIGMA_B2)
    out = []
    for weights in ("gaussian", "orthogonal"):
        out.append(dict(activation="relu", sigma_w2=2.0, sigma_b2=0.0, weights=weights, regime="critical"))
        out.append(dict(activation="tanh", sigma_w2=tanh_critical, sigma_b2=TANH_SIGMA_B2, weights=weights,
                        regime="critical"))
    out.append(dict(activation="relu", sigma_w2=1.5, sigma_b2=0.0, weights="gaussian", regime="ordered"))
    out.append(dict(activation="tanh", sigma_w2=3.0, sigma_b2=TANH_SIGMA_B2, weights="gaussian", regime="chaotic"))
    return out


def network(case: dict, width: int, depth: int, seed: int) -> models.MLP:
    return models.MLP(width, width, depth=depth, activation=case["activation"], init=case["weights"],
                      sigma_w2=case["sigma_w2"], sigma_b2=case["sigma_b2"], rngs=nnx.Rngs(seed))


def fixed_point_inputs(case: dict, q_star: float, width: int, count: int, seed: int) -> np.ndarray:
    """Inputs whose first pre-activations have variance q*: ‖x‖²/N = (q* − σ_b²)/σ_w²."""
    x = np.random.default_rng(seed).normal(size=(count, width))
    x /= np.sqrt(np.mean(x**2, axis=1, keepdims=True))
    return (x * math.sqrt(max(q_star - case["sigma_b2"], 0.0) / case["sigma_w2"])).astype(np.float32)


def jacobian_eigenvalues(case: dict, config: Config, seed: int, q_star: float) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues of JJᵀ pooled over networks and inputs, below-resolution mask).

    Eigenvalues are squared singular values; those below the numerical-rank tolerance
    (σ ≤ σ_max · N · eps, `spectra.numerical_rank`'s convention) are either exact zeros
    of a rank-deficient J (ReLU) or below what float32 resolves (deep tanh); float32
    reports them as ~1e-15 noise. They enter the moments as the tiny numbers they are,
    but the histogram counts them apart.
    """
    eigenvalues, zero = [], []
    for k in range(config.networks):
        model = network(case, config.width, config.depth, seed + k)
        x = fixed_point_inputs(case, q_star, config.width, config.inputs_per_network, seed + 1000 + k)
        J = jacobians.jacobian_field(model, x, chunk_size=1)  # (P, N, N): one point at a time
        sigma = np.asarray(spectra.singular_values(J), dtype=np.float64)  # (P, N)
        tol = sigma[:, :1] * sigma.shape[1] * np.finfo(np.float32).eps
        eigenvalues.append(sigma**2)
        zero.append(sigma <= tol)
    return np.concatenate(eigenvalues), np.concatenate(zero)  # (samples, N) each


def _mean_squared_jvps(model, x, probes):
    """x (P, N), probes (P, K, N) -> (P,) mean over probes of ‖J(x) v‖²."""

    def squared_jvp(point, v):
        return jnp.sum(jax.jvp(lambda p: model(p), (point,), (v,))[1] ** 2)

    return jax.vmap(lambda p, vs: jnp.mean(jax.vmap(lambda v: squared_jvp(p, v))(vs)))(x, probes)


mean_squared_jvps = functional.jit_module(_mean_squared_jvps)  # one compile per architecture


def hutchinson_mean_eigenvalue(case: dict, config: Config, seed: int, q_star: float) -> tuple[float, float]:
    """(mean, standard error) of (1/N) tr JJᵀ = E_v ‖J v‖² / N, v ~ N(0, I), from JVPs.

    One JVP costs one forward pass where the full Jacobian costs N, so this estimate can
    average over many more (network, input) samples than the spectra: its standard error
    is several times smaller. Each input's estimate averages `probes` probe vectors.
    """
    per_input = []
    rng = np.random.default_rng(seed)
    for k in range(config.mean_networks):
        model = network(case, config.width, config.depth, seed + k)
        x = jnp.asarray(fixed_point_inputs(case, q_star, config.width, config.mean_inputs, seed + 5000 + k))
        probes = jnp.asarray(rng.normal(size=(config.mean_inputs, config.probes, config.width)), dtype=jnp.float32)
        per_input.append(np.asarray(mean_squared_jvps(model, x, probes), dtype=np.float64) / config.width)
    per_input = np.concatenate(per_input)
    return float(per_input.mean()), float(per_input.std(ddof=1) / math.sqrt(len(per_input)))


def _rel(measured: float, predicted: float) -> float:
    return abs(measured - predicted) / abs(predicted)


def run(config: Config, context) -> dict:
    results, histograms = [], {}  # histograms of the positive eigenvalues: beside the JSON, for the plot
    for i, case in enumerate(context.progress(cases(), "spectra")):
        prediction = theory.isometry_prediction(case["activation"], case["sigma_w2"], case["sigma_b2"], config.depth,
                                                case["weights"])
        q_start = prediction["q_star"] if math.isfinite(prediction["q_star"]) and prediction["q_star"] > 0 else 1.0
        eig, zero = jacobian_eigenvalues(case, config, 100 * context.seed + 10 * i, q_start)
        mean, var = float(eig.mean()), float(eig.var())
        per_sample_mean = eig.mean(axis=1)  # (1/N) tr JJᵀ of each (network, input)
        record = {**case, "prediction": prediction, "measured_mean": mean, "measured_variance_over_mean2": var / mean**2,
                  "mean_standard_error": float(per_sample_mean.std(ddof=1) / math.sqrt(len(per_sample_mean))),
                  "samples": len(eig), "below_float32_resolution_fraction": float(zero.mean())}
        hutchinson, hutchinson_se = hutchinson_mean_eigenvalue(case, config, 100 * context.seed + 10 * i + 7, q_start)
        record["measured_mean_hutchinson"] = hutchinson
        record["mean_standard_error_hutchinson"] = hutchinson_se
        record["mean_rel_error_spectrum"] = _rel(mean, prediction["mean"])
        # the tolerance is judged on the estimator with the smaller standard error; both are reported
        precise = hutchinson if hutchinson_se < record["mean_standard_error"] else mean
        record["mean_estimator_judged"] = "hutchinson" if hutchinson_se < record["mean_standard_error"] else "spectrum"
        record["mean_rel_error"] = _rel(precise, prediction["mean"])
        record["variance_rel_error"] = _rel(var / mean**2, prediction["variance_over_mean2"]) \
            if prediction["variance_over_mean2"] > 0 else abs(var / mean**2)
        record["mean_within_tolerance"] = record["mean_rel_error"] <= config.tolerance_mean
        record["variance_within_tolerance"] = record["variance_rel_error"] <= config.tolerance_variance
        density, edges = np.histogram(np.log10(eig[~zero]), bins=60, density=True)
        histograms.update({f"log10_eigenvalue_density_{i}": density, f"log10_eigenvalue_edges_{i}": edges})
        results.append(record)

    linear = {"identity": "linear Gaussian chain, σ_w² = 1", "rows": []}
    linear_case = dict(activation="identity", sigma_w2=1.0, sigma_b2=0.0, weights="gaussian")
    for L in context.progress(config.linear_depths, "Fuss-Catalan depths"):
        eig, _ = jacobian_eigenvalues(linear_case, dataclasses.replace(config, depth=L, networks=config.linear_networks,
                                                                       inputs_per_network=1), 7000 + 97 * L, 1.0)
        for k in (1, 2, 3):
            predicted = theory.fuss_catalan(L, k)
            measured = float(np.mean(eig**k))
            linear["rows"].append({"L": L, "k": k, "fuss_catalan": predicted, "measured": measured,
                                   "rel_error": _rel(measured, predicted),
                                   "within_tolerance": _rel(measured, predicted) <= config.tolerance_moments})

    phase = phase_diagram(config, context)
    summary = {
        "mean_within_5pct": all(r["mean_within_tolerance"] for r in results),
        "variance_within_5pct": all(r["variance_within_tolerance"] for r in results),
        "fuss_catalan_within_3pct": all(r["within_tolerance"] for r in linear["rows"]),
        "worst_mean_rel_error": max(r["mean_rel_error"] for r in results),
        "worst_variance_rel_error": max(r["variance_rel_error"] for r in results),
        "worst_moment_rel_error": max(r["rel_error"] for r in linear["rows"]),
    }
    context.save_arrays(**histograms)
    return {"spectra": results, "fuss_catalan": linear, "phase_diagram": phase, "summary": summary,
            "N": config.width, "L": config.depth}


def phase_diagram(config: Config, context) -> dict:
    n_w, n_b = config.phase_grid
    sigma_w2 = np.linspace(0.5, 4.0, n_w)
    sigma_b2 = np.linspace(0.0, 0.3, n_b)
    chi = np.array([[theory.mean_field("tanh", w, b)[1] for w in sigma_w2] for b in sigma_b2])  # (n_b, n_w)
    critical_b2 = np.linspace(0.0, 0.3, 13)
    critical_w2 = [theory.critical_sigma_w2("tanh", b, lo=0.5, hi=6.0) for b in critical_b2]
    points = []
    probes = [(w * c, b) for b, c in zip((0.0, 0.1, 0.25), (critical_w2[0], critical_w2[4], critical_w2[10]))
              for w in (0.7, 1.0, 1.5)]
    for j, (w, b) in enumerate(context.progress(probes, "phase-diagram probes")):
        case = dict(activation="tanh", sigma_w2=float(w), sigma_b2=float(b), weights="gaussian")
        q_star, chi_theory = theory.mean_field("tanh", w, b)
        model = network(case, config.phase_width, config.phase_depth, 5000 + j)
        x = fixed_point_inputs(case, max(q_star, 1e-3), config.phase_width, 4, 6000 + j)
        # χ₁ measured as ‖D_φ W‖_F² / N of each layer past the first, averaged over layers and inputs
        local = list(probe.local_jacobian_field(model, x, "layers/*").values())[1:]  # (points, N, N) per layer
        chi_samples = [float(jnp.sum(J[i] ** 2)) / config.phase_width for i in range(len(x)) for J in local]
        chi_measured = float(np.mean(chi_samples))
        points.append({"sigma_w2": float(w), "sigma_b2": float(b), "chi1_theory": chi_theory,
                       "chi1_measured": chi_measured, "rel_error": _rel(chi_measured, chi_theory)})
    return {"sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "chi1": chi, "critical_sigma_b2": critical_b2,
            "critical_sigma_w2": critical_w2, "probes": points}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    results, linear, phase = numbers["spectra"], numbers["fuss_catalan"], numbers["phase_diagram"]
    fig = plt.figure(figsize=(14, 7.5))
    grid = fig.add_gridspec(2, 4)
    for i, r in enumerate(results[:6]):
        ax = fig.add_subplot(grid[i // 4, i % 4])
        ax.stairs(arrays[f"log10_eigenvalue_density_{i}"], arrays[f"log10_eigenvalue_edges_{i}"], fill=True,
                  color=plotting.color(r["activation"]), alpha=0.8)
        ax.axvline(math.log10(r["prediction"]["mean"]), color="k", ls="--", lw=1, label="log₁₀ χ₁ᴸ (theory)")
        ax.axvline(math.log10(r["measured_mean"]), color="k", lw=1, label="log₁₀ mean (measured)")
        ax.set_title(f"{r['activation']} {r['weights']}, {r['regime']}\nσ_w²={r['sigma_w2']:.3f}, σ_b²={r['sigma_b2']}\n"
                     f"var/mean² {r['measured_variance_over_mean2']:.2f} (theory "
                     f"{r['prediction']['variance_over_mean2']:.2f}); {100 * r['below_float32_resolution_fraction']:.0f}% < fp32 tol.",
                     fontsize=7)
        ax.set_xlabel("log₁₀ eigenvalue of JJᵀ")
        if i == 0:
            ax.legend(fontsize=6)
    ax = fig.add_subplot(grid[1, 2])
    for k, marker in zip((1, 2, 3), "os^"):
        rows = [row for row in linear["rows"] if row["k"] == k]
        Ls = [row["L"] for row in rows]
        line, = ax.plot(Ls, [row["fuss_catalan"] for row in rows], label=f"FC(L, {k})")
        ax.plot(Ls, [row["measured"] for row in rows], marker, color=line.get_color(), ms=4)
    ax.set_yscale("log")
    ax.set_xlabel("depth L")
    ax.set_ylabel("k-th moment of eig(JJᵀ)")
    ax.set_title(f"linear Gaussian chain, N={config.width}\nlines Fuss–Catalan, points measured")
    ax.legend(fontsize=6)
    ax = fig.add_subplot(grid[1, 3])
    mesh = ax.pcolormesh(phase["sigma_w2"], phase["sigma_b2"], np.log(np.asarray(phase["chi1"])), cmap="RdBu_r", vmin=-1, vmax=1,
                         shading="auto")
    fig.colorbar(mesh, ax=ax, label="log χ₁ (theory)")
    ax.plot(phase["critical_sigma_w2"], phase["critical_sigma_b2"], "k-", label="χ₁ = 1")
    probes = phase["probes"]
    ax.scatter([p["sigma_w2"] for p in probes], [p["sigma_b2"] for p in probes],
               c=np.log([p["chi1_measured"] for p in probes]), cmap="RdBu_r", vmin=-1, vmax=1, edgecolors="k", s=40,
               label="measured χ₁")
    ax.set_xlabel("σ_w²")
    ax.set_ylabel("σ_b²")
    ax.set_title("tanh phase diagram")
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return {"": fig}
