"""What finding the activations costs: `probe.activation_stats` against a forward pass over the same points.

Command:  python -m benchmarks.activations [--quick]
Writes:   benchmarks/results/activations-<device>.json, and prints the table
Runtime:  ~1 min on 2 CPU cores (quick: ~15 s)

The model is a zoo-style MLP 784 → 256 → 256 → 10 whose relus are inline `nnx.relu` calls (no
activation modules), at 10 000 points. Timed (best of `repeats` after a warm-up call):
  * the forward pass over all points (jitted, vmapped);
  * `probe.activation_stats` (finding the activations — one trace per model structure —, φ'(z)
    at every unit and point by the interpreted program, and the fractions on the host);
  * `probe.activations` alone (the trace and the identification, no points).
Target (issue 44): activation_stats ≤ 1.5 × the forward pass.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import parse_args, result_name, timed, write_result
from geometry import probe


@dataclasses.dataclass(frozen=True)
class Config:
    points: int = 10_000
    repeats: int = 5


QUICK = Config(points=1000, repeats=3)


class ZooMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1, self.fc2, self.fc3 = nnx.Linear(784, 256, rngs=rngs), nnx.Linear(256, 256, rngs=rngs), \
            nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


def main(config: Config) -> dict:
    model = ZooMLP(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(config.points, 784)), jnp.float32)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: jax.vmap(nnx.merge(graphdef, state))(x))
    rows = {"forward pass": timed(lambda: forward(state, x), config.repeats),
            "probe.activation_stats": timed(lambda: probe.activation_stats(model, x), config.repeats),
            "probe.activations (no points)": timed(lambda: probe.activations(model, x[0]), config.repeats)}
    ratio = rows["probe.activation_stats"]["seconds"] / rows["forward pass"]["seconds"]
    for name, row in rows.items():
        print(f"{name:32s} {row['seconds']:.4f} s (first call {row['first_call_seconds']:.2f} s)", flush=True)
    print(f"activation_stats / forward pass: {ratio:.2f} (target ≤ 1.5)", flush=True)
    stats = probe.activation_stats(model, x)
    return {"config": dataclasses.asdict(config), "rows": rows, "ratio": ratio, "target": 1.5,
            "found": {key: value["name"] for key, value in stats.items()},
            "dead_fraction": {key: value["dead_fraction"] for key, value in stats.items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parse_args(parser)
    write_result(result_name("activations"), main(QUICK if args.quick else Config()))
