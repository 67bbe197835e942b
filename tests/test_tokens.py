"""Token-collapse measures against closed cases and float64 references written out by hand."""

import numpy as np
import pytest

from geometry import tokens


def _composite_by_loops(M):
    rows, cols = M.shape
    column_sums = [sum(abs(M[i, j]) for i in range(rows)) for j in range(cols)]
    row_sums = [sum(abs(M[i, j]) for j in range(cols)) for i in range(rows)]
    return np.sqrt(max(column_sums) * max(row_sums))


def test_identical_tokens_are_collapsed_in_every_measure():
    X = np.tile(np.array([1.0, -2.0, 0.5]), (5, 1))  # five copies of one token
    for norm in tokens.NORMS:
        for center in tokens.CENTERS:
            assert tokens.residual(X, norm, center) == 0.0
            assert tokens.relative_residual(X, norm, center) == 0.0
    np.testing.assert_allclose(tokens.mean_pairwise_cosine(X), 1.0, rtol=1e-12)
    ranks = tokens.token_ranks(X)
    assert ranks["rank"] == 1 and ranks["centred_rank"] == 0
    np.testing.assert_allclose(ranks["effective_rank"], 1.0, rtol=1e-12)
    assert ranks["centred_effective_rank"] == 0.0


def test_orthogonal_tokens_have_cosine_zero_and_full_rank():
    X = np.eye(4, 6) * np.array([[1.0], [2.0], [3.0], [0.5]])
    np.testing.assert_allclose(tokens.mean_pairwise_cosine(X), 0.0, atol=1e-15)
    ranks = tokens.token_ranks(X)
    assert ranks["rank"] == 4 and ranks["centred_rank"] == 3  # centring removes one direction
    sigma = np.array([3.0, 2.0, 1.0, 0.5])
    p = sigma / sigma.sum()
    np.testing.assert_allclose(ranks["effective_rank"], np.exp(-np.sum(p * np.log(p))), rtol=1e-12)


def test_norms_and_centres_against_references():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 5))
    np.testing.assert_allclose(tokens.matrix_norm(X), _composite_by_loops(X), rtol=1e-12)
    mean_res = X - X.mean(axis=0)
    np.testing.assert_allclose(tokens.residual(X), _composite_by_loops(mean_res), rtol=1e-12)
    np.testing.assert_allclose(tokens.residual(X, "frobenius"), np.sqrt(np.sum(mean_res**2)), rtol=1e-12)
    np.testing.assert_allclose(tokens.relative_residual(X, "frobenius"),
                               np.sqrt(np.sum(mean_res**2)) / np.sqrt(np.sum(X**2)), rtol=1e-12)
    # the mean minimises the Frobenius residual, the median the largest column sum ‖·‖₁
    median = np.median(X, axis=0)
    for _ in range(200):
        x = median + rng.normal(scale=0.3, size=5)
        assert np.sqrt(np.sum((X - X.mean(axis=0)) ** 2)) <= np.sqrt(np.sum((X - x) ** 2)) + 1e-12
        assert np.abs(X - median).sum(axis=0).max() <= np.abs(X - x).sum(axis=0).max() + 1e-12
    best = tokens.residual(X, center="best")
    assert best == min(tokens.residual(X, center="mean"), tokens.residual(X, center="median"))


def test_batched_equals_one_at_a_time():
    X = np.random.default_rng(1).normal(size=(3, 2, 6, 4))
    for measure in (tokens.relative_residual, tokens.mean_pairwise_cosine):
        batched = measure(X)
        assert batched.shape == (3, 2)
        for i in range(3):
            for j in range(2):
                np.testing.assert_allclose(batched[i, j], measure(X[i, j]), rtol=1e-12)
    ranks = tokens.token_ranks(X)
    np.testing.assert_array_equal(ranks["rank"], np.full((3, 2), 4))


def test_attention_entropy_ratio():
    T = 5
    uniform_causal = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    np.testing.assert_allclose(tokens.attention_entropy_ratio(uniform_causal, causal=True), 1.0, rtol=1e-12)
    np.testing.assert_allclose(tokens.attention_entropy_ratio(np.full((T, T), 1 / T), causal=False), 1.0, rtol=1e-12)
    np.testing.assert_allclose(tokens.attention_entropy_ratio(np.eye(T), causal=False), 0.0, atol=1e-15)
    half = np.array([[0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(tokens.attention_entropy_ratio(half, causal=False), np.log(2) / np.log(4), rtol=1e-12)


def test_collapse_rate_recovers_a_cubic_law():
    layers = np.arange(1, 6)
    residuals = np.exp(-0.01 * 3.0**layers)  # log(−log r_l) = log 0.01 + l log 3
    fit = tokens.collapse_rate(residuals)
    np.testing.assert_allclose(fit["rate"], 3.0, rtol=1e-10)
    assert fit["layers_used"] == 5
    geometric = tokens.collapse_rate(0.5 * 0.8 ** layers)  # singly exponential: q = 0.8
    np.testing.assert_allclose(geometric["geometric_factor"], 0.8, rtol=1e-10)
    assert np.isnan(tokens.collapse_rate([1.0, 2.0])["rate"])
    # once the residual reaches float64's rounding floor the later layers are left out of the fit
    floored = np.concatenate([residuals[:3], [1e-16, 3e-17, 1e-16]])
    assert tokens.collapse_rate(floored)["layers_used"] == 3
    np.testing.assert_allclose(tokens.collapse_rate(floored)["rate"], 3.0, rtol=1e-10)


def test_bad_token_matrices_are_refused():
    with pytest.raises(ValueError, match=r"shape \(..., T, d\)"):
        tokens.relative_residual(np.ones(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        tokens.mean_pairwise_cosine(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="real numbers"):
        tokens.token_ranks(np.ones((2, 2)) * 1j)
    with pytest.raises(ValueError, match="unknown norm 'max'"):
        tokens.residual(np.ones((2, 2)), norm="max")
