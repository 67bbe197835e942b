"""One process of tests/test_distributed.py: joins the others, computes every kind of field on the
same points, and process 0 saves them (argv: coordinator, process count, rank, output .npz)."""

import sys

from geometry import distributed

coordinator, count, rank, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
distributed.initialize(coordinator, count, rank, heartbeat_timeout=10)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests._distributed_fields import fields  # noqa: E402

assert jax.process_count() == count and len(jax.devices()) >= count
results = fields()
if distributed.is_writer():
    np.savez(out, **results)
print(f"process {rank}: {len(results)} fields on {len(jax.devices())} devices", flush=True)
