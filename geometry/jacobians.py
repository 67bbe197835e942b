"""Jacobians by forward-mode autodiff, over whole input grids in bounded memory.

Inputs here are low-dimensional (2-D grids, a few features), so `jax.jacfwd` — one
forward pass carrying n tangents — is the right mode: its cost is about (n + 1) forward
passes whatever the output width. `jacobian_field` vmaps it over points and walks the
points in chunks with `jax.lax.map(batch_size=...)`, so peak memory is set by the chunk,
not by the grid. With several devices (GPUs, a TPU slice, or CPU devices forced with
XLA_FLAGS=--xla_force_host_platform_device_count=N) the points are sharded over all of
them along a 1-D mesh, without any change to the calling code.

Functions given as `nnx.Module`s (or their bound methods) are split once with
`nnx.split`; the parameters become arguments of the jitted function (not baked-in
constants) and `nnx.merge` runs inside it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

POINT_AXIS = "points"  # the name of the 1-D device mesh axis the points are split over
DEFAULT_CHUNK_SIZE = 4096  # points per vmapped batch; ~tens of MB for a width-256, depth-8 MLP


@dataclasses.dataclass(frozen=True)
class _ModuleCall:
    """A module method as a pure function of (state, x); hashable, so jit caches on it."""

    graphdef: Any
    method: str

    def __call__(self, state, x):
        return getattr(nnx.merge(self.graphdef, state), self.method)(x)


@dataclasses.dataclass(frozen=True)
class _FunctionCall:
    fn: Callable

    def __call__(self, state, x):
        return self.fn(x)


def as_pure_function(f) -> tuple[Callable, Any]:
    """(pure, state) with pure(state, x) == f(x); modules and bound methods are split once."""
    if isinstance(f, nnx.Module):
        module, method = f, "__call__"
    elif inspect.ismethod(f) and isinstance(f.__self__, nnx.Module):
        module, method = f.__self__, f.__name__
    else:
        return _FunctionCall(f), None
    graphdef, state = nnx.split(module)
    return _ModuleCall(graphdef, method), state


def check_points(points) -> jax.Array:
    """points as a floating (N, n) array; ValueError naming the problem otherwise."""
    points = jnp.asarray(points)
    if points.ndim != 2:
        raise ValueError(f"points must have shape (N, n), got shape {tuple(points.shape)}")
    if points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"points is empty: shape {tuple(points.shape)}")
    if not jnp.issubdtype(points.dtype, jnp.floating):
        points = points.astype(jnp.result_type(float))
    finite_rows = jnp.all(jnp.isfinite(points), axis=1)
    if not bool(jnp.all(finite_rows)):
        bad = jnp.flatnonzero(~finite_rows)
        raise ValueError(f"points contain NaN or inf in {bad.size} rows (first rows: {bad[:5].tolist()})")
    return points


def _jacobian_of(pure, reduce):
    def per_point(state, x):
        jac = jax.jacfwd(pure, argnums=1)(state, x)
        return jac if reduce is None else jax.tree_util.tree_map(reduce, jac)

    return per_point


def _local_field(pure, state, points, chunk_size, reduce):
    per_point = _jacobian_of(pure, reduce)
    if chunk_size >= points.shape[0]:
        return jax.vmap(per_point, in_axes=(None, 0))(state, points)
    return jax.lax.map(lambda x: per_point(state, x), points, batch_size=chunk_size)


_field = jax.jit(_local_field, static_argnames=("pure", "chunk_size", "reduce"))


@functools.partial(jax.jit, static_argnames=("pure", "chunk_size", "reduce", "mesh"))
def _sharded_field(pure, state, points, chunk_size, reduce, mesh):
    # each device walks its own slice of the points in chunks: memory per device is set by
    # the chunk, and no device waits on another (the points are independent)
    local = functools.partial(_local_field, pure, chunk_size=chunk_size, reduce=reduce)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(POINT_AXIS)), out_specs=P(POINT_AXIS))(state, points)


def _spread(pure, state, points, chunk_size, reduce, devices):
    """Pad the points to a multiple of the device count, shard them over a 1-D mesh, unpad."""
    mesh = Mesh(np.asarray(devices), (POINT_AXIS,))
    count = points.shape[0]
    padded = -(-count // len(devices)) * len(devices)
    if padded > count:  # repeat the last point; its extra Jacobians are dropped below
        points = jnp.concatenate([points, jnp.broadcast_to(points[-1:], (padded - count, points.shape[1]))])
    points = jax.device_put(points, NamedSharding(mesh, P(POINT_AXIS)))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    local_chunk = min(chunk_size, padded // len(devices))
    field = _sharded_field(pure, state, points, local_chunk, reduce, mesh)
    return jax.tree_util.tree_map(lambda leaf: leaf[:count], field)


def jacobian_field(f, points, *, chunk_size: int | None = None, reduce: Callable | None = None,
                   devices: Sequence[jax.Device] | None = None):
    """Jacobian of f: Rⁿ → Rᵐ at every point: an (N, m, n) array.

    Args:
      f: a function of one example (shape (n,)), an `nnx.Module` or a module's bound
        method. Pytree outputs give a pytree of (N, *out_shape, n) Jacobians.
      points: (N, n) array of finite inputs.
      chunk_size: points per vmapped batch (default `DEFAULT_CHUNK_SIZE`); memory is
        bounded by the chunk. Pass `len(points)` to vmap everything at once.
      reduce: optional function applied to each point's Jacobian (to each leaf, for
        pytree outputs) inside the chunked loop (e.g. `geometry.spectra.singular_values`), so that only its result is
        kept — the full (N, m, n) field never has to exist.
      devices: the devices to spread the points over (default: all of `jax.devices()`). With
        more than one, the point axis is sharded over a 1-D mesh (`NamedSharding`) and each
        device runs the chunked loop on its share; the result equals the one-device field.
    """
    points = check_points(points)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    pure, state = as_pure_function(f)
    try:
        jax.eval_shape(pure, state, points[0])
    except (TypeError, ValueError) as error:
        raise ValueError(f"f cannot take points of dimension {points.shape[1]}: {error}") from error
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) > 1:
        return _spread(pure, state, points, chunk_size, reduce, devices)
    return _field(pure, state, points, min(chunk_size, points.shape[0]), reduce)


def layer_jacobians(model, x: jax.Array) -> tuple[jax.Array, ...]:
    """Each hidden layer's own Jacobian ∂h_l/∂h_{l-1} at the states reached from x.

    `model` is a `geometry.models.MLP`; x one example (n₀,). Returns L arrays of shape
    (k_l, k_{l-1}); for a plain layer this is D_φ(a_l) W_l, for a residual one I + D_φ W.
    """
    model._check_input(x)
    graphdef, state = nnx.split(model)

    def layer(l, state, h):
        return nnx.merge(graphdef, state).apply_layer(l, h)[1]

    inputs = (x, *model.hidden_states(x)[:-1])
    return tuple(jax.jacfwd(layer, argnums=2)(l, state, h) for l, h in enumerate(inputs))


def input_jacobians(model, x: jax.Array) -> tuple[jax.Array, ...]:
    """∂h_l/∂x for every hidden layer l, from a single forward-mode pass: L arrays (k_l, n₀)."""
    model._check_input(x)
    pure, state = as_pure_function(model.hidden_states)
    return jax.jacfwd(pure, argnums=1)(state, x)


def _layernorm_jacobian(norm, z: jax.Array) -> jax.Array:
    # a = γ ⊙ ẑ + β,  ẑ = (z − μ)/s,  s = √(var + ε):  ∂ẑ/∂z = (I − 11ᵀ/k − ẑẑᵀ/k) / s
    k = z.shape[-1]
    centred = z - z.mean()
    s = jnp.sqrt(jnp.mean(centred**2) + norm.epsilon)
    z_hat = centred / s
    projector = jnp.eye(k, dtype=z.dtype) - 1.0 / k - jnp.outer(z_hat, z_hat) / k
    return norm.scale[...][:, None] * projector / s


def closed_form_input_jacobians(model, x: jax.Array) -> tuple[jax.Array, ...]:
    """∂h_l/∂x by the closed form J_l = D_φ(a_l) [J_LN] W_l (+ I if residual), chained.

    Uses the activation's hand-written derivative, not autodiff: the oracle that
    `input_jacobians` and `jacobian_field` are tested against.
    """
    trace = model.trace(x)
    total = jnp.eye(model.in_features, dtype=x.dtype)  # ∂h_0/∂x, (n₀, n₀)
    inputs = (x, *trace.hidden[:-1])
    result = []
    for l, (h, a) in enumerate(zip(inputs, trace.preactivations)):
        # D_φ [J_LN] W applied to the running product, not formed: under vmap a formed D_φ W
        # is a (k_l, k_{l-1}) array per point, while W J_{l-1} shares W across all points
        chained = model.layers[l].effective_weight() @ total  # (k_l, n₀)
        if len(model.norms):
            chained = _layernorm_jacobian(model.norms[l], model.layers[l](h)) @ chained
        chained = model.activation.derivative(a)[:, None] * chained
        if model.residual and chained.shape[0] == total.shape[0]:
            chained = chained + total
        total = chained
        result.append(total)
    return tuple(result)
