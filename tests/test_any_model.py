"""jacobian_field on models the library did not write: every mode against hand-written
jax.jacfwd / jax.jacrev references, image-shaped points, pytree outputs, f(params, x) and
Linen, compilation caching, unhashable graph definitions, non-finite Jacobians, jit/vmap
composition, batch-first models, and the errors a user meets."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import batching, jacobians, probe, spectra

MODES = ("forward", "reverse", "auto")


class SmallCNN(nnx.Module):
    """A user's CNN on (8, 8, 1) images, one example at a time."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.linear = nnx.Linear(8 * 8 * 4, 10, rngs=rngs)

    def __call__(self, x):  # (8, 8, 1)
        return self.linear(jnp.tanh(self.conv(x)).reshape(-1))


class BatchFirstMLP(nnx.Module):
    """Written the way many published models are: reshapes with x.shape[0]."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):  # (B, 4, 4)
        return jnp.tanh(self.linear(x.reshape(x.shape[0], -1)))


class WithSlice(nnx.Module):
    """A module whose graph definition cannot be hashed (a slice attribute, Python 3.11)."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 5, rngs=rngs)
        self.keep = slice(0, 4)

    def __call__(self, x):
        return jnp.sin(self.linear(x))[self.keep]


def _reference(f, points, differentiate):
    return np.stack([np.asarray(differentiate(f)(p)) for p in np.asarray(points)])


@pytest.mark.parametrize("mode", MODES)
def test_image_points_every_mode_equals_jacfwd_and_jacrev(mode):
    model = SmallCNN(nnx.Rngs(0))
    points = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype(np.float32)
    field = jacobians.jacobian_field(model, points, mode=mode)
    assert field.shape == (5, 10, 8, 8, 1)
    for differentiate in (jax.jacfwd, jax.jacrev):
        np.testing.assert_allclose(field, _reference(model, points, differentiate), rtol=1e-5, atol=1e-6)
    matrix = jacobians.jacobian_field(model, points, mode=mode, as_matrix=True)
    np.testing.assert_allclose(matrix, field.reshape(5, 10, 64), rtol=1e-6, atol=1e-7)


def test_auto_picks_the_cheaper_mode():
    assert jacobians.choose_mode(2, 256) == "forward"
    assert jacobians.choose_mode(64, 10) == "reverse"
    assert jacobians.choose_mode(1024, 10) == "reverse"
    assert jacobians.choose_mode(64, 64) == "forward"


@pytest.mark.parametrize("mode", MODES)
def test_pytree_outputs_and_scalar_inputs(mode, x64):
    def f(x):  # (3,) -> {"a": (2,), "b": (2, 3)}
        return {"a": jnp.stack([jnp.sin(x[0]) * x[1], x[2] ** 2]), "b": jnp.outer(jnp.cos(x[:2]), x)}

    points = np.random.default_rng(1).normal(size=(4, 3))
    field = jacobians.jacobian_field(f, points, mode=mode)
    reference = [jax.jacrev(f)(p) for p in points]
    for key in ("a", "b"):
        np.testing.assert_allclose(field[key], np.stack([r[key] for r in reference]), rtol=1e-13)
    curve = jacobians.jacobian_field(lambda t: jnp.stack([jnp.cos(t), jnp.sin(t)]), np.linspace(0, 1, 5), mode=mode)
    np.testing.assert_allclose(curve, np.stack([-np.sin(np.linspace(0, 1, 5)), np.cos(np.linspace(0, 1, 5))], -1),
                               rtol=1e-13)


def test_params_form_with_linen_and_no_recompile(x64):
    class LinenMLP(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3, param_dtype=jnp.float64)(jnp.tanh(linen.Dense(16, param_dtype=jnp.float64)(x)))

    model = LinenMLP()
    points = np.random.default_rng(2).normal(size=(6, 5))
    variables = model.init(jax.random.key(0), points[0])
    for mode in MODES:
        field = jacobians.jacobian_field(model.apply, points, params=variables, mode=mode)
        reference = _reference(lambda p: model.apply(variables, p), points, jax.jacfwd)
        np.testing.assert_allclose(field, reference, rtol=1e-12)

    traces = []

    def f(params, x):
        traces.append(1)  # runs once per trace, not per call
        return jnp.tanh(params["w"] @ x)

    w = 0.2 * np.random.default_rng(3).normal(size=(4, 5))  # unsaturated: 1 - tanh² without cancellation
    jacobians.jacobian_field(f, points, params={"w": w})
    count = len(traces)
    second = jacobians.jacobian_field(f, points, params={"w": 2 * w})  # new values, same shapes
    assert len(traces) == count, "new parameter values recompiled"
    z = points @ (2 * w).T
    np.testing.assert_allclose(second, (1 - np.tanh(z) ** 2)[:, :, None] * (2 * w)[None], rtol=1e-12)


def test_same_module_twice_does_not_recompile():
    model = SmallCNN(nnx.Rngs(1))
    points = np.random.default_rng(4).normal(size=(3, 8, 8, 1)).astype(np.float32)
    jacobians.jacobian_field(model, points)
    before = batching.mapped._cache_size()
    model.linear.kernel[...] = model.linear.kernel[...] * 2  # new values, same structure
    jacobians.jacobian_field(model, points)
    assert batching.mapped._cache_size() == before


def test_unhashable_graphdef_works_like_nnx_jit():
    model = WithSlice(nnx.Rngs(2))
    points = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    field = jacobians.jacobian_field(model, points)
    np.testing.assert_allclose(field, _reference(model, points, jax.jacfwd), rtol=1e-6)
    expected = nnx.jit(lambda m, x: jax.vmap(jax.jacrev(m))(x))(model, jnp.asarray(points))
    np.testing.assert_allclose(field, expected, rtol=1e-6)


def test_nonfinite_jacobian_at_finite_points_raises(nans_allowed):
    points = np.array([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]], dtype=np.float32)

    def f(x):
        return jnp.sqrt(x)  # derivative is inf at 0

    with pytest.raises(ValueError, match=r"NaN or inf at 3 of 4 finite points \(first points: \[1, 2, 3\]\)"):
        jacobians.jacobian_field(f, points)
    raw = jacobians.jacobian_field(f, points, check_finite=False)
    assert np.isinf(np.asarray(raw)[1, 0, 0]) and np.isfinite(np.asarray(raw)[0]).all()


def test_a_nan_output_with_a_finite_jacobian_is_refused(nans_allowed):
    # log at a negative point: J = 1/x is finite, the value is NaN; the field must not look fine
    points = np.array([[1.0, 2.0], [-1.0, 2.0], [0.5, -3.0]], dtype=np.float32)
    message = r"at 2 of 3 finite points \(first points: \[1, 2\]\); the model's output is NaN or inf at 2"
    for mode in ("forward", "reverse"):
        with pytest.raises(ValueError, match=message):
            jacobians.jacobian_field(jnp.log, points, mode=mode)
        with pytest.raises(ValueError, match=message):
            probe.input_jacobian_field(_LogModel(), points, mode=mode)
    np.testing.assert_allclose(jacobians.jacobian_field(jnp.log, points, check_finite=False)[0],
                               np.diag(1 / points[0]), rtol=1e-6)


class _LogModel(nnx.Module):
    def __init__(self):
        self.linear = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.linear(jnp.log(x))


def test_reduce_may_return_inf_for_a_finite_singular_jacobian():
    # a singular J is finite; its condition number is inf by convention, which is not an error
    points = np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32)
    rank_one = lambda x: jnp.stack([x[0] + x[1], 2 * (x[0] + x[1])])  # noqa: E731
    condition = jacobians.jacobian_field(rank_one, points, reduce=spectra.condition_number)
    assert np.isinf(np.asarray(condition)).all()
    local = probe.local_jacobian_field(_LogModel(), np.abs(points), "linear", reduce=spectra.condition_number)
    assert np.isfinite(np.asarray(local["linear"])).all()


def test_composes_with_jit_and_vmap_and_pure_form():
    model = SmallCNN(nnx.Rngs(3))
    batches = np.random.default_rng(6).normal(size=(2, 3, 8, 8, 1)).astype(np.float32)
    direct = np.stack([jacobians.jacobian_field(model, b) for b in batches])
    jitted = jax.jit(lambda b: jacobians.jacobian_field(model, b))(batches[0])
    np.testing.assert_allclose(jitted, direct[0], rtol=1e-5, atol=1e-6)
    vmapped = jax.vmap(lambda b: jacobians.jacobian_field(model, b))(jnp.asarray(batches))
    np.testing.assert_allclose(vmapped, direct, rtol=1e-5, atol=1e-6)
    field_fn, params = jacobians.pure_jacobian_field(model, batches[0, 0])
    np.testing.assert_allclose(jax.jit(field_fn)(params, batches[1]), direct[1], rtol=1e-5, atol=1e-6)
    # the pure form is differentiable in the parameters: d/dθ ‖J‖² matches finite differences
    norm = jax.jit(lambda p: jnp.sum(field_fn(p, batches[0]) ** 2))
    grads = jax.grad(norm)(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_batch_first_models():
    model = BatchFirstMLP(nnx.Rngs(4))
    points = np.random.default_rng(7).normal(size=(5, 4, 4)).astype(np.float32)
    field = jacobians.jacobian_field(model, points, batched=True)
    assert field.shape == (5, 3, 4, 4)
    reference = _reference(lambda p: model(p[None])[0], points, jax.jacrev)
    np.testing.assert_allclose(field, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="leading batch axis.*batched=True"):
        jacobians.jacobian_field(model, points)


def test_user_errors_say_what_to_do():
    points = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="f takes 2 positional arguments; for f\\(params, x\\) pass params="):
        jacobians.jacobian_field(lambda params, x: params * x, points)
    with pytest.raises(ValueError, match="it must be f\\(params, x\\)"):
        jacobians.jacobian_field(lambda x: x, points, params={"w": 1.0})

    class Tiny(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(2)(x)

    with pytest.raises(ValueError, match="unbound Linen module.*model.apply"):
        jacobians.jacobian_field(Tiny(), points)

    class WithBatchNorm(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(4, 3, rngs=rngs)
            self.norm = nnx.BatchNorm(3, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.linear(x)[None])[0]

    model = WithBatchNorm(nnx.Rngs(0))
    with pytest.raises(ValueError, match="changed its state.*model.eval\\(\\)"):
        jacobians.jacobian_field(model, points)
    model.eval()
    assert jacobians.jacobian_field(model, points).shape == (3, 3, 4)
