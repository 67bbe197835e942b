"""Saturation as the weight scale grows, and LayerNorm holding pre-activations in the live zone.

Command:  python -m experiments saturation [--quick]
Writes:   figures/saturation.{png,pdf,json}
Runtime:  ~1 min on 2 CPU cores (quick: ~15 s).

Random MLPs (input n₀, width k, depth L, weights N(0, σ_w²/fan_in), zero biases) on
standard-normal inputs, for σ_w over two decades, with and without LayerNorm before φ.
Measured over all points:
* the fraction of units with |φ'(a)| < 0.05 in layer 1 and in layer L; theory for layer 1
  (`theory.prob_low_derivative`): a ~ N(0, σ_w² ‖x‖²/n₀) ≈ N(0, σ_w²) without norm, and
  a ≈ N(0, 1) whatever σ_w with LayerNorm;
* median σ_min and condition number of the first layer's Jacobian D_φ(a)[J_LN]W₁ (k×n₀)
  and of the end-to-end input → h_L Jacobian, from `jacobian_field`. Finding: LayerNorm
  after a bias-free linear map is scale-invariant up to its ε, LN(W(cx)) ≈ LN(Wx), so the
  input x itself is a near-null direction of J (J x = φ'(a) ⊙ (z − μ) ε / s³): σ_min/σ_max
  drops by orders of magnitude, to or below the float32 rank tolerance (the JSON gives the
  ratios and ranks). For LayerNorm the figure shows σ₁/σ_{n₀−1}, the conditioning of the
  remaining directions;
* the median |a| (pre-activation scale) in layer L.
ReLU is positively homogeneous: its dead fraction is ½ at every σ_w, with or without
norm, and its conditioning does not saturate — it degrades by rank, not by scale.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from geometry import models, plotting, probe, spectra, theory


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("sigmoid", "tanh", "gelu", "relu")
    sigma_w: tuple[float, ...] = tuple(np.round(np.geomspace(0.25, 16.0, 13), 4))
    input_dim: int = 16
    width: int = 128
    depth: int = 4
    points: int = 512
    threshold: float = 0.05


QUICK = Config(sigma_w=(0.5, 2.0, 8.0), width=32, depth=3, points=64)


def measure(name: str, norm, sigma_w: float, config: Config, seed: int) -> dict:
    model = models.MLP(config.input_dim, config.width, depth=config.depth, activation=name, norm=norm, init="gaussian",
                       sigma_w2=sigma_w**2, rngs=nnx.Rngs(seed))
    x = np.random.default_rng(seed).normal(size=(config.points, config.input_dim)).astype(np.float32)
    preactivations = list(probe.inputs(model, x, "layers/*/activation").values())  # L arrays (P, k)
    low = [float(np.mean(np.abs(np.asarray(model.activation.derivative(a))) < config.threshold))
           for a in preactivations]
    fields = list(probe.input_jacobian_field(model, x, "layers/*", reduce=spectra.singular_values).values())  # L × (P, n₀)
    record = {"low_derivative_fraction_per_layer": low,
              "median_abs_preactivation_last": float(np.median(np.abs(np.asarray(preactivations[-1]))))}
    for label, sigma in (("first", fields[0]), ("end_to_end", fields[-1])):
        stats = spectra.summarize_singular_values(sigma, (config.width, config.input_dim), jnp.float32)
        record[f"{label}_median_sigma_min"] = float(np.median(stats["sigma_min"]))
        record[f"{label}_median_condition"] = float(np.median(stats["condition_number"]))
        record[f"{label}_rank_deficient_fraction"] = float(np.mean(np.asarray(stats["numerical_rank"]) < config.input_dim))
        record[f"{label}_median_rank"] = float(np.median(stats["numerical_rank"]))
        # LayerNorm after a bias-free linear map is scale-invariant up to ε, LN(W(cx)) ≈ LN(Wx), so x
        # itself is a near-null direction of J. Conditioning on the rest is σ_1 / σ_{n₀−1}.
        sigma = np.asarray(sigma, dtype=np.float64)
        record[f"{label}_median_condition_without_smallest"] = float(np.median(sigma[:, 0] / sigma[:, -2]))
        record[f"{label}_median_sigma_min_over_max"] = float(np.median(sigma[:, -1] / sigma[:, 0]))
    return record


def run(config: Config, context) -> dict:
    results = {}
    cases = [(name, norm) for name in config.activations for norm in (None, "layernorm")]
    for i, (name, norm) in enumerate(context.progress(cases, "activation × norm")):
        rows = []
        for j, sigma_w in enumerate(config.sigma_w):
            record = measure(name, norm, float(sigma_w), config, 1000 * context.seed + 37 * i + j)
            q_layer1 = 1.0 if norm else float(sigma_w) ** 2
            record["theory_low_derivative_fraction_layer1"] = theory.prob_low_derivative(name, q_layer1, config.threshold)
            rows.append({"sigma_w": float(sigma_w), **record})
        results[f"{name}/{norm or 'none'}"] = rows

    def worst_theory_gap(norm):
        return max(abs(r["low_derivative_fraction_per_layer"][0] - r["theory_low_derivative_fraction_layer1"])
                   for key, rows in results.items() if key.endswith(norm) for r in rows)

    live = {key: [r["low_derivative_fraction_per_layer"][-1] for r in rows] for key, rows in results.items()}
    layernorm_ranks = sorted({r["first_median_rank"] for key, rows in results.items() if key.endswith("layernorm")
                              for r in rows})
    ratio = {norm: float(np.median([r["first_median_sigma_min_over_max"] for key, rows in results.items()
                                    if key.endswith(norm) for r in rows])) for norm in ("none", "layernorm")}
    return {
        "results": results,
        "threshold": config.threshold,
        "max_abs_gap_to_theory_layer1": {"none": worst_theory_gap("none"), "layernorm": worst_theory_gap("layernorm")},
        "largest_sigma_w_last_layer_low_fraction": {k: v[-1] for k, v in live.items()},
        "layernorm_first_layer_median_ranks": layernorm_ranks,
        "first_layer_median_sigma_min_over_max": ratio,
        "finding_layernorm_radial_kernel": (
            f"first-layer Jacobian, median sigma_min/sigma_max: {ratio['layernorm']:.2e} with LayerNorm vs "
            f"{ratio['none']:.2e} without; float32 numerical ranks with LayerNorm {layernorm_ranks} of n0={config.input_dim}. "
            "Bias-free W followed by LayerNorm is scale-invariant up to its epsilon, so x is a near-null direction "
            "(J x = phi'(a) (z - mean) eps / s^3); whether float32 resolves it depends on the rank tolerance"),
    }


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    results = {f"{name}/{norm}": numbers["results"][f"{name}/{norm}"]  # the run's order, not the JSON's sorted one
               for name in config.activations for norm in ("none", "layernorm")}
    panels = [
        ("low-derivative fraction, layer 1", lambda r, ln: r["low_derivative_fraction_per_layer"][0], "linear"),
        (f"low-derivative fraction, layer {config.depth}", lambda r, ln: r["low_derivative_fraction_per_layer"][-1],
         "linear"),
        ("median cond(J), layer 1\n(LayerNorm: σ₁/σ_{n₀−1}; x is near-null)", lambda r, ln: r[
            "first_median_condition_without_smallest" if ln else "first_median_condition"], "log"),
        ("median σ_min(J), layer 1 (no norm)", lambda r, ln: np.nan if ln else r["first_median_sigma_min"], "log"),
        (f"median cond(J), input → layer {config.depth}\n(LayerNorm: σ₁/σ_{{n₀−1}})", lambda r, ln: r[
            "end_to_end_median_condition_without_smallest" if ln else "end_to_end_median_condition"], "log"),
        (f"median |a|, layer {config.depth}", lambda r, ln: r["median_abs_preactivation_last"], "log"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, value, scale) in zip(axes.flat, panels):
        for key, rows in results.items():
            name, norm = key.split("/")
            sigma_w = [r["sigma_w"] for r in rows]
            values = np.array([value(r, norm != "none") for r in rows], dtype=float)
            values = np.where(np.isfinite(values), values, np.nan)
            style = "-" if norm == "none" else "--"
            ax.plot(sigma_w, values, style, marker="o", ms=3, color=plotting.color(name),
                    label=f"{name}{' + LayerNorm' if norm != 'none' else ''}")
            if title.endswith("layer 1") and title.startswith("low"):
                ax.plot(sigma_w, [r["theory_low_derivative_fraction_layer1"] for r in rows], ":", color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale(scale)
        ax.set_xlabel("weight scale σ_w")
        ax.set_title(title)
    axes.flat[0].legend(fontsize=6)
    axes.flat[0].text(0.98, 0.03, "dotted: Gaussian theory", transform=axes.flat[0].transAxes, fontsize=7, ha="right")
    fig.suptitle(f"random MLPs n₀={config.input_dim}, width {config.width}, depth {config.depth}, "
                 f"{config.points} Gaussian inputs; solid: no norm, dashed: LayerNorm", fontsize=9)
    fig.tight_layout()
    return {"": fig}

