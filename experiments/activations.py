"""φ and φ' for every activation, their dead/saturated zones, and linear collapse.

Command:  python -m experiments activations [--quick]
Writes:   figures/activations.{png,pdf,json}
Runtime:  ~5 s on 2 CPU cores (quick: ~3 s).

Each panel shows φ (solid) and φ' (dashed) with the zones where |φ'| < threshold shaded:
there the layer Jacobian D_φ W loses (ReLU: exactly) or nearly loses that unit's row.
Each activation's declared facts (strictly monotone, C¹) are re-derived numerically in
float64, and compared with the claims of the seed article "Activations Are Bad for
Geometry", which calls GELU strictly monotone — the JSON's `findings` say where the
measurement disagrees.

The last panel is the linear-collapse demonstration: two linear layers equal the single
layer (W₂W₁, W₂b₁ + b₂) up to rounding, and one ReLU between them breaks the equality.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from geometry import activations, plotting

# What seed 003 asserts (claims to test, not results): its list of strictly monotone
# activations, and the ones whose φ' it says "stays strictly positive".
SEED_STRICTLY_MONOTONE = {"identity", "sigmoid", "tanh", "gelu", "softplus", "leaky_relu"}
SEED_POSITIVE_DERIVATIVE = {"gelu", "softplus"}


@dataclasses.dataclass(frozen=True)
class Config:
    z_max: float = 6.0  # plot and measure on [−z_max, z_max]
    grid_points: int = 12_001  # odd, so z = 0 is a grid point (the kink of ReLU-like φ)
    threshold: float = 0.05  # |φ'| below this counts as dead or saturated
    kink_step: float = 1e-7  # φ' compared at z ± kink_step to detect jumps
    layer_sizes: tuple[int, int, int] = (2, 16, 3)  # n₀ → hidden → output of the collapse demo
    collapse_points: int = 1000


QUICK = Config(grid_points=2401, collapse_points=200)


def curves(name: str, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, φ(z), φ'(z), |φ'| < threshold) on the float64 grid: the definitions the figure draws."""
    activation = activations.get(name)
    with jax.enable_x64(True):
        z = jnp.linspace(-config.z_max, config.z_max, config.grid_points, dtype=jnp.float64)
        phi, derivative = np.asarray(activation(z)), np.asarray(activation.derivative(z))
    return np.asarray(z), phi, derivative, np.abs(derivative) < config.threshold


def measure_activation(name: str, config: Config) -> dict:
    activation = activations.get(name)
    z, phi, derivative, dead = curves(name, config)
    with jax.enable_x64(True):
        z = jnp.asarray(z)
        autodiff = np.asarray(jax.vmap(jax.grad(activation.fn))(z))
        jump = np.abs(
            np.asarray(activation.derivative(z + config.kink_step)) - np.asarray(activation.derivative(z - config.kink_step))
        )
    z = np.asarray(z)
    strictly_monotone = bool(np.all(np.diff(phi) > 0))
    smooth = bool(jump.max() < 1e-3)
    return {
        "declared": {"strictly_monotone": activation.strictly_monotone, "smooth": activation.smooth},
        "measured": {"strictly_monotone": strictly_monotone, "smooth": smooth},
        "facts_agree": strictly_monotone == activation.strictly_monotone and smooth == activation.smooth,
        "min_derivative": float(derivative.min()),
        "argmin_derivative": float(z[np.argmin(derivative)]),
        "max_derivative": float(derivative.max()),
        "max_derivative_jump": float(jump.max()),
        "max_abs_derivative_vs_autodiff": float(np.max(np.abs(derivative - autodiff))),
        "low_derivative_zones": activations.low_derivative_zones(name, config.threshold, z_max=config.z_max),
        "low_derivative_fraction": float(dead.mean()),
    }


def collapse_demo(config: Config, seed: int) -> dict:
    """max |two-layer output − one-layer output|, linear and with a ReLU in between."""
    n0, hidden, out = config.layer_sizes
    results = {}
    for dtype_name, dtype in (("float32", np.float32), ("float64", np.float64)):
        rng = np.random.default_rng(seed)
        w1, b1 = rng.normal(size=(hidden, n0)) / np.sqrt(n0), rng.normal(size=hidden)
        w2, b2 = rng.normal(size=(out, hidden)) / np.sqrt(hidden), rng.normal(size=out)
        x = rng.normal(size=(config.collapse_points, n0))
        w1, b1, w2, b2, x = (a.astype(dtype) for a in (w1, b1, w2, b2, x))
        with jax.enable_x64(dtype_name == "float64"):
            combined = x @ (w2 @ w1).T + (w2 @ b1 + b2)
            two_linear = (x @ w1.T + b1) @ w2.T + b2
            with_relu = np.asarray(jax.nn.relu(x @ w1.T + b1)) @ w2.T + b2
        scale = float(np.max(np.abs(combined)))
        results[dtype_name] = {
            "max_abs_diff_linear": float(np.max(np.abs(two_linear - combined))),
            "max_abs_diff_with_relu": float(np.max(np.abs(with_relu - combined))),
            "max_abs_output": scale,
        }
    return results


def run(config: Config, context) -> dict:
    measured = {name: measure_activation(name, config) for name in context.progress(activations.NAMES, "activations")}
    collapse = collapse_demo(config, context.seed)
    findings = []
    for name, m in measured.items():
        if name in SEED_STRICTLY_MONOTONE and not m["measured"]["strictly_monotone"]:
            findings.append(
                f"{name}: the seed calls it strictly monotone; measured min φ' = {m['min_derivative']:.4f} "
                f"at z = {m['argmin_derivative']:.3f}, so it is not"
            )
        if name in SEED_POSITIVE_DERIVATIVE and m["min_derivative"] <= 0:
            findings.append(f"{name}: the seed says φ' > 0 everywhere; measured min φ' = {m['min_derivative']:.4f}")
        if not m["facts_agree"]:
            findings.append(f"{name}: declared facts {m['declared']} differ from measured {m['measured']}")

    return {"activations": measured, "collapse": collapse, "findings": findings, "threshold": config.threshold}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    measured, collapse = numbers["activations"], numbers["collapse"]
    fig, axes = plt.subplots(2, 5, figsize=(12.5, 5.2), sharex=False)
    for ax, name in zip(axes.flat, activations.NAMES):
        m = measured[name]
        z, phi, derivative, dead = curves(name, config)  # the definitions; the measured numbers are in the JSON
        colour = plotting.color(name)
        ax.fill_between(z, -1.5, 3.0, where=dead, color="0.85", step="mid", lw=0, label=f"|φ'| < {config.threshold}")
        ax.plot(z, phi, color=colour, label="φ")
        ax.plot(z, derivative, color=colour, ls="--", label="φ'")
        ax.axhline(0, color="0.5", lw=0.6)
        tag = "strictly monotone" if m["measured"]["strictly_monotone"] else f"not monotone: min φ'={m['min_derivative']:.3f}"
        if name == "relu":
            tag = "not strictly monotone (flat)"
        ax.set_title(f"{name}\n{tag}")
        ax.set_ylim(-1.5, 3.0)
        ax.set_xlim(-config.z_max, config.z_max)
        ax.set_xlabel("z")
    axes.flat[0].legend(loc="upper left")
    ax = axes.flat[-1]
    labels = ["lin∘lin\nfloat32", "lin∘lin\nfloat64", "lin∘ReLU∘lin\nfloat32"]
    values = [
        collapse["float32"]["max_abs_diff_linear"],
        collapse["float64"]["max_abs_diff_linear"],
        collapse["float32"]["max_abs_diff_with_relu"],
    ]
    ax.bar(range(3), np.maximum(values, 1e-18), color=["#4d4d4d", "#4d4d4d", plotting.color("relu")])
    ax.set_yscale("log")
    ax.set_xticks(range(3), labels, fontsize=6.5)
    ax.set_title("max |two layers − one combined layer|")
    for i, v in enumerate(values):
        ax.text(i, max(v, 1e-18) * 1.5, f"{v:.1e}", ha="center", fontsize=7)
    fig.tight_layout()
    return {"": fig}
