"""Kernel layers: Jacobians against their closed forms, PSD facts of the Yat kernel, RKHS norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import jacobians, kernels, models, probe


def _float64(model):
    """The model with float64 parameters (the same values: float32 is exact in float64)."""
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)


def _points(n, count, seed=0):
    return np.random.default_rng(seed).normal(size=(count, n))


@pytest.mark.parametrize("constrained", [True, False])
def test_yat_jacobian_closed_form(constrained, x64):
    layer = _float64(models.YatDense(3, 7, constrained=constrained, bias=-0.3 if not constrained else 0.4,
                                     rngs=nnx.Rngs(0)))
    x = _points(3, 50)
    field = jacobians.jacobian_field(layer, x)  # (N, 7, 3)
    w, b, eps, alpha = (np.asarray(a) for a in (layer.weight[...], layer.bias(), layer.epsilon(), layer.scale[...]))
    s = x @ w.T + b  # (N, 7)
    q = ((x[:, None, :] - w[None]) ** 2).sum(-1) + eps
    closed = (alpha * 2 * s / q)[..., None] * (w[None] - (s / q)[..., None] * (x[:, None, :] - w[None]))
    np.testing.assert_allclose(field, closed, rtol=1e-11, atol=1e-13)
    if constrained:
        assert np.all(b > 0)
    else:
        np.testing.assert_allclose(b, -0.3)


def test_rbf_jacobian_closed_form(x64):
    layer = _float64(models.RBFDense(2, 5, sigma=0.7, rngs=nnx.Rngs(1)))
    x = _points(2, 40)
    field = jacobians.jacobian_field(layer, x)
    c, sigma = np.asarray(layer.centers[...]), np.asarray(layer.sigma())
    y = np.exp(-((x[:, None, :] - c[None]) ** 2).sum(-1) / (2 * sigma**2))
    closed = -(y / sigma**2)[..., None] * (x[:, None, :] - c[None])
    np.testing.assert_allclose(field, closed, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(sigma, 0.7, rtol=1e-12)


def test_kernel_mlp_chain_and_errors(x64):
    model = _float64(models.KernelMLP(2, 6, 4, 2, 3, kernel="yat", rngs=nnx.Rngs(2)))
    x = jnp.asarray(_points(2, 1)[0])
    hidden = probe.outputs(model, x[None], "mixers/*")
    h1 = model.mixers[0](model.kernel_layers[0](x))
    np.testing.assert_allclose(hidden["mixers/0"][0], h1, rtol=1e-12)
    np.testing.assert_allclose(model(x), model.readout(model.mixers[1](model.kernel_layers[1](h1))), rtol=1e-12)
    np.testing.assert_allclose(model.features(x), hidden["mixers/1"][0], rtol=1e-12)
    with pytest.raises(ValueError, match="unknown kernel"):
        models.KernelMLP(2, 6, 4, 1, 2, kernel="poly", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="last axis 2"):
        model(jnp.ones(3))


def test_yat_gram_is_psd_for_nonnegative_b_and_not_always_for_negative(x64):
    rng = np.random.default_rng(3)
    negative_found = False
    for trial in range(20):
        X = rng.normal(size=(40, 3))
        for b in (0.0, 0.5, 2.0):
            K = kernels.gram(kernels.yat, X, b=b, epsilon=0.1)
            lam = np.linalg.eigvalsh(np.asarray(K))
            assert lam[0] >= -1e-6 * lam[-1], (trial, b, lam[0])
            assert bool(kernels.is_psd(K))
        K = kernels.gram(kernels.yat, X, b=-1.0, epsilon=0.1)
        negative_found |= float(kernels.min_eigenvalue(K)) < -1e-6 * float(np.abs(np.linalg.eigvalsh(K)).max())
    assert negative_found
    np.testing.assert_allclose(kernels.yat(jnp.array([1.0, 2.0]), jnp.array([0.0, 1.0]), b=1.0, epsilon=0.5),
                               9.0 / 2.5, rtol=1e-12)
    np.testing.assert_allclose(kernels.rbf(jnp.zeros(2), jnp.ones(2), sigma=2.0), np.exp(-2 / 8), rtol=1e-12)


def test_rkhs_norm(x64):
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(10, 2))
    K = kernels.gram(kernels.rbf, Z, sigma=0.8)
    alpha = rng.normal(size=10)
    np.testing.assert_allclose(kernels.rkhs_norm(alpha, K), alpha @ np.asarray(K) @ alpha, rtol=1e-12)
    two = rng.normal(size=(10, 2))
    np.testing.assert_allclose(kernels.rkhs_norm(two, K), np.diag(two.T @ np.asarray(K) @ two), rtol=1e-12)
    # the norm of f = Σ α_j k(·, z_j) equals ⟨f, f⟩ computed from f's values at the z_j: αᵀ K α ≥ 0
    assert float(kernels.rkhs_norm(alpha, K)) > 0


def test_layers_accept_leading_batch_axes():
    x = jnp.asarray(_points(2, 6).reshape(3, 2, 2), dtype=jnp.float32)
    for layer in (models.YatDense(2, 4, rngs=nnx.Rngs(0)), models.RBFDense(2, 4, rngs=nnx.Rngs(0)),
                  models.Dense(2, 4, rngs=nnx.Rngs(0))):
        batched = layer(x)
        single = jax.vmap(jax.vmap(layer))(x)
        np.testing.assert_allclose(batched, single, rtol=1e-6)


def test_shared_yat_layer_is_a_single_kernel(x64):
    # with shared (b, ε) and no scale, unit j is exactly kernels.yat(x, w_j): a kernel machine
    layer = _float64(models.YatDense(2, 5, shared=True, bias=0.3, epsilon=0.2, rngs=nnx.Rngs(5)))
    assert layer.scale is None and layer.bias_raw[...].shape == (1,)
    x = jnp.asarray(_points(2, 1)[0])
    expected = jax.vmap(lambda w: kernels.yat(x, w, b=float(layer.bias()[0]), epsilon=float(layer.epsilon()[0])))(
        layer.weight[...])
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12)
