"""Forward, reverse and auto mode of jacobian_field side by side; per-layer probe fields against a loop.

Command:  python -m benchmarks.modes [--quick] [--name NAME]
Writes:   benchmarks/results/modes-<device>.json (or NAME.json), and prints the tables
Runtime:  ~4 min on 2 CPU cores (quick: ~40 s)

Cases (float32, jitted, best of 3 calls after a warm-up call):
  (a) a 256² grid of R² through a tanh MLP 2 → 256 ×4 (output h_4, 256 wide);
  (b) 4096 points of R⁶⁴ through a tanh MLP 64 → 128 → 128 → 10;
  (c) 1024 points of R¹⁰²⁴ through a tanh MLP 1024 → 128 → 128 → 10;
  (d) 4096 8×8×1 images through a CNN (3×3 conv 8 → 3×3 conv 16 → linear 10).
`mode="auto"` must be within 1.1× of the faster fixed mode in each. The sweep times both
modes on tanh MLPs n → 256 → 256 → m over n, m ∈ {4, 16, 64, 256}; REVERSE_COST is the
median of (reverse seconds / m) / (forward seconds / n): one cotangent's cost in tangents.

Probe: the per-layer fields of tanh MLPs 2 → 32 ×4 → 10 and 64 → 128 ×4 → 10 at 2048 points
(`probe.local_jacobian_field`, `probe.input_jacobian_field`) against the per-point Python
loop they replace (`replaced_loop`: the former `layer_jacobians`, timed on 16 points and
reported per point), with the largest difference between the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import block, parse_args, result_name, timed, write_result
from geometry import jacobians, models, probe


@dataclasses.dataclass(frozen=True)
class Config:
    grid: int = 256
    points: int = 4096
    wide_points: int = 1024
    sweep_sizes: tuple[int, ...] = (4, 16, 64, 256)
    sweep_points: int = 1024
    probe_points: int = 2048
    loop_points: int = 16
    repeats: int = 3


QUICK = Config(grid=64, points=512, wide_points=128, sweep_sizes=(4, 64), sweep_points=256, probe_points=256,
               loop_points=4, repeats=2)


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(8 * 8 * 16, 10, rngs=rngs)

    def __call__(self, x):  # (8, 8, 1)
        return self.head(jnp.tanh(self.conv2(jnp.tanh(self.conv1(x)))).reshape(-1))


def _inputs(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def cases(config: Config) -> dict:
    axis = jnp.linspace(-2, 2, config.grid)
    grid = jnp.stack(jnp.meshgrid(axis, axis), -1).reshape(-1, 2)
    return {
        "a_grid_2d_to_256": (models.MLP(2, 256, depth=4, activation="tanh", rngs=nnx.Rngs(0)), grid),
        "b_64d_to_10": (models.MLP(64, (128, 128), out_features=10, activation="tanh", rngs=nnx.Rngs(1)),
                        _inputs((config.points, 64))),
        "c_1024d_to_10": (models.MLP(1024, (128, 128), out_features=10, activation="tanh", rngs=nnx.Rngs(2)),
                          _inputs((config.wide_points, 1024))),
        "d_cnn_8x8x1_to_10": (CNN(nnx.Rngs(3)), _inputs((config.points, 8, 8, 1))),
    }


def time_modes(model, points, repeats: int) -> dict:
    row = {}
    for mode in ("forward", "reverse", "auto"):
        t = timed(lambda: jacobians.jacobian_field(model, points, mode=mode), repeats)
        row[mode] = {"seconds": t["seconds"], "points_per_second": len(points) / t["seconds"]}
    faster = min(row["forward"]["seconds"], row["reverse"]["seconds"])
    pure, params = jacobians.as_pure_function(model)
    shapes = jacobians.output_shapes(pure, params, points)
    row["auto_picked"] = jacobians.choose_mode(int(np.prod(points.shape[1:])), jacobians.output_size(shapes))
    row["auto_over_faster"] = row["auto"]["seconds"] / faster
    fwd = jacobians.jacobian_field(model, points[:64], mode="forward")
    rev = jacobians.jacobian_field(model, points[:64], mode="reverse")
    row["max_abs_forward_vs_reverse"] = float(jnp.max(jnp.abs(fwd - rev)))
    return row


def sweep(config: Config) -> dict:
    rows, ratios = {}, []
    for n in config.sweep_sizes:
        for m in config.sweep_sizes:
            model = models.MLP(n, (256, 256, m), activation="tanh", rngs=nnx.Rngs(n + m))
            x = _inputs((config.sweep_points, n), n)
            forward = timed(lambda: jacobians.jacobian_field(model, x, mode="forward"), config.repeats)["seconds"]
            reverse = timed(lambda: jacobians.jacobian_field(model, x, mode="reverse"), config.repeats)["seconds"]
            ratio = (reverse / m) / (forward / n)
            ratios.append(ratio)
            rows[f"{n}->{m}"] = {"n": n, "m": m, "forward_seconds": forward, "reverse_seconds": reverse,
                                 "cotangent_over_tangent": ratio}
            print(f"  sweep n={n:4d} m={m:4d}: forward {forward:.4f} s, reverse {reverse:.4f} s, ratio {ratio:.2f}",
                  flush=True)
    return {"rows": rows, "fitted_reverse_cost": statistics.median(ratios),
            "library_reverse_cost": jacobians.REVERSE_COST}


def replaced_loop(model, point):
    """What `layer_jacobians` did before `geometry.probe` (one point): split the model, run it to
    get each layer's input, then jacfwd of each layer merged from the state, eagerly."""
    graphdef, state = nnx.split(model)

    def layer(l, state, h):
        return nnx.merge(graphdef, state).layers[l](h)

    inputs = [point]
    for hidden in model.layers:
        inputs.append(hidden(inputs[-1]))
    return [jax.jacfwd(layer, argnums=2)(l, state, h) for l, h in enumerate(inputs[:-1])]


def probe_speed(config: Config) -> dict:
    """Per-layer fields against the per-point loop they replace, on a spiral-sized MLP (where the
    loop's per-call overhead dominates) and a digits-sized classifier (where FLOPs do)."""
    results = {}
    for name, (n, width) in {"mlp_2_to_32x4": (2, 32), "mlp_64_to_128x4": (64, 128)}.items():
        model = models.MLP(n, width, depth=4, out_features=10, activation="tanh", rngs=nnx.Rngs(4))
        x = _inputs((config.probe_points, n), 5)
        local = timed(lambda: probe.local_jacobian_field(model, x, "layers/*"), config.repeats)["seconds"]
        inputs = timed(lambda: probe.input_jacobian_field(model, x, "layers/*"), config.repeats)["seconds"]
        subset = x[: config.loop_points]
        block(replaced_loop(model, subset[0]))  # warm-up: the eager ops' first-call caches
        start = time.perf_counter()
        looped = block([replaced_loop(model, p) for p in subset])
        loop_seconds = (time.perf_counter() - start) / len(subset)
        fields = probe.local_jacobian_field(model, subset, "layers/*")
        error = max(float(jnp.max(jnp.abs(fields[f"layers/{l}"][i] - looped[i][l])))
                    for i in range(len(subset)) for l in range(model.depth))
        results[name] = {
            "points": len(x), "local_points_per_second": len(x) / local, "input_points_per_second": len(x) / inputs,
            "loop_points_per_second": 1 / loop_seconds, "local_speedup_vs_loop": loop_seconds * len(x) / local,
            "input_speedup_vs_loop": loop_seconds * len(x) / inputs, "max_abs_difference_vs_loop": error}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default=None)
    args = parse_args(parser, argv)
    config = QUICK if args.quick else Config()
    results = {}
    for name, (model, points) in cases(config).items():
        results[name] = time_modes(model, points, config.repeats)
        r = results[name]
        print(f"{name}: forward {r['forward']['seconds']:.3f} s, reverse {r['reverse']['seconds']:.3f} s, "
              f"auto ({r['auto_picked']}) {r['auto']['seconds']:.3f} s = {r['auto_over_faster']:.2f}× the faster",
              flush=True)
    fitted = sweep(config)
    print(f"fitted REVERSE_COST {fitted['fitted_reverse_cost']:.2f} (library uses {jacobians.REVERSE_COST})")
    speed = probe_speed(config)
    for name, row in speed.items():
        print(f"probe, {name}: local {row['local_speedup_vs_loop']:.0f}×, input {row['input_speedup_vs_loop']:.0f}× "
              f"the per-point loop ({row['loop_points_per_second']:.0f} points/s; max |Δ| "
              f"{row['max_abs_difference_vs_loop']:.1e})")
    name = args.name or result_name("modes-quick" if args.quick else "modes")
    write_result(name, {"config": dataclasses.asdict(config), "cases": results, "sweep": fitted, "probe": speed,
                        "targets": {"auto_within": 1.1, "probe_speedup": 500,
                                    "worst_auto_over_faster": max(r["auto_over_faster"] for r in results.values()),
                                    "probe_local_speedup": {k: r["local_speedup_vs_loop"] for k, r in speed.items()}}})


if __name__ == "__main__":
    main()
