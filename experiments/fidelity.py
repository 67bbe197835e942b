"""Does the representation keep the data's geometry? kNN agreement and distance rank correlation.

Command:  python -m experiments fidelity [--quick]
Writes:   figures/fidelity.{png,pdf,json}
Runtime:  ~40 s on 2 CPU cores (quick: ~15 s); reuses the spiral networks of `tradeoff`.

Downstream uses of a representation — cosine similarity, k-nearest neighbours,
clustering — assume it carries the input's geometry. For held-out spiral points and each
hidden layer l we compare input space with h_l:
* kNN agreement: mean fraction of each point's k = 10 nearest input-space neighbours that
  are still among its 10 nearest in h_l (`metric.knn_agreement`; chance ≈ k/N);
* Spearman ρ between all pairwise input distances and the same pairs' distances in h_l
  (`metric.distance_rank_correlation`).
Networks: random (He init, untrained) and trained on the spiral, width 32 and 4, depth 4.
Other data: `--dataset digits` or `--dataset PATH` trains them on those data (d inputs, C
classes) and compares input space (d-dimensional) with each h_l the same way.
"""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np

from experiments._classifiers import ClassifierSpec, trained_classifier
from geometry import metric, plotting, probe


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softplus")
    widths: tuple[int, ...] = (32, 4)
    depth: int = 4
    steps: int = 3000
    points: int = 500
    k: int = 10
    dataset: str = "spiral"  # a 2-D dataset, "digits" or a CSV/NPZ path (`experiments._classifiers`)


QUICK = Config(activations=("identity", "relu", "tanh"), widths=(32,), steps=300, points=200)


def layer_scores(model, x: np.ndarray, k: int) -> dict:
    hidden = probe.outputs(model, x, "layers/*").values()
    return {
        "knn_agreement": [metric.knn_agreement(x, h, k) for h in hidden],
        "distance_spearman": [metric.distance_rank_correlation(x, h) for h in hidden],
    }


def run(config: Config, context) -> dict:
    results = {}
    cases = [(w, a) for w in config.widths for a in config.activations]
    for width, activation in context.progress(cases, "width × activation"):
        spec = ClassifierSpec(dataset=config.dataset, activation=activation, width=width, depth=config.depth,
                              steps=config.steps, seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        x = trained.x_test[: config.points]
        # the trained network's own initialisation
        random_model = spec.build(x.shape[1], trained.classes)
        results[f"{activation}/{width}"] = {
            "activation": activation, "width": width, "test_accuracy": trained.test_accuracy,
            "trained": layer_scores(trained.model, x, config.k), "random": layer_scores(random_model, x, config.k),
        }

    last = {key: {state: {s: r[state][s][-1] for s in ("knn_agreement", "distance_spearman")}
                  for state in ("random", "trained")} for key, r in results.items()}
    return {"results": results, "last_layer": last, "k": config.k, "points": config.points,
            "knn_chance_level": config.k / (config.points - 1)}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    results = numbers["results"]
    layers = np.arange(1, config.depth + 1)
    fig, axes = plt.subplots(len(config.widths), 4, figsize=(14, 3.3 * len(config.widths)), squeeze=False)
    for row, width in enumerate(config.widths):
        for col, (state, score, label) in enumerate([("random", "knn_agreement", f"{config.k}-NN agreement"),
                                                     ("trained", "knn_agreement", f"{config.k}-NN agreement"),
                                                     ("random", "distance_spearman", "Spearman ρ of distances"),
                                                     ("trained", "distance_spearman", "Spearman ρ of distances")]):
            ax = axes[row, col]
            for activation in config.activations:
                ax.plot(layers, results[f"{activation}/{width}"][state][score], "-o", ms=3,
                        color=plotting.color(activation), label=activation)
            ax.set_title(f"{label}, {state}, width {width}", fontsize=8)
            ax.set_xlabel("layer l")
            ax.set_xticks(layers)
            ax.set_ylim(0, 1.02)
        axes[row, 0].axhline(config.k / (config.points - 1), color="0.5", ls=":", lw=0.8)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return {"": fig}
