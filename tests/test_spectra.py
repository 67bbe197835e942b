"""Spectral summaries against closed forms and float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geometry import metric, spectra


def test_effective_and_stable_rank_closed_forms(x64):
    for k in (1, 2, 5, 17):
        np.testing.assert_allclose(spectra.effective_rank(np.eye(k)), k, rtol=1e-12)
        np.testing.assert_allclose(spectra.stable_rank(np.eye(k)), k, rtol=1e-12)
    d = np.diag([3.0, 2.0, 1.0])
    p = np.array([3, 2, 1]) / 6
    np.testing.assert_allclose(spectra.effective_rank(d), np.exp(-np.sum(p * np.log(p))), rtol=1e-12)
    np.testing.assert_allclose(spectra.effective_rank(d), 2.7495, atol=5e-5)
    np.testing.assert_allclose(spectra.stable_rank(d), 14 / 9, rtol=1e-12)
    np.testing.assert_allclose(spectra.stable_rank(d), 1.5556, atol=5e-5)


def test_condition_number_and_log_volume(x64):
    d = np.diag([3.0, 2.0, 0.5])
    np.testing.assert_allclose(spectra.condition_number(d), 6.0, rtol=1e-12)
    np.testing.assert_allclose(spectra.log_volume(d), np.log(3.0), rtol=1e-12)
    singular = np.array([[1.0, 2.0], [2.0, 4.0]])
    assert spectra.condition_number(singular) == np.inf
    assert spectra.log_volume(singular) == -np.inf
    assert spectra.numerical_rank(singular) == 1
    zero = np.zeros((3, 2))
    assert spectra.numerical_rank(zero) == 0
    assert spectra.effective_rank(zero) == 0 and spectra.stable_rank(zero) == 0


def test_rank_tolerance_convention(x64):
    # NumPy's matrix_rank default: σ_max · max(m, n) · eps; rtol overrides it
    J = np.diag([1.0, 1e-3, 1e-20])
    assert spectra.numerical_rank(J) == np.linalg.matrix_rank(J) == 2
    assert spectra.numerical_rank(J, rtol=1e-2) == 1
    assert spectra.condition_number(J, rtol=1e-2) == np.inf


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    m=st.integers(1, 7),
    n=st.integers(1, 7),
    rank=st.integers(0, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_against_numpy(batch, m, n, rank, seed):
    import jax

    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        r = min(rank, m, n)
        J = rng.normal(size=(batch, m, r)) @ rng.normal(size=(batch, r, n))  # rank r exactly
        sigma = np.linalg.svd(J, compute_uv=False)
        np.testing.assert_allclose(spectra.singular_values(J), sigma, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(spectra.numerical_rank(J), np.linalg.matrix_rank(J))
        np.testing.assert_array_equal(spectra.numerical_rank(J), r)
        top = sigma[:, 0]
        np.testing.assert_allclose(spectra.stable_rank(J), np.where(top > 0, (sigma**2).sum(1) / np.where(top > 0, top, 1) ** 2, 0),
                                   rtol=1e-10)
        full = r == min(m, n) and r > 0
        expected_cond = sigma[:, 0] / sigma[:, -1] if full else np.full(batch, np.inf)
        np.testing.assert_allclose(spectra.condition_number(J), expected_cond, rtol=1e-8)
        summary = spectra.summary(J)
        np.testing.assert_allclose(summary["condition_number"], expected_cond, rtol=1e-8)
        if m >= n:
            sign, logdet = np.linalg.slogdet(np.swapaxes(J, 1, 2) @ J)
            expected = np.where(full, 0.5 * logdet, -np.inf)
            np.testing.assert_allclose(spectra.log_volume(J), expected, rtol=1e-8)
            np.testing.assert_allclose(summary["log_volume"], expected, rtol=1e-8)


def test_pullback_metric_eigenvalues_are_squared_singular_values(x64):
    rng = np.random.default_rng(0)
    J = rng.normal(size=(5, 7, 3))
    g = metric.pullback_metric(J)
    np.testing.assert_allclose(g, np.einsum("bki,bkj->bij", J, J), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(g)[:, ::-1], np.linalg.svd(J, compute_uv=False) ** 2, rtol=1e-10)


def test_metric_ellipse_of_known_metric(x64):
    angle = 0.3
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    g = R @ np.diag([9.0, 0.25]) @ R.T
    semi_axes, major = metric.metric_ellipse(g)
    np.testing.assert_allclose(semi_axes, [3.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(np.mod(major, np.pi), angle, rtol=1e-10)
    with pytest.raises(ValueError, match=r"metric_ellipse: argument g is f64\[3,3\].*shape \(\*batch 2 2\)"):
        metric.metric_ellipse(np.eye(3))


def test_distance_distortion_of_a_scaling(x64):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    np.testing.assert_allclose(metric.distance_distortion(lambda v: 2.5 * v, x, y), 2.5, rtol=1e-12)


def test_pairwise_distances_against_numpy(x64):
    X = np.random.default_rng(2).normal(size=(30, 4))
    expected = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(metric.pairwise_distances(X), expected, rtol=1e-10, atol=1e-12)


def test_knn_agreement_limits(x64):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    assert metric.knn_agreement(X, 2.0 * X @ Q.T + 1.0, k=10) == 1.0  # similarity transforms preserve neighbours
    # independent random representation: overlap ≈ k / (N − 1) (hypergeometric mean)
    Y = rng.normal(size=(200, 3))
    assert abs(metric.knn_agreement(X, Y, k=10) - 10 / 199) < 0.03
    with pytest.raises(ValueError, match="0 < k"):
        metric.knn_agreement(X, Y, k=200)


def test_spearman_against_pearson_of_ranks_and_ties():
    rng = np.random.default_rng(4)
    a = rng.normal(size=500)
    b = a + 0.5 * rng.normal(size=500)
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties: plain ranks
    np.testing.assert_allclose(metric.spearman(a, b), np.corrcoef(ranks_a, ranks_b)[0, 1], rtol=1e-12)
    assert metric.spearman(a, np.exp(a)) == pytest.approx(1.0)  # monotone maps: ρ = 1
    # ties take mean ranks: [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]
    np.testing.assert_allclose(metric._average_ranks(np.array([1.0, 2.0, 2.0, 3.0])), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(metric.spearman([1, 2, 2, 3], [1, 2, 3, 4]),
                               np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1], rtol=1e-12)
    assert metric.distance_rank_correlation(a[:50, None], 3 * a[:50, None]) == pytest.approx(1.0)


def test_chained_ranks_of_ill_conditioned_products(x64):
    rng = np.random.default_rng(5)
    # well-conditioned case: equals the rank of the explicit product
    mats = [rng.normal(size=(6, 4)), rng.normal(size=(3, 6)) @ np.diag([1, 1, 1, 0, 0, 1.0]), rng.normal(size=(5, 3))]
    product, expected = np.eye(4), []
    for m in mats:
        product = m @ product
        expected.append(np.linalg.matrix_rank(product))
    np.testing.assert_array_equal([int(r) for r in spectra.chained_ranks(mats)], expected)
    # 60 layers each scaling one direction by 1e-1: the product's condition number is 1e60,
    # beyond float64, yet every factor is invertible, so the true rank stays 3
    layers = []
    for _ in range(60):
        q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        layers.append(q @ np.diag([1.0, 1.0, 0.1]))
    explicit = np.eye(3)
    for m in layers:
        explicit = m @ explicit
    assert np.linalg.matrix_rank(explicit) < 3  # the naive route loses rank numerically
    assert [int(r) for r in spectra.chained_ranks(layers)] == [3] * 60
    # batched over a leading axis
    batch = [np.stack([m, 2 * m]) for m in mats]
    np.testing.assert_array_equal(np.stack(spectra.chained_ranks(batch))[:, 0], expected)


@pytest.mark.parametrize("refine", [0, 16])
@pytest.mark.parametrize("shape", [(48, 64), (64, 48)])  # Gram side (m ≤ n) and metric side (m > n)
def test_dense_layer_singular_values_equal_svd(x64, shape, refine):
    rng = np.random.default_rng(5)
    weight = rng.standard_normal(shape) / np.sqrt(shape[1])
    derivatives = 1.0 - np.tanh(rng.standard_normal((37, shape[0]))) ** 2  # tanh' at random pre-activations
    got = metric.dense_layer_singular_values(jnp.asarray(weight), jnp.asarray(derivatives), refine=refine,
                                             chunk_size=8)
    expected = np.linalg.svd(derivatives[:, :, None] * weight[None], compute_uv=False)  # float64 SVD of D W
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def _float32_error(weight, derivatives, refine):
    """Largest |σ − σ_float64_svd| / σ_max of the float32 metric route."""
    got = np.asarray(metric.dense_layer_singular_values(jnp.asarray(weight, jnp.float32),
                                                        jnp.asarray(derivatives, jnp.float32), refine=refine))
    expected = np.linalg.svd(derivatives[:, :, None] * weight[None], compute_uv=False)
    large = expected > 0.1 * expected[:, :1]
    np.testing.assert_allclose(got[large], expected[large], rtol=1e-5)  # squaring is harmless up there
    return np.max(np.abs(got - expected) / expected[:, :1])


def test_dense_layer_singular_values_float32_refined_bottom():
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((128, 128)) / np.sqrt(128)  # square: σ_min ≈ σ_max / 512
    derivatives = 1.0 - np.tanh(rng.standard_normal((16, 128))) ** 2
    # squaring alone: ~eps σ_max² / σ at the bottom (1.1e-4 σ_max here); the Rayleigh–Ritz step
    # recomputes the 16 smallest values from Jᵀ V without squaring (6.9e-7 here; float32 SVD: 6.4e-7)
    assert 3e-5 < _float32_error(weight, derivatives, refine=0) < 1e-3
    assert _float32_error(weight, derivatives, refine=16) < 2e-6


def test_dense_layer_singular_values_float32_dead_units():
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((64, 96)) / np.sqrt(96)
    derivatives = (rng.standard_normal((16, 64)) > 0).astype(np.float64)  # ReLU': 30–38 dead units per input
    # as many exact zeros as dead units: a refine below that count leaves √(eps) σ_max-sized zeros (4.7e-4)
    assert _float32_error(weight, derivatives, refine=16) > 1e-4
    # refined: ≤ 7.4e-6 at 15 of the 16 inputs; 2.2e-5 at an exact zero of one input on some x86 CPUs
    # (float32 rounding of the tridiagonalisation differs between instruction sets), 1e-5 on others
    assert _float32_error(weight, derivatives, refine=48) < 5e-5
    # a dead layer (J = 0): the inverse iteration meets an all-zero tridiagonal matrix and must not divide by 0
    dead = metric.dense_layer_singular_values(jnp.asarray(weight, jnp.float32), jnp.zeros((2, 64), jnp.float32))
    np.testing.assert_array_equal(dead, np.zeros((2, 64)))


def test_dense_layer_singular_values_errors():
    with pytest.raises(ValueError, match="derivatives must have shape"):
        metric.dense_layer_singular_values(jnp.ones((5, 4)), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="refine must be >= 0"):
        metric.dense_layer_singular_values(jnp.ones((5, 4)), jnp.ones((3, 5)), refine=-1)


def _tridiagonalise(matrix):
    """(packed, taus, diagonal, off_diagonal, the dense tridiagonal T) of jax's reduction A = Q T Qᵀ."""
    packed, diagonal, off_diagonal, taus = jax.lax.linalg.tridiagonal(jnp.asarray(matrix), lower=True)
    dense = np.diag(diagonal) + np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1)
    return packed, taus, diagonal, off_diagonal, dense


@pytest.mark.parametrize("size, block", [(37, 8), (64, 16), (5, 16)])  # ragged last block; block > size
def test_apply_tridiagonal_q_reconstructs(x64, size, block):
    rng = np.random.default_rng(size)
    matrix = rng.standard_normal((size, size))
    matrix = matrix + matrix.T
    packed, taus, _, _, tridiagonal = _tridiagonalise(matrix)
    q = np.asarray(metric.apply_tridiagonal_q(packed, taus, jnp.eye(size), block=block))
    np.testing.assert_allclose(q.T @ q, np.eye(size), atol=1e-13)
    np.testing.assert_allclose(q @ tridiagonal @ q.T, matrix, atol=1e-12)


def test_tridiagonal_bottom_eigenvectors_span_a_cluster(x64):
    rng = np.random.default_rng(8)
    basis = np.linalg.qr(rng.standard_normal((40, 40)))[0]
    eigenvalues = np.concatenate([np.zeros(6), np.linspace(1.0, 5.0, 34)])  # a 6-fold zero cluster
    matrix = basis @ np.diag(eigenvalues) @ basis.T
    _, _, diagonal, off_diagonal, tridiagonal = _tridiagonalise(matrix)
    shifts = np.sort(np.linalg.eigvalsh(tridiagonal))[:8]  # the cluster and the next two
    vectors = np.asarray(metric.tridiagonal_bottom_eigenvectors(diagonal, off_diagonal, jnp.asarray(shifts)))
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(vectors.T @ tridiagonal @ vectors), shifts, atol=1e-12)


def _explicit_chain(weights, derivatives):
    """Σ log σ of D_L W_L ⋯ D_1 W_1 at each input by a float64 SVD of the product."""
    values = []
    for row in range(derivatives[0].shape[0]):
        J = np.eye(weights[0].shape[1])
        for w, d in zip(weights, derivatives):
            J = d[row][:, None] * w @ J
        values.append(np.sum(np.log(np.linalg.svd(J, compute_uv=False))))
    return np.array(values)


@pytest.mark.parametrize("sizes", [(24, 12, 12, 12), (12, 12, 12, 20), (10, 10, 10), (7, 15), (15, 7)])
def test_chain_log_volume_equals_the_svd_of_the_product(sizes):
    """Wide first layer, tall last layer, all square, and one layer either way: the split over the
    layers against a float64 SVD of the explicit product (rtol 1e-10); each layer's share against
    its own factor's SVD."""
    rng = np.random.default_rng(7)
    weights = [rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
    derivatives = [1 - np.tanh(2 * rng.normal(size=(9, b))) ** 2 for b in sizes[1:]]
    result = metric.chain_log_volume(weights, derivatives)
    np.testing.assert_allclose(result["values"], _explicit_chain(weights, derivatives), rtol=1e-10)
    np.testing.assert_allclose(result["per_layer"].sum(axis=1), result["values"], rtol=1e-14)
    if sizes[0] >= sizes[-1]:  # every factor has r outputs: each share is that factor's own log volume
        for i, (w, d) in enumerate(zip(weights, derivatives)):
            own = np.log(np.linalg.svd(d[:, :, None] * w[None], compute_uv=False)).sum(axis=1)
            np.testing.assert_allclose(result["per_layer"][:, i], own, rtol=1e-10)
    assert np.all(result["rounding"] < 1e-11 * np.abs(result["values"]).max())


def test_chain_log_volume_layouts_float32_and_refusals():
    rng = np.random.default_rng(8)
    weights = [rng.normal(size=(6, 9)) / 3, rng.normal(size=(6, 6)) / np.sqrt(6)]
    derivatives = [rng.uniform(0.1, 1, size=(4, 6)), rng.uniform(0.1, 1, size=(4, 6))]
    truth = _explicit_chain(weights, derivatives)
    kernels = [w.T for w in weights]  # Flax's (in, out)
    np.testing.assert_allclose(metric.chain_log_volume(kernels, derivatives, layout="in_out")["values"], truth, rtol=1e-10)
    as_float32 = metric.chain_log_volume([w.astype(np.float32) for w in weights],
                                         [d.astype(np.float32) for d in derivatives])["values"]
    np.testing.assert_allclose(as_float32, truth, rtol=1e-5)  # only the inputs' rounding: the work is float64
    dead = [derivatives[0].copy(), derivatives[1]]
    dead[0][1, 3] = 0.0  # a dead unit: J is singular there
    values = metric.chain_log_volume(weights, dead)["values"]
    assert values[1] == -np.inf and np.all(np.isfinite(values[[0, 2, 3]]))
    with pytest.raises(ValueError, match="every inner width equals min"):
        metric.chain_log_volume([rng.normal(size=(4, 9)), rng.normal(size=(6, 4))],
                                [np.ones((2, 4)), np.ones((2, 6))])  # 9 → 4 → 6: rank 4 < min(9, 6)
    with pytest.raises(ValueError, match=r"derivatives\[1\] must have shape \(N, 6\)"):
        metric.chain_log_volume(weights, [derivatives[0], derivatives[1][:, :5]])
    with pytest.raises(ValueError, match=r"weights\[1\] takes 5 inputs but layer 0 gives 6"):
        metric.chain_log_volume([weights[0], rng.normal(size=(6, 5))], derivatives)
    with pytest.raises(ValueError, match=r"derivatives\[0\] holds NaN"):
        metric.chain_log_volume(weights, [np.full((4, 6), np.nan), derivatives[1]])
    with pytest.raises(ValueError, match="one per layer"):
        metric.chain_log_volume(weights, derivatives[:1])
