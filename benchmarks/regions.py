"""Exact linear regions (`geometry.regions.partition`): time of the exact partition, and its count
against sign-pattern grids.

Command:  python -m benchmarks.regions [--quick]
Writes:   benchmarks/results/regions-<device>.json (then `python -m benchmarks.report`)
Runtime:  about 2 minutes on 2 CPU cores (the 2048² grids dominate).

Target (issue 33): a 2 → 64 ×4 → 2 ReLU MLP on [−3, 3]² partitioned in ≤ 1 s on 2 cores; against
a 2048² sign-pattern grid the exact count is ≥ the grid's, and equal on a one-layer net (up to
regions smaller than the grid's cells, which the grid cannot see: counted and reported).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import parse_args, result_name, timed, write_result
from geometry import models, regions


def _grid_patterns(model, resolution: int, window: float):
    """(distinct patterns on the grid, regions of `partition` holding a grid point) by one forward
    pass per grid point (pre-activations written out, not through the library)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def patterns(points):
        def one(x):
            hidden, pre = x, []
            for layer in nnx.merge(graphdef, state).layers:
                pre.append(layer.dense(hidden))
                hidden = jax.nn.relu(pre[-1])
            return jnp.concatenate(pre) >= 0
        return jax.vmap(one)(points)

    axis = np.linspace(-window, window, resolution, dtype=np.float32)
    seen = set()
    for row in range(0, resolution, 32):
        ys = axis[row:row + 32]
        points = np.stack(np.meshgrid(axis, ys), -1).reshape(-1, 2)
        seen.update(map(bytes, np.packbits(np.asarray(patterns(points)), axis=1)))
    return len(seen)


def case(name: str, width: int, depth: int, sigma_b2: float, resolution: int, repeats: int) -> dict:
    model = models.MLP(2, width, depth=depth, out_features=2, activation="relu", sigma_b2=sigma_b2, rngs=nnx.Rngs(0))
    time = timed(lambda: regions.partition(model, (-3, 3)), repeats)
    result = regions.partition(model, (-3, 3))
    grid_time = timed(lambda: _grid_patterns(model, resolution, 3.0), 1)
    grid = _grid_patterns(model, resolution, 3.0)
    cell = (6 / (resolution - 1)) ** 2
    small = int((result.areas < cell).sum())
    axis = np.linspace(-3, 3, resolution)
    held = set()
    for row in range(0, resolution, 32):  # which exact regions hold a grid point (by the model's own pattern)
        points = np.stack(np.meshgrid(axis, axis[row:row + 32]), -1).reshape(-1, 2)
        held.update(np.unique(result.region_of(points)).tolist())
    print(f"{name}: {len(result)} regions in {time['seconds']:.3f} s (first call {time['first_call_seconds']:.2f} s); "
          f"{resolution}² grid {grid} patterns in {grid_time['seconds']:.2f} s", flush=True)
    return {"model": f"2 → {width} ×{depth} → 2 ReLU, He weights, biases N(0, {sigma_b2})", "window": [-3, 3],
            "regions": len(result), "seconds": time["seconds"], "median_seconds": time["median_seconds"],
            "first_call_seconds": time["first_call_seconds"], "grid_resolution": resolution,
            "grid_patterns": grid, "grid_seconds": grid_time["seconds"], "exact_at_least_grid": len(result) >= grid,
            "regions_smaller_than_a_grid_cell": small, "regions_holding_a_grid_point": len(held - {-1}),
            "grid_count_is_the_regions_it_samples": len(held - {-1}) == grid, "max_verify_error": result.verify(samples=2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parse_args(parser, argv)
    resolution, repeats = (512, 2) if args.quick else (2048, 5)
    cases = {
        "2→64×4→2, zero biases (nnx.Linear's default)": (64, 4, 0.0),
        "2→64×4→2, biases N(0, 0.1)": (64, 4, 0.1),
        "2→64→2, biases N(0, 0.1) (one layer)": (64, 1, 0.1),
        "2→16×4→2, biases N(0, 0.1)": (16, 4, 0.1),
    }
    results = {name: case(name, *spec, resolution, repeats) for name, spec in cases.items()}
    write_result(result_name("regions" + ("-quick" if args.quick else "")),
                 {"target_seconds": 1.0, "cases": results})


if __name__ == "__main__":
    main()
