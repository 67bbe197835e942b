"""The grid-and-disk widget: a grid and the unit disk pushed through φ(W_θ x), W_θ a rotation.

The measurement is `experiments.grid_warp`'s own (the same `measure`, the same theory
fractions), so the page and the committed figure cannot disagree: the folded fraction is
the share of the disk where rank J < 2, J = D_φ(W_θ x) W_θ, on a 151² grid; the
orientation-reversed share is where det J < 0 without folding.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from experiments import grid_warp
from playground.config import LAYER_KINDS, ConfigError
from playground.network import activation_name

ACTIVATIONS = tuple(kind for kind in LAYER_KINDS if kind not in ("yat", "rbf"))
MEASURE_GRID = 151  # the quick figure's measurement grid
DRAW_GRID = 41  # disk points drawn in the page
LINES = 13


@functools.cache
def _points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return grid_warp.disk_points(MEASURE_GRID), grid_warp.disk_points(DRAW_GRID), grid_warp.grid_lines(LINES, 80)


def view(activation: str, angle_degrees) -> dict:
    """The warped grid lines and disk, and the measured and theoretical fractions, as JSON."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    try:
        angle = float(angle_degrees)
    except (TypeError, ValueError):
        raise ConfigError(f"angle must be a number of degrees, got {angle_degrees!r}") from None
    if not math.isfinite(angle) or abs(angle) > 360:
        raise ConfigError(f"angle must be within ±360 degrees, got {angle_degrees!r}")
    name, theta = activation_name(activation), math.radians(angle)
    measured_on, disk, lines = _points()
    measured = grid_warp.measure(name, theta, measured_on)
    theory = grid_warp.theory_fractions(name)
    return {
        "activation": activation, "angle": angle,
        "lines": np.round(grid_warp.image(name, theta, lines), 4).tolist(),  # (2·LINES, 80, 2)
        "disk": np.round(grid_warp.image(name, theta, disk), 4).tolist(),  # (P, 2), coloured by polar angle
        "hue": np.round((np.arctan2(disk[:, 1], disk[:, 0]) / (2 * math.pi)) % 1.0, 3).tolist(),
        "folded": measured["folded"], "orientation_reversed": measured["orientation_reversed"],
        "theory_folded": theory["folded"], "theory_orientation_reversed": theory["orientation_reversed"],
    }
