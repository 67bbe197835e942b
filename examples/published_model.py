"""Analyse a published-style model: a ViT-style image transformer and a decoder-only LM with a KV cache.

Command:  python -m examples.published_model [--quick]
Prints:   for the image transformer (on digits), each block's output: numerical rank and median
          condition number of ∂(block output)/∂image, and each attention layer's local
          Jacobian; for the LM, the logits-by-embedding spectrum per token (diagonal blocks
          ∂logits_t/∂e_t) and the last token's causal row ∂logits_T/∂e_s, and the rank of
          each block's output by the token embeddings. Returns the same numbers as a dict.
Runtime:  ~25 s on 2 CPU cores (quick: ~10 s)

Both models are written the way public NNX model zoos write them (random initialisation,
tiny configs) and are analysed with no wrapper:
* the transformer's `__call__(images, *, rngs)` takes a keyword-only `rngs` (for Dropout):
  it is passed with `model_kwargs`, and `model.eval()` makes the pass deterministic;
* the LM takes integer token ids, a `KVCache` module it writes on every call, and segment
  ids; `wrt="embed"` differentiates by the token embeddings while the model runs from its ids.
Nothing here is special to the library; the same calls work on your own models.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry import data, probe, spectra


@dataclasses.dataclass(frozen=True)
class Config:
    images: int = 64       # digits analysed by the image transformer
    width: int = 32        # transformer width (both models)
    depth: int = 4         # blocks (both models)
    sequences: int = 16    # token sequences analysed by the LM
    tokens: int = 12       # sequence length
    vocab: int = 50


QUICK = Config(images=8, width=16, depth=2, sequences=4, tokens=6, vocab=20)


# ---- a ViT-style image transformer --------------------------------------------------------
class EncoderBlock(nnx.Module):
    def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.mlp_in = nnx.Linear(width, 2 * width, rngs=rngs)
        self.mlp_out = nnx.Linear(2 * width, width, rngs=rngs)
        self.dropout = nnx.Dropout(0.1)

    def __call__(self, tokens, *, rngs: nnx.Rngs):  # (T, width)
        tokens = tokens + self.dropout(self.attention(self.attention_norm(tokens)), rngs=rngs)
        hidden = jax.nn.gelu(self.mlp_in(self.mlp_norm(tokens)))
        return tokens + self.dropout(self.mlp_out(hidden), rngs=rngs)


class ImageTransformer(nnx.Module):
    """8×8×1 images → 2×2 patches of 4×4 pixels + a class token → blocks → class-token logits."""

    def __init__(self, width: int, depth: int, classes: int, rngs: nnx.Rngs):
        self.patch_embed = nnx.Conv(1, width, kernel_size=(4, 4), strides=(4, 4), rngs=rngs)
        self.class_token = nnx.Param(jnp.zeros((1, width)))
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (5, width)))
        self.blocks = nnx.List([EncoderBlock(width, 4, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, classes, rngs=rngs)

    def __call__(self, images, *, rngs: nnx.Rngs):  # (8, 8, 1): one image, as zoos' per-example code
        patches = self.patch_embed(images).reshape(-1, self.head.in_features)  # (4, width)
        tokens = jnp.concatenate([self.class_token[...], patches]) + self.position[...]
        for block in self.blocks:
            tokens = block(tokens, rngs=rngs)
        return self.head(self.norm(tokens)[0])


# ---- a decoder-only LM: RMSNorm, grouped-query attention with RoPE, a KV cache, SwiGLU -----
class KVCache(nnx.Module):
    """Keys and values of every layer, written by each call (what a decode step reads back)."""

    def __init__(self, depth: int, length: int, kv_heads: int, head_dim: int):
        self.keys = nnx.Cache(jnp.zeros((depth, length, kv_heads, head_dim)))
        self.values = nnx.Cache(jnp.zeros((depth, length, kv_heads, head_dim)))


def rotary(x, positions):  # x (T, heads, head_dim): rotate feature pairs by position-dependent angles
    half = x.shape[-1] // 2
    frequencies = 1.0 / (10_000 ** (jnp.arange(half) / half))
    angles = positions[:, None, None].astype(frequencies.dtype) * frequencies[None, None, :]  # (T, 1, half)
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * jnp.cos(angles) - second * jnp.sin(angles),
                            first * jnp.sin(angles) + second * jnp.cos(angles)], axis=-1)


class GroupedQueryAttention(nnx.Module):
    def __init__(self, width: int, heads: int, kv_heads: int, index: int, rngs: nnx.Rngs):
        self.heads, self.kv_heads, self.head_dim, self.index = heads, kv_heads, width // heads, index
        self.query = nnx.Linear(width, width, use_bias=False, rngs=rngs)
        self.key_value = nnx.Linear(width, 2 * kv_heads * self.head_dim, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(width, width, use_bias=False, rngs=rngs)

    def __call__(self, h, *, cache: KVCache, segment_ids, positions):  # h (T, width)
        t = h.shape[0]
        q = rotary(self.query(h).reshape(t, self.heads, self.head_dim), positions)
        k, v = jnp.split(self.key_value(h).reshape(t, 2 * self.kv_heads, self.head_dim), 2, axis=1)
        k = rotary(k, positions)
        cache.keys[...] = cache.keys[...].at[self.index, :t].set(k)
        cache.values[...] = cache.values[...].at[self.index, :t].set(v)
        group = self.heads // self.kv_heads
        k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)  # (T, heads, head_dim)
        scores = jnp.einsum("thd,shd->hts", q, k) / jnp.sqrt(1.0 * self.head_dim)
        allowed = (segment_ids[:, None] == segment_ids[None, :]) & jnp.tril(jnp.ones((t, t), bool))
        weights = jax.nn.softmax(jnp.where(allowed, scores, -1e9), axis=-1)
        return self.out(jnp.einsum("hts,shd->thd", weights, v).reshape(t, -1))


class DecoderBlock(nnx.Module):
    def __init__(self, width: int, index: int, rngs: nnx.Rngs):
        self.attention_norm = nnx.RMSNorm(width, rngs=rngs)
        self.attention = GroupedQueryAttention(width, heads=4, kv_heads=2, index=index, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(width, rngs=rngs)
        self.gate = nnx.Linear(width, 2 * width, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(width, 2 * width, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(2 * width, width, use_bias=False, rngs=rngs)

    def __call__(self, h, *, cache, segment_ids, positions):
        h = h + self.attention(self.attention_norm(h), cache=cache, segment_ids=segment_ids, positions=positions)
        x = self.mlp_norm(h)
        return h + self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class DecoderLM(nnx.Module):
    def __init__(self, vocab: int, width: int, depth: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.blocks = nnx.List([DecoderBlock(width, i, rngs) for i in range(depth)])
        self.norm = nnx.RMSNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens, *, cache: KVCache, segment_ids, positions=None):  # tokens (T,) int
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"token ids must be integers, got {tokens.dtype}")
        positions = jnp.arange(tokens.shape[0]) if positions is None else positions
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h, cache=cache, segment_ids=segment_ids, positions=positions)
        return self.head(self.norm(h))


# ---- the analysis: the library's calls, nothing else ----------------------------------------
def _spectrum_summary(values, matrix_shape: tuple[int, int]) -> dict:
    """values (N, ..., r) descending singular values of (m, n) matrices -> median rank and
    condition number (on the min(m, n) singular values: the row space of a wide Jacobian)."""
    summary = spectra.summarize_singular_values(values, matrix_shape, jnp.float32)
    return {"numerical_rank_median": float(np.median(summary["numerical_rank"])), "full": min(matrix_shape),
            "condition_number_median": float(np.median(summary["condition_number"]))}


def _size(shape) -> int:
    return int(np.prod(shape.shape))


def vit(config: Config = Config()):
    """(the image transformer in eval mode, its call's keyword arguments): a factory for
    `python -m geometry.report examples.published_model:vit --data digits --shape 8,8,1`."""
    model = ImageTransformer(config.width, config.depth, 10, nnx.Rngs(0))
    model.eval()
    return model, {"rngs": nnx.Rngs(1)}


def analyse_image_transformer(config: Config) -> dict:
    model = ImageTransformer(config.width, config.depth, 10, nnx.Rngs(0))
    model.eval()  # Dropout off: a Jacobian of a deterministic function
    images = data.load_digits()[0][: config.images].reshape(-1, 8, 8, 1)
    kwargs = {"rngs": nnx.Rngs(1)}  # the keyword-only argument of __call__, held fixed
    found = probe.plan(model, images[0], model_kwargs=kwargs)  # every layer, its input and output shapes
    pixels = images[0].size
    blocks = probe.input_jacobian_field(model, images, ["blocks/*", "head"], model_kwargs=kwargs,
                                        as_matrix=True, reduce=spectra.singular_values)
    attention = probe.local_jacobian_field(model, images, "blocks/*/attention", model_kwargs=kwargs,
                                           as_matrix=True, reduce=spectra.singular_values)
    return {"layers": list(found.keys),
            "blocks": {k: _spectrum_summary(v, (_size(found.outputs[k]), pixels)) for k, v in blocks.items()},
            "attention_local": {k: _spectrum_summary(v, (_size(found.outputs[k]), _size(found.inputs[k])))
                                for k, v in attention.items()}}


def analyse_language_model(config: Config) -> dict:
    model = DecoderLM(config.vocab, config.width, config.depth, nnx.Rngs(2))
    tokens = np.random.default_rng(0).integers(0, config.vocab, (config.sequences, config.tokens), dtype=np.int32)
    head_dim = config.width // 4
    segment_ids = jnp.zeros(config.tokens, jnp.int32)
    kwargs = {"cache": KVCache(config.depth, config.tokens, 2, head_dim), "segment_ids": segment_ids}
    found = probe.plan(model, tokens[0], model_kwargs=kwargs)
    embedded = _size(found.outputs["embed"])
    per_token = probe.token_jacobians(model, tokens, "head", wrt="embed", pairs="diagonal", model_kwargs=kwargs)
    last_row = probe.token_jacobians(model, tokens, "head", wrt="embed", pairs="last_row", model_kwargs=kwargs)
    by_embedding = probe.input_jacobian_field(model, tokens, "blocks/*", wrt="embed", model_kwargs=kwargs,
                                              as_matrix=True, reduce=spectra.singular_values)
    attention = probe.local_singular_values(model, tokens, ["blocks/*/attention", "blocks/*/attention_norm"],
                                            model_kwargs=kwargs)
    per_token_values = spectra.singular_values(per_token)  # (N, T, r)
    last_row_norms = np.linalg.norm(np.asarray(last_row), axis=(-2, -1))  # (N, T): ‖∂logits_T/∂e_s‖_F
    return {
        "logits_by_embedding_per_token": [_spectrum_summary(per_token_values[:, t], (config.vocab, config.width))
                                          for t in range(config.tokens)],
        "last_token_row_norm_median": np.median(last_row_norms, axis=0).tolist(),
        "blocks_by_embedding": {k: _spectrum_summary(v, (_size(found.outputs[k]), embedded))
                                for k, v in by_embedding.items()},
        "attention_local": {k: {"structure": v["structure"], **_spectrum_summary(
                                v["values"], (_size(found.outputs[k]), _size(found.inputs[k])))}
                            for k, v in attention.items()},
        "cache_untouched": bool(np.all(np.asarray(kwargs["cache"].keys[...]) == 0)),
    }


def main(config: Config = Config()) -> dict:
    return {"image_transformer": analyse_image_transformer(config), "language_model": analyse_language_model(config)}


def report(results: dict) -> None:
    vit, lm = results["image_transformer"], results["language_model"]
    print("image transformer: ∂(output)/∂image, median over images")
    for name, row in {**vit["blocks"], **{f"{k} (local)": v for k, v in vit["attention_local"].items()}}.items():
        print(f"  {name:28s} rank {row['numerical_rank_median']:5.1f}/{row['full']:<4d} "
              f"condition {row['condition_number_median']:.3g}")
    print("language model: ∂logits_t/∂e_t per token (rank, condition); ‖∂logits_T/∂e_s‖ along the last row")
    for t, row in enumerate(lm["logits_by_embedding_per_token"]):
        print(f"  token {t:2d}  rank {row['numerical_rank_median']:4.1f}/{row['full']}  "
              f"condition {row['condition_number_median']:8.3g}  last-row norm {lm['last_token_row_norm_median'][t]:.3g}")
    for name, row in {**lm["blocks_by_embedding"], **lm["attention_local"]}.items():
        extra = f" ({row['structure']})" if "structure" in row else ""
        print(f"  {name:28s} rank {row['numerical_rank_median']:5.1f}/{row['full']:<4d} "
              f"condition {row['condition_number_median']:.3g}{extra}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs, a few points")
    report(main(QUICK if parser.parse_args().quick else Config()))
