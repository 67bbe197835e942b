"""geometry.report: every column against a hand-written computation (float64 where it matters),
row order = call order, and the models it must take with no wrapper."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import geometry
from geometry import collapse, embeddings, models, probe, similarity, spectra, tokens, weights


class ZooMLP(nnx.Module):
    """5 → 7 (tanh) → 6 (relu) → 3, written as model zoos write it (inline activations)."""

    def __init__(self, rngs, dtype=jnp.float64):
        self.fc1 = nnx.Linear(5, 7, param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(7, 6, param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(6, 3, param_dtype=dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.fc2(jnp.tanh(self.fc1(x)))))


def _hand(model, x):
    """Per point: every row's output and its Jacobian by x, written out by hand (float64 NumPy)."""
    K1, K2, K3 = (np.asarray(layer.kernel[...], np.float64) for layer in (model.fc1, model.fc2, model.head))
    b1, b2, b3 = (np.asarray(layer.bias[...], np.float64) for layer in (model.fc1, model.fc2, model.head))
    z1 = x @ K1 + b1
    h1 = np.tanh(z1)
    z2 = h1 @ K2 + b2
    h2 = np.maximum(z2, 0)
    out = h2 @ K3 + b3
    J1 = K1.T
    Jh1 = (1 - h1 ** 2)[:, None] * J1
    J2 = K2.T @ Jh1
    Jh2 = (z2 > 0)[:, None] * J2
    J3 = K3.T @ Jh2
    return {"fc1": (z1, J1), "tanh": (h1, Jh1), "fc2": (z2, J2), "relu": (h2, Jh2), "head": (out, J3),
            "output": (out, J3)}, (z1, z2)


def test_every_column_equals_a_hand_written_computation(x64):
    model = ZooMLP(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(36, 5))
    labels = np.arange(36) % 3  # 12 per class: collapse_metrics keeps classes of 10 or more
    result = geometry.report(model, x, labels=labels, progress=False)
    table = result.table.set_index("layer")
    assert list(table.index) == ["fc1", "tanh", "fc2", "relu", "head", "output"]  # call order
    assert list(table["kind"]) == ["Linear", "tanh", "Linear", "relu", "Linear", "output"]
    hand = [_hand(model, point) for point in x]
    previous = None
    for key in table.index:
        values = np.stack([h[0][key][0] for h in hand])
        jacobians = np.stack([h[0][key][1] for h in hand])
        sigma = np.linalg.svd(jacobians, compute_uv=False)  # (N, r)
        m, n = jacobians.shape[1:]
        rank = [np.linalg.matrix_rank(J) for J in jacobians]  # numpy's tolerance: σ₁·max(m, n)·eps
        p = sigma / sigma.sum(axis=1, keepdims=True)
        effective = np.exp(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1))
        full = np.array(rank) == min(m, n)
        condition = np.where(full, sigma[:, 0] / np.where(full, sigma[:, -1], 1), np.inf)
        volume = np.where(full, np.sum(np.log(np.where(sigma > 0, sigma, 1)), axis=1), -np.inf)
        row = table.loc[key]
        assert row["rank_median"] == np.median(rank), key
        assert row["rank_deficient_fraction"] == np.mean(np.array(rank) < min(m, n)), key
        np.testing.assert_allclose(row["effective_rank_median"], np.median(effective), rtol=1e-9, err_msg=key)
        np.testing.assert_allclose(row["condition_median"], np.median(condition), rtol=1e-9, err_msg=key)
        np.testing.assert_allclose(row["log_volume_median"], np.median(volume), rtol=1e-9, err_msg=key)
        assert row["route"] == "dense" and row["shape"] == str(values.shape[1:])
        # the library's tested statistics on the hand-written values (float64; the two forward passes
        # differ by rounding, which these statistics pass on at up to ~1e-8 relative)
        flat = values.reshape(len(x), -1)
        spectrum = embeddings.embedding_spectrum(flat)
        np.testing.assert_allclose(row["rankme"], spectrum["rankme"], rtol=1e-7)
        np.testing.assert_allclose(row["mean_cosine"], spectrum["mean_pairwise_cosine"], rtol=1e-7, atol=1e-12)
        if previous is None:
            assert np.isnan(row["cka_previous"])
        else:
            np.testing.assert_allclose(row["cka_previous"], similarity.cka(previous, flat), rtol=1e-7)
        metrics = collapse.collapse_metrics(flat, labels)
        for column in ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangle"):
            np.testing.assert_allclose(row[column], metrics[column], rtol=1e-7)
        previous = flat
    z1, z2 = (np.stack([h[1][i] for h in hand]) for i in (0, 1))
    tanh_derivative = 1 - np.tanh(z1) ** 2
    assert table.loc["tanh", "dead_fraction"] == np.mean(tanh_derivative == 0)
    assert table.loc["tanh", "saturated_fraction"] == pytest.approx(
        np.mean((tanh_derivative > 0) & (tanh_derivative < result.settings["saturation"])), abs=1e-12)
    assert table.loc["relu", "dead_fraction"] == pytest.approx(np.mean(z2 <= 0), abs=1e-12)
    assert np.isnan(table.loc["fc1", "dead_fraction"])
    assert table.loc["fc1", "params"] == 5 * 7 + 7 and table.loc["tanh", "params"] == 0
    assert table.loc["output", "params"] == 5 * 7 + 7 + 7 * 6 + 6 + 6 * 3 + 3


def test_weight_columns_match_the_powerlaw_package_fit():
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(1)
    kernel = rng.standard_t(df=3, size=(120, 80)) / 10  # heavy-tailed, like a trained layer's
    values = weights.eigenvalues(kernel)
    np.testing.assert_allclose(values, np.sort(np.linalg.eigvalsh(kernel.T @ kernel)), rtol=1e-9, atol=1e-12)
    fit = weights.power_law_fit(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns about its own internals
        reference = powerlaw.Fit(values, verbose=False, parameter_ranges={"alpha": [1, None]})
    np.testing.assert_allclose([fit["alpha"], fit["alpha_error"], fit["xmin"]],
                               [reference.alpha, reference.sigma, reference.xmin], rtol=1e-9)
    np.testing.assert_allclose(fit["ks_distance"], reference.D, rtol=1e-9)
    assert weights.stable_rank(values) == pytest.approx(np.sum(values) / np.max(values))
    conv = rng.normal(size=(3, 3, 4, 5))  # WeightWatcher's reading: one (in, out) matrix per window position
    pooled = np.sort(np.concatenate([np.linalg.svd(conv[i, j], compute_uv=False) ** 2
                                     for i in range(3) for j in range(3)]))
    np.testing.assert_allclose(weights.eigenvalues(conv), pooled, rtol=1e-9)
    assert np.isnan(weights.power_law_fit([1.0, 1.0])["alpha"])
    model = ZooMLP(nnx.Rngs(2), dtype=jnp.float32)
    table = geometry.report(model, rng.normal(size=(8, 5)).astype(np.float32), progress=False).table
    row = table.set_index("layer").loc["fc2"]
    own = weights.power_law_fit(weights.eigenvalues(np.asarray(model.fc2.kernel[...])))
    assert row["weight_alpha"] == own["alpha"] or (np.isnan(row["weight_alpha"]) and row["weight_note"])
    assert table.set_index("layer").loc["tanh", "weight_note"] == "no kernel"


def test_the_librarys_mlp_agrees_with_rank_depths_computation():
    model = models.MLP(6, 6, depth=3, activation="relu", rngs=nnx.Rngs(3))
    x = np.random.default_rng(4).normal(size=(16, 6)).astype(np.float32)
    table = geometry.report(model, x, progress=False).table.set_index("layer")
    sigma = probe.input_jacobian_field(model, x, "layers/*", reduce=spectra.singular_values)  # as rank_depth
    for key, values in sigma.items():
        ranks = spectra.summarize_singular_values(values, (6, 6), values.dtype)["numerical_rank"]
        assert table.loc[key, "rank_median"] == float(np.median(np.asarray(ranks)))
        assert table.loc[f"{key}/activation", "kind"] == "relu"


def test_token_columns_and_token_ids_with_wrt():
    from examples.published_model import DecoderLM, KVCache

    model = DecoderLM(20, 8, 1, nnx.Rngs(5))
    ids = np.random.default_rng(6).integers(0, 20, (4, 5), dtype=np.int32)
    kwargs = {"cache": KVCache(1, 5, 2, 2), "segment_ids": jnp.zeros(5, jnp.int32)}
    result = geometry.report(model, ids, wrt="embed", model_kwargs=kwargs, progress=False)
    table = result.table.set_index("layer")
    assert "blocks/0/attention:softmax" in table.index and result.settings["wrt"] == "embed"
    hidden = probe.outputs(model, ids, "blocks/0", model_kwargs=kwargs)["blocks/0"]
    np.testing.assert_allclose(table.loc["blocks/0", "token_residual"],
                               np.median(tokens.relative_residual(np.asarray(hidden, np.float64))), rtol=1e-9)
    np.testing.assert_allclose(table.loc["blocks/0", "token_cosine"],
                               np.median(tokens.mean_pairwise_cosine(np.asarray(hidden, np.float64))), rtol=1e-9)
    assert table.loc["embed", "rank_median"] == 40  # ∂embed/∂embed: the identity on 5 × 8


def test_other_models_with_no_wrapper(tmp_path):
    import flax.linen as linen
    from zoo import ScanStack, ZooCNN

    cnn = ZooCNN(nnx.Rngs(7))
    cnn.eval()
    images = np.random.default_rng(8).normal(size=(6, 5, 5, 1)).astype(np.float32)
    table = geometry.report(cnn, images, budget="quick", progress=False).table
    assert list(table["layer"]) == ["conv1", "bn1", "relu", "conv2", "relu#1", "head", "output"]
    stack = ScanStack(nnx.Rngs(9))
    table = geometry.report(stack, np.random.default_rng(12).normal(size=(3, 6)).astype(np.float32),
                            progress=False).table
    assert "blocks:gelu@2" in list(table["layer"])
    kernel_mlp = models.KernelMLP(4, 5, 6, 1, 2, rngs=nnx.Rngs(10))
    kernel_points = np.random.default_rng(13).normal(size=(3, 4)).astype(np.float32)
    assert geometry.report(kernel_mlp, kernel_points, progress=False).table["layer"].iloc[-1] == "output"

    class LinenMLP(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3)(linen.gelu(linen.Dense(4)(x)))

    linen_model = LinenMLP()
    x = np.random.default_rng(11).normal(size=(5, 4)).astype(np.float32)
    variables = linen_model.init(jax.random.key(0), x[0])
    result = geometry.report(linen_model.apply, x, params=variables, progress=False)
    J = np.stack([np.asarray(jax.jacfwd(lambda v: linen_model.apply(variables, v))(p), np.float64) for p in x])
    sigma = np.linalg.svd(J, compute_uv=False)
    np.testing.assert_allclose(result.table["condition_median"].iloc[0], np.median(sigma[:, 0] / sigma[:, -1]),
                               rtol=1e-4)
    result.to_csv(tmp_path / "r.csv")
    result.to_html(tmp_path / "r.html")
    assert "| output |" in result.to_markdown() and (tmp_path / "r.csv").read_text().startswith("layer,")
    figure = result.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    import matplotlib.pyplot as plt

    plt.close(figure)
    with pytest.raises(ValueError, match="budget must be one of"):
        geometry.report(cnn, images, budget="fast")
    with pytest.raises(ValueError, match="labels must be"):
        geometry.report(cnn, images, labels=np.zeros(3, int), progress=False)


def test_command_line(tmp_path, capsys):
    from geometry.report import cli as report_cli

    assert report_cli.main(["no_colon", "--data", "digits"]) == 2
    assert "MODULE:FACTORY" in capsys.readouterr().err
    assert report_cli.main(["examples.published_model:nothing", "--data", "digits"]) == 2
    assert report_cli.main(["examples.published_model:vit", "--data", str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    code = report_cli.main(["zoo:small_mlp", "--data", "digits", "--points", "12", "--labels",
                            "--out", str(tmp_path)])
    assert code == 0
    for name in ("report.csv", "report.md", "report.html", "report.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| output |" in capsys.readouterr().out


def test_quick_budget_sends_wide_rows_matrix_free(monkeypatch):
    from geometry import report as report_module

    monkeypatch.setattr(report_module, "QUICK_DENSE_ENTRIES", 31)  # fc1's J (7 × 5) is wider, fc2's (6 × 5) not
    model = ZooMLP(nnx.Rngs(14), dtype=jnp.float32)
    x = np.random.default_rng(15).normal(size=(12, 5)).astype(np.float32)
    quick = geometry.report(model, x, budget="quick", progress=False)
    dense = geometry.report(model, x, progress=False).table.set_index("layer")
    table = quick.table.set_index("layer")
    assert table.loc["fc1", "route"] == "matrix-free" and np.isnan(table.loc["fc1", "rank_median"])
    assert table.loc["fc2", "route"] == "dense" and table.loc["tanh", "route"] == "dense"  # activations: dense
    assert quick.settings["matrix_free_rows"] == ["fc1"]
    error = table.loc["fc1", "log_volume_error"]
    assert 0 <= error and abs(table.loc["fc1", "log_volume_median"] - dense.loc["fc1", "log_volume_median"]) <= \
        3 * error + 1e-4
