"""What each activation of a model does at a set of points: its name, φ'(z), dead and saturated units.

The activations are the ones `geometry.discovery` finds in the computation (inline `nnx.relu`,
`jax.nn.gelu`, `x * sigmoid(x)`, ...) and the library's own activation layers (`Pointwise`);
`geometry.probe` re-exports both functions here (`probe.activations`, `probe.activation_stats`).

* `activations(model, example)`: {key: identified name}, in call order.
* `derivatives(model, points, keys)`: {key: (N, *shape) φ'(z)}, the diagonal of each D_φ.
* `activation_stats(model, points)`: per activation, the fractions of (unit, point) pairs that
  are dead (φ'(z) = 0 exactly), saturated (0 < |φ'(z)| < `saturation`) and live (the rest), and
  quantiles of φ'(z).
"""

from __future__ import annotations

import numpy as np

from geometry import batching, calling, recording

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def activations(model, example, *, batched: bool = False, model_kwargs=None) -> dict[str, str]:
    """What each activation one forward pass applies computes, in call order.

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        example: one point (or a `jax.ShapeDtypeStruct`).
        batched: the model is written batch-first (called on x[None]).
        model_kwargs: keyword arguments of the call, held fixed.

    Returns:
        {key: name}: keys as `probe.layers` lists them (found activations "scope:name", activation
        layers by their path); names as `geometry.discovery` identifies them ("relu",
        "leaky_relu_0.2", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "softmax", ...,
        "elementwise" when the map is none of those).

    Raises:
        ValueError: an example that does not fit the model (with the `batched=True` hint), or a
            model that changes its state while traced (call `model.eval()`).
    """
    found = recording.plan(model, example, batched=batched, model_kwargs=model_kwargs)
    return dict(found.identified)


def activation_keys(found: recording.Plan, layers=None, *, elementwise_only: bool = True) -> tuple[str, ...]:
    """The activation keys `layers` selects (None: every activation), in call order."""
    if layers is None:
        keys = tuple(found.sites)
    else:
        keys = tuple(k for k in recording.select(found, layers) if k in found.sites)
        if not keys:
            raise ValueError(f"{layers!r} selects no activation; the activations are: "
                             f"{', '.join(found.sites) or '(none found)'}")
    if elementwise_only:
        keys = tuple(k for k in keys if found.sites[k].elementwise)
    return keys


def derivatives(model, points, layers=None, *, batched: bool = False, model_kwargs=None, chunk_size=None,
                devices=None) -> dict:
    """{key: (N, *shape)}: φ'(z) at every unit and point, the diagonal of each selected activation's D_φ.

    From forward-mode autodiff of that operation alone at the z the model computes (a tangent
    of ones), never a dense Jacobian. Softmax, which is not elementwise, is left out."""
    points = calling.check_points(points, differentiable=False)
    found = recording.plan(model, points[0], batched=batched, model_kwargs=model_kwargs)
    return derivatives_of(found, model, points, activation_keys(found, layers), model_kwargs=model_kwargs,
                          chunk_size=chunk_size, devices=devices)


def derivatives_of(found: recording.Plan, model, points, keys, *, model_kwargs=None, chunk_size=None,
                   devices=None) -> dict:
    """`derivatives` for a plan already made and checked points (the probe's local fields use it)."""
    if not keys:
        return {}
    _, state, _ = recording.split_model(model, model_kwargs)
    per_point = found.values(sites=keys, what="derivative")
    values = batching.map_points(per_point, state, points, chunk_size=chunk_size, devices=devices,
                                 what="an activation's derivative")
    return {key: values[key] for key in keys}


def activation_stats(model, points, layers=None, *, saturation: float = 0.05, batched: bool = False,
                     model_kwargs=None, chunk_size=None, devices=None) -> dict[str, dict]:
    """Dead, saturated and live fractions of each activation's units over the points.

    Fractions are over all units and points: dead = φ'(z) = 0 exactly (a relu below 0),
    saturated = 0 < |φ'(z)| < saturation (tanh or sigmoid far from 0, gelu and silu deep in their
    negative tails), live the rest.

    Args:
        model: an `nnx.Module` or a bound method of one, written for one example (or batch-first
            with `batched=True`).
        points: (N, *input_shape) inputs, one example per row; integer token ids stay integers.
        layers: which activations (a key, glob, `activations.Activation` type or list); None: all.
        saturation: the threshold s in (0, 1]: a unit is saturated where 0 < |φ'(z)| < s.
        batched: the model is written batch-first: it is called on x[None] per point.
        model_kwargs: keyword arguments of every call (`rngs=`, a KV cache, segment ids), held fixed
            and the same for every point; graph nodes among them are copied per call.
        chunk_size: points per vmapped batch (default `jacobians.DEFAULT_CHUNK_SIZE`): memory is
            bounded by the chunk.
        devices: the devices to spread the points over (default: every device JAX sees).

    Returns:
        {key: {"name", "dead_fraction", "saturated_fraction", "live_fraction",
        "derivative_quantiles" ({q: quantile of φ'(z)} for q in `QUANTILES`), "saturation",
        "units" (units per point)}}, in call order.

    Raises:
        ValueError: saturation outside (0, 1] or not finite; a selector naming no activation; and
            what every probe function refuses (points that do not fit, state changed under a
            transform).
        batching.CompilerFaultError: the batched derivatives disagree with their unbatched
            recomputation (a compiler fault).
    """
    if isinstance(saturation, bool) or not isinstance(saturation, (int, float)) or not 0 < saturation <= 1:
        raise ValueError(f"saturation must be a number in (0, 1] (the |φ'| below which a unit counts as "
                         f"saturated), got {saturation!r}")
    points = calling.check_points(points, differentiable=False)
    found = recording.plan(model, points[0], batched=batched, model_kwargs=model_kwargs)
    values = derivatives_of(found, model, points, activation_keys(found, layers), model_kwargs=model_kwargs,
                            chunk_size=chunk_size, devices=devices)
    result = {}
    for key, derivative in values.items():
        d = np.asarray(derivative, np.float64).reshape(len(derivative), -1)  # (N, units)
        magnitude = np.abs(d)
        dead = float(np.mean(d == 0))
        saturated = float(np.mean((magnitude > 0) & (magnitude < saturation)))
        result[key] = {"name": found.identified[key], "dead_fraction": dead, "saturated_fraction": saturated,
                       "live_fraction": 1.0 - dead - saturated,
                       "derivative_quantiles": dict(zip(QUANTILES, np.quantile(d, QUANTILES).tolist())),
                       "saturation": float(saturation), "units": int(d.shape[1])}
    return result
