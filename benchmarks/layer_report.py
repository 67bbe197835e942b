"""What `geometry.report` costs against the fields it is built on.

Command:  python -m benchmarks.layer_report [--quick]
Writes:   benchmarks/results/layer_report-<device>.json, and prints the table
Runtime:  ~3 min on 2 CPU cores (quick: ~1 min)

(a) A zoo-style MLP 784 → 256 → 256 → 10 with inline relus at 1000 points: the whole report
    against `probe.input_jacobian_field` of all its layers with `reduce=singular_values` (the
    dense route's core). Target (issue 46): ≤ 3×.
(b) The examples' image transformer (4 blocks, width 32) at 64 digits: the whole report,
    first call included (compilations are part of what a user waits for). Target: < 60 s.
Both best of `repeats` after a warm-up call, except (b)'s first call, reported as measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import parse_args, result_name, timed, write_result
from benchmarks.activations import ZooMLP  # the same model as the activations benchmark
from geometry import data, probe, report, spectra


@dataclasses.dataclass(frozen=True)
class Config:
    points: int = 1000
    images: int = 64
    repeats: int = 3


QUICK = Config(points=200, images=16, repeats=2)


def main(config: Config) -> dict:
    from examples.published_model import vit

    model = ZooMLP(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(config.points, 784)), jnp.float32)
    keys = probe.layers(model, x[0])
    fields = timed(lambda: probe.input_jacobian_field(model, x, keys, reduce=spectra.singular_values,
                                                      as_matrix=True), config.repeats)
    whole = timed(lambda: report.report(model, x, progress=False).table, config.repeats)
    ratio = whole["seconds"] / fields["seconds"]
    transformer, kwargs = vit()
    images = data.load_digits()[0][: config.images].reshape(-1, 8, 8, 1)
    start = time.perf_counter()
    report.report(transformer, images, model_kwargs=kwargs, progress=False)
    vit_seconds = time.perf_counter() - start
    print(f"MLP at {config.points} points: fields {fields['seconds']:.2f} s, report {whole['seconds']:.2f} s "
          f"({ratio:.2f}×, target ≤ 3)", flush=True)
    print(f"ViT at {config.images} images: report {vit_seconds:.1f} s, first call (target < 60 s)", flush=True)
    return {"config": dataclasses.asdict(config), "mlp": {"fields": fields, "report": whole, "ratio": ratio,
                                                            "target": 3.0},
            "vit": {"seconds_first_call": vit_seconds, "target_seconds": 60.0}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parse_args(parser)
    write_result(result_name("layer_report"), main(QUICK if args.quick else Config()))
