"""Failure types and their severity, measured on every trained run of `linear_collapse`.

Command:  python -m experiments failure_table [--quick]
Writes:   figures/failure_table.{png,pdf,json}
Runtime:  ~30 s on 2 CPU cores (quick: ~15 s); reuses `linear_collapse`'s networks.

Each failure type has one detecting metric, measured on the training data, and two
thresholds (mild, severe), stated with their reasons in FAILURES below and in the JSON.
The runs are the MLPs 2 → 32 ×4 → 2 of `linear_collapse` (datasets × activations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments import linear_collapse
from experiments._classifiers import ClassifierSpec, by_name, trained_classifier
from experiments.similarity import mean_pairwise_cosine
from geometry import jacobians, probe, spectra

LOW_DERIVATIVE = 0.05

# name: (metric, direction, mild, severe, why). direction +1: larger is worse.
FAILURES = {
    "linear collapse": ("R² of the best affine fit to the logits", +1, 0.95, 0.99,
                        "R² ≥ 0.99: under 1% of the output variance is nonlinear, the stack acts as one matrix; "
                        "≥ 0.95: the nonlinear part is a small correction"),
    "rank collapse": ("fraction of points with rank ∂h_L/∂x < min(n₀, width)", +1, 0.01, 0.25,
                      "any measurable fraction erases input directions on a region (≥ 1%); "
                      "≥ 25%: a quarter of the data loses a direction for good"),
    "dead units": ("fraction of hidden units with |φ'| < 0.05 on every point", +1, 0.10, 0.50,
                   "≥ 10% of units carry no gradient anywhere; ≥ 50%: most of the width is wasted"),
    "saturation": ("fraction of (unit, point) with |φ'| < 0.05, among units not dead", +1, 0.20, 0.50,
                   "≥ 20%: D_φ shrinks one row in five of J; ≥ 50%: most of J's rows are damped"),
    "representation collapse": ("mean pairwise cosine of last hidden states", +1, 0.50, 0.90,
                                "≥ 0.5: hidden states share one dominant direction; ≥ 0.9: they nearly align, "
                                "so cosine-based comparisons see one point"),
}
SEVERITY = ("none", "mild", "severe")


# the same runs as linear_collapse, by construction: the table measures those networks
Config = linear_collapse.Config
QUICK = linear_collapse.QUICK


def severity(name: str, value: float) -> str:
    _, direction, mild, severe, _ = FAILURES[name]
    value = direction * value
    return "severe" if value >= direction * severe else "mild" if value >= direction * mild else "none"


def affine_r2(x: np.ndarray, outputs: np.ndarray) -> float:
    """Fraction of the outputs' variance explained by an affine function of x (least squares)."""
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
    outputs = outputs.astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(design, outputs, rcond=None)
    residual = outputs - design @ coefficients
    return float(1.0 - np.sum(residual**2) / np.sum((outputs - outputs.mean(axis=0)) ** 2))


def measure(trained) -> dict:
    model, x = trained.model, trained.x_train
    preactivations = probe.inputs(model, x, "layers/*/activation").values()  # L arrays (N, k)
    low = np.concatenate([np.abs(np.asarray(model.activation.derivative(a))) < LOW_DERIVATIVE
                          for a in preactivations], axis=1)  # (N, total hidden units)
    dead = low.all(axis=0)
    J = jacobians.jacobian_field(model.features, x)
    last_hidden = probe.outputs(model, x, f"layers/{model.depth - 1}")[f"layers/{model.depth - 1}"]
    return {
        "linear collapse": affine_r2(x, np.asarray(jax.vmap(model)(jnp.asarray(x)))),
        "rank collapse": float(np.mean(np.asarray(spectra.numerical_rank(J)) < min(J.shape[1:]))),
        "dead units": float(dead.mean()),
        "saturation": float(low[:, ~dead].mean()) if (~dead).any() else 1.0,
        "representation collapse": mean_pairwise_cosine(np.asarray(last_hidden)),
    }


def run(config: Config, context) -> dict:
    runs = []
    paths = by_name(config.datasets)  # a file is keyed by its stem
    cases = [(d, a) for d in paths for a in config.activations]
    for dataset, activation in context.progress(cases, "runs"):
        spec = ClassifierSpec(dataset=paths[dataset], activation=activation, width=config.width, depth=config.depth,
                              steps=config.steps, seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        values = measure(trained)
        runs.append({"dataset": dataset, "activation": "none" if activation == "identity" else activation,
                     "train_accuracy": trained.train_accuracy, "values": values,
                     "severity": {name: severity(name, v) for name, v in values.items()}})

    thresholds = {name: {"metric": metric, "mild": mild, "severe": severe, "why": why}
                  for name, (metric, _, mild, severe, why) in FAILURES.items()}
    counts = {name: {s: sum(r["severity"][name] == s for r in runs) for s in SEVERITY} for name in FAILURES}
    return {"thresholds": thresholds, "runs": runs, "severity_counts": counts}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    runs = numbers["runs"]
    columns = ["run", "train acc"] + list(FAILURES)
    cells, colours = [], []
    palette = {"none": "#e8f5e9", "mild": "#fff3cd", "severe": "#f8d7da"}
    for r in runs:
        cells.append([f"{r['dataset']}/{r['activation']}", f"{r['train_accuracy']:.3f}"]
                     + [f"{r['values'][n]:.3f} {r['severity'][n]}" for n in FAILURES])
        colours.append(["white", "white"] + [palette[r["severity"][n]] for n in FAILURES])
    legend = [f"{name}: {metric}; mild ≥ {mild:g}, severe ≥ {severe:g}"
              for name, (metric, _, mild, severe, _) in FAILURES.items()]
    fig, ax = plt.subplots(figsize=(13, 0.3 * len(runs) + 1.3))
    ax.set_axis_off()
    table = ax.table(cellText=cells, cellColours=colours, colLabels=columns, loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1.0, 1.25)
    ax.text(0.0, 0.0, "\n".join(legend), transform=ax.transAxes, fontsize=7, va="top")
    fig.tight_layout()
    return {"": fig}
