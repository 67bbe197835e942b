"""CKA against an independent float64 NumPy implementation of Kornblith et al. (2019),
and its invariances."""

import numpy as np
import pytest

from geometry import similarity


def _reference_hsic(K, L, debiased):
    n = len(K)
    if not debiased:
        H = np.eye(n) - np.ones((n, n)) / n
        return np.trace(K @ H @ L @ H) / (n - 1) ** 2
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ Kt @ Lt @ one)) / (n * (n - 3))


def _reference_gram(X, kernel, sigma_convention="kornblith"):
    if kernel == "linear":
        return X @ X.T
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    # Kornblith et al.: the median of the whole n × n squared-distance matrix, zero diagonal included
    median = np.median(d2) if sigma_convention == "kornblith" else np.median(d2[~np.eye(len(X), dtype=bool)])
    return np.exp(-d2 / (2 * median))


def _reference_cka(X, Y, kernel, debiased, sigma_convention="kornblith"):
    K, L = _reference_gram(X, kernel, sigma_convention), _reference_gram(Y, kernel, sigma_convention)
    return _reference_hsic(K, L, debiased) / np.sqrt(_reference_hsic(K, K, debiased) * _reference_hsic(L, L, debiased))


@pytest.mark.parametrize("kernel", similarity.KERNELS)
@pytest.mark.parametrize("debiased", [False, True])
def test_matches_numpy_reference_and_invariances(kernel, debiased, x64):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 7))
    Y = np.tanh(X @ rng.normal(size=(7, 5))) + 0.3 * rng.normal(size=(60, 5))
    value = similarity.cka(X, Y, kernel, debiased)
    np.testing.assert_allclose(value, _reference_cka(X, Y, kernel, debiased), rtol=1e-10)
    np.testing.assert_allclose(similarity.cka(X, X, kernel, debiased), 1.0, rtol=1e-12)
    Q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    np.testing.assert_allclose(similarity.cka(X, 3.7 * Y @ Q, kernel, debiased), value, rtol=1e-10)
    np.testing.assert_allclose(similarity.cka(0.2 * X, Y, kernel, debiased), value, rtol=1e-10)


def test_rbf_bandwidth_conventions_differ_as_documented():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(200, 5)), rng.normal(size=(200, 5)) + rng.normal(size=(200, 1))
    kornblith = similarity.cka(X, Y, "rbf")
    off_diagonal = similarity.cka(X, Y, "rbf", sigma_convention="off_diagonal")
    np.testing.assert_allclose(kornblith, _reference_cka(X, Y, "rbf", False), rtol=1e-10)
    np.testing.assert_allclose(off_diagonal, _reference_cka(X, Y, "rbf", False, "off_diagonal"), rtol=1e-10)
    assert 1e-5 < abs(kornblith - off_diagonal) < 1e-2  # the two medians differ by the n zero diagonal entries
    with pytest.raises(ValueError, match="unknown sigma_convention"):
        similarity.cka(X, Y, "rbf", sigma_convention="median")


def test_float64_whatever_the_input_dtype_and_scale():
    """Issue 20: self-CKA was 0 for features <~ 3e-6 (float32 underflow) and cka(Xi, Xi.astype(float))
    was -0.007 for integer features; debiased RBF CKA near 0 carried ~12% relative error in float32."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, 8))
    for scale in (3e-6, 1e-30, 1e-150, 1e6, 1e150):
        for kernel in similarity.KERNELS:
            for debiased in (False, True):
                np.testing.assert_allclose(similarity.cka(scale * X, scale * X, kernel, debiased), 1.0, rtol=1e-12)
    Xi = rng.integers(-5, 6, size=(50, 4))
    np.testing.assert_allclose(similarity.cka(Xi, Xi.astype(float)), 1.0, rtol=1e-12)
    X32, Y32 = X.astype(np.float32), rng.normal(size=(100, 8)).astype(np.float32)
    reference = _reference_cka(X32.astype(np.float64), Y32.astype(np.float64), "rbf", True)
    assert abs(reference) < 0.05  # independent: near 0, where float32 rounding used to dominate
    np.testing.assert_allclose(similarity.cka(X32, Y32, "rbf", True), reference, rtol=1e-9)


def test_constant_representation_is_refused():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="Y is constant across the 10 examples"):
        similarity.cka(rng.normal(size=(10, 3)), np.full((10, 3), 2.5))
    with pytest.raises(ValueError, match="median squared distance"):
        similarity.cka(np.repeat(rng.normal(size=(2, 3)), [9, 1], axis=0), rng.normal(size=(10, 3)), "rbf")


@pytest.mark.parametrize("debiased", [False, True])
def test_permutation_test_matches_a_loop_over_shuffled_pairings(debiased):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(40, 5))
    Y_dependent = X @ rng.normal(size=(5, 3)) + 0.5 * rng.normal(size=(40, 3))
    Y_independent = rng.normal(size=(40, 3))
    for Y in (Y_dependent, Y_independent):
        result = similarity.cka_permutation_test(X, Y, "linear", debiased, permutations=200, seed=7)
        order_rng = np.random.default_rng(7)
        null = np.array([similarity.cka(X, Y[order_rng.permutation(40)], "linear", debiased) for _ in range(200)])
        np.testing.assert_allclose(result["cka"], similarity.cka(X, Y, "linear", debiased), rtol=1e-12)
        np.testing.assert_allclose([result["null_mean"], result["null_std"]], [null.mean(), null.std()], rtol=1e-9)
        assert result["p_value"] == (1 + np.sum(null >= result["cka"] - 1e-12)) / 201
    assert similarity.cka_permutation_test(X, Y_dependent, permutations=200)["p_value"] == 1 / 201
    with pytest.raises(ValueError, match="permutations must be a positive integer"):
        similarity.cka_permutation_test(X, Y_dependent, permutations=0)


def test_permutation_p_values_are_calibrated_under_independence():
    """Under the null (independent X, Y) the p-value is uniform: P(p <= 0.1) ~ 0.1."""
    rng = np.random.default_rng(8)
    p_values = [similarity.cka_permutation_test(rng.normal(size=(20, 3)), rng.normal(size=(20, 2)),
                                                permutations=99, seed=i)["p_value"] for i in range(200)]
    fraction = np.mean(np.array(p_values) <= 0.1)
    assert 0.05 < fraction < 0.16  # binomial(200, 0.1): mean 0.1, sd 0.021


def test_linear_cka_closed_form(x64):
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(40, 6)), rng.normal(size=(40, 3))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    expected = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    np.testing.assert_allclose(similarity.cka(X, Y), expected, rtol=1e-12)
    np.testing.assert_allclose(similarity.cka(X + 5.0, Y), expected, rtol=1e-10)  # translation invariant


def test_debiased_cka_of_independent_features_is_near_zero(x64):
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(400, 100)), rng.normal(size=(400, 100))
    biased, debiased = similarity.cka(X, Y), similarity.cka(X, Y, debiased=True)
    assert biased > 0.15  # the biased estimator's offset ~ p/(p + n) for independent Gaussian features
    assert abs(debiased) < 0.02


def test_bad_input():
    with pytest.raises(ValueError, match=r"argument Y is f64\[4,2\].*shape \(N \.\.\.\), with N=5"):
        similarity.cka(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 4 examples"):
        similarity.cka(np.ones((3, 2)), np.ones((3, 2)), debiased=True)
    with pytest.raises(ValueError, match="NaN"):
        similarity.cka(np.full((5, 2), np.nan), np.ones((5, 2)))
    with pytest.raises(ValueError, match="unknown kernel"):
        similarity.cka(np.ones((5, 2)), np.ones((5, 2)), kernel="cosine")


def test_cka_matrix_is_cka_between_every_pair():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 5))
    reps = [x, np.tanh(x @ rng.normal(size=(5, 8))), rng.normal(size=(40, 3))]
    for kernel, debiased in (("linear", False), ("rbf", True)):
        matrix = similarity.cka_matrix(reps, kernel, debiased)
        expected = np.array([[similarity.cka(a, b, kernel, debiased) for b in reps] for a in reps])
        np.testing.assert_array_equal(matrix, expected)
        np.testing.assert_allclose(matrix, matrix.T, rtol=0, atol=1e-12)  # CKA is symmetric
        np.testing.assert_allclose(np.diag(matrix), 1.0, rtol=1e-12)  # a representation with itself
    with pytest.raises(ValueError, match="at least one"):
        similarity.cka_matrix([])
