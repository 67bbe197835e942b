"""Pointwise activations, each with its hand-written derivative and declared facts.

The derivative φ' is written out by hand (not taken from autodiff) so that the closed
form of a layer Jacobian, D_φ(z) W, can serve as an independent oracle for
`geometry.jacobians`. The declared facts are checked numerically in the tests and in
the `activations` experiment:

* ``strictly_monotone``: φ(a) < φ(b) whenever a < b.
* ``smooth``: φ is continuously differentiable (C¹), i.e. φ' has no jump.
  ELU with α = 1 is C¹ (its second derivative jumps at 0); ReLU and leaky ReLU are not.

"gelu" is the exact (erf) form, "gelu_tanh" the tanh approximation (`jax.nn.gelu`'s default,
`approximate=True`). GELU and SiLU are NOT monotone: both dip below zero
for negative inputs (min φ' ≈ −0.13 and ≈ −0.10), so neither can be a homeomorphism
argument's "strictly monotone" activation.

At a kink, φ'(0) is the value JAX's own autodiff gives (ReLU: 0, leaky ReLU: α), so
the oracle and `jax.jacfwd` agree at every point, zero included.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

_SQRT_2 = 1.4142135623730951
_INV_SQRT_2PI = 0.3989422804014327


@dataclasses.dataclass(frozen=True)
class Activation:
    """A pointwise activation φ with its derivative φ' and facts about it."""

    name: str
    fn: Callable[[jax.Array], jax.Array]
    derivative: Callable[[jax.Array], jax.Array]
    strictly_monotone: bool
    smooth: bool

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.fn(z)


def _sigmoid_derivative(z):
    s = jax.nn.sigmoid(z)
    return s * (1.0 - s)


def _gelu(z):
    return 0.5 * z * (1.0 + erf(z / _SQRT_2))


def _gelu_derivative(z):
    # d/dz [z Φ(z)] = Φ(z) + z ϕ(z), ϕ the standard normal density
    return 0.5 * (1.0 + erf(z / _SQRT_2)) + z * _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


_TANH_GELU_C = 0.7978845608028654  # √(2/π)


def _gelu_tanh(z):
    return 0.5 * z * (1.0 + jnp.tanh(_TANH_GELU_C * (z + 0.044715 * z ** 3)))


def _gelu_tanh_derivative(z):
    # u = c (z + 0.044715 z³): d/dz [½ z (1 + tanh u)] = ½ (1 + tanh u) + ½ z (1 − tanh² u) c (1 + 3·0.044715 z²)
    t = jnp.tanh(_TANH_GELU_C * (z + 0.044715 * z ** 3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _TANH_GELU_C * (1.0 + 3 * 0.044715 * z * z)


def _silu_derivative(z):
    s = jax.nn.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    """Leaky ReLU with the given slope α > 0 on the negative half-line."""
    if not negative_slope > 0:
        raise ValueError(f"leaky_relu needs negative_slope > 0, got {negative_slope}")
    alpha = float(negative_slope)
    return Activation(
        name="leaky_relu" if alpha == 0.01 else f"leaky_relu_{alpha:g}",
        fn=lambda z: jnp.where(z > 0, z, alpha * z),
        derivative=lambda z: jnp.where(z > 0, 1.0, alpha).astype(jnp.result_type(z, float)),
        strictly_monotone=True,
        smooth=False,
    )


_REGISTRY: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation(
            "identity",
            fn=lambda z: z,
            derivative=lambda z: jnp.ones_like(z),
            strictly_monotone=True,
            smooth=True,
        ),
        Activation(
            "relu",
            fn=jax.nn.relu,
            derivative=lambda z: (z > 0).astype(jnp.result_type(z, float)),
            strictly_monotone=False,
            smooth=False,
        ),
        leaky_relu(0.01),
        Activation(
            "sigmoid",
            fn=jax.nn.sigmoid,
            derivative=_sigmoid_derivative,
            strictly_monotone=True,
            smooth=True,
        ),
        Activation(
            "tanh",
            fn=jnp.tanh,
            derivative=lambda z: 1.0 - jnp.tanh(z) ** 2,
            strictly_monotone=True,
            smooth=True,
        ),
        Activation("gelu", fn=_gelu, derivative=_gelu_derivative, strictly_monotone=False, smooth=True),
        Activation(
            "silu",
            fn=jax.nn.silu,
            derivative=_silu_derivative,
            strictly_monotone=False,
            smooth=True,
        ),
        Activation(
            "softplus",
            fn=jax.nn.softplus,
            derivative=jax.nn.sigmoid,
            strictly_monotone=True,
            smooth=True,
        ),
        Activation(
            "elu",
            # the inner where keeps exp() finite on the unused branch (and its gradient exact at 0)
            fn=lambda z: jnp.where(z > 0, z, jnp.expm1(jnp.where(z > 0, 0.0, z))),
            derivative=lambda z: jnp.where(z > 0, 1.0, jnp.exp(jnp.where(z > 0, 0.0, z))),
            strictly_monotone=True,
            smooth=True,
        ),
    )
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)  # the activations the experiments sweep

# known to `get` but not swept: jax.nn.gelu(approximate=True), the form GPT-2 and BERT use, up to 1e-3
# from the exact GELU (`geometry.discovery` tells the two apart in a model's computation)
_EXTRA: dict[str, Activation] = {
    "gelu_tanh": Activation("gelu_tanh", fn=_gelu_tanh, derivative=_gelu_tanh_derivative, strictly_monotone=False,
                            smooth=True),
}


def get(name: str | Activation) -> Activation:
    """The activation called `name`.

    ``leaky_relu_<slope>`` (e.g. ``leaky_relu_0.2``) gives leaky ReLU with that slope;
    ``"gelu_tanh"`` the tanh-approximate GELU (not in `NAMES`, which the experiments sweep).

    Args:
        name: a name in `NAMES`, ``leaky_relu_<slope>``, ``"gelu_tanh"``, or an `Activation`
            (returned unchanged).

    Returns:
        The `Activation`: φ, its hand-written φ', and the declared facts `strictly_monotone` and
        `smooth` (C¹).

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    if isinstance(name, Activation):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _EXTRA:
        return _EXTRA[name]
    if isinstance(name, str) and name.startswith("leaky_relu_"):
        try:
            slope = float(name.removeprefix("leaky_relu_"))
        except ValueError:
            slope = None
        if slope is not None and slope > 0:
            return leaky_relu(slope)
    raise ValueError(
        f"unknown activation {name!r}; valid names: {', '.join(NAMES + tuple(_EXTRA))} "
        "(or leaky_relu_<slope> with slope > 0)"
    )


def low_derivative_zones(activation, threshold: float = 0.05, z_max: float = 8.0,
                         grid_points: int = 16_001) -> list[tuple[float, float]]:
    """Intervals of [−z_max, z_max] where |φ'(z)| < threshold (dead or saturated), in float64.

    Found on a grid, then each finite end refined by bisection to ~1e-12; an interval
    touching ±z_max is reported with that end (the zone continues beyond it).
    """
    derivative = get(activation).derivative
    with jax.enable_x64(True):
        def low(z):
            return np.abs(np.asarray(derivative(jnp.asarray(z, dtype=jnp.float64)))) < threshold

        z = np.linspace(-z_max, z_max, grid_points)
        mask = low(z)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))

        def refine(inside: float, outside: float) -> float:
            for _ in range(60):
                mid = 0.5 * (inside + outside)
                inside, outside = (mid, outside) if low(mid) else (inside, mid)
            return 0.5 * (inside + outside)

        zones = []
        for start, stop in zip(edges[::2], edges[1::2]):
            a = z[start] if start == 0 else refine(z[start], z[start - 1])
            b = z[stop - 1] if stop == len(z) else refine(z[stop - 1], z[stop])
            zones.append((float(a), float(b)))
    return zones
