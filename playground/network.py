"""The playground's network: the library's own layers, one kind per hidden layer.

    2 → [layer 1] → … → [layer L] → readout (classes)

A pointwise layer is `geometry.models.HiddenLayer` (Dense, optional LayerNorm, φ, optional
residual), so its pre-activation is the input of "layers/l/activation" exactly as in the
library's MLP; a kernel layer ("yat", "rbf") is `YatDense` / `RBFDense` with no φ after
it. The geometry is read from the running model by `geometry.probe`, never from inside
this class: the page's maps go through the same code path as a user's model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry.kernel_models import RBFDense, YatDense
from geometry.layers import Dense, dense_weight
from geometry.models import HiddenLayer
from playground.config import KERNEL_KINDS, Config

# He initialisation keeps ReLU-like layers' variance; Xavier suits the odd, saturating ones
XAVIER_KINDS = ("none", "sigmoid", "tanh")
PIECEWISE_LINEAR = ("relu", "leaky_relu")


def activation_name(kind: str) -> str:
    return "identity" if kind == "none" else kind


class Net(nnx.Module):
    def __init__(self, config: Config, in_features: int, classes: int, *, rngs: nnx.Rngs):
        sizes = (in_features,) + (config.width,) * config.depth
        layers = []
        for l, kind in enumerate(config.layers):
            if kind == "yat":
                layers.append(YatDense(sizes[l], sizes[l + 1], rngs=rngs))
            elif kind == "rbf":
                layers.append(RBFDense(sizes[l], sizes[l + 1], rngs=rngs))
            else:
                dense = dict(init="xavier" if kind in XAVIER_KINDS else "he", sigma_w2=None, sigma_b2=0.0,
                             spectral_norm=False, dtype=jnp.float32)
                layers.append(HiddenLayer(sizes[l], sizes[l + 1], activation_name(kind),
                                          norm="layernorm" if config.layernorm else None,
                                          residual=config.residual, dense=dense, rngs=rngs))
        self.layers = nnx.List(layers)
        self.readout = Dense(config.width, classes, init="xavier", rngs=rngs)

    def __call__(self, x):
        h = x
        for layer in self.layers:
            h = layer(h)
        return self.readout(h)


def build(config: Config, in_features: int, classes: int) -> Net:
    return Net(config, in_features, classes, rngs=nnx.Rngs(config.seed))


def linear_total(net: Net) -> np.ndarray | None:
    """W_total = W_out W_L ⋯ W_1 (classes × in): the single matrix the same weights make without
    activations (residual layers add I). None when a kernel layer has no weight matrix to chain."""
    total = None
    for layer in net.layers:
        if isinstance(layer, (YatDense, RBFDense)):
            return None
        weight = np.asarray(dense_weight(layer.dense), np.float64)
        step = weight if total is None else weight @ total
        total = step + (total if total is not None and layer.residual else 0)
    return np.asarray(dense_weight(net.readout), np.float64) @ total


def is_kernel(kind: str) -> bool:
    return kind in KERNEL_KINDS
