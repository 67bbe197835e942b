"""MLP construction options and initialisation statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import models, probe


def test_probe_reads_preactivations_and_hidden_states():
    model = models.MLP(3, (5, 4), out_features=2, activation="tanh", rngs=nnx.Rngs(0))
    x = jnp.array([0.3, -1.0, 2.0])
    pre = list(probe.inputs(model, x[None], "layers/*/activation").values())
    hidden = list(probe.outputs(model, x[None], "layers/*").values())
    W1, b1 = model.layers[0].dense.weight[...], model.layers[0].dense.bias[...]
    np.testing.assert_allclose(pre[0][0], W1 @ x + b1, rtol=1e-6)
    np.testing.assert_allclose(hidden[0][0], jnp.tanh(W1 @ x + b1), rtol=1e-6)
    W2, b2 = model.layers[1].dense.weight[...], model.layers[1].dense.bias[...]
    np.testing.assert_allclose(hidden[1][0], jnp.tanh(W2 @ hidden[0][0] + b2), rtol=1e-6)
    np.testing.assert_allclose(model.features(x), hidden[1][0], rtol=1e-6)
    Wo, bo = model.readout.weight[...], model.readout.bias[...]
    np.testing.assert_allclose(model(x), Wo @ hidden[1][0] + bo, rtol=1e-6)
    batched = jax.vmap(model)(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(batched[0], model(x), rtol=1e-6)


@pytest.mark.parametrize(
    "init, sigma_w2, expected",
    [("he", None, 2.0), ("gaussian", 1.7, 1.7), ("xavier", None, 2 * 400 / (400 + 300))],
)
def test_gaussian_init_variances(init, sigma_w2, expected):
    dense = models.Dense(400, 300, init=init, sigma_w2=sigma_w2, rngs=nnx.Rngs(1))
    w = np.asarray(dense.weight[...])
    # fan_in · Var(W_ij) estimated from 120k entries: relative standard error ≈ 0.4%
    np.testing.assert_allclose(400 * w.var(), expected, rtol=0.02)


def test_orthogonal_init_and_spectral_norm(x64):
    dense = models.Dense(64, 64, init="orthogonal", sigma_w2=2.0, dtype=jnp.float64, rngs=nnx.Rngs(2))
    w = np.asarray(dense.weight[...])
    np.testing.assert_allclose(w @ w.T, 2.0 * np.eye(64), atol=1e-10)
    spectral = models.Dense(30, 50, spectral_norm=True, dtype=jnp.float64, rngs=nnx.Rngs(3))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(spectral.effective_weight()), 2), 1.0, rtol=1e-12)


def test_bias_variance():
    dense = models.Dense(10, 20_000, sigma_b2=0.3, rngs=nnx.Rngs(4))
    np.testing.assert_allclose(np.asarray(dense.bias[...]).var(), 0.3, rtol=0.05)
    assert np.all(np.asarray(models.Dense(10, 5, rngs=nnx.Rngs(4)).bias[...]) == 0)


def test_residual_and_layernorm_forward():
    model = models.MLP(4, 4, depth=2, activation="relu", residual=True, norm="layernorm", rngs=nnx.Rngs(5))
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    z = model.layers[0].dense(x)
    a = (z - z.mean()) / jnp.sqrt(z.var() + 1e-6)  # LayerNorm at init: scale 1, bias 0
    np.testing.assert_allclose(probe.inputs(model, x[None], "layers/0/activation")["layers/0/activation"][0], a,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.layers[0](x), x + jax.nn.relu(a), rtol=1e-5, atol=1e-6)


def test_bad_configurations_raise():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="unknown activation"):
        models.MLP(2, 4, depth=1, activation="swish", rngs=rngs)
    with pytest.raises(ValueError, match="unknown init"):
        models.MLP(2, 4, depth=1, init="kaiming", rngs=rngs)
    with pytest.raises(ValueError, match="sigma_w2 applies"):
        models.MLP(2, 4, depth=1, init="he", sigma_w2=2.0, rngs=rngs)
    with pytest.raises(ValueError, match="unknown norm"):
        models.MLP(2, 4, depth=1, norm="batchnorm", rngs=rngs)
    with pytest.raises(ValueError, match="give depth"):
        models.MLP(2, 4, rngs=rngs)
    with pytest.raises(ValueError, match="depth=3 but 2 widths"):
        models.MLP(2, (4, 4), depth=3, rngs=rngs)
    with pytest.raises(ValueError, match="last axis 2"):
        models.MLP(2, 4, depth=1, rngs=rngs)(jnp.ones(3))
