"""Neural-collapse metrics against a simplex ETF, isotropic noise and per-definition float64 loops."""

import itertools

import numpy as np
import pytest

from geometry import collapse


def simplex_etf(classes: int, dim: int) -> np.ndarray:
    """(C, d) rows: the simplex equiangular tight frame √(C/(C−1)) (I − 11ᵀ/C), zero-padded to d."""
    frame = np.sqrt(classes / (classes - 1)) * (np.eye(classes) - 1.0 / classes)
    return np.pad(frame, ((0, 0), (0, dim - classes)))


def noisy_classes(means: np.ndarray, per_class: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(means)), per_class)
    return means[y] + noise * rng.standard_normal((len(y), means.shape[1])), y


def test_simplex_etf_is_collapsed():
    C, d = 10, 16
    means = simplex_etf(C, d)
    H, y = noisy_classes(means, 50, noise=1e-5)
    m = collapse.collapse_metrics(H, y, W=means)
    for name in ("nc1", "cdnv"):
        assert m[name] < 1e-8, (name, m[name])
    for name in ("nc2_equinorm", "nc2_equiangle", "gnc2_std", "nc3", "unc3"):
        assert m[name] < 1e-4, (name, m[name])
    assert m["nc4"] == 1.0
    np.testing.assert_allclose(m["mean_cosine"], -1 / (C - 1), atol=1e-5)
    # unit vectors at cosine −1/(C−1) are √(2C/(C−1)) apart
    np.testing.assert_allclose(m["gnc2"], -0.5 * np.log(2 * C / (C - 1)), atol=1e-5)


def test_isotropic_features_do_not_collapse():
    rng = np.random.default_rng(1)
    C, d, N = 10, 32, 5000
    H, y = rng.standard_normal((N, d)), rng.integers(0, C, N)
    m = collapse.collapse_metrics(H, y, W=rng.standard_normal((C, d)))
    # Σ_W ≈ I while Σ_B has rank C − 1 and eigenvalues ~ C/N: Tr(Σ_W Σ_B⁺)/C ~ N(C−1)/C² = 450
    assert m["nc1"] > 100
    assert m["cdnv"] > 10
    assert abs(m["nc4"] - 1 / C) < 0.03


def reference(H, y, W, bias, min_count):
    """Every metric by its definition, with loops over classes and pairs (float64)."""
    classes = [c for c in range(W.shape[0]) if np.sum(y == c) >= min_count]
    mu = {c: H[y == c].mean(0) for c in classes}
    mu_g = np.mean([mu[c] for c in classes], axis=0)
    M = np.stack([mu[c] - mu_g for c in classes])
    kept = np.isin(y, classes)
    sigma_w = sum(np.outer(h - mu[c], h - mu[c]) for h, c in zip(H[kept], y[kept])) / kept.sum()
    sigma_b = M.T @ M / len(classes)
    var = {c: np.mean(np.sum((H[y == c] - mu[c]) ** 2, 1)) for c in classes}
    pairs = list(itertools.combinations(range(len(classes)), 2))
    cos = [M[i] @ M[j] / np.linalg.norm(M[i]) / np.linalg.norm(M[j]) for i, j in pairs]
    unit = M / np.linalg.norm(M, axis=1, keepdims=True)
    logs = [-np.log(np.linalg.norm(unit[i] - unit[j])) for i, j in pairs]
    Wk = W[classes]
    align = [Wk[i] @ M[i] / np.linalg.norm(Wk[i]) / np.linalg.norm(M[i]) for i in range(len(classes))]
    norms = np.linalg.norm(M, axis=1)
    agree = [classes[np.argmin([np.linalg.norm(h - mu[c]) for c in classes])]
             == classes[np.argmax([W[c] @ h + bias[c] for c in classes])] for h in H[kept]]
    return {
        "nc1": np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=collapse.PINV_RTOL, hermitian=True)) / len(classes),
        "cdnv": np.mean([(var[classes[i]] + var[classes[j]]) / (2 * np.sum((M[i] - M[j]) ** 2)) for i, j in pairs]),
        "nc2_equinorm": norms.std() / norms.mean(),
        "nc2_equiangle": np.std(cos),
        "gnc2": np.mean(logs),
        "nc3": np.linalg.norm(Wk / np.linalg.norm(Wk) - M / np.linalg.norm(M)),
        "unc3": np.std(align) / np.mean(align),
        "nc4": np.mean(agree),
    }


@pytest.fixture(scope="module")
def imbalanced():
    """Partly collapsed features of 12 classes with Zipf-like counts (some below min_count)."""
    rng = np.random.default_rng(2)
    C, d = 12, 6
    y = rng.choice(C, size=900, p=np.arange(C, 0, -1) ** 1.5 / np.sum(np.arange(C, 0, -1) ** 1.5))
    H = 3 * rng.standard_normal((C, d))[y] + rng.standard_normal((900, d))
    return H, y, rng.standard_normal((C, d)), rng.standard_normal(C)


def test_metrics_match_their_definitions(imbalanced):
    H, y, W, bias = imbalanced
    got = collapse.collapse_metrics(H, y, W, bias, num_classes=12, min_count=20)
    expected = reference(H, y, W, bias, 20)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-10, err_msg=name)
    counts = np.bincount(y, minlength=12)
    assert got["classes"] == np.sum(counts >= 20) and got["classes_excluded"] == np.sum((counts > 0) & (counts < 20))
    assert got["tokens_excluded"] == counts[counts < 20].sum() > 0


def test_streaming_equals_in_memory(imbalanced):
    H, y, W, bias = imbalanced
    H_eval, y_eval = H[::3] + 0.1, y[::3]
    in_memory = collapse.collapse_metrics(H, y, W, bias, num_classes=12, min_count=20, H_eval=H_eval, y_eval=y_eval)
    acc = collapse.CollapseAccumulator(12, H.shape[1], min_count=20)
    cuts = [0, 7, 100, 101, 500, 900]  # uneven batches, one of a single row
    for a, b in zip(cuts, cuts[1:]):
        acc.add_means(H[a:b], y[a:b])
    for a, b in zip(cuts, cuts[1:]):
        acc.add_variability(H[a:b], y[a:b])
    for a in range(0, len(H_eval), 64):
        acc.add_decisions(H_eval[a:a + 64], y_eval[a:a + 64], W, bias)
    streamed = acc.result(W)
    for name in collapse.METRICS:
        np.testing.assert_allclose(streamed[name], in_memory[name], rtol=1e-6, err_msg=name)
    assert streamed["nc4_tokens"] == in_memory["nc4_tokens"] == np.sum(streamed_classes(y_eval, y, 20))


def streamed_classes(y_eval, y, min_count):
    return np.bincount(y, minlength=12)[y_eval] >= min_count


def test_bad_input_is_named():
    H, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="outside"):
        collapse.collapse_metrics(H, np.array([0, 1, 5, 1]), num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        collapse.collapse_metrics(np.full((4, 3), np.nan), y)
    with pytest.raises(ValueError, match="non-empty"):
        collapse.collapse_metrics(np.ones((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        collapse.collapse_metrics(H, y, min_count=5)
    with pytest.raises(ValueError, match="head weights"):
        collapse.collapse_metrics(H, y, W=np.ones((3, 2)), min_count=1)
    acc = collapse.CollapseAccumulator(2, 3)
    with pytest.raises(ValueError, match="no features"):
        acc.add_variability(H, y)
    acc.add_means(H, y)
    acc.add_variability(H, y)
    with pytest.raises(RuntimeError, match="pass 1"):
        acc.add_means(H, y)
