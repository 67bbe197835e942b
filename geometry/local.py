"""Local Jacobians of recorded layers: each layer re-run alone at the input it receives.

`geometry.probe.local_jacobian_field` and `local_singular_values` are built from these pieces:
`local_setup` plans the selected layers (and the activations found among them, whose local
Jacobian is the diagonal φ'(z), `activation_derivatives`); `LayerAt` re-runs one recorded call
from the state it had when called (a KV cache written later does not leak in); `LocalJacobians`
differentiates every selected layer at one point; `LocalSpectra` forms each layer's singular
values by its structure (`jacobian_structure`: diagonal for elementwise layers, per-position
blocks for LayerNorm / RMSNorm, dense otherwise).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from geometry import activation_stats, calling, jacobians, recording
from geometry.functional import StaticKey


@dataclasses.dataclass(frozen=True, eq=False)
class LocalJacobians(StaticKey):
    """x ↦ {key: ∂ layer(u)/∂u at the u the layer receives from x}, each layer in its own mode.

    Each layer is re-run from the state it had when the forward pass called it (a snapshot
    taken at call start), merged inside the derivative's own trace: a cache the layer writes,
    or BatchNorm statistics in training mode, are then caught or discarded like on every route."""

    recorder: recording.Recorder
    modes: tuple[str, ...]
    reduce: Callable | None
    as_matrix: bool

    def __call__(self, state, x):
        _, _, calls, _ = self.recorder.run(state, x)
        values, flags, sketches = {}, [], {}
        for key, mode in zip(self.recorder.keys, self.modes):
            args, _, _, (graphdef, snapshot) = calls[key]
            parts = jacobians.jacobian_at(LayerAt(graphdef, snapshot, self.recorder.batched), args[0], mode,
                                          self.reduce, self.as_matrix, True, True)
            values[key], sketches[key] = parts.value, parts.sketch
            flags.append(parts.finite)
        return jacobians.JacobianParts(values, jnp.all(jnp.stack(flags), axis=0),
                                       None if self.reduce is None else sketches)

    def canary_view(self, output):
        return jacobians.parts_view(output)


@dataclasses.dataclass(frozen=True, eq=False)
class LayerAt:
    """u ↦ layer(u, *other arguments, **kwargs) from a call's snapshot."""

    graphdef: Any
    snapshot: Any
    batched: bool

    def __call__(self, u):
        with jacobians.merged(self.graphdef, self.snapshot) as (layer, rest, kwargs):
            call = getattr(type(layer).__call__, "__probe_original__", type(layer).__call__)
            return calling.call_batched(lambda v: call(layer, v, *rest, **kwargs), u, self.batched)


def local_setup(model, points, layers, mode: str, batched: bool, model_kwargs):
    """(recorder with call-start snapshots, state, plan, per-layer modes) for the local routes:
    the selected layers, each checked to receive a floating-point array it can be differentiated by."""
    graphdef, state, method = recording.split_model(model, model_kwargs)
    found = recording.plan(model, jax.ShapeDtypeStruct(points.shape[1:], points.dtype), batched=batched,
                 model_kwargs=model_kwargs)
    selected = recording.select(found, layers)
    keys = tuple(k for k in selected if k not in found.found)
    for key in keys:
        if found.types[key] is None:
            raise ValueError(f"{key!r} is a sown value, not a layer: it has no input to differentiate by")
        if found.inputs[key] is None or not jnp.issubdtype(found.inputs[key].dtype, jnp.inexact):
            raise ValueError(f"layer {key!r} receives no floating-point array as its first argument")
    modes = tuple(jacobians.resolve_mode(mode, math.prod(found.inputs[k].shape),
                                         jacobians.output_size(found.outputs[k])) for k in keys)
    return recording.Recorder(graphdef, method, keys, batched, snapshot=True), state, found, modes, selected


def activation_derivatives(model, points, found, selected, model_kwargs, chunk_size, devices) -> dict:
    """{key: (N, *shape) φ'(z)} of the found activations among `selected` (softmax refused: not diagonal)."""
    keys = [k for k in selected if k in found.found]
    dense = [k for k in keys if not found.found[k].elementwise]
    if dense:
        raise ValueError(f"{', '.join(dense)}: softmax is not elementwise, so its local Jacobian is no diagonal; "
                         "take its input field (input_jacobian_field) instead")
    return activation_stats.derivatives_of(found, model, points, keys, model_kwargs=model_kwargs,
                                            chunk_size=chunk_size, devices=devices)


def own_call(layer_type: type, base: type) -> bool:
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
    if any(issubclass(layer_type, base) and own_call(layer_type, base) for base in diagonal):
        return "diagonal"
    for base in (nnx.LayerNorm, nnx.RMSNorm, library_layers.LayerNorm):
        if issubclass(layer_type, base) and own_call(layer_type, base):
            axes = getattr(layer, "reduction_axes", -1) if layer is not None else -1
            return "blocks" if axes in (-1, (-1,)) else "dense"
    return "dense"


@dataclasses.dataclass(frozen=True, eq=False)
class LocalSpectra(StaticKey):
    """x ↦ {key: singular values (descending) of each layer's local Jacobian}, formed by its structure:
    one JVP for a diagonal layer, b JVPs (b the last axis) for per-position blocks, dense otherwise."""

    recorder: recording.Recorder
    structures: tuple[str, ...]
    modes: tuple[str, ...]

    def __call__(self, state, x):
        _, _, calls, _ = self.recorder.run(state, x)
        result = {}
        for key, structure, mode in zip(self.recorder.keys, self.structures, self.modes):
            args, _, _, (graphdef, snapshot) = calls[key]
            layer, u = LayerAt(graphdef, snapshot, self.recorder.batched), args[0]
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
