"""geometry.chain.log_volume: the per-layer split found in the model, against dense Jacobians."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import chain, jacobians, models


def _dense_log_volume(model, points):
    J = np.asarray(jacobians.jacobian_field(model, points, as_matrix=True), np.float64)
    return np.log(np.linalg.svd(J, compute_uv=False)).sum(axis=1)


class ZooMLP(nnx.Module):
    """Written as public NNX model zoos write an MLP: nnx.Linear layers in a list, the activation in
    __call__, no activation after the last layer."""

    def __init__(self, sizes, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for block in self.blocks[:-1]:
            x = nnx.tanh(block(x))
        return self.blocks[-1](x)


def test_the_librarys_mlp_and_a_zoo_style_mlp_match_the_dense_log_volume(x64):
    points = jnp.asarray(np.random.default_rng(0).normal(size=(5, 24)))
    own = models.MLP(24, 12, depth=3, activation="tanh", sigma_b2=0.1, dtype=jnp.float64, rngs=nnx.Rngs(0))
    result = chain.log_volume(own, points, "tanh")
    assert result["layers"] == ["layers/0/dense", "layers/1/dense", "layers/2/dense"] and result["output_activation"]
    np.testing.assert_allclose(result["values"], _dense_log_volume(own, points), rtol=1e-10)
    zoo = ZooMLP((24, 12, 12, 12), rngs=nnx.Rngs(1))
    zoo_points = points.astype(jnp.float32)
    result = chain.log_volume(zoo, zoo_points, jnp.tanh)  # a plain function: φ' by autodiff
    assert result["layers"] == ["blocks/0", "blocks/1", "blocks/2"] and not result["output_activation"]
    np.testing.assert_allclose(result["values"], _dense_log_volume(zoo, zoo_points), rtol=1e-5)
    np.testing.assert_allclose(result["per_layer"].sum(axis=1), result["values"], rtol=1e-12)


def test_a_model_that_is_not_a_plain_stack_is_refused():
    points = jnp.asarray(np.random.default_rng(1).normal(size=(3, 16)), jnp.float32)
    residual = models.MLP(16, 16, depth=2, activation="tanh", residual=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="layers/1/dense does not receive tanh of what layers/0/dense returns"):
        chain.log_volume(residual, points, "tanh")
    plain = models.MLP(16, 16, depth=2, activation="tanh", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="does not receive relu of what"):
        chain.log_volume(plain, points, "relu")  # the wrong activation named
    with pytest.raises(ValueError, match="flat points"):
        chain.log_volume(plain, points.reshape(3, 4, 4), "tanh")
    with pytest.raises(ValueError, match="unknown activation|valid"):
        chain.log_volume(plain, points, "no_such_activation")
