"""The expressivity–geometry tradeoff: accuracy against the conditioning of trained networks.

Command:  python -m experiments tradeoff [--quick]
Writes:   figures/tradeoff.{png,pdf,json}
Runtime:  ~2 min on 2 CPU cores (quick: ~25 s); trained networks are checkpointed under
          figures/.checkpoints/classifiers and reused by `pullback` and `fidelity`.

For each activation (and LeakyReLU slopes 0.01, 0.1, 0.3) an MLP 2 → k ×4 → 2, k ∈ {4, 32},
is trained on circles and on the two-arm spiral (Adam, full batch). On held-out points of the data
distribution we measure the input → last-hidden-layer Jacobian J (32×2, `jacobian_field`):
its median condition number and the fraction of points where it is rank-deficient
(`numerical_rank` < 2), against test accuracy. The seed article's claim: sharper
activations (φ' closer to {0, 1}) buy selectivity at the price of geometry.

Other data (`--dataset digits`, `--dataset PATH`): the same networks with d inputs and C
outputs; J is k×d and "rank-deficient" means numerical rank < min(k, d), the most J can have.
"""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np

from experiments._classifiers import ClassifierSpec, by_name, trained_classifier
from geometry import jacobians, metric, plotting, spectra

ACTIVATIONS = ("identity", "relu", "leaky_relu", "leaky_relu_0.1", "leaky_relu_0.3", "sigmoid", "tanh", "gelu", "silu",
               "softplus", "elu")


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ACTIVATIONS
    datasets: tuple[str, ...] = ("circles", "spiral")
    widths: tuple[int, ...] = (4, 32)  # narrow layers are where ReLU's dead regions reach rank 2
    depth: int = 4
    steps: int = 3000


QUICK = Config(activations=("identity", "relu", "tanh", "gelu"), widths=(32,), steps=300)


def spec(config: Config, dataset: str, activation: str, width: int, seed: int) -> ClassifierSpec:
    return ClassifierSpec(dataset=dataset, activation=activation, width=width, depth=config.depth,
                          steps=config.steps, seed=seed)


def geometry_on(trained, points: np.ndarray) -> dict:
    """Median condition number and rank-deficient fraction (rank < min(width, d)) of ∂h_L/∂x over points."""
    J = jacobians.jacobian_field(trained.model.features, points)  # (P, width, d)
    stats = spectra.summary(J)
    condition = np.asarray(stats["condition_number"], dtype=np.float64)
    return {
        "median_condition_number": float(np.median(condition)),
        "rank_deficient_fraction": float(np.mean(np.asarray(stats["numerical_rank"]) < min(J.shape[1:]))),
        "median_log_volume": float(np.median(np.asarray(stats["log_volume"], dtype=np.float64))),
        "median_sigma_min": float(np.median(np.asarray(stats["sigma_min"]))),
    }


def run(config: Config, context) -> dict:
    rows = []
    paths = by_name(config.datasets)  # a file is keyed by its stem
    cases = [(d, w, a) for d in paths for w in config.widths for a in config.activations]
    for dataset, width, activation in context.progress(cases, "dataset × width × activation"):
        trained = trained_classifier(spec(config, paths[dataset], activation, width, context.seed),
                                     context.out_dir / ".checkpoints", context.log)
        rows.append({"dataset": dataset, "width": width, "activation": activation,
                     "train_accuracy": trained.train_accuracy,
                     "test_accuracy": trained.test_accuracy, **geometry_on(trained, trained.x_test)})

    def correlation(dataset, width, key):
        chosen = [r for r in rows if r["dataset"] == dataset and r["width"] == width and np.isfinite(r[key])]
        if len(chosen) < 3:
            return None
        return metric.spearman([r[key] for r in chosen], [r["test_accuracy"] for r in chosen])

    return {
        "rows": rows,
        "inputs": int(trained.x_train.shape[1]),
        "classes": trained.classes,
        "spearman_accuracy_vs_condition": {f"{d}/{w}": correlation(d, w, "median_condition_number")
                                           for d in paths for w in config.widths},
        "spearman_accuracy_vs_rank_deficient_fraction": {f"{d}/{w}": correlation(d, w, "rank_deficient_fraction")
                                                         for d in paths for w in config.widths},
    }


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    rows = numbers["rows"]
    d, classes = numbers.get("inputs", 2), numbers.get("classes", 2)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    markers = dict(zip(dict.fromkeys(row["dataset"] for row in rows), "osD^v<>p*h"))
    deficient = "< 2" if d == 2 else "< min(k, d)"
    for ax, key, label in ((axes[0], "median_condition_number", "median condition number of ∂h_L/∂x"),
                           (axes[1], "rank_deficient_fraction", f"fraction of points with rank ∂h_L/∂x {deficient}")):
        for row in rows:
            value = row[key] if np.isfinite(row[key]) else np.nan
            narrow = row["width"] == min(config.widths) and len(config.widths) > 1
            ax.scatter(value, row["test_accuracy"], marker=markers[row["dataset"]], s=30, linewidths=0.8,
                       facecolors="none" if narrow else plotting.color(row["activation"]),
                       edgecolors=plotting.color(row["activation"]) if narrow else "k")
            ax.annotate(row["activation"].replace("leaky_relu", "lrelu"), (value, row["test_accuracy"]), fontsize=5.5,
                        xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
    axes[0].set_xscale("log")
    axes[1].set_xscale("symlog", linthresh=1e-3)
    for dataset, marker in markers.items():
        axes[0].scatter([], [], marker=marker, color="0.5", label=dataset)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"trained MLPs {d}→k×{config.depth}→{classes}, k ∈ {list(config.widths)} (open markers: k = "
                 f"{min(config.widths)}), {config.steps} Adam steps; geometry on held-out points", fontsize=9)
    fig.tight_layout()
    return {"": fig}
