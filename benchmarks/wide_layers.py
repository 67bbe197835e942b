"""Spectra of wide layer Jacobians D_φ W: the pullback-metric route against SVD of jacfwd output.

Command:  python -m benchmarks.wide_layers [--quick] [--inputs N]
Writes:   benchmarks/results/wide_layers-<device>.json, and prints the result
Runtime:  ~8 min on 2 CPU cores for the default 256 inputs (quick: ~30 s); use --inputs 4096 on a GPU

A tanh layer F(x) = tanh(W x + b), m = n = 1024, W ~ N(0, 1/n), at N random inputs.
Route 1 (`geometry.metric.dense_layer_singular_values`): squared singular values are the
eigenvalues of the metric; with W Wᵀ formed once, each input costs an elementwise product
and a symmetric eigenvalue problem (tridiagonalisation, no eigenvectors), then the 16 smallest
values are recomputed without squaring from Jᵀ V, V the metric's bottom eigenvectors. Route 2:
`jacobian_field` (jacfwd, 1024 tangents) with `reduce=singular_values`, an SVD per input.
Agreement is reported against a float64 SVD of D W for the first inputs: relative to σ_max
(squaring alone, `pullback_metric_unrefined`, loses ~eps · σ_max² / σ at the bottom of the
spectrum, more than 1e-4 σ_max when σ_min ≈ σ_max / 4n) and value by value for σ ≥ 0.1 σ_max.
Both routes are also timed in float64, where the metric route's squaring error is ~1e-12.
The float32 pair is timed best of 3; the others once.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import parse_args, result_name, timed, write_result
from geometry import jacobians, metric, spectra

REFINE = 16  # smallest singular values recomputed without squaring (the library default)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wide_layers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    args = parse_args(parser, argv)
    width, count = (256, 64) if args.quick else (args.width, args.inputs)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((width, width)) / np.sqrt(width)
    bias = 0.1 * rng.standard_normal(width)
    x = rng.standard_normal((count, width))
    w32, b32, x32 = (jnp.asarray(a, jnp.float32) for a in (weight, bias, x))

    def layer(v):
        return jnp.tanh(w32 @ v + b32)

    def metric_route(refine=REFINE):
        derivatives = 1.0 - jnp.tanh(x32 @ w32.T + b32) ** 2  # φ'(z), (N, m)
        return metric.dense_layer_singular_values(w32, derivatives, refine=refine)

    def float64(fn):
        def run():
            with jax.enable_x64(True):
                return fn(*(jnp.asarray(a, jnp.float64) for a in (weight, bias, x)))
        return run

    @float64
    def metric_route_float64(w64, b64, x64):
        return metric.dense_layer_singular_values(w64, 1.0 - jnp.tanh(x64 @ w64.T + b64) ** 2)

    @float64
    def svd_route_float64(w64, b64, x64):
        return jacobians.jacobian_field(lambda v: jnp.tanh(w64 @ v + b64), x64, reduce=spectra.singular_values,
                                        chunk_size=64)

    def svd_route():
        return jacobians.jacobian_field(layer, x32, reduce=spectra.singular_values, chunk_size=64)

    def metric_route_unrefined():
        return metric_route(refine=0)

    candidates = {"pullback_metric": (metric_route, 3), "pullback_metric_unrefined": (metric_route_unrefined, 1),
                  "pullback_metric_float64": (metric_route_float64, 1), "jacfwd_svd": (svd_route, 3),
                  "jacfwd_svd_float64": (svd_route_float64, 1)}
    routes, outputs = {}, {}  # outputs: each route's values from its last timed call, checked below

    def keeping_output(name, route):
        def run():
            outputs[name] = route()
            return outputs[name]
        return run

    for name, (route, repeats) in candidates.items():
        print(f"timing {name} ...", flush=True)
        routes[name] = timed(keeping_output(name, route), repeats=repeats)
    checked = min(count, 32)
    derivatives = 1.0 - np.tanh(x[:checked] @ weight.T + bias) ** 2
    reference = np.linalg.svd(derivatives[:, :, None] * weight[None], compute_uv=False)  # float64
    agreement = {}
    for name, output in outputs.items():
        values = np.asarray(output, dtype=np.float64)[:checked]
        large = reference >= 0.1 * reference[:, :1]
        agreement[name] = {
            "max_error_relative_to_sigma_max": float(np.max(np.abs(values - reference) / reference[:, :1])),
            "max_relative_error_sigma_ge_0.1_max": float(np.max(np.abs(values - reference)[large] / reference[large])),
        }
    speedup = routes["jacfwd_svd"]["seconds"] / routes["pullback_metric"]["seconds"]
    speedup_float64 = routes["jacfwd_svd_float64"]["seconds"] / routes["pullback_metric_float64"]["seconds"]
    for name, timing in routes.items():
        print(f"{name:26s} {timing['seconds']:8.2f} s for {count} inputs ({count / timing['seconds']:7.1f} inputs/s); "
              f"max |Δσ|/σ_max {agreement[name]['max_error_relative_to_sigma_max']:.1e}, "
              f"max rel err (σ ≥ 0.1 σ_max) {agreement[name]['max_relative_error_sigma_ge_0.1_max']:.1e}")
    accurate = agreement["pullback_metric"]["max_error_relative_to_sigma_max"] <= 1e-4
    print(f"pullback-metric route is {speedup:.1f}× faster than jacfwd + SVD in float32 (target ≥ 3×), "
          f"{speedup_float64:.1f}× in float64; float32 values {'within' if accurate else 'NOT within'} 1e-4 σ_max; "
          f"device {jax.devices()[0]}")
    write_result(result_name("wide_layers" + ("-quick" if args.quick else "")),
                 {"width": width, "inputs": count, "checked_inputs": checked, "refine": REFINE, "routes": routes,
                  "agreement_vs_float64_svd": agreement, "speedup": speedup, "speedup_float64": speedup_float64,
                  "target_speedup": 3.0, "target_error_relative_to_sigma_max": 1e-4})


if __name__ == "__main__":
    main()
