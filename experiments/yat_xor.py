"""One Yat unit against XOR, and where the Yat kernel stops being positive semi-definite.

Command:  python -m experiments yat_xor [--quick]
Writes:   figures/yat_xor.{png,pdf,json,npz}
Runtime:  ~30 s on 2 CPU cores (quick: ~10 s).

(a, b) A single Yat unit y = α (w·x + b)² / (‖w − x‖² + ε) followed by a 1 → 2 linear
readout, trained on XOR (class 1 iff x₁x₂ > 0), with b ≥ 0 (softplus, the default) and
with b unconstrained; decision regions and accuracy on a fine grid of [−1, 1]² against
the true XOR labels. Why one unit can do it: y > t ⇔ (w·x + b)² − t‖x − w‖² − tε > 0, a
quadratic inequality whose form wwᵀ − tI is indefinite for t < ‖w‖²: its boundary is a
hyperbola, and XOR's boundary x₁x₂ = 0 is a degenerate one.
(c) The minimum eigenvalue of Yat Gram matrices (relative to the largest) as b sweeps
[−2, 2], on random point sets and on the XOR data: PSD for b ≥ 0 (theory: product of PSD
kernels), and the negative values for b < 0 are reported.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from geometry import data, kernels, models, training


class YatUnitClassifier(nnx.Module):
    """One Yat unit, then a linear map of its scalar output to two logits."""

    def __init__(self, *, constrained: bool, rngs: nnx.Rngs):
        self.unit = models.YatDense(2, 1, constrained=constrained, bias=0.1, epsilon=0.1, rngs=rngs)
        self.head = models.Dense(1, 2, init="xavier", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.unit(x))


@dataclasses.dataclass(frozen=True)
class Config:
    n_train: int = 1000
    steps: int = 4000
    learning_rate: float = 1e-2
    grid: int = 400
    b_values: int = 81
    point_sets: int = 20
    set_size: int = 60
    epsilon: float = 0.1


QUICK = Config(steps=500, grid=100, b_values=21, point_sets=4)


def run(config: Config, context) -> dict:
    x, y = data.make_dataset("xor", config.n_train, seed=context.seed)
    grid = data.grid((-1, 1, -1, 1), config.grid)
    truth = (grid[:, 0] * grid[:, 1] > 0).astype(np.int32)
    units, regions = {}, {}
    for constrained in context.progress((True, False), "single-unit fits"):
        name = "b >= 0 (softplus)" if constrained else "b unconstrained"
        model = YatUnitClassifier(constrained=constrained, rngs=nnx.Rngs(context.seed))
        directory = context.out_dir / ".checkpoints" / context.name / f"{'constrained' if constrained else 'free'}"
        training.train(model, x, y, training.TrainConfig(steps=config.steps, learning_rate=config.learning_rate,
                                                         checkpoint_every=config.steps, log_every=config.steps // 4,
                                                         seed=context.seed),
                       checkpoint_dir=directory, name=f"{context.name}: {name}", log=context.log)
        predicted = np.asarray(jnp.argmax(jax.vmap(model)(jnp.asarray(grid)), axis=-1))
        regions[name] = predicted.reshape(config.grid, config.grid)
        units[name] = {
            "train_accuracy": training.accuracy(model, x, y),
            "grid_accuracy": float(np.mean(predicted == truth)),
            "w": np.asarray(model.unit.weight[...])[0], "b": float(model.unit.bias()[0]),
            "epsilon": float(model.unit.epsilon()[0]), "alpha": float(model.unit.scale[...][0]),
        }

    rng = np.random.default_rng(context.seed)
    b_values = np.linspace(-2.0, 2.0, config.b_values)
    sets = [rng.normal(size=(config.set_size, 2)) for _ in range(config.point_sets)] + [x[: config.set_size * 2]]
    relative_min = np.zeros((len(sets), len(b_values)))
    for i, points in enumerate(context.progress(sets, "Gram spectra")):
        for j, b in enumerate(b_values):
            eigenvalues = np.linalg.eigvalsh(np.asarray(kernels.gram(kernels.yat, points, b=float(b),
                                                                        epsilon=config.epsilon), dtype=np.float64))
            relative_min[i, j] = eigenvalues[0] / np.abs(eigenvalues).max()
    worst = relative_min.min(axis=0)
    nonnegative = b_values >= 0

    context.save_arrays(**{f"region_{'constrained' if 'softplus' in name else 'free'}": region.astype(np.int8)
                           for name, region in regions.items()}, points=x[:300], labels=y[:300])
    return {
        "single_unit": units,
        "gram": {"b": b_values, "relative_min_eigenvalue_per_set": relative_min,
                 "worst_relative_min_eigenvalue": worst},
        "psd_for_all_nonnegative_b": bool(np.all(worst[nonnegative] >= -1e-6)),
        "most_negative_relative_eigenvalue_for_negative_b": float(worst[~nonnegative].min()),
        "largest_b_with_a_negative_eigenvalue": float(b_values[worst < -1e-6].max()) if np.any(worst < -1e-6) else None,
    }


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    units, gram = numbers["single_unit"], numbers["gram"]
    regions = {"b >= 0 (softplus)": arrays["region_constrained"], "b unconstrained": arrays["region_free"]}
    x, y = arrays["points"], arrays["labels"]
    b_values, relative_min = np.asarray(gram["b"]), np.asarray(gram["relative_min_eigenvalue_per_set"])
    worst = np.asarray(gram["worst_relative_min_eigenvalue"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (name, region) in zip(axes[:2], regions.items()):  # predicted class on the grid
        ax.imshow(region, origin="lower", extent=(-1, 1, -1, 1), cmap="coolwarm", alpha=0.35, interpolation="nearest")
        ax.contour(np.linspace(-1, 1, config.grid), np.linspace(-1, 1, config.grid), region, levels=[0.5], colors="k")
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=3, lw=0)
        u = units[name]
        ax.set_title(f"one Yat unit, {name}\ngrid accuracy {u['grid_accuracy']:.3f}, b = {u['b']:.3f}", fontsize=8)
        ax.set_aspect("equal")
    ax = axes[2]
    for row in relative_min[:-1]:
        ax.plot(b_values, row, color="0.7", lw=0.6)
    ax.plot(b_values, relative_min[-1], color="tab:blue", label="XOR points")
    ax.plot(b_values, worst, color="k", label="minimum over sets")
    ax.axvline(0, color="tab:red", ls=":", lw=1)
    ax.axhline(0, color="0.4", lw=0.6)
    ax.set_xlabel("b")
    ax.set_ylabel("λ_min / |λ|_max of the Yat Gram matrix")
    ax.set_title(f"PSD for b ≥ 0, lost for b < 0 (ε = {config.epsilon})", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return {"": fig}
