"""The principal plane maps are drawn on: float64 PCA reference, round trips, and the Jacobian of
a model restricted to the plane against J_F(x) Uᵀ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import data, jacobians, models, plane


def _anisotropic(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])[:d]
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return ((rng.normal(size=(n, d)) * scales) @ rotation.T + rng.normal(size=d)).astype(np.float32), rotation


def test_pca_plane_matches_a_float64_reference():
    x, _ = _anisotropic()
    p = plane.pca_plane(x)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending
    top = eigenvectors[:, ::-1][:, :2].T  # (2, d)
    np.testing.assert_allclose(p.origin, x.astype(np.float64).mean(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(p.basis * top, axis=1)), 1.0, atol=1e-5)  # same axes up to sign
    np.testing.assert_allclose(p.basis @ p.basis.T, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(p.explained_variance, eigenvalues[::-1][:2] / eigenvalues.sum(), rtol=1e-5)
    assert all(row[np.argmax(np.abs(row))] > 0 for row in p.basis)  # the sign convention
    # the plane's coordinates are the data's scores on the first two components
    np.testing.assert_allclose(p.coordinates(x), centred @ p.basis.T.astype(np.float64), rtol=1e-4, atol=1e-4)


def test_points_and_coordinates_round_trip():
    x, _ = _anisotropic()
    p = plane.pca_plane(x)
    coordinates = data.grid(p.bounds(x), 7)
    np.testing.assert_allclose(p.coordinates(p.points(coordinates)), coordinates, atol=1e-4)
    assert p.grid(p.bounds(x), 7).shape == (49, x.shape[1])
    lo, hi, _, _ = p.bounds(x, margin=0.0)
    assert lo <= p.coordinates(x).min() and hi >= p.coordinates(x).max()


def test_two_dimensional_data_are_drawn_on_their_own_plane():
    x, _ = data.make_dataset("spiral", 300, seed=1)
    p = plane.data_plane(x)
    assert p.is_input_plane and p.axis_labels == ("x₁", "x₂")
    np.testing.assert_array_equal(p.coordinates(x), x)
    np.testing.assert_array_equal(p.grid(p.bounds(x), 5), data.grid(data.bounds_of(x), 5))
    f = lambda z: jnp.tanh(z)  # noqa: E731
    assert p.restrict(f) is f
    assert not plane.data_plane(_anisotropic()[0]).is_input_plane


def test_restricted_jacobian_is_the_jacobian_times_the_basis():
    x, _ = _anisotropic(d=6)
    model = models.MLP(6, 16, depth=2, out_features=3, activation="tanh", rngs=nnx.Rngs(0))
    p = plane.pca_plane(x)
    coordinates = data.grid(p.bounds(x), 4)  # (16, 2)
    on_plane = jacobians.jacobian_field(p.restrict(model.features), coordinates)  # (16, 16, 2)
    full = np.stack([jax.jacfwd(model.features)(jnp.asarray(point)) for point in p.points(coordinates)])  # (16, 16, 6)
    np.testing.assert_allclose(on_plane, full @ p.basis.T, rtol=1e-5, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="fewer than two directions"):
        plane.pca_plane(np.outer(np.arange(10.0), [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="at least 3 points"):
        plane.pca_plane(np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        plane.pca_plane(np.array([[0.0, 1.0, 2.0], [1.0, np.nan, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
