"""geometry.ssl's losses against hand-written float64 formulas (values and gradients), the EMA target,
`fit`, and geometry.augment's views against exact NumPy operations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import models, ssl, training
from geometry.augment import ImageAugment, cutout, warp


def _cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def info_nce_reference(z1, z2, tau):
    z = np.concatenate([z1, z2])
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        positive = (i + n2 // 2) % n2
        others = [np.exp(_cos(z[i], z[k]) / tau) for k in range(n2) if k != i]
        total += -np.log(np.exp(_cos(z[i], z[positive]) / tau) / sum(others))
    return total / n2


def vicreg_reference(z1, z2, lam, mu, nu):
    n, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
    variance = covariance = 0.0
    for z in (z1, z2):
        c = np.cov(z.T)
        variance += np.mean([max(0.0, 1 - np.sqrt(c[j, j] + 1e-4)) for j in range(d)]) / 2
        covariance += sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return lam * invariance + mu * variance + nu * covariance


def byol_reference(p1, p2, t1, t2):
    return np.mean([2 - 2 * _cos(p1[i], t2[i]) + 2 - 2 * _cos(p2[i], t1[i]) for i in range(len(p1))])


def simsiam_reference(p1, p2, z1, z2):
    return np.mean([-_cos(p1[i], z2[i]) / 2 - _cos(p2[i], z1[i]) / 2 for i in range(len(p1))])


def alignment_reference(z1, z2):
    return np.mean(np.sum((z1 - z2) ** 2, axis=1))


def _numerical_gradient(f, arrays, index, h=1e-6):
    """Central differences of f(*arrays) in argument `index`, float64."""
    x = arrays[index]
    grad = np.zeros_like(x)
    for position in np.ndindex(x.shape):
        plus, minus = [a.copy() for a in arrays], [a.copy() for a in arrays]
        plus[index][position] += h
        minus[index][position] -= h
        grad[position] = (f(*plus) - f(*minus)) / (2 * h)
    return grad


CASES = [
    ("info_nce", lambda a, b: ssl.info_nce(a, b, 0.3), lambda a, b: info_nce_reference(a, b, 0.3), 2, (0, 1)),
    ("vicreg", lambda a, b: ssl.vicreg(a, b, 25.0, 25.0, 1.0), lambda a, b: vicreg_reference(a, b, 25, 25, 1), 2,
     (0, 1)),
    ("alignment", ssl.alignment, alignment_reference, 2, (0, 1)),
    ("byol", ssl.byol, byol_reference, 4, (0, 1)),
    ("simsiam", ssl.simsiam, simsiam_reference, 4, (0, 1)),
    ("simsiam_no_stop_gradient", lambda p1, p2, z1, z2: ssl.simsiam(p1, p2, z1, z2, stop_gradient=False),
     simsiam_reference, 4, (0, 1, 2, 3)),
]


@pytest.mark.parametrize("name, loss, reference, arity, differentiable", CASES, ids=[c[0] for c in CASES])
def test_loss_values_and_gradients(x64, name, loss, reference, arity, differentiable):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(6, 4)) for _ in range(arity)]
    np.testing.assert_allclose(float(loss(*map(jnp.asarray, arrays))), reference(*arrays), rtol=1e-12)
    grads = jax.grad(lambda *a: loss(*a), argnums=tuple(range(arity)))(*map(jnp.asarray, arrays))
    for index in range(arity):
        if index in differentiable:  # central differences of the hand-written formula: error O(h²) ≈ 1e-10
            np.testing.assert_allclose(grads[index], _numerical_gradient(reference, arrays, index), atol=1e-7,
                                       err_msg=f"{name}: gradient in argument {index}")
        else:  # the stop-gradient side: no gradient at all
            np.testing.assert_array_equal(grads[index], 0.0, err_msg=f"{name}: argument {index} is stop-gradient")


def test_vicreg_terms_are_the_weighted_parts(x64):
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    terms = ssl.vicreg_terms(jnp.asarray(z1), jnp.asarray(z2))
    np.testing.assert_allclose(float(terms["invariance"]), vicreg_reference(z1, z2, 1, 0, 0), rtol=1e-12)
    np.testing.assert_allclose(float(terms["variance"]), vicreg_reference(z1, z2, 0, 1, 0), rtol=1e-12)
    np.testing.assert_allclose(float(terms["covariance"]), vicreg_reference(z1, z2, 0, 0, 1), rtol=1e-12)


def _siamese(method: str, seed: int = 0) -> ssl.Siamese:
    rngs = nnx.Rngs(seed)
    encoder = models.MLP(64, 16, depth=1, out_features=8, activation="relu", rngs=rngs)
    projector = models.MLP(8, 8, depth=1, out_features=8, activation="relu", rngs=rngs)
    predictor = models.MLP(8, 8, depth=1, out_features=8, activation="relu", rngs=rngs) \
        if method in ("byol", "simsiam", "simsiam_no_stop_gradient") else None
    return ssl.Siamese(encoder, projector, predictor, ema=0.9 if method == "byol" else None)


def _flat(state) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(state)])


def test_byol_target_moves_only_by_the_ema():
    model = _siamese("byol")
    x = np.random.default_rng(2).random((32, 64)).astype(np.float32)
    target_before = _flat(nnx.state(model.target_encoder, nnx.Param))
    config = training.TrainConfig(steps=1, learning_rate=1e-2, batch_size=None, log_every=1)
    ssl.fit(model, x, ssl.SSLLoss("byol"), config, ImageAugment(1.0), log=lambda line: None)
    online_after = _flat(nnx.state(model.encoder, nnx.Param))
    target_after = _flat(nnx.state(model.target_encoder, nnx.Param))
    assert not np.allclose(online_after, target_before)  # the online encoder took a step
    np.testing.assert_allclose(target_after, 0.9 * target_before + 0.1 * online_after, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["simclr", "byol", "simsiam_no_stop_gradient"])
def test_fit_is_a_function_of_the_seed(method):
    x = np.random.default_rng(3).random((40, 64)).astype(np.float32)
    config = training.TrainConfig(steps=4, learning_rate=1e-3, batch_size=16, log_every=2, seed=5)
    finals = []
    for _ in range(2):
        model = _siamese(method)
        out = ssl.fit(model, x, ssl.SSLLoss(method), config, ImageAugment(0.5), measure=lambda m: 1.0,
                      measure_at=(0, 4), log=lambda line: None)
        assert [h["step"] for h in out["history"]] == [2, 4] and sorted(out["measurements"]) == [0, 4]
        finals.append(_flat(nnx.state(model)))
    np.testing.assert_array_equal(finals[0], finals[1])


def test_refusals():
    with pytest.raises(ValueError, match="unknown self-supervised method 'barlow'"):
        ssl.SSLLoss("barlow")
    x = np.random.default_rng(4).random((8, 64)).astype(np.float32)
    config = training.TrainConfig(steps=1, batch_size=4)
    with pytest.raises(ValueError, match="needs a predictor"):
        ssl.fit(_siamese("simclr"), x, ssl.SSLLoss("simsiam"), config, ImageAugment())
    with pytest.raises(ValueError, match="needs an EMA target"):
        ssl.fit(_siamese("simsiam"), x, ssl.SSLLoss("byol"), config, ImageAugment())
    with pytest.raises(TypeError, match="Siamese"):
        ssl.fit(models.MLP(64, 8, depth=1, out_features=8, rngs=nnx.Rngs(0)), x, ssl.SSLLoss("simclr"), config,
                ImageAugment())
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        ssl.fit(_siamese("simclr"), x, ssl.SSLLoss("simclr"), training.TrainConfig(steps=1, batch_size=1),
                ImageAugment())
    with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
        ssl.fit(_siamese("simclr"), np.where(np.arange(8)[:, None] == 3, np.nan, x), ssl.SSLLoss("simclr"), config,
                ImageAugment())
    with pytest.raises(ValueError, match="strength must be finite and >= 0"):
        ImageAugment(-1.0)


def test_warp_rotates_and_shifts_exactly():
    image = np.random.default_rng(5).random((8, 8)).astype(np.float32)
    rotated = np.asarray(warp(jnp.asarray(image), jnp.float32(np.pi / 2), jnp.zeros(2, jnp.float32)))
    np.testing.assert_allclose(rotated, np.rot90(image, 1), atol=1e-5)  # cos(π/2) in float32 is 4e-8, not 0
    shifted = np.asarray(warp(jnp.asarray(image), jnp.float32(0.0), jnp.array([1.0, -2.0], jnp.float32)))
    expected = np.zeros_like(image)
    expected[1:, :-2] = image[:-1, 2:]
    np.testing.assert_array_equal(shifted, expected)
    half = np.asarray(warp(jnp.asarray(image), jnp.float32(0.0), jnp.array([0.0, 0.5], jnp.float32)))
    np.testing.assert_allclose(half[:, 1:], (image[:, 1:] + image[:, :-1]) / 2, rtol=1e-6)  # bilinear


def test_cutout_zeroes_one_square():
    image = jnp.ones((8, 8), jnp.float32)
    out = np.asarray(cutout(image, jnp.array([2, 5]), 3))
    expected = np.ones((8, 8), np.float32)
    expected[2:5, 5:8] = 0
    np.testing.assert_array_equal(out, expected)


def test_augment_views():
    x = jnp.asarray(np.random.default_rng(6).random((120, 64)), jnp.float32)
    key = jax.random.key(0)
    np.testing.assert_array_equal(ImageAugment(0.0)(key, x), x)
    views = np.asarray(ImageAugment(1.0)(key, x))
    np.testing.assert_array_equal(views, ImageAugment(1.0)(key, x))  # deterministic given the key
    assert not np.array_equal(views, ImageAugment(1.0)(jax.random.key(1), x))
    # row i depends only on (key, i): the first 10 rows are the same views alone
    np.testing.assert_array_equal(views[:10], ImageAugment(1.0)(key, x[:10]))
    # noise only: the residual's standard deviation is σ = 0.1 · 2 (3% for 7680 samples: 3.7 standard errors)
    noisy = np.asarray(ImageAugment(2.0, max_rotation_degrees=0, max_shift=0, cutout=0)(key, x))
    np.testing.assert_allclose(np.std(noisy - np.asarray(x)), 0.2, rtol=0.03)
    # cut-out only: exactly round(2 · 1.5) = 3² pixels set to 0 in each image (the images have no zeros)
    cut = np.asarray(ImageAugment(1.5, max_rotation_degrees=0, max_shift=0, noise=0)(key, x + 1))
    assert np.all(np.sum(cut == 0, axis=1) == 9)
    square = ImageAugment(1.0)(key, x.reshape(120, 8, 8, 1))
    assert square.shape == (120, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(square).reshape(120, 64), views)
    with pytest.raises(ValueError, match="image_shape"):
        ImageAugment(1.0)(key, jnp.ones((3, 50), jnp.float32))
