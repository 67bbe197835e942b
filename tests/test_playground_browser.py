"""The playground page in a real browser: headless Chromium (Debian's `chromium` package) driven by
playwright with `executable_path` set to the system browser (playwright's own download is not used).

Skipped, with the reason, where no browser or no playwright exists. With PLAYGROUND_SCREENSHOTS=DIR
the tests also save the screenshots the README shows.
"""

import base64
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from playground import export
from playground.config import Config
from playground.server import Server

CHROMIUM = os.environ.get("PLAYGROUND_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium) or set PLAYGROUND_CHROMIUM "
                "to a Chrome/Chromium executable", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

# the machine has no network: without these Chromium keeps trying to reach Google's services
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 90_000
SCREENSHOTS = os.environ.get("PLAYGROUND_SCREENSHOTS")


@pytest.fixture(scope="module")
def server():
    server = Server(0, Config(resolution=96))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1250}, accept_downloads=True)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()
    server.session.control("pause")  # a run left training would slow every test after it


def _address(server, query: str = "") -> str:
    """The address the command prints (with the token), plus a link's settings `query` ("?a=1&b=2")."""
    return server.url + ("&" + query.lstrip("?") if query else "")


def _open(page, server, query: str = ""):
    page.goto(_address(server, query))
    _wait_for(page, "f.maps && f.layers && f.layers.length > 0")


def _wait_for(page, condition: str):
    """Wait until `condition` holds of the latest frame `f` the page has drawn."""
    page.wait_for_function(f"(() => {{ const f = window.playground.frame; return !!f && ({condition}); }})()",
                           timeout=TIMEOUT_MS)
    return page.evaluate("window.playground.frame")


def _control(page, action: str):
    page.click(f"#{action}")


def _canvas(page, canvas_id: str) -> str:
    return page.evaluate(f"document.getElementById('{canvas_id}').toDataURL()")


def _screenshot(page, name: str):
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def test_page_loads_without_errors(page, server):
    _open(page, server)
    frame = page.evaluate("window.playground.frame")
    assert page.locator("#layers-table tbody tr").count() == len(frame["config"]["layers"])
    assert page.locator("#error").is_hidden()
    assert "dataset=" in page.url and "layers=" in page.url  # the state is in the address
    assert page.problems == []


def test_training_changes_the_maps(page, server):
    _open(page, server, "?dataset=spiral&layers=relu,relu,relu,relu&width=32&resolution=96&seed=0")
    _control(page, "reset")
    untrained = _wait_for(page, "f.step === 0 && f.status === 'paused' && f.maps")
    before = {name: _canvas(page, f"map-{name}") for name in ("decision", "log_volume", "regions")}
    _control(page, "start")
    trained = _wait_for(page, "f.step >= 300 && f.maps")
    _control(page, "pause")
    _wait_for(page, "f.status === 'paused'")
    for name in ("class", "log_volume", "regions"):
        assert trained["maps"][name]["data"] != untrained["maps"][name]["data"], name
    for name, image in before.items():
        assert _canvas(page, f"map-{name}") != image, name  # what is drawn changed too
    assert trained["history"][-1]["train_accuracy"] > 0.9  # the spiral is learnt
    assert page.locator("#curves").is_visible()
    _screenshot(page, "playground-spiral.png")
    assert page.problems == []


def test_the_region_panel_draws_the_exact_partition_of_a_relu_net(page, server):
    _open(page, server, "?dataset=circles&layers=relu,relu&width=8&resolution=64&seed=1")
    _control(page, "reset")
    frame = _wait_for(page, "f.step === 0 && f.status === 'paused' && f.maps && f.maps.exact_regions")
    count = frame["maps"]["exact_regions"]["count"]
    assert count >= frame["maps"]["regions"]["count"] > 1
    assert page.locator("#legend-regions").inner_text() == f"{count} linear regions (exact partition of the window)"
    # polygons are drawn: the canvas holds about as many distinct fill colours as regions
    colours = page.evaluate("""(() => { const c = document.getElementById('map-regions');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]); return seen.size; })()""")
    assert colours >= min(count, 8)
    page.select_option("#layer-kind-2", "tanh")  # no longer piecewise linear: the grid's lower bound again
    _wait_for(page, "f.config.layers[1] === 'tanh' && f.maps && f.maps.exact_regions === null")
    page.wait_for_function("document.getElementById('legend-regions').textContent.includes('a lower bound')")
    assert page.problems == []


def test_changing_a_control_retrains_and_bad_values_are_refused_in_the_page(page, server):
    _open(page, server, "?dataset=moons&layers=relu,relu&width=16&resolution=64")
    page.select_option("#layer-kind-2", "tanh")
    frame = _wait_for(page, "f.config.layers[1] === 'tanh' && f.step > 0 && f.maps")
    assert frame["config"]["layers"] == ["relu", "tanh"] and "layers=relu%2Ctanh" in page.url
    assert frame["layers"][1]["kind"] == "tanh" and frame["layers"][1]["dead_units"] == 0
    page.fill("#width", "0")
    page.dispatch_event("#width", "change")
    page.wait_for_selector("#error:not([hidden])")
    assert "width must be in [1, 256], got 0" in page.inner_text("#error")
    page.fill("#width", "1000000")
    page.dispatch_event("#width", "change")
    page.wait_for_function("document.getElementById('error').textContent.includes('got 1000000')")
    sequence = page.evaluate("window.playground.frame.sequence")
    later = _wait_for(page, f"f.sequence > {sequence + 2}")  # the server kept running the previous net
    assert later["config"]["width"] == 16 and later["config"]["layers"] == ["relu", "tanh"]


def test_an_uploaded_csv_is_used(page, server, tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[3, 0, 0, 1], [0, 3, 0, -1], [0, 0, 3, 0]], dtype=float)
    x = np.concatenate([c + rng.normal(size=(60, 4)) for c in centres])
    y = np.repeat([0, 1, 2], 60)
    path = tmp_path / "blobs.csv"
    path.write_text("a,b,c,d,label\n" + "\n".join(",".join(f"{v:.5f}" for v in row) + f",{label}"
                                                     for row, label in zip(x, y)) + "\n")
    _open(page, server)
    page.set_input_files("#csv", str(path))
    frame = _wait_for(page, "f.dataset.name === 'csv' && f.dataset.upload === 'blobs.csv' && f.maps && f.step > 0")
    assert frame["dataset"]["classes"] == 3 and frame["dataset"]["train_points"] + frame["dataset"]["test_points"] == 180
    assert frame["dataset"]["axis_labels"][0].startswith("PC1")
    classes = np.frombuffer(base64.b64decode(frame["maps"]["class"]["data"]), np.uint8)
    assert set(np.unique(classes)) <= {0, 1, 2}
    data = page.evaluate("window.playground.data")
    assert len(data["x_train"]) == frame["dataset"]["train_points"] and sorted(set(data["y_train"])) == [0, 1, 2]
    _screenshot(page, "playground-csv.png")

    broken = tmp_path / "broken.csv"
    broken.write_text("a,b,label\n1,2,0\n3,4\n")
    page.set_input_files("#csv", str(broken))
    page.wait_for_function("document.getElementById('error').textContent.includes('line 3')")
    assert "broken.csv" in page.inner_text("#error")
    sequence = page.evaluate("window.playground.frame.sequence")
    later = _wait_for(page, f"f.sequence > {sequence + 2}")
    assert later["dataset"]["upload"] == "blobs.csv"  # the broken file replaced nothing


def test_export_downloads_a_checkpoint_that_loads_back(page, server, tmp_path):
    _open(page, server, "?dataset=circles&layers=gelu,yat&width=12&resolution=64")
    frame = _wait_for(page, "f.config.layers[1] === 'yat' && f.step >= 20")
    _control(page, "pause")
    frame = _wait_for(page, "f.status === 'paused'")
    with page.expect_download() as download:
        page.click("#export-model")
    saved = tmp_path / "model.zip"
    download.value.save_as(saved)
    model, config, meta = export.load(saved)  # raises unless it reproduces its recorded logits
    assert config.layers == ("gelu", "yat") and config.width == 12 and meta["classes"] == 2
    points = np.asarray(page.evaluate("window.playground.data.x_test"), np.float32)
    running = server.session.run  # paused: the net the page exported
    assert running.step == frame["step"]
    np.testing.assert_allclose(jax.vmap(model)(points), jax.vmap(running.model)(points), rtol=1e-6, atol=1e-6)

    with page.expect_download() as download:
        page.click("#export-view")
    png = Path(download.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with page.expect_download() as download:
        page.click("#export-numbers")
    numbers = json.loads(Path(download.value.path()).read_text())
    assert numbers["config"] == frame["config"] and numbers["step"] == frame["step"]
    assert page.problems == []


def test_a_link_with_an_unknown_activation_says_so_and_shows_the_running_net(page, server):
    page.goto(_address(server, "?layers=relu,swish9&width=8"))
    page.wait_for_function("document.getElementById('error').textContent.includes(\"unknown activation 'swish9'\")")
    frame = _wait_for(page, "f.maps")
    assert page.input_value("#width") == str(frame["config"]["width"])  # the controls show what runs
    assert page.locator(".layer-kind").count() == len(frame["config"]["layers"])


def test_the_grid_and_disk_widget(page, server):
    _open(page, server)
    page.wait_for_function("window.playground.warp && window.playground.warp.activation === 'relu'")
    assert abs(page.evaluate("window.playground.warp.folded") - 0.75) < 0.01
    page.click("#warp-tanh")
    page.wait_for_function("window.playground.warp.activation === 'tanh'")
    assert page.evaluate("window.playground.warp.folded") == 0.0
    page.evaluate("const s = document.getElementById('warp-angle'); s.value = '90';"
                  "s.dispatchEvent(new Event('input'))")
    page.wait_for_function("window.playground.warp.angle === 90")
    assert "folded (rank J < 2): 0.000" in page.inner_text("#warp-numbers")
    assert page.problems == []


ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>another site</title>
<form id="form" method="POST" action="TARGET/api/control" target="sink"><input name="action" value="start"></form>
<iframe name="sink"></iframe><iframe id="framed" src="TARGET/"></iframe>
<script>
window.results = {};
async function attempt(name, request) {
  try { const r = await request(); results[name] = r.type === "opaque" ? "opaque" : r.status; }
  catch (error) { results[name] = "blocked"; }
}
(async () => {
  const t = "TARGET";
  // a "simple" request needs no preflight: the browser sends it, with the playground's cookie
  await attempt("text_plain", () => fetch(t + "/api/config", { method: "POST", mode: "no-cors", credentials: "include",
    headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ learning_rate: 1, width: 3 }) }));
  await attempt("upload", () => fetch(t + "/api/upload", { method: "POST", mode: "no-cors", credentials: "include",
    headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ name: "x.csv", csv: "a,b,label\\n" }) }));
  // the token header forces a preflight, which the playground refuses: never sent
  await attempt("json_with_header", () => fetch(t + "/api/control", { method: "POST", credentials: "include",
    headers: { "Content-Type": "application/json", "X-Playground-Token": "guess" }, body: '{"action": "start"}' }));
  // reads: the same-origin policy hides the answer
  await attempt("read_data", () => fetch(t + "/api/data", { credentials: "include" }).then((r) => r.json()));
  document.getElementById("form").submit();
  window.done = true;
})();
</script>"""


# ---------- TensorFlow Playground's controls and the per-neuron views ----------
def test_every_new_control_round_trips_through_the_address(page, server):
    query = ("?problem=regression&dataset=abs_crease&features=x1,x2,x1x2&train_percent=60&batch_size=32"
             "&regularization=l1&regularization_rate=0.003&discretize=1&layers=relu,relu&width=8&resolution=64")
    _open(page, server, query)
    frame = _wait_for(page, "f.config.problem === 'regression' && f.maps && f.maps.value")
    config = frame["config"]
    assert (config["dataset"], config["features"], config["train_percent"], config["batch_size"]) == \
        ("abs_crease", ["x1", "x2", "x1x2"], 60, 32)
    assert (config["regularization"], config["regularization_rate"], config["discretize"]) == ("l1", 0.003, True)
    # the controls show it, the address holds it
    assert page.input_value("#problem") == "regression" and page.input_value("#dataset") == "abs_crease"
    assert page.is_checked("#feature-x1x2") and not page.is_checked("#feature-x1sq") and page.is_checked("#discretize")
    assert page.input_value("#regularization") == "l1" and page.input_value("#batch_size") == "32"
    for part in ("problem=regression", "features=x1%2Cx2%2Cx1x2", "train_percent=60", "batch_size=32",
                 "regularization=l1", "regularization_rate=0.003", "discretize=1"):
        assert part in page.url, part
    assert frame["dataset"]["train_points"] == 240  # 60% of 400
    # a click changes the net and the address; a classification problem starts on its own first data set
    page.click("#feature-sinx1")
    _wait_for(page, "f.config.features.includes('sinx1')")
    page.wait_for_function("location.search.includes('features=x1%2Cx2%2Cx1x2%2Csinx1')")
    page.select_option("#problem", "classification")
    frame = _wait_for(page, "f.config.problem === 'classification' && f.maps && f.maps.class")
    assert frame["config"]["dataset"] == "linear"
    page.wait_for_function("location.search.includes('problem=classification')")
    page.fill("#batch_size", "600")
    page.dispatch_event("#batch_size", "change")
    page.wait_for_function("document.getElementById('error').textContent.includes('batch_size must be in [0, 512]')")
    assert [p for p in page.problems if "status of 400" not in p] == []  # the refusal itself is a logged 400


def test_regression_learns_a_sine_ridge(page, server):
    # sin(x₁ + x₂) on [−3, 3]², no noise: a 2 → 16 ×2 → 1 tanh net reaches train and test MSE < 0.01 (the targets'
    # variance is ≈ 0.5, so 98% of it explained) within a few hundred Adam steps
    _open(page, server, "?problem=regression&dataset=sine_ridge&noise=0&layers=tanh,tanh&width=16"
                        "&learning_rate=0.03&resolution=64&steps_per_update=10")
    _control(page, "start")
    _wait_for(page, "f.history.length > 0 && f.history[f.history.length - 1].test_mse < 0.01 && "
                            "f.history[f.history.length - 1].train_mse < 0.01")
    _control(page, "pause")
    assert "test MSE" in page.inner_text("#status")
    assert "predicted value" in page.inner_text("#legend-decision")
    _screenshot(page, "playground-regression.png")
    assert page.problems == []


def test_l2_shrinks_the_weights(page, server):
    norms = {}
    for rate in ("0", "0.1"):
        _open(page, server, f"?dataset=spiral&layers=relu,relu&width=16&resolution=64&regularization=l2"
                            f"&regularization_rate={rate}&learning_rate=0.03&steps_per_update=20")
        _control(page, "reset")
        _wait_for(page, "f.step === 0 && f.status === 'paused'")
        _control(page, "start")
        frame = _wait_for(page, "f.step >= 400")
        _control(page, "pause")
        record = next(h for h in frame["history"] if h["step"] >= 400)
        norms[rate] = record["weight_norm"]
        assert "‖W‖" in page.inner_text("#status")
    assert norms["0.1"] < 0.5 * norms["0"], norms


def test_feature_crosses_make_circles_separable_with_no_hidden_layer(page, server):
    accuracy = {}
    for features in ("x1,x2", "x1sq,x2sq"):
        page.goto(_address(server, f"?dataset=circles&layers=&features={features}&learning_rate=0.03&resolution=64"
                                   "&steps_per_update=20"))
        _wait_for(page, f"f.config.features.join(',') === '{features}' && f.config.layers.length === 0 && f.maps")
        _control(page, "reset")
        _wait_for(page, "f.step === 0 && f.status === 'paused'")
        _control(page, "start")
        frame = _wait_for(page, "f.step >= 600")
        _control(page, "pause")
        accuracy[features] = frame["history"][-1]["test_accuracy"]
        assert page.locator("#layers-table tbody tr").count() == 0  # no hidden layer
    # a straight line cannot separate two rings; x₁² + x₂² = r² is a straight line in (x₁², x₂²)
    assert accuracy["x1sq,x2sq"] >= 0.95 and accuracy["x1,x2"] <= 0.75, accuracy
    _screenshot(page, "playground-feature-crosses.png")


def test_per_neuron_marks_match_the_numbers_table(page, server):
    # tanh units with large inputs saturate; relu units below zero on the whole window die
    _open(page, server, "?dataset=spiral&layers=relu,tanh,relu&width=12&resolution=64&seed=3&learning_rate=0.1"
                        "&steps_per_update=20")
    _control(page, "start")
    _wait_for(page, "f.step >= 200")
    _control(page, "pause")
    # the table is redrawn on the next animation frame after a frame arrives: wait until the page shows a
    # paused frame whose drawn table agrees with its unit marks (a disagreement never settles: a timeout)
    page.wait_for_function("""(() => {
        const f = window.playground.frame;
        if (!f || f.status !== 'paused' || !f.network || !f.layers) return false;
        const header = [...document.querySelectorAll('#layers-table thead th')].map(c => c.textContent);
        const dead = header.indexOf('dead (grid)'), saturated = header.indexOf('saturated (grid)');
        const rows = [...document.querySelectorAll('#layers-table tbody tr')];
        const count = (marks, kind) => String(marks.filter(m => m === kind).length);
        return dead >= 0 && saturated >= 0 && rows.length >= f.network.layers.length && f.network.layers.every(
            (layer, l) => rows[l].cells[dead].textContent === count(layer.marks, 'dead')
                && rows[l].cells[saturated].textContent === count(layer.marks, 'saturated'));
    })()""", timeout=TIMEOUT_MS)
    frame = page.evaluate("window.playground.frame")
    marks = [m for layer in frame["network"]["layers"] for m in layer["marks"]]
    assert marks.count("dead") + marks.count("saturated") > 0  # the marks have something to show
    # hovering a unit shows its maps and its mark
    unit = page.evaluate("window.playground.units.find(u => u.mark !== 'live')")
    box = page.locator("#network-canvas").bounding_box()
    scale = box["width"] / page.evaluate("document.getElementById('network-canvas').width")
    page.mouse.move(box["x"] + unit["x"] * scale, box["y"] + unit["y"] * scale)
    page.wait_for_function("!!window.playground.shownUnit")
    shown = page.evaluate("window.playground.shownUnit")
    assert (shown["layer"], shown["unit"], shown["mark"]) == (unit["layer"], unit["unit"], unit["mark"])
    assert unit["mark"] in page.inner_text("#unit-title")
    assert _canvas(page, "unit-derivative") != page.evaluate(
        "(() => { const c = document.createElement('canvas'); c.width = c.height = 140; return c.toDataURL(); })()")
    # the geometry-vs-step panel has one record per table, and draws the chosen metric
    assert len(page.evaluate("window.playground.geometry")) >= 2
    page.select_option("#geometry-metric", "dead_units_grid")
    assert "dead units (grid)" in page.inner_text("#geometry-legend")
    _screenshot(page, "playground-neurons.png")
    assert page.problems == []


@pytest.fixture
def attack_site():
    """A page on another origin (another port of 127.0.0.1: same site, so the playground's cookie rides
    along on its requests) that tries every write a page can make without the token."""
    import http.server
    import threading

    class AttackPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = ATTACK_PAGE.replace("TARGET", self.server.target).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AttackPage)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield site
    site.shutdown()
    site.server_close()


@pytest.mark.parametrize("target_host", ["127.0.0.1", "localhost"])
def test_a_page_on_another_origin_cannot_drive_or_read_the_playground(page, server, attack_site, target_host):
    _open(page, server, "?dataset=moons&layers=relu&width=8&resolution=64")
    _control(page, "pause")
    _wait_for(page, "f.status === 'paused'")
    with server.session.lock:
        before = (server.session.run.config, server.session.running, server.session.upload_name)
    attack_site.target = f"http://{target_host}:{server.server_address[1]}"
    page.goto(f"http://127.0.0.1:{attack_site.server_address[1]}/")  # the same browser: it holds the cookie
    page.wait_for_function("window.done === true", timeout=TIMEOUT_MS)
    results = page.evaluate("window.results")
    assert results["json_with_header"] == "blocked" and results["read_data"] == "blocked", results
    page.wait_for_timeout(1500)  # the form's POST lands in its iframe
    with server.session.lock:
        after = (server.session.run.config, server.session.running, server.session.upload_name)
    assert after == before  # no config, no start, no upload
    # and the playground refuses to be framed by it
    framed = page.frame_locator("#framed")
    assert framed.locator("#layers-table").count() == 0
