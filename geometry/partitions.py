"""The exact partition of a window of a 2-D slice into linear regions, and the questions asked of it.

`geometry.regions.partition` builds a `Partition`; this module holds the type and its queries:
areas, centroids, each region's affine map and its Jacobian's singular values, ½ log det, σ_min
and rank; which region holds a point; region density in a box; regions near points; crossings of
a segment; distance to the nearest boundary; the decision boundary; `verify()` against the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from geometry import plane as plane_module
from geometry import polygons, validation


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """The exact partition of a window of a 2-D slice into linear regions (`len()`: their count).

    vertices (R, V, 2) padded, counts (R,): region r is vertices[r, :counts[r]] (`polygons`).
    patterns (R, G): each switch's choice; `switches` says which operation each column belongs to.
    maps (R, m, 3): the output (flattened, m values) on region r is maps[r, :, :2] @ c + maps[r, :, 2].
    """

    vertices: np.ndarray
    counts: np.ndarray
    patterns: np.ndarray
    maps: np.ndarray
    switches: tuple
    window: tuple
    plane: plane_module.Plane
    output_shape: tuple
    _model: Any = dataclasses.field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def polygons(self) -> list[np.ndarray]:
        return [v[:n] for v, n in zip(self.vertices, self.counts)]

    @property
    def areas(self) -> np.ndarray:
        return polygons.areas(self.vertices, self.counts)

    @property
    def centroids(self) -> np.ndarray:
        return polygons.centroids(self.vertices, self.counts)

    @property
    def jacobians(self) -> np.ndarray:
        """(R, m, 2): A, the Jacobian of the output along the plane, per region."""
        return self.maps[..., :2]

    @property
    def singular_values(self) -> np.ndarray:
        """(R, min(m, 2)) singular values of A, largest first."""
        return np.linalg.svd(self.jacobians, compute_uv=False)

    @property
    def half_log_det(self) -> np.ndarray:
        """(R,) ½ log det(AᵀA) = Σ log σᵢ, the log area scale of the plane's image; −inf where the
        numerical rank (`ranks`) is below 2, the plane being folded flat there."""
        if self.maps.shape[1] < 2:
            return np.full(len(self), -np.inf)
        with np.errstate(divide="ignore"):
            return np.where(self.ranks == 2, np.log(self.singular_values).sum(axis=1), -np.inf)

    @property
    def sigma_min(self) -> np.ndarray:
        return self.singular_values[:, -1]

    @property
    def ranks(self) -> np.ndarray:
        """(R,) numerical rank of A: σ > max(m, 2) · eps · σ_max, eps the forms' dtype (float32 unless float64)."""
        sigma = self.singular_values
        eps = np.finfo(np.float64 if self._model and self._model.float64 else np.float32).eps
        return (sigma > max(self.maps.shape[1], 2) * eps * sigma[:, :1]).sum(axis=1)

    def region_of(self, points) -> np.ndarray:
        """(P,) index of the region holding each plane point (P, 2); −1 outside the window.

        Found by the model's own activation pattern at each point (one forward pass per point),
        matched to the regions' patterns; a point on a boundary may go to either side."""
        points = _plane_points(points)
        (x0, y0), (x1, y1) = self.window
        inside = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
        found = np.full(len(points), -1)
        if not inside.any():
            return found
        patterns = self._model.patterns(points[inside]).astype(self.patterns.dtype)
        keys = np.ascontiguousarray(self.patterns).view(np.dtype((np.void, self.patterns.shape[1] * self.patterns.itemsize)))[:, 0]
        order = np.argsort(keys)
        wanted = np.ascontiguousarray(patterns).view(keys.dtype)[:, 0]
        position = np.clip(np.searchsorted(keys[order], wanted), 0, len(keys) - 1)
        match = np.where(keys[order][position] == wanted, order[position], -1)
        # a pattern the partition does not hold (a point within rounding of a boundary): by geometry
        missing = np.flatnonzero(match < 0)
        if len(missing):
            held = polygons.contains(self.vertices, self.counts, points[inside][missing], tolerance=1e-9)
            match[missing] = np.where(held.any(axis=1), np.argmax(held, axis=1), -1)
        found[inside] = match
        return found

    def density(self, window=None) -> float:
        """Regions per unit area of the plane meeting `window` ((c_min, c_max); default the partition's)."""
        box = window_box(window) if window is not None else self.window
        area = (box[1][0] - box[0][0]) * (box[1][1] - box[0][1])
        return _count_in_box(self.vertices, self.counts, box) / area

    def regions_near(self, points, radius: float) -> np.ndarray:
        """(P,) number of regions meeting the square of half-side `radius` around each plane point
        (P, 2), clipped to the window: the local complexity of Humayun, Balestriero & Baraniuk
        (arXiv 2402.15555) on the slice, with a square neighbourhood."""
        radius = validation.number("radius", radius, low=0, low_open=True)
        points = _plane_points(points)
        (x0, y0), (x1, y1) = self.window
        mask = polygons.valid(self.counts, self.vertices.shape[1])[..., None]
        low = np.where(mask, self.vertices, np.inf).min(axis=1)  # (R, 2) bounding boxes
        high = np.where(mask, self.vertices, -np.inf).max(axis=1)
        counts = np.zeros(len(points), int)
        for i, (px, py) in enumerate(points):
            box = ((max(px - radius, x0), max(py - radius, y0)), (min(px + radius, x1), min(py + radius, y1)))
            if box[1][0] <= box[0][0] or box[1][1] <= box[0][1]:
                continue
            near = np.flatnonzero(np.all((high > np.array(box[0])) & (low < np.array(box[1])), axis=1))
            counts[i] = _count_in_box(self.vertices[near], self.counts[near], box)
        return counts

    def crossings(self, start, end) -> int:
        """Number of regions the segment start → end (plane coordinates) passes through."""
        return int(self._segment_pieces(start, end).sum())

    def _segment_pieces(self, start, end) -> np.ndarray:
        start, end = (validation.finite_array(name, value, ndim=1) for name, value in (("start", start), ("end", end)))
        if start.shape != (2,) or end.shape != (2,):
            raise ValueError(f"start and end must be plane points of shape (2,), got {start.shape} and {end.shape}")
        edge_start = self.vertices
        edge = polygons.following(self.vertices, self.counts) - edge_start  # (R, V, 2)
        # inside a counter-clockwise cell: cross(edge, p − v) ≥ 0 for every edge; along p(t) that is
        # cross(edge, start − v) + t cross(edge, end − start) ≥ 0
        offset = edge[..., 0] * (start[1] - edge_start[..., 1]) - edge[..., 1] * (start[0] - edge_start[..., 0])
        slope = edge[..., 0] * (end - start)[1] - edge[..., 1] * (end - start)[0]
        mask = polygons.valid(self.counts, self.vertices.shape[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = -offset / slope
        low = np.where(mask & (slope > 0), bound, -np.inf).max(axis=1, initial=0.0)
        high = np.where(mask & (slope < 0), bound, np.inf).min(axis=1, initial=1.0)
        parallel_outside = (mask & (slope == 0) & (offset < 0)).any(axis=1)
        return (high - low > 1e-12) & ~parallel_outside

    def distance_to_boundary(self, points) -> np.ndarray:
        """(P,) plane distance from each point to the nearest region boundary inside the window
        (edges on the window's border are not boundaries; inf for a region with none, nan outside).
        With an orthonormal plane this is the input-space distance within the slice."""
        points = _plane_points(points)
        region = self.region_of(points)
        following = polygons.following(self.vertices, self.counts)
        (x0, y0), (x1, y1) = self.window
        scale = 1e-9 * max(x1 - x0, y1 - y0)
        on_border = np.zeros(self.vertices.shape[:2], bool)
        for axis, value in ((0, x0), (0, x1), (1, y0), (1, y1)):
            on_border |= (np.abs(self.vertices[..., axis] - value) < scale) & (np.abs(following[..., axis] - value) < scale)
        result = np.full(len(points), np.nan)
        for r in np.unique(region[region >= 0]):
            edges = polygons.valid(self.counts[r:r + 1], self.vertices.shape[1])[0] & ~on_border[r]
            at = region == r
            if not edges.any():
                result[at] = np.inf
                continue
            result[at] = polygons.segment_distances(points[at], self.vertices[r][edges], following[r][edges]).min(axis=1)
        return result

    def decision_boundary(self) -> tuple[np.ndarray, np.ndarray]:
        """(segments (S, 2, 2), classes (S, 2)): the exact decision boundary in plane coordinates.
        One output: where it is 0 (classes 0 | 1 for negative | positive); m outputs: where the two
        largest are equal (argmax changes from classes[s, 0] to classes[s, 1])."""
        maps, m = self.maps, self.maps.shape[1]
        pairs = [(0, 1)] if m == 1 else [(i, j) for i in range(m) for j in range(i + 1, m)]
        segments, classes = [], []
        for i, j in pairs:
            form = maps[:, 0] if m == 1 else maps[:, i] - maps[:, j]
            ends, hits = polygons.chord(self.vertices, self.counts, form)
            low, high = np.zeros(len(self)), np.ones(len(self))
            for other in ([] if m == 1 else [k for k in range(m) if k not in (i, j)]):
                margin = maps[:, i] - maps[:, other]  # f_i − f_k along the chord, affine in t
                at_start = np.einsum("ri,ri->r", ends[:, 0], margin[:, :2]) + margin[:, 2]
                at_end = np.einsum("ri,ri->r", ends[:, 1], margin[:, :2]) + margin[:, 2]
                slope = at_end - at_start
                with np.errstate(divide="ignore", invalid="ignore"):
                    root = -at_start / slope
                low = np.where(slope > 0, np.maximum(low, root), low)
                high = np.where(slope < 0, np.minimum(high, root), high)
                high = np.where((slope == 0) & (at_start < 0), -1.0, high)
            keep = hits & (high - low > 1e-12)
            piece = ends[:, :1] + np.stack([low, high], axis=1)[..., None] * (ends[:, 1:] - ends[:, :1])
            segments.append(piece[keep])
            classes.append(np.tile([i, j], (int(keep.sum()), 1)))
        return np.concatenate(segments), np.concatenate(classes)

    def verify(self, samples: int = 4, seed: int = 0) -> float:
        """Check the model's own forward pass against each region's affine map at `samples` random
        points inside every region; returns the largest |difference| relative to the output's scale,
        ValueError naming the region when it exceeds the forms' precision (1e-4 float32, 1e-9 float64)."""
        rng = np.random.default_rng(seed)
        weights = rng.dirichlet(np.ones(self.vertices.shape[1]), size=(len(self), samples))  # (R, S, V)
        weights *= polygons.valid(self.counts, self.vertices.shape[1])[:, None, :]
        weights /= weights.sum(axis=2, keepdims=True)
        points = np.einsum("rsv,rvi->rsi", weights, self.vertices)  # (R, S, 2)
        predicted = np.einsum("rsi,rmi->rsm", points, self.maps[..., :2]) + self.maps[:, None, :, 2]
        actual = self._model.outputs(points.reshape(-1, 2)).reshape(predicted.shape)
        scale = max(1.0, float(np.abs(actual).max(initial=0.0)))
        error = np.abs(actual - predicted).max(axis=(1, 2)) / scale
        limit = 1e-9 if self._model.float64 else 1e-4
        worst = int(np.argmax(error)) if len(error) else 0
        if len(error) and error[worst] > limit:
            raise ValueError(f"region {worst} (pattern {self.patterns[worst].tolist()[:16]}...): the model's "
                             f"forward pass differs from the region's affine map by {error[worst]:.2e} of the "
                             f"output scale (limit {limit:g}); the partition is wrong there")
        return float(error.max(initial=0.0))


def _count_in_box(vertices, counts, box) -> int:
    """How many of the polygons meet the box ((x0, y0), (x1, y1)) with positive area."""
    (x0, y0), (x1, y1) = box
    tolerance = np.zeros(len(counts))
    for form in ((1, 0, -x0), (-1, 0, x1), (0, 1, -y0), (0, -1, y1)):
        vertices, counts = polygons.clip(vertices, counts, np.broadcast_to(np.array(form, np.float64), (len(counts), 3)),
                                         tolerance)
    return int((polygons.areas(vertices, counts) > 1e-12 * (x1 - x0) * (y1 - y0)).sum())


def _plane_points(points) -> np.ndarray:
    """(P, 2) finite plane points (a single (2,) point included), or a ValueError naming the problem."""
    points = validation.finite_array("points", points, min_ndim=1)
    if points.shape[-1] != 2:
        raise ValueError(f"points must be plane coordinates of shape (P, 2), got {points.shape}")
    return points.reshape(-1, 2)


def window_box(window) -> tuple[tuple[float, float], tuple[float, float]]:
    """((x0, y0), (x1, y1)) of a window (c_min, c_max) (scalars for a square); ValueError unless finite and c_max > c_min."""
    low, high = window
    low = (float(low), float(low)) if np.ndim(low) == 0 else tuple(float(v) for v in low)
    high = (float(high), float(high)) if np.ndim(high) == 0 else tuple(float(v) for v in high)
    if len(low) != 2 or len(high) != 2 or not all(np.isfinite(low + high)) or not (high[0] > low[0] and high[1] > low[1]):
        raise ValueError(f"window must be (c_min, c_max) with finite c_max > c_min in both plane coordinates "
                         f"(scalars for a square), got {window!r}")
    return low, high
