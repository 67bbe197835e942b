"""Timing, machine description and result files shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import jax

from experiments._runner import device, git_commit, versions
from geometry import distributed
from geometry.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def block(tree):
    return jax.tree_util.tree_map(lambda leaf: leaf.block_until_ready() if hasattr(leaf, "block_until_ready")
                                  else leaf, tree)


def timed(fn, repeats: int = 5) -> dict:
    """Seconds of fn() after one warm-up call (which includes compilation): the best of `repeats`
    calls (`seconds`; the least disturbed by other work on a shared machine), the median and all runs."""
    start = time.perf_counter()
    block(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        runs.append(time.perf_counter() - start)
    return {"seconds": min(runs), "median_seconds": statistics.median(runs), "runs": runs, "first_call_seconds": first}


def parse_args(parser, argv=None):
    """The benchmark's arguments plus the launch flags of `geometry.distributed` (the same as
    `python -m experiments`); joins the other processes when there are several. Every process
    measures the same fields, each computing its share; process 0 writes the result."""
    args = distributed.parse_args(parser, argv)
    distributed.join(args)
    distributed.Watchdog(args.heartbeat_timeout).start()  # a lost peer ends this process, naming it
    return args


def machine() -> dict:
    return {"device": device(), "devices": [str(d) for d in jax.devices()], "processes": jax.process_count(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "versions": versions(), "git_commit": git_commit()}


def result_name(prefix: str) -> str:
    first = jax.devices()[0]
    kind = first.platform if first.platform == "cpu" else f"{first.platform}-{first.device_kind}"
    return f"{prefix}-{kind}".replace(" ", "_").lower()


def write_result(name: str, payload: dict) -> Path | None:
    """RESULTS/NAME.json with the machine description (process 0 only, under several processes)."""
    description = machine()
    if not distributed.is_writer():
        print(f"process {jax.process_index()} of {jax.process_count()}: measured; process 0 writes {name}.json",
              flush=True)
        return None
    path = write_json(RESULTS / f"{name}.json", {"machine": description, **payload})
    print(f"wrote {path}", flush=True)
    return path
