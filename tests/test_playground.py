"""The playground without a browser: its numbers against hand-written references, its refusals,
its export, and a server that keeps serving through bad requests."""

import base64
import dataclasses
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import grid_warp
from geometry import activations, regions, spectra
from geometry.training import CheckpointError
from playground import config as configuration
from playground import datasets, export, network, security, views, warp
from playground.server import Server
from playground.session import MAX_PENDING_STEPS, Run, Session, encode_maps

SMALL = configuration.Config(dataset="moons", layers=("relu", "tanh", "leaky_relu"), width=8, resolution=64,
                             probe_layer=2, steps_per_update=20)


# ---------- config ----------
def test_config_round_trips_through_the_url():
    config = configuration.parse({"dataset": "xor", "layers": "gelu,yat,none", "width": "17", "residual": "1",
                                  "learning_rate": "0.003", "probe_layer": 4})
    assert config.layers == ("gelu", "yat", "none") and config.width == 17 and config.residual
    assert configuration.from_query(configuration.to_query(config)) == config


@pytest.mark.parametrize("fields, message", [
    ({"layers": ["relu", "swish2"]}, "unknown activation 'swish2'; valid: none, relu"),
    ({"width": 0}, "width must be in [1, 256], got 0"),
    ({"width": 10**6}, "width must be in [1, 256], got 1000000"),
    ({"width": 2.5}, "width must be a whole number"),
    ({"learning_rate": "nan"}, "learning_rate must be in"),
    ({"layers": ["relu"] * 9}, "depth must be between 0 and 8 layers, got 9"),
    ({"features": "x1,x3"}, "unknown feature 'x3'; valid: x1, x2, x1sq"),
    ({"features": ""}, "choose at least one input feature"),
    ({"problem": "regression"}, "dataset 'spiral' is a classification set; for regression use one of plane"),
    ({"dataset": "sine_ridge"}, "dataset 'sine_ridge' is a regression set; set problem=regression"),
    ({"problem": "ranking"}, "unknown problem 'ranking'; valid: classification, regression"),
    ({"regularization": "l3"}, "unknown regularization 'l3'; valid: none, l1, l2"),
    ({"regularization_rate": -1}, "regularization_rate must be in [0, 10]"),
    ({"batch_size": 513}, "batch_size must be in [0, 512]"),
    ({"train_percent": 95}, "train_percent must be in [10, 90]"),
    ({"discretize": "perhaps"}, "discretize must be true or false"),
    ({"dataset": "mnist"}, "unknown dataset 'mnist'; valid: linear"),
    ({"depth": 3}, "unknown field 'depth'; valid: batch_size, dataset"),
    ({"residual": "maybe"}, "residual must be true or false"),
    ({"resolution": 100}, "resolution must be one of 64, 96, 128, 192, 256"),
])
def test_config_refusals_name_the_field_and_the_range(fields, message):
    with pytest.raises(configuration.ConfigError, match=None) as caught:
        configuration.parse(fields)
    assert message in str(caught.value)


def test_new_controls_round_trip_through_the_url():
    config = configuration.parse({"problem": "regression", "dataset": "gaussian_bump", "features": "x2,x1x2,sinx1",
                                  "layers": "", "batch_size": "16", "train_percent": "50", "regularization": "l1",
                                  "regularization_rate": "0.003", "discretize": "1", "noise": "0"})
    assert config.features == ("x2", "x1x2", "sinx1") and config.layers == () and config.probe_layer == 1
    assert (config.batch_size, config.train_percent, config.regularization, config.discretize) == (16, 50, "l1", True)
    assert configuration.from_query(configuration.to_query(config)) == config
    # features come back in one canonical order, whatever order they were clicked in
    assert configuration.parse({"features": "sinx2,x1"}).features == ("x1", "sinx2")


def test_probe_layer_follows_a_shallower_net():
    assert configuration.parse({"layers": ["relu"], "probe_layer": 5}).probe_layer == 2


# ---------- data ----------
def _csv(rows, header="a,b,c,label"):
    return (header + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows) + "\n").encode()


def test_csv_of_any_dimension_lands_on_its_principal_plane():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3)) * [3.0, 1.0, 0.1]
    y = np.repeat([0, 1, 2], 30)
    parsed = datasets.parse_csv(_csv(np.column_stack([x, y]).tolist()), "three.csv")
    dataset = datasets.load("csv", noise=0.0, seed=0, upload=parsed)
    assert dataset.classes == 3 and len(dataset.x_train) + len(dataset.x_test) == 90
    assert dataset.x_train.shape[1] == 2 and dataset.axis_labels[0].startswith("PC1")
    everything = np.concatenate([dataset.x_train, dataset.x_test])
    np.testing.assert_allclose(everything[:, 0].std(), 1.0, rtol=1e-5)  # the stated scaling
    np.testing.assert_allclose(everything.mean(axis=0), 0.0, atol=1e-5)  # the plane passes through the mean


def test_a_two_column_csv_in_huge_units_is_standardised():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2)) * [3e20, 1e20] + 5e20
    parsed = datasets.parse_csv(_csv(np.column_stack([x, np.arange(60) % 2]).tolist(), "a,b,label"), "big.csv")
    dataset = datasets.load("csv", noise=0.0, seed=0, upload=parsed)
    everything = np.concatenate([dataset.x_train, dataset.x_test])
    np.testing.assert_allclose(everything.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.mean(everything**2)), 1.0, rtol=1e-5)  # one common scale
    ratio = everything[:, 0].std() / everything[:, 1].std()
    np.testing.assert_allclose(ratio, x[:, 0].std() / x[:, 1].std(), rtol=1e-4)  # the aspect ratio kept
    assert dataset.axis_labels[0].endswith("(standardised)")


def test_digits_are_drawn_on_their_principal_plane():
    dataset = datasets.load("digits", noise=0.0, seed=0)
    assert dataset.classes == 10 and len(dataset.x_train) + len(dataset.x_test) == 1797
    assert dataset.axis_labels[0].startswith("PC1") and dataset.x_train.shape[1] == 2


@pytest.mark.parametrize("text, message", [
    (b"a,b,label\n1,2,0\n3,4\n", "bad.csv: line 3"),
    (b"", "bad.csv: the file is empty"),
    (b"\xff\xfe\x00a", "bad.csv: not a UTF-8 text file"),
    (b"a,label\n" + b"".join(b"%d,%d\n" % (i, i % 2) for i in range(20)), "needs at least two"),
    (b"a,b,label\n" + b"".join(b"%d,%d,%d\n" % (i, -i, i) for i in range(25)), "25 classes"),
    (b"a,b,label\n1,2,0\n2,1,1\n", "give at least 10 examples"),
    (b"a,b,label\n1,x,0\n", "bad.csv: line 2"),
])
def test_broken_csv_files_are_refused_by_line(text, message):
    with pytest.raises(ValueError) as caught:
        datasets.parse_csv(text, "bad.csv")
    assert message in str(caught.value)


# ---------- the numbers of a frame, against references ----------
@pytest.fixture(scope="module")
def trained_run():
    run = Run(SMALL, None, 1)
    for _ in range(3):
        run.train()
    return run


def _reference_layers(model, x):
    """Hidden outputs and pre-activations of the playground net, written out by hand."""
    outputs, pre = [], []
    h = x
    for layer in model.layers:
        bias = np.asarray(layer.dense.bias[...])
        z = h @ np.asarray(layer.dense.weight[...]).T + bias.reshape((1,) * (h.ndim - 1) + bias.shape)
        pre.append(z)
        h = layer.activation.activation.fn(z)
        outputs.append(h)
    return outputs, pre


def test_maps_match_a_hand_written_jacobian(trained_run):
    run = trained_run
    state = nnx.state(run.model)
    maps = jax.device_get(run.views.maps(state, run.views.grid))
    points = run.views.grid[::97]  # 43 grid points across the map

    def layer_two(x):
        return _reference_layers(run.model, x)[0][1]

    J = jax.vmap(jax.jacrev(layer_two))(jnp.asarray(points))  # (P, 8, 2), the other mode on purpose
    reference = spectra.summary(J)
    np.testing.assert_array_equal(maps["rank"][::97], reference["numerical_rank"])
    np.testing.assert_allclose(maps["sigma_min"][::97], reference["sigma_min"], rtol=2e-5, atol=1e-6)
    finite = np.isfinite(reference["log_volume"])
    np.testing.assert_allclose(maps["log_volume"][::97][finite], reference["log_volume"][finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.isfinite(maps["log_volume"][::97]), finite)
    logits = jax.vmap(run.model)(jnp.asarray(run.views.grid))
    np.testing.assert_array_equal(maps["class"], np.argmax(logits, axis=-1))


def test_linear_regions_count_the_distinct_sign_patterns(trained_run):
    run = trained_run
    maps = jax.device_get(run.views.maps(nnx.state(run.model), run.views.grid))
    ids, count = views.region_ids(np.asarray(maps["region_hash"]))
    _, pre = _reference_layers(run.model, jnp.asarray(run.views.grid))
    patterns = np.concatenate([np.asarray(pre[0]) > 0, np.asarray(pre[2]) > 0], axis=1)  # relu, leaky relu layers
    unique, inverse = np.unique(patterns, axis=0, return_inverse=True)
    assert count == len(unique) > 10
    # the same partition: a region id determines the pattern and vice versa
    pairs = set(zip(ids.tolist(), inverse.reshape(-1).tolist()))
    assert len(pairs) == count


def test_a_piecewise_linear_net_shows_its_exact_partition():
    config = dataclasses.replace(SMALL, layers=("relu", "none", "leaky_relu"), width=8)
    run = Run(config, None, 1)
    run.train()
    frame = run.frame(running=False)
    exact = run.exact_regions  # what GET /api/regions serves; the frame carries its count and version
    assert frame["maps"]["exact_regions"] == {"count": exact["count"], "version": exact["version"]}
    x0, x1, y0, y1 = run.data.bounds
    reference = regions.partition(run.model, ((x0, y0), (x1, y1)))
    assert exact["count"] == len(reference) >= frame["maps"]["regions"]["count"] > 1  # exact ≥ the grid's count
    counts = np.frombuffer(base64.b64decode(exact["counts"]), np.uint8)
    vertices = np.frombuffer(base64.b64decode(exact["vertices"]), "<f4").reshape(-1, 2)
    np.testing.assert_array_equal(counts, reference.counts)
    np.testing.assert_allclose(vertices, np.concatenate(reference.polygons), rtol=1e-6, atol=1e-6)
    # the trained run with a tanh layer is not piecewise linear: the grid's count, no polygons
    smooth = Run(SMALL, None, 1).frame(running=False)["maps"]
    assert smooth["exact_regions"] is None and smooth["regions"]["count"] >= 1


def test_layer_numbers_match_float64_references(trained_run):
    run = trained_run
    rows = run.views.layer_numbers(nnx.state(run.model))
    sample = run.views.sample.astype(np.float64)
    outputs, pre = _reference_layers(run.model, jnp.asarray(run.views.sample))
    previous = sample
    for row, H, z, kind in zip(rows, outputs, pre, SMALL.layers):
        H, z = np.asarray(H, np.float64), np.asarray(z)
        centred = H - H.mean(0)
        sigma = np.linalg.svd(centred, compute_uv=False)
        assert row["rank"] == int(np.sum(sigma > max(centred.shape) * np.finfo(np.float32).eps * sigma[0]))
        p = sigma / sigma.sum()
        np.testing.assert_allclose(row["effective_rank"], np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))), rtol=1e-4)
        derivative = np.asarray(activations.get(network.activation_name(kind)).derivative(jnp.asarray(z)))
        assert row["dead_units"] == int(np.sum(np.all(derivative == 0, axis=0)))
        np.testing.assert_allclose(row["saturated"], np.mean(np.abs(derivative) < views.SATURATION), atol=1e-6)

        def linear_cka(a, b):
            a, b = a - a.mean(0), b - b.mean(0)
            return np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))

        np.testing.assert_allclose(row["cka_input"], linear_cka(sample, H), rtol=1e-5)
        np.testing.assert_allclose(row["cka_previous"], linear_cka(previous, H), rtol=1e-5)
        assert row["jacobian_rank"] == 2.0 or kind == "relu"  # tanh, leaky relu: full rank everywhere
        previous = H


def test_w_total_is_the_net_without_activations():
    config = dataclasses.replace(SMALL, layers=("none", "none", "none"), residual=True)
    model = network.build(config, 2, 3)
    total = network.linear_total(model)  # (3, 2)
    x = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)
    affine = np.asarray(jax.vmap(model)(x)) - np.asarray(model(np.zeros(2, np.float32)))
    np.testing.assert_allclose(affine, x @ total.T, rtol=1e-5, atol=1e-5)
    assert views.linear_collapse(model, config)["rank"] == 2
    kernel = network.build(dataclasses.replace(config, layers=("yat", "none")), 2, 2)
    assert views.linear_collapse(kernel, config)["rank"] is None


def test_encoded_maps_keep_singular_points_apart():
    maps = {"class": np.array([0, 1, 1, 0]), "confidence": np.array([0.5, 1.0, 0.75, 0.6]),
            "log_volume": np.array([-np.inf, 0.0, 1.0, 2.0]), "sigma_min": np.array([0.0, 1.0, 2.0, 3.0]),
            "rank": np.array([1, 2, 2, 2])}
    encoded = encode_maps(maps, datasets.Data("toy", *([np.zeros((1, 2))] * 4), 2, (0, 1, 0, 1), ("x", "y")))
    codes = np.frombuffer(base64.b64decode(encoded["log_volume"]["data"]), np.uint8)
    assert codes[0] == views.SINGULAR and codes[1:].max() <= 254
    assert encoded["log_volume"]["singular_fraction"] == 0.25


def test_training_learns_and_a_diverging_run_says_so(trained_run, monkeypatch):
    history = trained_run.history
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["train_accuracy"] > 0.8
    run = Run(SMALL, None, 1)
    params_before = jax.device_get(run.params)
    from geometry import training
    monkeypatch.setattr(training, "train_step", lambda g, p, r, o, b, **k: (p, o, jnp.float32(np.nan)))
    with pytest.raises(FloatingPointError, match="training diverged at step 20 .*lower the learning rate"):
        run.train()
    assert run.step == 0  # nothing of the diverged update is kept
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(run.params), params_before)


# ---------- export ----------
def test_export_round_trip_and_corruption(trained_run, tmp_path):
    run = trained_run
    body = export.to_zip(run.config, run.data.classes, jax.device_get((run.params, run.rest)), run.data.x_train[:8])
    path = tmp_path / "model.zip"
    path.write_bytes(body)
    model, config, meta = export.load(path)
    assert config == run.config and meta["classes"] == 2
    x = run.data.x_test
    np.testing.assert_allclose(jax.vmap(model)(x), jax.vmap(run.model)(x), rtol=1e-6, atol=1e-6)

    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a playground export"):
        export.load(tmp_path / "junk.zip")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "tampered.zip", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                meta = json.loads(data)
                meta["check_logits"][0][0] += 1.0
                data = json.dumps(meta).encode()
            target.writestr(item, data)
    with pytest.raises(CheckpointError, match="does not reproduce its recorded logits"):
        export.load(tmp_path / "tampered.zip")


def _export_with(path, tmp_path, name, extra):
    """A copy of the export at `path` with the members `extra` {name: bytes} added."""
    target = tmp_path / name
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for item in source.infolist():
            out.writestr(item, source.read(item))
        for member, data in extra.items():
            out.writestr(member, data)
    return target


def test_import_refuses_zip_bombs_and_hostile_members(trained_run, tmp_path):
    run = trained_run
    path = tmp_path / "model.zip"
    path.write_bytes(export.to_zip(run.config, run.data.classes, jax.device_get((run.params, run.rest)),
                                   run.data.x_train[:8]))
    bomb = _export_with(path, tmp_path, "bomb.zip", {"checkpoint/zeros": b"\0" * (export.MAX_MEMBER_BYTES + 1)})
    assert bomb.stat().st_size < 200_000  # a small file that would unpack to 32 MiB
    with pytest.raises(CheckpointError, match="unpacks past the limits"):
        export.load(bomb)
    many = _export_with(path, tmp_path, "many.zip", {f"junk/{i}": b"" for i in range(export.MAX_MEMBERS)})
    with pytest.raises(CheckpointError, match=r"members; an export has at most 256"):
        export.load(many)
    for name in ("../escape", "/abs/path", "checkpoint/../../escape"):
        hostile = _export_with(path, tmp_path, "hostile.zip", {name: b"x"})
        with pytest.raises(CheckpointError, match="is not a plain relative path"):
            export.load(hostile)
    assert not (tmp_path.parent / "escape").exists()


@pytest.mark.parametrize("change", [
    lambda meta: [1, 2], lambda meta: {**meta, "config": "relu"}, lambda meta: {**meta, "classes": 0},
    lambda meta: {**meta, "classes": "2"}, lambda meta: {**meta, "in_features": 3},
    lambda meta: {**meta, "check_points": [[1.0]]}, lambda meta: {**meta, "check_logits": "x"},
    lambda meta: {k: v for k, v in meta.items() if k != "check_points"},
])
def test_a_tampered_config_json_is_a_checkpoint_error(trained_run, tmp_path, change):
    run = trained_run
    path = tmp_path / "model.zip"
    path.write_bytes(export.to_zip(run.config, run.data.classes, jax.device_get((run.params, run.rest)),
                                   run.data.x_train[:8]))
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "tampered.zip", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                data = json.dumps(change(json.loads(data))).encode()
            target.writestr(item, data)
    with pytest.raises(CheckpointError, match="unreadable config.json"):
        export.load(tmp_path / "tampered.zip")


def test_pause_stops_queued_steps():
    session = Session(dataclasses.replace(SMALL, steps_per_update=1))
    try:
        _wait(lambda: session.run.layer_rows is not None)  # the first frame
        session.control("pause")
        for _ in range(300):
            session.control("step")
        session.control("pause")
        step = session.run.step
        time.sleep(1.0)
        assert session.run.step - step <= 1  # at most the update running when pause came
        assert session.pending_steps == 0
        for _ in range(300):  # a flood of steps queues at most MAX_PENDING_STEPS
            session.control("step")
        assert session.pending_steps <= MAX_PENDING_STEPS
    finally:
        session.close()


def _wait(condition, seconds=60.0):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_uploads_and_config_changes_racing_keep_data_and_name_together():
    session = Session(SMALL)
    rng = np.random.default_rng(0)
    uploads = {name: (rng.normal(size=(rows, 2)).astype(np.float32), np.arange(rows) % 2)
               for name, rows in (("a.csv", 40), ("b.csv", 60))}  # told apart by their size
    try:
        csv_config = session.upload_data(uploads["a.csv"], "a.csv")
        threads = [threading.Thread(target=session.upload_data, args=(uploads[name], name)) for name in uploads]
        threads += [threading.Thread(target=session.configure, args=(dataclasses.replace(csv_config, width=5),))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with session.lock:
            name, run = session.upload_name, session.run
        trained_on = len(run.data.x_train) + len(run.data.x_test)
        assert len(uploads[name][0]) == trained_on, (name, trained_on)  # the page's name is the data trained on
        session.configure(dataclasses.replace(run.config, width=7))
        config = session.upload_data(uploads["a.csv"], "a.csv")
        assert config.width == 7 and session.run.config.width == 7  # the width change is kept by the upload
    finally:
        session.close()


# ---------- the grid-and-disk widget ----------
def test_warp_reports_grid_warps_own_measure():
    view = warp.view("relu", 30)
    measured = grid_warp.measure("relu", np.radians(30.0), grid_warp.disk_points(warp.MEASURE_GRID))
    assert view["folded"] == measured["folded"]
    assert abs(view["folded"] - 0.75) < 0.01 and view["theory_folded"] == 0.75
    np.testing.assert_allclose(view["disk"], np.round(grid_warp.image("relu", np.radians(30.0),
                                                                      grid_warp.disk_points(warp.DRAW_GRID)), 4))
    with pytest.raises(configuration.ConfigError, match="unknown activation 'yat'"):
        warp.view("yat", 0)
    with pytest.raises(configuration.ConfigError, match="angle must be"):
        warp.view("relu", "nan")


# ---------- the server ----------
@pytest.fixture(scope="module")
def _module_server():
    server = Server(0, SMALL)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(_module_server):
    """The module's server, paused after each test: a run left training would take the CPU from the tests
    after it (the Ctrl-C test's subprocess compiled so slowly under it that it missed its 60 s)."""
    yield _module_server
    _module_server.session.control("pause")


def _request(server, method, path, body=None, headers=None):
    """A request as the playground's own page sends it: its token in the header, JSON bodies."""
    headers = {security.TOKEN_HEADER: server.token, "Content-Type": "application/json", **(headers or {})}
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def _json_of(data):
    return json.loads(data)


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/api/config", b'{"layers": ["relu", "swish2"]}', 400, "unknown activation 'swish2'"),
    ("POST", "/api/config", b'{"width": 0}', 400, "width must be in [1, 256]"),
    ("POST", "/api/config", b'{"width": 1000000}', 400, "width must be in [1, 256]"),
    ("POST", "/api/config", b"{not json", 400, "the body is not JSON"),
    ("POST", "/api/config", b"[1, 2]", 400, "must be a JSON object"),
    ("POST", "/api/config", b'{"width": 1e309}', 400, "width must be a number in [1, 256], got inf"),
    ("POST", "/api/config", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("POST", "/api/control", b'{"action": "explode"}', 400, "unknown action 'explode'"),
    ("POST", "/api/upload", b'{"name": "bad.csv", "csv": "a,b,label\\n1,2,0\\n3,4\\n"}', 400, "bad.csv: line 3"),
    ("POST", "/api/upload", b'{"name": "../../etc", "csv": "a,b\\n"}', 400, "the file name must be"),
    ("POST", "/api/upload", b'{"name": "a.csv", "csv": 3}', 400, 'send the file as {"name"'),
    ("GET", "/api/warp?activation=relu&angle=abc", None, 400, "angle must be a number"),
    ("GET", "/api/nothing", None, 404, "GET /api/nothing is not served"),
    ("GET", "/api/config", None, 405, "use POST"),
    ("PUT", "/api/config", b"{}", 405, "is not served"),
])
def test_bad_requests_get_a_4xx_with_a_message(server, method, path, body, status, message):
    got, data = _request(server, method, path, body, {"Content-Type": "application/json"})
    assert got == status
    assert message in _json_of(data)["error"]


def test_the_server_survives_garbage_and_keeps_its_run(server):
    before = _json_of(_request(server, "GET", "/api/frame")[1])["config"]
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as raw:
        raw.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")
        reply = b""
        while chunk := raw.recv(1000):  # the server closes the connection after its answer
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 400") and b'{"error": "400 Bad request' in reply
    _request(server, "POST", "/api/config", b'{"width": 0}')
    status, data = _request(server, "GET", "/api/frame")
    assert status == 200 and _json_of(data)["config"] == before  # the refused config changed nothing


def test_events_stream_frames_and_a_new_config_retrains(server):
    status, data = _request(server, "POST", "/api/config", json.dumps({**configuration.as_json(SMALL),
                                                                        "layers": ["tanh", "tanh"]}).encode())
    assert status == 200 and "layers=tanh%2Ctanh" in _json_of(data)["query"]
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    connection.request("GET", "/api/events", headers={security.TOKEN_HEADER: server.token})
    response = connection.getresponse()
    assert response.getheader("Content-Type") == "text/event-stream"
    steps, deadline = [], time.time() + 60
    while len(steps) < 3 and time.time() < deadline:
        line = response.fp.readline().decode()
        if line.startswith("data: "):
            frame = json.loads(line[6:])
            assert frame["config"]["layers"] == ["tanh", "tanh"]
            steps.append(frame["step"])
    connection.close()
    assert len(steps) == 3 and steps[-1] > steps[0]  # training runs after a new config


def test_export_endpoints(server, tmp_path):
    status, data = _request(server, "GET", "/api/export/model")
    assert status == 200
    (tmp_path / "m.zip").write_bytes(data)
    model, config, _ = export.load(tmp_path / "m.zip")
    status, numbers = _request(server, "GET", "/api/export/numbers")
    assert status == 200 and _json_of(numbers)["linear_collapse"]["shape"][1] == 2
    assert isinstance(model, network.Net) and config.width == SMALL.width


def test_concurrent_exports_all_succeed_and_leave_nothing_behind(server, tmp_path):
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    before = set(Path(tempfile.gettempdir()).iterdir())
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: _request(server, "GET", "/api/export/model"), range(12)))
    for i, (status, data) in enumerate(replies):
        assert status == 200, data[:200]
        (tmp_path / f"{i}.zip").write_bytes(data)
        export.load(tmp_path / f"{i}.zip")  # each one a complete, loadable checkpoint
    assert not set(Path(tempfile.gettempdir()).iterdir()) - before - {tmp_path.parent}


# A test run started in the background (`cmd &` in a script) ignores SIGINT, and a child inherits that: Python
# then installs no KeyboardInterrupt handler and Ctrl-C would never reach the server. The child restores Python's
# handler itself before running `python -m playground` (a preexec_fn would make subprocess fork a process that
# JAX has made multithreaded, which JAX warns against and which crashed a later compilation once).
INTERRUPTIBLE = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); sys.argv[0] = 'playground'; "
                 "runpy.run_module('playground', run_name='__main__')")


def test_command_line_serves_and_stops_on_ctrl_c():
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, "--no-browser", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("playground: serving http://127.0.0.1:"), line
        address = urlsplit(line.split()[2])
        token = parse_qs(address.query)["token"][0]
        assert len(token) >= 40  # 256 random bits, URL-safe base64
        for path, status in ((f"/?token={token}", 200), ("/", 403), ("/?token=wrong", 403)):
            connection = http.client.HTTPConnection("127.0.0.1", address.port, timeout=60)
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == status and b"layer-geometry playground" in response.read()
            connection.close()
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"no exit 60 s after Ctrl-C; its output: {process.stdout.read()[-3000:]}") from None
        assert code == 0
        assert "playground: stopped" in process.stdout.read()
    finally:  # never leave the server running, whatever failed above
        process.kill()
        process.wait(timeout=60)
        process.stdout.close()
    refused = subprocess.run([sys.executable, "-m", "playground", "--no-browser", "--port", "70000"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--port must be in [0, 65535]" in refused.stderr


# ---------- TensorFlow Playground's controls and the per-neuron views ----------
def test_regression_sets_follow_their_formulas():
    from geometry import data

    x, y = data.make_regression("sine_ridge", 300, noise=0.0, seed=4)
    np.testing.assert_allclose(y, np.sin(x[:, 0].astype(np.float64) + x[:, 1]), atol=1e-6)
    x, y = data.make_regression("abs_crease", 300, noise=0.0, seed=4)
    np.testing.assert_allclose(y, np.abs(x[:, 0].astype(np.float64) - x[:, 1]) / 3 - 1, atol=1e-6)
    x, noisy = data.make_regression("gaussian_bump", 20000, noise=0.4, seed=1)
    residual = noisy - np.exp(-0.5 * np.sum(x.astype(np.float64) ** 2, axis=1))
    np.testing.assert_allclose(residual.std(), 0.2, rtol=0.03)  # noise · N(0, 1) / 2; 20000 draws: 1% spread
    assert np.all(np.abs(x) <= 3)


def test_a_regression_csv_keeps_real_targets_and_a_classification_run_refuses_them():
    text = _csv([[i, i % 7, (i * 3) % 11, 0.25 * i] for i in range(30)])
    x, y = datasets.parse_csv(text, "ridge.csv", "regression")
    np.testing.assert_allclose(y, 0.25 * np.arange(30))
    with pytest.raises(ValueError, match="line 3: target 'oops' is not a number"):
        datasets.parse_csv(_csv([[1, 2, 3, 0.5], [4, 5, 6, "oops"]]), "bad.csv", "regression")
    with pytest.raises(ValueError, match="targets are real numbers"):
        datasets.load("csv", noise=0, seed=0, upload=(x, y), problem="classification")


@pytest.mark.parametrize("kind, rate", [("l1", 0.03), ("l2", 0.1)])
def test_regularised_loss_is_the_data_term_plus_the_penalty(kind, rate):
    from playground.objective import Objective

    config = dataclasses.replace(SMALL, regularization=kind, regularization_rate=rate)
    model = network.build(config, 2, 3)
    x = np.random.default_rng(2).normal(size=(16, 2)).astype(np.float32)
    y = np.arange(16, dtype=np.int32) % 3
    weights = [np.asarray(layer.dense.weight[...], np.float64) for layer in model.layers]
    weights.append(np.asarray(model.readout.weight[...], np.float64))
    penalty = sum(np.abs(w).sum() for w in weights) if kind == "l1" else sum(0.5 * (w**2).sum() for w in weights)
    logits = np.asarray(jax.vmap(model)(x), np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    cross_entropy = -np.mean(shifted[np.arange(16), y] - np.log(np.exp(shifted).sum(1)))
    loss = Objective("classification", kind)(model, (x, y, jnp.float32(rate)))
    np.testing.assert_allclose(float(loss), cross_entropy + rate * penalty, rtol=1e-5)
    # the gradient of the penalty with respect to a weight is rate · sign(w) (L1) or rate · w (L2)
    readout = np.asarray(model.readout.weight[...], np.float64)
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    gradient = jax.grad(lambda p: Objective("classification", kind)(nnx.merge(graph, p, rest), (x, y, jnp.float32(rate)))
                        - Objective("classification", "none")(nnx.merge(graph, p, rest), (x, y, jnp.float32(rate))))(params)
    expected = rate * (np.sign(readout) if kind == "l1" else readout)
    np.testing.assert_allclose(np.asarray(gradient["readout"]["weight"][...]), expected, rtol=1e-5, atol=1e-7)
    assert not np.any(np.asarray(gradient["readout"]["bias"][...]))  # biases are not penalised


def test_feature_maps_are_taken_on_the_plane_through_the_chain_rule():
    # no hidden layer, features (x1², x2², sin x1), one regression output: ∂y/∂x = w ∘ (2x1, 2x2, cos x1) by hand
    config = configuration.parse({"problem": "regression", "dataset": "gaussian_bump", "layers": "", "resolution": 64,
                                  "features": "x1sq,x2sq,sinx1"})
    run = Run(config, None, 1)
    maps = jax.device_get(run.views.maps(nnx.state(run.model), run.views.grid))
    w = np.asarray(run.model.readout.weight[...], np.float64)[0]  # (3,)
    g = run.views.grid.astype(np.float64)
    J = np.stack([2 * w[0] * g[:, 0] + w[2] * np.cos(g[:, 0]), 2 * w[1] * g[:, 1]], axis=1)  # (G, 2)
    np.testing.assert_allclose(maps["sigma_min"], np.linalg.norm(J, axis=1), rtol=1e-5, atol=1e-6)  # 1 × 2: σ = ‖J‖
    value = w[0] * g[:, 0] ** 2 + w[1] * g[:, 1] ** 2 + w[2] * np.sin(g[:, 0]) + float(run.model.readout.bias[...][0])
    np.testing.assert_allclose(maps["value"], value, rtol=1e-5, atol=1e-5)
    assert not run.views.exact  # squares and sines: no exact partition, the grid's lower bound instead


def test_per_neuron_marks_and_maps_match_a_hand_written_forward_pass():
    config = dataclasses.replace(SMALL, layers=("relu", "tanh", "relu"), width=12, seed=3)
    run = Run(config, None, 1)
    for _ in range(3):
        run.train()
    frame = run.frame(running=False)
    raw = jax.device_get(run.views.maps(nnx.state(run.model), run.views.grid))
    view = views.neurons(raw, run.model, config)
    _, pre = _reference_layers(run.model, jnp.asarray(run.views.grid))
    for l, (layer, kind) in enumerate(zip(view["layers"], config.layers)):
        z = np.asarray(pre[l], np.float64)
        derivative = np.asarray(activations.get(kind).derivative(jnp.asarray(pre[l])), np.float64)
        dead = np.all(derivative == 0, axis=0)
        saturated = np.mean(np.abs(derivative) < views.SATURATION, axis=0) > views.SATURATED_UNIT
        expected = ["dead" if d else "saturated" if s else "live" for d, s in zip(dead, saturated)]
        assert layer["marks"] == expected, (l, kind)
        if kind == "relu":
            assert layer["marks"].count("dead") == int(np.sum(np.all(z <= 0, axis=0)))
        row = frame["layers"][l]  # the table's grid columns count the same marks
        assert (row["dead_units_grid"], row["saturated_units_grid"]) == (expected.count("dead"),
                                                                          expected.count("saturated"))
        np.testing.assert_allclose(layer["weights"], np.asarray(run.model.layers[l].dense.weight[...]), rtol=1e-6)
    # the small maps decode to the activations on the neuron grid, within half a code step
    outputs, _ = _reference_layers(run.model, jnp.asarray(run.views.neuron_grid))
    for l, layer in enumerate(view["layers"]):
        h = np.asarray(outputs[l], np.float64).T  # (units, g²)
        lo, hi = np.array(layer["activation"]["lo"]), np.array(layer["activation"]["hi"])
        decoded = lo[:, None] + layer["activation"]["data"] / 254 * (hi - lo)[:, None]
        np.testing.assert_allclose(decoded, h, atol=float(np.max(hi - lo)) / 254 * 0.51 + 1e-6)
    encoded = frame["network"]  # what the page gets: the same marks, base64 maps and float32 weights
    assert [layer["marks"] for layer in encoded["layers"]] == [layer["marks"] for layer in view["layers"]]
    for layer, sent in zip(view["layers"], encoded["layers"]):
        weights = np.frombuffer(base64.b64decode(sent["weights"]["data"]), "<f4").reshape(sent["weights"]["shape"])
        np.testing.assert_array_equal(weights, layer["weights"].astype(np.float32))


def test_geometry_history_records_the_table_against_step_and_l2_shrinks_the_weights():
    base = dataclasses.replace(SMALL, layers=("relu", "relu"), width=16, steps_per_update=20, learning_rate=0.03)
    norms = {}
    for kind, rate in (("none", 0.0), ("l2", 0.1)):
        run = Run(dataclasses.replace(base, regularization=kind, regularization_rate=rate), None, 1)
        for _ in range(5):
            run.train()
            run.frame(running=False)
        norms[kind] = run.history[-1]["weight_norm"]
        steps = [entry["step"] for entry in run.geometry_history]
        assert steps == [20, 40, 60, 80, 100]
        last = run.geometry_history[-1]["layers"]
        assert [row["rank"] for row in last] == [row["rank"] for row in run.layer_rows]
        expected = np.sqrt(sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in
                               [layer.dense.weight[...] for layer in run.model.layers] + [run.model.readout.weight[...]]))
        np.testing.assert_allclose(run.history[-1]["weight_norm"], expected, rtol=1e-5)
    assert norms["l2"] < 0.8 * norms["none"]


def test_minibatches_follow_the_seeded_schedule():
    from geometry import training
    from playground.objective import Objective
    from playground.session import OPTIMIZER

    config = dataclasses.replace(SMALL, batch_size=32, steps_per_update=4)
    run = Run(config, None, 1)
    run.train()
    reference = Run(config, None, 1)
    params, opt_state = reference.params, reference.opt_state
    x, y = reference.data.x_train, reference.data.y_train
    for step in range(4):
        idx = training.batch_indices(step, len(x), 32, config.seed)
        params, opt_state, _ = training.train_step(reference.graphdef, params, reference.rest, opt_state,
                                                   (x[idx], y[idx], jnp.float32(0.0)),
                                                   loss_fn=Objective("classification", "none"), optimizer=OPTIMIZER)
    for a, b in zip(jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_a_regression_net_with_feature_crosses_exports_and_scores_by_hand(tmp_path):
    config = configuration.parse({"problem": "regression", "dataset": "plane", "features": "x1,x2,x1x2",
                                  "layers": "tanh", "width": 6, "resolution": 64})
    run = Run(config, None, 1)
    run.train()
    state = nnx.state(run.model)
    predicted = np.asarray(jax.vmap(run.model)(run.data.x_test), np.float64)[:, 0]
    np.testing.assert_allclose(run.views.scores(state)["test_mse"], np.mean((predicted - run.data.y_test) ** 2),
                               rtol=1e-5)
    body = export.to_zip(run.config, run.data.classes, jax.device_get((run.params, run.rest)), run.data.x_train[:8])
    (tmp_path / "regression.zip").write_bytes(body)
    model, loaded, meta = export.load(tmp_path / "regression.zip")
    assert loaded == config and meta["classes"] == 1
    np.testing.assert_allclose(jax.vmap(model)(run.data.x_test), jax.vmap(run.model)(run.data.x_test), rtol=1e-6)
