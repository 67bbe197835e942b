"""Linear collapse: without activations a deep MLP is one matrix and cannot fit curved classes.

Command:  python -m experiments linear_collapse [--quick]
Writes:   figures/linear_collapse.{png,pdf,json,npz}
Runtime:  ~2 min on 2 CPU cores (quick: ~25 s); networks are checkpointed (resumable).

MLPs 2 → 32 ×4 → 2 with activation none (identity), relu, tanh, sigmoid, gelu, silu, trained
on the linear, circles, xor and spiral datasets. Shown: decision boundaries over the data,
train accuracy, and the best accuracy any straight line achieves on the same data (exact up
to a 1/7200-turn angle grid, plus the direction the `none` network itself learned).

For `none` the network is the affine map x ↦ W_total x + b_total with
W_total = W_out W_4 ⋯ W_1 (2×2): its numerical and effective rank, and the numerical proof
max |network(x) − (W_total x + b_total)| over the data. For the others, the numerical and
effective rank of the end-to-end Jacobian ∂logits/∂x (2×2), median over the data.

Other data: `--dataset digits` or `--dataset PATH` (a CSV or NPZ, `experiments._classifiers`)
runs the same analysis on d-dimensional, C-class data: W_total is C×d, the Jacobian C×d, and
the decision regions are drawn on the plane of the data's first two principal components
(`geometry.plane`; the points shown are the data projected onto it, so a point may sit in a
region its own prediction disagrees with). The best straight line is exact only for 2-D,
two-class data; elsewhere `best_linear_accuracy` is null, and `none` is still shown to be one
affine classifier.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments._classifiers import (
    ClassifierSpec,
    by_name,
    class_colours,
    decision_to_keep,
    decision_values,
    draw_decision,
    trained_classifier,
)
from geometry import jacobians, plane, plotting, spectra

ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid", "gelu", "silu")  # identity is "none"


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ACTIVATIONS
    datasets: tuple[str, ...] = ("linear", "circles", "xor", "spiral")
    width: int = 32
    depth: int = 4
    steps: int = 3000
    angles: int = 3600  # directions over a half turn for the best straight-line classifier
    grid: int = 150


QUICK = Config(activations=("identity", "relu", "tanh"), datasets=("circles", "spiral"), steps=300, angles=720, grid=60)


def best_linear_accuracy(x: np.ndarray, y: np.ndarray, angles: int, extra_directions=()) -> float:
    """max over lines of the training accuracy of the half-plane rule (either orientation).

    For each direction u, projections are sorted and every threshold between consecutive
    values is tried at once with cumulative counts.
    """
    theta = np.linspace(0.0, np.pi, angles, endpoint=False)
    directions = np.concatenate([np.stack([np.cos(theta), np.sin(theta)], 1), np.asarray(extra_directions).reshape(-1, 2)])
    n, positives = len(y), int(y.sum())
    best = 0.0
    for u in directions:
        order = np.argsort(x @ u, kind="stable")
        ones_below = np.concatenate([[0], np.cumsum(y[order])])  # class-1 count among the lowest j points
        below = np.arange(n + 1)
        # rule "class 1 above the threshold": correct = (below − ones_below) + (positives − ones_below)
        correct = below - 2 * ones_below + positives
        best = max(best, float(max(correct.max(), n - correct.min())) / n)
    return best


def affine_collapse(model, x: np.ndarray) -> dict:
    """W_total, b_total of an identity-activation MLP and how exactly the stack equals them."""
    weights = [layer.dense.effective_weight() for layer in model.layers] + [model.readout.effective_weight()]
    biases = [layer.dense.bias[...] for layer in model.layers] + [model.readout.bias[...]]
    w_total, b_total = jnp.eye(x.shape[1]), jnp.zeros(x.shape[1])
    for w, b in zip(weights, biases):
        w_total, b_total = w @ w_total, w @ b_total + b
    stacked = jax.vmap(model)(jnp.asarray(x))
    collapsed = jnp.asarray(x) @ w_total.T + b_total[None, :]
    return {
        "W_total": np.asarray(w_total),
        "numerical_rank": int(spectra.numerical_rank(w_total)),
        "effective_rank": float(spectra.effective_rank(w_total)),
        "singular_values": np.asarray(spectra.singular_values(w_total)),
        "max_abs_difference_stack_vs_single_matrix": float(jnp.max(jnp.abs(stacked - collapsed))),
        "max_abs_output": float(jnp.max(jnp.abs(stacked))),
        "direction": np.asarray(w_total[1] - w_total[0]),  # the boundary's normal: logit difference
    }


def run(config: Config, context) -> dict:
    results, boundaries = {}, {}
    paths = by_name(config.datasets)  # a file is keyed by its stem
    cases = [(d, a) for d in paths for a in config.activations]
    for dataset, activation in context.progress(cases, "dataset × activation"):
        spec = ClassifierSpec(dataset=paths[dataset], activation=activation, width=config.width, depth=config.depth,
                              steps=config.steps, seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        x, y = trained.x_train, trained.y_train
        J = jacobians.jacobian_field(trained.model, x)  # (N, C, d): ∂logits/∂x
        stats = spectra.summary(J)
        record = {"train_accuracy": trained.train_accuracy, "test_accuracy": trained.test_accuracy,
                  "jacobian_median_numerical_rank": float(np.median(np.asarray(stats["numerical_rank"]))),
                  "jacobian_median_effective_rank": float(np.median(np.asarray(stats["effective_rank"])))}
        if activation == "identity":
            record["collapse"] = affine_collapse(trained.model, x)
        drawn_on = plane.data_plane(x)
        bounds = drawn_on.bounds(x)
        decision = decision_values(trained.model, drawn_on.grid(bounds, config.grid))
        boundaries[(dataset, activation)] = (bounds, decision, x, y, drawn_on)
        context.save_arrays(**{f"decision {dataset} {activation}": decision_to_keep(decision, config.grid,
                                                                                     int(y.max()) + 1)})
        if activation == config.activations[0]:  # the same data and plane for every activation
            context.save_arrays(**{f"points {dataset}": drawn_on.coordinates(x), f"labels {dataset}": y,
                                   f"bounds {dataset}": np.asarray(bounds),
                                   f"input plane {dataset}": np.asarray(drawn_on.is_input_plane)})
        results[f"{dataset}/{activation}"] = record

    linear_best = {}
    for dataset in paths:
        x, y = boundaries[(dataset, config.activations[0])][2:4]
        if x.shape[1] != 2 or y.max() > 1:
            linear_best[dataset] = None  # the angle sweep is exact only for 2-D, two-class data
            continue
        extra = [results[f"{dataset}/identity"]["collapse"]["direction"]] if "identity" in config.activations else []
        linear_best[dataset] = best_linear_accuracy(x, y, config.angles, extra)
        if "identity" in config.activations:
            record = results[f"{dataset}/identity"]
            record["best_linear_accuracy"] = linear_best[dataset]
            record["none_not_better_than_best_line"] = record["train_accuracy"] <= linear_best[dataset] + 1e-9

    summary = {}
    if "identity" in config.activations:
        summary["max_rank_W_total"] = max(results[f"{d}/identity"]["collapse"]["numerical_rank"] for d in paths)
        lined = [d for d in paths if linear_best[d] is not None]  # null when no dataset has an exact best line
        summary["none_never_beats_a_line"] = all(results[f"{d}/identity"]["none_not_better_than_best_line"]
                                                 for d in lined) if lined else None
        summary["max_abs_difference_stack_vs_single_matrix"] = max(
            results[f"{d}/identity"]["collapse"]["max_abs_difference_stack_vs_single_matrix"] for d in paths)
    if "spiral" in paths:
        summary["spiral_train_accuracy"] = {a: results[f"spiral/{a}"]["train_accuracy"] for a in config.activations}
    for r in results.values():
        r.get("collapse", {}).pop("direction", None)
    return {"results": results, "best_linear_accuracy": linear_best, "summary": summary}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    """Decision regions (linear_collapse.npz: the maps as `decision_to_keep` stores them) over the data,
    with the numbers from the JSON."""
    results, linear_best = numbers["results"], numbers["best_linear_accuracy"]
    datasets = list(by_name(config.datasets))
    rows, cols = len(datasets), len(config.activations)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for i, dataset in enumerate(datasets):
        shown, y = arrays[f"points {dataset}"], arrays[f"labels {dataset}"]
        bounds = tuple(float(b) for b in arrays[f"bounds {dataset}"])
        classes = int(y.max()) + 1
        for j, activation in enumerate(config.activations):
            ax = axes[i, j]
            decision = arrays[f"decision {dataset} {activation}"].astype(np.float32)  # exact where it matters
            draw_decision(ax, decision, bounds, config.grid, classes)
            ax.scatter(shown[:, 0], shown[:, 1], c=y, s=1.5, lw=0, **class_colours(classes))
            r = results[f"{dataset}/{activation}"]
            label = "none" if activation == "identity" else activation
            title = f"{label}: acc {r['train_accuracy']:.3f}"
            if activation == "identity":
                line = "" if linear_best[dataset] is None else f"best line {linear_best[dataset]:.3f}, "
                title += f"\n{line}rank W_tot {r['collapse']['numerical_rank']}"
            ax.set_title(title, fontsize=7, color=plotting.color(activation))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(dataset if bool(arrays[f"input plane {dataset}"]) else f"{dataset}: PC1–PC2 plane")
    fig.tight_layout()
    return {"": fig}
