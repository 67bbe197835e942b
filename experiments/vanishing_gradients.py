"""Per-layer gradient norms of 20-layer networks, at initialisation and during training.

Command:  python -m experiments vanishing_gradients [--quick]
Writes:   figures/vanishing_gradients.{png,pdf,json}
Runtime:  ~1 min on 2 CPU cores (quick: ~15 s).

MLPs 2 → 32 ×20 → 2 (He initialisation, zero biases) with sigmoid, tanh, relu, gelu and
silu are trained full-batch with Adam on the spiral. At chosen steps (0 = initialisation)
the gradient of the cross-entropy with respect to each hidden layer's weight matrix is
taken on the whole training set, and ‖∂L/∂W_l‖_F is plotted against l. The backward pass
multiplies by D_φ(a_l) W_lᵀ at every layer, so where φ' is small (sigmoid: φ' ≤ ¼ everywhere)
the norms shrink geometrically toward the input; the JSON reports the ratio between
the last and the first layer. Snapshots come from one run, advanced by resuming its
checkpoint with more steps.
"""

from __future__ import annotations

import dataclasses
import shutil

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from geometry import data, models, plotting, training


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("sigmoid", "tanh", "relu", "gelu", "silu")
    width: int = 32
    depth: int = 20
    snapshots: tuple[int, ...] = (0, 100, 1000, 3000)
    learning_rate: float = 1e-3
    n_train: int = 1000


QUICK = Config(activations=("sigmoid", "relu"), depth=8, snapshots=(0, 50), n_train=300)


def layer_gradient_norms(model, x: np.ndarray, y: np.ndarray) -> list[float]:
    """‖∂L/∂W_l‖_F for each hidden layer l, L the mean cross-entropy over (x, y)."""
    grads = nnx.grad(training.cross_entropy_loss)(model, (jnp.asarray(x), jnp.asarray(y)))  # an nnx.State
    return [float(jnp.linalg.norm(grads["layers"][l]["dense"]["weight"][...])) for l in range(model.depth)]


def run(config: Config, context) -> dict:
    x, y = data.make_dataset("spiral", config.n_train, noise=0.05, seed=context.seed)
    results = {}
    for activation in context.progress(config.activations, "activations"):
        directory = context.out_dir / ".checkpoints" / context.name / f"{activation}-d{config.depth}-seed{context.seed}"
        # frames advance one run by extending its checkpoint; a finished run's checkpoint is past
        # frame 0, so each invocation starts the run afresh (its checkpoints only chain the frames)
        shutil.rmtree(directory, ignore_errors=True)
        snapshots = {}
        for step in config.snapshots:
            model = models.MLP(2, config.width, depth=config.depth, out_features=2, activation=activation,
                               rngs=nnx.Rngs(context.seed))
            train_config = training.TrainConfig(steps=step, learning_rate=config.learning_rate,
                                                checkpoint_every=max(step, 1), log_every=max(step // 4, 1),
                                                seed=context.seed)
            training.train(model, x, y, train_config, checkpoint_dir=directory, name=f"{context.name}: {activation}",
                           log=context.log)
            norms = layer_gradient_norms(model, x, y)
            snapshots[str(step)] = {"gradient_norms": norms, "train_accuracy": training.accuracy(model, x, y),
                                    "first_over_last": norms[0] / norms[-1] if norms[-1] > 0 else float("inf")}
        results[activation] = snapshots

    return {"results": results, "depth": config.depth,
            "first_over_last_at_init": {a: results[a]["0"]["first_over_last"] for a in config.activations}}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    results = numbers["results"]
    fig, axes = plt.subplots(1, len(config.snapshots), figsize=(3.6 * len(config.snapshots), 3.4), sharey=True,
                             squeeze=False)
    layers = np.arange(1, config.depth + 1)
    for ax, step in zip(axes[0], config.snapshots):
        for activation in config.activations:
            s = results[activation][str(step)]
            norms = np.maximum(np.asarray(s["gradient_norms"]), 1e-30)
            ax.plot(layers, norms, "-o", ms=2.5, color=plotting.color(activation),
                    label=f"{activation} (acc {s['train_accuracy']:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("layer l (1 = next to the input)")
        ax.set_title("at initialisation" if step == 0 else f"after {step} steps", fontsize=8)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("‖∂L/∂W_l‖_F")
    fig.tight_layout()
    return {"": fig}
