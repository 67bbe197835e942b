"""A small causal transformer language model (Flax NNX) that exposes its geometry.

    h₀ = E[tokens] + P[positions]
    h ← h + Attn(LN(h))          (multi-head, causal, scores q·k / √d_k)
    h ← h + W₂ GELU(W₁ LN(h))    (hidden width 4d)
    features = LN_final(h)       (what the head sees: the "last-layer features")
    logits = W_head features + b_head

Like every model here it takes one example, a (T,) int array of token ids, and is
batched with `jax.vmap`. `trace(tokens)` returns the features, every layer's attention
weights (layers, heads, T, T) and the logits, so collapse metrics and attention entropy
are read from the same forward pass the loss uses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from geometry.models import Dense, LayerNorm, gaussian

EMBEDDING_STD = 0.02


class LMTrace(NamedTuple):
    features: jax.Array  # (T, d) final-LayerNorm output
    attention: jax.Array  # (layers, heads, T, T); row t sums to 1 over keys s ≤ t
    logits: jax.Array  # (T, V)


class CausalSelfAttention(nnx.Module):
    def __init__(self, width: int, heads: int, depth: int, *, rngs: nnx.Rngs):
        self.heads, self.head_dim = heads, width // heads
        self.qkv = Dense(width, 3 * width, init="gaussian", rngs=rngs)
        # residual branches scaled down with depth so h keeps its scale at init
        self.out = Dense(width, width, init="gaussian", sigma_w2=1.0 / (2 * depth), rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        length = x.shape[0]
        q, k, v = jnp.split(self.qkv(x).reshape(length, 3 * self.heads, self.head_dim), 3, axis=1)  # (T, H, d_k)
        scores = jnp.einsum("thd,shd->hts", q, k) / math.sqrt(self.head_dim)  # (H, T, T)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))[None]
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)  # (H, T, T)
        mixed = jnp.einsum("hts,shd->thd", weights, v).reshape(length, -1)
        return self.out(mixed), weights


class Block(nnx.Module):
    def __init__(self, width: int, heads: int, depth: int, *, rngs: nnx.Rngs):
        self.attention_norm = LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, depth, rngs=rngs)
        self.mlp_norm = LayerNorm(width)
        self.mlp_in = Dense(width, 4 * width, init="gaussian", rngs=rngs)
        self.mlp_out = Dense(4 * width, width, init="gaussian", sigma_w2=1.0 / (2 * depth), rngs=rngs)

    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        update, weights = self.attention(self.attention_norm(h))
        h = h + update
        h = h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(h)), approximate=False))
        return h, weights


class CausalLM(nnx.Module):
    """Decoder-only transformer: `CausalLM(vocab_size, width=, depth=, heads=, context=, rngs=)`."""

    def __init__(self, vocab_size: int, *, width: int, depth: int, heads: int, context: int, rngs: nnx.Rngs):
        if min(vocab_size, width, depth, heads, context) < 1:
            raise ValueError(f"sizes must be positive, got vocab={vocab_size}, width={width}, depth={depth}, "
                             f"heads={heads}, context={context}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.vocab_size, self.width, self.depth, self.heads, self.context = vocab_size, width, depth, heads, context
        self.token_embedding = nnx.Param(EMBEDDING_STD * gaussian(rngs.params(), (vocab_size, width)))
        self.position_embedding = nnx.Param(EMBEDDING_STD * gaussian(rngs.params(), (context, width)))
        self.blocks = nnx.List([Block(width, heads, depth, rngs=rngs) for _ in range(depth)])
        self.final_norm = LayerNorm(width)
        self.head = Dense(width, vocab_size, init="xavier", rngs=rngs)

    def _check_tokens(self, tokens: jax.Array) -> None:
        if tokens.ndim != 1 or not 1 <= tokens.shape[0] <= self.context:
            raise ValueError(f"CausalLM takes one sequence of 1..{self.context} token ids (batch with jax.vmap), "
                             f"got shape {tuple(tokens.shape)}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")

    def trace(self, tokens: jax.Array) -> LMTrace:
        self._check_tokens(tokens)
        length = tokens.shape[0]
        h = self.token_embedding[...][tokens] + self.position_embedding[...][:length]  # (T, d)
        attention = []
        for block in self.blocks:
            h, weights = block(h)
            attention.append(weights)
        features = self.final_norm(h)
        return LMTrace(features, jnp.stack(attention), self.head(features))

    def features(self, tokens: jax.Array) -> jax.Array:
        return self.trace(tokens).features

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.trace(tokens).logits


def attention_entropy(weights: jax.Array) -> jax.Array:
    """Entropy −Σ_s p_ts log p_ts of each attention row (nats); weights (..., T, T) → (..., T).
    A uniform row over the t + 1 visible keys has entropy log(t + 1)."""
    return -jnp.sum(jnp.where(weights > 0, weights * jnp.log(jnp.where(weights > 0, weights, 1.0)), 0.0), axis=-1)


def embedding_anisotropy(embeddings: jax.Array) -> float:
    """Mean cosine over distinct pairs of rows (0 for isotropic directions, 1 for one shared direction)."""
    unit = embeddings / jnp.linalg.norm(embeddings, axis=-1, keepdims=True)
    count = unit.shape[0]
    total = jnp.sum(unit, axis=0)
    # Σ_{i≠j} cos_ij = ‖Σ_i u_i‖² − n, without forming the (n, n) Gram matrix
    return float((jnp.dot(total, total) - count) / (count * (count - 1)))
