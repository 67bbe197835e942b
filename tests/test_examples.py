"""The examples run end to end in their quick form, with numbers checked against references."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from examples import own_model, published_model
from geometry import data, probe


def test_own_model_example_quick():
    # the example is a user's code (its own optax loop mixes int32 step counts with floats): the
    # suite's strict dtype promotion is for the library, so the example runs under JAX's default
    with jax.numpy_dtype_promotion("standard"):
        results = own_model.main(own_model.QUICK)
    assert results["nnx_cnn"]["test_accuracy"] >= 0.8
    assert results["linen_mlp"]["test_accuracy"] >= 0.8
    cnn_rows = results["nnx_cnn"]["layers"]
    assert list(cnn_rows) == ["conv1", "relu", "conv2", "relu#1", "head"]  # the inline relus are rows
    for name in ("relu", "relu#1"):  # a relu cannot raise the rank of what it receives
        assert cnn_rows[name]["numerical_rank_median"] <= cnn_rows["conv1" if name == "relu" else "conv2"][
            "numerical_rank_median"]
        assert 0 < cnn_rows[name]["dead_fraction"] < 1 and cnn_rows[name]["saturated_fraction"] == 0
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


def test_published_model_example_quick_matches_hand_written_jacobians():
    config = published_model.QUICK
    results = published_model.main(config)
    vit, lm = results["image_transformer"], results["language_model"]
    assert vit["layers"][:2] == ["patch_embed", "blocks/0"] and "blocks/1/attention" in vit["layers"]
    # the probe's block-0 spectrum at image 0 equals the SVD of jax.jacfwd of the pass written by hand
    model = published_model.ImageTransformer(config.width, config.depth, 10, nnx.Rngs(0))
    model.eval()
    rngs = nnx.Rngs(1)
    image = np.asarray(data.load_digits()[0][:1].reshape(1, 8, 8, 1))
    field = probe.input_jacobian_field(model, image, "blocks/0", model_kwargs={"rngs": rngs}, as_matrix=True)

    def block_0(x):
        patches = model.patch_embed(x).reshape(-1, config.width)
        tokens = jnp.concatenate([model.class_token[...], patches]) + model.position[...]
        return model.blocks[0](tokens, rngs=rngs).reshape(-1)

    reference = jax.jacfwd(block_0)(jnp.asarray(image[0])).reshape(-1, 64)
    np.testing.assert_allclose(field["blocks/0"][0], reference, rtol=1e-4, atol=1e-5)
    assert vit["blocks"]["head"]["numerical_rank_median"] <= 10
    # the final RMSNorm is scale invariant (∂norm(h)/∂h · h = ε/(r + ε) · h/√(r+ε), r = mean h²), so
    # every per-token logits-by-embedding block ∂logits_t/∂e_t has rank at most width − 1
    assert all(row["numerical_rank_median"] <= config.width - 1 for row in lm["logits_by_embedding_per_token"])
    assert all(row["condition_number_median"] > 1e4 for row in lm["logits_by_embedding_per_token"])
    # the last token depends on every earlier one (causal row all non-zero); the caller's cache is untouched
    assert min(lm["last_token_row_norm_median"]) > 1e-3 and lm["cache_untouched"]
    assert {row["structure"] for k, row in lm["attention_local"].items() if k.endswith("norm")} == {"blocks"}
    published_model.report(results)
