"""How fast the playground streams: frames per second a page receives while the net trains.

Command:  python -m benchmarks.playground [--seconds 20]
Writes:   benchmarks/results/playground-<device>.json (then `python -m benchmarks.report`)
Runtime:  ~1 min on 2 CPU cores.

A real server on 127.0.0.1 and a real event-stream client (http.client, what a browser's
EventSource reads): frames received per second over `--seconds` of training, the bytes
per frame, and the parts of one update timed on their own (the optimizer steps, the
compiled maps, encoding, the per-layer numbers and, for piecewise-linear nets, the exact
partition of the region panel, both refreshed every 0.4 s while training runs). Target (issue 18): at least 10 updates a
second for a 2 → 32 ×4 → 2 net with 128² maps on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import time

import jax
from flax import nnx

from benchmarks._common import result_name, timed, write_result
from playground import security
from playground.config import Config
from playground.server import Server
from playground.session import Run, encode_maps

TARGET_FRAMES_PER_SECOND = 10.0


def stream_rate(server: Server, seconds: float, warmup: float = 3.0) -> dict:
    """Frames per second one event-stream client receives while the session trains."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    token = {security.TOKEN_HEADER: server.token}
    connection.request("POST", "/api/control", body=json.dumps({"action": "start"}),
                       headers={"Content-Type": "application/json", **token})
    connection.getresponse().read()
    connection.request("GET", "/api/events", headers=token)
    response = connection.getresponse()
    frames, sizes, steps, start = 0, [], [], time.perf_counter()
    measuring_since = None
    while True:
        line = response.fp.readline()
        if not line.startswith(b"data: "):
            continue
        now = time.perf_counter()
        frame = json.loads(line[6:])
        if "maps" not in frame:
            continue
        if measuring_since is None:
            if now - start >= warmup:  # compilation and the first frames are not the steady rate
                measuring_since, first_step = now, frame["step"]
            continue
        frames += 1
        sizes.append(len(line))
        steps.append(frame["step"])
        if now - measuring_since >= seconds:
            break
    elapsed = time.perf_counter() - measuring_since
    connection.close()
    return {"frames": frames, "seconds": elapsed, "frames_per_second": frames / elapsed,
            "optimizer_steps_per_second": (steps[-1] - first_step) / elapsed,
            "mean_frame_bytes": sum(sizes) / len(sizes)}


def parts(config: Config) -> dict:
    """The parts of one update, each timed alone (best of 5 after a warm-up)."""
    run = Run(config, None, 1)
    run.train()
    state = nnx.state(run.model)
    raw = jax.device_get(run.views.maps(state, run.views.grid))
    return {
        "train": timed(run.train),
        "maps": timed(lambda: jax.device_get(run.views.maps(state, run.views.grid))),
        "encode": timed(lambda: encode_maps(raw, run.data.classes)),
        "layer_numbers": timed(lambda: run.views.layer_numbers(state)),
        "exact_regions": timed(lambda: run.views.exact_regions(run.model)),
    }


def measure(config: Config, seconds: float) -> dict:
    server = Server(0, config)
    server.start()
    try:
        stream = stream_rate(server, seconds)
    finally:
        server.stop()
    timings = {name: {"seconds": t["seconds"], "median_seconds": t["median_seconds"]}
               for name, t in parts(config).items()}
    return {"config": dataclasses.asdict(config), "stream": stream, "parts": timings}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of streaming measured per case")
    args = parser.parse_args(argv)
    cases = {"2-32x4-2, 128² maps": Config(), "2-32x4-2, 256² maps": Config(resolution=256),
             "2-128x8-2 tanh, 128² maps": Config(layers=("tanh",) * 8, width=128, probe_layer=8)}
    rows = {}
    for name, config in cases.items():
        print(f"[playground] {name}: streaming for {args.seconds:g} s …", flush=True)
        rows[name] = measure(config, args.seconds)
        print(f"[playground] {name}: {rows[name]['stream']['frames_per_second']:.1f} frames/s", flush=True)
    main_rate = rows["2-32x4-2, 128² maps"]["stream"]["frames_per_second"]
    write_result(result_name("playground"), {
        "cases": rows, "target_frames_per_second": TARGET_FRAMES_PER_SECOND,
        "meets_target": main_rate >= TARGET_FRAMES_PER_SECOND})


if __name__ == "__main__":
    main()
