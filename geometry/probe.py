"""Per-layer access to any Flax NNX model: what each submodule receives and returns, and its Jacobians.

A *layer* is any submodule the forward pass calls, named by its "/"-joined path in the
model ("layers/0", "blocks/2/attention", "conv1"), or any value the model `sow`s as an
`nnx.Intermediate` ("path/name"). Nothing in the model is edited and nothing is asked of
it: during one traced forward pass the classes of the selected submodules are wrapped so
that each call records its positional arguments and its output (penzai-style
interception, undone as soon as the pass ends), and sown values are collected with
`nnx.capture`. The library's own models are read this way too: an MLP's hidden state h_l
is the output of "layers/l", its pre-activation a_l the input of "layers/l/activation".

* `layers(model, example)`: the layer paths, in call order.
* `outputs(model, points, layers)` / `inputs(...)`: {path: (N, *shape)} values at every point.
* `input_jacobian_field(model, points, layers)`: {path: ∂(output of the layer)/∂x}, one
  Jacobian of every selected output with respect to the model input, in the cheaper mode.
* `local_jacobian_field(model, points, layers)`: {path: ∂(output)/∂(first input of the
  layer)} at the input the layer receives from x (other arguments held fixed), each layer
  in its own cheaper mode.
* `capture_fn(model, layers, example)`: the pure per-example function behind them, for
  callers that jit and vmap it themselves.

Selecting layers (`layers=`): None takes the *top-level* layers — called submodules that
are not inside another called submodule — plus sown values; otherwise a path, a glob
matched segment by segment ("layers/*" is layers/0, layers/1, … but not layers/0/dense),
a module type (every called instance, at any depth), or a list of these. A submodule
called k > 1 times (shared weights) gives the keys "path@0" … "path@{k-1}"; "path" selects
all of them. All fields are batched, chunked and sharded by `geometry.jacobians.map_points`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from geometry import jacobians
from geometry.functional import StaticKey
from geometry.shapes import AnyArray, Shaped, shape_checked

_MISSING = object()
_PATCH_LOCK = threading.RLock()
_PATCHED: dict[type, list] = {}  # class -> [count, saved __call__ entry of the class dict]
_ACTIVE = threading.local()


def _path_string(parts) -> str:
    return "/".join(str(p) for p in parts)


def _split(model) -> tuple[nnx.Module, str]:
    module, method = jacobians.module_and_method(model)
    if module is None:
        raise ValueError(f"probe takes an nnx.Module or a bound method of one, got {type(model).__name__}")
    return module, method


def _callable_modules(module: nnx.Module) -> dict[str, nnx.Module]:
    """path -> submodule, for every submodule (root excluded) whose class defines __call__."""
    return {_path_string(path): sub for path, sub in nnx.iter_modules(module)
            if path and callable(getattr(type(sub), "__call__", None))}


class _Recording:
    def __init__(self, targets: dict[int, str]):
        self.targets = targets  # id(module) -> path
        self.calls: dict[str, list] = {}  # path -> [(args, kwargs, output), ...] in call order
        self.inside: set[int] = set()


def _recording_wrapper(original):
    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        stack = getattr(_ACTIVE, "stack", None)
        recording = stack[-1] if stack else None
        path = None if recording is None else recording.targets.get(id(self))
        if path is None or id(self) in recording.inside:  # not selected, or a super().__call__ chain
            return original(self, *args, **kwargs)
        slot = recording.calls.setdefault(path, [])  # keyed at call start: outer layers before inner ones
        recording.inside.add(id(self))
        try:
            out = original(self, *args, **kwargs)
        finally:
            recording.inside.discard(id(self))
        slot.append((args, kwargs, out))
        return out

    __call__.__probe_original__ = original
    return __call__


@contextlib.contextmanager
def _intercept(modules: dict[str, nnx.Module]):
    """Record every call of the given modules while the block runs (this thread only)."""
    recording = _Recording({id(m): path for path, m in modules.items()})
    classes = {type(m) for m in modules.values()}
    with _PATCH_LOCK:
        for cls in classes:
            if cls in _PATCHED:
                _PATCHED[cls][0] += 1
                continue
            saved = cls.__dict__.get("__call__", _MISSING)
            original = getattr(cls.__call__, "__probe_original__", cls.__call__)
            _PATCHED[cls] = [1, saved]
            cls.__call__ = _recording_wrapper(original)
    stack = getattr(_ACTIVE, "stack", None)
    if stack is None:
        stack = _ACTIVE.stack = []
    stack.append(recording)
    try:
        yield recording
    finally:
        stack.pop()
        with _PATCH_LOCK:
            for cls in classes:
                _PATCHED[cls][0] -= 1
                if _PATCHED[cls][0] == 0:
                    _, saved = _PATCHED.pop(cls)
                    if saved is _MISSING:
                        del cls.__call__
                    else:
                        cls.__call__ = saved


def _flatten_calls(calls: dict[str, list]) -> dict[str, tuple]:
    """{path: [call, ...]} -> {key: call}, keys "path" or "path@i" for repeated calls."""
    flat = {}
    for path, records in calls.items():
        for i, record in enumerate(records):
            flat[path if len(records) == 1 else f"{path}@{i}"] = record
    return flat


def _sown(state) -> dict[str, Any]:
    """{"path/name": value} from the State nnx.capture returns (a 1-tuple is unwrapped)."""
    flat = {}
    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value() if hasattr(variable, "get_value") else variable
        key = _path_string(path)
        if isinstance(value, tuple) and len(value) == 1:
            value = value[0]
        flat[key] = value
    return flat


def _first_array(args) -> jax.Array | None:
    return args[0] if args and isinstance(args[0], (jax.Array, jax.core.Tracer)) else None


def _records(calls: dict, sown: dict) -> dict[str, tuple]:
    """{key: (first input or None, output)} of the recorded calls, then the sown values."""
    return ({key: (_first_array(args), out) for key, (args, _, out) in calls.items()}
            | {key: (None, value) for key, value in sown.items()})


@dataclasses.dataclass(frozen=True, eq=False)
class Recorder(StaticKey):
    """pure(state, x) -> (output, {key: (first input or None, output)}) for the selected keys.

    `keys` None records every callable submodule and every sown value (used to plan).
    """

    graphdef: Any
    method: str
    keys: tuple[str, ...] | None
    batched: bool = False

    def run(self, state, x):
        """(model, output, {key: (args, kwargs, output)}, {key: sown value}) of one forward pass."""
        with jacobians.merged(self.graphdef, state) as model:
            modules = _callable_modules(model)
            if self.keys is not None:
                wanted = {key.split("@")[0] for key in self.keys}
                modules = {path: m for path, m in modules.items() if path in wanted}
            captured = nnx.capture(getattr(model, self.method), nnx.Intermediate)
            with _intercept(modules) as recording:
                output, sown_state = captured(x[None] if self.batched else x)
        calls, sown = _flatten_calls(recording.calls), _sown(sown_state)
        if self.batched:  # strip the batch axis of one from everything the pass produced
            unbatch = functools.partial(jax.tree_util.tree_map, lambda leaf: leaf[0])
            output, sown = unbatch(output), unbatch(sown)
            calls = {k: ((args[0][0], *args[1:]) if _first_array(args) is not None else args, kwargs, unbatch(out))
                     for k, (args, kwargs, out) in calls.items()}
        return model, output, calls, sown

    def __call__(self, state, x):
        _, output, calls, sown = self.run(state, x)
        records = _records(calls, sown)
        if self.keys is not None:
            records = {key: records[key] for key in self.keys}
        return output, records


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one forward pass calls: keys in call order, their module types and value shapes."""

    keys: tuple[str, ...]  # every recorded key (module calls then sown values), in call order
    types: dict[str, type | None]  # None for a sown value
    inputs: dict[str, Any]  # ShapeDtypeStruct of the first positional input (None if not an array)
    outputs: dict[str, Any]  # ShapeDtypeStruct pytree of the output


def plan(model, example, *, batched: bool = False) -> Plan:
    """Trace one forward pass abstractly and report every layer it calls (no FLOPs spent)."""
    module, method = _split(model)
    graphdef, state = nnx.split(module)
    recorder = Recorder(graphdef, method, None, batched)
    order = []

    def traced(state, x):
        merged, _, calls, sown = recorder.run(state, x)
        order.extend(calls)
        order.extend(sown)
        modules = _callable_modules(merged)
        order.append({key: type(modules[key.split("@")[0]]) for key in calls})
        return _records(calls, sown)

    example = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
    points = jax.ShapeDtypeStruct((1, *example.shape), example.dtype)
    shapes = jacobians.output_shapes(traced, state, points, batched=batched)
    types = order.pop()
    keys = tuple(order)
    return Plan(keys, {key: types.get(key) for key in keys}, {key: shapes[key][0] for key in keys},
                {key: shapes[key][1] for key in keys})


def _top_level(found: Plan) -> list[str]:
    modules = [key for key in found.keys if found.types[key] is not None]
    paths = {key.split("@")[0] for key in modules}
    top = []
    for key in modules:
        parts = key.split("@")[0].split("/")
        if not any("/".join(parts[:i]) in paths for i in range(1, len(parts))):
            top.append(key)
    return top + [key for key in found.keys if found.types[key] is None]


def _matches(pattern: str, key: str) -> bool:
    path = key.split("@")[0]
    if pattern in (key, path):
        return True
    pattern_parts, path_parts = pattern.split("/"), path.split("/")
    return len(pattern_parts) == len(path_parts) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(path_parts, pattern_parts))


def select(found: Plan, layers=None) -> tuple[str, ...]:
    """The keys `layers` selects (see the module docstring), in call order; ValueError listing
    the valid paths when a selector matches nothing."""
    if layers is None:
        return tuple(_top_level(found))
    selectors = [layers] if isinstance(layers, (str, type)) or not isinstance(layers, (list, tuple)) else layers
    chosen = set()
    for selector in selectors:
        if isinstance(selector, type):
            hits = {k for k in found.keys if found.types[k] is not None and issubclass(found.types[k], selector)}
        elif isinstance(selector, str):
            hits = {k for k in found.keys if _matches(selector, k)}
        else:
            raise ValueError(f"a layer selector is a path, a glob or a module type, got {selector!r}")
        if not hits:
            raise ValueError(f"layer {selector!r} matches nothing this model calls; valid paths: "
                             f"{', '.join(found.keys) or '(none)'}")
        chosen |= hits
    return tuple(k for k in found.keys if k in chosen)


def layers(model, example, *, types: type | tuple[type, ...] | None = None) -> list[str]:
    """Every layer path one forward pass on `example` (one point) calls, in call order:
    submodules, then sown values; only instances of `types` when given."""
    found = plan(model, example)
    if types is None:
        return list(found.keys)
    return [k for k in found.keys if found.types[k] is not None and issubclass(found.types[k], types)]


@dataclasses.dataclass(frozen=True, eq=False)
class _CaptureFn(StaticKey):
    """pure(state, x) -> (model output, {key: value}), or just the dict with `values_only`."""

    recorder: Recorder
    which: int  # 0: each layer's first input, 1: its output
    values_only: bool = False

    def __call__(self, state, x):
        output, records = self.recorder(state, x)
        values = {key: value[self.which] for key, value in records.items()}
        return values if self.values_only else (output, values)


def _prepare(model, layers, example, what: str, batched: bool):
    """(capture function, state, keys, plan) for the selected layers of `model`."""
    if what not in ("outputs", "inputs"):
        raise ValueError(f"what must be 'outputs' or 'inputs', got {what!r}")
    module, method = _split(model)
    found = plan(model, example, batched=batched)
    keys = select(found, layers)
    if what == "inputs":
        missing = [k for k in keys if found.inputs[k] is None]
        if missing:
            raise ValueError(f"these layers receive no array input to report: {', '.join(missing)}")
    graphdef, state = nnx.split(module)
    return _CaptureFn(Recorder(graphdef, method, keys, batched), 0 if what == "inputs" else 1), state, keys, found


def capture_fn(model, layers=None, *, example, what: str = "outputs", batched: bool = False):
    """(fn, state, keys): fn(state, x) -> (model output, {key: value}) for one example x.

    `what` is "outputs" (what each layer returns) or "inputs" (its first positional
    argument). A pure function: jit and vmap it, `nnx.merge` happens inside.
    """
    fn, state, keys, _ = _prepare(model, layers, example, what, batched)
    return fn, state, keys


@dataclasses.dataclass(frozen=True, eq=False)
class _LayerOutput(StaticKey):
    """pure(state, x) -> the output of one layer at model input x."""

    capture: _CaptureFn
    key: str

    def __call__(self, state, x):
        return self.capture(state, x)[self.key]


def layer_function(model, layer: str, *, example, batched: bool = False):
    """(f, state) with f(state, x) = the output of `layer` (a path or a pattern matching one
    layer) at model input x: the form every `f(params, x)` analysis takes, e.g. per-layer spectra
    of wide layers without a dense SVD — `matfree.singular_values(f, points, k, params=state)`."""
    example = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
    fn, state, keys, _ = _prepare(model, layer, example, "outputs", batched)
    if len(keys) != 1:
        raise ValueError(f"layer {layer!r} selects {len(keys)} layers ({', '.join(keys) or 'none'}); give one path")
    return _LayerOutput(dataclasses.replace(fn, values_only=True), keys[0]), state


def _ordered(result: dict, keys: Sequence[str]) -> dict:
    return {key: result[key] for key in keys}  # jit returns dicts key-sorted; give call order back


def _values(model, points, layers, which: str, chunk_size, devices, batched):
    points = jacobians.check_points(points, differentiable=False)
    fn, state, keys, _ = _prepare(model, layers, jax.ShapeDtypeStruct(points.shape[1:], points.dtype), which, batched)
    per_point = dataclasses.replace(fn, values_only=True)
    return _ordered(jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices), keys)


@shape_checked
def outputs(model, points: Shaped[AnyArray, "N *input"], layers=None, *, chunk_size: int | None = None, devices=None, batched: bool = False):
    """{path: (N, *output_shape)}: what each selected layer returns at every point."""
    return _values(model, points, layers, "outputs", chunk_size, devices, batched)


@shape_checked
def inputs(model, points: Shaped[AnyArray, "N *input"], layers=None, *, chunk_size: int | None = None, devices=None, batched: bool = False):
    """{path: (N, *input_shape)}: the first positional argument each selected layer receives."""
    return _values(model, points, layers, "inputs", chunk_size, devices, batched)


@shape_checked
def input_jacobian_field(model, points: Shaped[AnyArray, "N *input"], layers=None, *, mode: str = "auto", chunk_size: int | None = None,
                         reduce: Callable | None = None, devices=None, batched: bool = False,
                         as_matrix: bool = False, check_finite: bool = True) -> dict[str, Any]:
    """{path: (N, *output_shape, *input_shape)}: ∂(output of the layer)/∂x at every point.

    One Jacobian of all selected outputs together, in the mode that is cheaper for the
    model input size against their total size (`jacobians.choose_mode`).
    """
    points = jacobians.check_points(points)
    fn, state, keys, found = _prepare(model, layers, jax.ShapeDtypeStruct(points.shape[1:], points.dtype), "outputs",
                                      batched)
    field = jacobians.field_of(dataclasses.replace(fn, values_only=True), state, points, mode=mode,
                               chunk_size=chunk_size, reduce=reduce, devices=devices, as_matrix=as_matrix,
                               check_finite=check_finite, batched=batched,
                               shapes={key: found.outputs[key] for key in keys})
    return _ordered(field, keys)


@dataclasses.dataclass(frozen=True, eq=False)
class _LocalJacobians(StaticKey):
    """x ↦ {key: ∂ layer(u)/∂u at the u the layer receives from x}, each layer in its own mode."""

    recorder: Recorder
    modes: tuple[str, ...]
    reduce: Callable | None
    as_matrix: bool

    def __call__(self, state, x):
        model, _, calls, _ = self.recorder.run(state, x)
        modules = _callable_modules(model)
        result = {}
        for key, mode in zip(self.recorder.keys, self.modes):
            args, kwargs, _ = calls[key]
            layer = modules[key.split("@")[0]]
            layer_call = type(layer).__call__  # outside the interception: the class's own __call__

            def local(u, layer=layer, layer_call=layer_call, args=args, kwargs=kwargs):
                return jacobians._call_batched(lambda v: layer_call(layer, v, *args[1:], **kwargs), u,
                                               self.recorder.batched)

            result[key] = jacobians.jacobian_at(local, args[0], mode, self.reduce, self.as_matrix)
        return result


@shape_checked
def local_jacobian_field(model, points: Shaped[AnyArray, "N *input"], layers=None, *, mode: str = "auto", chunk_size: int | None = None,
                         reduce: Callable | None = None, devices=None, batched: bool = False,
                         as_matrix: bool = False, check_finite: bool = True) -> dict[str, Any]:
    """{path: (N, *output_shape, *layer_input_shape)}: each layer's own Jacobian
    ∂(output)/∂(first input) at the input it receives from each point (other arguments fixed)."""
    points = jacobians.check_points(points, differentiable=False)
    module, method = _split(model)
    found = plan(model, jax.ShapeDtypeStruct(points.shape[1:], points.dtype), batched=batched)
    keys = select(found, layers)
    for key in keys:
        if found.types[key] is None:
            raise ValueError(f"{key!r} is a sown value, not a layer: it has no input to differentiate by")
        if found.inputs[key] is None or not jnp.issubdtype(found.inputs[key].dtype, jnp.inexact):
            raise ValueError(f"layer {key!r} receives no floating-point array as its first argument")
    modes = tuple(jacobians.resolve_mode(mode, math.prod(found.inputs[k].shape),
                                         jacobians.output_size(found.outputs[k])) for k in keys)
    graphdef, state = nnx.split(module)
    per_point = _LocalJacobians(Recorder(graphdef, method, keys, batched), modes, reduce, as_matrix)
    field = jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices)
    if check_finite:
        jacobians.check_finite_result(field, "a local Jacobian")
    return _ordered(field, keys)
