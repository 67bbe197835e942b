"""The training objective of a playground config, and the weight matrices it regularises.

`Objective(problem, regularization)` is the `loss_fn(model, (x, y, rate))` that
`geometry.training.train_step` takes: a frozen dataclass, so one compiled step serves every run
with the same problem and regularisation kind, the rate travelling in the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry import training


@dataclasses.dataclass(frozen=True)
class Objective:
    """The training loss of a config, a `loss_fn(model, (x, y, rate))` for `training.train_step`:
    mean cross-entropy (classification) or mean squared error (regression), plus rate · Σ|w| (L1)
    or rate · ½ Σ w² (L2) over every layer's weight matrix (biases and kernel centres are not
    penalised, as in TensorFlow Playground). The rate travels in the batch, so changing it
    recompiles nothing."""

    problem: str
    regularization: str

    def __call__(self, model, batch):
        x, y, rate = batch
        outputs = jax.vmap(model)(x)
        if self.problem == "regression":
            loss = jnp.mean((outputs[:, 0] - y) ** 2)
        else:
            loss = training.cross_entropy(outputs, y)
        if self.regularization == "none":
            return loss
        weights = weight_matrices(model)
        penalty = sum(jnp.sum(jnp.abs(w)) if self.regularization == "l1" else 0.5 * jnp.sum(w**2) for w in weights)
        return loss + rate * penalty


def weight_matrices(model) -> list:
    """Every Dense layer's weight (the `weight` parameters), readout included."""
    return [leaf.get_value() if hasattr(leaf, "get_value") else leaf.value
            for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)) if path[-1] == "weight"]


def weight_norm(model) -> float:
    """‖W‖: the Frobenius norm of all weight matrices together."""
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(w, np.float64))) for w in weight_matrices(model))))
