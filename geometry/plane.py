"""A 2-D plane through input space, for drawing maps of models whose inputs are not 2-D.

Decision regions, ½ log det g, σ_min and linear-region maps need a plane of inputs. For 2-D
data that is the input plane itself; for d-dimensional data (`data.load_digits`, a user's CSV)
`data_plane` takes the plane through the data mean spanned by the first two principal
components (float64 SVD of the centred data), the plane that keeps the most of the data's
variance. A point with plane coordinates c = (c₁, c₂) is x = origin + c₁ u₁ + c₂ u₂.

What a map on the plane measures: for a model F, `restrict(F)` is c ↦ F(origin + c Uᵀ), so
its Jacobian is J_F(x) Uᵀ (width × 2) and its pullback metric is U J_Fᵀ J_F Uᵀ, the metric F
induces on the plane. For 2-D data (U = I, origin 0) this is the usual map of F, unchanged.

    plane = data_plane(x_train)
    coordinates = data.grid(plane.bounds(x_train), 200)                # (G², 2)
    J = jacobian_field(plane.restrict(model.features), coordinates)    # (G², width, 2)
    logits = model(plane.points(coordinates))                          # inputs (G², d)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from geometry import data
from geometry.shapes import AnyArray, Shaped, shape_checked


@dataclasses.dataclass(frozen=True, eq=False)
class Plane:
    """origin (d,) and orthonormal basis rows (2, d); `explained_variance`: the fraction of the data's
    variance along each axis (None for the input plane of 2-D data)."""

    origin: np.ndarray
    basis: np.ndarray
    explained_variance: tuple[float, float] | None = None

    @property
    def is_input_plane(self) -> bool:
        """True when the plane is the 2-D input space itself (points equal their coordinates)."""
        return self.basis.shape == (2, 2) and self.explained_variance is None

    @property
    def axis_labels(self) -> tuple[str, str]:
        return ("x₁", "x₂") if self.is_input_plane else principal_axis_labels(self.explained_variance)

    def coordinates(self, x: np.ndarray) -> np.ndarray:
        """(N, 2) plane coordinates of the orthogonal projections of x (N, d) onto the plane."""
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if self.is_input_plane:
            return x
        return ((x - self.origin) @ self.basis.T).astype(np.float32)

    def points(self, coordinates: np.ndarray) -> np.ndarray:
        """(N, d) inputs at plane coordinates (N, 2)."""
        coordinates = np.asarray(coordinates, dtype=np.float32)
        if self.is_input_plane:
            return coordinates
        return (self.origin + coordinates @ self.basis).astype(np.float32)

    def bounds(self, x: np.ndarray, margin: float = 0.3) -> tuple[float, float, float, float]:
        """A square box around the projected data with a margin (`data.bounds_of` on the plane)."""
        return data.bounds_of(self.coordinates(x), margin)

    def grid(self, bounds, resolution: int) -> np.ndarray:
        """(resolution², d) inputs on the plane at `data.grid(bounds, resolution)`'s coordinates."""
        return self.points(data.grid(bounds, resolution))

    def restrict(self, f):
        """c ↦ f(origin + c Uᵀ): f on the plane, a function of (..., 2) coordinates (f itself for the
        input plane of 2-D data, so its maps keep their numbers)."""
        if self.is_input_plane:
            return f
        origin, basis = jnp.asarray(self.origin), jnp.asarray(self.basis)
        return lambda coordinates: f(origin + coordinates @ basis)


def principal_axis_labels(explained_variance) -> tuple[str, ...]:
    """("PC1 (12% of variance)", ...): the labels of a principal plane's axes."""
    return tuple(f"PC{i + 1} ({100 * v:.0f}% of variance)" for i, v in enumerate(explained_variance))


def input_plane() -> Plane:
    return Plane(np.zeros(2, np.float32), np.eye(2, dtype=np.float32))


@shape_checked
def pca_plane(x: Shaped[AnyArray, "N *features"]) -> Plane:
    """The plane through the mean of x (N, ...) spanned by its first two principal components."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if len(x) < 3 or x.shape[1] < 2:
        raise ValueError(f"a principal plane needs at least 3 points of dimension >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or inf; a principal plane needs finite data")
    mean = x.mean(axis=0)
    _, singular_values, components = np.linalg.svd(x - mean, full_matrices=False)
    variance = singular_values**2
    if variance[1] <= 1e-12 * variance.sum():
        raise ValueError("the data vary along fewer than two directions: no principal plane to draw on")
    # a sign convention, so the plane does not flip between runs: each axis's largest entry is positive
    signs = np.sign(components[:2, np.argmax(np.abs(components[:2]), axis=1)].diagonal())
    basis = components[:2] * signs[:, None]
    explained = tuple(float(v) for v in variance[:2] / variance.sum())
    return Plane(mean.astype(np.float32), basis.astype(np.float32), explained)


@shape_checked
def data_plane(x: Shaped[AnyArray, "N *features"]) -> Plane:
    """The plane maps of a model on x are drawn in: the input plane itself for 2-D data, otherwise
    `pca_plane(x)`."""
    x = np.asarray(x)
    return input_plane() if x.reshape(len(x), -1).shape[1] == 2 else pca_plane(x)
