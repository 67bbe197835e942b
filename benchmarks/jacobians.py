"""Jacobian fields, side by side: jacobian_field against the closed form, the naive ways and torch.func.

Command:  python -m benchmarks.jacobians [--quick] [--name NAME]
Writes:   benchmarks/results/jacobians-<device>.json (or NAME.json), and prints the table
Runtime:  ~8 min on 2 CPU cores (quick: ~30 s)

An MLP (tanh, width 256, depth 8, inputs in R²) on a 256 × 256 grid of [−2, 2]². Each
method computes the end-to-end Jacobian ∂h_8/∂x (256 × 2) at every point, chunked the same
way (4096 points per batch), jitted; times are the best of 5 calls after a warm-up call
(medians and compilation are in the JSON). The forward pass alone sets the scale: forward-mode
autodiff with n = 2 inputs carries 2 tangents, so its floor is about n + 1 = 3 forward
passes. Every method's Jacobians are checked against jacobian_field's before timing.
The naive ways and torch are timed on subsets (Python loop: 256 points, vmap(jacrev) and
torch.func: 8192), one call after the warm-up, and reported per point.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import parse_args, result_name, timed, write_result
from geometry import data, jacobians, models
from geometry.jacobians import DEFAULT_CHUNK_SIZE


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 256
    depth: int = 8
    resolution: int = 256  # grid points per side
    sweep_widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    sweep_resolution: int = 64
    loop_points: int = 256  # points timed in the per-point Python loop
    jacrev_points: int = 8192  # points timed for vmap(jacrev), whose (points, 256, 256) cotangents are slow
    torch_points: int = 8192  # points timed for torch.func (slow on CPU at width >= 256)
    activation: str = "tanh"


QUICK = Config(width=64, depth=4, resolution=64, sweep_widths=(32, 64), sweep_resolution=32, loop_points=32,
               jacrev_points=1024, torch_points=1024)


def chunked(per_point, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """jit of lax.map(per_point) over the points in vmapped batches, like jacobian_field."""
    return jax.jit(lambda points: jax.lax.map(per_point, points, batch_size=min(chunk_size, points.shape[0])))


def jax_methods(model: models.MLP) -> dict:
    graphdef, state = nnx.split(model)

    def last_hidden(x):  # the model has no readout: its output is h_L
        return nnx.merge(graphdef, state)(x)

    def closed_form(x):
        return models.closed_form_input_jacobians(nnx.merge(graphdef, state), x)[-1]

    per_point = jax.jit(jax.jacfwd(last_hidden))
    return {
        "forward": chunked(last_hidden),
        "jacobian_field": lambda points: jacobians.jacobian_field(model, points),
        "closed_form": chunked(closed_form),
        "vmap_jacrev": chunked(jax.jacrev(last_hidden)),
        "python_loop_jacfwd": lambda points: jnp.stack([per_point(x) for x in points]),
    }


def torch_method(model: models.MLP):
    """torch.func.vmap(torch.func.jacfwd) on the same weights, chunked the same; None without torch."""
    try:
        with warnings.catch_warnings():  # torch's own imports raise DeprecationWarnings of its internals
            warnings.simplefilter("ignore", DeprecationWarning)
            import torch
            from torch.func import jacfwd, vmap
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    layers = [(torch.tensor(np.array(layer.dense.weight[...])), torch.tensor(np.array(layer.dense.bias[...])))
              for layer in model.layers]

    def forward(x):
        for weight, bias in layers:
            x = torch.tanh(weight @ x + bias)
        return x

    field = vmap(jacfwd(forward))

    def run(points):
        points = torch.from_numpy(np.array(points))  # a writable copy: torch refuses read-only buffers
        with torch.no_grad(), warnings.catch_warnings():  # the first jvp loads torch internals that warn
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.concatenate([field(points[i:i + DEFAULT_CHUNK_SIZE]).numpy()
                                   for i in range(0, len(points), DEFAULT_CHUNK_SIZE)])

    return run, torch.__version__


def measure(model: models.MLP, points, loop_points: int, *, jacrev_points: int | None = None,
            torch_points: int | None = None, check: bool = True, skip=()) -> dict:
    methods = {name: method for name, method in jax_methods(model).items() if name not in skip}
    torch_run = torch_method(model) if model.activation.name == "tanh" else None
    if torch_run is not None:
        methods["torch_func_vmap_jacfwd"] = torch_run[0]
    reference = np.asarray(methods["jacobian_field"](points[:loop_points]))
    scale = np.abs(reference).max()
    rows = {}
    for name, method in methods.items():
        limit = {"python_loop_jacfwd": loop_points, "vmap_jacrev": jacrev_points, "torch_func_vmap_jacfwd": torch_points}
        inputs = points[:limit.get(name)]
        error = None
        if check and name != "forward":
            error = float(np.abs(np.asarray(method(points[:loop_points])) - reference).max() / scale)
        timing = timed(lambda method=method, inputs=inputs: method(inputs), repeats=1 if name in limit else 5)
        rows[name] = {**timing, "points": len(inputs), "points_per_second": len(inputs) / timing["seconds"],
                      "max_error_vs_jacobian_field": error}
        print(f"  {name}: {rows[name]['points_per_second']:.4g} points/s", flush=True)
    forward, field = rows["forward"]["points_per_second"], rows["jacobian_field"]["points_per_second"]
    for row in rows.values():
        row["cost_in_forward_passes"] = forward / row["points_per_second"]
        row["slowdown_vs_jacobian_field"] = field / row["points_per_second"]
    if torch_run is not None:
        rows["torch_func_vmap_jacfwd"]["torch_version"] = torch_run[1]
    return rows


def table(rows: dict, title: str) -> str:
    lines = [title, f"{'method':26s} {'points/s':>12s} {'× forward':>10s} {'× jacobian_field':>17s} {'max rel err':>12s}"]
    for name, row in rows.items():
        error = "" if row["max_error_vs_jacobian_field"] is None else f"{row['max_error_vs_jacobian_field']:.1e}"
        lines.append(f"{name:26s} {row['points_per_second']:12.4g} {row['cost_in_forward_passes']:10.2f} "
                     f"{row['slowdown_vs_jacobian_field']:17.2f} {error:>12s}")
    return "\n".join(lines)


def build(config: Config, width: int) -> models.MLP:
    return models.MLP(2, width, config.depth, activation=config.activation, init="xavier", rngs=nnx.Rngs(0))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jacobians", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", help="result file name (default: jacobians-<device>)")
    args = parse_args(parser, argv)
    config = QUICK if args.quick else Config()
    points = jnp.asarray(data.grid((-2, 2, -2, 2), config.resolution), jnp.float32)
    print(f"width {config.width}, depth {config.depth}, {len(points)} points", flush=True)
    rows = measure(build(config, config.width), points, config.loop_points, jacrev_points=config.jacrev_points,
                   torch_points=config.torch_points)
    floor = 2 + 1  # n_in + 1 forward passes
    print(table(rows, f"width {config.width}, depth {config.depth}, {len(points)} points ({jax.devices()[0]})"))
    sweep = {}
    sweep_points = jnp.asarray(data.grid((-2, 2, -2, 2), config.sweep_resolution), jnp.float32)
    for width in config.sweep_widths:  # the naive ways are left out of the sweep: they are slow at every width
        sweep[width] = measure(build(config, width), sweep_points, config.loop_points,
                               torch_points=config.torch_points, skip=("python_loop_jacfwd", "vmap_jacrev"))
        print(table(sweep[width], f"\nsweep: width {width}, {len(sweep_points)} points"))
    targets = {
        "cost_in_forward_passes": rows["jacobian_field"]["cost_in_forward_passes"],
        "target_cost_in_forward_passes": 1.3 * floor,
        "speedup_vs_torch": rows.get("torch_func_vmap_jacfwd", {}).get("slowdown_vs_jacobian_field"),
        "target_speedup_vs_torch": 3.0,
    }
    print(f"\njacobian_field: {targets['cost_in_forward_passes']:.2f} forward passes (target ≤ "
          f"{targets['target_cost_in_forward_passes']:.1f}); vs torch.func: {targets['speedup_vs_torch']}× (target ≥ 3)")
    write_result(args.name or result_name("jacobians" + ("-quick" if args.quick else "")),
                 {"config": dataclasses.asdict(config), "main": rows, "sweep": sweep, "targets": targets})


if __name__ == "__main__":
    main()
