"""Convex polygons in the plane, many at once: the cells of `geometry.regions.partition`.

A set of R convex polygons is a padded float64 array `vertices` (R, V, 2), counter-clockwise,
and `counts` (R,): polygon r is vertices[r, :counts[r]]. Every operation is vectorised over
the R polygons (NumPy; no per-polygon Python loop), because a partition splits thousands of
cells by each of hundreds of lines.

Affine functions of the plane are rows (a₁, a₂, b): f(c) = a₁c₁ + a₂c₂ + b.
"""

from __future__ import annotations

import numpy as np


def box(c_min, c_max) -> np.ndarray:
    """(4, 2) counter-clockwise corners of the box [c_min₁, c_max₁] × [c_min₂, c_max₂]."""
    (x0, y0), (x1, y1) = c_min, c_max
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def valid(counts: np.ndarray, width: int) -> np.ndarray:
    """(R, width) True where a padded slot holds a vertex."""
    return np.arange(width)[None, :] < counts[:, None]


def evaluate(vertices: np.ndarray, forms: np.ndarray) -> np.ndarray:
    """(R, V, k): k affine forms per polygon (R, k, 3) at its vertices (R, V, 2)."""
    return np.einsum("rvi,rki->rvk", vertices, forms[..., :2]) + forms[:, None, :, 2]


def areas(vertices: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(R,) areas by the shoelace formula (padded slots contribute nothing)."""
    after = following(vertices, counts)
    cross = vertices[..., 0] * after[..., 1] - vertices[..., 1] * after[..., 0]
    return 0.5 * np.where(valid(counts, vertices.shape[1]), cross, 0.0).sum(axis=1)


def centroids(vertices: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(R, 2) centroids (area-weighted; the vertex mean for degenerate polygons)."""
    mask = valid(counts, vertices.shape[1])
    after = following(vertices, counts)
    cross = np.where(mask, vertices[..., 0] * after[..., 1] - vertices[..., 1] * after[..., 0], 0.0)
    area6 = 3.0 * cross.sum(axis=1)
    weighted = ((vertices + after) * cross[..., None]).sum(axis=1)
    mean = np.where(mask[..., None], vertices, 0.0).sum(axis=1) / np.maximum(counts, 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = weighted / area6[:, None]
    return np.where(np.abs(area6)[:, None] > 0, centroid, mean)


def _successor(counts: np.ndarray, width: int) -> np.ndarray:
    """(R, width): the slot of each vertex's successor around its polygon."""
    return (np.arange(width)[None, :] + 1) % np.maximum(counts, 1)[:, None]


def following(vertices: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(R, V, 2): each vertex's successor around its polygon."""
    return np.take_along_axis(vertices, _successor(counts, vertices.shape[1])[..., None], axis=1)


def clip(vertices: np.ndarray, counts: np.ndarray, forms: np.ndarray, tolerance: np.ndarray):
    """The parts of the polygons where forms (R, 3) ≥ 0 (Sutherland–Hodgman against one line each).

    A vertex within `tolerance` (R,) of its line counts as on it: it is kept and no crossing point
    is made next to it, so clipping never makes slivers thinner than the tolerance. Returns
    (vertices (R, V', 2), counts (R,)); a polygon entirely on the negative side gets count 0.
    """
    R, V, _ = vertices.shape
    mask = valid(counts, V)
    value = evaluate(vertices, forms[:, None, :])[..., 0]  # (R, V)
    index = _successor(counts, V)
    after = np.take_along_axis(vertices, index[..., None], axis=1)
    following_value = np.take_along_axis(value, index, axis=1)
    tol = tolerance[:, None]
    inside = mask & (value >= -tol)
    crossing = mask & (((value > tol) & (following_value < -tol)) | ((value < -tol) & (following_value > tol)))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = value / (value - following_value)
    crossing_point = vertices + np.where(crossing, t, 0.0)[..., None] * (after - vertices)
    # slot 2i holds vertex i, slot 2i+1 the crossing on edge (i, i+1): order is kept by a stable sort
    candidates = np.stack([vertices, crossing_point], axis=2).reshape(R, 2 * V, 2)
    keep = np.stack([inside, crossing], axis=2).reshape(R, 2 * V)
    order = np.argsort(~keep, axis=1, kind="stable")
    new_counts = keep.sum(axis=1)
    width = max(int(new_counts.max(initial=0)), 1)
    clipped = np.take_along_axis(candidates, order[:, :width, None], axis=1)
    new_counts = np.where(new_counts >= 3, new_counts, 0)
    return clipped, new_counts


def split_by_argmax(vertices, counts, forms, tolerance, min_area):
    """The cells of each polygon on which each of k affine forms (R, k, 3) is the largest.

    Returns (winner (R,), cells): winner[r] is the form that is largest on all of polygon r
    (convexity: largest at every vertex means largest everywhere), or −1 where the polygon must
    be cut; cells = (parent, choice, vertices, counts), one row per non-empty cell (area >
    min_area) of the polygons that are cut, in parent order then choice order.
    """
    k = forms.shape[1]
    mask = valid(counts, vertices.shape[1])
    tol = tolerance[:, None]
    if k == 2:  # one line: the sign of f₀ − f₁ at the vertices
        difference = evaluate(vertices, (forms[:, :1] - forms[:, 1:]))[..., 0]  # (R, V)
        first = np.all(~mask | (difference >= -tol), axis=1)
        second = np.all(~mask | (difference <= tol), axis=1)
        winner = np.where(first, 0, np.where(second, 1, -1))
    else:
        values = evaluate(vertices, forms)  # (R, V, k)
        margin = values[..., :, None] - values[..., None, :]  # f_i − f_j at each vertex
        wins = np.all(~mask[..., None, None] | (margin >= -tol[..., None, None]), axis=(1, 3))  # (R, k)
        winner = np.where(wins.any(axis=1), np.argmax(wins, axis=1), -1)
    cut = np.flatnonzero(winner < 0)
    parents, choices, cell_vertices, cell_counts = [], [], [], []
    if len(cut):
        sub_vertices, sub_counts, sub_forms, sub_tol = vertices[cut], counts[cut], forms[cut], tolerance[cut]
        for i in range(k):
            cell, cell_count = sub_vertices, sub_counts
            for j in range(k):
                if j != i:
                    cell, cell_count = clip(cell, cell_count, sub_forms[:, i] - sub_forms[:, j], sub_tol)
            keep = areas(cell, cell_count) > min_area[cut]
            parents.append(cut[keep])
            choices.append(np.full(int(keep.sum()), i))
            cell_vertices.append(cell[keep])
            cell_counts.append(cell_count[keep])
        width = max(v.shape[1] for v in cell_vertices)
        cell_vertices = [np.pad(v, ((0, 0), (0, width - v.shape[1]), (0, 0))) for v in cell_vertices]
        parent, choice = np.concatenate(parents), np.concatenate(choices)
        order = np.lexsort((choice, parent))
        cells = (parent[order], choice[order], np.concatenate(cell_vertices)[order], np.concatenate(cell_counts)[order])
        # a polygon whose cells all fell below min_area (a cut within rounding of a vertex) stays whole
        lost = np.setdiff1d(cut, cells[0])
        if len(lost):
            centre = centroids(vertices[lost], counts[lost])
            winner[lost] = np.argmax(evaluate(centre[:, None], forms[lost])[:, 0], axis=1)
    else:
        cells = (np.zeros(0, int), np.zeros(0, int), np.zeros((0,) + vertices.shape[1:]), np.zeros(0, int))
    return winner, cells


def chord(vertices, counts, forms):
    """The segment where each polygon meets the line forms (R, 3) = 0: (R, 2, 2) end points and
    (R,) True where it crosses the polygon's interior (convexity: at most one chord)."""
    R, V, _ = vertices.shape
    mask = valid(counts, V)
    value = evaluate(vertices, forms[:, None, :])[..., 0]
    index = _successor(counts, V)
    after = np.take_along_axis(vertices, index[..., None], axis=1)
    following_value = np.take_along_axis(value, index, axis=1)
    crossing = mask & ((value > 0) != (following_value > 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(crossing, value / (value - following_value), 0.0)
    points = vertices + t[..., None] * (after - vertices)  # (R, V, 2)
    order = np.argsort(~crossing, axis=1, kind="stable")[:, :2]
    ends = np.take_along_axis(points, order[..., None], axis=1)
    hits = crossing.sum(axis=1) >= 2
    return ends, hits & (np.linalg.norm(ends[:, 0] - ends[:, 1], axis=1) > 0)


def contains(vertices, counts, points, tolerance: float = 0.0) -> np.ndarray:
    """(P, R) True where point p lies in (counter-clockwise, convex) polygon r."""
    after = following(vertices, counts)
    edge = after - vertices  # (R, V, 2)
    relative = points[:, None, None, :] - vertices[None]  # (P, R, V, 2)
    cross = edge[None, ..., 0] * relative[..., 1] - edge[None, ..., 1] * relative[..., 0]
    inside = np.where(valid(counts, vertices.shape[1])[None], cross >= -tolerance, True)
    return inside.all(axis=2) & (counts[None] >= 3)


def segment_distances(points, starts, ends) -> np.ndarray:
    """(P, E) Euclidean distances from points (P, 2) to segments starts/ends (E, 2)."""
    direction = ends - starts
    length2 = np.maximum((direction**2).sum(axis=1), 1e-300)
    t = np.clip(((points[:, None] - starts[None]) * direction[None]).sum(-1) / length2, 0.0, 1.0)
    nearest = starts[None] + t[..., None] * direction[None]
    return np.linalg.norm(points[:, None] - nearest, axis=-1)
