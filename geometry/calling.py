"""The calling convention of a model: how any model the library takes becomes pure(params, x).

Every analysis takes the same kinds of model, and this module is the one place that knows them:

* an `nnx.Module` (its `__call__`) or a bound method of one: split once (`nnx.split`) together
  with its keyword arguments into a graph definition and a state, and merged inside the
  transform (`ModuleCall`, `merged`);
* a function of one example x, or `f(params, x)` with `params=` (a Linen `model.apply` with
  its variables): `FunctionCall`;
* `model_kwargs`: keyword arguments of every call, held fixed and the same for every point;
  arrays among them are traced (new values do not recompile), graph nodes among them (an
  `nnx.Rngs`, a cache module) are copied per call, other Python values are static;
* `batched=True`: the model is written batch-first and is called on x[None] (`call_batched`).

It also owns the checks at the boundary: points (`check_points`: finite, non-empty, integers
refused where they would be differentiated), a model that changes its own state while being
evaluated (`ModelStateError`), a model that cannot take one point (`output_shapes`, with
`call_hint`'s advice), and non-finite results (`check_finite_result`, `raise_nonfinite`).
Jacobian fields (`geometry.jacobians`) and the probe (`geometry.recording`, `geometry.probe`)
build on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry.batching import is_traced
from geometry.functional import StaticKey
from geometry.shapes import as_float_array


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
            return call_batched(functools.partial(getattr(module, self.method), **kwargs), x, self.batched)


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
        return call_batched(functools.partial(fn, **kwargs), x, self.batched)


def call_batched(fn, x, batched: bool):
    """fn(x), or fn(x[None])[0] leaf by leaf when `batched` (a model written batch-first)."""
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


def check_kwargs(model_kwargs) -> dict:
    """model_kwargs as a dict (None: empty), arrays stripped of weak types; ValueError if not a dict by name."""
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
    kwargs = check_kwargs(model_kwargs)
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


def program(pure, params, points: jax.Array, *, batched: bool = False):
    """(ClosedJaxpr of pure(params, x) for one point like `points[0]`, its output ShapeDtypeStructs):
    one abstract trace, with `output_shapes`' errors when the model cannot take such a point."""
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    try:
        return jax.make_jaxpr(pure, return_shape=True)(_abstract(params), example)
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


def all_finite(tree) -> jax.Array:
    """() bool: every entry of every inexact leaf of `tree` is finite (traceable)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


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
