"""layer-geometry: what activation functions do to the geometry of neural-network layers.

`geometry.report(model, points)` is the front door: a per-layer table (pandas) and a figure.
The public API is the modules below and, for the most used entry points, the names
re-exported here (docs/library.md lists them). Everything whose name starts with an underscore,
and every module attribute not documented in its module's docstring, is private.

    from geometry import jacobian_field, probe, spectra
    J = jacobian_field(model, points)                 # any NNX module / function / f(params, x)
    fields = probe.input_jacobian_field(model, points, "layers/*")
"""

from geometry import (
    activation_stats,
    activations,
    augment,
    batching,
    calling,
    capture,
    chain,
    collapse,
    data,
    discovery,
    distributed,
    embeddings,
    free_probability,
    functional,
    identification,
    jacobians,
    kernels,
    krylov,
    layers,
    local,
    matfree,
    metric,
    models,
    partitions,
    plane,
    probe,
    recording,
    regions,
    report,
    shapes,
    similarity,
    spectra,
    ssl,
    theory,
    training,
    weights,
)
from geometry.activations import NAMES as ACTIVATIONS
from geometry.collapse import CollapseAccumulator, collapse_metrics
from geometry.data import grid, load_dataset, load_digits, make_dataset, stratified_split
from geometry.embeddings import EmbeddingAccumulator, embedding_spectrum, linear_probe
from geometry.functional import jit_module
from geometry.jacobians import jacobian_field, pure_jacobian_field
from geometry.layers import Dense, LayerNorm, Pointwise, dense_weight
from geometry.metric import chain_log_volume, dense_layer_singular_values, pullback_metric
from geometry.models import MLP, CausalLM, KernelMLP
from geometry.similarity import cka, cka_permutation_test
from geometry.theory import fuss_catalan, mean_field, prob_any_dead, prob_relu_rank_deficient
from geometry.training import CheckpointError, TrainConfig, train

__all__ = [
    # modules
    "activation_stats", "activations", "augment", "batching", "calling", "capture", "chain", "collapse", "data", "discovery", "distributed", "embeddings", "free_probability", "functional",
    "identification", "jacobians", "kernels", "krylov", "layers", "local", "matfree", "metric", "models", "partitions", "plane", "probe", "recording",
    "regions", "report", "shapes",
    "similarity", "spectra", "ssl", "theory", "training", "weights",
    # entry points
    "ACTIVATIONS", "CausalLM", "CheckpointError", "CollapseAccumulator", "Dense", "EmbeddingAccumulator", "KernelMLP", "LayerNorm", "MLP",
    "Pointwise", "TrainConfig", "chain_log_volume", "cka", "cka_permutation_test", "collapse_metrics", "dense_layer_singular_values", "dense_weight", "embedding_spectrum",
    "fuss_catalan", "grid", "jacobian_field", "jit_module", "linear_probe", "load_dataset", "load_digits", "make_dataset", "mean_field",
    "prob_any_dead", "prob_relu_rank_deficient", "pullback_metric", "pure_jacobian_field", "stratified_split", "train",
]
