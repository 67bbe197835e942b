"""Linear collapse: without activations a deep MLP is one matrix and cannot fit curved classes.

Command:  python -m experiments linear_collapse [--quick]
Writes:   figures/linear_collapse.{png,pdf,json}
Runtime:  ~2 min on 2 CPU cores (quick: ~25 s); networks are checkpointed (resumable).

MLPs 2 → 32 ×4 → 2 with activation none (identity), relu, tanh, sigmoid, gelu, silu, trained
on the linear, circles, xor and spiral datasets. Shown: decision boundaries over the data,
train accuracy, and the best accuracy any straight line achieves on the same data (exact up
to a 1/7200-turn angle grid, plus the direction the `none` network itself learned).

For `none` the network is the affine map x ↦ W_total x + b_total with
W_total = W_out W_4 ⋯ W_1 (2×2): its numerical and effective rank, and the numerical proof
max |network(x) − (W_total x + b_total)| over the data. For the others, the numerical and
effective rank of the end-to-end Jacobian ∂logits/∂x (2×2), median over the data.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments._classifiers import ClassifierSpec, trained_classifier
from geometry import data, jacobians, plotting, spectra

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
    w_total, b_total = jnp.eye(2), jnp.zeros(2)
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
    cases = [(d, a) for d in config.datasets for a in config.activations]
    for dataset, activation in context.progress(cases, "dataset × activation"):
        spec = ClassifierSpec(dataset=dataset, activation=activation, width=config.width, depth=config.depth,
                              steps=config.steps, seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        x, y = trained.x_train, trained.y_train
        J = jacobians.jacobian_field(trained.model, x)  # (N, 2, 2): ∂logits/∂x
        stats = spectra.summary(J)
        record = {"train_accuracy": trained.train_accuracy, "test_accuracy": trained.test_accuracy,
                  "jacobian_median_numerical_rank": float(np.median(np.asarray(stats["numerical_rank"]))),
                  "jacobian_median_effective_rank": float(np.median(np.asarray(stats["effective_rank"])))}
        if activation == "identity":
            record["collapse"] = affine_collapse(trained.model, x)
        bounds = data.bounds_of(x)
        grid = data.grid(bounds, config.grid)
        logits = np.asarray(jax.vmap(trained.model)(jnp.asarray(grid)))
        boundaries[(dataset, activation)] = (bounds, (logits[:, 1] - logits[:, 0]).reshape(config.grid, config.grid), x, y)
        results[f"{dataset}/{activation}"] = record

    linear_best = {}
    for dataset in config.datasets:
        x, y = boundaries[(dataset, config.activations[0])][2:]
        extra = [results[f"{dataset}/identity"]["collapse"]["direction"]] if "identity" in config.activations else []
        linear_best[dataset] = best_linear_accuracy(x, y, config.angles, extra)
        if "identity" in config.activations:
            record = results[f"{dataset}/identity"]
            record["best_linear_accuracy"] = linear_best[dataset]
            record["none_not_better_than_best_line"] = record["train_accuracy"] <= linear_best[dataset] + 1e-9

    _plot(config, context, results, boundaries, linear_best)
    summary = {}
    if "identity" in config.activations:
        summary["max_rank_W_total"] = max(results[f"{d}/identity"]["collapse"]["numerical_rank"] for d in config.datasets)
        summary["none_never_beats_a_line"] = all(results[f"{d}/identity"]["none_not_better_than_best_line"]
                                                 for d in config.datasets)
        summary["max_abs_difference_stack_vs_single_matrix"] = max(
            results[f"{d}/identity"]["collapse"]["max_abs_difference_stack_vs_single_matrix"] for d in config.datasets)
    if "spiral" in config.datasets:
        summary["spiral_train_accuracy"] = {a: results[f"spiral/{a}"]["train_accuracy"] for a in config.activations}
    for r in results.values():
        r.get("collapse", {}).pop("direction", None)
    return {"results": results, "best_linear_accuracy": linear_best, "summary": summary}


def _plot(config, context, results, boundaries, linear_best) -> None:
    rows, cols = len(config.datasets), len(config.activations)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for i, dataset in enumerate(config.datasets):
        for j, activation in enumerate(config.activations):
            ax = axes[i, j]
            bounds, decision, x, y = boundaries[(dataset, activation)]
            ax.imshow(decision > 0, origin="lower", extent=bounds, cmap="coolwarm", alpha=0.25, interpolation="nearest")
            ax.contour(np.linspace(*bounds[:2], config.grid), np.linspace(*bounds[2:], config.grid), decision,
                       levels=[0.0], colors="k", linewidths=0.8)
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=1.5, lw=0)
            r = results[f"{dataset}/{activation}"]
            label = "none" if activation == "identity" else activation
            title = f"{label}: acc {r['train_accuracy']:.3f}"
            if activation == "identity":
                title += f"\nbest line {linear_best[dataset]:.3f}, rank W_tot {r['collapse']['numerical_rank']}"
            ax.set_title(title, fontsize=7, color=plotting.color(activation))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(dataset)
    fig.tight_layout()
    context.save_figure(fig)
