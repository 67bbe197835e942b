"""What the canary costs: every mapped call with and without its unbatched recomputation of a sample.

Command:  python -m benchmarks.canary [--quick]
Writes:   benchmarks/results/canary-<device>.json, and prints the table
Runtime:  ~2 min on 2 CPU cores (quick: ~30 s)

Cases (float32, best of `repeats` calls after a warm-up call that compiles both programs):
  (a) `jacobian_field` of a tanh MLP 64 → 256 → 256 → 10 at 4096 points (forward mode);
  (b) `probe.input_jacobian_field` of the same MLP's layers at 4096 points;
  (c) `jacobian_field` of an RMSNorm → Linear block over (8, 32) token matrices at 512 points
      (the shape jaxlib 0.10.2 miscompiles);
  (d) `matfree.singular_values` (top 8) of the MLP at 1024 points.
The canary's cost is (time on − time off) / time off; its first-call cost (one more compilation,
of the unbatched program) is reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import parse_args, result_name, timed, write_result
from geometry import batching, jacobians, matfree, models, probe


@dataclasses.dataclass(frozen=True)
class Config:
    points: int = 4096
    token_points: int = 512
    matfree_points: int = 1024
    repeats: int = 5


QUICK = Config(points=512, token_points=64, matfree_points=128, repeats=3)


class TokenBlock(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.RMSNorm(32, rngs=rngs)
        self.linear = nnx.Linear(32, 32, rngs=rngs)

    def __call__(self, x):  # (8, 32)
        return self.linear(self.norm(x))


def cases(config: Config) -> dict:
    rng = np.random.default_rng(0)
    mlp = models.MLP(64, (256, 256), out_features=10, activation="tanh", rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(config.points, 64)), jnp.float32)
    tokens = jnp.asarray(rng.normal(size=(config.token_points, 8, 32)), jnp.float32)
    block = TokenBlock(nnx.Rngs(1))
    return {
        "jacobian_field mlp": lambda: jacobians.jacobian_field(mlp, x, mode="forward"),
        "probe.input_jacobian_field mlp": lambda: probe.input_jacobian_field(mlp, x, "layers/*"),
        "jacobian_field rmsnorm tokens": lambda: jacobians.jacobian_field(block, tokens),
        "matfree.singular_values mlp": lambda: matfree.singular_values(mlp, x[:config.matfree_points], 8),
    }


def main(config: Config) -> dict:
    rows = {}
    for name, run in cases(config).items():
        with batching.canary(False):
            off = timed(run, config.repeats)
        on = timed(run, config.repeats)
        rows[name] = {"seconds_off": off["seconds"], "seconds_on": on["seconds"],
                      "overhead": on["seconds"] / off["seconds"] - 1,
                      "first_call_seconds_off": off["first_call_seconds"],
                      "first_call_seconds_on": on["first_call_seconds"]}
        print(f"{name:34s} off {off['seconds']:.4f} s  on {on['seconds']:.4f} s  "
              f"overhead {100 * rows[name]['overhead']:+.1f}%", flush=True)
    return {"config": dataclasses.asdict(config), "rows": rows, "sample_points": batching.CANARY_MAX_POINTS,
            "jax": jax.__version__}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parse_args(parser)
    write_result(result_name("canary"), main(QUICK if args.quick else Config()))
