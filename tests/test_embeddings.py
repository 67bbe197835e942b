"""geometry.embeddings against float64 NumPy references, closed cases and scikit-learn's logistic regression."""

import numpy as np
import pytest

from geometry import embeddings


def _reference(Z: np.ndarray) -> dict:
    """Every measure written out directly from its definition, in float64, with loops where they are clearer."""
    n, d = Z.shape
    sigma = np.linalg.svd(Z, compute_uv=False)
    centred = Z - Z.mean(axis=0)
    covariance = np.cov(Z.T)  # unbiased
    eigenvalues = np.sort(np.linalg.eigvalsh(covariance))[::-1]
    p = sigma / sigma.sum() + 1e-7
    std = Z.std(axis=0, ddof=1)
    off = sum(covariance[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    cosines = []
    for i in range(n):
        for j in range(n):
            if i != j:
                a, b = np.linalg.norm(Z[i]), np.linalg.norm(Z[j])
                cosines.append(0.0 if a == 0 or b == 0 else Z[i] @ Z[j] / (a * b))
    mean = Z.mean(axis=0)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    units = np.where(norms > 0, Z / np.where(norms > 0, norms, 1), 0.0)
    return {"normalised_std": np.mean(units.std(axis=0)), "total_std": np.sqrt(np.trace(covariance)),"singular_values": sigma, "centred_singular_values": np.linalg.svd(centred, compute_uv=False),
            "covariance_eigenvalues": eigenvalues, "rankme": np.exp(-np.sum(p * np.log(p))),
            "explained_variance": np.cumsum(eigenvalues) / eigenvalues.sum(), "std": std,
            "vicreg_variance": np.mean([max(0.0, 1 - np.sqrt(v + 1e-4)) for v in np.diag(covariance)]),
            "vicreg_covariance": off / d, "off_diagonal_fraction": off / np.sum(covariance**2),
            "mean_pairwise_cosine": np.mean(cosines),
            "relative_variance": np.trace(covariance) / (mean @ mean + np.trace(covariance))}


def test_measures_match_float64_definitions():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(60, 7)) @ rng.normal(size=(7, 7)) * 0.4 + rng.normal(size=7)
    Z[5] = 0.0  # a zero embedding: cosine 0 with every other
    got, want = embeddings.embedding_spectrum(Z), _reference(Z)
    for key, value in want.items():
        # the spectra come from eigenvalues of ZᵀZ in float64: relative 1e-10 of the largest covers their rounding
        scale = np.max(np.abs(value)) if np.ndim(value) else 1.0
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-10 * scale, err_msg=key)
    assert got["zero_rows"] == 1 and got["count"] == 60 and got["numerical_rank"] == 7


def test_streaming_equals_one_shot_in_any_batching():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(301, 9)).astype(np.float32) + 3
    whole = embeddings.embedding_spectrum(Z)
    accumulator = embeddings.EmbeddingAccumulator(9)
    order = rng.permutation(len(Z))
    for part in np.split(order, [1, 50, 51, 200]):
        accumulator.add(Z[part])
    streamed = accumulator.result()
    for key in ("singular_values", "centred_singular_values", "covariance_eigenvalues", "std", "explained_variance"):
        np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-9, err_msg=key)
    for key in ("rankme", "centred_rankme", "vicreg_variance", "vicreg_covariance", "mean_pairwise_cosine",
                "relative_variance", "numerical_rank", "dimensions_for_99_percent"):
        np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-9, err_msg=key)


def test_isotropic_gaussian_is_full_rank():
    # N = 20000 isotropic samples in d = 16: the sample singular values are √N (1 ± O(√(d/N)) ≈ 3%), whose
    # entropy loss is second order: RankMe (centred) within 0.2% of d
    Z = np.random.default_rng(2).normal(size=(20000, 16))
    s = embeddings.embedding_spectrum(Z)
    assert s["numerical_rank"] == 16 and s["collapsed_dimensions"] == 0
    assert 16 * 0.998 < s["centred_rankme"] <= 16
    assert abs(s["mean_pairwise_cosine"]) < 0.01 and s["relative_variance"] > 0.99
    # directions uniform on the sphere: each coordinate of z/‖z‖ has variance 1/d exactly
    np.testing.assert_allclose(s["normalised_std"], 1 / np.sqrt(16), rtol=0.01)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_k_data(dtype):
    # k = 3 isotropic directions in d = 16, offset by a constant: the centred spectrum has exactly 3 nonzero
    # values; the centred RankMe is 3 to within the sampling spread of 3 singular values (1%) and ε's 16 · 1e-7
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(16, 3)))[0]  # (16, 3) orthonormal
    Z = (rng.normal(size=(20000, 3)) @ basis.T + 5 * rng.normal(size=16)).astype(dtype)
    s = embeddings.embedding_spectrum(Z)
    assert s["numerical_rank"] == 3 and s["collapsed_dimensions"] == 13 and s["dimensions_for_99_percent"] == 3
    np.testing.assert_allclose(s["centred_rankme"], 3.0, rtol=0.01)


def test_complete_collapse():
    rng = np.random.default_rng(4)
    Z = np.ones((500, 8)) * rng.normal(size=8) + 1e-7 * rng.normal(size=(500, 8))
    s = embeddings.embedding_spectrum(Z)
    assert s["rankme"] < 1.0001 and s["relative_variance"] < 1e-12 and s["mean_pairwise_cosine"] > 1 - 1e-10
    assert s["normalised_std"] < 1e-6


def test_rankme_is_the_effective_rank_plus_epsilon():
    from geometry import spectra

    sigma = np.array([3.0, 2.0, 1.0, 0.5, 0.0])
    J = np.diag(sigma)
    assert abs(embeddings.rankme(sigma, eps=0.0) - float(spectra.effective_rank(J))) < 1e-5  # float32 route
    assert abs(embeddings.rankme(sigma) - embeddings.rankme(sigma, eps=0.0)) < 5 * 1e-7 * (1 + 16.2)


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 3), np.nan), "NaN or inf in 4 rows"),
    (np.ones(5), "2-D array"),
    (np.zeros((0, 3)), "empty"),
    (np.ones((3, 2)) * 1j, "real"),
    (np.ones((1, 3)), "at least 2 rows"),
])
def test_refusals(bad, message):
    with pytest.raises(ValueError, match=message):
        embeddings.embedding_spectrum(bad)


def test_accumulator_dimension_mismatch():
    accumulator = embeddings.EmbeddingAccumulator(4)
    with pytest.raises(ValueError, match="dim=4"):
        accumulator.add(np.ones((3, 5)))


def test_linear_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 6)) * 1.5
    labels = rng.integers(0, 4, size=400)
    X = centres[labels] + rng.normal(size=(400, 6))
    train, test = slice(0, 300), slice(300, 400)
    l2 = 1e-2
    got = embeddings.linear_probe(X[train], labels[train], X[test], labels[test], l2=l2, iterations=300)
    mean, std = X[train].mean(0), X[train].std(0)
    # the same objective: mean cross-entropy + (l2/2)‖W‖² ⇔ scikit-learn's C = 1 / (l2 · N)
    reference = LogisticRegression(C=1 / (l2 * 300), tol=1e-12, max_iter=5000).fit((X[train] - mean) / std,
                                                                                  labels[train])
    logits = (X[train] - mean) / std @ reference.coef_.T + reference.intercept_
    logits -= logits.max(1, keepdims=True)
    log_probability = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    objective = -log_probability[np.arange(300), labels[train]].mean() + 0.5 * l2 * np.sum(reference.coef_**2)
    np.testing.assert_allclose(got["objective"], objective, rtol=1e-4)  # float32 L-BFGS
    assert got["test_accuracy"] == np.mean(reference.predict((X[test] - mean) / std) == labels[test])
