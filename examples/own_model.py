"""Analyse your own model: per-layer geometry of a user-written NNX CNN and a Linen MLP on digits.

Command:  python -m examples.own_model [--quick]
Prints:   test accuracy, then per layer — and per activation, found in the computation — at the
          test points: numerical rank, effective rank and median condition number of
          ∂(layer output)/∂x, the rank-deficient fraction, linear CKA between consecutive rows, and
          for activations the dead and saturated fractions of their units. Returns the same as a dict.
Runtime:  ~40 s on 2 CPU cores (quick: ~15 s)

Nothing here is special to the library: the two models are written as a user would write
them, and the library reaches into them from outside.
* The NNX CNN goes to `geometry.report(cnn, x)` as it is: one row per top-level layer and per
  activation found in the computation (its relus are inline `nnx.relu` calls: the rows are
  conv1, relu, conv2, relu#1, head, so the rank after each relu — what the activation does to
  the geometry — is a row of its own, with the dead and saturated fractions beside it).
* The Linen MLP is an f(params, x): its intermediates come from Linen's own
  `capture_intermediates`, and each layer's output as a function of x is reported with
  `report(f, x, params=variables)`; CKA between consecutive layers with `similarity.cka`.
Classifier Jacobians are wide (10 logits of 64 pixels): rank and condition number are then
taken on the row space, at most 10 (see `geometry.spectra`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import nnx

import geometry
from geometry import data, similarity, training


@dataclasses.dataclass(frozen=True)
class Config:
    cnn_steps: int = 600
    mlp_steps: int = 600
    test_points: int | None = None  # None: every test image
    seed: int = 0


QUICK = Config(cnn_steps=150, mlp_steps=200, test_points=64)


class DigitsCNN(nnx.Module):
    """8×8×1 → conv 3×3 ×8 → ReLU → conv 3×3 stride 2 ×16 → ReLU → linear 10. One image at a time."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 16, 10, rngs=rngs)

    def __call__(self, x):  # (8, 8, 1)
        h = nnx.relu(self.conv1(x))
        h = nnx.relu(self.conv2(h))
        return self.head(h.reshape(-1))


class LinenMLP(linen.Module):
    """64 → 128 → 128 → 10 with GELU, in Flax Linen."""

    @linen.compact
    def __call__(self, x):
        for width in (128, 128):
            x = linen.gelu(linen.Dense(width)(x))
        return linen.Dense(10)(x)


def train_linen(model, x, y, steps: int, seed: int):
    """A plain optax loop, as a Linen user writes one."""
    variables = model.init(jax.random.key(seed), x[0])
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(variables)

    @jax.jit
    def step(variables, opt_state):
        loss, grads = jax.value_and_grad(lambda v: training.cross_entropy(model.apply(v, x), y))(variables)
        updates, opt_state = optimizer.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state, loss

    for _ in range(steps):
        variables, opt_state, _ = step(variables, opt_state)
    return variables


COLUMNS = {"rank_median": "numerical_rank_median", "effective_rank_median": "effective_rank_median",
           "condition_median": "condition_number_median", "rank_deficient_fraction": "rank_deficient_fraction",
           "cka_previous": "cka_with_previous", "dead_fraction": "dead_fraction",
           "saturated_fraction": "saturated_fraction"}


def _rows(table, in_size: int) -> dict:
    """{layer: row} from a report's table: the report's columns under this example's names, and the
    Jacobian's matrix shape (its output size, the input size)."""
    rows = {}
    for _, row in table.iterrows():
        out_size = int(np.prod(ast.literal_eval(row["shape"])))  # the report writes shapes as "(8, 8, 8)"
        rows[row["layer"]] = {"shape": [out_size, in_size],
                              **{ours: (None if pd.isna(row[theirs]) else float(row[theirs]))
                                 for theirs, ours in COLUMNS.items()}}
    return rows


def main(config: Config = Config()) -> dict:
    x, y = data.load_digits()
    x_train, y_train, x_test, y_test = data.stratified_split(x, y, 0.2, seed=config.seed)
    if config.test_points is not None:
        x_test, y_test = x_test[: config.test_points], y_test[: config.test_points]
    results = {}

    images = lambda a: a.reshape(-1, 8, 8, 1)  # noqa: E731
    cnn = DigitsCNN(nnx.Rngs(config.seed))
    training.train(cnn, images(x_train), y_train, training.TrainConfig(steps=config.cnn_steps, learning_rate=3e-3,
                                                                       batch_size=256, log_every=config.cnn_steps))
    table = geometry.report(cnn, images(x_test), progress=False).table  # every layer and inline relu, then output
    results["nnx_cnn"] = {"test_accuracy": training.accuracy(cnn, images(x_test), y_test),
                          "layers": _rows(table[table["layer"] != "output"], 64)}

    mlp = LinenMLP()
    variables = train_linen(mlp, jnp.asarray(x_train), jnp.asarray(y_train), config.mlp_steps, config.seed)

    def intermediates(variables, v):  # {"Dense_0": (128,), "Dense_1": (128,), "Dense_2": (10,)}
        _, state = mlp.apply(variables, v, capture_intermediates=True, mutable=["intermediates"])
        return {name: value["__call__"][0] for name, value in state["intermediates"].items() if name != "__call__"}

    # a Linen model is an f(params, x): one report per layer, each of that layer's output as a function of x
    rows, previous = {}, None
    for name in ("Dense_0", "Dense_1", "Dense_2"):
        layer = functools.partial(lambda key, variables, v: intermediates(variables, v)[key], name)
        row = _rows(geometry.report(layer, x_test, params=variables, progress=False).table, 64)["output"]
        features = np.asarray(jax.vmap(lambda v: layer(variables, v))(jnp.asarray(x_test)))  # noqa: B023
        row["cka_with_previous"] = None if previous is None else float(similarity.cka(previous, features))
        rows[name], previous = row, features
    accuracy = float(np.mean(np.argmax(mlp.apply(variables, x_test), -1) == y_test))
    results["linen_mlp"] = {"test_accuracy": accuracy, "layers": rows}
    return results


def report(results: dict) -> None:
    for model, result in results.items():
        print(f"\n{model}: test accuracy {result['test_accuracy']:.3f}")
        print(f"  {'layer':10s} {'J shape':>10s} {'rank':>6s} {'eff. rank':>9s} {'cond.':>9s} {'deficient':>9s} "
              f"{'CKA prev':>8s} {'dead':>6s} {'saturated':>9s}")
        for name, row in result["layers"].items():
            cka = "" if row["cka_with_previous"] is None else f"{row['cka_with_previous']:.3f}"
            dead = "" if row["dead_fraction"] is None else f"{row['dead_fraction']:.2f}"
            saturated = "" if row["saturated_fraction"] is None else f"{row['saturated_fraction']:.2f}"
            print(f"  {name:10s} {str(tuple(row['shape'])):>10s} {row['numerical_rank_median']:6.0f} "
                  f"{row['effective_rank_median']:9.2f} {row['condition_number_median']:9.3g} "
                  f"{row['rank_deficient_fraction']:9.2f} {cka:>8s} {dead:>6s} {saturated:>9s}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    report(main(QUICK if parser.parse_args().quick else Config()))
