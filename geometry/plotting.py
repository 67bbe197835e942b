"""One house style for every figure, and atomic, reproducible PNG + PDF output."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # figures are files; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from geometry.io import atomic_write  # noqa: E402

DPI = 150

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "lines.linewidth": 1.4,
    "image.cmap": "viridis",
    "svg.hashsalt": "layer-geometry",
}

# one colour per activation, the same in every figure
ACTIVATION_COLORS = {
    "identity": "#4d4d4d",
    "none": "#4d4d4d",
    "relu": "#d62728",
    "leaky_relu": "#ff7f0e",
    "sigmoid": "#9467bd",
    "tanh": "#1f77b4",
    "gelu": "#2ca02c",
    "silu": "#17becf",
    "softplus": "#8c564b",
    "elu": "#e377c2",
}

# no dates or software versions in the files: the same numbers give the same bytes
_PNG_METADATA = {"Software": None}
_PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


def use_style() -> None:
    plt.rcParams.update(STYLE)


def color(name: str) -> str:
    if name.startswith("leaky_relu"):
        name = "leaky_relu"
    return ACTIVATION_COLORS.get(name, "#333333")


def animation_html(anim, name: str, **kwargs) -> str:
    """`anim.to_jshtml(**kwargs)` with matplotlib's random element id (a uuid4 per call)
    replaced by one derived from `name`, so the same frames give the same bytes."""
    html = anim.to_jshtml(**kwargs)
    element_ids = set(re.findall(r"_anim_\w*?([0-9a-f]{32})", html))
    stable = hashlib.sha256(name.encode()).hexdigest()[:32]
    for element_id in element_ids:
        html = html.replace(element_id, stable)
    return html


def save_figure(fig, stem: str | os.PathLike, *, formats=("png", "pdf")) -> list[Path]:
    """Write fig as STEM.png (150 dpi) and STEM.pdf atomically; returns the paths."""
    stem = Path(stem)
    paths = []
    for fmt in formats:
        buffer = io.BytesIO()
        metadata = _PNG_METADATA if fmt == "png" else _PDF_METADATA
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata)
        paths.append(atomic_write(stem.with_suffix(f".{fmt}"), buffer.getvalue()))
    plt.close(fig)
    return paths


# Arrays kept beside the JSON for drawing only (an experiment's NAME.npz) are stored at the precision
# a figure resolves, so the files stay small: a colour map has 256 entries, and a level-0 contour
# reads only the grid cells it crosses.

def quantise(values) -> dict:
    """{"codes": uint8, "low", "high"}: finite values as 255 levels over [low, high] (code 255: not
    finite). `dequantise` gives back level centres; imshow of those with vmin=low, vmax=high picks
    the colour-map entry of the original value, up to one entry of 256."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    span = high - low if high > low else 1.0
    codes = np.where(finite, np.clip(np.floor((np.where(finite, values, low) - low) / span * 255), 0, 254), 255)
    return {"codes": codes.astype(np.uint8), "low": low, "high": high}


def dequantise(codes, low: float, high: float) -> np.ndarray:
    """float32 level centres of `quantise`'s codes (NaN where the value was not finite)."""
    codes = np.asarray(codes)
    span = high - low if high > low else 1.0
    values = low + (codes.astype(np.float64) + 0.5) / 255 * span
    return np.where(codes == 255, np.nan, np.minimum(values, high)).astype(np.float32)


def contour_support(values, shape: tuple[int, int]) -> np.ndarray:
    """`values` (on a grid of `shape`) with every point outside the grid cells the level-0 contour
    crosses replaced by ±1 (its sign): the level-0 contour is unchanged, and the array compresses
    to almost nothing."""
    grid = np.asarray(values, dtype=np.float32).reshape(shape)
    positive = grid > 0
    corners = (positive[:-1, :-1], positive[1:, :-1], positive[:-1, 1:], positive[1:, 1:])
    crossed = np.logical_or.reduce(corners) & ~np.logical_and.reduce(corners)  # cells with corners on both sides
    keep = np.zeros(shape, dtype=bool)
    for di in (0, 1):
        for dj in (0, 1):
            keep[di : di + shape[0] - 1, dj : dj + shape[1] - 1] |= crossed
    return np.where(keep, grid, np.where(positive, 1.0, -1.0)).astype(np.float32).reshape(np.shape(values))
