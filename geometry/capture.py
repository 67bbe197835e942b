"""Found activations as layers: their names, their place in call order, and their values at run time.

`geometry.discovery` finds the activations in a forward pass's program; this module turns them
into probe keys and evaluates the program recording them.

**Naming** (stable, documented in docs/tutorials/own-model.md): an activation is named by the layer call it runs
in and what it computes, ``"<layer path>:<name>"`` — e.g. ``"conv1:relu"`` would be a relu inside
conv1's own `__call__`, ``"blocks/0/mlp:gelu_tanh"`` the tanh-approximate GELU of a transformer
block's MLP, and at the model's own level just ``"relu"``. The j-th repeat (j ≥ 1) of the same
name in the same layer call gets ``"#j"`` (``"relu#1"``: a ResNet block's second relu), and a
layer called several times (an `nnx.scan` iteration, shared weights) passes its call index on:
``"blocks:gelu@2"``. An activation that *is* a whole layer — the layer's input goes straight to
it and its output is the layer's output (the library's `Pointwise` modules) — is not listed
twice: the layer keeps its path, and `activations()` reports the layer under it.

**Values.** `ProgramValues` evaluates the traced program of one forward pass (the jaxpr the
probe's plan traced, layer records included) with an interpreter that also keeps each selected
activation's pre-activation z, output y and derivative φ'(z) — the diagonal of D_φ, from
forward-mode autodiff of that operation alone (`jax.jvp` with a tangent of ones). Calls are
bound whole (custom derivative rules kept) unless an activation lies inside them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex

from geometry import discovery
from geometry.functional import StaticKey


def activation_keys(module_keys: Sequence[str], events: Sequence) -> tuple[list[str], dict, dict]:
    """(every key in call order, {activation key: Found}, {layer key: the Found activation it is}).

    `module_keys` are the recorded layer calls in the order they started; `events` what
    `discovery.find` returned (activations and layer markers, in program order)."""
    enter, exit_, enter_var, exit_source = {}, {}, {}, {}
    for event in events:
        if isinstance(event, discovery.Marker):
            (enter if event.kind == "enter" else exit_).setdefault(event.name, []).append(event.position)
            if event.kind == "enter":
                enter_var[event.name] = event.var
            else:
                exit_source.setdefault(event.name, set()).add(event.source)
    call_key = _call_keys(module_keys)  # "path@index" of the markers -> the probe's key
    spans = {name: (min(enter.get(name, exit_.get(name))), max(exit_[name])) for name in exit_}
    identified, found, placed = {}, {}, []
    counts: dict = {}
    for event in events:
        if not isinstance(event, discovery.Found):
            continue
        holders = [name for name, (start, stop) in spans.items() if start < event.position <= stop]
        scope = max(holders, key=lambda name: spans[name][0]) if holders else None
        if scope is not None and enter_var.get(scope) is event.z and event.y in exit_source.get(scope, ()):
            identified[call_key[scope]] = event  # the activation is the whole layer
            continue
        path, _, index = (scope or "").partition("@")
        many = scope is not None and call_key[scope] != path
        base = f"{path}:{event.name}" if scope is not None else event.name
        repeat = counts.get((scope, event.name), 0)
        counts[scope, event.name] = repeat + 1
        key = base + (f"#{repeat}" if repeat else "") + (f"@{index}" if many else "")
        found[key] = event
        placed.append((event.position, 1, key))
    for name, key in call_key.items():
        positions = enter.get(name) or exit_.get(name)
        placed.append((min(positions) if positions else None, 0, key))
    # layers without a marker (no array input or output) keep their place after the one before them
    ordered, last = [], 0
    for position, kind, key in [(p, k, key) for p, k, key in placed if k == 0]:
        last = position if position is not None else last
        ordered.append((last, 0, key))
    ordered += [entry for entry in placed if entry[1] == 1]
    keys = [key for _, _, key in sorted(ordered, key=lambda entry: (entry[0], entry[1]))]
    module_set = set(module_keys)
    sown = [key for key in module_keys if key not in call_key.values()]
    return [k for k in keys if k in module_set or k in found] + sown, found, identified


def _call_keys(module_keys: Sequence[str]) -> dict:
    """{"path@index": key} for every recorded call (a key is "path" when the layer ran once)."""
    result = {}
    for key in module_keys:
        path, _, index = key.partition("@")
        result[f"{path}@{index or 0}"] = key
    return result


@dataclasses.dataclass(frozen=True, eq=False)
class ProgramValues(StaticKey):
    """pure(state, x) -> (model output, {key: value}) by evaluating the traced program.

    `layer_keys`: recorded layers whose `which` value (0 first input, 1 output) is kept;
    `sites`: (key, Found) activations whose `what` is kept — "z", "y", "derivative" (φ'(z))
    or "zy" ((z, y)). `batched`: the program ran on x[None] (values lose that axis)."""

    program: Any  # ClosedJaxpr of (state, x) -> (output, {key: (input, output)})
    out_tree: Any
    layer_keys: tuple[str, ...]
    which: int
    sites: tuple[tuple[str, Any], ...]
    what: str = "y"
    batched: bool = False
    values_only: bool = True
    markers: tuple = ()  # ("path@index", call path) of every layer's exit marker, for `inject`

    @property
    def keys(self) -> tuple[str, ...]:
        return self.layer_keys + tuple(key for key, _ in self.sites)

    def __call__(self, state, x, inject=None):
        """`inject` = (layer path, call index, δ): δ is added to that layer call's output (`wrt=`)."""
        leaves = jax.tree_util.tree_leaves(state) + [x]
        wanted: dict = {}
        for key, found in self.sites:
            wanted.setdefault(found.path, []).append((key, found))
        added = None
        if inject is not None:
            name = f"{inject[0]}@{inject[1]}"
            paths = [path for marker, path in self.markers if marker == name]
            if not paths:
                raise ValueError(f"no layer call {name} to differentiate by in the traced program")
            delta = inject[2][None] if self.batched else inject[2]
            added = (discovery.MARKER + "exit:" + name, paths[0], delta)
            wanted.setdefault(paths[0], [])
        kept: dict = {}
        outputs = _run(self.program.jaxpr, self.program.consts, leaves, wanted, (), kept, self.what, added)
        output, records = jax.tree_util.tree_unflatten(self.out_tree, outputs)
        values = {key: records[key][self.which] for key in self.layer_keys}
        for key, _ in self.sites:
            value = kept[key]
            values[key] = jax.tree_util.tree_map(lambda a: a[0], value) if self.batched else value
        return values if self.values_only else (output, values)


def _run(jaxpr, consts, args, wanted: dict, path: tuple, kept: dict, what: str, added=None) -> list:
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    here = {found.y: (key, found) for key, found in wanted.get(path, ())}
    inside = {p[len(path)] for p in wanted if len(p) > len(path) and p[:len(path)] == path}

    def read(var):
        return var.val if isinstance(var, jex.Literal) else env[var]

    for index, eqn in enumerate(jaxpr.eqns):
        values = [read(v) for v in eqn.invars]
        sub = discovery.sub_jaxpr(eqn)
        if sub is not None and index in inside:
            out = _run(sub.jaxpr, sub.consts, values, wanted, path + (index,), kept, what, added)
        else:
            out = discovery.bind(eqn, values)
        if added is not None and added[1] == path and eqn.primitive.name == "name" and \
                eqn.params.get("name") == added[0]:
            out = [out[0] + added[2]]  # differentiating by δ at 0 is differentiating by this layer's output
        env.update(zip(eqn.outvars, out))
        for var in eqn.outvars:
            if var in here:
                key, found = here[var]
                kept[key] = _site_value(found, env, what)
    return [read(v) for v in jaxpr.outvars]


def _site_value(found, env: dict, what: str):
    z = env[found.z]
    if what == "z":
        return z
    if what == "y":
        return env[found.y]
    if what == "zy":
        return z, env[found.y]
    if not found.elementwise:
        raise ValueError("softmax is not elementwise: it has no diagonal derivative")
    _, derivative = jax.jvp(lambda u: discovery.evaluate(found.eqns, found.z, found.y, u, env), (z,),
                            (jnp.ones_like(z),))
    return derivative
