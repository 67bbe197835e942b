"""Flax conventions at the boundary: functions taking a dense weight accept an nnx.Linear
(kernel (in, out)) or an array with its layout named, and wide Jacobians' spectra."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import collapse, layers, metric, spectra


def test_dense_weight_reads_every_layout():
    linear = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    kernel = np.asarray(linear.kernel[...])  # (in, out)
    np.testing.assert_array_equal(layers.dense_weight(linear), kernel.T)
    np.testing.assert_array_equal(layers.dense_weight(kernel, layout="in_out"), kernel.T)
    np.testing.assert_array_equal(layers.dense_weight(kernel.T), kernel.T)
    dense = layers.Dense(5, 3, spectral_norm=True, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(layers.dense_weight(dense)), 2), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown layout 'columns'"):
        layers.dense_weight(kernel, layout="columns")
    with pytest.raises(ValueError, match="must be 2-D"):
        layers.dense_weight(np.ones(3))
    with pytest.raises(ValueError, match="got a Conv module"):
        layers.dense_weight(nnx.Conv(1, 2, kernel_size=(3, 3), rngs=nnx.Rngs(0)))


def test_dense_layer_singular_values_take_a_flax_linear(x64):
    linear = nnx.Linear(6, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(2))
    derivatives = np.random.default_rng(0).uniform(0.1, 1.0, size=(7, 4))
    W = np.asarray(linear.kernel[...]).T  # (out, in)
    expected = np.linalg.svd(derivatives[:, :, None] * W[None], compute_uv=False)
    np.testing.assert_allclose(metric.dense_layer_singular_values(linear, derivatives), expected, rtol=1e-10)
    np.testing.assert_allclose(metric.dense_layer_singular_values(W.T, derivatives, layout="in_out"), expected,
                               rtol=1e-10)
    with pytest.raises(ValueError, match="looks like a Flax kernel.*layout='in_out'"):
        metric.dense_layer_singular_values(W.T, derivatives)


def test_collapse_head_from_an_nnx_linear():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    H = rng.normal(size=(60, 4)) + 3 * np.eye(3, 4)[y]
    head = nnx.Linear(4, 3, rngs=nnx.Rngs(3))
    W, b = np.asarray(head.kernel[...]).T, np.asarray(head.bias[...])
    expected = collapse.collapse_metrics(H, y, W, b)
    got = collapse.collapse_metrics(H, y, head)
    for key in ("nc3", "unc3", "nc4"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12)
    assert collapse.collapse_metrics(H, y, W.T, b, layout="in_out")["nc4"] == pytest.approx(expected["nc4"])
    with pytest.raises(ValueError, match="Flax kernel's \\(features, classes\\) layout"):
        collapse.collapse_metrics(H, y, W.T, b)


def test_wide_jacobian_spectra_are_taken_on_the_row_space(x64):
    J = np.random.default_rng(2).normal(size=(3, 8))  # m < n: at most 3 nonzero singular values
    sigma = np.linalg.svd(J, compute_uv=False)
    assert int(spectra.numerical_rank(J)) == 3
    np.testing.assert_allclose(spectra.log_volume(J), 0.5 * np.log(np.linalg.det(J @ J.T)), rtol=1e-12)
    np.testing.assert_allclose(spectra.condition_number(J), sigma[0] / sigma[2], rtol=1e-12)
