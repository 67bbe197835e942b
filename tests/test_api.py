"""The declared public API: geometry/__init__.py names exist, and DESIGN.md's public names are there."""

import inspect

import geometry

DESIGN = {
    "activations": ["NAMES", "get"],
    "jacobians": ["jacobian_field"],
    "probe": ["layers", "input_jacobian_field", "local_jacobian_field"],
    "spectra": ["singular_values", "numerical_rank", "effective_rank", "stable_rank", "condition_number", "log_volume"],
    "matfree": ["singular_values", "log_volume", "spectral_density", "frobenius_norm_squared"],
    "metric": ["pullback_metric"],
    "similarity": ["cka", "cka_permutation_test"],
    "collapse": ["collapse_metrics"],
    "data": ["make_dataset", "grid", "load_digits", "load_dataset"],
    "theory": ["prob_any_dead", "prob_relu_rank_deficient", "mean_field", "fuss_catalan"],
    "training": ["train", "TrainConfig", "CheckpointError"],
    "regions": ["partition", "Partition"],
    "embeddings": ["embedding_spectrum", "EmbeddingAccumulator", "linear_probe", "rankme"],
    "ssl": ["info_nce", "vicreg", "vicreg_terms", "byol", "simsiam", "alignment", "Siamese", "SSLLoss", "fit"],
    "augment": ["ImageAugment"],
}


def test_every_declared_name_exists_and_nothing_private_is_exported():
    for name in geometry.__all__:
        assert hasattr(geometry, name), name
        assert not name.startswith("_"), name
    for module, names in DESIGN.items():
        for name in names:
            assert hasattr(getattr(geometry, module), name), f"geometry.{module}.{name}"


def test_jacobian_field_signature_is_the_designed_one():
    parameters = inspect.signature(geometry.jacobian_field).parameters
    assert list(parameters)[:2] == ["f", "points"]
    for keyword, default in (("mode", "auto"), ("params", None), ("chunk_size", None), ("reduce", None),
                             ("devices", None)):
        assert parameters[keyword].default == default and parameters[keyword].kind == parameters[keyword].KEYWORD_ONLY


SHAPE_CHECKED = {
    "spectra": ["singular_values", "numerical_rank", "effective_rank", "stable_rank", "condition_number", "log_volume",
                "summary"],
    "metric": ["pullback_metric", "dense_layer_singular_values", "metric_ellipse", "pairwise_distances", "knn_agreement",
               "distance_rank_correlation"],
    "similarity": ["cka", "cka_permutation_test"],
    "collapse": ["collapse_metrics"],
    "kernels": ["gram", "min_eigenvalue", "is_psd", "rkhs_norm"],
    "jacobians": ["jacobian_field"],
    "probe": ["outputs", "inputs", "input_jacobian_field", "local_jacobian_field"],
    "matfree": ["singular_values", "log_volume", "frobenius_norm_squared", "spectral_density"],
    "plane": ["pca_plane", "data_plane"],
}


def test_public_array_functions_carry_checked_shape_annotations():
    """Shapes in the types, enforced on every call (geometry.shapes.shape_checked)."""
    for module, names in SHAPE_CHECKED.items():
        for name in names:
            fn = getattr(getattr(geometry, module), name)
            annotations = getattr(fn, "__wrapped__", fn).__annotations__
            assert hasattr(fn, "__wrapped__"), f"geometry.{module}.{name} is not shape_checked"
            assert any("[" in str(a) and "Array" in str(a) for a in annotations.values()), f"{module}.{name}"
