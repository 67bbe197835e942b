"""The benchmark's methods compute the same Jacobians (the timings themselves are not tested)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import jacobians as bench
from geometry import data, models


def test_every_benchmarked_method_agrees_with_jacobian_field():
    model = models.MLP(2, 16, 3, activation="tanh", init="xavier", rngs=nnx.Rngs(0))
    points = jnp.asarray(data.grid((-2, 2, -2, 2), 16))
    rows = bench.measure(model, points, loop_points=8)
    expected = {"jacobian_field", "closed_form", "vmap_jacrev", "python_loop_jacfwd", "forward"}
    assert expected <= set(rows)
    for name, row in rows.items():
        if name != "forward":
            assert row["max_error_vs_jacobian_field"] < 1e-5, (name, row["max_error_vs_jacobian_field"])
        assert row["points_per_second"] > 0 and np.isfinite(row["cost_in_forward_passes"])
    assert rows["jacobian_field"]["slowdown_vs_jacobian_field"] == 1.0


def test_modes_benchmark_loop_equals_the_probe_fields():
    from benchmarks import modes
    from geometry import probe

    model = models.MLP(3, 8, depth=3, activation="tanh", rngs=nnx.Rngs(1))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    fields = probe.local_jacobian_field(model, x, "layers/*")
    for i, point in enumerate(x):
        for l, J in enumerate(modes.replaced_loop(model, jnp.asarray(point))):
            np.testing.assert_allclose(fields[f"layers/{l}"][i], J, rtol=1e-5, atol=1e-6)


def test_matfree_benchmark_routes_agree():
    from benchmarks import matfree as bench_matfree

    dense = bench_matfree.route("dense", n=64, width=32, depth=2, points=2, k=3)
    free = bench_matfree.route("matfree", n=64, width=32, depth=2, points=2, k=3)
    np.testing.assert_allclose(free["values"], dense["values"], rtol=1e-5)
    assert dense["peak_rss_mb"] > 0 and free["seconds"] > 0
