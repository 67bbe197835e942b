"""The cited studies' conventions (geometry.collapse_studies) against per-definition loops in
float64, written from the definitions, one pair or class at a time."""

import itertools

import numpy as np
import pytest

from geometry import collapse, collapse_studies


def _features(seed=0, classes=5, dim=7, per_class=30, unseen=2):
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    H = centres[y] + rng.normal(size=(len(y), dim)) * rng.uniform(0.3, 1.5, size=classes)[y, None]
    W = rng.normal(size=(classes + unseen, dim))  # rows for classes never seen in H
    bias = rng.normal(size=classes + unseen)
    return H, y, W, bias, classes + unseen


def _loop_reference(H, y, W, num_classes):
    seen = sorted(set(y.tolist()))
    means = {c: H[y == c].mean(axis=0) for c in seen}
    variance = {c: np.mean(np.sum((H[y == c] - means[c]) ** 2, axis=1)) for c in seen}
    global_mean = np.mean([means[c] for c in seen], axis=0)
    centred = {c: means[c] - global_mean for c in seen}
    unit = {c: centred[c] / (np.linalg.norm(centred[c]) + np.finfo(float).eps) for c in seen}
    pairs = list(itertools.combinations(seen, 2))
    cdnv = np.mean([(variance[a] + variance[b]) / 2 / np.linalg.norm(means[a] - means[b]) ** 4 for a, b in pairs])
    inner = [centred[a] @ centred[b] for a, b in pairs]
    kernel = [np.log(1 / np.linalg.norm(unit[a] - unit[b])) for a, b in pairs]
    norms = [np.linalg.norm(centred[c]) for c in seen]
    C = len(seen)
    ideal = (np.eye(C) - 1 / C) / np.sqrt(C - 1)
    M = np.array([centred[c] for c in seen])
    G = M @ M.T
    D = W[seen] @ M.T
    dots = [W[c] @ centred[c] for c in seen]
    cos = [W[c] @ centred[c] / (np.linalg.norm(W[c]) * np.linalg.norm(centred[c])) for c in seen]
    dists = [np.linalg.norm(W[c] / (np.linalg.norm(W[c]) + np.finfo(float).eps) - unit[c]) for c in seen]
    all_means = [means.get(c, np.zeros(H.shape[1])) for c in range(num_classes)]
    hits = 0
    for h in H:
        nearest = int(np.argmin([np.linalg.norm(h - m) for m in all_means]))
        hits += nearest == int(np.argmax(W @ h))
    var1 = lambda v: np.var(v, ddof=1)  # noqa: E731
    return {
        "cdnv": cdnv, "norms_mean": np.mean(norms), "norms_var": var1(norms),
        "norms_log_mean": np.mean(np.log(norms)), "norms_log_var": var1(np.log(norms)),
        "interfere_mean": np.mean(inner), "interfere_var": np.var(inner),
        "etf_error": np.linalg.norm(G / np.linalg.norm(G) - ideal),
        "log_kern_mean": np.mean(kernel), "log_kern_var": np.var(kernel),
        "dual_error": np.linalg.norm(D / np.linalg.norm(D) - ideal),
        "simdot_mean": np.mean(dots), "simdot_var": var1(dots), "simcos_mean": np.mean(cos), "simcos_var": var1(cos),
        "dists_mean": np.mean(dists), "dists_var": var1(dists), "hits": hits, "misses": len(H) - hits,
    }


def test_linguistic_collapse_columns_match_per_definition_loops():
    H, y, W, bias, K = _features()
    result = collapse.collapse_metrics(H, y, W, bias, num_classes=K, min_count=1, convention="linguistic_collapse")
    reference = _loop_reference(H, y, W, K)
    assert set(collapse_studies.LINGUISTIC_COLLAPSE_COLUMNS) <= set(result)
    for column in collapse_studies.LINGUISTIC_COLLAPSE_COLUMNS:
        np.testing.assert_allclose(result[column], reference[column], rtol=1e-10, err_msg=column)


def test_streaming_accumulator_gives_the_same_columns():
    H, y, W, bias, K = _features(seed=1)
    direct = collapse.collapse_metrics(H, y, W, bias, num_classes=K, min_count=1, convention="linguistic_collapse")
    acc = collapse.CollapseAccumulator(K, H.shape[1], min_count=1)
    order = np.random.default_rng(0).permutation(len(H))
    batches = np.array_split(order, 4)
    for b in batches:
        acc.add_means(H[b], y[b])
    for b in batches:
        acc.add_variability(H[b], y[b])
    for b in batches:
        acc.add_decisions(H[b], y[b], W, bias)
    streamed = acc.result(W, convention="linguistic_collapse")
    for column in collapse_studies.LINGUISTIC_COLLAPSE_COLUMNS:
        np.testing.assert_allclose(streamed[column], direct[column], rtol=1e-10, err_msg=column)
    default = acc.result(W)  # the default convention is still there, from the same passes
    np.testing.assert_allclose(default["cdnv"], collapse.collapse_metrics(H, y, W, bias, num_classes=K,
                                                                          min_count=1)["cdnv"], rtol=1e-10)


def test_study_cdnv_is_scale_dependent_and_ours_is_not():
    """The documented difference: ‖μ_c − μ_c'‖⁴ in the denominator makes the study's CDNV scale as 1/s²."""
    H, y, W, bias, K = _features(seed=2)
    ours = [collapse.collapse_metrics(s * H, y)["cdnv"] for s in (1.0, 10.0)]
    theirs = [collapse.collapse_metrics(s * H, y, convention="linguistic_collapse")["cdnv"] for s in (1.0, 10.0)]
    np.testing.assert_allclose(ours[1], ours[0], rtol=1e-12)
    np.testing.assert_allclose(theirs[1], theirs[0] / 100.0, rtol=1e-12)


def test_simplex_etf_means_have_zero_etf_error():
    C = 6
    etf = (np.eye(C) - 1.0 / C) * 4.0  # rows: a simplex ETF in R^C, centred
    y = np.repeat(np.arange(C), 3)
    H = etf[y] + 1e-3 * np.random.default_rng(3).normal(size=(len(y), C))
    result = collapse.collapse_metrics(H, y, etf, min_count=1, convention="linguistic_collapse")
    assert result["etf_error"] < 1e-3 and result["dual_error"] < 1e-3
    np.testing.assert_allclose(result["simcos_mean"], 1.0, atol=1e-5)


def test_pinv_cut_off_is_selectable():
    """Near-degenerate class means: a tiny between-class direction is dropped by our cut-off and
    kept (blowing nc1 up) by a d·eps cut-off like torch.linalg.pinv's."""
    rng = np.random.default_rng(4)
    centres = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 1e-7]])  # 4 means, ~2-D
    y = np.repeat(np.arange(4), 40)
    H = centres[y] + 0.05 * rng.normal(size=(160, 3))
    H -= np.array([H[y == c].mean(0) for c in range(4)])[y] - centres[y]  # exact class means
    ours = collapse.collapse_metrics(H, y)["nc1"]
    peers = collapse.collapse_metrics(H, y, pinv_rtol=3 * np.finfo(np.float64).eps)["nc1"]
    assert ours < 0.01 < 1e3 < peers


def test_unknown_convention_is_refused():
    H, y, W, bias, K = _features()
    with pytest.raises(ValueError, match="unknown convention 'papyan'"):
        collapse.collapse_metrics(H, y, convention="papyan")
    acc = collapse.CollapseAccumulator(K, H.shape[1])
    with pytest.raises(ValueError, match="unknown convention"):
        acc.result(convention="")
    with pytest.raises(ValueError, match="pinv_rtol"):
        collapse.collapse_metrics(H, y, pinv_rtol=float("nan"))
