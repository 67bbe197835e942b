"""Layer-by-layer similarity (CKA) and representation diversity of trained networks.

Command:  python -m experiments similarity [--quick]
Writes:   figures/similarity.{png,pdf,json}
Runtime:  ~30 s on 2 CPU cores (quick: ~10 s); reuses `linear_collapse`'s spiral networks.

For MLPs 2 → 32 ×4 → 2 trained on the spiral with activation none (identity), tanh and
relu: CKA (`geometry.similarity.cka`; linear and RBF kernels, biased and debiased) between
every pair of representations — input, h_1 … h_4, logits — on held-out points, as
layer × layer heatmaps. In linear collapse every representation is an affine image of the
input, so linear CKA between layers stays high; activations let layers diverge.
Calibration: for linear CKA (biased and debiased) every pair of distinct representations
gets a seeded permutation test (`geometry.similarity.cka_permutation_test`: CKA with the
pairing of examples shuffled); cells whose p-value is ≥ `alpha` — similarity no larger than
chance pairings give — are crossed out in the heatmaps and listed in the JSON.
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
    permutations: int = 200  # per permutation test: p-values resolve down to 1/201
    alpha: float = 0.05


QUICK = Config(steps=300, points=150, permutations=50)
TESTED = ("linear", "linear_debiased")  # the variants that get permutation p-values


def representations(model, x: np.ndarray, layers="layers/*") -> list[np.ndarray]:
    """[x, each selected layer's output, the model's output] at the points x."""
    hidden = probe.outputs(model, x, layers).values()
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
            matrix = similarity.cka_matrix(reps, kernel, debiased)
            matrices[(activation, key)] = matrix
            record[f"cka_{key}"] = matrix
            if key in TESTED:
                p_values = np.full(matrix.shape, np.nan)  # diagonal: a representation with itself, untested
                for i in range(len(reps)):
                    for j in range(i + 1, len(reps)):
                        test = similarity.cka_permutation_test(reps[i], reps[j], kernel, debiased,
                                                               permutations=config.permutations, seed=context.seed)
                        p_values[i, j] = p_values[j, i] = test["p_value"]
                matrices[(activation, key, "p")] = p_values
                record[f"cka_{key}_p_values"] = [[None if np.isnan(p) else float(p) for p in row] for row in p_values]
        results[activation] = record

    labels = ["x", *[f"h{l}" for l in range(1, config.depth + 1)], "out"]
    adjacent = {a: [float(results[a]["cka_linear"][l, l + 1]) for l in range(1, config.depth)]
                for a in config.activations}
    not_significant = {f"{a}/{key}": [[labels[i], labels[j]] for i, j in zip(*np.triu_indices(len(labels), 1))
                                      if matrices[(a, key, "p")][i, j] >= config.alpha]
                       for a in config.activations for key in TESTED}
    return {"results": results, "layer_labels": labels, "linear_cka_between_adjacent_hidden_layers": adjacent,
            "permutation_test": {"permutations": config.permutations, "alpha": config.alpha, "seed": context.seed,
                                 "tested": list(TESTED), "pairs_not_significant": not_significant}}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    results, labels = numbers["results"], numbers["layer_labels"]
    matrices = {}
    for activation in config.activations:
        for kernel, debiased in VARIANTS:
            key = f"{kernel}{'_debiased' if debiased else ''}"
            matrices[(activation, key)] = np.array(results[activation][f"cka_{key}"], dtype=float)
            if key in TESTED:
                matrices[(activation, key, "p")] = np.array([[np.nan if p is None else p for p in row] for row in
                                                             results[activation][f"cka_{key}_p_values"]], dtype=float)
    n_rows, n_cols = len(config.activations), len(VARIANTS) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.7 * n_cols, 2.6 * n_rows), squeeze=False)
    for i, activation in enumerate(config.activations):
        for j, (kernel, debiased) in enumerate(VARIANTS):
            key = f"{kernel}{'_debiased' if debiased else ''}"
            ax = axes[i, j]
            image = ax.imshow(matrices[(activation, key)], vmin=0, vmax=1, cmap="magma")
            if key in TESTED:
                for r, c in np.argwhere(matrices[(activation, key, "p")] >= config.alpha):
                    ax.text(c, r, "×", ha="center", va="center", color="0.6", fontsize=8)
            ax.set_xticks(range(len(labels)), labels, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
            ax.grid(False)
            name = "none" if activation == "identity" else activation
            tested = f", × p ≥ {config.alpha}" if key in TESTED else ""
            ax.set_title(f"{name}: {kernel} CKA{' (debiased)' if debiased else ''}{tested}", fontsize=7,
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
    return {"": fig}
