"""Published-model routes of `geometry.probe`: all-layer input fields against the deepest layer
alone, structured local spectra of normalisation layers against the dense route, recompilation
under `model_kwargs`, and the memory of per-token Jacobian blocks.

Command:  python -m benchmarks.published_models [--quick]
Writes:   benchmarks/results/published_models-<device>.json (then `python -m benchmarks.report`)
Runtime:  about 3 minutes on 2 CPU cores (the dense normalisation route dominates).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import RESULTS, machine, result_name, timed
from geometry import jacobians, probe
from geometry.io import write_json


class ReLUMLP(nnx.Module):
    def __init__(self, sizes, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class NormMap(nnx.Module):
    """A (H, W, C) feature map through BatchNorm and LayerNorm over channels (eval mode)."""

    def __init__(self, channels, rngs):
        self.batch_norm = nnx.BatchNorm(channels, rngs=rngs)
        self.layer_norm = nnx.LayerNorm(channels, rngs=rngs)

    def __call__(self, x):  # (B, H, W, C)
        return self.layer_norm(self.batch_norm(x))


def all_layers(points: int, repeats: int) -> dict:
    model = ReLUMLP((784, 256, 256, 10), nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(points, 784)).astype(np.float32))
    every = timed(lambda: probe.input_jacobian_field(model, x, "layers/*", mode="forward"), repeats)
    deepest = timed(lambda: probe.input_jacobian_field(model, x, "layers/2", mode="forward"), repeats)
    # the widest selected output (256 × 784 per point) sets the cost of a forward sweep: compare with it too
    widest = timed(lambda: probe.input_jacobian_field(model, x, "layers/1", mode="forward"), repeats)
    return {"points": points, "all_layers_seconds": every["seconds"], "deepest_alone_seconds": deepest["seconds"],
            "widest_alone_seconds": widest["seconds"], "ratio_vs_deepest": every["seconds"] / deepest["seconds"],
            "ratio_vs_widest": every["seconds"] / widest["seconds"]}


def norm_spectra(size: int, channels: int, repeats: int) -> dict:
    model = NormMap(channels, nnx.Rngs(1))
    model.batch_norm.var[...] = jnp.linspace(0.5, 2.0, channels)
    model.eval()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, size, size, channels)).astype(np.float32))
    keys = ["batch_norm", "layer_norm"]
    structured = timed(lambda: probe.local_singular_values(model, x, keys, batched=True), repeats)

    def dense():
        fields = probe.local_jacobian_field(model, x, keys, batched=True, as_matrix=True)
        return {k: np.linalg.svd(np.asarray(fields[k][0]), compute_uv=False) for k in keys}

    dense_time = timed(dense, 1)
    fast, slow = probe.local_singular_values(model, x, keys, batched=True), dense()
    error = max(float(np.max(np.abs(np.asarray(fast[k]["values"][0]) - slow[k]) / np.max(slow[k]))) for k in keys)
    return {"feature_map": [size, size, channels], "structured_seconds": structured["seconds"],
            "dense_seconds": dense_time["seconds"], "speedup": dense_time["seconds"] / structured["seconds"],
            "max_relative_difference": error, "structures": {k: fast[k]["structure"] for k in keys}}


class Cached(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x, *, bias, scale: float):
        return jnp.tanh(scale * self.linear(x) + bias)


def recompilation() -> dict:
    model = Cached(nnx.Rngs(2))
    x = jnp.ones((8, 4))
    jacobians.jacobian_field(model, x, model_kwargs={"bias": jnp.zeros(4), "scale": 1.0})
    before = jacobians._mapped._cache_size()
    for value in range(5):
        jacobians.jacobian_field(model, x, model_kwargs={"bias": jnp.full(4, 0.1 * value), "scale": 1.0})
    arrays = jacobians._mapped._cache_size() - before
    jacobians.jacobian_field(model, x, model_kwargs={"bias": jnp.zeros(4), "scale": 2.0})
    static = jacobians._mapped._cache_size() - before - arrays
    return {"compilations_for_5_new_array_values": arrays, "compilations_for_a_new_python_float": static}


def token_memory(tokens: int, width: int) -> dict:
    class Mixer(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(50, width, rngs=rngs)
            self.mix = nnx.Linear(width, width, rngs=rngs)

        def __call__(self, ids):
            h = self.embed(ids)
            causal = jnp.tril(jnp.ones((tokens, tokens))) / jnp.arange(1, tokens + 1)[:, None]
            return jnp.tanh(self.mix(causal @ h))

    model = Mixer(nnx.Rngs(3))
    ids = jnp.zeros((1, tokens), jnp.int32)
    result = {"tokens": tokens, "width": width,
              "full_jacobian_bytes_per_point": 4 * (tokens * width) ** 2,
              "diagonal_blocks_bytes_per_point": 4 * tokens * width * width}
    blocks = timed(lambda: probe.token_jacobians(model, ids, "mix", wrt="embed"), 2)
    full = timed(lambda: probe.input_jacobian_field(model, ids, "mix", wrt="embed"), 2)
    result |= {"diagonal_blocks_seconds": blocks["seconds"], "full_jacobian_seconds": full["seconds"]}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 5
    result = {"machine": machine(),
              "all_layers": all_layers(64 if args.quick else 1024, repeats),
              "norm_spectra": norm_spectra(4 if args.quick else 8, 16 if args.quick else 64, repeats),
              "recompilation": recompilation(),
              "token_memory": token_memory(8 if args.quick else 128, 8 if args.quick else 64)}
    path = RESULTS / f"{result_name('published_models')}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
