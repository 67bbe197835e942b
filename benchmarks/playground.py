"""How fast the playground streams: frames per second a page receives while the net trains.

Command:  python -m benchmarks.playground [--seconds 20]
Writes:   benchmarks/results/playground-<device>.json (then `python -m benchmarks.report`)
Runtime:  ~1 min on 2 CPU cores.

A real server on 127.0.0.1 and a real event-stream client (http.client, what a browser's
EventSource reads) in another process, as a browser is (an in-process client competes with the
server for Python's GIL while it parses each frame, and under-measures the rate by half with the
per-neuron views' larger frames): frames received per second over `--seconds` of training, the bytes
per frame, and the parts of one update timed on their own (the optimizer steps, the
compiled maps, encoding, the per-layer numbers and, for piecewise-linear nets, the exact
partition of the region panel, both refreshed every 0.4 s while training runs, and the per-neuron
views). Targets (issues 18, 32): at least 10 updates a second with the per-neuron views on for a
2 → 32 ×4 → 2 classifier and a 2 → 8 ×4 → 1 regression net, both with 128² maps, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import subprocess
import sys
import time

import jax
from flax import nnx

from benchmarks._common import result_name, timed, write_result
from playground import security, views
from playground.config import Config
from playground.server import Server
from playground.session import Run, encode_maps, encode_network

TARGET_FRAMES_PER_SECOND = 10.0


def stream_rate(server: Server, seconds: float, warmup: float = 3.0) -> dict:
    """Frames per second one event-stream client, in its own process, receives while the session trains."""
    command = [sys.executable, "-m", "benchmarks.playground", "--client", str(server.server_address[1]), server.token,
               str(seconds), str(warmup)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def client(port: int, token_value: str, seconds: float, warmup: float) -> dict:
    """The event-stream client: starts training, reads frames, returns the rates."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    token = {security.TOKEN_HEADER: token_value}
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
        "encode": timed(lambda: encode_maps(raw, run.data)),
        "neurons": timed(lambda: encode_network(views.neurons(raw, run.model, run.config))),
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
    parser.add_argument("--client", nargs=4, metavar=("PORT", "TOKEN", "SECONDS", "WARMUP"),
                        help="(internal) run the event-stream client against a server and print its rates")
    args = parser.parse_args(argv)
    if args.client:
        port, token_value, seconds, warmup = args.client
        print(json.dumps(client(int(port), token_value, float(seconds), float(warmup))))
        return
    cases = {"2-32x4-2, 128² maps": Config(),
             "2-8x4-1 regression (sine ridge), 128² maps": Config(problem="regression", dataset="sine_ridge",
                                                                  layers=("tanh",) * 4, width=8),
             "2-32x4-2, 256² maps": Config(resolution=256),
             "2-128x8-2 tanh, 128² maps": Config(layers=("tanh",) * 8, width=128, probe_layer=8)}
    rows = {}
    for name, config in cases.items():
        print(f"[playground] {name}: streaming for {args.seconds:g} s …", flush=True)
        rows[name] = measure(config, args.seconds)
        print(f"[playground] {name}: {rows[name]['stream']['frames_per_second']:.1f} frames/s", flush=True)
    targeted = ("2-32x4-2, 128² maps", "2-8x4-1 regression (sine ridge), 128² maps")
    write_result(result_name("playground"), {
        "cases": rows, "target_frames_per_second": TARGET_FRAMES_PER_SECOND, "target_cases": list(targeted),
        "per_neuron_views": "on in every case (always on)",
        "meets_target": all(rows[name]["stream"]["frames_per_second"] >= TARGET_FRAMES_PER_SECOND
                            for name in targeted)})


if __name__ == "__main__":
    main()
