"""The playground's network: the library's own layers, one kind per hidden layer.

    plane point (x₁, x₂) → features (x₁, x₂, x₁², x₂², x₁x₂, sin x₁, sin x₂: the chosen ones)
        → [layer 1] → … → [layer L] → readout (classes, or 1 value for regression)

The feature map is the net's first module, so every Jacobian the page shows is taken with
respect to the plane point through it (the chain rule by autodiff, nothing special-cased).
L = 0 is allowed: the features go straight to the readout (TensorFlow Playground's "no hidden
layer").

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
from playground.config import KERNEL_KINDS, LINEAR_FEATURES, Config

FEATURE_FUNCTIONS = {
    "x1": lambda x: x[0], "x2": lambda x: x[1], "x1sq": lambda x: x[0] ** 2, "x2sq": lambda x: x[1] ** 2,
    "x1x2": lambda x: x[0] * x[1], "sinx1": lambda x: jnp.sin(x[0]), "sinx2": lambda x: jnp.sin(x[1]),
}


class Features(nnx.Module):
    """(2,) plane point → (F,) chosen features; no parameters."""

    def __init__(self, names: tuple[str, ...]):
        self.names = tuple(names)

    def __call__(self, x):
        return jnp.stack([FEATURE_FUNCTIONS[name](x) for name in self.names])


def piecewise_linear_inputs(config: Config) -> bool:
    return all(name in LINEAR_FEATURES for name in config.features)

# He initialisation keeps ReLU-like layers' variance; Xavier suits the odd, saturating ones
XAVIER_KINDS = ("none", "sigmoid", "tanh")
PIECEWISE_LINEAR = ("relu", "leaky_relu")


def activation_name(kind: str) -> str:
    return "identity" if kind == "none" else kind


class Net(nnx.Module):
    def __init__(self, config: Config, in_features: int, classes: int, *, rngs: nnx.Rngs):
        if in_features != 2:
            raise ValueError(f"the playground's nets take plane points (2 coordinates), got in_features={in_features}")
        self.features = Features(config.features)
        sizes = (len(config.features),) + (config.width,) * config.depth
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
        self.readout = Dense(sizes[-1], classes, init="xavier", rngs=rngs)

    def __call__(self, x):
        h = self.features(x)
        for layer in self.layers:
            h = layer(h)
        return self.readout(h)


def build(config: Config, in_features: int, classes: int) -> Net:
    """classes: the number of outputs (1 for regression)."""
    return Net(config, in_features, classes, rngs=nnx.Rngs(config.seed))


def linear_total(net: Net) -> np.ndarray | None:
    """W_total = W_out W_L ⋯ W_1 (classes × features): the single matrix the same weights make without
    activations (residual layers add I). None when a kernel layer has no weight matrix to chain."""
    total = np.eye(len(net.features.names))
    for layer in net.layers:
        if isinstance(layer, (YatDense, RBFDense)):
            return None
        weight = np.asarray(dense_weight(layer.dense), np.float64)
        total = weight @ total + (total if layer.residual else 0)
    return np.asarray(dense_weight(net.readout), np.float64) @ total


def is_kernel(kind: str) -> bool:
    return kind in KERNEL_KINDS
