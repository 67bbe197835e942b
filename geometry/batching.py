"""Mapping a per-point function over many points: vmapped in chunks, sharded, jitted — and checked.

`map_points(per_point, params, points)` evaluates `per_point(params, x)` at every point:
vmapped, walked in chunks with `jax.lax.map(batch_size=...)` (peak memory set by the chunk,
not the point count), sharded over a 1-D device mesh when there are several devices (across
processes too after `jax.distributed` is initialised), and jitted once per `per_point`.
Every derivative this library returns is computed through it.

**The canary.** A compiler can be wrong: jaxlib 0.10.2 on CPU miscompiles
`jit(vmap(jacfwd))` and `jit(vmap(jacrev))` of LayerNorm / RMSNorm over token matrices
(errors of 18–37 % at whole points, no warning). So after every mapped call outside a trace,
`map_points` recomputes a small deterministic sample of the points — the first, the last
and the first of every chunk, at most `CANARY_MAX_POINTS` — through an independent route:
the same `per_point` compiled *unbatched* for one point (`jax.jit(per_point)`, no `vmap`, and
with XLA's backend optimisations off: another pipeline, half the compilation time), and compares
every floating-point leaf. Where

    ‖batched − unbatched‖ > rtol · ‖unbatched‖ + atol     (per leaf, per sampled point)

with `rtol = canary_rtol(dtype)` = 32·√eps (1.1e-2 in float32, 4.8e-7 in float64; a compiler
fault is a wrong number at whole points, rounding differences between two right programs
are ~eps·‖value‖) and `atol` = 1000 × the smallest normal number, it raises
`CompilerFaultError` naming the point, the output (e.g. the layer) and the relative
difference. Entries that are NaN or ±inf in either are left to the finiteness checks
(0·inf can be NaN in one right program and 0 in another). Integer and boolean leaves are
not compared (flags, counts). The cost is one more compilation per `per_point` (cached
like the batched one) and a handful of single-point evaluations (benchmarks/RESULTS.md).

Turn it off by name: `with batching.canary(False): ...`, or the environment variable
`LAYER_GEOMETRY_CANARY=0` for a whole process; `map_points(..., canary=False)` per call.
Under an outer trace (`jax.jit` of a function calling `map_points`) there is nothing to
compare on the host, and the call is inlined unchecked.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

POINT_AXIS = "points"  # the name of the 1-D device mesh axis the points are split over
DEFAULT_CHUNK_SIZE = 4096  # points per vmapped batch; ~tens of MB for a width-256, depth-8 MLP
CANARY_MAX_POINTS = 8  # sampled points per call at most (first, last, one per chunk between)

_SETTING = threading.local()


class CompilerFaultError(RuntimeError):
    """The compiled batched program and the unbatched one disagree at a point: a compiler fault."""


def is_traced(tree) -> bool:
    """Whether any leaf of `tree` is a JAX tracer (we are inside jit / vmap / grad)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def canary_enabled() -> bool:
    """Whether `map_points` checks its results (the `canary` context, else LAYER_GEOMETRY_CANARY)."""
    setting = getattr(_SETTING, "enabled", None)
    if setting is not None:
        return setting
    return os.environ.get("LAYER_GEOMETRY_CANARY", "1").strip().lower() not in ("0", "off", "false", "no")


@contextlib.contextmanager
def canary(enabled: bool):
    """Turn the canary on or off inside the block (this thread).

    Args:
      enabled: False skips the independent recomputation of sampled points in every
        `map_points` call inside the block (and so in every library route built on it).
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"canary(enabled) takes True or False, got {enabled!r}")
    previous = getattr(_SETTING, "enabled", None)
    _SETTING.enabled = enabled
    try:
        yield
    finally:
        _SETTING.enabled = previous


def canary_rtol(dtype) -> float:
    """The canary's relative tolerance for values of `dtype`: 32·√eps."""
    return float(32 * np.sqrt(np.finfo(dtype).eps))


def sample_indices(count: int, chunk_size: int) -> list[int]:
    """The points the canary recomputes: the first of every chunk and the last point, at most
    `CANARY_MAX_POINTS` (spread evenly over the chunks when there are more)."""
    starts = list(range(0, count, max(1, chunk_size)))
    if len(starts) > CANARY_MAX_POINTS - 1:
        keep = np.linspace(0, len(starts) - 1, CANARY_MAX_POINTS - 1).round().astype(int)
        starts = [starts[i] for i in sorted(set(keep.tolist()))]
    return sorted(set(starts) | {count - 1})


def local_map(per_point, params, points, chunk_size):
    """per_point(params, x) over the points (N, ...), vmapped in chunks of `chunk_size`, traced
    where it is called (no jit, no check): the body of `map_points` and of `pure_jacobian_field`."""
    if chunk_size >= points.shape[0]:
        return jax.vmap(per_point, in_axes=(None, 0))(params, points)
    return jax.lax.map(lambda x: per_point(params, x), points, batch_size=chunk_size)


mapped = jax.jit(local_map, static_argnames=("per_point", "chunk_size"))
"""The jitted single-device map, `mapped(per_point, params, points, chunk_size)`: its
`_cache_size()` counts the compiled programs (tests check that new values do not recompile)."""


def _call_one(per_point, params, x):
    return per_point(params, x)


_ONE = jax.jit(_call_one, static_argnames=("per_point",))
# the independent route is compiled by another pipeline too: XLA's backend optimisations off. It halves
# the compilation the check costs (the first call of each model structure pays it) and makes a fault
# shared by the two programs less likely still.
UNBATCHED_COMPILER_OPTIONS = {"xla_backend_optimization_level": "0"}
_COMPILED: dict = {}  # (per_point, abstract params and point) -> executable, the latest 64 (memory maps)


def unbatched(per_point, params, x):
    """per_point(params, x) at one point, compiled without `vmap` and without XLA's backend
    optimisations — the canary's independent route (cached per per_point and shapes)."""
    leaves, treedef = jax.tree_util.tree_flatten((params, x))
    key = (per_point, treedef, tuple((jnp.shape(leaf), str(jnp.result_type(leaf))) for leaf in leaves))
    try:
        executable = _COMPILED.get(key)
    except TypeError:  # an unhashable per_point: compile it the ordinary way
        return _ONE(per_point, params, x)
    if executable is None:
        executable = _ONE.lower(per_point, params, x).compile(compiler_options=UNBATCHED_COMPILER_OPTIONS)
        if len(_COMPILED) >= 64:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = executable
    return executable(params, x)


def _mismatch(batched: np.ndarray, reference: np.ndarray, rtol: float, atol: float) -> tuple[float, bool]:
    """(relative difference, whether it is beyond the tolerance) of two values of one point, on the host,
    over the entries finite in both (NaN and inf are the finiteness checks' to report: two right programs
    can give 0·inf as NaN in one and 0 in the other)."""
    batched, reference = np.asarray(batched, np.float64), np.asarray(reference, np.float64)
    finite = np.isfinite(reference) & np.isfinite(batched)
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf where both are inf: masked out
        difference = float(np.linalg.norm(np.where(finite, batched - reference, 0).ravel()))
    scale = float(np.linalg.norm(np.where(finite, reference, 0).ravel()))
    relative = difference / scale if scale > 0 else (0.0 if difference == 0 else np.inf)
    return relative, bool(difference > rtol * scale + atol)


def _rows(leaf, indices: list[int]) -> np.ndarray:
    """leaf[indices] on the host: read in place from CPU memory, gathered on the device elsewhere
    (so a large field on an accelerator is not copied whole)."""
    if all(device.platform == "cpu" for device in leaf.devices()):
        return np.asarray(leaf)[indices]
    return np.asarray(leaf[jnp.asarray(indices)])


def _leaf_name(path) -> str:
    name = jax.tree_util.keystr(path)
    return name if name else "the output"


def check_sample(per_point: Callable, params, points: jax.Array, result, chunk_size: int, *,
                 what: str = "") -> None:
    """Recompute `sample_indices` of the points by `unbatched` and compare with `result`
    (the batched values, leading point axis); `CompilerFaultError` on disagreement.

    A `per_point` with `canary_max_points = 1` is checked at the last point only (Krylov
    iterations, whose unbatched run costs about as much as the batched one over all points).
    A `per_point` with a method `canary_view(output)` says which part of its output is compared
    (the same function serves a batched output and one point's): e.g. a sketch J·V of a
    Jacobian that the caller reduces to an ill-conditioned number, or Ritz values but not the
    rounding-level error bounds beside them."""
    count = points.shape[0]
    view = getattr(per_point, "canary_view", None) or (lambda output: output)
    leaves = jax.tree_util.tree_flatten_with_path(view(result))[0]
    checked = [(path, leaf) for path, leaf in leaves
               if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact) and leaf.ndim >= 1]
    if not checked:
        return
    indices = sample_indices(count, chunk_size)
    if getattr(per_point, "canary_max_points", None) == 1:
        indices = indices[-1:]  # the last point: in the remainder chunk when chunked, a program path of its own
    rows = [_rows(leaf, indices) for _, leaf in checked]  # (S, ...) each, on the host
    sampled_points = _rows(points, indices)
    for s, i in enumerate(indices):
        reference = view(unbatched(per_point, params, sampled_points[s]))
        reference_leaves = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(reference)[0]}
        for (path, _), leaf_rows in zip(checked, rows):
            assert_agree(leaf_rows[s], reference_leaves[jax.tree_util.keystr(path)],
                         f"{what or 'the result'} at point {i} ({_leaf_name(path)})",
                         getattr(per_point, "canary_rtol_floor", 0.0))


def assert_agree(batched, reference, where: str, rtol_floor: float = 0.0) -> None:
    """Raise `CompilerFaultError` when one point's value from a batched program and the same
    value from an unbatched one differ beyond the canary's tolerance for the reference's dtype.

    Args:
      batched: the value the batched (vmapped) program computed at one point.
      reference: the same value from the independent unbatched route.
      where: what and where, for the message ("the Jacobian at point 3 (['layers/0'])").
      rtol_floor: the least relative tolerance (Krylov estimates carry their own rounding).
    """
    batched, reference = np.asarray(batched), np.asarray(reference)
    dtype = reference.dtype
    if not np.issubdtype(dtype, np.inexact):
        return
    rtol = max(canary_rtol(dtype), rtol_floor)
    atol = 1000 * float(np.finfo(dtype).tiny)
    relative, bad = _mismatch(batched, reference, rtol, atol)
    if bad:
        raise CompilerFaultError(
            f"{where}: the compiled batched program disagrees with the unbatched one, relative difference "
            f"{relative:.3g} (tolerance {rtol:.2g} for {np.dtype(dtype).name}): a compiler fault. chunk_size=1 or "
            f"another jaxlib avoids it (jax {jax.__version__}; this library is checked on the versions its "
            "pyproject.toml allows). Nothing was returned.")


def _sharded(per_point, params, points, chunk_size, mesh):
    # each device walks its own slice of the points in chunks: memory per device is set by
    # the chunk, and no device waits on another (the points are independent)
    def local(params, points):
        return local_map(per_point, params, points, chunk_size)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(POINT_AXIS)), out_specs=P(POINT_AXIS))(params, points)


_sharded_jit = jax.jit(_sharded, static_argnames=("per_point", "chunk_size", "mesh"))


def map_points(per_point: Callable, params, points: jax.Array, *, chunk_size: int | None = None,
               devices: Sequence[jax.Device] | None = None, canary: bool | None = None, what: str = ""):
    """per_point(params, x) at every point: vmapped in chunks, sharded over devices, jitted, checked.

    Args:
      per_point: a hashable callable (a frozen dataclass, a module-level function) of
        (params, one point); the compiled programs are cached on it.
      params: a pytree passed to every call unchanged.
      points: (N, *point_shape) array.
      chunk_size: points per vmapped batch (default `DEFAULT_CHUNK_SIZE`).
      devices: the devices to spread the points over (default: all of `jax.devices()`).
      canary: recompute a sample of the points unbatched and compare (None: `canary_enabled()`).
      what: how the canary's error names the result ("the Jacobian", "a local Jacobian").

    Returns:
      The pytree of per-point results with a leading axis of N.

    Raises:
      ValueError: chunk_size < 1.
      CompilerFaultError: the canary found the batched and unbatched programs disagreeing.

    Under an outer trace the map is inlined there instead, unchecked.
    """
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    count = points.shape[0]
    if is_traced((params, points)):
        return local_map(per_point, params, points, min(chunk_size, count))
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) == 1:
        result = mapped(per_point, params, points, min(chunk_size, count))
    else:
        result = _map_sharded(per_point, params, points, chunk_size, devices)
    if canary_enabled() if canary is None else canary:
        check_sample(per_point, params, points, result, min(chunk_size, count), what=what)
    return result


def _map_sharded(per_point, params, points, chunk_size, devices):
    count = points.shape[0]
    mesh = Mesh(np.asarray(devices), (POINT_AXIS,))
    padded = -(-count // len(devices)) * len(devices)
    if padded > count:  # repeat the last point; its extra results are dropped below
        points = jnp.concatenate([points, jnp.broadcast_to(points[-1:], (padded - count, *points.shape[1:]))])
    # devices of several processes (jax.distributed, `geometry.distributed`): the inputs go in from
    # host memory (identical on every process; arrays on one process's device cannot be sent to
    # another's), each process computes its share, and every one gets the whole field back
    processes = any(d.process_index != jax.process_index() for d in devices)
    if processes:
        points, params = jax.device_get((points, params))
    points = jax.device_put(points, NamedSharding(mesh, P(POINT_AXIS)))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    result = _sharded_jit(per_point, params, points, min(chunk_size, padded // len(devices)), mesh)
    if processes:
        from jax.experimental import multihost_utils

        result = jax.tree_util.tree_map(jnp.asarray, multihost_utils.process_allgather(result, tiled=True))
    return jax.tree_util.tree_map(lambda leaf: leaf[:count], result)
