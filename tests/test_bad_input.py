"""Plausible wrong numbers are refused: each case here returned a number (or hung) before."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from geometry import collapse, data, metric, models, similarity, spectra, theory, training


def test_spectra_refuse_non_finite_and_empty_jacobians(nans_allowed):
    J = np.random.default_rng(0).normal(size=(5, 3, 2))
    J[2, 0, 1] = np.nan
    J[4, 1, 1] = np.inf
    for statistic in (spectra.numerical_rank, spectra.condition_number, spectra.log_volume, spectra.effective_rank,
                      spectra.summary):
        with pytest.raises(ValueError, match=r"NaN or inf in 2 of 5 matrices \(first, flat index: \[2, 4\]\)"):
            statistic(J)
    with pytest.raises(ValueError, match="empty matrices"):
        spectra.numerical_rank(np.ones((2, 0)))
    with pytest.raises(ValueError, match="floating-point"):
        spectra.numerical_rank(np.ones((3, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="NaN or inf"):
        spectra.summarize_singular_values(np.array([[1.0, np.nan]]), (2, 2), np.float32)


def test_point_cloud_comparisons_need_the_same_points():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(10, 2)), rng.normal(size=(12, 2))
    # the shapes in the annotations: one N for X and Y
    with pytest.raises(ValueError, match=r"knn_agreement: argument Y is .*\[12,2\].*shape \(N \.\.\.\), with N=10"):
        metric.knn_agreement(X, Y, k=3)
    with pytest.raises(ValueError, match=r"distance_rank_correlation: argument Y is .*with N=10"):
        metric.distance_rank_correlation(X, Y)
    with pytest.raises(ValueError, match="same points, at least 3: got 2 and 2"):
        metric.distance_rank_correlation(X[:2], Y[:2])
    with pytest.raises(ValueError, match="same length >= 2, got 3 and 1"):
        metric.spearman([1, 2, 3], [5])


def test_theory_refuses_what_it_cannot_answer():
    with pytest.raises(ValueError, match="q0 must be finite and > 0"):
        theory.mean_field("tanh", 1.0, 0.0, q0=0.0)  # looped forever before
    with pytest.raises(ValueError, match="q0 must be finite and > 0"):
        theory.mean_field("tanh", 1.0, 0.0, q0=-1.0)
    with pytest.raises(ValueError, match="variances must be finite"):
        theory.mean_field("tanh", float("nan"), 0.0)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        theory.isometry_prediction("tanh", 1.0, 0.0, depth=-1)
    with pytest.raises(ValueError, match="integer width"):
        theory.prob_any_dead(float("nan"))
    with pytest.raises(ValueError, match="integers >= 0"):
        theory.fuss_catalan(1.5, 2)
    assert theory.fuss_catalan(2.0, 3) == 12  # an integral float is accepted: C(9, 3) / 7


def test_make_dataset_refuses_nan_noise():
    with pytest.raises(ValueError, match=r"noise must be a number in \[0, 1e30\]"):
        data.make_dataset("spiral", 10, noise=float("nan"))


def test_training_refuses_configs_and_labels_that_cannot_train():
    x, y = data.make_dataset("xor", 64, seed=0)
    model = models.MLP(2, 8, depth=1, out_features=2, rngs=nnx.Rngs(0))
    base = training.TrainConfig(steps=5, log_every=5)
    quiet = dict(log=lambda line: None)
    for change, message in (({"learning_rate": float("nan")}, "learning_rate must be finite"),
                            ({"batch_size": 0}, "batch_size must be None"),
                            ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
                            ({"steps": -5}, "steps must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            training.train(model, x, y, dataclasses.replace(base, **change), **quiet)
    with pytest.raises(ValueError, match="must be integers"):
        training.train(model, x, y * 0.7, base, **quiet)  # was truncated to class 0
    with pytest.raises(ValueError, match="labels go up to 5 but the model has 2 outputs"):
        training.train(model, x, y + 4, base, **quiet)  # was a NaN loss
    with pytest.raises(ValueError, match="class indices >= 0"):
        training.train(model, x, y - 1, base, **quiet)


def test_collapse_refuses_a_skipped_pass_and_degenerate_classes():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 30)
    H = rng.normal(size=(90, 4)) + 4 * np.eye(3, 4)[y]
    accumulator = collapse.CollapseAccumulator(3, 4, min_count=5)
    accumulator.add_means(H, y)
    with pytest.raises(ValueError, match="pass 2 \\(add_variability\\) saw 0 tokens"):
        accumulator.result()  # returned nc1 = cdnv = 0, "perfect collapse", before
    with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
        collapse.CollapseAccumulator(3, 4, min_count=0)
    with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
        collapse.collapse_metrics(H, y, min_count=0)
    same = np.concatenate([H[:60], H[:30]])  # class 2 has exactly class 0's features
    with pytest.raises(ValueError, match="classes 0 and 2 have identical means"):
        collapse.collapse_metrics(same, y, min_count=5)


def test_linguistic_collapse_refuses_fits_and_corpora_too_small():
    from experiments import linguistic_collapse as lc

    assert lc.refusal(np.array([0.1, 0.2])) == "needs at least 3 models, got 2"
    assert "constant" in lc.refusal(np.array([8e-17, -3e-17, 5e-17]))  # equinorm with 2 classes: R² was 0.746
    assert lc.refusal(np.array([0.1, 0.3, 0.2])) is None
    metric = {"classes": 2, "classes_excluded": 497, "tokens": 84, "tokens_excluded": 588}
    runs = [{"width": 8, "depth": 1, "metrics": metric, "validation_loss": loss} for loss in (3.0, 2.5, 2.0)]
    with pytest.raises(ValueError, match="497 of 499 classes and 588 of 672 tokens"):
        lc.check_coverage(runs, min_count=5)
    for name in collapse.METRICS:
        for run, value in zip(runs, (1e-17, 2e-17, 1.5e-17)):
            run["metrics"] = {**run["metrics"], name: value}
    fitted = lc.fits(runs)
    assert fitted["nc2_equinorm"]["r2"] is None and "constant" in fitted["nc2_equinorm"]["refused"]


def test_complex_inputs_and_a_broken_head_are_refused():
    rng = np.random.default_rng(0)
    H, y = rng.normal(size=(40, 5)), np.arange(40) % 3
    with pytest.raises(ValueError, match="must be real numbers, got dtype complex128"):
        collapse.collapse_metrics(H + 1j, y)
    with pytest.raises(ValueError, match="must be a real numeric array, got dtype complex128"):
        similarity.cka(H + 1j, H + 2j)  # these differ only in their imaginary parts: not "CKA 1.0"
    for W, bias, message in ((np.full((3, 5), np.nan), None, "head weights W contains NaN or inf"),
                             (np.ones((3, 5)), np.array([0.0, np.inf, 0.0]), "head bias contains NaN or inf"),
                             (np.ones((3, 5)) + 1j, None, "head weights W must be real numbers")):
        with pytest.raises(ValueError, match=message):
            collapse.collapse_metrics(H, y, W, bias)


def test_obscure_failures_are_named():
    from geometry import jacobians, matfree

    points = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"argument chunk_size is 0.5; expected int \| None$"):
        jacobians.jacobian_field(lambda x: 2 * x, points, chunk_size=0.5)
    with pytest.raises(ValueError, match="f returns complex64 values; matfree takes real"):
        matfree.singular_values(lambda x: x.astype(np.complex64) * 2, points, 2)
    # float16 Jacobians have no SVD kernel: their values are taken exactly in float32
    J = np.diag([3.0, 2.0, 1.0]).astype(np.float16)
    np.testing.assert_array_equal(spectra.singular_values(J), [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"labels go up to 1099511627776 with only 3 points"):
        collapse.collapse_metrics(np.ones((3, 2)), np.array([0, 1, 2**40]))  # not a terabyte of class means
    accumulator = collapse.CollapseAccumulator(3, 5)
    with pytest.raises(ValueError, match="features of dimension 6, but the accumulator was made for dim=5"):
        accumulator.add_means(np.ones((4, 6)), np.array([0, 1, 2, 0]))


# ---- issue "nothing silently wrong, round three": each returned a number (or allocated without end) before ----

def test_the_shared_validators_name_the_argument_the_bound_and_the_value():
    from geometry import validation

    assert validation.number("tol", 0.5, low=0, low_open=True) == 0.5
    for bad in (float("nan"), float("inf"), 0.0, -1, True, "1", [1.0]):
        with pytest.raises(ValueError, match=r"tol must be a finite number > 0, got"):
            validation.number("tol", bad, low=0, low_open=True)
    assert validation.integer("k", 3.0, low=1, high=4) == 3
    for bad in (0, 5, 2.5, True, float("nan")):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\], got"):
            validation.integer("k", bad, low=1, high=4)
    with pytest.raises(ValueError, match=r"values holds NaN or inf at 1 of 3 entries \(first at \(1,\)\)"):
        validation.finite_array("values", [1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="values must have 1 axes, got shape"):
        validation.finite_array("values", np.ones((2, 2)), ndim=1)
    with pytest.raises(ValueError, match="real numbers, got dtype bool"):
        validation.finite_array("values", [True])


def test_weight_spectra_refuse_what_the_svd_or_the_fit_would_misread():
    from geometry import weights

    with pytest.raises(ValueError, match="kernel holds NaN or inf"):
        weights.eigenvalues(np.full((3, 3), np.nan))  # was LAPACK's "SVD did not converge"
    with pytest.raises(ValueError, match="all ≥ 0"):
        weights.stable_rank(np.array([-1.0, 2.0]))  # was 0.5, below the stable rank's floor of 1
    with pytest.raises(ValueError, match="values is empty"):
        weights.stable_rank(np.array([]))
    with pytest.raises(ValueError, match="values holds NaN or inf"):
        weights.power_law_fit(np.array([1.0, np.inf, 2.0]))  # the inf was dropped without a word
    with pytest.raises(ValueError, match=r"min_tail must be an integer ≥ 2"):
        weights.power_law_fit(np.arange(1, 50.0), min_tail=1)


def test_partition_refuses_nan_parameters_and_meaningless_tolerances(nans_allowed):
    from geometry import regions

    model = models.MLP(2, 8, depth=1, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    window = ((-1.0, -1.0), (1.0, 1.0))
    for tolerance in (-1.0, float("nan"), float("inf")):  # was: 1 region for 87
        with pytest.raises(ValueError, match="tolerance must be a finite number ≥ 0"):
            regions.partition(model, window, tolerance=tolerance)
    result = regions.partition(model, window)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        result.regions_near(np.zeros((1, 2)), -0.5)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        result.regions_near(np.zeros((1, 2)), float("nan"))
    with pytest.raises(ValueError, match="start holds NaN or inf"):
        result.crossings((np.nan, 0.0), (1.0, 1.0))  # was: every region
    with pytest.raises(ValueError, match=r"points must be plane coordinates of shape \(P, 2\)"):
        result.region_of(np.zeros((4, 3)))
    layer = model.layers[0].dense
    layer.weight[...] = layer.weight[...].at[0, 0].set(np.nan)
    with pytest.raises(ValueError, match=r"parameter .* holds NaN or inf: its linear regions are undefined"):
        regions.partition(model, window)  # was: 1 region with a finite ½ log det


def test_self_supervised_losses_refuse_one_sample_and_non_positive_temperatures():
    from geometry import ssl

    z = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    for temperature in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            ssl.info_nce(z, z, temperature)
    for loss in (ssl.info_nce, ssl.vicreg):
        with pytest.raises(ValueError, match="at least 2 samples per view"):
            loss(z[:1], z[:1])  # was a finite loss from a batch with no negatives / an undefined variance
        with pytest.raises(ValueError, match="same \\(N, d\\) shape"):
            loss(z, z[:, :2])


def test_linear_probe_refuses_bad_labels_penalties_and_a_head_of_a_million_classes():
    from geometry import embeddings

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(ValueError, match="test_labels must be integer class indices >= 0"):
        embeddings.linear_probe(features, labels, features, -labels - 1)
    for l2 in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="l2 must be a finite number ≥ 0"):
            embeddings.linear_probe(features, labels, features, labels, l2=l2)
    with pytest.raises(ValueError, match=r"iterations must be an integer ≥ 1"):
        embeddings.linear_probe(features, labels, features, labels, iterations=0)
    sparse = labels.copy()
    sparse[0] = 10**6  # one label of a million: the head would have 10⁶ outputs (it never returned)
    with pytest.raises(ValueError, match="Map the labels to 0..C-1 first"):
        embeddings.linear_probe(features, sparse, features, labels)


def test_attention_entropy_refuses_scores_nan_and_negative_weights():
    from geometry import tokens

    uniform = np.full((2, 4, 4), 0.25)
    np.testing.assert_allclose(tokens.attention_entropy_ratio(uniform, causal=False), 1.0)
    for weights, message in ((uniform * 2, "every row summing to 1"), (uniform - 0.5, "every entry ≥ 0"),
                             (np.where(uniform > 0, np.nan, 0), "holds NaN or inf")):
        with pytest.raises(ValueError, match=message):
            tokens.attention_entropy_ratio(weights, causal=False)


def test_training_refuses_an_empty_checkpoint_dir_and_says_when_it_diverged(tmp_path, nans_allowed, monkeypatch):
    x, y = data.make_dataset("xor", 64, seed=0)
    model = models.MLP(2, 8, depth=1, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    config = training.TrainConfig(steps=3, learning_rate=1e-2, log_every=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir='' is empty"):
        training.train(model, x, y, config, checkpoint_dir="")  # wrote step folders into the working directory
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        training.train(model, x, y, config, checkpoint_dir=tmp_path / "a_file")
    assert not [p for p in tmp_path.iterdir() if p.name != "a_file"]
    before = np.asarray(model.layers[0].dense.weight[...]).copy()
    huge = dataclasses.replace(config, learning_rate=1e30, steps=20)
    with pytest.raises(training.TrainingDivergedError, match="training diverged by step .* lower the learning rate"):
        training.train(model, x * 1e20, y, huge, log=lambda line: None)  # returned normally with NaN weights
    np.testing.assert_array_equal(np.asarray(model.layers[0].dense.weight[...]), before)
