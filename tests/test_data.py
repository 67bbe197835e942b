"""The 2-D datasets: their defining rules, balance, determinism, and bad input."""

import numpy as np
import pytest

from geometry import data


@pytest.mark.parametrize("name", data.DATASETS)
def test_deterministic_balanced_and_typed(name):
    x1, y1 = data.make_dataset(name, 2000, noise=0.05, seed=3)
    x2, y2 = data.make_dataset(name, 2000, noise=0.05, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.dtype == np.float32 and x1.shape == (2000, 2) and y1.dtype == np.int32
    assert set(np.unique(y1)) == {0, 1}
    assert 0.3 < y1.mean() < 0.7  # both classes well represented
    assert not np.array_equal(x1, data.make_dataset(name, 2000, noise=0.05, seed=4)[0])


def test_labelling_rules_without_noise():
    x, y = data.make_dataset("circles", 20_000, seed=0)
    np.testing.assert_array_equal(y, np.linalg.norm(x, axis=1) < 1.5)
    # the radius-1.5 disk holds half the mass of N(0, 1.5²/(2 ln 2) I): P = 1 − exp(−1.5²/(2 s²)) = ½
    assert abs(y.mean() - 0.5) < 4 * np.sqrt(0.25 / 20_000)
    x, y = data.make_dataset("xor", 5000, seed=0)
    np.testing.assert_array_equal(y, x[:, 0] * x[:, 1] > 0)
    x, y = data.make_dataset("linear", 5000, seed=0)
    np.testing.assert_array_equal(y, x[:, 1] > 0.5 * x[:, 0] + 0.2)
    x, y = data.make_dataset("spiral", 1000, seed=0)
    radius = np.linalg.norm(x, axis=1) / 2  # r = t in [0.1, 1]
    theta = np.arctan2(x[:, 1], x[:, 0])
    predicted = 3 * np.pi * radius + np.pi * y
    np.testing.assert_allclose(np.cos(theta - predicted), 1.0, atol=1e-5)


def test_grid_layout():
    g = data.grid((-1, 1, -2, 2), 5)
    assert g.shape == (25, 2)
    np.testing.assert_allclose(g[:5, 0], np.linspace(-1, 1, 5))
    np.testing.assert_allclose(g[::5, 1], np.linspace(-2, 2, 5))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown dataset 'rings'; valid: linear"):
        data.make_dataset("rings")
    with pytest.raises(ValueError, match="size"):
        data.make_dataset("xor", 0)
    with pytest.raises(ValueError, match="noise"):
        data.make_dataset("xor", 10, noise=-1)
