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
all of them. The recording itself lives in `geometry.recording`. All fields are batched,
chunked and sharded by `geometry.batching.map_points`, whose canary recomputes a sample of
the points unbatched and raises `CompilerFaultError` if the compiled programs disagree.

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

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from geometry import activation_stats as _activation_stats
from geometry import jacobians, local, recording
from geometry.functional import StaticKey

# recording's public names, re-exported: they have always been reachable as probe.NAME
from geometry.recording import Plan, Recorder, plan, select  # noqa: F401
from geometry.shapes import AnyArray, Shaped, shape_checked

jacobian_structure = local.jacobian_structure  # re-exported: probe.jacobian_structure is its public path
layers = recording.layers  # the layer paths in call order (defined beside the recording it reads)
activations = _activation_stats.activations  # {key: identified activation}, in call order
activation_stats = _activation_stats.activation_stats  # dead / saturated / live fractions per activation


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
    graphdef, state, method = recording.split_model(model, model_kwargs)
    found = plan(model, example, batched=batched, model_kwargs=model_kwargs)
    keys = select(found, layers)
    if what == "inputs":
        missing = [k for k in keys if found.inputs[k] is None]
        if missing:
            raise ValueError(f"these layers receive no array input to report: {', '.join(missing)}")
    which = 0 if what == "inputs" else 1
    if any(key in found.found for key in keys):  # activations found in the computation: read the traced program
        fn = found.values([k for k in keys if k not in found.found], which, [k for k in keys if k in found.found],
                          "z" if what == "inputs" else "y", values_only=False)
        return fn, state, keys, found
    return _CaptureFn(Recorder(graphdef, method, keys, batched), which), state, keys, found


def capture_fn(model, layers=None, *, example, what: str = "outputs", batched: bool = False, model_kwargs=None):
    """A pure function of (state, x) returning the model's output and the selected layers' values:
    jit and vmap it; `nnx.merge` happens inside.

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        layers: which layers: a path (`"layers/0"`), a glob (`"blocks/*"`), an activation key
            (`"relu#1"`, `"blocks/0/mlp:gelu"`), a type (`nnx.Conv`, `activations.Activation`), or a
            list of these. None: the top-level layers and the model's own activations, in call order.
        example: one model input (sets the shapes traced).
        what: "outputs" (what each layer returns) or "inputs" (its first positional argument).
        batched: the model is written batch-first.
        model_kwargs: keyword arguments of the call, held fixed.

    Returns:
        (fn, state, keys): fn(state, x) → (model output, {key: value}); state that of
        (model, model_kwargs); keys the selected layers in call order.

    Raises:
        ValueError: an unknown `what`, or a selector that matches no layer.
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
    """One layer of a model as `f(state, x)`: the form every `f(params, x)` analysis takes, e.g. the
    spectra of wide layers without a dense SVD,
    `matfree.singular_values(f, points, k, params=state)`.

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        layer: a path, or a pattern matching exactly one layer call.
        example: one model input (sets the shapes traced).
        batched: the model is written batch-first.
        model_kwargs: keyword arguments of the call, held fixed.

    Returns:
        (f, state): f(state, x) = the output of `layer` when the model is run on input x; state the
        model's (and model_kwargs') state.

    Raises:
        ValueError: a `layer` that matches no layer or more than one.
    """
    example = jax.ShapeDtypeStruct(jnp.shape(example), jnp.result_type(example))
    fn, state, keys, _ = _prepare(model, layer, example, "outputs", batched, model_kwargs)
    if len(keys) != 1:
        raise ValueError(f"layer {layer!r} selects {len(keys)} layers ({', '.join(keys) or 'none'}); give one path")
    return _LayerOutput(dataclasses.replace(fn, values_only=True), keys[0]), state


def _no_found_activations(fn, keys, what: str) -> None:
    if not isinstance(fn, _CaptureFn):
        raise ValueError(f"{what} takes layers (modules) only; the selection holds activations found in the "
                         f"computation ({', '.join(k for k in keys if ':' in k) or ', '.join(keys)}): select the "
                         "layer after them, or drop them from the selection")


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
    """What each selected layer returns at every point (an activation: φ(z)).

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        points: (N, *input_shape) inputs, one example per row; integer token ids stay integers.
        layers: which layers: a path (`"layers/0"`), a glob (`"blocks/*"`), an activation key
            (`"relu#1"`, `"blocks/0/mlp:gelu"`), a type (`nnx.Conv`, `activations.Activation`), or a
            list of these. None: the top-level layers and the model's own activations, in call order.
        batched: the model is written batch-first: it is called on x[None] per point.
        model_kwargs: keyword arguments of every call (`rngs=`, a KV cache, segment ids), held fixed
            and the same for every point; graph nodes among them are copied per call.
        chunk_size: points per vmapped batch (default `jacobians.DEFAULT_CHUNK_SIZE`): memory is
            bounded by the chunk.
        devices: the devices to spread the points over (default: every device JAX sees).

    Returns:
        {key: (N, *output_shape)} in call order.

    Raises:
        ValueError: a selector that matches no layer (the layers there are are listed), points that
            do not fit the model (with the `batched=True` hint for batch-first models), a model that
            changes its state while evaluated (BatchNorm / Dropout in training mode: call
            `model.eval()`).
        batching.CompilerFaultError: the batched computation disagrees with the same function
            compiled unbatched at the points the canary recomputes (a compiler fault).
    """
    return _values(model, points, layers, "outputs", chunk_size, devices, batched, model_kwargs)


@shape_checked
def inputs(model, points: Shaped[AnyArray, "N *input"], layers=None, *, chunk_size: int | None = None, devices=None,
            batched: bool = False, model_kwargs=None):
    """The first positional argument each selected layer receives at every point (an activation: z).

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        points: (N, *input_shape) inputs, one example per row; integer token ids stay integers.
        layers: which layers: a path (`"layers/0"`), a glob (`"blocks/*"`), an activation key
            (`"relu#1"`, `"blocks/0/mlp:gelu"`), a type (`nnx.Conv`, `activations.Activation`), or a
            list of these. None: the top-level layers and the model's own activations, in call order.
        batched: the model is written batch-first: it is called on x[None] per point.
        model_kwargs: keyword arguments of every call (`rngs=`, a KV cache, segment ids), held fixed
            and the same for every point; graph nodes among them are copied per call.
        chunk_size: points per vmapped batch (default `jacobians.DEFAULT_CHUNK_SIZE`): memory is
            bounded by the chunk.
        devices: the devices to spread the points over (default: every device JAX sees).

    Returns:
        {key: (N, *input_shape)} in call order.

    Raises:
        ValueError: a selector that matches no layer (the layers there are are listed), points that
            do not fit the model (with the `batched=True` hint for batch-first models), a model that
            changes its state while evaluated (BatchNorm / Dropout in training mode: call
            `model.eval()`).
        batching.CompilerFaultError: the batched computation disagrees with the same function
            compiled unbatched at the points the canary recomputes (a compiler fault).
    """
    return _values(model, points, layers, "inputs", chunk_size, devices, batched, model_kwargs)


@shape_checked
def input_jacobian_field(model, points: Shaped[AnyArray, "N *input"], layers=None, *, wrt: str | None = None,
                         mode: str = "auto", chunk_size: int | None = None,
                         reduce: Callable | None = None, devices=None, batched: bool = False,
                         as_matrix: bool = False, check_finite: bool = True, model_kwargs=None) -> dict[str, Any]:
    """∂(output of each selected layer)/∂(model input) at every point, for all selected layers in
    one Jacobian of their outputs together, in the mode that is cheaper for the model input size
    against their total size (`jacobians.choose_mode`).

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        points: (N, *input_shape) inputs, one example per row; integer token ids stay integers.
        layers: which layers: a path (`"layers/0"`), a glob (`"blocks/*"`), an activation key
            (`"relu#1"`, `"blocks/0/mlp:gelu"`), a type (`nnx.Conv`, `activations.Activation`), or a
            list of these. None: the top-level layers and the model's own activations, in call order.
        wrt: differentiate with respect to the output of layer `wrt` instead (a token embedding, or
            block 3's output), the model still run from its own inputs: integer token ids stay
            integers. Layers called before it do not depend on it (zero).
        mode: "forward", "reverse" or "auto" (the cheaper for the input size against the total size
            of the selected outputs).
        reduce: applied to each point's Jacobian inside the chunked loop (e.g.
            `spectra.singular_values`): only its result is kept.
        as_matrix: each point's Jacobian reshaped to (output size, input size) before `reduce`.
        check_finite: raise where the Jacobian is NaN or inf at finite points (False: return it raw).
        batched: the model is written batch-first: it is called on x[None] per point.
        model_kwargs: keyword arguments of every call (`rngs=`, a KV cache, segment ids), held fixed
            and the same for every point; graph nodes among them are copied per call.
        chunk_size: points per vmapped batch (default `jacobians.DEFAULT_CHUNK_SIZE`): memory is
            bounded by the chunk.
        devices: the devices to spread the points over (default: every device JAX sees).

    Returns:
        {key: (N, *output_shape, *input_shape)} in call order (input_shape: the `wrt` layer's
        output shape with `wrt=`), or what `reduce` returns per point.

    Raises:
        ValueError: a selector that matches no layer (the layers there are are listed), points that
            do not fit the model (with the `batched=True` hint for batch-first models), a model that
            changes its state while evaluated (BatchNorm / Dropout in training mode: call
            `model.eval()`), or a Jacobian that is NaN or inf at finite points.
        batching.CompilerFaultError: the batched computation disagrees with the same function
            compiled unbatched at the points the canary recomputes (a compiler fault).
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
    recorder = fn.recorder if isinstance(fn, _CaptureFn) else fn  # ProgramValues takes inject= itself
    return _ordered(jacobians.wrt_field(recorder, found, state, points, wrt, shapes, mode=mode, chunk_size=chunk_size,
                               reduce=reduce, devices=devices, as_matrix=as_matrix, check_finite=check_finite), keys)


@shape_checked
def local_jacobian_field(model, points: Shaped[AnyArray, "N *input"], layers=None, *, mode: str = "auto", chunk_size: int | None = None,
                         reduce: Callable | None = None, devices=None, batched: bool = False,
                         as_matrix: bool = False, check_finite: bool = True, model_kwargs=None) -> dict[str, Any]:
    """Each selected layer's own Jacobian ∂(output)/∂(first input), at the input it receives from
    each point (its other arguments held at the values they had).

    An activation found in the computation has a diagonal local Jacobian, D_φ(z): its entry is
    that diagonal, φ'(z) of shape (N, *z_shape), never the dense (n × n) matrix (`reduce` and
    `as_matrix` do not apply to it; its singular values are |φ'(z)|, `local_singular_values`).

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        points: (N, *input_shape) inputs, one example per row; integer token ids stay integers.
        layers: which layers: a path (`"layers/0"`), a glob (`"blocks/*"`), an activation key
            (`"relu#1"`, `"blocks/0/mlp:gelu"`), a type (`nnx.Conv`, `activations.Activation`), or a
            list of these. None: the top-level layers and the model's own activations, in call order.
        mode: "forward", "reverse" or "auto" (the cheaper for the input size against the total size
            of the selected outputs).
        reduce: applied to each point's Jacobian inside the chunked loop (e.g.
            `spectra.singular_values`): only its result is kept.
        as_matrix: each point's Jacobian reshaped to (output size, input size) before `reduce`.
        check_finite: raise where the Jacobian is NaN or inf at finite points (False: return it raw).
        batched: the model is written batch-first: it is called on x[None] per point.
        model_kwargs: keyword arguments of every call (`rngs=`, a KV cache, segment ids), held fixed
            and the same for every point; graph nodes among them are copied per call.
        chunk_size: points per vmapped batch (default `jacobians.DEFAULT_CHUNK_SIZE`): memory is
            bounded by the chunk.
        devices: the devices to spread the points over (default: every device JAX sees).

    Returns:
        {key: (N, *output_shape, *layer_input_shape)} in call order; activations (N, *z_shape).

    Raises:
        ValueError: a selector that matches no layer (the layers there are are listed), points that
            do not fit the model (with the `batched=True` hint for batch-first models), a model that
            changes its state while evaluated (BatchNorm / Dropout in training mode: call
            `model.eval()`), or a Jacobian that is NaN or inf at finite points.
        batching.CompilerFaultError: the batched computation disagrees with the same function
            compiled unbatched at the points the canary recomputes (a compiler fault).
    """
    points = jacobians.check_points(points, differentiable=False)
    recorder, state, found, modes, selected = local.local_setup(model, points, layers, mode, batched, model_kwargs)
    result = local.activation_derivatives(model, points, found, selected, model_kwargs, chunk_size, devices)
    if check_finite:
        jacobians.check_finite_result(result, "an activation's derivative")
    if recorder.keys:
        per_point = local.LocalJacobians(recorder, modes, reduce, as_matrix)
        parts = jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices,
                                     what="a local Jacobian")
        if check_finite:
            jacobians.raise_nonfinite(parts.finite, "a local Jacobian", field=parts.value if reduce is None else None)
        result.update(parts.value)
    return _ordered(result, selected)


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
    """Per-token Jacobian blocks ∂h_t/∂e_s of a sequence model without the full (T·d_out) × (T·d_in)
    Jacobian: h (T, d_out) the output of `layer`, e (T, d_in) the output of `wrt` (e.g. the token
    embedding), tokens on the first axis of both.

    `pairs="diagonal"`: t = s for every token (T forward sweeps of d_in tangents each, held one
    token at a time: memory O(T·d_out·d_in) per point instead of O(T²·d_out·d_in));
    `pairs="last_row"`: the last token's causal row, t = T − 1 and every s (one reverse sweep of
    d_out cotangents). Points are not differentiated: token ids stay integers.

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        points: (N, *input_shape) inputs, one example per row; integer token ids stay integers.
        layer: the layer whose output h is differentiated (one layer call).
        wrt: the layer whose output e it is differentiated with respect to (one layer call).
        pairs: "diagonal" or "last_row".
        batched: the model is written batch-first: it is called on x[None] per point.
        model_kwargs: keyword arguments of every call (`rngs=`, a KV cache, segment ids), held fixed
            and the same for every point; graph nodes among them are copied per call.
        chunk_size: points per vmapped batch (default `jacobians.DEFAULT_CHUNK_SIZE`): memory is
            bounded by the chunk.
        devices: the devices to spread the points over (default: every device JAX sees).
        check_finite: raise where a block is NaN or inf at finite points.

    Returns:
        (N, T, d_out, d_in): block t is ∂h_t/∂e_t ("diagonal") or ∂h_(T−1)/∂e_t ("last_row").

    Raises:
        ValueError: an unknown `pairs`, a `layer` or `wrt` that names no single layer, outputs that
            are not (T, d) token matrices with the same T, and the cases every probe function
            refuses (points that do not fit, state changed under a transform, NaN or inf).
        batching.CompilerFaultError: the batched computation disagrees with its unbatched
            recomputation (a compiler fault).
    """
    if pairs not in PAIRS:
        raise ValueError(f"unknown pairs={pairs!r}; valid: {', '.join(PAIRS)}")
    points = jacobians.check_points(points, differentiable=False)
    example = jax.ShapeDtypeStruct(points.shape[1:], points.dtype)
    fn, state, keys, found = _prepare(model, layer, example, "outputs", batched, model_kwargs)
    if len(keys) != 1:
        raise ValueError(f"layer {layer!r} selects {len(keys)} layers ({', '.join(keys)}); give one path")
    _no_found_activations(fn, keys, "token_jacobians")
    path, index, wrt_shape = jacobians.wrt_call(found, wrt)
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


@shape_checked
def local_singular_values(model, points: Shaped[AnyArray, "N *input"], layers=None, *, mode: str = "auto",
                          batched: bool = False, model_kwargs=None, chunk_size: int | None = None,
                          devices=None, check_finite: bool = True) -> dict[str, dict]:
    """Singular values of each selected layer's local Jacobian, never forming an elementwise or
    normalisation layer's (n × n) matrix.

    Elementwise layers (activations, BatchNorm and Dropout in eval mode) have a diagonal J:
    |diagonal|, from one JVP. LayerNorm / RMSNorm over the last axis act on each position alone:
    one (b × b) block per position, from b JVPs, and the union of the blocks' singular values. Any
    other layer: the dense J and its SVD. The structure is read from the layer's type (a subclass
    overriding `__call__` is taken as dense).

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        points: (N, *input_shape) inputs, one example per row; integer token ids stay integers.
        layers: which layers: a path (`"layers/0"`), a glob (`"blocks/*"`), an activation key
            (`"relu#1"`, `"blocks/0/mlp:gelu"`), a type (`nnx.Conv`, `activations.Activation`), or a
            list of these. None: the top-level layers and the model's own activations, in call order.
        mode: "forward", "reverse" or "auto" for the dense layers.
        batched: the model is written batch-first: it is called on x[None] per point.
        model_kwargs: keyword arguments of every call (`rngs=`, a KV cache, segment ids), held fixed
            and the same for every point; graph nodes among them are copied per call.
        chunk_size: points per vmapped batch (default `jacobians.DEFAULT_CHUNK_SIZE`): memory is
            bounded by the chunk.
        devices: the devices to spread the points over (default: every device JAX sees).
        check_finite: raise where a Jacobian is NaN or inf at finite points.

    Returns:
        {key: {"values": (N, r) descending singular values, "structure": "diagonal" | "blocks" |
        "dense"}} in call order.

    Raises:
        ValueError: a selector that matches no layer (the layers there are are listed), points that
            do not fit the model (with the `batched=True` hint for batch-first models), a model that
            changes its state while evaluated (BatchNorm / Dropout in training mode: call
            `model.eval()`), or a Jacobian that is NaN or inf at finite points.
        batching.CompilerFaultError: the batched computation disagrees with the same function
            compiled unbatched at the points the canary recomputes (a compiler fault).
    """
    points = jacobians.check_points(points, differentiable=False)
    recorder, state, found, modes, selected = local.local_setup(model, points, layers, mode, batched, model_kwargs)
    diagonals = local.activation_derivatives(model, points, found, selected, model_kwargs, chunk_size, devices)
    result = {key: {"values": -jnp.sort(-jnp.abs(d.reshape(len(d), -1)), axis=1), "structure": "diagonal"}
              for key, d in diagonals.items()}
    keys = recorder.keys
    if not keys:
        return _ordered(result, selected)
    module = jacobians.module_and_method(model)[0]
    instances = recording.callable_modules(module)
    structures = []
    for key in keys:
        structure = local.jacobian_structure(found.types[key], instances.get(key.split("@")[0]))
        if structure != "dense" and found.outputs[key] != found.inputs[key]:
            structure = "dense"  # the structure needs an output shaped like the input
        structures.append(structure)
    per_point = local.LocalSpectra(recorder, tuple(structures), modes)
    values = jacobians.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices)
    if check_finite:
        jacobians.check_finite_result(values, "a local singular value")
    result.update({key: {"values": values[key], "structure": structure} for key, structure in zip(keys, structures)})
    return _ordered(result, selected)
