"""A small causal transformer language model (Flax NNX) that exposes its geometry.

    h₀ = E[tokens] + P[positions]
    h ← h + Attn(LN(h))          (multi-head, causal, scores q·k / √d_k)
    h ← h + W₂ GELU(W₁ LN(h))    (hidden width 4d)
    features = LN_final(h)       (what the head sees: the "last-layer features")
    logits = W_head features + b_head

Like every model here it takes one example, a (T,) int array of token ids, and is
batched with `jax.vmap`. Its internals are submodules that `geometry.probe` reads by path,
as it reads any model's: the features are the output of "final_norm", layer l's attention
weights (heads, T, T) the output of "blocks/l/attention/probabilities", so collapse
metrics and attention entropy come from the same forward pass as the logits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from geometry.layers import Dense, LayerNorm, gaussian

EMBEDDING_STD = 0.02


class AttentionProbabilities(nnx.Module):
    """softmax over the keys s ≤ t of the scores (H, T, T): row t sums to 1 over s ≤ t."""

    def __call__(self, scores: jax.Array) -> jax.Array:
        length = scores.shape[-1]
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))[None]
        return jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(scores.dtype).min), axis=-1)


class CausalSelfAttention(nnx.Module):
    def __init__(self, width: int, heads: int, depth: int, *, rngs: nnx.Rngs):
        self.heads, self.head_dim = heads, width // heads
        self.qkv = Dense(width, 3 * width, init="gaussian", rngs=rngs)
        # residual branches scaled down with depth so h keeps its scale at init
        self.out = Dense(width, width, init="gaussian", sigma_w2=1.0 / (2 * depth), rngs=rngs)
        self.probabilities = AttentionProbabilities()

    def __call__(self, x: jax.Array) -> jax.Array:
        length = x.shape[0]
        q, k, v = jnp.split(self.qkv(x).reshape(length, 3 * self.heads, self.head_dim), 3, axis=1)  # (T, H, d_k)
        scores = jnp.einsum("thd,shd->hts", q, k) / math.sqrt(self.head_dim)  # (H, T, T)
        weights = self.probabilities(scores)  # (H, T, T)
        mixed = jnp.einsum("hts,shd->thd", weights, v).reshape(length, -1)
        return self.out(mixed)


class Block(nnx.Module):
    def __init__(self, width: int, heads: int, depth: int, *, rngs: nnx.Rngs):
        self.attention_norm = LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, depth, rngs=rngs)
        self.mlp_norm = LayerNorm(width)
        self.mlp_in = Dense(width, 4 * width, init="gaussian", rngs=rngs)
        self.mlp_out = Dense(4 * width, width, init="gaussian", sigma_w2=1.0 / (2 * depth), rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        h = h + self.attention(self.attention_norm(h))
        return h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(h)), approximate=False))


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

    def features(self, tokens: jax.Array) -> jax.Array:
        """The final-LayerNorm output (T, d): the last-layer features the head sees."""
        self._check_tokens(tokens)
        h = self.token_embedding[...][tokens] + self.position_embedding[...][: tokens.shape[0]]  # (T, d)
        for block in self.blocks:
            h = block(h)
        return self.final_norm(h)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.head(self.features(tokens))


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
