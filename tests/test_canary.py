"""The canary: every route that returns a derivative recomputes a sample of its points unbatched
and raises on disagreement. Faults are injected into the batched program (independent of the
installed jaxlib), and the real jaxlib 0.10.2 fault is reproduced in plain JAX (compiler_fault.py)."""

import compiler_fault
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import batching, chain, jacobians, matfree, models, probe, regions, spectra


def _corrupting(original):
    """The batched map, wrong by 25 % at every point but the first (as jaxlib 0.10.2's jacfwd fault)."""
    def wrong(per_point, params, points, chunk_size):
        result = original(per_point, params, points, chunk_size)
        return jax.tree_util.tree_map(
            lambda leaf: leaf.at[1:].multiply(1.25) if jnp.issubdtype(leaf.dtype, jnp.inexact) else leaf, result)
    return wrong


@pytest.fixture
def faulty_compiler(monkeypatch):
    monkeypatch.setattr(batching, "mapped", _corrupting(batching.mapped))


class Tokens(nnx.Module):
    """A small sequence model: embedding, RMSNorm over tokens, a tanh MLP."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.norm = nnx.RMSNorm(8, rngs=rngs)
        self.mlp = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, ids):
        return jnp.tanh(self.mlp(self.norm(self.embed(ids))))


def _every_route():
    """(name, thunk) for every public route built on the mapped program."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    mlp = models.MLP(6, 5, depth=2, activation="tanh", rngs=nnx.Rngs(0))
    ids = jnp.asarray(rng.integers(0, 11, size=(3, 5)))
    tokens = Tokens(nnx.Rngs(1))
    wide = jnp.asarray(rng.normal(size=(3, 12)), jnp.float32)
    return [
        ("jacobian_field forward", lambda: jacobians.jacobian_field(mlp, x, mode="forward")),
        ("jacobian_field reverse", lambda: jacobians.jacobian_field(mlp, x, mode="reverse")),
        ("jacobian_field reduced", lambda: jacobians.jacobian_field(mlp, x, reduce=spectra.condition_number)),
        ("jacobian_field wrt", lambda: jacobians.jacobian_field(tokens, ids, wrt="embed")),
        ("input_jacobian_field", lambda: probe.input_jacobian_field(mlp, x, "layers/*")),
        ("input_jacobian_field wrt", lambda: probe.input_jacobian_field(tokens, ids, "norm", wrt="embed")),
        ("local_jacobian_field", lambda: probe.local_jacobian_field(mlp, x, "layers/*")),
        ("local_jacobian_field reduced", lambda: probe.local_jacobian_field(mlp, x, reduce=spectra.singular_values)),
        ("local_singular_values", lambda: probe.local_singular_values(mlp, x, "layers/*")),
        ("token_jacobians", lambda: probe.token_jacobians(tokens, ids, "norm", wrt="embed")),
        ("outputs", lambda: probe.outputs(mlp, x, "layers/*")),
        ("matfree.singular_values", lambda: matfree.singular_values(mlp, wide[:, :6], 2)),
        ("matfree.log_volume", lambda: matfree.log_volume(mlp, x)),
        ("matfree.frobenius_norm_squared", lambda: matfree.frobenius_norm_squared(mlp, x)),
        ("chain.log_volume", lambda: chain.log_volume(mlp, x, "tanh")),
    ]


ROUTES = [name for name, _ in _every_route()]


@pytest.mark.parametrize("name", ROUTES)
def test_every_route_raises_on_a_faulty_batched_program(name, faulty_compiler):
    thunk = dict(_every_route())[name]
    with pytest.raises(batching.CompilerFaultError, match="disagrees with the unbatched one"):
        thunk()


def test_the_error_names_the_point_the_layer_and_the_difference(faulty_compiler):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6)), jnp.float32)
    mlp = models.MLP(6, 5, depth=2, activation="tanh", rngs=nnx.Rngs(0))
    with pytest.raises(batching.CompilerFaultError) as caught:
        probe.input_jacobian_field(mlp, x, "layers/1")
    message = str(caught.value)
    assert "at point 2 (['layers/1'])" in message and "relative difference 0.25" in message
    assert "chunk_size=1 or another jaxlib avoids it" in message


def test_turned_off_by_name_the_wrong_numbers_come_back(faulty_compiler, monkeypatch):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6)), jnp.float32)
    mlp = models.MLP(6, 5, depth=2, activation="tanh", rngs=nnx.Rngs(0))
    reference = np.stack([np.asarray(jax.jacfwd(mlp)(point)) for point in x])  # eager, per point
    with batching.canary(False):
        field = np.asarray(jacobians.jacobian_field(mlp, x))
    np.testing.assert_allclose(field[1:], 1.25 * reference[1:], rtol=1e-5, atol=1e-6)  # the injected fault, unnoticed
    monkeypatch.setenv("LAYER_GEOMETRY_CANARY", "0")
    assert not batching.canary_enabled()
    np.testing.assert_allclose(np.asarray(jacobians.jacobian_field(mlp, x)), field, rtol=1e-6)
    with pytest.raises(ValueError, match="True or False"):
        with batching.canary("no"):
            pass


def test_regions_affine_maps_are_checked(monkeypatch):
    model = models.MLP(2, 6, depth=2, activation="relu", rngs=nnx.Rngs(0))
    honest = regions.partition(model, (-1.0, 1.0))
    original = regions._forms

    def wrong(*args, **kwargs):
        (value_out, value_candidates), (gradient_out, gradient_candidates) = original(*args, **kwargs)
        return (value_out, value_candidates), (gradient_out.at[1:].multiply(1.25), gradient_candidates)

    monkeypatch.setattr(regions, "_forms", wrong)
    with pytest.raises(batching.CompilerFaultError, match="affine form of region candidate"):
        regions.partition(model, (-1.0, 1.0))
    assert len(honest) > 1


def test_sample_is_first_last_and_one_per_chunk():
    assert batching.sample_indices(1, 4096) == [0]
    assert batching.sample_indices(10, 4096) == [0, 9]
    assert batching.sample_indices(10, 4) == [0, 4, 8, 9]
    many = batching.sample_indices(1000, 10)  # 100 chunks: spread evenly, at most CANARY_MAX_POINTS
    assert len(many) <= batching.CANARY_MAX_POINTS and many[0] == 0 and many[-1] == 999
    assert batching.canary_rtol(np.float32) == pytest.approx(32 * np.sqrt(np.finfo(np.float32).eps))


def test_rounding_differences_are_not_faults():
    # two right programs differ by rounding; a value 0·inf can be NaN in one and 0 in the other
    value = np.linspace(-1, 1, 50, dtype=np.float32)
    batching.assert_agree(value * (1 + 1e-6), value, "a value")
    batching.assert_agree(np.array([np.nan, 1.0]), np.array([0.0, 1.0]), "a value")
    with pytest.raises(batching.CompilerFaultError, match="a value: the compiled batched"):
        batching.assert_agree(value * 1.05, value, "a value")


def test_the_installed_jaxlib_fault_is_caught_or_absent():
    """The plain-JAX reproduction on the installed jaxlib. On the versions pyproject.toml allows it is
    exact on every route; on a faulty jaxlib (0.10.2) the library's routes must raise instead."""
    model = nnx.RMSNorm(compiler_fault.WIDTH, epsilon=compiler_fault.EPS, use_scale=False, rngs=nnx.Rngs(0))
    x = compiler_fault.points()
    reference = np.stack([compiler_fault.closed_form("rms_norm", v) for v in np.asarray(x)])
    if not compiler_fault.faulty():
        for mode in ("forward", "reverse"):
            for f in (compiler_fault.rms_norm, model):
                field = np.asarray(jacobians.jacobian_field(f, x, mode=mode), np.float64)
                np.testing.assert_allclose(field, reference, atol=1e-6)
        return
    for mode in ("forward", "reverse"):  # pragma: no cover - only on a faulty jaxlib
        with pytest.raises(batching.CompilerFaultError):
            jacobians.jacobian_field(compiler_fault.rms_norm, x, mode=mode)
