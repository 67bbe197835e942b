"""Rank collapse with depth: numerical and effective rank of ∂h_l/∂x, layer by layer.

Command:  python -m experiments rank_depth [--quick]
Writes:   figures/rank_depth.{png,pdf,json}
Runtime:  ~6 min on 2 CPU cores (quick: ~30 s); the trained rows reuse `tradeoff`'s networks.

Random MLPs with square layers (n₀ = width k ∈ {8, 32, 128, 512}, He init, zero biases,
depth 32) for identity / ReLU / leaky ReLU / tanh / GELU / softplus, in four variants:
plain, residual (J_l = I + D_φ W_l), LayerNorm before φ, spectral norm (‖W_l‖₂ = 1).
For each layer l, over random Gaussian inputs, the numerical rank (`spectra.numerical_rank`
convention, float32) and the Roy–Vetterli effective rank of the input → h_l Jacobian,
divided by n₀: median (line) and min–max (band).

ReLU, plain: rank ∂h_l/∂x = min(n₀, k₁, …, k_l) exactly (k_i active units at layer i),
because each layer keeps the rows of its active units and products of generic matrices
have generic rank; the figure overlays it (dotted). It is checked in float64 at every
point and layer, from the per-layer Jacobians chained stably (`spectra.chained_ranks`),
and also from the explicit end-to-end Jacobian, which fails where the product's
σ_k/σ_1 drops below float64 resolution (width 512, depth 32) — the JSON counts both.

Finding: the float32 numerical rank of deep products falls for every activation, the
identity included — products of random matrices spread their singular values
exponentially with depth (Lyapunov exponents), so conditioning, not D_φ, sets the
resolvable rank past ~10 layers. ReLU alone loses rank exactly, from layer 1.
Trained rows: MLPs 2 → k ×4 → 2 trained on the spiral (n₀ = 2), ranks on held-out points.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from experiments._classifiers import ClassifierSpec, trained_classifier
from geometry import models, plotting, probe, spectra

VARIANTS = {
    "plain": {},
    "residual": {"residual": True},
    "layernorm": {"norm": "layernorm"},
    "spectral_norm": {"spectral_norm": True},
}


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("identity", "relu", "leaky_relu", "tanh", "gelu", "softplus")
    widths: tuple[int, ...] = (8, 32, 128, 512)
    points: tuple[int, ...] = (32, 16, 4, 1)  # inputs per width (the cost grows like k³ per point)
    depth: int = 32
    trained_widths: tuple[int, ...] = (32, 4)
    trained_steps: int = 3000


QUICK = Config(activations=("identity", "relu", "tanh"), widths=(8, 16), points=(8, 4), depth=6,
               trained_widths=(32,), trained_steps=300)


def random_inputs(width: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32)


def layer_ranks(model, x: np.ndarray, n0: int) -> dict:
    """Per layer: numerical and effective rank / n₀ of ∂h_l/∂x over the points."""
    sigma = probe.input_jacobian_field(model, x, "layers/*", reduce=spectra.singular_values).values()  # L × (P, n₀)
    numerical, effective = [], []
    for width, s in zip(model.widths, sigma):
        stats = spectra.summarize_singular_values(s, (width, n0), jnp.float32)
        numerical.append(np.asarray(stats["numerical_rank"], dtype=np.float64) / n0)
        effective.append(np.asarray(stats["effective_rank"], dtype=np.float64) / n0)
    return {"numerical": np.stack(numerical), "effective": np.stack(effective)}  # (L, P) each


def relu_identity_check(width: int, depth: int, count: int, seed: int) -> dict:
    """float64: rank of ∂h_l/∂x against min(n₀, k₁, …, k_l) at every point and layer, two ways.

    explicit: `numerical_rank` of the end-to-end Jacobian from `jacobian_field`; it fails
    only where the product's σ_k/σ_1 at the predicted rank k falls below float64 resolution.
    chained: `spectra.chained_ranks` of the per-layer Jacobians ∂h_l/∂h_{l-1} from
    `probe.local_jacobian_field`, which never forms the ill-conditioned product.
    """
    with jax.enable_x64(True):
        model = models.MLP(width, width, depth=depth, activation="relu", dtype=jnp.float64, rngs=nnx.Rngs(seed))
        x = jnp.asarray(random_inputs(width, count, seed + 1).astype(np.float64))
        sigma = probe.input_jacobian_field(model, x, "layers/*", reduce=spectra.singular_values).values()
        chained = spectra.chained_ranks(list(probe.local_jacobian_field(model, x, "layers/*").values()))
        bounds = relu_bound(model, x)  # (L, P)
        explicit_matches, chained_matches, worst_ratio = 0, 0, np.inf
        for s, bound, c in zip(sigma, bounds, chained):
            rank = np.asarray(spectra.summarize_singular_values(s, (width, width), jnp.float64)["numerical_rank"])
            explicit_matches += int(np.sum(rank == bound))
            chained_matches += int(np.sum(np.asarray(c) == bound))
            s = np.asarray(s)
            kept = s[np.arange(count), np.maximum(bound - 1, 0)] / s[:, 0]  # σ_k / σ_1 at the predicted rank k
            worst_ratio = min(worst_ratio, float(np.min(np.where(bound > 0, kept, np.inf))))
    checks = count * depth
    return {"checks": checks, "explicit_matches": explicit_matches, "chained_matches": chained_matches,
            "exact": chained_matches == checks, "explicit_exact": explicit_matches == checks,
            "smallest_sigma_ratio_at_predicted_rank": worst_ratio, "median_bound_last_layer": float(np.median(bounds[-1]))}


def relu_bound(model, x: np.ndarray) -> np.ndarray:
    """min(n₀, k₁, …, k_l) per layer and point: (L, P) integers, k_i the active units of layer i."""
    preactivations = probe.inputs(model, x, "layers/*/activation").values()
    active = np.stack([np.asarray(jnp.sum(a > 0, axis=-1)) for a in preactivations])  # (L, P)
    return np.minimum.accumulate(np.minimum(active, x.shape[1]), axis=0)


def run(config: Config, context) -> dict:
    random_results, identity_checks = {}, {}
    cases = [(v, a, w, p) for v in VARIANTS for a in config.activations for w, p in zip(config.widths, config.points)]
    for i, (variant, activation, width, count) in enumerate(context.progress(cases, "variant × activation × width")):
        model = models.MLP(width, width, depth=config.depth, activation=activation, rngs=nnx.Rngs(1000 * context.seed + i),
                           **VARIANTS[variant])
        x = random_inputs(width, count, i)
        ranks = layer_ranks(model, x, width)
        if activation == "relu" and variant in ("plain", "spectral_norm"):  # scaling W keeps every sign pattern
            ranks["relu_identity_bound"] = relu_bound(model, x) / width
        random_results[f"{variant}/{activation}/{width}"] = {
            key: {"median": np.median(v, axis=1), "min": v.min(axis=1), "max": v.max(axis=1)} for key, v in ranks.items()
        }
    for width, count in context.progress(list(zip(config.widths, config.points)), "ReLU rank identity (float64)"):
        identity_checks[str(width)] = relu_identity_check(width, config.depth, max(count, 2), 77 + width)

    trained_results = {}
    for width in config.trained_widths:
        for activation in config.activations:
            spec = ClassifierSpec(dataset="spiral", activation=activation, width=width, depth=4,
                                  steps=config.trained_steps, seed=context.seed)
            trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
            ranks = layer_ranks(trained.model, trained.x_test, 2)
            trained_results[f"{activation}/{width}"] = {
                key: {"median": np.median(v, axis=1), "min": v.min(axis=1), "rank_deficient_fraction":
                      np.mean(v < 1.0, axis=1) if key == "numerical" else None} for key, v in ranks.items()}

    return {
        "random": random_results,
        "trained_spiral": trained_results,
        "relu_rank_identity_float64": identity_checks,
        "relu_rank_identity_exact_everywhere": all(c["exact"] for c in identity_checks.values()),
    }


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    random_results, trained_results = numbers["random"], numbers["trained_spiral"]
    n_cols = len(config.activations)
    fig, axes = plt.subplots(len(VARIANTS) + 1, n_cols, figsize=(2.5 * n_cols, 2.2 * (len(VARIANTS) + 1)),
                             squeeze=False, sharey=True)
    layers = np.arange(1, config.depth + 1)
    width_colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(config.widths)))
    for row, variant in enumerate(VARIANTS):
        for col, activation in enumerate(config.activations):
            ax = axes[row, col]
            for width, colour in zip(config.widths, width_colors):
                r = random_results[f"{variant}/{activation}/{width}"]
                ax.plot(layers, r["numerical"]["median"], color=colour, label=f"k={width}")
                ax.fill_between(layers, r["numerical"]["min"], r["numerical"]["max"], color=colour, alpha=0.15, lw=0)
                ax.plot(layers, r["effective"]["median"], color=colour, ls="--", lw=0.9)
                if "relu_identity_bound" in r:
                    ax.plot(layers, r["relu_identity_bound"]["median"], color="k", ls=":", lw=0.9)
            ax.set_ylim(0, 1.05)
            if row == 0:
                ax.set_title(activation, color=plotting.color(activation))
            if col == 0:
                ax.set_ylabel(f"{variant}\nrank / n₀")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    trained_layers = np.arange(1, 5)
    for col, activation in enumerate(config.activations):
        ax = axes[-1, col]
        for width, ls in zip(config.trained_widths, ("-", ":")):
            r = trained_results[f"{activation}/{width}"]
            ax.plot(trained_layers, r["numerical"]["median"], "k" + ls, marker="o", ms=3, label=f"numerical, k={width}")
            ax.plot(trained_layers, r["effective"]["median"], color="tab:orange", ls=ls, marker="s", ms=3,
                    label=f"effective, k={width}")
        ax.set_xlabel("layer l")
        ax.set_xticks(trained_layers)
    axes[-1, 0].set_ylabel("trained, spiral\nrank / n₀ (n₀=2)")
    axes[-1, 0].legend(fontsize=5)
    for ax in axes[:-1, :].flat:
        ax.set_xlabel("layer l")
    fig.suptitle("solid: float32 numerical rank (median, band min–max), dashed: effective rank, dotted (ReLU): exact "
                 "rank min(n₀, k₁, …, k_l); random rows: n₀ = width k", fontsize=9)
    fig.tight_layout()
    return {"": fig}
