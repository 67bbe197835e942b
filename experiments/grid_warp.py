"""A grid and the unit disk pushed through φ(Wx), W a 2-D rotation: who folds the plane.

Command:  python -m experiments grid_warp [--quick]
Writes:   figures/grid_warp.{png,pdf,json,npz} and figures/grid_warp.html (rotation slider)
Runtime:  ~60 s on 2 CPU cores (quick: ~15 s).

Rows are activations, columns rotation angles θ. The first column shows, in input
space, where the layer's Jacobian J = D_φ(Wx) W is rank-deficient (folded onto a curve
or a point) at the first angle; the others show the image of the grid and of the disk
(coloured by polar angle, so folds are visible).

Two fractions of the disk's area are measured with `jacobian_field` on a fine grid:
* folded: rank J < 2 (the area is crushed onto a lower-dimensional set). For ReLU the
  only full-rank region is the preimage of the open positive quadrant, a quarter of the
  disk for every rotation: theory 3/4. Strictly positive φ' gives 0.
* orientation reversed: det J < 0. det J = φ'(z₁)φ'(z₂) det W, so it happens where
  exactly one φ'(z_i) < 0: GELU and SiLU fold the disk over itself (the map is not
  injective) even though J has full rank almost everywhere. With c the zero of φ', each
  coordinate contributes a circular segment beyond distance |c|: theory
  2(arccos|c| − |c|√(1 − c²))/π when |c| < 1 (GELU, c ≈ −0.752), else 0 (SiLU, c ≈ −1.278).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation

from geometry import activations, jacobians, plotting, spectra


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = activations.NAMES
    angles_deg: tuple[float, ...] = (0.0, 30.0, 60.0, 135.0)
    disk_grid: int = 601  # measurement grid per axis over [−1, 1]²; points inside the disk count
    html_frames: int = 24  # slider steps over one full turn (15°); keeps the page under 5 MB
    html_disk_grid: int = 101
    html_dpi: int = 80
    grid_lines: int = 13  # lines per direction over [−1.5, 1.5]


QUICK = Config(activations=("identity", "relu", "tanh", "gelu"), angles_deg=(0.0, 45.0), disk_grid=151,
               html_frames=4, html_disk_grid=61)


def rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]], dtype=np.float32)


@functools.cache
def layer(name: str):
    """x ↦ φ(W x) as f(W, x): W is an argument, so a new angle reuses the compiled field."""
    phi = activations.get(name)
    return lambda weight, x: phi(weight @ x)


def disk_points(grid: int) -> np.ndarray:
    """Grid points of [−1, 1]² inside the closed unit disk: (N, 2)."""
    axis = np.linspace(-1.0, 1.0, grid, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return points[np.sum(points**2, axis=1) <= 1.0]


def derivative_zero(name: str) -> float | None:
    """The negative zero of φ' for non-monotone φ (bisection in float64), else None."""
    phi = activations.get(name)
    if phi.strictly_monotone or name == "relu":
        return None
    with jax.enable_x64(True):
        z = np.linspace(-6.0, 0.0, 60001)
        d = np.asarray(phi.derivative(jnp.asarray(z)))
        crossing = np.flatnonzero((d[:-1] < 0) & (d[1:] >= 0))
        lo, hi = z[crossing[-1]], z[crossing[-1] + 1]
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if float(phi.derivative(jnp.float64(mid))) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def theory_fractions(name: str) -> dict:
    folded = 0.75 if name == "relu" else 0.0
    c = derivative_zero(name)
    reversed_fraction = 0.0
    if c is not None and abs(c) < 1:
        d = abs(c)
        reversed_fraction = 2 * (math.acos(d) - d * math.sqrt(1 - d * d)) / math.pi
    return {"folded": folded, "orientation_reversed": reversed_fraction, "derivative_zero": c}


SHADES = np.array([0.1, 0.5, 0.88], dtype=np.float32)  # grey of a folded, an orientation-reversed, another point


def measure(name: str, theta: float, points: np.ndarray) -> dict:
    J = jacobians.jacobian_field(layer(name), points, params=rotation(theta))  # (N, 2, 2)
    folded = spectra.numerical_rank(J) < 2
    reversed_ = (jnp.linalg.det(J) < 0) & ~folded
    return {
        "folded": float(np.mean(np.asarray(folded), dtype=np.float64)),
        "orientation_reversed": float(np.mean(np.asarray(reversed_), dtype=np.float64)),
        "shade": np.asarray(jnp.where(folded, SHADES[0], jnp.where(reversed_, SHADES[1], SHADES[2]))),
    }


def grid_lines(count: int, samples: int = 200) -> np.ndarray:
    """(2·count, samples, 2): `count` horizontal then `count` vertical lines over [−1.5, 1.5]²."""
    line = np.linspace(-1.5, 1.5, samples, dtype=np.float32)
    offsets = np.linspace(-1.5, 1.5, count, dtype=np.float32)
    horizontal = [np.stack([line, np.full_like(line, c)], 1) for c in offsets]
    vertical = [np.stack([np.full_like(line, c), line], 1) for c in offsets]
    return np.stack(horizontal + vertical)


def image(name: str, theta: float, points: np.ndarray) -> np.ndarray:
    """φ(W_θ x) at every point (..., 2)."""
    flat = np.asarray(points, np.float32).reshape(-1, 2)
    out = jax.vmap(layer(name), (None, 0))(jnp.asarray(rotation(theta)), flat)
    return np.asarray(out).reshape(np.shape(points))


def _draw_image(ax, name: str, theta: float, config: Config, disk: np.ndarray, hue: np.ndarray) -> None:
    for out in image(name, theta, grid_lines(config.grid_lines)):
        ax.plot(out[:, 0], out[:, 1], color="0.6", lw=0.4)
    out = image(name, theta, disk)
    ax.scatter(out[:, 0], out[:, 1], c=hue, cmap="hsv", s=0.3, lw=0, rasterized=True)
    ax.set_aspect("equal")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_xticks([])
    ax.set_yticks([])


def _scatter_disk(config: Config) -> tuple[np.ndarray, np.ndarray]:
    # a sunflower (Vogel) spiral: evenly spread points, deterministic, no RNG needed
    n = 1500
    k = np.arange(n) + 0.5
    r, phi = np.sqrt(k / n), k * math.pi * (3 - math.sqrt(5))
    disk = np.stack([r * np.cos(phi), r * np.sin(phi)], 1).astype(np.float32)
    return disk, np.mod(np.arctan2(disk[:, 1], disk[:, 0]), 2 * math.pi)


def _html(config: Config, disk: np.ndarray, hue: np.ndarray) -> str:
    names = config.activations
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.1 * rows), squeeze=False)
    points = disk_points(config.html_disk_grid)
    angles = np.linspace(0.0, 2 * math.pi, config.html_frames, endpoint=False)

    def draw(frame: int):
        theta = float(angles[frame])
        for ax in axes.flat:
            ax.clear()
            ax.axis("off")
        for ax, name in zip(axes.flat, names):
            ax.axis("on")
            _draw_image(ax, name, theta, config, disk, hue)
            folded = measure(name, theta, points)["folded"]  # coarse grid: a label, not a result
            ax.set_title(f"{name}  θ={math.degrees(theta):.0f}°\nfolded {folded:.2f}", fontsize=7)
        return []

    anim = animation.FuncAnimation(fig, draw, frames=len(angles), blit=False)
    # frames are saved at savefig.dpi; the embed limit (MB) guards the 5 MB page budget
    with plt.rc_context({"savefig.dpi": config.html_dpi, "animation.embed_limit": 5.0}):
        html = plotting.animation_html(anim, "grid_warp", fps=4, default_mode="loop")
    plt.close(fig)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>grid_warp: φ(Wx), W a rotation</title></head>"
        "<body><h3>A grid and the unit disk (coloured by polar angle) mapped by φ(Wx), W = rotation by θ. "
        "Drag the slider to rotate W; 'folded' is the fraction of the disk where rank J &lt; 2.</h3>\n"
        f"{html}\n</body></html>\n"
    )


def run(config: Config, context) -> dict:
    points = disk_points(config.disk_grid)
    disk, hue = _scatter_disk(config)
    thetas = [math.radians(a) for a in config.angles_deg]
    results, masks = {}, {}
    for name in context.progress(config.activations, "activations"):
        per_angle = {}
        for angle, theta in zip(config.angles_deg, thetas):
            m = measure(name, theta, points)
            masks.setdefault(name, m.pop("shade"))
            per_angle[f"{angle:g}"] = m
        results[name] = {"theory": theory_fractions(name), "measured": per_angle}

    # the shade of each disk point at the first angle (folded / reversed / neither), for the plot
    context.save_arrays(**{f"shade_{name}": np.searchsorted(SHADES, masks[name]).astype(np.int8)
                           for name in config.activations})
    disk_fraction = len(points) / config.disk_grid**2
    return {
        "activations": results,
        "measurement_points_in_disk": len(points),
        "grid_resolution": 2.0 / (config.disk_grid - 1),
        "disk_area_estimate": 4 * disk_fraction,
    }


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    """The figure and the slider page: the maps φ(Wx) are drawn from their definition, the
    measured fractions come from the JSON and the input shading from grid_warp.npz."""
    results = numbers["activations"]
    points = disk_points(config.disk_grid)
    disk, hue = _scatter_disk(config)
    thetas = [math.radians(a) for a in config.angles_deg]
    masks = {name: SHADES[arrays[f"shade_{name}"]] for name in config.activations}
    n_rows, n_cols = len(config.activations), len(thetas) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.75 * n_cols, 1.75 * n_rows), squeeze=False)
    for row, name in enumerate(config.activations):
        ax = axes[row, 0]
        ax.scatter(points[:, 0], points[:, 1], c=masks[name], cmap="gray", vmin=0, vmax=1,
                   s=0.5, lw=0, rasterized=True)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, color=plotting.color(name), fontsize=9)
        ax.set_title(f"input, θ={config.angles_deg[0]:g}°: rank J<2\nblack, det J<0 grey", fontsize=7)
        for col, (angle, theta) in enumerate(zip(config.angles_deg, thetas), 1):
            m = results[name]["measured"][f"{angle:g}"]
            _draw_image(axes[row, col], name, theta, config, disk, hue)
            title = f"θ={angle:g}°  folded {m['folded']:.3f}"
            if m["orientation_reversed"] > 0:
                title += f"\nreversed {m['orientation_reversed']:.3f}"
            axes[row, col].set_title(title, fontsize=7)
    fig.tight_layout()
    return {"": fig, ".html": _html(config, disk, hue)}
