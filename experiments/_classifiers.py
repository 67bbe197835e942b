"""Trained classifiers shared by the experiments that measure trained geometry.

`trained_classifier(spec, checkpoints)` trains an MLP (or a KernelMLP) with Orbax checkpoints
under CHECKPOINTS/classifiers/<key>: an interrupted run resumes, and a finished one is
restored instead of retrained (the checkpoint fingerprint covers the config, the parameter
shapes and the data, so a stale checkpoint is refused, not used).

`spec.dataset` is one of `geometry.data`'s 2-D datasets (generated: `n_train` + `n_test`
points with `noise`), "digits" (`data.load_digits`) or the path of a user's CSV/NPZ file
(`data.load_dataset`). Real data are split 80/20 per class (`data.stratified_split`, seeded)
and standardised with the training split's per-feature mean and standard deviation (features
constant on the training split are only centred); an NPZ's image-shaped x is flattened, since
these models are MLPs. The model's input and output sizes follow the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.colors import ListedColormap

from geometry import data, models, plotting, training


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
        if self.dataset in data.DATASETS:
            return (f"{self.dataset}-{kind}-w{self.width}-d{self.depth}-n{self.n_train}-"
                    f"noise{self.noise:g}-steps{self.steps}-lr{self.learning_rate:g}-seed{self.seed}")
        return f"{dataset_label(self.dataset)}-{kind}-w{self.width}-d{self.depth}-steps{self.steps}-" \
               f"lr{self.learning_rate:g}-seed{self.seed}"

    def build(self, in_features: int = 2, classes: int = 2):
        if self.model == "mlp":
            return models.MLP(in_features, self.width, depth=self.depth, out_features=classes,
                              activation=self.activation, rngs=nnx.Rngs(self.seed))
        return models.KernelMLP(in_features, self.units, self.width, self.depth, classes, kernel=self.model,
                                shared=self.shared, rngs=nnx.Rngs(self.seed))


def check_dataset(dataset: str) -> str:
    """`dataset` when it names a 2-D dataset, "digits" or an existing file, else a ValueError saying
    what is accepted (a file's content is checked when it is loaded, by `data.load_dataset`)."""
    if _built_in(dataset) or Path(dataset).is_file():
        return dataset
    raise ValueError(f"dataset {dataset!r} is neither a built-in dataset ({', '.join(data.DATASETS)}, digits) "
                     "nor an existing file; give a CSV (header row, integer label in the last column) or an NPZ "
                     "(arrays x and y)")


def _built_in(dataset: str) -> bool:
    return dataset in data.DATASETS or dataset == "digits"


def class_count(*labels: np.ndarray) -> int:
    """C for labels 0..C-1 spread over the given label arrays (a split's train and test labels)."""
    return int(max(y.max() for y in labels)) + 1


def display_name(dataset: str) -> str:
    """The dataset's name in JSON keys and plots: its own name, or a file's stem."""
    return dataset if _built_in(dataset) else Path(dataset).stem


def by_name(datasets) -> dict[str, str]:
    """{display name: dataset} in the given order: what the experiments key their results by.
    Two datasets with one display name (`spiral` and `/x/spiral.csv`, `/a/data.csv` and
    `/b/data.csv`) would overwrite each other's results: a ValueError names them."""
    named: dict[str, str] = {}
    for dataset in datasets:
        name = display_name(dataset)
        if name in named and named[name] != dataset:
            raise ValueError(f"datasets {named[name]!r} and {dataset!r} are both called {name!r} in the results, and "
                             "one would replace the other: rename one of the files")
        named[name] = dataset
    return named


def dataset_label(dataset: str) -> str:
    """A name for file and checkpoint keys: the dataset's own name, or FILESTEM-<first 10 hex digits of
    the file's SHA-256>, so an edited file never reuses the checkpoints of its earlier content."""
    if _built_in(dataset):
        return dataset
    path = Path(check_dataset(dataset))
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:10]}"


def load_split(spec: ClassifierSpec, test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test) of spec.dataset (float32 (N, d), int32 (N,))."""
    if spec.dataset in data.DATASETS:
        x, y = data.make_dataset(spec.dataset, spec.n_train + spec.n_test, noise=spec.noise, seed=spec.seed)
        return x[: spec.n_train], y[: spec.n_train], x[spec.n_train :], y[spec.n_train :]
    x, y = data.load_digits() if spec.dataset == "digits" else data.load_dataset(check_dataset(spec.dataset))
    x_train, y_train, x_test, y_test = data.stratified_split(x.reshape(len(x), -1), y, test_fraction, seed=spec.seed)
    mean = x_train.mean(axis=0, dtype=np.float64)
    scale = x_train.std(axis=0, dtype=np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    return ((x_train - mean) / scale).astype(np.float32), y_train, ((x_test - mean) / scale).astype(np.float32), y_test


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

    @property
    def classes(self) -> int:
        return class_count(self.y_train, self.y_test)


def trained_classifier(spec: ClassifierSpec, checkpoints: Path | None, log=None) -> Trained:
    """The trained classifier of `spec`: restored from CHECKPOINTS/classifiers/<key> when finished
    there, resumed when interrupted, trained otherwise (no checkpoints when `checkpoints` is None)."""
    x_train, y_train, x_test, y_test = load_split(spec)
    model = spec.build(x_train.shape[1], class_count(y_train, y_test))
    config = training.TrainConfig(steps=spec.steps, learning_rate=spec.learning_rate, checkpoint_every=1000,
                                  log_every=max(1, spec.steps // 4), seed=spec.seed)
    directory = None if checkpoints is None else Path(checkpoints) / "classifiers" / spec.key
    training.train(model, x_train, y_train, config, checkpoint_dir=directory, name=spec.key, log=log)
    return Trained(spec, model, x_train, y_train, x_test, y_test, training.accuracy(model, x_train, y_train),
                   training.accuracy(model, x_test, y_test))


def decision_values(model, points: np.ndarray) -> np.ndarray:
    """(P,) what a decision map draws: the logit difference (class 1 − class 0, boundary at 0) for two
    classes, else the predicted class (boundaries at the half-integers, `boundary_levels`)."""
    logits = np.asarray(jax.vmap(model)(jnp.asarray(points)))  # (P, classes)
    if logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    return np.argmax(logits, axis=1).astype(np.float32)


def decision_to_keep(values: np.ndarray, resolution: int, classes: int) -> np.ndarray:
    """`decision_values` as an experiment keeps them beside its JSON: for two classes only the cells
    the boundary crosses keep their values (`plotting.contour_support`: the same boundary, a tiny
    file); predicted classes as small integers."""
    if classes == 2:
        return plotting.contour_support(values, (resolution, resolution))
    return np.asarray(values).astype(np.int16)


def class_colours(classes: int) -> dict:
    """imshow/scatter colour arguments for class ids 0..classes-1, matching `draw_decision`."""
    if classes == 2:
        return {"cmap": "coolwarm", "vmin": 0, "vmax": 1}
    cmap = "tab10" if classes <= 10 else "tab20" if classes <= 20 else "viridis"
    return {"cmap": cmap, "vmin": -0.5, "vmax": max(9.5 if cmap == "tab10" else 19.5, classes - 0.5)}


def draw_decision(ax, values: np.ndarray, bounds, resolution: int, classes: int, *, fill: bool = True) -> None:
    """Decision regions (filled when `fill`) and boundaries of `decision_values` on a grid."""
    values = values.reshape(resolution, resolution)
    xs, ys = np.linspace(*bounds[:2], resolution), np.linspace(*bounds[2:], resolution)
    if classes == 2:
        if fill:
            ax.imshow(values > 0, origin="lower", extent=bounds, cmap="coolwarm", alpha=0.25, interpolation="nearest")
        ax.contour(xs, ys, values, levels=[0.0], colors="k", linewidths=0.8)
        return
    if fill:
        ax.imshow(values, origin="lower", extent=bounds, alpha=0.3, interpolation="nearest", **class_colours(classes))
    # boundaries as the grid cells whose predicted class differs from a neighbour's: contours of class
    # ids would draw one line per id crossed where regions of distant ids meet
    edges = np.zeros(values.shape, dtype=bool)
    edges[:, 1:] |= values[:, 1:] != values[:, :-1]
    edges[1:, :] |= values[1:, :] != values[:-1, :]
    ax.imshow(np.ma.masked_where(~edges, edges), origin="lower", extent=bounds, cmap=ListedColormap(["k"]),
              interpolation="nearest")
