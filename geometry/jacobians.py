"""Jacobian fields of any function, model or layer, over whole sets of points.

`jacobian_field(f, points)` returns at every point what `jax.jacobian` gives: an array of
shape (N, *out_shape, *in_shape) (a pytree of them for pytree outputs). It takes

* an `nnx.Module` (its `__call__`) or a module's bound method,
* a function of one example x,
* `f(params, x)` with `params=` — a Linen `model.apply` with its variables, or any pure
  function. The parameters are arguments of the compiled function, not baked-in constants.

**Mode.** Forward mode (`jax.jacfwd`) pushes one tangent per input dimension n through the
model; reverse mode (`jax.jacrev`) pulls one cotangent per output dimension m back. With
`mode="auto"` forward is used when n ≤ `REVERSE_COST` · m, reverse otherwise:
`REVERSE_COST` is the measured cost of one reverse sweep relative to one forward tangent
(`python -m benchmarks.modes`; benchmarks/RESULTS.md has the table it was fitted from).

**Batching.** The per-point Jacobian is vmapped and walked in chunks with
`jax.lax.map(batch_size=...)`, so peak memory is set by the chunk, not by the point count;
with several devices the points are sharded over a 1-D mesh (`NamedSharding`), across
processes too after `jax.distributed` is initialised (`geometry.distributed`): every process
must pass the same points, and every process gets the whole field back.

**Compilation.** Modules are split once (`nnx.split`); the compiled function is cached on
the module's graph definition (structural equality, so unhashable graph definitions work
too) or on the function object, so a second call with the same model or function — new
parameter values included — does not recompile.

**Checks**, on the host and only outside a trace (so the function composes with `jax.jit`
and `jax.vmap`): points finite and non-empty; the Jacobian finite wherever the points are
(`check_finite=False` returns the raw field). `pure_jacobian_field` returns the jittable
function of (params, points) with no host checks at all.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from geometry import batching, calling, recording
from geometry.batching import DEFAULT_CHUNK_SIZE, map_points

# the calling convention, re-exported: these names have always been reachable as jacobians.NAME
from geometry.calling import (  # noqa: F401
    EVAL_HINT,
    FunctionCall,
    ModelStateError,
    ModuleCall,
    as_pure_function,
    call_hint,
    check_finite_result,
    check_points,
    merged,
    module_and_method,
    output_shapes,
    raise_nonfinite,
)
from geometry.functional import StaticKey
from geometry.shapes import AnyArray, Shaped, shape_checked

MODES = ("auto", "forward", "reverse")
# cost of one reverse-mode cotangent in units of one forward-mode tangent: the median over tanh
# MLPs n → 256 → 256 → m, n, m ∈ {4, 16, 64, 256}, was 1.03 (benchmarks/modes.py; CPU, jax 0.10.2;
# 0.76–1.58 case by case). Forward when n ≤ REVERSE_COST · m.
REVERSE_COST = 1.0


def choose_mode(in_size: int, out_size: int) -> str:
    """"forward" when n ≤ REVERSE_COST · m (n tangents cost less than m cotangents), else "reverse"."""
    return "forward" if in_size <= REVERSE_COST * out_size else "reverse"


def resolve_mode(mode: str, in_size: int, out_size: int) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    return choose_mode(in_size, out_size) if mode == "auto" else mode


def output_size(shapes) -> int:
    """Total number of entries of a pytree of arrays or ShapeDtypeStructs."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes))


class JacobianParts(NamedTuple):
    """What `jacobian_at` returns when asked for more than the Jacobian (a pytree: it maps and jits).

    Attributes:
      value: J (or `reduce(J)`), one point's.
      finite: (2,) bools [J finite, fn(x) finite], or None when not asked for.
      sketch: J·V, each leaf's (m, SKETCH_COLUMNS) product with a fixed random V, when J was
        reduced (the canary compares it, since a reduction can be an ill-conditioned function of
        J, a condition number), else None.
    """

    value: Any
    finite: Any = None
    sketch: Any = None


SKETCH_COLUMNS = 2


def sketch(jac, n: int):
    """Each leaf J of `jac`, as an (m, n) matrix, times a fixed (n, SKETCH_COLUMNS) Gaussian V:
    a fingerprint of J that two right programs compute alike up to rounding."""
    def one(J):
        probe = jax.random.normal(jax.random.key(0), (n, SKETCH_COLUMNS), J.dtype)
        return J.reshape(-1, n) @ probe
    return jax.tree_util.tree_map(one, jac)


def jacobian_at(fn, x, mode: str, reduce: Callable | None = None, as_matrix: bool = False,
                with_finite: bool = False, with_sketch: bool = False):
    """∂fn(x)/∂x at one point in `mode`, optionally flattened to (m, n) matrices and reduced.

    Returns J (or `reduce(J)`), or `JacobianParts` when `with_finite` or `with_sketch` asks for
    more: `finite` = [J finite, fn(x) finite] (2,) bools, taken on J itself before `reduce`
    (whose inf can be a documented value, a singular J's condition number) and on the output too
    (log at a negative point has a finite J but a NaN value), inside the same compiled pass
    rather than over the whole field on the host; `sketch` (with a `reduce`) = `sketch(J)`.
    """
    transform = jax.jacfwd if mode == "forward" else jax.jacrev
    finite = None
    if with_finite:
        jac, value = transform(lambda u: (lambda y: (y, y))(fn(u)), has_aux=True)(x)
        # an unreduced J is returned whole and checked after the map (`raise_nonfinite(field=)`), in
        # one jitted pass over the field: inside the derivative's pass the check stops XLA fusing
        # the tangents' layout change with the output (0.75 s against 0.23 s on a 1.6 GB field)
        jac_finite = calling.all_finite(jac) if reduce is not None else jnp.array(True)
        finite = jnp.stack([jac_finite, calling.all_finite(value)])
    else:
        jac = transform(fn)(x)
    n = math.prod(x.shape)
    if as_matrix:
        jac = jax.tree_util.tree_map(lambda J: J.reshape(-1, n), jac)
    result = jac if reduce is None else jax.tree_util.tree_map(reduce, jac)
    if not (with_finite or with_sketch):
        return result
    return JacobianParts(result, finite, sketch(jac, n) if with_sketch and reduce is not None else None)


def parts_view(parts: JacobianParts):
    """What the canary compares of a `JacobianParts`: the sketch when J was reduced, else J."""
    return parts.value if parts.sketch is None else parts.sketch


@dataclasses.dataclass(frozen=True)
class PerPointJacobian:
    """x ↦ ∂pure(params, x)/∂x in one mode, optionally flattened to (m, n) and reduced; with
    `with_finite`, a `JacobianParts` (finite flags, and a sketch of J when reduced)."""

    pure: Callable
    mode: str
    reduce: Callable | None = None
    as_matrix: bool = False
    with_finite: bool = False

    def __call__(self, params, x):
        return jacobian_at(functools.partial(self.pure, params), x, self.mode, self.reduce, self.as_matrix,
                           self.with_finite, self.with_finite)

    def canary_view(self, output):
        return parts_view(output) if self.with_finite else output


def per_point_jacobian(pure, params, example, *, mode="auto", reduce=None, as_matrix=False, batched=False,
                       shapes=None, with_finite=False) -> PerPointJacobian:
    """The per-point Jacobian of pure(params, x) for points like `example` (one point or a
    ShapeDtypeStruct), its mode resolved from the input and output sizes. `shapes`: the
    output structure when the caller already knows it (saves tracing the model again)."""
    example = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
    if shapes is None:
        shapes = output_shapes(pure, params, jax.ShapeDtypeStruct((1, *example.shape), example.dtype),
                               batched=batched)
    out_size = output_size(shapes)
    if out_size == 0:
        raise ValueError("f returns an empty output: there is no Jacobian to take")
    return PerPointJacobian(pure, resolve_mode(mode, math.prod(example.shape), out_size), reduce, as_matrix,
                            with_finite)


class ForwardModeUnavailable(UserWarning):
    """mode="auto" chose forward mode but a layer has only a custom reverse-mode rule."""


def _is_custom_vjp_error(error: Exception) -> bool:
    text = str(error)
    return "forward-mode" in text and "custom_vjp" in text


def _innermost_module(error: Exception) -> str:
    """The innermost NNX module whose method was running when `error` was raised, as
    "layer of type Name", or "a layer of this model" when no frame shows one."""
    found = None
    traceback = error.__traceback__
    while traceback is not None:
        candidate = traceback.tb_frame.f_locals.get("self")
        if isinstance(candidate, nnx.Module):
            found = candidate
        traceback = traceback.tb_next
    if found is None:
        return "a layer of this model"
    path = getattr(found, recording.PATH_ATTRIBUTE, None)
    return f"layer {path!r} ({type(found).__name__})" if path else f"a layer of type {type(found).__name__}"


def field_of(pure, params, points, *, mode="auto", chunk_size=None, reduce=None, devices=None,
             as_matrix=False, check_finite=True, batched=False, shapes=None):
    """The shared route: the Jacobian field of a pure function pure(params, x) over checked points."""
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    per_point = per_point_jacobian(pure, params, example, mode=mode, reduce=reduce, as_matrix=as_matrix,
                                   batched=batched, shapes=shapes, with_finite=True)
    try:
        result = map_points(per_point, params, points, chunk_size=chunk_size, devices=devices, what="the Jacobian")
    except TypeError as error:
        if per_point.mode != "forward" or not _is_custom_vjp_error(error):
            raise
        layer = _innermost_module(error)
        if mode == "forward":
            raise ValueError(f"mode='forward' cannot differentiate {layer}: it defines its derivative with "
                             "jax.custom_vjp, which has no forward mode. Use mode='reverse' (or 'auto').") from error
        warnings.warn(f"{layer} defines its derivative with jax.custom_vjp (no forward mode): mode='auto' uses "
                      "reverse mode for this model", ForwardModeUnavailable, stacklevel=3)
        per_point = dataclasses.replace(per_point, mode="reverse")
        result = map_points(per_point, params, points, chunk_size=chunk_size, devices=devices, what="the Jacobian")
    if check_finite:
        raise_nonfinite(result.finite, field=result.value if reduce is None else None)
    return result.value


@dataclasses.dataclass(frozen=True, eq=False)
class WrtJacobians(StaticKey):
    """x ↦ {key: ∂(output of key)/∂(output of the wrt layer)}, the model run from x itself."""

    recorder: Any  # recording.Recorder, or capture.ProgramValues when activations are selected
    wrt_path: str
    wrt_index: int
    wrt_shape: Any  # ShapeDtypeStruct of the wrt layer's output
    mode: str
    reduce: Callable | None
    as_matrix: bool
    model_output: bool = False  # differentiate the model's own output instead of the recorded layers'

    def __call__(self, state, x):
        def selected(delta):
            output, records = self.recorder(state, x, (self.wrt_path, self.wrt_index, delta))
            if self.model_output:
                return output
            if isinstance(self.recorder, recording.Recorder):
                return {key: records[key][1] for key in self.recorder.keys}
            return dict(records)  # ProgramValues: the values themselves

        delta = jnp.zeros(self.wrt_shape.shape, self.wrt_shape.dtype)
        return jacobian_at(selected, delta, self.mode, self.reduce, self.as_matrix, True, True)

    def canary_view(self, output):
        return parts_view(output)


def wrt_call(found: recording.Plan, wrt: str) -> tuple[str, int, jax.ShapeDtypeStruct]:
    """(path, call index, output shape) of the one layer call `wrt` names, with a floating-point array output."""
    hits = [key for key in found.keys if recording.matches(wrt, key) and found.types[key] is not None]
    if len(hits) != 1:
        raise ValueError(f"wrt={wrt!r} must name one layer call; it matches {len(hits)} "
                         f"({', '.join(hits) or 'none'}); valid paths: {', '.join(found.keys)}")
    key = hits[0]
    shape = found.outputs[key]
    if not isinstance(shape, jax.ShapeDtypeStruct) or not jnp.issubdtype(shape.dtype, jnp.inexact):
        raise ValueError(f"wrt={key!r}: that layer's output is not one floating-point array, so it cannot be "
                         "differentiated by")
    path, _, index = key.partition("@")
    return path, int(index) if index else 0, shape


def wrt_field(recorder, found, state, points, wrt, shapes, *, mode, chunk_size, reduce, devices, as_matrix,
               check_finite, model_output=False):
    """The field of the recorded layers' outputs (or of the model output) by the output of layer `wrt`."""
    path, index, wrt_shape = wrt_call(found, wrt)
    resolved = resolve_mode(mode, math.prod(wrt_shape.shape), output_size(shapes))
    per_point = WrtJacobians(recorder, path, index, wrt_shape, resolved, reduce, as_matrix, model_output)
    parts = map_points(per_point, state, points, chunk_size=chunk_size, devices=devices,
                                 what=f"the Jacobian with respect to {wrt!r}")
    if check_finite:
        raise_nonfinite(parts.finite, field=parts.value if reduce is None else None)
    return parts.value


def output_field_wrt(model, points, wrt: str, *, mode="auto", chunk_size=None, reduce=None, devices=None,
                              batched=False, as_matrix=False, check_finite=True, model_kwargs=None):
    """(N, *output_shape, *wrt_shape): ∂(model output)/∂(output of layer `wrt`), the model run from its
    own (possibly integer) points: the route of `jacobian_field(model, points, wrt=...)`."""
    points = check_points(points, differentiable=False)
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    graphdef, state, method = recording.split_model(model, model_kwargs)
    found = recording.plan(model, example, batched=batched, model_kwargs=model_kwargs)
    recorder = recording.Recorder(graphdef, method, (), batched)
    shapes = jax.eval_shape(lambda s, u: recorder(s, u)[0], state, example)
    return wrt_field(recorder, found, state, points, wrt, shapes, mode=mode, chunk_size=chunk_size, reduce=reduce,
                      devices=devices, as_matrix=as_matrix, check_finite=check_finite, model_output=True)


@shape_checked
def jacobian_field(f, points: Shaped[AnyArray, "N *input"], *, mode: str = "auto", params=None, chunk_size: int | None = None,
                   reduce: Callable | None = None, devices: Sequence[jax.Device] | None = None,
                   batched: bool = False, as_matrix: bool = False, check_finite: bool = True, model_kwargs=None,
                   wrt: str | None = None):
    """The Jacobian of f at every point, what `jax.jacobian` gives per point, chunked, sharded
    over the devices and checked by the compiler canary.

    Args:
        f: an `nnx.Module`, a module's bound method, a function of one example x, or
            `f(params, x)` together with `params=`. Pytree outputs give a pytree of fields.
        points: (N, *input_shape) finite floating-point inputs (integer points, e.g. token ids,
            need `wrt=`).
        mode: "forward" (jacfwd), "reverse" (jacrev) or "auto": forward when the input has at most
            `REVERSE_COST` times as many entries as the output, reverse otherwise.
        params: the parameters of `f(params, x)` (e.g. Linen variables); new values reuse the
            compiled function.
        chunk_size: points per vmapped batch (default `DEFAULT_CHUNK_SIZE`); memory is bounded by
            the chunk. Pass `len(points)` to vmap everything at once.
        reduce: applied to each point's Jacobian (to each leaf, for pytree outputs) inside the
            chunked loop (e.g. `geometry.spectra.singular_values`): only its result is kept.
        devices: the devices to spread the points over (default: all of `jax.devices()`).
        batched: f expects a leading batch axis (written batch-first): it is called on x[None].
        as_matrix: each point's Jacobian reshaped to (prod(out_shape), prod(in_shape)), the form
            the spectra take, before `reduce`.
        check_finite: raise ValueError when the Jacobian is NaN or inf at a finite point.
        model_kwargs: keyword arguments of every call (`rngs=`, `deterministic=`, a KV cache,
            segment ids), held fixed and the same for every point.
        wrt: the path of one layer of the module f (`probe.layers` lists them): the derivative of
            f's output with respect to that layer's output instead, (N, *out_shape, *wrt_shape), f
            still run from its own points (so token ids stay integers; e.g. `wrt="embed"`).

    Returns:
        (N, *out_shape, *in_shape) Jacobians (a pytree of them for pytree outputs), or what
        `reduce` returns per point, stacked over the N points.

    Raises:
        ValueError: an unknown mode, empty or non-finite points, an empty output, a two-argument f
            without `params=`, points that do not fit f (with the `batched=True` hint), a model
            that changes its state under the transform (call `model.eval()`), a `wrt` that names no
            single layer, or a Jacobian that is NaN or inf at finite points (`check_finite`).
        batching.CompilerFaultError: the batched computation disagrees with the same function
            compiled unbatched at the points the canary recomputes (a compiler fault).
    """
    if wrt is not None:
        if module_and_method(f)[0] is None or params is not None:
            raise ValueError("wrt= names a layer of an nnx.Module (or of a bound method's module); "
                             f"got {type(f).__name__}" + (" with params=" if params is not None else ""))
        return output_field_wrt(f, points, wrt, mode=mode, chunk_size=chunk_size, reduce=reduce,
                                               devices=devices, batched=batched, as_matrix=as_matrix,
                                               check_finite=check_finite, model_kwargs=model_kwargs)
    points = check_points(points)
    pure, params = as_pure_function(f, params, batched=batched, model_kwargs=model_kwargs)
    return field_of(pure, params, points, mode=mode, chunk_size=chunk_size, reduce=reduce, devices=devices,
                    as_matrix=as_matrix, check_finite=check_finite, batched=batched)


def pure_jacobian_field(f, example, *, mode: str = "auto", params=None, chunk_size: int | None = None,
                        reduce: Callable | None = None, batched: bool = False,
                        as_matrix: bool = False, model_kwargs=None) -> tuple[Callable, Any]:
    """(field_fn, params): field_fn(params, points) is `jacobian_field` as a pure function.

    No host-side checks, no sharding: it is meant to be jitted, vmapped or differentiated
    by the caller (as neural-tangents' `empirical_ntk_fn` is). `example` is one point (or
    a ShapeDtypeStruct) fixing the input shape, from which the mode is chosen. With
    `model_kwargs`, the returned params carry the keyword arguments' arrays too.
    """
    pure, params = as_pure_function(f, params, batched=batched, model_kwargs=model_kwargs)
    per_point = per_point_jacobian(pure, params, example, mode=mode, reduce=reduce, as_matrix=as_matrix,
                                   batched=batched)
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)

    def field_fn(params, points):
        return batching.local_map(per_point, params, points, min(chunk, points.shape[0]))

    return field_fn, params
