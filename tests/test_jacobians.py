"""jacobian_field and the per-layer Jacobians against the closed form D_φ W, finite
differences, and the ReLU rank identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import activations, jacobians, models, probe, spectra

SMOOTH = [n for n in activations.NAMES if activations.get(n).smooth]


def _points(n, count=64, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(count, n)).astype(dtype)


def _rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("name", activations.NAMES)
def test_single_layer_field_equals_closed_form_float32(name):
    layer = models.MLP(3, 40, depth=1, activation=name, sigma_b2=0.1, init="gaussian", rngs=nnx.Rngs(1))
    x = _points(3)
    field = jacobians.jacobian_field(layer, x)  # (N, 40, 3)
    W = layer.layers[0].dense.effective_weight()
    z = x @ np.asarray(W).T + np.asarray(layer.layers[0].dense.bias[...])
    closed = layer.activation.derivative(jnp.asarray(z))[:, :, None] * W[None]  # D_φ(z) W
    assert _rel_err(field, closed) <= 1e-5


@pytest.mark.parametrize("variant", [{}, {"residual": True}, {"norm": "layernorm"}, {"spectral_norm": True}])
@pytest.mark.parametrize("name", ["relu", "tanh", "gelu", "softplus"])
def test_deep_field_equals_closed_form_float64(name, variant, x64):
    model = models.MLP(4, 24, depth=5, activation=name, sigma_b2=0.05, init="gaussian", sigma_w2=1.5,
                       dtype=jnp.float64, rngs=nnx.Rngs(2), **variant)
    x = _points(4, 32, dtype=np.float64)
    closed = jax.vmap(lambda p: models.closed_form_input_jacobians(model, p))(x)
    for mode in ("forward", "reverse"):
        field = probe.input_jacobian_field(model, x, "layers/*", mode=mode)  # L arrays (N, 24, 4)
        for l, (a, b) in enumerate(zip(field.values(), closed)):
            assert _rel_err(a, b) <= 1e-12, f"layer {l}, {mode}"


@pytest.mark.parametrize("name", SMOOTH)
def test_field_matches_central_finite_differences(name, x64):
    model = models.MLP(2, 16, depth=3, out_features=3, activation=name, dtype=jnp.float64, rngs=nnx.Rngs(3))
    x = _points(2, 16, dtype=np.float64)
    field = jacobians.jacobian_field(model, x)
    h = 1e-6
    columns = [(jax.vmap(model)(x + h * e) - jax.vmap(model)(x - h * e)) / (2 * h) for e in np.eye(2)]
    finite_difference = jnp.stack(columns, axis=-1)
    np.testing.assert_allclose(field, finite_difference, rtol=1e-7, atol=1e-8)


def test_local_jacobians_chain_to_input_jacobians(x64):
    model = models.MLP(3, (8, 6, 5), activation="tanh", residual=True, dtype=jnp.float64, rngs=nnx.Rngs(4))
    x = _points(3, 7, dtype=np.float64)
    per_layer = list(probe.local_jacobian_field(model, x, "layers/*").values())
    assert [j.shape for j in per_layer] == [(7, 8, 3), (7, 6, 8), (7, 5, 6)]
    chained = per_layer[0]
    for l, total in enumerate(probe.input_jacobian_field(model, x, "layers/*").values()):
        if l:
            chained = per_layer[l] @ chained
        np.testing.assert_allclose(chained, total, rtol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.float64, 1e-13)])
def test_chunked_equals_unchunked(dtype, tolerance):
    # float32 differs in the last bits only: XLA blocks the matmuls differently per batch size
    with jax.enable_x64(dtype == jnp.float64):
        model = models.MLP(2, 32, depth=4, activation="gelu", dtype=dtype, rngs=nnx.Rngs(5))
        x = _points(2, 1001, dtype=dtype)
        unchunked = jacobians.jacobian_field(model, x, chunk_size=len(x))
        for chunk in (1, 7, 128, 1000):
            assert _rel_err(jacobians.jacobian_field(model, x, chunk_size=chunk), unchunked) <= tolerance


def test_reduce_keeps_only_the_summary():
    model = models.MLP(2, 32, depth=4, activation="tanh", rngs=nnx.Rngs(6))
    x = _points(2, 300)
    sigma = jacobians.jacobian_field(model, x, chunk_size=64, reduce=spectra.singular_values)
    assert sigma.shape == (300, 2)
    np.testing.assert_allclose(sigma, spectra.singular_values(jacobians.jacobian_field(model, x)), rtol=1e-5)


def test_relu_rank_equals_rank_of_active_rows(x64):
    rng = np.random.default_rng(7)
    shapes = [(2, 3), (3, 5), (4, 8), (5, 5)]  # (n, m); few shapes, so few compilations
    for trial, (n, m) in enumerate(shapes * 4):
        layer = models.MLP(n, m, depth=1, activation="relu", init="gaussian", sigma_b2=0.5,
                           dtype=jnp.float64, rngs=nnx.Rngs(trial))
        x = rng.normal(size=(100, n))
        J = jacobians.jacobian_field(layer, x)
        W = np.asarray(layer.layers[0].dense.weight[...])
        z = x @ W.T + np.asarray(layer.layers[0].dense.bias[...])
        expected = [np.linalg.matrix_rank(W[zi > 0]) if np.any(zi > 0) else 0 for zi in z]
        np.testing.assert_array_equal(spectra.numerical_rank(J), expected)


@pytest.mark.parametrize("seed", range(6))
def test_relu_rank_identity_through_depth(seed):
    # rank ∂h_l/∂x = min(n₀, k₁, …, k_l), k_i = number of active units at layer i
    model = models.MLP(6, (7, 5, 9, 4, 8), activation="relu", rngs=nnx.Rngs(seed))
    x = _points(6, 200, seed=seed)
    fields = probe.input_jacobian_field(model, x, "layers/*").values()
    preactivations = probe.inputs(model, x, "layers/*/activation").values()
    bound = np.full(len(x), 6)
    for J, a in zip(fields, preactivations):
        bound = np.minimum(bound, np.asarray(jnp.sum(a > 0, axis=-1)))
        np.testing.assert_array_equal(spectra.numerical_rank(J), bound)


def test_bad_points_raise_named_errors(nans_allowed):
    model = models.MLP(2, 8, depth=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"one point of shape \(3,\).*batched=True"):
        jacobians.jacobian_field(model, np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
        jacobians.jacobian_field(model, np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        jacobians.jacobian_field(model, np.ones((0, 2)))
    with pytest.raises(ValueError, match=r"one point of shape \(\)"):
        jacobians.jacobian_field(model, np.ones(2))
    with pytest.raises(ValueError, match=r"argument points is .*expected an array .* of shape \(N \*input\)"):
        jacobians.jacobian_field(model, np.float32(1.0))  # a scalar: no point axis (the annotation says so)
    with pytest.raises(ValueError, match="leading point axis"):
        jacobians.check_points(np.float32(1.0))
    with pytest.raises(ValueError, match="chunk_size"):
        jacobians.jacobian_field(model, np.ones((3, 2)), chunk_size=0)
    with pytest.raises(ValueError, match="unknown mode 'sideways'"):
        jacobians.jacobian_field(model, np.ones((3, 2)), mode="sideways")
    with pytest.raises(ValueError, match=r"one point of shape \(3,\)"):
        jacobians.jacobian_field(lambda v: jnp.ones((4, 2)) @ v, np.ones((5, 3)))


def test_layernorm_after_bias_free_layer_nearly_kills_the_input_direction(x64):
    # LN(c z) = (c z − c μ)/√(c² var + ε): d/dc at c = 1 is (z − μ) ε / s³, s² = var + ε. So
    # J x = φ'(a) ⊙ (z − μ) ε / s³ — zero but for LayerNorm's ε: x is a near-null direction.
    model = models.MLP(5, 12, depth=1, activation="tanh", norm="layernorm", dtype=jnp.float64, rngs=nnx.Rngs(8))
    x = jnp.asarray(_points(5, 1, dtype=np.float64)[0])
    J = jacobians.jacobian_field(model, x[None])[0]
    z = model.layers[0].dense(x)
    epsilon = model.layers[0].norm.epsilon
    s = jnp.sqrt(z.var() + epsilon)
    a = model.layers[0].norm(z)
    expected = model.activation.derivative(a) * (z - z.mean()) * epsilon / s**3
    np.testing.assert_allclose(J @ x, expected, rtol=1e-8, atol=1e-18)
    sigma = spectra.singular_values(J)
    assert float(sigma[-1] / sigma[0]) < 1e-5  # float32 calls this rank 4 of 5


@pytest.mark.parametrize("variant", [{"norm": "layernorm"}, {"residual": True}, {}])
def test_large_jitted_fields_equal_the_closed_form_float32(variant):
    # regression: flax's nnx.LayerNorm gave wrong Jacobians under jit(vmap(jacfwd)) beyond ~32 points
    model = models.MLP(16, 128, depth=2, activation="tanh", rngs=nnx.Rngs(9), **variant)
    x = _points(16, 512, seed=9)
    field = probe.input_jacobian_field(model, x, "layers/*").values()
    closed = jax.vmap(lambda p: models.closed_form_input_jacobians(model, p))(jnp.asarray(x))
    for a, b in zip(field, closed):
        assert _rel_err(a, b) <= 1e-5
