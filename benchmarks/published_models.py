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
from geometry import batching, jacobians, probe
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


class TransformerBlock(nnx.Module):
    def __init__(self, width, rngs):
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=4, in_features=width, decode=False, rngs=rngs)
        self.mlp = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, h):  # (T, width)
        h = h + self.attention(self.norm(h))
        return h + jax.nn.gelu(self.mlp(h))


class Transformer(nnx.Module):
    """4 pre-LN blocks over (T, width) token matrices."""

    def __init__(self, width, depth, rngs):
        self.blocks = nnx.List([TransformerBlock(width, rngs) for _ in range(depth)])

    def __call__(self, h):
        for block in self.blocks:
            h = block(h)
        return h


def _hand_jacfwd(model, outputs):
    """jax.jacfwd of every selected output at once, written by hand: the autodiff floor for the probe."""
    graphdef, state = nnx.split(model)
    per_point = jax.jacfwd(lambda s, x: outputs(nnx.merge(graphdef, s), x), argnums=1)
    return state, jax.jit(jax.vmap(per_point, in_axes=(None, 0)))


def _sweep(model, x, keys, every_output, repeats: int) -> dict:
    every = timed(lambda: probe.input_jacobian_field(model, x, keys, mode="forward"), repeats)
    deepest = timed(lambda: probe.input_jacobian_field(model, x, keys[-1], mode="forward"), repeats)
    per_layer = timed(lambda: [probe.input_jacobian_field(model, x, key, mode="forward") for key in keys], repeats)
    state, hand = _hand_jacfwd(model, every_output)
    hand_time = timed(lambda: hand(state, x), repeats)
    return {"points": int(x.shape[0]), "layers": list(keys), "all_layers_seconds": every["seconds"],
            "deepest_alone_seconds": deepest["seconds"], "one_call_per_layer_seconds": per_layer["seconds"],
            "hand_jacfwd_all_seconds": hand_time["seconds"],
            "ratio_vs_deepest": every["seconds"] / deepest["seconds"],
            "hand_ratio_vs_deepest": hand_time["seconds"] / deepest["seconds"],
            "field_bytes": 4 * int(x.shape[0]) * int(x[0].size) * sum(int(np.prod(v.shape[1:])) for v in jax.tree_util.tree_leaves(
                jax.eval_shape(lambda: probe.outputs(model, x[:1], keys))))}


def all_layers(points: int, repeats: int) -> dict:
    model = ReLUMLP((784, 256, 256, 10), nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(points, 784)).astype(np.float32))

    def mlp_outputs(m, u):
        h1 = m.layers[0](u)
        h2 = m.layers[1](jax.nn.relu(h1))
        return h1, h2, m.layers[2](jax.nn.relu(h2))

    return _sweep(model, x, ["layers/0", "layers/1", "layers/2"], mlp_outputs, repeats)


def all_blocks(points: int, tokens: int, width: int, repeats: int) -> dict:
    model = Transformer(width, 4, nnx.Rngs(4))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(points, tokens, width)).astype(np.float32))

    def block_outputs(m, h):
        outputs = []
        for block in m.blocks:
            h = block(h)
            outputs.append(h)
        return outputs

    return _sweep(model, x, [f"blocks/{i}" for i in range(4)], block_outputs, repeats)


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
    before = batching.mapped._cache_size()
    for value in range(5):
        jacobians.jacobian_field(model, x, model_kwargs={"bias": jnp.full(4, 0.1 * value), "scale": 1.0})
    arrays = batching.mapped._cache_size() - before
    jacobians.jacobian_field(model, x, model_kwargs={"bias": jnp.zeros(4), "scale": 2.0})
    static = batching.mapped._cache_size() - before - arrays
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
              "all_blocks": all_blocks(4 if args.quick else 64, 8 if args.quick else 16, 8 if args.quick else 32,
                                       repeats),
              "norm_spectra": norm_spectra(4 if args.quick else 8, 16 if args.quick else 64, repeats),
              "recompilation": recompilation(),
              "token_memory": token_memory(8 if args.quick else 128, 8 if args.quick else 64)}
    path = RESULTS / f"{result_name('published_models')}{'-quick' if args.quick else ''}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
