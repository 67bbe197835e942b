"""Declared activation facts are re-derived numerically; derivatives match autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geometry import activations

Z_MAX = 6.0  # beyond this tanh' underflows float64 differences; the facts hold on any window


def _grid():
    return jnp.linspace(-Z_MAX, Z_MAX, 24_001, dtype=jnp.float64)  # odd: contains 0


@pytest.mark.parametrize("name", activations.NAMES)
def test_derivative_matches_autodiff(name, x64):
    a = activations.get(name)
    z = _grid()
    np.testing.assert_allclose(a.derivative(z), jax.vmap(jax.grad(a.fn))(z), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", activations.NAMES)
def test_declared_facts_hold_numerically(name, x64):
    a = activations.get(name)
    z = _grid()
    increasing = bool(np.all(np.diff(np.asarray(a(z))) > 0))
    assert increasing == a.strictly_monotone
    step = 1e-7
    jump = np.max(np.abs(np.asarray(a.derivative(z + step) - a.derivative(z - step))))
    assert (jump < 1e-3) == a.smooth, f"{name}: largest jump of φ' over 2e-7 is {jump}"


def test_gelu_and_silu_are_not_monotone_softplus_is(x64):
    z = _grid()
    gelu_min = float(activations.get("gelu").derivative(z).min())
    silu_min = float(activations.get("silu").derivative(z).min())
    # closed forms: GELU' minimum at z = −√2 is Φ(−√2) − √2 ϕ(√2); SiLU' minimum ≈ −0.0998 at z ≈ −2.3994
    from math import erf, exp, pi, sqrt

    expected_gelu = 0.5 * (1 + erf(-1.0)) - sqrt(2) * exp(-1.0) / sqrt(2 * pi)
    np.testing.assert_allclose(gelu_min, expected_gelu, rtol=1e-6)
    np.testing.assert_allclose(silu_min, -0.09983, atol=1e-5)
    assert float(activations.get("softplus").derivative(z).min()) > 0


def test_values_against_numpy_float64(x64):
    z = np.linspace(-5, 5, 1001)
    from math import erf

    references = {
        "identity": z,
        "relu": np.maximum(z, 0),
        "leaky_relu": np.where(z > 0, z, 0.01 * z),
        "sigmoid": 1 / (1 + np.exp(-z)),
        "tanh": np.tanh(z),
        "gelu": 0.5 * z * (1 + np.vectorize(erf)(z / np.sqrt(2))),
        "silu": z / (1 + np.exp(-z)),
        "softplus": np.log1p(np.exp(z)),
        "elu": np.where(z > 0, z, np.expm1(z)),
    }
    assert set(references) == set(activations.NAMES)
    for name, expected in references.items():
        np.testing.assert_allclose(activations.get(name)(jnp.asarray(z)), expected, rtol=1e-12, atol=1e-14, err_msg=name)


def test_leaky_relu_slope_by_name():
    a = activations.get("leaky_relu_0.2")
    np.testing.assert_allclose(a(jnp.array([-1.0, 2.0])), [-0.2, 2.0])
    np.testing.assert_allclose(a.derivative(jnp.array([-1.0, 2.0])), [0.2, 1.0])


@pytest.mark.parametrize("bad", ["swish", "leaky_relu_-1", "leaky_relu_x", ""])
def test_unknown_activation_lists_names(bad):
    with pytest.raises(ValueError, match="valid names: identity, relu"):
        activations.get(bad)
