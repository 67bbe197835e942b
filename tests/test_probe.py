"""geometry.probe on models the library did not write: per-layer fields equal hand-derived
products of weights and D_φ, selection by path / glob / type, sown values, shared layers,
convolutions against jax.jacfwd references, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import models, probe


class UserMLP(nnx.Module):
    """5 → 7 → 6 → 3 with tanh, written the way a user writes it (Flax kernels are (in, out))."""

    def __init__(self, rngs, sow=False):
        self.fc1 = nnx.Linear(5, 7, rngs=rngs)
        self.fc2 = nnx.Linear(7, 6, rngs=rngs)
        self.head = nnx.Linear(6, 3, rngs=rngs)
        self.sow_hidden = sow

    def __call__(self, x):
        h1 = jnp.tanh(self.fc1(x))
        if self.sow_hidden:
            self.sow(nnx.Intermediate, "h1", h1)
        return self.head(jnp.tanh(self.fc2(h1)))


def _hand_products(model, x):
    """∂(fc1, fc2, head outputs)/∂x and the layers' own Jacobians, from the weights and D_φ."""
    K1, K2, K3 = (np.asarray(layer.kernel[...]) for layer in (model.fc1, model.fc2, model.head))
    b1, b2 = np.asarray(model.fc1.bias[...]), np.asarray(model.fc2.bias[...])
    z1 = x @ K1 + b1
    D1 = 1 - np.tanh(z1) ** 2
    z2 = np.tanh(z1) @ K2 + b2
    D2 = 1 - np.tanh(z2) ** 2
    J1 = K1.T  # ∂z1/∂x
    J2 = K2.T @ (D1[:, None] * J1)  # ∂z2/∂x = K2ᵀ D1 K1ᵀ
    J3 = K3.T @ (D2[:, None] * J2)
    return {"fc1": J1, "fc2": J2, "head": J3}, D1[:, None] * J1


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_user_model_fields_equal_hand_products(mode, x64):
    model = UserMLP(nnx.Rngs(0), sow=True)
    model = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)
    points = np.random.default_rng(0).normal(size=(6, 5))
    # the inline tanh calls are found in the computation and listed where they run
    assert probe.layers(model, points[0]) == ["fc1", "tanh", "fc2", "tanh#1", "head", "h1"]
    field = probe.input_jacobian_field(model, points, mode=mode)
    assert list(field) == ["fc1", "tanh", "fc2", "tanh#1", "head", "h1"]
    local = probe.local_jacobian_field(model, points, ["fc1", "fc2", "head"], mode=mode)
    for i, x in enumerate(points):
        expected, sown = _hand_products(model, x)
        for key, J in expected.items():
            np.testing.assert_allclose(field[key][i], J, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(field["h1"][i], sown, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(field["tanh"][i], sown, rtol=1e-12, atol=1e-15)  # h1 is tanh's output
        np.testing.assert_allclose(local["fc1"][i], model.fc1.kernel[...].T, rtol=1e-13)
        np.testing.assert_allclose(local["fc2"][i], model.fc2.kernel[...].T, rtol=1e-13)
        np.testing.assert_allclose(local["head"][i], model.head.kernel[...].T, rtol=1e-13)


def test_selection_by_path_glob_and_type():
    model = models.MLP(3, (4, 5), out_features=2, activation="relu", norm="layernorm", rngs=nnx.Rngs(1))
    example = np.zeros(3, np.float32)
    found = probe.plan(model, example)
    assert probe.select(found) == ("layers/0", "layers/1", "readout")
    assert probe.select(found, "layers/*") == ("layers/0", "layers/1")
    assert probe.select(found, "layers/*/norm") == ("layers/0/norm", "layers/1/norm")
    assert probe.select(found, models.Dense) == ("layers/0/dense", "layers/1/dense", "readout")
    assert probe.select(found, [models.Pointwise, "readout"]) == ("layers/0/activation", "layers/1/activation",
                                                                  "readout")
    assert probe.layers(model, example, types=models.LayerNorm) == ["layers/0/norm", "layers/1/norm"]
    with pytest.raises(ValueError, match="'layers/7' matches nothing.*valid paths: layers/0, layers/0/dense"):
        probe.select(found, "layers/7")
    with pytest.raises(ValueError, match="a path, a glob or a module type"):
        probe.select(found, 3)


def test_preactivations_and_states_match_a_handwritten_forward(x64):
    model = models.MLP(3, (6, 4), activation="gelu", residual=True, sigma_b2=0.1, dtype=jnp.float64,
                       rngs=nnx.Rngs(2))
    x = np.random.default_rng(1).normal(size=(9, 3))
    pre = probe.inputs(model, x, "layers/*/activation")
    hidden = probe.outputs(model, x, "layers/*")
    h = x
    for l, layer in enumerate(model.layers):
        W, b = np.asarray(layer.dense.weight[...]), np.asarray(layer.dense.bias[...])
        a = h @ W.T + b
        out = np.asarray(model.activation(jnp.asarray(a)))
        h = h + out if layer.residual else out
        np.testing.assert_allclose(pre[f"layers/{l}/activation"], a, rtol=1e-13)
        np.testing.assert_allclose(hidden[f"layers/{l}"], h, rtol=1e-13)


def test_shared_layer_called_twice_gets_one_key_per_call(x64):
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.block = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, x):
            return self.block(jnp.sin(self.block(x)))

    model = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), Shared(nnx.Rngs(3)))
    x = np.random.default_rng(2).normal(size=(5, 4))
    local = probe.local_jacobian_field(model, x, "block")
    assert list(local) == ["block@0", "block@1"]
    K = np.asarray(model.block.kernel[...])
    np.testing.assert_allclose(local["block@1"], np.broadcast_to(K.T, (5, 4, 4)), rtol=1e-13)
    field = probe.input_jacobian_field(model, x, "block")
    inner = x @ K + np.asarray(model.block.bias[...])
    expected = np.einsum("ij,nj,jk->nik", K.T, np.cos(inner), K.T)  # Kᵀ diag(cos z) Kᵀ
    np.testing.assert_allclose(field["block@1"], expected, rtol=1e-12)


class SmallCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 3, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(3, 2, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 2, 10, rngs=rngs)

    def __call__(self, x):  # (8, 8, 1)
        h = nnx.relu(self.conv1(x))
        h = nnx.relu(self.conv2(h))
        return self.head(h.reshape(-1))


def test_cnn_per_layer_fields_equal_jacfwd_references():
    model = SmallCNN(nnx.Rngs(4))
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 1)).astype(np.float32)
    local = probe.local_jacobian_field(model, x)
    field = probe.input_jacobian_field(model, x)
    assert local["conv2"].shape == (4, 4, 4, 2, 8, 8, 3)
    for i in range(len(x)):
        h1 = nnx.relu(model.conv1(x[i]))
        np.testing.assert_allclose(local["conv2"][i], jax.jacfwd(model.conv2)(h1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(field["conv2"][i], jax.jacrev(lambda v: model.conv2(nnx.relu(model.conv1(v))))(x[i]),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(field["head"][i], jax.jacrev(model)(x[i]), rtol=1e-5, atol=1e-6)
    matrices = probe.local_jacobian_field(model, x, "head", as_matrix=True)
    np.testing.assert_allclose(matrices["head"][0], model.head.kernel[...].T, rtol=1e-6)


def test_batch_first_model_and_errors():
    class BatchFirst(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(6, 2, rngs=rngs)
            self.norm = nnx.BatchNorm(2, rngs=rngs)

        def __call__(self, x):  # (B, 2, 3)
            return self.norm(self.linear(x.reshape(x.shape[0], -1)))

    model = BatchFirst(nnx.Rngs(5))
    x = np.random.default_rng(4).normal(size=(3, 2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="changed its state.*model.eval"):
        probe.input_jacobian_field(model, x, batched=True)
    model.eval()
    with pytest.raises(ValueError, match="batched=True"):
        probe.input_jacobian_field(model, x)
    field = probe.input_jacobian_field(model, x, "linear", batched=True)
    K = np.asarray(model.linear.kernel[...])
    np.testing.assert_allclose(field["linear"], np.broadcast_to(K.T.reshape(2, 2, 3), (3, 2, 2, 3)), rtol=1e-6)
    local = probe.local_jacobian_field(model, x, "norm", batched=True)
    scale = np.asarray(model.norm.scale[...]) / np.sqrt(np.asarray(model.norm.var[...]) + model.norm.epsilon)
    np.testing.assert_allclose(local["norm"], np.broadcast_to(np.diag(scale), (3, 2, 2)), rtol=1e-5)

    sown = UserMLP(nnx.Rngs(6), sow=True)
    with pytest.raises(ValueError, match="'h1' is a sown value"):
        probe.local_jacobian_field(sown, np.ones((2, 5), np.float32), "h1")
    with pytest.raises(ValueError, match="nnx.Module or a bound method"):
        probe.outputs(lambda v: v, np.ones((2, 5), np.float32))
