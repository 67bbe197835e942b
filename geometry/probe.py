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

Published-style models need no wrapper:

* `model_kwargs={...}` on every function: keyword arguments of the model's call (`rngs=`,
  `deterministic=`, a KV-cache module, segment ids), held fixed and the same for every
  point. Graph nodes among them are copied per call, so a cache the model writes never leaks
  a tracer and the caller's objects are not changed. `batched=True` everywhere means the
  model is written batch-first (called on x[None]).
* `wrt=PATH` (`input_jacobian_field`): differentiate with respect to the output of layer
  PATH (a token embedding, a block's output) while the model runs from its own inputs, so
  integer token ids stay integers.
* Scans: while the probe records, `jax.lax.scan` (which `nnx.scan` calls) runs as a Python
  loop, so blocks stacked with `nnx.vmap` and run by `nnx.scan` appear per iteration,
  "blocks@0", "blocks/linear@0", …, with their values, input and local fields. (Models
  that run stacked layers under `nnx.vmap` in the forward pass are not unrolled.)
* Local Jacobians re-run each layer from the state it had when called (a snapshot at call
  start), so a KV cache written during the pass does not change the function differentiated.
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


def _split(model, model_kwargs=None) -> tuple[Any, Any, str]:
    """(graphdef, state, method) of (module, model_kwargs): the call the probe traces."""
    module, method = jacobians.module_and_method(model)
    if module is None:
        raise ValueError(f"probe takes an nnx.Module or a bound method of one, got {type(model).__name__}")
    graphdef, state = nnx.split((module, jacobians._check_kwargs(model_kwargs)))
    return graphdef, state, method


def _callable_modules(module: nnx.Module) -> dict[str, nnx.Module]:
    """path -> submodule, for every submodule (root excluded) whose class defines __call__."""
    return {_path_string(path): sub for path, sub in nnx.iter_modules(module)
            if path and callable(getattr(type(sub), "__call__", None))}


_TAG = "_probe_path"  # set on the submodules of the probe's own merged copy (never the user's model)


class _Recording:
    def __init__(self, paths: set[str], snapshot: bool = False, inject=None):
        self.paths = paths  # the paths to record
        self.inject = inject  # (path, call index, δ): that call's output becomes output + δ (for wrt=)
        self.snapshot = snapshot  # keep each call's (layer, arguments) split at call start
        self.calls: dict[str, list] = {}  # path -> [(args, kwargs, output, snapshot), ...] in call order
        self.inside: set[int] = set()


def _recording_wrapper(original):
    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        stack = getattr(_ACTIVE, "stack", None)
        recording = stack[-1] if stack else None
        # the path travels with the module as a static attribute, so the copies that Flax's own
        # transforms make inside an nnx.scan body (one per iteration) are recorded under it too
        path = None if recording is None else getattr(self, _TAG, None)
        if path not in (recording.paths if recording else ()) or id(self) in recording.inside:
            return original(self, *args, **kwargs)  # not selected, or a super().__call__ chain
        slot = recording.calls.setdefault(path, [])  # keyed at call start: outer layers before inner ones
        # the layer as it was when called: a KV cache it writes during the pass must not leak into
        # its local Jacobian, which re-runs the layer from this state
        snapshot = nnx.split((self, args[1:], kwargs)) if recording.snapshot else None
        recording.inside.add(id(self))
        try:
            out = original(self, *args, **kwargs)
        finally:
            recording.inside.discard(id(self))
        if recording.inject is not None and recording.inject[:2] == (path, len(slot)):
            out = out + recording.inject[2]  # differentiating by δ at 0 is differentiating by this output
        slot.append((args, kwargs, out, snapshot))
        return out

    __call__.__probe_original__ = original
    return __call__


@contextlib.contextmanager
def _intercept(modules: dict[str, nnx.Module], snapshot: bool = False, inject=None):
    """Record every call of the given modules while the block runs (this thread only); scans
    inside are unrolled (`_unrolled_scan`) so that each iteration's calls are recorded."""
    for path, module in modules.items():
        setattr(module, _TAG, path)
    recording = _Recording(set(modules), snapshot, inject)
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
        _SCAN[0] += 1
        if _SCAN[0] == 1:
            jax.lax.scan = _unrolled_scan
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
            _SCAN[0] -= 1
            if _SCAN[0] == 0:
                jax.lax.scan = _SCAN[1]


_SCAN = [0, jax.lax.scan]  # [active interceptions, the real jax.lax.scan]


def _unrolled_scan(f, init, xs=None, length=None, reverse=False, unroll=1, **options):
    """jax.lax.scan as a Python loop, while a probe records on this thread (elsewhere the real one).

    A scan traces its body once, so a layer called inside it (Flax's scan-over-layers, `nnx.scan`
    stacking blocks) would be recorded once, as a value of the body's trace that cannot leave
    it. Unrolled, iteration i calls its layers with iteration i's weights at the outer level:
    they are recorded as "path@i", and the values are those of the scan (same operations)."""
    stack = getattr(_ACTIVE, "stack", None)
    if not stack:
        return _SCAN[1](f, init, xs, length=length, reverse=reverse, unroll=unroll, **options)
    leaves = jax.tree_util.tree_leaves(xs)
    count = int(length) if length is not None else leaves[0].shape[0]
    carry, ys = init, []
    for i in (reversed(range(count)) if reverse else range(count)):
        carry, y = f(carry, jax.tree_util.tree_map(lambda leaf: leaf[i], xs))
        ys.append(y)
    if reverse:
        ys.reverse()
    stacked = jax.tree_util.tree_map(lambda *values: jnp.stack(values), *ys) if ys else None
    return carry, stacked


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
    return ({key: (_first_array(args), out) for key, (args, _, out, _) in calls.items()}
            | {key: (None, value) for key, value in sown.items()})


@dataclasses.dataclass(frozen=True, eq=False)
class Recorder(StaticKey):
    """pure(state, x) -> (output, {key: (first input or None, output)}) for the selected keys.

    `keys` None records every callable submodule and every sown value (used to plan).
    """

    graphdef: Any  # of (model, model_kwargs)
    method: str
    keys: tuple[str, ...] | None
    batched: bool = False
    snapshot: bool = False  # record each layer's state at call start (for local Jacobians)

    def run(self, state, x, inject=None):
        """(model, output, {key: (args, kwargs, output, snapshot)}, {key: sown value}) of one forward pass;
        `inject` = (path, call index, δ) adds δ to that call's output."""
        with jacobians.merged(self.graphdef, state) as (model, model_kwargs):
            modules = _callable_modules(model)
            if self.keys is not None:
                wanted = {key.split("@")[0] for key in self.keys} | ({inject[0]} if inject else set())
                modules = {path: m for path, m in modules.items() if path in wanted}
            method = self.method
            captured = nnx.capture(lambda m, u: getattr(m, method)(u, **model_kwargs), nnx.Intermediate)
            with _intercept(modules, self.snapshot, inject) as recording:
                output, sown_state = captured(model, x[None] if self.batched else x)
        calls, sown = _flatten_calls(recording.calls), _sown(sown_state)
        if self.batched:  # strip the batch axis of one from everything the pass produced
            unbatch = functools.partial(jax.tree_util.tree_map, lambda leaf: leaf[0])
            output, sown = unbatch(output), unbatch(sown)
            calls = {k: ((args[0][0], *args[1:]) if _first_array(args) is not None else args, kwargs, unbatch(out),
                         snap) for k, (args, kwargs, out, snap) in calls.items()}
        return model, output, calls, sown

    def __call__(self, state, x, inject=None):
        _, output, calls, sown = self.run(state, x, inject)
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


def plan(model, example, *, batched: bool = False, model_kwargs=None) -> Plan:
    """Trace one forward pass abstractly and report every layer it calls (no FLOPs spent)."""
    graphdef, state, method = _split(model, model_kwargs)
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


def layers(model, example, *, types: type | tuple[type, ...] | None = None, batched: bool = False,
           model_kwargs=None) -> list[str]:
    """Every layer path one forward pass on `example` (one point) calls, in call order:
    submodules, then sown values; only instances of `types` when given. Layers called inside a
    scan (`nnx.scan` over stacked blocks, `jax.lax.scan`) are listed per iteration, "path@i"."""
    found = plan(model, example, batched=batched, model_kwargs=model_kwargs)
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


def _prepare(model, layers, example, what: str, batched: bool, model_kwargs=None):
    """(capture function, state, keys, plan) for the selected layers of `model`."""
    if what not in ("outputs", "inputs"):
        raise ValueError(f"what must be 'outputs' or 'inputs', got {what!r}")
    graphdef, state, method = _split(model, model_kwargs)
    found = plan(model, example, batched=batched, model_kwargs=model_kwargs)
    keys = select(found, layers)
    if what == "inputs":
        missing = [k for k in keys if found.inputs[k] is None]
        if missing:
            raise ValueError(f"these layers receive no array input to report: {', '.join(missing)}")
    return _CaptureFn(Recorder(graphdef, method, keys, batched), 0 if what == "inputs" else 1), state, keys, found


def capture_fn(model, layers=None, *, example, what: str = "outputs", batched: bool = False, model_kwargs=None):
    """(fn, state, keys): fn(state, x) -> (model output, {key: value}) for one example x.

    `what` is "outputs" (what each layer returns) or "inputs" (its first positional
    argument). A pure function: jit and vmap it, `nnx.merge` happens inside; `state` is that
    of (model, model_kwargs).
    """
    fn, state, keys, _ = _prepare(model, layers, example, what, batched, model_kwargs)
    return fn, state, keys


@dataclasses.dataclass(frozen=True, eq=False)
class _LayerOutput(StaticKey):
    """pure(state, x) -> the output of one layer at model input x."""

    capture: _CaptureFn
    key: str

    def __call__(self, state, x):
        return self.capture(state, x)[self.key]


def layer_function(model, layer: str, *, example, batched: bool = False, model_kwargs=None):
    """(f, state) with f(state, x) = the output of `layer` (a path or a pattern matching one
    layer) at model input x: the form every `f(params, x)` analysis takes, e.g. per-layer spectra
    of wide layers without a dense SVD — `matfree.singular_values(f, points, k, params=state)`."""
    example = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
    fn, state, keys, _ = _prepare(model, layer, example, "outputs", batched, model_kwargs)
    if len(keys) != 1:
        raise ValueError(f"layer {layer!r} selects {len(keys)} layers ({', '.join(keys) or 'none'}); give one path")
    return _LayerOutput(dataclasses.replace(fn, values_only=True), keys[0]), state


def _ordered(result: dict, keys: Sequence[str]) -> dict:
    return {key: result[key] for key in keys}  # jit returns dicts key-sorted; give call order back


def _values(model, points, layers, which: str, chunk_size, devices, batched, model_kwargs):
    points = jacobians.check_points(points, differentiable=False)
    fn, state, keys, _ = _prepare(model, layers, jax.ShapeDtypeStruct(points.shape[1:], points.dtype), which, batched,
                                  model_kwargs)
    per_point = dataclasses.replace(fn, values_only=True)
    return _ordered(jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices), keys)


@shape_checked
def outputs(model, points: Shaped[AnyArray, "N *input"], layers=None, *, chunk_size: int | None = None, devices=None,
            batched: bool = False, model_kwargs=None):
    """{path: (N, *output_shape)}: what each selected layer returns at every point."""
    return _values(model, points, layers, "outputs", chunk_size, devices, batched, model_kwargs)


@shape_checked
def inputs(model, points: Shaped[AnyArray, "N *input"], layers=None, *, chunk_size: int | None = None, devices=None,
            batched: bool = False, model_kwargs=None):
    """{path: (N, *input_shape)}: the first positional argument each selected layer receives."""
    return _values(model, points, layers, "inputs", chunk_size, devices, batched, model_kwargs)


@dataclasses.dataclass(frozen=True, eq=False)
class _WrtJacobians(StaticKey):
    """x ↦ {key: ∂(output of key)/∂(output of the wrt layer)}, the model run from x itself."""

    recorder: Recorder
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
            return output if self.model_output else {key: records[key][1] for key in self.recorder.keys}

        delta = jnp.zeros(self.wrt_shape.shape, self.wrt_shape.dtype)
        return jacobians.jacobian_at(selected, delta, self.mode, self.reduce, self.as_matrix, True, True)

    def canary_view(self, output):
        return jacobians.parts_view(output)


def _wrt_call(found: Plan, wrt: str) -> tuple[str, int, jax.ShapeDtypeStruct]:
    """(path, call index, output shape) of the one layer call `wrt` names, with a floating-point array output."""
    hits = [key for key in found.keys if _matches(wrt, key) and found.types[key] is not None]
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


@shape_checked
def input_jacobian_field(model, points: Shaped[AnyArray, "N *input"], layers=None, *, wrt: str | None = None,
                         mode: str = "auto", chunk_size: int | None = None,
                         reduce: Callable | None = None, devices=None, batched: bool = False,
                         as_matrix: bool = False, check_finite: bool = True, model_kwargs=None) -> dict[str, Any]:
    """{path: (N, *output_shape, *input_shape)}: ∂(output of the layer)/∂x at every point.

    One Jacobian of all selected outputs together, in the mode that is cheaper for the
    model input size against their total size (`jacobians.choose_mode`).

    `wrt=PATH`: the derivative with respect to the output of layer PATH instead (e.g. a token
    embedding, or block 3's output), the model still run from its own inputs: the shape is
    then (N, *output_shape, *PATH's output shape). The points are not differentiated, so
    integer token ids stay integers. Layers called before PATH do not depend on it (zero).
    """
    if wrt is None:
        points = jacobians.check_points(points)
    else:
        points = jacobians.check_points(points, differentiable=False)
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    fn, state, keys, found = _prepare(model, layers, example, "outputs", batched, model_kwargs)
    shapes = {key: found.outputs[key] for key in keys}
    if wrt is None:
        field = jacobians.field_of(dataclasses.replace(fn, values_only=True), state, points, mode=mode,
                                   chunk_size=chunk_size, reduce=reduce, devices=devices, as_matrix=as_matrix,
                                   check_finite=check_finite, batched=batched, shapes=shapes)
        return _ordered(field, keys)
    return _ordered(_wrt_field(fn.recorder, found, state, points, wrt, shapes, mode=mode, chunk_size=chunk_size,
                               reduce=reduce, devices=devices, as_matrix=as_matrix, check_finite=check_finite), keys)


def _wrt_field(recorder, found, state, points, wrt, shapes, *, mode, chunk_size, reduce, devices, as_matrix,
               check_finite, model_output=False):
    """The field of the recorded layers' outputs (or of the model output) by the output of layer `wrt`."""
    path, index, wrt_shape = _wrt_call(found, wrt)
    resolved = jacobians.resolve_mode(mode, math.prod(wrt_shape.shape), jacobians.output_size(shapes))
    per_point = _WrtJacobians(recorder, path, index, wrt_shape, resolved, reduce, as_matrix, model_output)
    parts = jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices,
                                 what=f"the Jacobian with respect to {wrt!r}")
    if check_finite:
        jacobians.raise_nonfinite(parts.finite, field=parts.value if reduce is None else None)
    return parts.value


def _output_field_wrt(model, points, wrt: str, *, mode="auto", chunk_size=None, reduce=None, devices=None,
                              batched=False, as_matrix=False, check_finite=True, model_kwargs=None):
    """(N, *output_shape, *wrt_shape): ∂(model output)/∂(output of layer `wrt`), the model run from its
    own (possibly integer) points: the route of `jacobians.jacobian_field(model, points, wrt=...)`."""
    points = jacobians.check_points(points, differentiable=False)
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    graphdef, state, method = _split(model, model_kwargs)
    found = plan(model, example, batched=batched, model_kwargs=model_kwargs)
    recorder = Recorder(graphdef, method, (), batched)
    shapes = jax.eval_shape(lambda s, u: recorder(s, u)[0], state, example)
    return _wrt_field(recorder, found, state, points, wrt, shapes, mode=mode, chunk_size=chunk_size, reduce=reduce,
                      devices=devices, as_matrix=as_matrix, check_finite=check_finite, model_output=True)


@dataclasses.dataclass(frozen=True, eq=False)
class _LocalJacobians(StaticKey):
    """x ↦ {key: ∂ layer(u)/∂u at the u the layer receives from x}, each layer in its own mode.

    Each layer is re-run from the state it had when the forward pass called it (a snapshot
    taken at call start), merged inside the derivative's own trace: a cache the layer writes,
    or BatchNorm statistics in training mode, are then caught or discarded like on every route."""

    recorder: Recorder
    modes: tuple[str, ...]
    reduce: Callable | None
    as_matrix: bool

    def __call__(self, state, x):
        _, _, calls, _ = self.recorder.run(state, x)
        values, flags, sketches = {}, [], {}
        for key, mode in zip(self.recorder.keys, self.modes):
            args, _, _, (graphdef, snapshot) = calls[key]
            parts = jacobians.jacobian_at(_LayerAt(graphdef, snapshot, self.recorder.batched), args[0], mode,
                                          self.reduce, self.as_matrix, True, True)
            values[key], sketches[key] = parts.value, parts.sketch
            flags.append(parts.finite)
        return jacobians.JacobianParts(values, jnp.all(jnp.stack(flags), axis=0),
                                       None if self.reduce is None else sketches)

    def canary_view(self, output):
        return jacobians.parts_view(output)


@dataclasses.dataclass(frozen=True, eq=False)
class _LayerAt:
    """u ↦ layer(u, *other arguments, **kwargs) from a call's snapshot."""

    graphdef: Any
    snapshot: Any
    batched: bool

    def __call__(self, u):
        with jacobians.merged(self.graphdef, self.snapshot) as (layer, rest, kwargs):
            call = getattr(type(layer).__call__, "__probe_original__", type(layer).__call__)
            return jacobians._call_batched(lambda v: call(layer, v, *rest, **kwargs), u, self.batched)


def _local_setup(model, points, layers, mode: str, batched: bool, model_kwargs):
    """(recorder with call-start snapshots, state, plan, per-layer modes) for the local routes:
    the selected layers, each checked to receive a floating-point array it can be differentiated by."""
    graphdef, state, method = _split(model, model_kwargs)
    found = plan(model, jax.ShapeDtypeStruct(points.shape[1:], points.dtype), batched=batched,
                 model_kwargs=model_kwargs)
    keys = select(found, layers)
    for key in keys:
        if found.types[key] is None:
            raise ValueError(f"{key!r} is a sown value, not a layer: it has no input to differentiate by")
        if found.inputs[key] is None or not jnp.issubdtype(found.inputs[key].dtype, jnp.inexact):
            raise ValueError(f"layer {key!r} receives no floating-point array as its first argument")
    modes = tuple(jacobians.resolve_mode(mode, math.prod(found.inputs[k].shape),
                                         jacobians.output_size(found.outputs[k])) for k in keys)
    return Recorder(graphdef, method, keys, batched, snapshot=True), state, found, modes


@shape_checked
def local_jacobian_field(model, points: Shaped[AnyArray, "N *input"], layers=None, *, mode: str = "auto", chunk_size: int | None = None,
                         reduce: Callable | None = None, devices=None, batched: bool = False,
                         as_matrix: bool = False, check_finite: bool = True, model_kwargs=None) -> dict[str, Any]:
    """{path: (N, *output_shape, *layer_input_shape)}: each layer's own Jacobian
    ∂(output)/∂(first input) at the input it receives from each point (other arguments fixed)."""
    points = jacobians.check_points(points, differentiable=False)
    recorder, state, _, modes = _local_setup(model, points, layers, mode, batched, model_kwargs)
    keys = recorder.keys
    per_point = _LocalJacobians(recorder, modes, reduce, as_matrix)
    parts = jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices,
                                 what="a local Jacobian")
    if check_finite:
        jacobians.raise_nonfinite(parts.finite, "a local Jacobian", field=parts.value if reduce is None else None)
    return _ordered(parts.value, keys)


PAIRS = ("diagonal", "last_row")


@dataclasses.dataclass(frozen=True, eq=False)
class _TokenBlocks(StaticKey):
    """x ↦ (T, d_out, d_in) per-token blocks ∂h_t/∂e_s of one layer's output h (T, d_out) with
    respect to the wrt layer's output e (T, d_in): t = s ("diagonal") or t = T − 1 ("last_row")."""

    recorder: Recorder
    wrt_path: str
    wrt_index: int
    wrt_shape: Any
    key: str
    pairs: str

    def __call__(self, state, x):
        def layer_output(delta):
            _, records = self.recorder(state, x, (self.wrt_path, self.wrt_index, delta))
            return records[self.key][1]

        delta = jnp.zeros(self.wrt_shape.shape, self.wrt_shape.dtype)  # (T, d_in)
        tokens, width_in = delta.shape
        if self.pairs == "last_row":  # d_out cotangents on the last token: every s at once
            out, pullback = jax.vjp(layer_output, delta)
            width_out = out.shape[-1]
            cotangents = jnp.zeros((width_out, *out.shape), out.dtype).at[
                jnp.arange(width_out), -1, jnp.arange(width_out)].set(1)
            rows = jax.vmap(pullback)(cotangents)[0]  # (d_out, T, d_in)
            return jnp.moveaxis(rows, 0, 1)
        _, pushforward = jax.linearize(layer_output, delta)  # linearised once, reused for every s

        def diagonal_block(s):  # d_in tangents on token s; only h_s's rows are kept
            tangents = jnp.zeros((width_in, tokens, width_in), delta.dtype).at[
                jnp.arange(width_in), s, jnp.arange(width_in)].set(1)
            columns = jax.vmap(pushforward)(tangents)  # (d_in, T, d_out)
            return columns[:, s, :].T

        return jax.lax.map(diagonal_block, jnp.arange(tokens))


@shape_checked
def token_jacobians(model, points: Shaped[AnyArray, "N *input"], layer: str, *, wrt: str, pairs: str = "diagonal",
                    batched: bool = False, model_kwargs=None, chunk_size: int | None = None, devices=None,
                    check_finite: bool = True) -> jax.Array:
    """(N, T, d_out, d_in) per-token Jacobian blocks of a sequence model, without the full
    (T·d_out) × (T·d_in) Jacobian: ∂h_t/∂e_s with h (T, d_out) the output of `layer` and e
    (T, d_in) the output of `wrt` (e.g. the token embedding), tokens on the first axis of both.

    pairs="diagonal": t = s for every token (T forward sweeps of d_in tangents each, held one
    token at a time: memory O(T·d_out·d_in) per point instead of O(T²·d_out·d_in));
    pairs="last_row": the last token's causal row, t = T − 1 and every s (one reverse sweep of
    d_out cotangents). Points are not differentiated: token ids stay integers.
    """
    if pairs not in PAIRS:
        raise ValueError(f"unknown pairs={pairs!r}; valid: {', '.join(PAIRS)}")
    points = jacobians.check_points(points, differentiable=False)
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    fn, state, keys, found = _prepare(model, layer, example, "outputs", batched, model_kwargs)
    if len(keys) != 1:
        raise ValueError(f"layer {layer!r} selects {len(keys)} layers ({', '.join(keys)}); give one path")
    path, index, wrt_shape = _wrt_call(found, wrt)
    out_shape = found.outputs[keys[0]]
    for name, shape in (("wrt", wrt_shape), ("layer", out_shape)):
        if not isinstance(shape, jax.ShapeDtypeStruct) or len(shape.shape) != 2:
            raise ValueError(f"token_jacobians needs (tokens, width) arrays; the {name} output has shape "
                             f"{getattr(shape, 'shape', shape)}")
    if wrt_shape.shape[0] != out_shape.shape[0]:
        raise ValueError(f"the wrt output has {wrt_shape.shape[0]} tokens but the layer's has {out_shape.shape[0]}")
    per_point = _TokenBlocks(fn.recorder, path, index, wrt_shape, keys[0], pairs)
    blocks = jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices)
    if check_finite:
        jacobians.check_finite_result(blocks, "a token Jacobian block")
    return blocks


def _own_call(layer_type: type, base: type) -> bool:
    """Whether `layer_type` runs `base`'s own __call__ (a subclass that overrides it may not
    keep the structure)."""
    call = layer_type.__dict__.get("__call__") if layer_type is base else getattr(layer_type, "__call__", None)
    base_call = base.__dict__["__call__"]
    return getattr(call, "__probe_original__", call) is getattr(base_call, "__probe_original__", base_call)


def jacobian_structure(layer_type: type | None, layer: nnx.Module | None = None) -> str:
    """"diagonal" (elementwise: activations, BatchNorm in eval, Dropout in eval), "blocks"
    (normalisation over the last axis only: LayerNorm, RMSNorm — one block per position) or
    "dense", from the layer's type (and its axes, when the instance is given)."""
    from geometry import layers as library_layers

    if layer_type is None:
        return "dense"
    diagonal = (nnx.BatchNorm, nnx.Dropout, library_layers.Pointwise)
    if any(issubclass(layer_type, base) and _own_call(layer_type, base) for base in diagonal):
        return "diagonal"
    for base in (nnx.LayerNorm, nnx.RMSNorm, library_layers.LayerNorm):
        if issubclass(layer_type, base) and _own_call(layer_type, base):
            axes = getattr(layer, "reduction_axes", -1) if layer is not None else -1
            return "blocks" if axes in (-1, (-1,)) else "dense"
    return "dense"


@dataclasses.dataclass(frozen=True, eq=False)
class _LocalSpectra(StaticKey):
    """x ↦ {key: singular values (descending) of each layer's local Jacobian}, formed by its structure:
    one JVP for a diagonal layer, b JVPs (b the last axis) for per-position blocks, dense otherwise."""

    recorder: Recorder
    structures: tuple[str, ...]
    modes: tuple[str, ...]

    def __call__(self, state, x):
        _, _, calls, _ = self.recorder.run(state, x)
        result = {}
        for key, structure, mode in zip(self.recorder.keys, self.structures, self.modes):
            args, _, _, (graphdef, snapshot) = calls[key]
            layer, u = _LayerAt(graphdef, snapshot, self.recorder.batched), args[0]
            if structure == "diagonal":  # J = diag(d): one tangent of ones reads d
                values = jnp.abs(jax.jvp(layer, (u,), (jnp.ones_like(u),))[1]).reshape(-1)
            elif structure == "blocks":  # tangent e_j at every position at once: column j of every block
                width = u.shape[-1]
                tangents = jnp.broadcast_to(jnp.eye(width, dtype=u.dtype).reshape(width, *(1,) * (u.ndim - 1), width),
                                            (width, *u.shape))
                columns = jax.vmap(lambda t: jax.jvp(layer, (u,), (t,))[1])(tangents)  # (b_in, ..., b_out)
                blocks = jnp.moveaxis(columns, 0, -1).reshape(-1, width, width)  # (positions, b_out, b_in)
                values = jnp.linalg.svd(blocks, compute_uv=False).reshape(-1)
            else:
                values = jnp.linalg.svd(jacobians.jacobian_at(layer, u, mode, as_matrix=True), compute_uv=False)
            result[key] = -jnp.sort(-values)
        return result


@shape_checked
def local_singular_values(model, points: Shaped[AnyArray, "N *input"], layers=None, *, mode: str = "auto",
                          batched: bool = False, model_kwargs=None, chunk_size: int | None = None,
                          devices=None, check_finite: bool = True) -> dict[str, dict]:
    """{path: {"values": (N, r) descending, "structure": "diagonal" | "blocks" | "dense"}}: the
    singular values of each selected layer's local Jacobian, never forming an elementwise or
    normalisation layer's (n × n) matrix. Elementwise layers (activation modules, BatchNorm and
    Dropout in eval mode) have a diagonal J: |diagonal|, from one JVP. LayerNorm / RMSNorm
    over the last axis act on each position alone: one (b × b) block per position, from b JVPs,
    and the union of the blocks' singular values. Any other layer: the dense J and its SVD. The
    structure is read from the layer's type (a subclass overriding __call__ is taken as dense).
    """
    points = jacobians.check_points(points, differentiable=False)
    recorder, state, found, modes = _local_setup(model, points, layers, mode, batched, model_kwargs)
    keys = recorder.keys
    module = jacobians.module_and_method(model)[0]
    instances = _callable_modules(module)
    structures = []
    for key in keys:
        structure = jacobian_structure(found.types[key], instances.get(key.split("@")[0]))
        if structure != "dense" and found.outputs[key] != found.inputs[key]:
            structure = "dense"  # the structure needs an output shaped like the input
        structures.append(structure)
    per_point = _LocalSpectra(recorder, tuple(structures), modes)
    values = jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices)
    if check_finite:
        jacobians.check_finite_result(values, "a local singular value")
    return {key: {"values": values[key], "structure": structure} for key, structure in zip(keys, structures)}
