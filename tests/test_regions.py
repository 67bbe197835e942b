"""Exact linear regions (`geometry.regions.partition`) against hand-solvable nets, jax.jacfwd,
the model's own forward pass and sign-pattern grids."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import data, models, plane, regions


def _tangent_lines(k: int, spread: float = 0.8):
    """k lines tangent to the unit circle at angles in [0, spread·π): every pair meets inside
    |c| ≤ 1/cos(spread·π/2), no three at one point."""
    angles = np.linspace(0.0, spread * np.pi, k, endpoint=False) + 0.1
    normals = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return normals.astype(np.float32), -np.ones(k, np.float32)


def test_one_relu_unit_gives_two_regions_split_by_its_line():
    w, b = np.array([1.0, 2.0], np.float32), np.float32(0.5)
    result = regions.partition(lambda x: jax.nn.relu(x @ w + b), (-1, 1))
    assert len(result) == 2
    active = result.patterns[:, 0] == 0
    # the part of [−1, 1]² with x₁ + 2x₂ + 0.5 ≥ 0: integrate the clipped height per x₁ (float64)
    x1 = np.linspace(-1, 1, 200001)
    height = np.clip(1 - np.clip((-0.5 - x1) / 2, -1, 1), 0, 2)
    np.testing.assert_allclose(result.areas[active][0], np.trapezoid(height, x1), rtol=1e-8)
    np.testing.assert_allclose(result.areas.sum(), 4.0, rtol=1e-12)
    # the active region's map is the unit itself, the inactive one's is zero
    np.testing.assert_allclose(result.maps[active][0, 0], [1.0, 2.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(result.maps[~active][0, 0], [0.0, 0.0, 0.0], atol=0)
    # distance to the boundary is the distance to the line, |w·x + b| / |w|
    points = np.array([[0.3, 0.2], [-0.9, -0.8], [0.5, -0.5]])
    np.testing.assert_allclose(result.distance_to_boundary(points), np.abs(points @ w + b) / np.linalg.norm(w), rtol=1e-6)
    assert result.crossings((-1, -1), (1, 1)) == 2 and result.crossings((-1, 1), (-0.9, 1)) == 1


@pytest.mark.parametrize("k", [1, 5, 12])
def test_an_arrangement_of_k_lines_has_the_general_position_count(k):
    normals, offsets = _tangent_lines(k)
    result = regions.partition(lambda x: jax.nn.relu(normals @ x + offsets), (-4, 4))
    assert len(result) == 1 + k + k * (k - 1) // 2
    np.testing.assert_allclose(result.areas.sum(), 64.0, rtol=1e-12)
    assert result.density() == pytest.approx(len(result) / 64.0)
    # a square meets 1 + (lines crossing it) + (crossings of two lines inside it) regions (Euler)
    rng = np.random.default_rng(k)
    centres, radius = rng.uniform(-3.5, 3.5, (30, 2)), 0.4
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    meets = [np.linalg.solve(normals[[i, j]].astype(np.float64), -offsets[[i, j]].astype(np.float64)) for i, j in pairs]
    for centre, found in zip(centres, result.regions_near(centres, radius)):
        corners = centre + radius * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
        sides = np.sign(corners @ normals.T.astype(np.float64) + offsets)
        crossing = int((sides.min(axis=0) != sides.max(axis=0)).sum())
        inside = sum(bool(np.all(np.abs(m - centre) < radius)) for m in meets)
        assert found == 1 + crossing + inside
    # a segment meets each line at most once: 1 + the number of lines its ends are on both sides of
    for start, end in [((-4, -3.9), (4, 3.7)), ((-4, 4), (3.5, -4)), ((0, -4), (0.1, 4))]:
        sides = np.sign(normals @ np.array([start, end], np.float32).T + offsets[:, None])
        assert result.crossings(start, end) == 1 + int((sides[:, 0] != sides[:, 1]).sum())


class ResidualNet(nnx.Module):
    """Written the way NNX model zoos write blocks: a stem, residual blocks with leaky relu, a
    concatenation of two branches and a readout."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.stem = nnx.Linear(2, width, rngs=rngs)
        self.block1 = nnx.Linear(width, width, rngs=rngs)
        self.block2 = nnx.Linear(width, width, rngs=rngs)
        self.left = nnx.Linear(width, 4, rngs=rngs)
        self.right = nnx.Linear(width, 4, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.stem(x))
        h = h + nnx.leaky_relu(self.block1(h), 0.1)
        h = h + jnp.abs(self.block2(h))
        both = jnp.concatenate([nnx.relu(self.left(h)), jnp.clip(self.right(h), -1.0, 1.0)], axis=-1)
        return self.head(both)


class ScannedStack(nnx.Module):
    """Depth-stacked layers created with nnx.vmap and applied with nnx.scan, as scan-over-layers
    models are written."""

    def __init__(self, width: int, depth: int, *, rngs: nnx.Rngs):
        self.stem = nnx.Linear(2, width, rngs=rngs)

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return nnx.Linear(width, width, rngs=rngs)

        self.layers = make(rngs)
        self.head = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(h, layer):
            return nnx.relu(layer(h))

        return self.head(step(nnx.relu(self.stem(x)), self.layers))


class PooledCNN(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), padding="VALID", rngs=rngs)
        self.head = nnx.Linear(3 * 3 * 4, 10, rngs=rngs)

    def __call__(self, x):
        h = nnx.max_pool(nnx.relu(self.conv(x[None])), (2, 2), strides=(2, 2))
        return self.head(h.reshape(-1))


def _models():
    yield "mlp", models.MLP(2, 12, depth=3, out_features=2, activation="relu", sigma_b2=0.1, rngs=nnx.Rngs(0)), None, None
    yield "residual", ResidualNet(8, rngs=nnx.Rngs(1)), None, None
    yield "scan", ScannedStack(8, 3, rngs=nnx.Rngs(2)), None, None
    digits, _ = data.load_digits()
    yield "cnn", PooledCNN(rngs=nnx.Rngs(3)), plane.pca_plane(digits[:300]), (8, 8, 1)


@pytest.mark.parametrize("name", ["mlp", "residual", "scan", "cnn"])
def test_affine_maps_are_the_jacobian_and_value_inside_every_region(name):
    _, model, slice_plane, input_shape = next(m for m in _models() if m[0] == name)
    window = (-2, 2) if slice_plane is None else (-6, 6)
    result = regions.partition(model, window, slice_plane, input_shape=input_shape)
    assert len(result) > 3
    np.testing.assert_allclose(result.areas.sum(), 16.0 if slice_plane is None else 144.0, rtol=1e-9)
    assert result.verify(samples=3) < 1e-4
    graphdef, state = nnx.split(model)

    @jax.jit
    def merged_at(state, c):  # written out by hand: the input the plane point is, through the merged model
        x = c if slice_plane is None else (jnp.asarray(slice_plane.origin) + c @ jnp.asarray(slice_plane.basis))
        return nnx.merge(graphdef, state)(x if input_shape is None else x.reshape(input_shape))

    def on_plane(c):
        return merged_at(state, c)
    centres = result.centroids[:40].astype(np.float32)
    expected = np.stack([np.asarray(jax.jacfwd(on_plane)(c)).reshape(-1, 2) for c in centres])
    np.testing.assert_allclose(result.jacobians[:40], expected, rtol=1e-4, atol=1e-5)
    values = np.stack([np.asarray(on_plane(c)).reshape(-1) for c in centres])
    np.testing.assert_allclose(np.einsum("rmi,ri->rm", result.jacobians[:40], centres) + result.maps[:40, :, 2],
                               values, rtol=1e-4, atol=1e-4)


def test_regions_tile_the_window_and_each_has_one_pattern():
    model = models.MLP(2, 10, depth=3, out_features=2, activation="leaky_relu", sigma_b2=0.2, rngs=nnx.Rngs(4))
    result = regions.partition(model, (-3, 3))
    points = np.random.default_rng(0).uniform(-3, 3, (2000, 2))
    inside = np.array([[True]])  # every sample is in exactly one region (away from the boundaries)
    from geometry import polygons
    inside = polygons.contains(result.vertices, result.counts, points)
    assert np.all(inside.sum(axis=1) == 1)
    assert len(np.unique(result.patterns, axis=0)) == len(result)
    assert np.all(result.areas > 0)


def _grid_count(model, resolution: int, window: float) -> int:
    """Distinct activation patterns of a relu MLP on a resolution² grid, by its own forward pass
    (pre-activations written out in benchmarks.regions, not through the library)."""
    from benchmarks.regions import _grid_patterns

    return _grid_patterns(model, resolution, window)


def test_sign_pattern_grids_count_no_more_than_the_exact_partition_and_reach_it():
    for depth, resolutions in ((1, (32, 256, 1024)), (3, (64, 256, 1024))):
        model = models.MLP(2, 10, depth=depth, out_features=None, activation="relu", sigma_b2=0.3, rngs=nnx.Rngs(5))
        result = regions.partition(model, (-3, 3))
        counts = [_grid_count(model, n, 3.0) for n in resolutions]
        assert counts == sorted(counts) and counts[-1] <= len(result)
        # the grid sees exactly the regions that hold one of its points; the others are smaller than its cells
        axis = np.linspace(-3, 3, resolutions[-1])
        hit = np.unique(result.region_of(np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)))
        assert counts[-1] == len(hit) and hit.min() >= 0
        missed = np.setdiff1d(np.arange(len(result)), hit)
        assert np.all(result.areas[missed] < 2 * (6 / (resolutions[-1] - 1)) ** 2)
        assert len(missed) <= 0.05 * len(result)


def test_decision_boundary_is_where_the_top_two_outputs_tie():
    model = models.MLP(2, 10, depth=2, out_features=3, activation="relu", sigma_b2=0.2, rngs=nnx.Rngs(7))
    result = regions.partition(model, (-3, 3))
    segments, classes = result.decision_boundary()
    assert len(segments) > 0
    points = np.concatenate([segments.mean(axis=1), segments[:, 0] * 0.9 + segments[:, 1] * 0.1])
    pairs = np.concatenate([classes, classes])
    logits = np.asarray(model(jnp.asarray(points, jnp.float32)))
    tie = np.take_along_axis(logits, pairs, axis=1)
    np.testing.assert_allclose(tie[:, 0], tie[:, 1], atol=1e-4)
    assert np.all(tie[:, 0] >= np.max(logits, axis=1) - 1e-4)
    # and the grid's class changes lie near the segments
    axis = np.linspace(-3, 3, 241)
    grid = np.stack(np.meshgrid(axis, axis), -1)
    label = np.argmax(np.asarray(model(jnp.asarray(grid, jnp.float32))), axis=-1)
    change = (label[:, 1:] != label[:, :-1])
    between = (grid[:, 1:] + grid[:, :-1])[change] / 2
    from geometry import polygons
    near = polygons.segment_distances(between, segments[:, 0], segments[:, 1]).min(axis=1)
    assert near.max() < 6 / 240


def test_float64_forms_verify_to_1e9(x64):
    model = models.MLP(2, 8, depth=3, out_features=2, activation="relu", sigma_b2=0.1, rngs=nnx.Rngs(8))
    result = regions.partition(model, (-2, 2), dtype="float64")
    assert result.verify() < 1e-9
    single = regions.partition(model, (-2, 2))
    assert len(single) == len(result)


def test_per_region_geometry_is_the_svd_of_the_map():
    model = models.MLP(2, 6, depth=2, out_features=4, activation="relu", sigma_b2=0.1, rngs=nnx.Rngs(9))
    result = regions.partition(model, (-2, 2))
    for r in range(len(result)):
        sigma = np.linalg.svd(result.jacobians[r].astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(result.singular_values[r], sigma, rtol=1e-12)
        assert result.ranks[r] == int((sigma > 4 * np.finfo(np.float32).eps * sigma[0]).sum())
        if result.ranks[r] == 2:
            half = 0.5 * np.linalg.slogdet(result.jacobians[r].T @ result.jacobians[r])[1]
            np.testing.assert_allclose(result.half_log_det[r], half, rtol=1e-9, atol=1e-9)
        else:
            assert result.half_log_det[r] == -np.inf


@pytest.mark.parametrize("make, named", [
    (lambda: models.MLP(2, 4, depth=1, out_features=2, activation="tanh", rngs=nnx.Rngs(0)), "tanh"),
    (lambda: models.MLP(2, 4, depth=1, out_features=2, activation="relu", norm="layernorm", rngs=nnx.Rngs(0)), "`"),
    (lambda: (lambda x: x[0] * x[1]), "mul"),
])
def test_a_smooth_model_is_refused_by_name(make, named):
    with pytest.raises(ValueError, match=f"not piecewise linear.*{named}"):
        regions.partition(make(), (-1, 1))


@pytest.mark.parametrize("window", [(1, -1), ((0, 0), (1, math.nan)), ((0, 0, 0), (1, 1, 1))])
def test_a_bad_window_is_refused(window):
    with pytest.raises(ValueError, match="window must be"):
        regions.partition(lambda x: jax.nn.relu(x), window)


def test_too_many_regions_is_an_error_not_an_out_of_memory():
    normals, offsets = _tangent_lines(30)
    with pytest.raises(ValueError, match="max_regions=100"):
        regions.partition(lambda x: jax.nn.relu(normals @ x + offsets), (-4, 4), max_regions=100)
