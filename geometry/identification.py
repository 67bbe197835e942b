"""Naming an elementwise map by what it computes: the part of `geometry.discovery` that evaluates.

`identify(eqns, z, y)` runs the equations that compute y from z (a piece of a traced program)
on a grid of z values spread over z's own shape — with the program's own constants — and
compares φ with the candidates `discovery` lists, at the dtype's tolerance (float32: 2e-5
relative to 1 + |φ|). `evaluate` and `bind` run pieces of a program; `geometry.capture` uses them
at run time to differentiate one activation alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex


def evaluate(eqns: Sequence, z, y, z_value, env: dict | None = None):
    """y computed from z_value by `eqns`; other operands from `env` (var -> value) or the literals."""
    values = dict(env or {})
    values[z] = z_value

    def read(v):
        return v.val if isinstance(v, jex.Literal) else values[v]

    for eqn in eqns:
        out = bind(eqn, [read(v) for v in eqn.invars])
        values.update(zip(eqn.outvars, out))
    return values[y]


def bind(eqn, values) -> list:
    """The equation's primitive applied to values, as `jax.core.eval_jaxpr` does."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


GRID = np.concatenate([np.linspace(-8.0, 8.0, 161), [-0.5e-3, 0.5e-3, -30.0, 30.0]])


def _grid_values(z) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(test input in z's shape, which grid point each entry holds)], enough of them to hold every
    grid point (a small z takes several)."""
    size = math.prod(z.aval.shape)
    rounds = -(-len(GRID) // size)
    result = []
    for r in range(rounds):
        index = (np.arange(size) + r * size) % len(GRID)
        result.append((GRID[index].reshape(z.aval.shape), index))
    return result


def identify(eqns, z, y, known: dict | None = None) -> str | None:
    """The name of the elementwise map y = φ(z) computed by `eqns` (other operands from `known`),
    None if it is affine."""
    tests = _grid_values(z)
    try:  # the grid leaves φ's domain on purpose (log, sqrt of negatives): NaN there is information
        with jax.ensure_compile_time_eval(), jax.debug_nans(False), jax.debug_infs(False):
            out = np.concatenate([np.asarray(evaluate(eqns, z, y, jnp.asarray(test, z.aval.dtype), known),
                                             np.float64).reshape(-1) for test, _ in tests])
    except Exception:  # noqa: BLE001 - an operand from the model's parameters, or an operation that cannot run here
        return "elementwise"
    index = np.concatenate([index for _, index in tests])
    phi = np.full(len(GRID), np.nan)
    for i in range(len(GRID)):
        values = out[index == i]
        finite = values[np.isfinite(values)]
        if finite.size and finite.size < values.size:
            return "elementwise"  # finite for some units, not for others at the same z: per-unit
        if finite.size:
            if finite.max() - finite.min() > 1e-6 * (1 + np.abs(finite).max()):
                return "elementwise"  # a per-unit parameter: not one scalar function
            phi[i] = finite[0]
        elif values.size:
            phi[i] = np.inf  # outside φ's domain at this z (log, sqrt of a negative)
    seen = ~np.isnan(phi)
    t = GRID[seen]
    values = np.where(np.isinf(phi[seen]), np.nan, phi[seen])
    finite = np.isfinite(values)
    if finite.all() and finite.sum() > 1:
        slope = np.polyfit(t, values, 1)
        if np.allclose(np.polyval(slope, t), values, rtol=1e-6, atol=1e-6):
            return None
    return match(t, values, np.dtype(z.aval.dtype))


def _candidates(t):
    from scipy import special

    sigmoid = special.expit(t)
    softplus = np.logaddexp(t, 0)
    gelu_tanh = 0.5 * t * (1 + np.tanh(np.sqrt(2 / np.pi) * (t + 0.044715 * t ** 3)))
    selu_alpha, selu_scale = 1.6732632423543772, 1.0507009873554805
    hard_sigmoid = np.clip(t + 3, 0, 6) / 6
    return {
        "relu": np.maximum(t, 0), "gelu": 0.5 * t * (1 + special.erf(t / np.sqrt(2))), "gelu_tanh": gelu_tanh,
        "silu": t * sigmoid, "sigmoid": sigmoid, "tanh": np.tanh(t), "softplus": softplus,
        "elu": np.where(t > 0, t, np.expm1(np.minimum(t, 0))),
        "selu": selu_scale * np.where(t > 0, t, selu_alpha * np.expm1(np.minimum(t, 0))),
        "mish": t * np.tanh(softplus), "hard_tanh": np.clip(t, -1, 1), "hard_sigmoid": hard_sigmoid,
        "hard_silu": t * hard_sigmoid, "relu6": np.clip(t, 0, 6), "abs": np.abs(t), "square": t ** 2,
        "sin": np.sin(t), "exp": np.exp(t), "log_sigmoid": -np.logaddexp(-t, 0), "soft_sign": t / (1 + np.abs(t)),
    }


def match(t: np.ndarray, phi: np.ndarray, dtype) -> str:
    """The candidate name φ(t) equals within the dtype's tolerance, or "elementwise"."""
    tolerance = 2e-5 if dtype.itemsize <= 4 else 1e-9
    if dtype.itemsize < 4:
        tolerance = 2e-2
    finite = np.isfinite(phi)
    if not finite.any():
        return "elementwise"

    def close(reference):
        ok = finite & np.isfinite(reference)
        scale = 1 + np.abs(reference[ok])
        return ok.sum() == finite.sum() and np.all(np.abs(phi[ok] - reference[ok]) <= tolerance * scale)

    for name, reference in _candidates(t).items():
        if close(reference):
            return name
    negative, positive = t < -1e-2, t > 1e-2
    if close(np.where(t > 0, t, phi)) and negative.any():  # identity above 0: leaky relu, elu, celu
        alpha = float(np.median(phi[negative & (t > -4)] / t[negative & (t > -4)]))
        if alpha > 0 and close(np.where(t > 0, t, alpha * t)):
            return f"leaky_relu_{_short(alpha)}"
        alpha = float(-phi[np.argmin(t)])
        if alpha > 0 and close(np.where(t > 0, t, alpha * np.expm1(np.minimum(t, 0) / alpha))):
            return f"celu_{_short(alpha)}"
        if alpha > 0 and close(np.where(t > 0, t, alpha * np.expm1(np.minimum(t, 0)))):
            return f"elu_{_short(alpha)}"
    low, high = float(phi[finite].min()), float(phi[finite].max())
    if positive.any() and close(np.clip(t, low, high)):
        return f"clip({_short(low)}, {_short(high)})"
    return "elementwise"


def _short(value: float) -> str:
    return f"{float(f'{value:.4g}'):g}"
