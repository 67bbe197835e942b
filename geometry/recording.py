"""Recording what each layer of any Flax NNX model receives and returns, during one forward pass.

A *layer* is any submodule the forward pass calls, named by its "/"-joined path in the model
("layers/0", "blocks/2/attention", "conv1"), or any value the model `sow`s as an
`nnx.Intermediate` ("path/name"). Nothing in the model is edited and nothing is asked of it:
during one traced forward pass the classes of the selected submodules are wrapped so that each
call records its positional arguments and its output (penzai-style interception, undone as soon
as the pass ends), and sown values are collected with `nnx.capture`.

* `Recorder`: pure(state, x) -> (model output, {key: (first input, output)}) for selected keys;
  `Recorder.run` gives each call's arguments, output and (with `snapshot`) its state at call start.
* `plan(model, example)`: every key one forward pass records, in call order, with module types
  and value shapes, traced abstractly (no FLOPs).
* `select(plan, layers)`: the keys a selector names — None: the top-level layers and sown
  values; a path; a glob matched segment by segment ("layers/*"); a module type; a list.
* `layers(model, example)`: the paths, in call order.

Scans inside a recorded pass (`nnx.scan` over stacked blocks, `jax.lax.scan`) run as Python
loops, so each iteration's calls are recorded, "path@i". A submodule called k > 1 times gives
"path@0" … "path@{k-1}". `geometry.probe` builds the per-layer values and fields on this;
`geometry.jacobians` differentiates with respect to a recorded layer's output (`wrt=`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from geometry import activations, calling, capture, discovery
from geometry.functional import StaticKey

_MISSING = object()
_PATCH_LOCK = threading.RLock()
_PATCHED: dict[type, list] = {}  # class -> [count, saved __call__ entry of the class dict]
_ACTIVE = threading.local()


def path_string(parts) -> str:
    return "/".join(str(p) for p in parts)


def split_model(model, model_kwargs=None) -> tuple[Any, Any, str]:
    """(graphdef, state, method) of (module, model_kwargs): the call the probe traces."""
    module, method = calling.module_and_method(model)
    if module is None:
        raise ValueError(f"probe takes an nnx.Module or a bound method of one, got {type(model).__name__}")
    graphdef, state = nnx.split((module, calling.check_kwargs(model_kwargs)))
    return graphdef, state, method


def callable_modules(module: nnx.Module) -> dict[str, nnx.Module]:
    """path -> submodule, for every submodule (root excluded) whose class defines __call__."""
    return {path_string(path): sub for path, sub in nnx.iter_modules(module)
            if path and callable(getattr(type(sub), "__call__", None))}


PATH_ATTRIBUTE = "_probe_path"  # the attribute holding a layer's path, set on the submodules of the probe's own merged copy (never the user's model)


class _Recording:
    def __init__(self, paths: set[str], snapshot: bool = False, inject=None, mark: bool = False):
        self.paths = paths  # the paths to record
        self.mark = mark  # put named markers on each call's input and output (for finding activations)
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
        path = None if recording is None else getattr(self, PATH_ATTRIBUTE, None)
        if path not in (recording.paths if recording else ()) or id(self) in recording.inside:
            return original(self, *args, **kwargs)  # not selected, or a super().__call__ chain
        slot = recording.calls.setdefault(path, [])  # keyed at call start: outer layers before inner ones
        # the layer as it was when called: a KV cache it writes during the pass must not leak into
        # its local Jacobian, which re-runs the layer from this state
        snapshot = nnx.split((self, args[1:], kwargs)) if recording.snapshot else None
        index = len(slot)
        if recording.mark and first_array(args) is not None:
            args = (_marked(args[0], f"enter:{path}@{index}"), *args[1:])
        recording.inside.add(id(self))
        try:
            out = original(self, *args, **kwargs)
        finally:
            recording.inside.discard(id(self))
        if recording.inject is not None and recording.inject[:2] == (path, index):
            out = out + recording.inject[2]  # differentiating by δ at 0 is differentiating by this output
        if recording.mark:
            out = _marked(out, f"exit:{path}@{index}")
        slot.append((args, kwargs, out, snapshot))
        return out

    __call__.__probe_original__ = original
    return __call__


def _marked(value, name: str):
    """value with each floating-point array leaf passed through a named identity the traced program
    keeps (`checkpoint_name`): where a layer call starts and ends, for `geometry.discovery`."""
    def mark(leaf):
        if isinstance(leaf, (jax.Array, jax.core.Tracer)) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            return checkpoint_name(leaf, discovery.MARKER + name)
        return leaf
    return jax.tree_util.tree_map(mark, value)


@contextlib.contextmanager
def _intercept(modules: dict[str, nnx.Module], snapshot: bool = False, inject=None, mark: bool = False):
    """Record every call of the given modules while the block runs (this thread only); scans
    inside are unrolled (`_unrolled_scan`) so that each iteration's calls are recorded."""
    for path, module in modules.items():
        setattr(module, PATH_ATTRIBUTE, path)
    recording = _Recording(set(modules), snapshot, inject, mark)
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
        key = path_string(path)
        if isinstance(value, tuple) and len(value) == 1:
            value = value[0]
        flat[key] = value
    return flat


def first_array(args) -> jax.Array | None:
    return args[0] if args and isinstance(args[0], (jax.Array, jax.core.Tracer)) else None


def _records(calls: dict, sown: dict) -> dict[str, tuple]:
    """{key: (first input or None, output)} of the recorded calls, then the sown values."""
    return ({key: (first_array(args), out) for key, (args, _, out, _) in calls.items()}
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

    def run(self, state, x, inject=None, mark: bool = False):
        """(model, output, {key: (args, kwargs, output, snapshot)}, {key: sown value}) of one forward pass;
        `inject` = (path, call index, δ) adds δ to that call's output; `mark` puts layer markers in
        the traced program (`geometry.discovery`)."""
        with calling.merged(self.graphdef, state) as (model, model_kwargs):
            modules = callable_modules(model)
            if self.keys is not None:
                wanted = {key.split("@")[0] for key in self.keys} | ({inject[0]} if inject else set())
                modules = {path: m for path, m in modules.items() if path in wanted}
            method = self.method
            captured = nnx.capture(lambda m, u: getattr(m, method)(u, **model_kwargs), nnx.Intermediate)
            with _intercept(modules, self.snapshot, inject, mark) as recording:
                output, sown_state = captured(model, x[None] if self.batched else x)
        calls, sown = _flatten_calls(recording.calls), _sown(sown_state)
        if self.batched:  # strip the batch axis of one from everything the pass produced
            unbatch = functools.partial(jax.tree_util.tree_map, lambda leaf: leaf[0])
            output, sown = unbatch(output), unbatch(sown)
            calls = {k: ((args[0][0], *args[1:]) if first_array(args) is not None else args, kwargs, unbatch(out),
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
    """What one forward pass calls: keys in call order (layers, the activations found in the
    computation, then sown values), their types and value shapes, and the traced program."""

    keys: tuple[str, ...]
    types: dict[str, type | None]  # a module type; `activations.Activation` for a found activation; None: sown
    inputs: dict[str, Any]  # ShapeDtypeStruct of the first positional input (None if not an array); z
    outputs: dict[str, Any]  # ShapeDtypeStruct pytree of the output; φ(z)
    found: dict[str, Any] = dataclasses.field(default_factory=dict)  # activation key -> discovery.Found
    identified: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> what the activation computes
    sites: dict[str, Any] = dataclasses.field(default_factory=dict)  # every activation, layers that are one too
    program: Any = None  # ClosedJaxpr of (state leaves, x) -> (output, {key: (input, output)})
    markers: tuple = ()  # ("path@index", call path) of each layer call's exit marker in the program
    out_tree: Any = None
    batched: bool = False

    def values(self, layer_keys=(), which: int = 1, sites=(), what: str = "y", values_only: bool = True):
        """`capture.ProgramValues` for these layers' values and these activations' (z, y or φ'(z))."""
        return capture.ProgramValues(self.program, self.out_tree, tuple(layer_keys), which,
                                     tuple((key, self.sites[key]) for key in sites), what, self.batched, values_only,
                                     self.markers)


def _strip(shape, batched: bool):
    return jax.ShapeDtypeStruct(shape.shape[1:] if batched else shape.shape, shape.dtype)


_PLANS: dict = {}  # (recorder, example and state shapes) -> Plan, the most recent PLAN_CACHE_SIZE
PLAN_CACHE_SIZE = 64


def plan(model, example, *, batched: bool = False, model_kwargs=None) -> Plan:
    """Trace one forward pass abstractly and report every layer it calls and every activation it
    computes (`geometry.discovery`, named by `geometry.capture`), with no FLOPs spent on x.

    A plan depends on the model's structure and the shapes alone (the parameters are inputs of
    its traced program), so it is kept for the next call with the same structure and shapes."""
    graphdef, state, method = split_model(model, model_kwargs)
    recorder = Recorder(graphdef, method, None, batched)
    example = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    key = (recorder, example.shape, str(example.dtype), treedef,
           tuple((jnp.shape(leaf), str(jnp.result_type(leaf))) for leaf in leaves))
    try:
        cached = _PLANS.get(key)
    except TypeError:  # an unhashable piece of the structure: plan afresh
        key, cached = None, None
    if cached is not None:
        return cached
    found = _plan(recorder, state, example, batched)
    if key is not None:
        if len(_PLANS) >= PLAN_CACHE_SIZE:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = found
    return found


def _plan(recorder: Recorder, state, example, batched: bool) -> Plan:
    order = []

    def traced(state, x):
        merged, output, calls, sown = recorder.run(state, x, mark=True)
        order.extend(calls)
        order.extend(sown)
        modules = callable_modules(merged)
        order.append({key: type(modules[key.split("@")[0]]) for key in calls})
        return output, _records(calls, sown)

    points = jax.ShapeDtypeStruct((1, *example.shape), example.dtype)
    program, returned = calling.program(traced, state, points, batched=batched)
    shapes = returned[1]
    types = order.pop()
    module_keys = tuple(order)
    state_leaves = len(jax.tree_util.tree_leaves(state))
    events = discovery.find(program, [False] * state_leaves + [True])
    keys, found, identified = capture.activation_keys(module_keys, events)
    types = {key: types.get(key) for key in module_keys} | {key: activations.Activation for key in found}
    inputs = {key: shapes[key][0] for key in module_keys} | {k: _strip(f.z.aval, batched) for k, f in found.items()}
    outputs = {key: shapes[key][1] for key in module_keys} | {k: _strip(f.y.aval, batched) for k, f in found.items()}
    sites = identified | found
    return Plan(tuple(keys), {k: types[k] for k in keys}, {k: inputs[k] for k in keys}, {k: outputs[k] for k in keys},
                found=found, identified={k: sites[k].name for k in keys if k in sites},
                sites={k: sites[k] for k in keys if k in sites}, program=program,
                out_tree=jax.tree_util.tree_structure(returned), batched=batched,
                markers=tuple(dict.fromkeys((e.name, e.path) for e in events
                                            if isinstance(e, discovery.Marker) and e.kind == "exit")))


def top_level(found: Plan) -> list[str]:
    modules = [key for key in found.keys if found.types[key] is not None]
    paths = {key.split("@")[0] for key in modules}
    top = []
    for key in modules:
        parts = key.split("@")[0].split("/")
        inside_a_layer = ":" in key.split("@")[0]  # an activation found in a layer's own computation
        if not inside_a_layer and not any("/".join(parts[:i]) in paths for i in range(1, len(parts))):
            top.append(key)
    return top + [key for key in found.keys if found.types[key] is None]


def matches(pattern: str, key: str) -> bool:
    """Whether a path or glob selects `key`. Globs are matched segment by segment; an activation found
    inside a layer ("blocks/0:gelu") is matched by a glob only when the glob names one (has a ":",
    "blocks/*:gelu", "*:relu"), so "blocks/*" keeps meaning the blocks."""
    path = key.split("@")[0]
    if pattern in (key, path):
        return True
    if ":" in path and ":" not in pattern:
        return False
    pattern_parts, path_parts = pattern.split("/"), path.split("/")
    return len(pattern_parts) == len(path_parts) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(path_parts, pattern_parts))


def select(found: Plan, layers=None) -> tuple[str, ...]:
    """The keys `layers` selects (see the module docstring), in call order; ValueError listing
    the valid paths when a selector matches nothing."""
    if layers is None:
        return tuple(top_level(found))
    selectors = [layers] if isinstance(layers, (str, type)) or not isinstance(layers, (list, tuple)) else layers
    chosen = set()
    for selector in selectors:
        if isinstance(selector, type):
            hits = {k for k in found.keys if found.types[k] is not None and issubclass(found.types[k], selector)}
        elif isinstance(selector, str):
            hits = {k for k in found.keys if matches(selector, k)}
        else:
            raise ValueError(f"a layer selector is a path, a glob or a module type, got {selector!r}")
        if not hits:
            raise ValueError(f"layer {selector!r} matches nothing this model calls; valid paths: "
                             f"{', '.join(found.keys) or '(none)'}")
        chosen |= hits
    return tuple(k for k in found.keys if k in chosen)


def layers(model, example, *, types: type | tuple[type, ...] | None = None, batched: bool = False,
           model_kwargs=None) -> list[str]:
    """Every layer one forward pass on `example` calls, in call order: submodules by path, values the
    model sows, and the activations found in the computation (`"relu"`, `"blocks/0/mlp:gelu"`,
    `"relu#1"`). Layers called inside a scan (`nnx.scan` over stacked blocks, `jax.lax.scan`) are
    listed per iteration, `"path@i"`.

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        example: one point (or a `jax.ShapeDtypeStruct`).
        types: only layers that are instances of these types (e.g. `nnx.Linear`).
        batched: the model is written batch-first: it is called on example[None].
        model_kwargs: keyword arguments of the call, held fixed.

    Returns:
        The layer keys, in call order: what every other probe function selects from.

    Raises:
        ValueError: an example that does not fit the model (with the `batched=True` hint), or a
            model that changes its state while traced (call `model.eval()`).
    """
    found = plan(model, example, batched=batched, model_kwargs=model_kwargs)
    if types is None:
        return list(found.keys)
    return [k for k in found.keys if found.types[k] is not None and issubclass(found.types[k], types)]
