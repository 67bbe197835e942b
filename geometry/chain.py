"""The exact log volume of a model that is a stack of dense layers and elementwise activations,
found in the model itself: no weights or derivatives to pass by hand.

`log_volume(model, points, activation)` selects the model's dense layers (`nnx.Linear` and
`geometry.layers.Dense`, or the `layers` given, by path, glob or type as in `geometry.probe`),
records what each receives and returns at every point, and checks from those records that the
model is exactly x → φ(W_1 x + b_1) → … : the first dense layer receives the input, each next one
receives φ of the previous one's output, and the model returns the last one's output or φ of it.
Then Σ log σ_i(J) splits over the layers (`geometry.metric.chain_log_volume`, the conditions on the
widths there) and φ′ at each recorded pre-activation is all that is computed per point.

Anything else between the layers (a residual connection, a normalisation, dropout in training) is
a ValueError naming the two layers and the largest mismatch: the split would be false there, and
`geometry.matfree.log_volume` (SLQ) or `geometry.spectra.log_volume` (dense) is the route to take.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry import activations, jacobians, metric, recording
from geometry import layers as layer_types


def _derivative(activation):
    if callable(activation) and not isinstance(activation, (str, activations.Activation)):
        return activation, jnp.vectorize(jax.grad(lambda z: activation(z)))
    found = activations.get(activation)
    return found.fn, found.derivative


def _mismatch(got, expected) -> float:
    """Largest |got − expected| relative to the scale of expected (float64, on the host)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        return np.inf
    return float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def _what_runs(found, before: str, after: str, named) -> str:
    """What the computation applies between two layers, from the activations found in it (empty if none)."""
    order = list(found.keys)
    between = [found.identified[k] for k in order[order.index(before) + 1:order.index(after)] if k in found.identified]
    if not between:
        return ""
    forms = {"gelu": "the exact (erf) GELU, activation='gelu'",
             "gelu_tanh": "the tanh-approximate GELU (jax.nn.gelu's default), activation='gelu_tanh'"}
    told = "; ".join(forms.get(name, f"activation={name!r}") for name in between)
    return f" (the model applies {', '.join(between)} there, not {named}: {told})"


def log_volume(model, points, activation, *, layers=None, rtol: float = 1e-5, model_kwargs=None,
               chunk_size: int | None = None) -> dict:
    """Σ log σ_i of each point's Jacobian of `model` by the exact per-layer split (module docstring).

    points (N, n); activation: the model's φ as a name from `geometry.activations.NAMES`, an
    `Activation`, or a function (its derivative by autodiff). `rtol` is how closely the recorded
    values must match the structure (float32 models: ~1e-5 of their scale). Returns
    `metric.chain_log_volume`'s {"values", "per_layer", "rounding"} plus "layers" (the paths, in
    call order) and "output_activation" (whether the model returns φ of the last layer's output)."""
    points = jacobians.check_points(points)
    if points.ndim != 2:
        raise ValueError(f"the per-layer split needs flat points (N, n), got shape {tuple(points.shape)}; "
                         "use geometry.matfree.log_volume for other shapes")
    phi, phi_prime = _derivative(activation)
    found = recording.plan(model, points[0], model_kwargs=model_kwargs)
    if layers is None:
        dense = (nnx.Linear, layer_types.Dense)
        keys = tuple(k for k in found.keys if found.types[k] is not None and issubclass(found.types[k], dense))
        if not keys:
            raise ValueError(f"the model calls no nnx.Linear or geometry Dense layer (it calls: "
                             f"{', '.join(found.keys) or 'nothing'}); name its dense layers with layers=")
    else:
        keys = recording.select(found, layers)
    if any("@" in key for key in keys):
        raise ValueError(f"layers called inside a scan ({', '.join(k for k in keys if '@' in k)}) share one weight "
                         "array per iteration; the split takes separately stored layers")
    # one forward pass gives the model's output and what each selected layer receives and returns
    graphdef, state, method = recording.split_model(model, model_kwargs)
    final, records = jacobians.map_points(recording.Recorder(graphdef, method, keys), state, points, chunk_size=chunk_size)
    received = {key: records[key][0] for key in keys}
    returned = {key: records[key][1] for key in keys}

    def require(gap, where):
        if not gap <= rtol:
            raise ValueError(f"{where} (largest mismatch {gap:.2g} of its scale, rtol={rtol}): the model is not only dense "
                             "layers and the elementwise activation there, so its log volume does not split over the "
                             "layers; use geometry.matfree.log_volume or geometry.spectra.log_volume")

    require(_mismatch(received[keys[0]], points), f"{keys[0]} does not receive the model's input")
    named = getattr(activation, "name", activation)
    for before, after in zip(keys, keys[1:]):
        require(_mismatch(received[after], phi(returned[before])),
                f"{after} does not receive {named} of what {before} returns{_what_runs(found, before, after, named)}")
    last = returned[keys[-1]]
    output_activation = _mismatch(final, phi(last)) <= rtol
    if not output_activation:
        require(_mismatch(final, last), f"the model returns neither {keys[-1]}'s output nor the activation of it")
    modules = recording.callable_modules(model)
    weights = [layer_types.dense_weight(modules[key]) for key in keys]
    derivatives = [phi_prime(returned[key]) for key in keys[:-1]]
    derivatives.append(phi_prime(last) if output_activation else jnp.ones_like(last))
    result = metric.chain_log_volume(weights, derivatives)
    return {**result, "layers": list(keys), "output_activation": bool(output_activation)}
