"""Peak resident memory of jacobian_field as the grid grows, chunked (default) and unchunked.

Command:  python -m benchmarks.memory [--quick]
Writes:   benchmarks/results/memory-<device>.json, and prints the table
Runtime:  ~6 min on 2 CPU cores (quick: ~30 s)

Each (grid size, chunking) runs in a fresh subprocess, which builds a width-256, depth-8
tanh MLP, computes the singular values of its end-to-end Jacobian at every grid point
(`reduce=`, so only (N, 2) numbers are kept: what a rank or conditioning map needs) and
reports its peak RSS (`ru_maxrss`). Chunked, the working set is one chunk of 4096
points, so the peak stays flat while the grid grows 64-fold; unchunked, every point's
tangents are alive at once. Unchunked runs stop at `unchunked_max` points per side (the
next size would not fit in this machine's memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks._common import result_name, write_result

RESOLUTIONS = (256, 512, 1024, 2048)


def worker(resolution: int, chunked: bool) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from geometry import data, jacobians, models, spectra

    model = models.MLP(2, 256, 8, activation="tanh", init="xavier", rngs=nnx.Rngs(0))
    points = jnp.asarray(data.grid((-2, 2, -2, 2), resolution))
    start = time.perf_counter()
    values = jacobians.jacobian_field(model.features, points, reduce=spectra.singular_values,
                                      chunk_size=None if chunked else len(points))
    values.block_until_ready()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    print(json.dumps({"resolution": resolution, "points": resolution**2, "chunked": chunked, "peak_rss_mb": peak_mb,
                      "seconds": seconds, "median_sigma_min": float(jnp.median(values[:, -1]))}))


def run(resolution: int, chunked: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.memory", "--worker", str(resolution), str(int(chunked))]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"resolution": resolution, "chunked": chunked, "failed": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--unchunked-max", type=int, default=1024)
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], bool(args.worker[1]))
        return
    resolutions = (64, 128, 256) if args.quick else RESOLUTIONS
    rows = []
    for resolution in resolutions:
        for chunked in (True, False):
            if not chunked and resolution > args.unchunked_max:
                continue
            rows.append(run(resolution, chunked))
            row = rows[-1]
            print(f"{resolution:5d}² {'chunked' if chunked else 'unchunked':9s} "
                  + (f"peak {row['peak_rss_mb']:8.0f} MB  {row['seconds']:7.1f} s" if "failed" not in row
                     else f"failed: {row['failed']}"), flush=True)
    chunked_peaks = [r["peak_rss_mb"] for r in rows if r["chunked"] and "failed" not in r]
    growth = chunked_peaks[-1] / chunked_peaks[0]
    print(f"chunked peak grows {growth:.2f}× from {resolutions[0]}² to {resolutions[-1]}² (target ≤ 1.5×)")
    write_result(result_name("memory" + ("-quick" if args.quick else "")),
                 {"rows": rows, "chunked_growth": growth, "target_growth": 1.5,
                  "resolutions": list(resolutions)})


if __name__ == "__main__":
    main()
