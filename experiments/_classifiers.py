"""Trained 2-D classifiers shared by the experiments that measure trained geometry.

`trained_classifier(spec, checkpoints)` trains an MLP on one of `geometry.data`'s datasets
with Orbax checkpoints under CHECKPOINTS/classifiers/<key>: an interrupted run resumes, and a
finished one is restored instead of retrained (the checkpoint fingerprint covers the
config, the parameter shapes and the data, so a stale checkpoint is refused, not used).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from geometry import data, models, training


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """An MLP (`activation`, `width`, `depth`) or, with model "yat" or "rbf", a KernelMLP with
    `units` kernel units and a `width`-wide linear map per block, `depth` blocks (`shared`: one
    kernel for all units). For kernel models `activation` is only a label."""

    dataset: str
    activation: str
    width: int = 32
    depth: int = 4
    model: str = "mlp"  # "mlp", "yat" or "rbf"
    shared: bool = False
    units: int = 0
    n_train: int = 1000
    n_test: int = 1000
    noise: float = 0.05
    steps: int = 3000
    learning_rate: float = 3e-3
    seed: int = 0

    @property
    def key(self) -> str:
        kind = self.activation if self.model == "mlp" else f"{self.model}{'-shared' if self.shared else ''}{self.units}"
        return (f"{self.dataset}-{kind}-w{self.width}-d{self.depth}-n{self.n_train}-"
                f"noise{self.noise:g}-steps{self.steps}-lr{self.learning_rate:g}-seed{self.seed}")

    def build(self):
        if self.model == "mlp":
            return models.MLP(2, self.width, depth=self.depth, out_features=2, activation=self.activation,
                              rngs=nnx.Rngs(self.seed))
        return models.KernelMLP(2, self.units, self.width, self.depth, 2, kernel=self.model, shared=self.shared,
                                rngs=nnx.Rngs(self.seed))


@dataclasses.dataclass
class Trained:
    spec: ClassifierSpec
    model: nnx.Module
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_accuracy: float
    test_accuracy: float


def trained_classifier(spec: ClassifierSpec, checkpoints: Path | None, log=None) -> Trained:
    """The trained classifier of `spec`: restored from CHECKPOINTS/classifiers/<key> when finished
    there, resumed when interrupted, trained otherwise (no checkpoints when `checkpoints` is None)."""
    x, y = data.make_dataset(spec.dataset, spec.n_train + spec.n_test, noise=spec.noise, seed=spec.seed)
    x_train, y_train, x_test, y_test = x[: spec.n_train], y[: spec.n_train], x[spec.n_train :], y[spec.n_train :]
    model = spec.build()
    config = training.TrainConfig(steps=spec.steps, learning_rate=spec.learning_rate, checkpoint_every=1000,
                                  log_every=max(1, spec.steps // 4), seed=spec.seed)
    directory = None if checkpoints is None else Path(checkpoints) / "classifiers" / spec.key
    training.train(model, x_train, y_train, config, checkpoint_dir=directory, name=spec.key, log=log)
    return Trained(spec, model, x_train, y_train, x_test, y_test, training.accuracy(model, x_train, y_train),
                   training.accuracy(model, x_test, y_test))
