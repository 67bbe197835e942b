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


def _reference_gram(X, kernel):
    if kernel == "linear":
        return X @ X.T
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    sigma = np.sqrt(np.median(d2[~np.eye(len(X), dtype=bool)]))
    return np.exp(-d2 / (2 * sigma**2))


def _reference_cka(X, Y, kernel, debiased):
    K, L = _reference_gram(X, kernel), _reference_gram(Y, kernel)
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
    with pytest.raises(ValueError, match=r"argument Y is f64\[4,2\].*shape \(N q\), with N=5"):
        similarity.cka(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 4 examples"):
        similarity.cka(np.ones((3, 2)), np.ones((3, 2)), debiased=True)
    with pytest.raises(ValueError, match="NaN"):
        similarity.cka(np.full((5, 2), np.nan), np.ones((5, 2)))
    with pytest.raises(ValueError, match="unknown kernel"):
        similarity.cka(np.ones((5, 2)), np.ones((5, 2)), kernel="cosine")
