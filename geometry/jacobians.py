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

import contextlib
import dataclasses
import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import flax.errors
import numpy as np
from flax import nnx
from geometry import batching
from geometry.batching import DEFAULT_CHUNK_SIZE, POINT_AXIS, CompilerFaultError, is_traced, map_points
from geometry.functional import StaticKey
from geometry.shapes import AnyArray, Shaped, as_float_array, shape_checked

MODES = ("auto", "forward", "reverse")
# cost of one reverse-mode cotangent in units of one forward-mode tangent: the median over tanh
# MLPs n → 256 → 256 → m, n, m ∈ {4, 16, 64, 256}, was 1.03 (benchmarks/modes.py; CPU, jax 0.10.2;
# 0.76–1.58 case by case). Forward when n ≤ REVERSE_COST · m.
REVERSE_COST = 1.0


class ModelStateError(ValueError):
    """The model changed its own state while being evaluated (BatchNorm statistics, dropout RNG)."""


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleCall(StaticKey):
    """A module method as a pure function of (state, x), merged inside the transform.

    `graphdef` is the definition of (module, model_kwargs): keyword arguments travel with the
    module's state, arrays among them as traced leaves, graph nodes (an `nnx.Rngs`, a cache
    module) split and merged per call, Python values static.
    """

    graphdef: Any
    method: str
    batched: bool = False

    def __call__(self, state, x):
        with merged(self.graphdef, state) as (module, kwargs):
            return _call_batched(functools.partial(getattr(module, self.method), **kwargs), x, self.batched)


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionCall(StaticKey):
    """f(x, **kwargs) or f(params, x, **kwargs) as pure(params, x); with keyword arguments,
    params is (the user's params, the kwargs' state) and `kwargs_graphdef` their definition."""

    fn: Callable
    takes_params: bool = False
    batched: bool = False
    kwargs_graphdef: Any = None

    def __call__(self, params, x):
        if self.kwargs_graphdef is None:
            return self._call(params, x, {})
        params, kwargs_state = params
        with merged(self.kwargs_graphdef, kwargs_state, tree="kwargs") as kwargs:
            return self._call(params, x, kwargs)

    def _call(self, params, x, kwargs):
        fn = functools.partial(self.fn, params) if self.takes_params else self.fn
        return _call_batched(functools.partial(fn, **kwargs), x, self.batched)


def _call_batched(fn, x, batched: bool):
    if not batched:
        return fn(x)
    out = fn(x[None])  # a leading batch axis of one, for models written batch-first
    return jax.tree_util.tree_map(lambda leaf: leaf[0], out)


EVAL_HINT = "Call model.eval() first (or pass model_kwargs={'deterministic': True}; model.train() to resume training)."


def _state_error(what: str) -> ModelStateError:
    return ModelStateError(
        f"{what} changed its state while being evaluated (e.g. BatchNorm updating its statistics or Dropout "
        f"drawing random numbers in training mode); Jacobians of such a call are not of one function. {EVAL_HINT}")


# state a call may change without changing the function being differentiated: a decode cache
# (written, then discarded with the merged copy), values the model sows, and parameters — a
# forward pass never trains them, but Flax's transforms write them back (an `nnx.scan` over
# stacked blocks re-stacks its weights into new arrays of the same values)
_MUTABLE = (nnx.Cache, nnx.Intermediate, nnx.Param)


def _changed_state(before, after, tree) -> list[str]:
    """Paths of variables whose value the call replaced and that it may not change: in the
    model, anything but a cache or a sown value; in the arguments beside it (a (module,
    kwargs, ...) tuple: every path prefix but 0), random-number state only (Dropout drawing)."""
    old = {path: variable for path, variable in nnx.to_flat_state(before)}
    changed = []
    for path, variable in nnx.to_flat_state(after):
        previous = old.pop(path, None)
        value = variable.get_value() if hasattr(variable, "get_value") else variable
        if previous is not None:
            previous = previous.get_value() if hasattr(previous, "get_value") else previous
            if value is previous:
                continue
        if isinstance(variable, _MUTABLE):
            continue
        in_kwargs = tree == "kwargs" or (tree == "pair" and bool(path) and path[0] != 0)
        if in_kwargs and not isinstance(variable, nnx.RngState):
            continue
        changed.append("/".join(str(p) for p in path))
    changed.extend("/".join(str(p) for p in path) for path, variable in old.items()
                   if not isinstance(variable, _MUTABLE))
    return changed


@contextlib.contextmanager
def merged(graphdef, state, *, tree: str = "pair"):
    """The object merged from (graphdef, state): a (module, arguments, ...) tuple ("pair", the
    module first) or a dict of keyword arguments alone ("kwargs") —
    for evaluating inside a transform; raises ModelStateError if the block changes state it
    may not (Flax's error for a Variable written under a transform, or a state array replaced).

    The merge copies the Variables (`copy=True`): variables created outside the current trace
    cannot be read by Flax's own transforms inside it (an `nnx.scan` over layers fails with
    "Cannot extract graph node from different trace level" otherwise)."""
    obj = nnx.merge(graphdef, state, copy=True)
    if tree not in ("pair", "kwargs"):
        raise ValueError(f"tree must be 'pair' or 'kwargs', got {tree!r}")
    name = type(obj[0]).__name__ if tree == "pair" else "model_kwargs"
    try:
        yield obj
    except flax.errors.TraceContextError as error:
        raise _state_error(name) from error
    changed = _changed_state(state, nnx.state(obj), tree)
    if changed:
        raise _state_error(f"{name} ({', '.join(changed[:4])})")


def _positional(fn) -> tuple[int, bool] | None:
    """(required positional parameters, whether it takes *args), or None without a signature."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in parameters)
    return required, any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters)


def module_and_method(f) -> tuple[nnx.Module | None, str]:
    """(module, method name) when f is an nnx.Module or a bound method of one, else (None, "__call__")."""
    if isinstance(f, nnx.Module):
        return f, "__call__"
    if inspect.ismethod(f) and isinstance(f.__self__, nnx.Module):
        return f.__self__, f.__name__
    return None, "__call__"


def _check_kwargs(model_kwargs) -> dict:
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise ValueError(f"model_kwargs must be a dict of keyword arguments by name, got {type(model_kwargs).__name__}")
    # a weakly typed array (jnp.full(4, 0.1)) traces as another type than a strong one of the same
    # dtype: strip the weak type so that new values never recompile
    return jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(leaf, dtype=leaf.dtype) if isinstance(leaf, jax.Array) else leaf,
        dict(model_kwargs), is_leaf=lambda leaf: isinstance(leaf, (nnx.Module, nnx.Variable, nnx.Rngs)))


def as_pure_function(f, params=None, *, batched: bool = False, model_kwargs=None) -> tuple[Callable, Any]:
    """(pure, params) with pure(params, x) = f(x, **model_kwargs), or f(params, x, **model_kwargs)
    when `params` is given.

    Modules and their bound methods are split once together with `model_kwargs`: params is
    then the state of (module, kwargs). For functions with keyword arguments params is
    (params, the kwargs' state). Keyword arguments are held fixed (never differentiated) and
    are the same for every point; arrays among them are traced (new values do not recompile),
    graph nodes among them are copied per call (a cache they hold is written on the copy, so
    the caller's objects never change), other Python values are static.
    """
    try:
        import flax.linen as linen
        if isinstance(f, linen.Module):
            raise ValueError(f"got an unbound Linen module ({type(f).__name__}); pass f=model.apply and "
                             "params=variables (what model.init returned)")
    except ImportError:  # pragma: no cover - linen ships with flax
        pass
    kwargs = _check_kwargs(model_kwargs)
    module, method = module_and_method(f)
    if module is not None:
        if params is not None:
            raise ValueError("params= is for functions f(params, x); an nnx.Module carries its own parameters")
        graphdef, state = nnx.split((module, kwargs))
        return ModuleCall(graphdef, method, batched), state
    if not callable(f):
        raise ValueError(f"f must be an nnx.Module, a bound method or a function, got {type(f).__name__}")
    signature = _positional(f)
    required, var_positional = signature if signature is not None else (None, True)
    takes_params = params is not None
    if not takes_params:
        if required is not None and required >= 2:
            raise ValueError(f"f takes {required} positional arguments; for f(params, x) pass params=")
    elif required is not None and required < 2 and not var_positional:
        raise ValueError(f"params= was given but f takes {required} positional argument(s); "
                         "it must be f(params, x)")
    if not kwargs:
        return FunctionCall(f, takes_params, batched), params
    kwargs_graphdef, kwargs_state = nnx.split(kwargs)
    return FunctionCall(f, takes_params, batched, kwargs_graphdef), (params, kwargs_state)


def check_points(points, *, differentiable: bool = True) -> jax.Array:
    """points as an (N, *input_shape) array; ValueError naming the problem otherwise.

    With `differentiable` the points are what is differentiated: integer points are then
    refused (token ids have no derivative; `wrt=` differentiates by a layer's output instead).
    The finiteness check needs concrete values, so it is skipped under a trace.
    """
    if differentiable:
        dtype = getattr(points, "dtype", None)
        dtype = np.asarray(points).dtype if dtype is None else dtype
        if np.issubdtype(dtype, np.integer):
            raise ValueError(
                f"points are integers (dtype {dtype}), and a derivative with respect to them is not defined. "
                "For token ids, differentiate with respect to the embedding's output instead: pass "
                "wrt='<embedding layer path>' (jacobian_field on a module, or probe.input_jacobian_field; "
                "probe.layers(model, points[0]) lists the paths). For integer-valued real inputs, pass "
                "points.astype(float).")
    # as_float_array: float64 values float32 would turn into inf or 0 are refused, not silently changed
    points = as_float_array("points", points) if differentiable else jnp.asarray(points)
    if points.ndim < 1:
        raise ValueError("points must have a leading point axis, shape (N, *input_shape); got a scalar")
    if points.size == 0:
        raise ValueError(f"points is empty: shape {tuple(points.shape)}")
    if jnp.issubdtype(points.dtype, jnp.inexact) and not is_traced(points):
        finite_rows = np.all(np.isfinite(np.asarray(points)).reshape(points.shape[0], -1), axis=1)
        if not finite_rows.all():
            bad = np.flatnonzero(~finite_rows)
            raise ValueError(f"points contain NaN or inf in {bad.size} rows (first rows: {bad[:5].tolist()})")
    return points


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def output_shapes(pure, params, points: jax.Array, *, batched: bool = False):
    """The per-point output structure of pure(params, x) (ShapeDtypeStructs), or a ValueError
    saying the model cannot take points of this shape."""
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    try:
        return jax.eval_shape(pure, _abstract(params), example)
    except ModelStateError:
        raise
    except Exception as error:  # any failure of the user's code on one example
        raise ValueError(f"f cannot take one point of shape {tuple(points.shape[1:])} (dtype {points.dtype}): "
                         f"{type(error).__name__}: {error}.{call_hint(error, batched)}") from error


_SHAPE_WORDS = ("shape", "rank", "dimension", "too many indices", "broadcast", "axis", "axes", "size")


def call_hint(error: Exception, batched: bool) -> str:
    """What to do about a model failing on one example, by the kind of failure (empty if unknown)."""
    text = str(error)
    if isinstance(error, TypeError) and "required" in text and "argument" in text:
        missing = re.findall(r"'(\w+)'", text.split("argument")[-1])
        names = ", ".join(f"'{name}': ..." for name in missing) or "...: ..."
        return (f" The call needs argument(s) {', '.join(missing) or '(see above)'}: pass them with "
                f"model_kwargs={{{names}}} (held fixed, the same for every point).")
    if "rngs" in text and ("Dropout" in text or "deterministic" in text):
        return " " + EVAL_HINT
    if type(error).__name__ == "TypePromotionError":  # not jax_numpy_rank_promotion, whose message says "promotion" too
        return (" The points' dtype and the model's parameters differ: cast the points to the parameters' dtype "
                "or build the model in the points' dtype.")
    if ("integer" in text or "Indexer" in text) and ("token" in text or "index" in text.lower()):
        return (" The model wants integer inputs (token ids): pass the points as integers and differentiate with "
                "respect to a layer's output with wrt= (geometry.probe.input_jacobian_field).")
    if not batched and isinstance(error, (TypeError, ValueError, IndexError)) and any(
            word in text.lower() for word in _SHAPE_WORDS):
        return (" If the model expects a leading batch axis (x.shape[0], a reshape to (batch, -1)), pass "
                "batched=True.")
    return ""


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


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


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
        jac_finite = _all_finite(jac) if reduce is not None else jnp.array(True)
        finite = jnp.stack([jac_finite, _all_finite(value)])
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
    path = getattr(found, "_probe_path", None)
    return f"layer {path!r} ({type(found).__name__})" if path else f"a layer of type {type(found).__name__}"


def _nonfinite_error(bad_rows: np.ndarray, what: str, detail: str = "") -> ValueError:
    bad = np.flatnonzero(bad_rows)
    return ValueError(
        f"{what} is NaN or inf at {bad.size} of {bad_rows.size} finite points (first points: {bad[:5].tolist()})"
        f"{detail}: the model produces non-finite values or derivatives there (log or sqrt at 0 or below, "
        "overflow, a division by zero). Spectra of such a field would read as rank collapse. "
        "Pass check_finite=False to get the raw field.")


@jax.jit
def _finite_rows(tree) -> jax.Array:
    """(N,) whether every entry of every inexact leaf (leading point axis) is finite."""
    rows = [jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(rows), axis=0) if rows else jnp.ones(jax.tree_util.tree_leaves(tree)[0].shape[0], bool)


def check_finite_result(result, what: str = "the Jacobian") -> None:
    """ValueError naming the points where any leaf of `result` (leading point axis) is not finite."""
    if is_traced(result) or not jax.tree_util.tree_leaves(result):
        return
    bad_rows = ~np.asarray(_finite_rows(result))
    if bad_rows.any():
        raise _nonfinite_error(bad_rows, what)


def raise_nonfinite(finite, what: str = "the Jacobian", field=None) -> None:
    """ValueError naming the points whose (N, 2) flags [J finite, output finite] are not both true;
    `field`: the unreduced Jacobians, whose finiteness `jacobian_at` left to this check."""
    if is_traced(finite) or is_traced(field):
        return
    finite = np.array(finite).reshape(-1, 2)
    if field is not None:
        finite[:, 0] &= np.asarray(_finite_rows(field))
    bad_rows = ~finite.all(axis=1)
    if not bad_rows.any():
        return
    output_bad = np.flatnonzero(~finite[:, 1])
    where = (f"the model's output is NaN or inf at {output_bad.size} of them (first: {output_bad[:5].tolist()})"
             if output_bad.size else "the output is finite there")
    raise _nonfinite_error(bad_rows, what, f"; {where}")


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


@shape_checked
def jacobian_field(f, points: Shaped[AnyArray, "N *input"], *, mode: str = "auto", params=None, chunk_size: int | None = None,
                   reduce: Callable | None = None, devices: Sequence[jax.Device] | None = None,
                   batched: bool = False, as_matrix: bool = False, check_finite: bool = True, model_kwargs=None,
                   wrt: str | None = None):
    """The Jacobian of f at every point: (N, *out_shape, *in_shape), what `jax.jacobian` gives per point.

    Args:
      f: an `nnx.Module`, a module's bound method, a function of one example x, or
        `f(params, x)` together with `params=`. Pytree outputs give a pytree of fields.
      points: (N, *input_shape) finite floating-point inputs (integer points, e.g. token ids,
        need `wrt=`).
      mode: "forward" (jacfwd), "reverse" (jacrev) or "auto" (see the module docstring).
      params: the parameters of `f(params, x)` (e.g. Linen variables); new values reuse the
        compiled function.
      chunk_size: points per vmapped batch (default `DEFAULT_CHUNK_SIZE`); memory is
        bounded by the chunk. Pass `len(points)` to vmap everything at once.
      reduce: applied to each point's Jacobian (to each leaf, for pytree outputs) inside the
        chunked loop (e.g. `geometry.spectra.singular_values`): only its result is kept.
      devices: the devices to spread the points over (default: all of `jax.devices()`).
      batched: f expects a leading batch axis (written batch-first): it is called on x[None].
      as_matrix: each point's Jacobian reshaped to (prod(out_shape), prod(in_shape)), the form
        the spectra take, before `reduce`.
      check_finite: raise ValueError when the Jacobian is NaN or inf at a finite point.
      model_kwargs: keyword arguments of every call (`rngs=`, `deterministic=`, a KV cache,
        segment ids), held fixed and the same for every point (`as_pure_function`).
      wrt: the path of one layer of the module f (`probe.layers` lists them): the derivative
        of f's output with respect to that layer's output instead, (N, *out_shape, *wrt_shape),
        f still run from its own points (so token ids stay integers; e.g. wrt="embed").
    """
    if wrt is not None:
        if module_and_method(f)[0] is None or params is not None:
            raise ValueError("wrt= names a layer of an nnx.Module (or of a bound method's module); "
                             f"got {type(f).__name__}" + (" with params=" if params is not None else ""))
        from geometry import probe  # probe builds on this module
        return probe._output_field_wrt(f, points, wrt, mode=mode, chunk_size=chunk_size, reduce=reduce,
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
