"""The running experiment: one network training in a background thread, publishing frames.

A `Run` is one net on one dataset from step 0 (model, optimizer state, history); a
`Session` holds the current run, replaced whole by a reset or a new config. Its worker
thread alternates `config.steps_per_update` full-batch Adam steps
(`geometry.training.train_step`, the library's own step) with one frame (`views`), and
publishes the frame as a JSON string with a sequence number; any number of page
connections wait on `next_frame`. Commands (start, pause, step, reset, a new config, an
upload) come from the server's threads and take effect between two updates, so a
request never sees a half-updated model. A diverging run (non-finite loss) pauses with a
message instead of streaming NaN maps; a failure inside an update does the same and the
server keeps serving.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from geometry import training
from geometry.functional import Static
from geometry.io import to_jsonable
from playground import datasets, network, views
from playground.config import Config, as_json, to_query
from playground.objective import Objective, weight_norm

ACTIONS = ("start", "pause", "step", "reset")
MAX_PENDING_STEPS = 10  # single steps queued by "step" beyond those already run
# Adam with its learning rate in the optimizer state, not in the (static) optimizer: a new rate
# reuses the compiled step
OPTIMIZER = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
MAX_HISTORY = 400  # curve points streamed with every frame
GEOMETRY_KEYS = ("rank", "effective_rank", "jacobian_rank", "dead_units", "saturated", "cka_input", "cka_previous",
                 "dead_units_grid", "saturated_units_grid")
NUMBERS_EVERY = 0.4  # seconds between two per-layer tables while training runs
REGIONS_EVERY = 1.0  # seconds between two exact partitions of the region panel while training runs
_REGION_VERSIONS = itertools.count(1)  # one number per partition computed, across runs: the page fetches a new one


def _encode(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.uint8).tobytes()).decode("ascii")


def _scaled(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Codes 0..254 for values on [lo, hi] (clipped)."""
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.round((values - lo) / span * 254), 0, 254).astype(np.uint8)


def _thinned(history: list) -> list:
    """Past MAX_HISTORY records, every other one of the older half: long runs stay cheap to stream."""
    if len(history) <= MAX_HISTORY:
        return history
    half = len(history) // 2
    return history[:half:2] + history[half:]


def _matrix(weights) -> dict | None:
    """A weight matrix for the page: base64 little-endian float32, row-major, with its shape."""
    if weights is None:
        return None
    weights = np.ascontiguousarray(weights, dtype="<f4")
    return {"shape": list(weights.shape), "data": base64.b64encode(weights.tobytes()).decode("ascii")}


def encode_network(view: dict) -> dict:
    """views.neurons for the page: maps as base64 bytes, weights as base64 float32."""
    layers = []
    for layer in view["layers"]:
        entry = {**layer, "weights": _matrix(layer["weights"]),
                 "activation": {**layer["activation"], "data": _encode(layer["activation"]["data"])}}
        if "derivative" in layer:
            entry["derivative"] = {**layer["derivative"], "data": _encode(layer["derivative"]["data"])}
        layers.append(entry)
    return {**view, "layers": layers, "readout": _matrix(view["readout"])}


def encode_maps(maps: dict, dataset) -> dict:
    """The grid maps as base64 uint8 images plus the value range each code spans."""
    classes = dataset.classes
    log_volume = np.asarray(maps["log_volume"], np.float64)
    finite = np.isfinite(log_volume)
    lo, hi = (np.percentile(log_volume[finite], [1, 99]).tolist() if finite.any() else (0.0, 1.0))
    volume_codes = np.where(finite, _scaled(np.where(finite, log_volume, lo), lo, hi), views.SINGULAR)
    sigma_min = np.asarray(maps["sigma_min"], np.float64)
    sigma_hi = float(np.percentile(sigma_min, 99)) or 1.0
    encoded = {
        "log_volume": {"data": _encode(volume_codes), "lo": lo, "hi": hi,
                       "singular_fraction": float(1 - finite.mean())},
        "sigma_min": {"data": _encode(_scaled(sigma_min, 0.0, sigma_hi)), "lo": 0.0, "hi": sigma_hi},
        "rank": {"data": _encode(maps["rank"]), "lo": 0, "hi": int(np.max(maps["rank"]))},
        "regions": None,
    }
    if "value" in maps:  # regression: the predicted value on the training targets' range
        lo, hi = dataset.target_range
        encoded["value"] = {"data": _encode(_scaled(np.asarray(maps["value"], np.float64), lo, hi)), "lo": lo, "hi": hi}
    else:
        confidence = np.asarray(maps["confidence"], np.float64)
        encoded["class"] = {"data": _encode(maps["class"])}
        encoded["confidence"] = {"data": _encode(_scaled(confidence, 1.0 / classes, 1.0)), "lo": 1.0 / classes,
                                 "hi": 1.0}
    if "region_hash" in maps:
        ids, count = views.region_ids(np.asarray(maps["region_hash"]))
        encoded["regions"] = {"data": _encode(ids % 251), "count": count}
    return encoded


def encode_exact_regions(exact: dict | None) -> dict | None:
    """The exact partition for the page, with a new version number: vertices as base64 little-endian
    float32 (x, y) pairs, one vertex count per region as base64 bytes."""
    if exact is None:
        return None
    version = next(_REGION_VERSIONS)
    if exact["count"] is None:
        return {**exact, "version": version}
    return {"count": exact["count"], "version": version,
            "vertices": base64.b64encode(exact["vertices"].astype("<f4").tobytes()).decode(),
            "counts": _encode(exact["counts"])}


class Run:
    """One network on one dataset from step 0: replaced whole by a reset or a new config. Only the
    worker thread changes it; readers take its plain values (immutable pytrees, lists, dicts)."""

    def __init__(self, config: Config, upload, data_version: int):
        dataset = datasets.load(config.dataset, noise=config.noise, seed=config.seed, upload=upload,
                                train_percent=config.train_percent, problem=config.problem)
        self.model = network.build(config, 2, dataset.classes)
        self.views = views.Views(self.model, config, dataset)
        self.config, self.data, self.data_version = config, dataset, data_version
        graphdef, self.params, self.rest = nnx.split(self.model, nnx.Param, ...)
        self.graphdef = Static(graphdef)
        self.opt_state = OPTIMIZER.init(self.params)
        self.opt_state.hyperparams["learning_rate"] = jnp.asarray(config.learning_rate, jnp.float32)
        self.step, self.history, self.message = 0, [], ""
        self.layer_rows, self.layer_time = None, 0.0
        self.geometry_history: list[dict] = []  # the per-layer table against step (the geometry-vs-step panel)
        self.geometry_version, self.geometry_sent = 0, -1
        self.objective = Objective(config.problem, config.regularization)
        self.rate = jnp.asarray(config.regularization_rate, jnp.float32)
        self.regions_time, self.exact_regions = 0.0, None  # the page's copy: GET /api/regions
        self.linear = views.linear_collapse(self.model, config)

    def train(self) -> None:
        x, y = self.data.x_train, self.data.y_train
        batch_size = self.config.batch_size or None
        params, opt_state, loss = self.params, self.opt_state, None
        for offset in range(self.config.steps_per_update):
            idx = training.batch_indices(self.step + offset, len(x), batch_size, self.config.seed)
            batch = (x, y) if len(idx) == len(x) else (x[idx], y[idx])
            params, opt_state, loss = training.train_step(self.graphdef, params, self.rest, opt_state,
                                                          (*batch, self.rate), loss_fn=self.objective,
                                                          optimizer=OPTIMIZER)
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training diverged at step {self.step + self.config.steps_per_update} (loss {loss}): lower the "
                f"learning rate (now {self.config.learning_rate:g}) and reset")
        self.params, self.opt_state = params, opt_state
        self.step += self.config.steps_per_update
        nnx.update(self.model, params)
        self.history = _thinned(self.history + [{"step": self.step, "loss": loss,
                                                 **self.views.scores(nnx.state(self.model)),
                                                 "weight_norm": weight_norm(self.model)}])
        self.linear = views.linear_collapse(self.model, self.config)

    def frame(self, running: bool, stopping=lambda: False) -> dict:
        state = nnx.state(self.model)
        raw = jax.device_get(self.views.maps(state, self.views.grid))
        now = time.perf_counter()
        # per-layer numbers (CKA's Gram matrices dominate) at most every NUMBERS_EVERY s while
        # training runs, so the maps keep streaming at full rate; every frame of a paused net
        network_view = views.neurons(raw, self.model, self.config)
        if self.layer_rows is None or not running or now - self.layer_time > NUMBERS_EVERY:
            rows = self.views.layer_numbers(state)
            for row, layer in zip(rows, network_view["layers"]):  # the marks' counts, on the same grid
                kernel = network.is_kernel(layer["kind"])  # no φ, no marks to count
                row["dead_units_grid"] = None if kernel else layer["marks"].count("dead")
                row["saturated_units_grid"] = None if kernel else layer["marks"].count("saturated")
            self.layer_rows, self.layer_time = rows, now
            entry = {"step": self.step, "layers": [{key: row[key] for key in GEOMETRY_KEYS} for row in rows]}
            self.geometry_history = _thinned([e for e in self.geometry_history if e["step"] != self.step] + [entry])
            self.geometry_version += 1
        # the exact partition (tens to hundreds of ms) at its own slower pace; frames carry only its
        # count and version, the polygons are fetched by the page when the version changes
        if self.views.exact and not stopping() and (
                self.exact_regions is None or not running or now - self.regions_time > REGIONS_EVERY):
            self.exact_regions = encode_exact_regions(self.views.exact_regions(self.model))
            self.regions_time = time.perf_counter()
        maps = encode_maps(raw, self.data)
        maps["exact_regions"] = None if self.exact_regions is None else {
            key: self.exact_regions[key] for key in ("count", "version", "reason") if key in self.exact_regions}
        record = {"maps": maps, "layers": self.layer_rows, "network": encode_network(network_view),
                  "geometry_version": self.geometry_version}
        if self.geometry_version != self.geometry_sent:  # the page keeps the last one it got
            record["geometry_history"], self.geometry_sent = self.geometry_history, self.geometry_version
        return record


class Session:
    def __init__(self, config: Config = Config()):
        self.lock = threading.RLock()  # guards the fields below, never held while computing
        self.changed = threading.Condition(self.lock)
        # one change of net or data at a time, each built on the one before (two uploads, or an upload
        # and a width change, racing would otherwise show one file while training on another, or drop
        # a change); held while a new Run is built, which the worker and readers never wait for
        self.changing = threading.Lock()
        self.upload: tuple[np.ndarray, np.ndarray] | None = None
        self.upload_name: str | None = None
        self.frame, self.sequence, self.last_views = None, 0, {}
        self.running, self.pending_steps, self.closed = False, 1, False
        self.update_seconds: list[float] = []
        self.run = Run(config, None, 1)
        self.worker = threading.Thread(target=self._work, name="playground-trainer", daemon=True)
        self.worker.start()

    # ---- state changes (server threads) ----
    def configure(self, config: Config, upload=None, upload_name: str | None = None) -> None:
        """A new net or data, built from scratch and trained; a failure keeps the current run."""
        with self.changing:
            with self.lock:
                data = upload if upload is not None else self.upload
            run = Run(config, data, self.sequence + 1)
            self._install(run, upload, upload_name, running=True)

    def upload_data(self, upload, upload_name: str) -> Config:
        """Train on an uploaded (x, y) with the current settings (read under the same lock as every
        change, so a width change made meanwhile is kept); returns the config now running."""
        with self.changing:
            with self.lock:
                config = dataclasses.replace(self.run.config, dataset="csv")
            self._install(Run(config, upload, self.sequence + 1), upload, upload_name, running=True)
        return config

    def _install(self, run, upload, upload_name, *, running: bool) -> None:
        with self.lock:
            if upload is not None:
                self.upload, self.upload_name = upload, upload_name
            self.run, self.last_views = run, {}
            self.running, self.pending_steps = running, 1
            self._publish()  # the new config at once; its maps follow with the first update

    def control(self, action: str) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; valid: {', '.join(ACTIONS)}")
        if action == "reset":
            with self.changing:
                with self.lock:
                    config, data = self.run.config, self.upload
                self._install(Run(config, data, self.sequence + 1), None, None, running=False)  # untrained
            return
        with self.lock:
            if action == "start":
                self.running = True
            elif action == "pause":  # stop now: queued single steps are dropped (a new net still gets its first frame)
                self.running, self.pending_steps = False, int(self.run.layer_rows is None)
            else:  # step: one more update, at most MAX_PENDING_STEPS queued
                self.running, self.pending_steps = False, min(self.pending_steps + 1, MAX_PENDING_STEPS)
            self.changed.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current update (JAX must not be torn down under a running thread)."""
        with self.lock:
            self.closed = True
            self.changed.notify_all()
        if threading.current_thread() is not self.worker:
            self.worker.join(timeout)

    # ---- the worker ----
    def _work(self) -> None:
        while True:
            with self.lock:
                self.changed.wait_for(lambda: self.closed or self.running or self.pending_steps > 0)
                if self.closed:
                    return
                run, running = self.run, self.running
                fresh = self.pending_steps > 0 and run.step == 0 and run.layer_rows is None
                self.pending_steps = max(0, self.pending_steps - 1)
            started, record = time.perf_counter(), {}
            try:
                if not fresh:  # a new run shows its untrained state first
                    run.train()
                record = run.frame(running, stopping=lambda: self.closed)  # a closing server skips the partition
            except Exception as error:  # noqa: BLE001 - shown in the page; the server keeps serving
                run.message = str(error) if isinstance(error, FloatingPointError) else \
                    f"update failed: {type(error).__name__}: {error}"
            with self.lock:
                if run is not self.run:  # reset or reconfigured meanwhile: this update is stale
                    continue
                if run.message:
                    self.running = False
                self.update_seconds = (self.update_seconds + [time.perf_counter() - started])[-50:]
                self.last_views = record or self.last_views
                self._publish()

    def _publish(self) -> None:
        self.sequence += 1
        record = {**self.numbers(), **self.last_views, "sequence": self.sequence}
        self.frame = json.dumps(to_jsonable(record), allow_nan=False)
        self.changed.notify_all()

    # ---- reading (server threads) ----
    def numbers(self) -> dict:
        """Everything but the maps: config, status, history, per-layer numbers, W_total."""
        with self.lock:
            run, seconds = self.run, self.update_seconds[-20:]
            d = run.data
            return {
                "config": as_json(run.config), "query": to_query(run.config), "step": run.step,
                "status": "running" if self.running else "paused", "message": run.message,
                "history": run.history, "data_version": run.data_version, "layers": run.layer_rows,
                "dataset": {"name": d.name, "upload": self.upload_name if d.name == "csv" else None,
                            "classes": d.classes, "problem": d.problem, "target_range": d.target_range, "train_points": len(d.x_train), "test_points": len(d.x_test),
                            "bounds": list(d.bounds), "axis_labels": list(d.axis_labels)},
                "resolution": run.config.resolution, "linear_collapse": run.linear,
                "updates_per_second": len(seconds) / sum(seconds) if seconds else None,
            }

    def exact_regions(self) -> dict:
        """The current run's exact partition (polygons), or {"count": None, "reason"} where there is none."""
        with self.lock:
            exact = self.run.exact_regions
        return exact if exact is not None else {"count": None, "version": 0,
                                                "reason": "the net is not piecewise linear (or not drawn yet)"}

    def points(self) -> dict:
        with self.lock:
            run = self.run
        d = run.data
        return {"data_version": run.data_version, "x_train": d.x_train.tolist(), "y_train": d.y_train.tolist(),
                "x_test": d.x_test.tolist(), "y_test": d.y_test.tolist()}

    def next_frame(self, after: int, timeout: float) -> tuple[int, str | None]:
        """The first frame newer than `after` (waiting up to `timeout` s): (sequence, JSON) or (after, None)."""
        with self.lock:
            self.changed.wait_for(lambda: (self.sequence > after and self.frame is not None) or self.closed,
                                  timeout=timeout)
            return (self.sequence, self.frame) if self.sequence > after and self.frame else (after, None)

    def snapshot(self):
        """(config, classes, parameters and other state on the host, a few data points) for an export."""
        with self.lock:
            run = self.run
        return run.config, run.data.classes, jax.device_get((run.params, run.rest)), run.data.x_train[:16]

