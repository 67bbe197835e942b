"""Activations found in the computation (geometry.discovery through the probe), on models written as
public NNX model zoos write them: inline function calls, never modules. References are hand-written
forward passes in float64 NumPy, eager per-point jax.jacfwd, or NumPy counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from zoo import Block, ScanStack, ZooCNN

from geometry import activations, models, probe


class TransformerMLP(nnx.Module):
    def __init__(self, rngs, approximate=True):
        self.up, self.down = nnx.Linear(6, 12, rngs=rngs), nnx.Linear(12, 6, rngs=rngs)
        self.approximate = approximate

    def __call__(self, x):
        return x + self.down(jax.nn.gelu(self.up(x), approximate=self.approximate))


class SwiGLU(nnx.Module):
    def __init__(self, rngs):
        self.gate_proj, self.up_proj = nnx.Linear(6, 10, rngs=rngs), nnx.Linear(6, 10, rngs=rngs)
        self.down_proj = nnx.Linear(10, 6, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(nnx.silu(self.gate_proj(x)) * self.up_proj(x))


class Elementwise(nnx.Module):
    """One linear layer, then an activation written however the model writes it."""

    def __init__(self, rngs, phi, dtype=jnp.float32):
        self.linear = nnx.Linear(5, 7, param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.phi = phi

    def __call__(self, x):
        return self.phi(self.linear(x))


class RNN(nnx.Module):
    """A tanh RNN cell unrolled over the rows of x (T, d)."""

    def __init__(self, rngs):
        self.input_proj, self.hidden_proj = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        h = jnp.zeros(4, x.dtype)
        for t in range(x.shape[0]):
            h = jnp.tanh(self.input_proj(x[t]) + self.hidden_proj(h))
        return h


class LinearOnly(nnx.Module):
    def __init__(self, rngs):
        self.a, self.b = nnx.Linear(5, 5, rngs=rngs), nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(2.0 * self.a(x) + 1.0)


def _points(shape, n=4, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(dtype)


def test_a_zoo_cnn_lists_its_inline_relus_in_call_order():
    cnn = ZooCNN(nnx.Rngs(0))
    cnn.eval()
    x = _points((5, 5, 1))
    assert probe.layers(cnn, x[0]) == ["conv1", "bn1", "relu", "conv2", "relu#1", "head"]
    assert probe.activations(cnn, x[0]) == {"relu": "relu", "relu#1": "relu"}
    assert probe.layers(cnn, x[0], types=activations.Activation) == ["relu", "relu#1"]
    # default selection (top-level layers) now holds the activations' rows too
    assert list(probe.outputs(cnn, x)) == ["conv1", "bn1", "relu", "conv2", "relu#1", "head"]


@pytest.mark.parametrize("model, name", [
    (lambda r: TransformerMLP(r, approximate=True), "gelu_tanh"),
    (lambda r: TransformerMLP(r, approximate=False), "gelu"),
    (lambda r: Elementwise(r, lambda z: z * jax.nn.sigmoid(z)), "silu"),
    (lambda r: Elementwise(r, lambda z: jax.nn.leaky_relu(z, 0.2)), "leaky_relu_0.2"),
    (lambda r: Elementwise(r, lambda z: jnp.where(z >= 0, z, 0.2 * z)), "leaky_relu_0.2"),
    (lambda r: Elementwise(r, jax.nn.elu), "elu"),
    (lambda r: Elementwise(r, jax.nn.sigmoid), "sigmoid"),
    (lambda r: Elementwise(r, jax.nn.softplus), "softplus"),
    (lambda r: Elementwise(r, jax.nn.hard_tanh), "hard_tanh"),
    (lambda r: Elementwise(r, lambda z: jnp.clip(z, -0.5, 2.0)), "clip(-0.5, 2)"),
    (lambda r: Elementwise(r, jnp.abs), "abs"),
])
def test_each_inline_activation_is_identified_by_what_it_computes(model, name):
    m = model(nnx.Rngs(1))
    found = probe.activations(m, _points((6,) if isinstance(m, TransformerMLP) else (5,))[0])
    assert list(found.values()) == [name]


def test_swiglu_is_a_silu_times_a_linear_branch():
    block = SwiGLU(nnx.Rngs(2))
    plan = probe.plan(block, _points((6,))[0])
    assert plan.identified == {"silu": "silu"} and plan.sites["silu"].gated
    assert probe.layers(block, _points((6,))[0]) == ["gate_proj", "silu", "up_proj", "down_proj"]


def test_softmax_is_found_and_reported_as_not_elementwise():
    model = Elementwise(nnx.Rngs(3), jax.nn.softmax)
    x = _points((5,))
    assert probe.activations(model, x[0]) == {"softmax": "softmax"}
    assert probe.activation_stats(model, x) == {}  # no diagonal derivative to count
    with pytest.raises(ValueError, match="softmax is not elementwise"):
        probe.local_jacobian_field(model, x, "softmax")


def test_an_rnn_cell_and_a_scan_stack_give_one_activation_per_step():
    rnn = RNN(nnx.Rngs(4))
    assert list(probe.activations(rnn, _points((3, 3))[0])) == ["tanh", "tanh#1", "tanh#2"]
    stack = ScanStack(nnx.Rngs(5))
    found = probe.activations(stack, _points((6,))[0])
    assert found == {"blocks:gelu@0": "gelu", "blocks:gelu@1": "gelu", "blocks:gelu@2": "gelu"}


def test_a_model_of_linear_operations_has_none():
    assert probe.activations(LinearOnly(nnx.Rngs(6)), _points((5,))[0]) == {}


def test_the_librarys_activation_layers_keep_their_paths():
    mlp = models.MLP(4, 5, depth=2, activation="relu", rngs=nnx.Rngs(7))
    x = _points((4,))[0]
    assert probe.layers(mlp, x) == ["layers/0", "layers/0/dense", "layers/0/activation", "layers/1",
                                    "layers/1/dense", "layers/1/activation"]
    assert probe.activations(mlp, x) == {"layers/0/activation": "relu", "layers/1/activation": "relu"}


def test_z_and_the_derivative_equal_a_hand_written_forward_pass(x64):
    """float64, rtol 1e-10: z = W x + b, y = φ(z), φ'(z), for gelu_tanh, silu written out and elu."""
    cases = [(lambda z: jax.nn.gelu(z, approximate=True), activations.get("gelu_tanh")),
             (lambda z: z * jax.nn.sigmoid(z), activations.get("silu")),
             (jax.nn.elu, activations.get("elu"))]
    x = _points((5,), n=6, seed=8, dtype=np.float64)
    for phi, reference in cases:
        model = Elementwise(nnx.Rngs(9), phi, dtype=jnp.float64)
        (key,) = probe.activations(model, x[0])
        W, b = np.asarray(model.linear.kernel[...]), np.asarray(model.linear.bias[...])
        z = x @ W + b
        np.testing.assert_allclose(probe.inputs(model, x, key)[key], z, rtol=1e-10)
        np.testing.assert_allclose(probe.outputs(model, x, key)[key], np.asarray(reference(jnp.asarray(z))),
                                   rtol=1e-10, atol=1e-14)
        derivative = probe.local_jacobian_field(model, x, key)[key]  # the diagonal, (N, 7)
        np.testing.assert_allclose(derivative, np.asarray(reference.derivative(jnp.asarray(z))), rtol=1e-10,
                                   atol=1e-14)


def test_dead_and_saturated_fractions_equal_numpys():
    model = Elementwise(nnx.Rngs(10), jnp.tanh)
    x = _points((5,), n=50, seed=11) * 1.5  # |z| < 9: float32 tanh never reaches 1 exactly
    z = x @ np.asarray(model.linear.kernel[...], np.float64) + np.asarray(model.linear.bias[...], np.float64)
    derivative = 1 - np.tanh(z) ** 2
    stats = probe.activation_stats(model, x, saturation=0.1)["tanh"]
    assert stats["dead_fraction"] == np.mean(derivative == 0)
    assert stats["saturated_fraction"] == pytest.approx(np.mean((derivative > 0) & (derivative < 0.1)), abs=1e-12)
    assert stats["live_fraction"] == pytest.approx(1 - stats["saturated_fraction"] - stats["dead_fraction"])
    assert stats["derivative_quantiles"][0.5] == pytest.approx(np.quantile(derivative, 0.5), rel=1e-5)
    relu = Elementwise(nnx.Rngs(12), nnx.relu)
    z = x @ np.asarray(relu.linear.kernel[...], np.float64) + np.asarray(relu.linear.bias[...], np.float64)
    assert probe.activation_stats(relu, x)["relu"]["dead_fraction"] == pytest.approx(np.mean(z <= 0), abs=1e-12)
    with pytest.raises(ValueError, match=r"saturation must be a number in \(0, 1\]"):
        probe.activation_stats(relu, x, saturation=0.0)


def test_rank_after_an_inline_relu_is_the_rank_of_the_active_rows():
    """rank ∂relu(z)/∂x = rank of the rows of ∂z/∂x whose units are active, at every point."""
    cnn = ZooCNN(nnx.Rngs(13))
    cnn.eval()
    x = _points((5, 5, 1), n=5, seed=14)
    fields = probe.input_jacobian_field(cnn, x, ["bn1", "relu"])
    z = probe.inputs(cnn, x, "relu")["relu"].reshape(len(x), -1)
    for i, point in enumerate(x):
        before = np.asarray(fields["bn1"][i], np.float64).reshape(z.shape[1], -1)
        after = np.asarray(fields["relu"][i], np.float64).reshape(z.shape[1], -1)
        reference = np.asarray(jax.jacfwd(lambda u: nnx.relu(cnn.bn1(cnn.conv1(u))))(point)).reshape(after.shape)
        np.testing.assert_allclose(after, reference, rtol=1e-5, atol=1e-6)  # eager, per point
        active = before[z[i] > 0]
        assert np.linalg.matrix_rank(after) == np.linalg.matrix_rank(active)


def test_paths_globs_and_types_select_activations():
    block = SwiGLU(nnx.Rngs(15))
    x = _points((6,))
    assert list(probe.outputs(block, x, activations.Activation)) == ["silu"]
    assert list(probe.outputs(block, x, ["down_proj", "silu"])) == ["silu", "down_proj"]  # call order
    assert list(probe.input_jacobian_field(block, x, "sil*")) == ["silu"]
    # wrt= a layer's output: ∂silu(g)/∂g is the diagonal silu'(g), the model still run from x
    field = probe.input_jacobian_field(block, x, ["silu", "down_proj"], wrt="gate_proj")["silu"]
    gate = probe.outputs(block, x, "gate_proj")["gate_proj"]
    expected = np.stack([np.diag(np.asarray(jax.vmap(jax.grad(jax.nn.silu))(g))) for g in gate])
    np.testing.assert_allclose(field, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="takes layers"):
        probe.token_jacobians(block, x, "silu", wrt="gate_proj")


def test_chain_names_the_form_of_gelu_it_found():
    class TwoLayers(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([nnx.Linear(4, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs)])

        def __call__(self, x):
            return self.blocks[1](jax.nn.gelu(self.blocks[0](x)))  # approximate=True: the tanh form

    from geometry import chain

    x = _points((4,), n=3, seed=16)
    with pytest.raises(ValueError, match=r"applies gelu_tanh there, not gelu: the tanh-approximate GELU .* "
                                         r"activation='gelu_tanh'"):
        chain.log_volume(TwoLayers(nnx.Rngs(17)), x, "gelu")
    result = chain.log_volume(TwoLayers(nnx.Rngs(17)), x, "gelu_tanh")
    J = np.stack([np.asarray(jax.jacfwd(TwoLayers(nnx.Rngs(17)))(p), np.float64) for p in x])  # eager, per point
    np.testing.assert_allclose(result["values"], np.log(np.linalg.svd(J, compute_uv=False)).sum(axis=1), rtol=1e-4)


def test_a_glob_names_activations_inside_layers_only_when_it_says_so():
    class Tower(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([Block(rngs), Block(rngs)])

        def __call__(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    tower, x = Tower(nnx.Rngs(18)), _points((6,))
    assert probe.layers(tower, x[0]) == ["blocks/0", "blocks/0/linear", "blocks/0:gelu", "blocks/1",
                                         "blocks/1/linear", "blocks/1:gelu"]
    assert list(probe.outputs(tower, x, "blocks/*")) == ["blocks/0", "blocks/1"]  # as before activations were found
    assert list(probe.outputs(tower, x)) == ["blocks/0", "blocks/1"]  # top level: what the model itself calls
    assert list(probe.outputs(tower, x, "blocks/*:gelu")) == ["blocks/0:gelu", "blocks/1:gelu"]
    gelu = probe.outputs(tower, x, ["blocks/0/linear", "blocks/0:gelu"])
    np.testing.assert_allclose(gelu["blocks/0:gelu"], jax.nn.gelu(gelu["blocks/0/linear"], approximate=False),
                               rtol=1e-6)
