"""CausalLM against a float64 NumPy forward pass; causality; attention entropy; anisotropy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import language_model, models, probe, training

erf = np.vectorize(math.erf)


def numpy_forward(model, tokens):
    """The model's maths written out in float64 NumPy: (T,) ids -> (logits (T, V), attention (L, H, T, T))."""
    p = lambda a: np.asarray(a[...], dtype=np.float64)  # noqa: E731

    def dense(layer, x):
        return x @ p(layer.weight).T + p(layer.bias)

    def norm(layer, z):
        centred = z - z.mean(-1, keepdims=True)
        return centred / np.sqrt(centred.var(-1, keepdims=True) + layer.epsilon) * p(layer.scale) + p(layer.bias)

    T, heads = len(tokens), model.heads
    h = p(model.token_embedding)[tokens] + p(model.position_embedding)[:T]
    maps = []
    for block in model.blocks:
        qkv = dense(block.attention.qkv, norm(block.attention_norm, h))
        q, k, v = np.split(qkv, 3, axis=1)
        d_k = q.shape[1] // heads
        out, layer_maps = np.zeros_like(q), []
        for head in range(heads):
            cols = slice(head * d_k, (head + 1) * d_k)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d_k)
            scores[np.triu_indices(T, 1)] = -np.inf
            weights = np.exp(scores - scores.max(1, keepdims=True))
            weights /= weights.sum(1, keepdims=True)
            out[:, cols] = weights @ v[:, cols]
            layer_maps.append(weights)
        h = h + dense(block.attention.out, out)
        u = dense(block.mlp_in, norm(block.mlp_norm, h))
        h = h + dense(block.mlp_out, 0.5 * u * (1 + erf(u / math.sqrt(2))))
        maps.append(layer_maps)
    return dense(model.head, norm(model.final_norm, h)), np.array(maps)


@pytest.fixture(scope="module")
def model():
    return models.CausalLM(50, width=16, depth=2, heads=4, context=12, rngs=nnx.Rngs(3))


def test_forward_matches_float64_reference(model):
    tokens = np.random.default_rng(0).integers(0, 50, 12)
    weights = probe.outputs(model, tokens[None], "blocks/*/attention/probabilities")
    measured = np.stack([w[0] for w in weights.values()])  # (L, H, T, T)
    logits, attention = numpy_forward(model, tokens)
    np.testing.assert_allclose(model(jnp.asarray(tokens)), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(measured, attention, atol=1e-6)
    np.testing.assert_allclose(measured.sum(-1), 1.0, atol=1e-6)


def test_later_tokens_do_not_change_earlier_outputs(model):
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 50, 12))
    changed = tokens.at[7:].set((tokens[7:] + 1) % 50)
    before, after = model(tokens), model(changed)
    np.testing.assert_array_equal(before[:7], after[:7])  # exactly: masked keys get weight 0
    assert np.abs(np.asarray(before[7:] - after[7:])).max() > 1e-4


def test_attention_entropy_and_anisotropy_closed_forms():
    T = 6
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    np.testing.assert_allclose(language_model.attention_entropy(jnp.asarray(uniform)), np.log(np.arange(1, T + 1)),
                               atol=1e-6)
    np.testing.assert_allclose(language_model.attention_entropy(jnp.eye(T)), 0.0, atol=1e-7)
    rows = np.random.default_rng(2).standard_normal((30, 5)) + 0.7
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosines = (unit @ unit.T)[~np.eye(30, dtype=bool)]
    np.testing.assert_allclose(language_model.embedding_anisotropy(jnp.asarray(rows)), cosines.mean(), rtol=1e-5)


def test_training_learns_a_periodic_sequence():
    period = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32)  # "1" is followed by 4 or 5: position decides
    stream = np.tile(period, 64)
    inputs, targets = stream[:-1].reshape(-1, 7)[:-1], stream[1:].reshape(-1, 7)[:-1]
    lm = models.CausalLM(10, width=32, depth=1, heads=2, context=7, rngs=nnx.Rngs(0))
    config = training.TrainConfig(steps=150, learning_rate=1e-2, batch_size=16, optimizer="adamw", log_every=150,
                                  schedule="cosine", warmup_steps=10, clip_norm=1.0)
    training.train(lm, inputs, targets, config, log=lambda line: None)
    logits = jax.vmap(lm)(jnp.asarray(inputs))
    # after the first token of a window the next one is determined by the previous two: loss → 0
    loss = float(training.cross_entropy(logits[:, 2:], jnp.asarray(targets[:, 2:])))
    assert loss < 0.05, loss


def test_bad_input_is_named(model):
    with pytest.raises(ValueError, match="one sequence"):
        model(jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="one sequence"):
        model(jnp.zeros(13, jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        model(jnp.zeros(5))
    with pytest.raises(ValueError, match="divisible"):
        models.CausalLM(10, width=10, depth=1, heads=3, context=4, rngs=nnx.Rngs(0))
