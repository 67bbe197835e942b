"""Kernel layers against pointwise activations, head to head: accuracy and geometry.

Command:  python -m experiments kernel_layers [--quick]
Writes:   figures/kernel_layers.{png,pdf,json}
Runtime:  ~4 min on 2 CPU cores (quick: ~40 s); networks are checkpointed (resumable).

Models with matched parameter counts (≈3.3k), trained the same way (Adam, 3000 full-batch
steps) on xor, circles, spiral and moons:
* KernelMLP "yat" and "rbf": 2 blocks of (kernel layer with m units → linear map to 16),
  then a linear readout — no pointwise activation anywhere; m chosen to match the count;
* MLP 2 → 32 ×4 → 2 with relu, tanh, gelu.
For the map x ↦ last hidden representation, over a grid covering the data: median
½ log det g, median σ_min and condition number of J, the fraction of grid points where J
is rank-deficient; and the collision fraction of the injectivity test (pairs of distinct
held-out points with ‖F(x) − F(y)‖ < 1e-6 ‖x − y‖). A depth sweep stacks 1–4 Yat blocks
on the spiral. The table reports whatever comes out, including where kernel layers lose.

Kernel machine facts: a one-block Yat model with one shared (b, ε) — so each hidden output
is exactly f_i(x) = Σ_j α_ij k(x, w_j) + c_i — is trained per dataset; over its learned
prototypes w_j we report the Gram matrix's relative minimum eigenvalue (PSD check) and
the RKHS norms ‖f_i‖²_H = α_iᵀ K α_i of the trained readout (`geometry.kernels`).

Other data (`--dataset digits`, `--dataset PATH`): every model takes the data's d inputs and C
classes (the parameter count to match is then that of the MLP d → 32 ×4 → C); the grid is on
the plane through the data mean spanned by their first two principal components
(`geometry.plane`), where J is the Jacobian of c ↦ F(x̄ + c₁u₁ + c₂u₂) (hidden × 2), and the
collisions are tested in the full input space. The depth sweep runs on the spiral when it is
among the datasets, else on the first one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments._classifiers import ClassifierSpec, by_name, class_count, display_name, load_split, trained_classifier
from geometry import data, jacobians, kernels, plane, plotting, spectra
from geometry.kernel_models import parameter_count

MLP_REFERENCE = ClassifierSpec(dataset="spiral", activation="relu")  # d → 32 ×4 → C (2 → 32 ×4 → 2 on 2-D sets)


@dataclasses.dataclass(frozen=True)
class Config:
    datasets: tuple[str, ...] = ("xor", "circles", "spiral", "moons")
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")
    kernels: tuple[str, ...] = ("yat", "rbf")
    kernel_hidden: int = 16
    kernel_blocks: int = 2
    depth_sweep: tuple[int, ...] = (1, 2, 3, 4)
    sweep_units: int = 32
    steps: int = 3000
    grid: int = 120
    pairs: int = 20_000


QUICK = Config(datasets=("xor", "spiral"), activations=("relu",), kernels=("yat",), depth_sweep=(1, 2), steps=300,
               grid=40, pairs=2000)


def matched_units(kernel: str, hidden: int, blocks: int, target: int, in_features: int = 2, classes: int = 2) -> int:
    """Kernel units per block whose KernelMLP parameter count is closest to `target`.

    The count is affine in the number of units, so two models fix it."""
    def count(units):
        return parameter_count(ClassifierSpec(dataset="xor", activation=kernel, model=kernel, units=units, width=hidden,
                                              depth=blocks).build(in_features, classes))

    base, slope = count(1), count(2) - count(1)
    units = max(1, round((target - base) / slope) + 1)
    return min((units - 1, units, units + 1), key=lambda u: abs(count(u) - target) if u >= 1 else np.inf)


def measure(trained, grid_points: np.ndarray, pairs: int, seed: int) -> dict:
    """Geometry of x ↦ F(x) (`model.features`) on a grid of plane coordinates (G², 2) of the data's
    plane (`plane.data_plane`), and collisions among held-out pairs."""
    drawn_on = plane.data_plane(trained.x_train)
    J = jacobians.jacobian_field(drawn_on.restrict(trained.model.features), grid_points)  # (G², hidden, 2)
    stats = {k: np.asarray(v, dtype=np.float64) for k, v in spectra.summary(J).items()}
    rng = np.random.default_rng(seed)
    i, j = rng.integers(len(trained.x_test), size=(2, pairs))
    distinct = np.linalg.norm(trained.x_test[i] - trained.x_test[j], axis=1) > 0
    x, y = trained.x_test[i[distinct]], trained.x_test[j[distinct]]
    fx = np.asarray(jax.vmap(trained.model.features)(jnp.asarray(x)))
    fy = np.asarray(jax.vmap(trained.model.features)(jnp.asarray(y)))
    collided = np.linalg.norm(fx - fy, axis=1) < 1e-6 * np.linalg.norm(x - y, axis=1)
    return {
        "test_accuracy": trained.test_accuracy,
        "train_accuracy": trained.train_accuracy,
        "parameters": parameter_count(trained.model),
        "median_half_log_det_g": float(np.median(stats["log_volume"])),
        "median_sigma_min": float(np.median(stats["sigma_min"])),
        "median_condition_number": float(np.median(stats["condition_number"])),
        "rank_deficient_fraction": float(np.mean(stats["numerical_rank"] < 2)),
        "collision_fraction": float(np.mean(collided)),
    }


def data_shape(datasets) -> tuple[int, int]:
    """(inputs d, classes C) shared by all the datasets; parameter counts are matched for one shape."""
    shapes = {}
    for dataset in datasets:
        x_train, y_train, _, y_test = load_split(ClassifierSpec(dataset=dataset, activation="relu"))
        shapes[display_name(dataset)] = (x_train.shape[1], class_count(y_train, y_test))
    if len(set(shapes.values())) != 1:
        raise ValueError(f"kernel_layers matches parameter counts for one data shape, but the datasets have (inputs, "
                         f"classes) {shapes}; run the differently shaped ones separately")
    return next(iter(shapes.values()))


def run(config: Config, context) -> dict:
    in_features, classes = data_shape(config.datasets)
    target = parameter_count(MLP_REFERENCE.build(in_features, classes))
    units = {k: matched_units(k, config.kernel_hidden, config.kernel_blocks, target, in_features, classes)
             for k in config.kernels}
    paths = by_name(config.datasets)  # a file is keyed by its stem
    specs = {}
    for dataset, path in paths.items():
        for kernel in config.kernels:
            specs[(dataset, kernel)] = ClassifierSpec(dataset=path, activation=kernel, model=kernel, units=units[kernel],
                                                      width=config.kernel_hidden, depth=config.kernel_blocks,
                                                      steps=config.steps, seed=context.seed)
        for activation in config.activations:
            specs[(dataset, activation)] = ClassifierSpec(dataset=path, activation=activation, steps=config.steps,
                                                          seed=context.seed)
    results = {}
    for (dataset, name), spec in context.progress(list(specs.items()), "dataset × model"):
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        grid_points = data.grid(plane.data_plane(trained.x_train).bounds(trained.x_train), config.grid)
        results[f"{dataset}/{name}"] = {"dataset": dataset, "model": name,
                                        **measure(trained, grid_points, config.pairs, context.seed)}

    sweep, sweep_dataset = [], "spiral" if "spiral" in paths else next(iter(paths))
    for blocks in context.progress(config.depth_sweep, "Yat depth sweep"):
        spec = ClassifierSpec(dataset=paths[sweep_dataset], activation="yat", model="yat", units=config.sweep_units,
                              width=config.kernel_hidden, depth=blocks, steps=config.steps, seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        grid_points = data.grid(plane.data_plane(trained.x_train).bounds(trained.x_train), config.grid)
        sweep.append({"blocks": blocks, **measure(trained, grid_points, config.pairs, context.seed)})

    machines = {}
    for dataset in context.progress(list(paths), "shared-kernel machines"):
        spec = ClassifierSpec(dataset=paths[dataset], activation="yat-shared", model="yat", shared=True,
                              units=config.sweep_units, width=config.kernel_hidden, depth=1, steps=config.steps,
                              seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        machines[dataset] = kernel_machine_facts(trained)

    kernel_spiral = {k: results[f"spiral/{k}"]["test_accuracy"] for k in config.kernels if "spiral" in paths}
    return {"matched_units": units, "mlp_parameters": target, "results": results, "yat_depth_sweep": sweep,
            "yat_depth_sweep_dataset": sweep_dataset,
            "kernel_spiral_test_accuracy": kernel_spiral, "shared_kernel_machines": machines}


def kernel_machine_facts(trained) -> dict:
    """Gram PSD check over the learned prototypes and RKHS norms of the readout functions."""
    layer, mixer = trained.model.kernel_layers[0], trained.model.mixers[0]
    prototypes = layer.weight[...]
    b, epsilon = float(layer.bias()[0]), float(layer.epsilon()[0])
    K = kernels.gram(kernels.yat, prototypes, b=b, epsilon=epsilon)  # (units, units)
    eigenvalues = np.linalg.eigvalsh(np.asarray(K, dtype=np.float64))
    alpha = mixer.effective_weight().T  # (units, hidden): f_i = Σ_j alpha[j, i] k(·, w_j) + c_i
    norms = np.asarray(kernels.rkhs_norm(alpha, K))
    return {"test_accuracy": trained.test_accuracy, "b": b, "epsilon": epsilon,
            "gram_relative_min_eigenvalue": float(eigenvalues[0] / np.abs(eigenvalues).max()),
            "gram_is_psd": bool(kernels.is_psd(K)), "rkhs_norm_squared_per_output": norms,
            "rkhs_norm_squared_mean": float(norms.mean())}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    results, sweep, sweep_dataset = numbers["results"], numbers["yat_depth_sweep"], numbers["yat_depth_sweep_dataset"]
    datasets = list(by_name(config.datasets))
    models_order = list(config.kernels) + list(config.activations)
    metrics = [("test_accuracy", "test accuracy", "linear"),
               ("rank_deficient_fraction", "rank-deficient fraction of grid", "symlog"),
               ("median_condition_number", "median cond(J) on grid", "log"),
               ("collision_fraction", "collision fraction (pairs)", "symlog")]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.6))
    width = 0.8 / len(models_order)
    positions = np.arange(len(datasets))
    colours = {"yat": "#000000", "rbf": "#7f7f7f"}
    for ax, (key, title, scale) in zip(axes, metrics):
        for k, name in enumerate(models_order):
            values = [results[f"{d}/{name}"][key] for d in datasets]
            values = [v if np.isfinite(v) else np.nan for v in values]
            ax.bar(positions + k * width, values, width, label=name, color=colours.get(name, plotting.color(name)))
        ax.set_xticks(positions + 0.4 - width / 2, datasets)
        ax.set_yscale(scale, **({"linthresh": 1e-3} if scale == "symlog" else {}))
        ax.set_title(title, fontsize=8)
    axes[0].set_ylim(0.4, 1.02)
    axes[0].legend(fontsize=6)
    ax = axes[-1]
    blocks = [s["blocks"] for s in sweep]
    ax.plot(blocks, [s["test_accuracy"] for s in sweep], "-o", color="k", label="test accuracy")
    ax.plot(blocks, [1 - s["rank_deficient_fraction"] for s in sweep], "--s", color="0.5", label="full-rank fraction")
    ax.set_xlabel(f"stacked Yat blocks ({sweep_dataset})")
    ax.set_xticks(blocks)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=6)
    ax.set_title("depth sweep", fontsize=8)
    fig.tight_layout()
    return {"": fig}
