"""Layer-by-layer similarity (CKA) and representation diversity of trained networks.

Command:  python -m experiments similarity [--quick]
Writes:   figures/similarity.{png,pdf,json}
Runtime:  ~30 s on 2 CPU cores (quick: ~10 s); reuses `linear_collapse`'s spiral networks.

For MLPs 2 → 32 ×4 → 2 trained on the spiral with activation none (identity), tanh and
relu: CKA (`geometry.similarity.cka`; linear and RBF kernels, biased and debiased) between
every pair of representations — input, h_1 … h_4, logits — on held-out points, as
layer × layer heatmaps. In linear collapse every representation is an affine image of the
input, so linear CKA between layers stays high; activations let layers diverge.
Per layer also: feature variance (mean over units of each unit's variance over the data:
activation diversity) and the mean pairwise cosine similarity of hidden states (→ 1 when
all points collapse onto one direction).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments._classifiers import ClassifierSpec, trained_classifier
from geometry import plotting, probe, similarity

VARIANTS = (("linear", False), ("linear", True), ("rbf", False), ("rbf", True))


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("identity", "tanh", "relu")
    width: int = 32
    depth: int = 4
    steps: int = 3000
    points: int = 500


QUICK = Config(steps=300, points=150)


def representations(model, x: np.ndarray) -> list[np.ndarray]:
    hidden = probe.outputs(model, x, "layers/*").values()
    return [x, *[np.asarray(h) for h in hidden], np.asarray(jax.vmap(model)(jnp.asarray(x)))]


def mean_pairwise_cosine(h: np.ndarray) -> float:
    norms = np.linalg.norm(h, axis=1, keepdims=True)
    unit = h / np.where(norms > 0, norms, 1.0)
    cosine = unit @ unit.T
    n = len(h)
    return float((cosine.sum() - np.trace(cosine)) / (n * (n - 1)))


def run(config: Config, context) -> dict:
    results, matrices = {}, {}
    for activation in context.progress(config.activations, "networks"):
        spec = ClassifierSpec(dataset="spiral", activation=activation, width=config.width, depth=config.depth,
                              steps=config.steps, seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        reps = representations(trained.model, trained.x_test[: config.points])
        record = {"test_accuracy": trained.test_accuracy,
                  "feature_variance": [float(np.mean(np.var(h, axis=0))) for h in reps[1:-1]],
                  "mean_pairwise_cosine": [mean_pairwise_cosine(h) for h in reps[1:-1]]}
        for kernel, debiased in VARIANTS:
            key = f"{kernel}{'_debiased' if debiased else ''}"
            matrix = np.array([[similarity.cka(a, b, kernel, debiased) for b in reps] for a in reps])
            matrices[(activation, key)] = matrix
            record[f"cka_{key}"] = matrix
        results[activation] = record

    labels = ["x", *[f"h{l}" for l in range(1, config.depth + 1)], "out"]
    n_rows, n_cols = len(config.activations), len(VARIANTS) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.7 * n_cols, 2.6 * n_rows), squeeze=False)
    for i, activation in enumerate(config.activations):
        for j, (kernel, debiased) in enumerate(VARIANTS):
            key = f"{kernel}{'_debiased' if debiased else ''}"
            ax = axes[i, j]
            image = ax.imshow(matrices[(activation, key)], vmin=0, vmax=1, cmap="magma")
            ax.set_xticks(range(len(labels)), labels, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
            ax.grid(False)
            name = "none" if activation == "identity" else activation
            ax.set_title(f"{name}: {kernel} CKA{' (debiased)' if debiased else ''}", fontsize=7,
                         color=plotting.color(activation))
        fig.colorbar(image, ax=axes[i, len(VARIANTS) - 1], fraction=0.046)
        ax = axes[i, -1]
        layers = np.arange(1, config.depth + 1)
        r = results[activation]
        ax.plot(layers, r["feature_variance"], "-o", ms=3, color=plotting.color(activation), label="feature variance")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
        twin = ax.twinx()
        twin.plot(layers, r["mean_pairwise_cosine"], "--s", ms=3, color="0.3", label="mean pairwise cosine")
        twin.set_ylim(-1, 1)
        ax.set_title("variance (solid), cosine (dashed)", fontsize=7)
    fig.tight_layout()
    context.save_figure(fig)
    adjacent = {a: [float(results[a]["cka_linear"][l, l + 1]) for l in range(1, config.depth)]
                for a in config.activations}
    return {"results": results, "layer_labels": labels, "linear_cka_between_adjacent_hidden_layers": adjacent}
