"""The fields compared between one process and several (tests/test_distributed.py)."""

import numpy as np
from flax import nnx

from geometry import jacobians, matfree, models, probe


def fields() -> dict[str, np.ndarray]:
    model = models.MLP(5, 12, depth=3, out_features=4, activation="tanh", rngs=nnx.Rngs(3))
    points = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)  # 37: not a multiple of 2 or 4
    results = {"jacobian_field": jacobians.jacobian_field(model, points),
               "reverse": jacobians.jacobian_field(model, points, mode="reverse"),
               "matfree_top3": matfree.singular_values(model.features, points, 3)["values"],
               "matfree_log_volume": matfree.log_volume(model, points, probes=4, steps=4)["values"]}
    for path, field in probe.input_jacobian_field(model, points, "layers/*").items():
        results[f"input/{path}"] = field
    for path, field in probe.local_jacobian_field(model, points, "layers/*").items():
        results[f"local/{path}"] = field
    return {key: np.asarray(value) for key, value in results.items()}
