"""The "analyse your own model" example runs end to end in its quick form, with sane numbers."""

import jax
import numpy as np

from examples import own_model


def test_own_model_example_quick():
    # the example is a user's code (its own optax loop mixes int32 step counts with floats): the
    # suite's strict dtype promotion is for the library, so the example runs under JAX's default
    with jax.numpy_dtype_promotion("standard"):
        results = own_model.main(own_model.QUICK)
    assert results["nnx_cnn"]["test_accuracy"] >= 0.8
    assert results["linen_mlp"]["test_accuracy"] >= 0.8
    assert list(results["nnx_cnn"]["layers"]) == ["conv1", "conv2", "head"]
    assert list(results["linen_mlp"]["layers"]) == ["Dense_0", "Dense_1", "Dense_2"]
    for result in results.values():
        for row in result["layers"].values():
            full = min(row["shape"])
            assert 0 < row["numerical_rank_median"] <= full
            assert 1 <= row["effective_rank_median"] <= row["numerical_rank_median"] + 1e-6
            assert row["condition_number_median"] >= 1
            assert row["cka_with_previous"] is None or 0 <= row["cka_with_previous"] <= 1 + 1e-9
    # the conv1 map x ↦ conv1(x) is linear and injective on 8×8 images: full rank 64 at every point
    assert results["nnx_cnn"]["layers"]["conv1"]["rank_deficient_fraction"] == 0.0
    assert np.isfinite(results["nnx_cnn"]["layers"]["head"]["condition_number_median"])
    own_model.report(results)
