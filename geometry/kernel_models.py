"""Kernel layers in Flax NNX: selectivity without a pointwise activation.

A kernel layer's unit j computes k(x, w_j) for a positive-definite kernel k and a learned
prototype w_j. Its Jacobian has no diagonal D_φ:

* `YatDense`, y_j = α_j s_j² / q_j with s_j = w_j·x + b_j, q_j = ‖w_j − x‖² + ε:
      ∂y_j/∂x = α_j (2 s_j / q_j) [w_j − (s_j / q_j)(x − w_j)].
  b = softplus(b_raw) ≥ 0 and ε = softplus(ε_raw) > 0 by default, keeping the kernel PSD
  (`geometry.kernels`); `constrained=False` uses b_raw as b (b < 0 allowed) for comparison.
* `RBFDense`, y_j = exp(−‖x − c_j‖² / (2σ_j²)), σ_j = softplus(σ_raw_j):
      ∂y_j/∂x = −y_j (x − c_j) / σ_j².
* `KernelMLP`: blocks (kernel layer → linear map), stacked, then a linear readout; no
  pointwise activation anywhere. The hidden states are the outputs of "mixers/b"
  (read with `geometry.probe`); `features(x)` is the last of them.

All take one example of shape (in_features,); vmap at the call site.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry.layers import Dense, gaussian, leading_axes

KERNELS = ("yat", "rbf")


def _inverse_softplus(y: float) -> float:
    return float(np.log(np.expm1(y)))


class YatDense(nnx.Module):
    """Yat units. `shared=True`: one b and one ε for all units and no per-unit scale, so
    unit j is exactly k(x, w_j) for a single kernel k and a following linear map is a
    kernel machine Σ_j α_j k(x, w_j) with RKHS norm αᵀ K α (`geometry.kernels.rkhs_norm`)."""

    def __init__(self, in_features: int, out_features: int, *, epsilon: float = 1e-2, bias: float = 0.1,
                 constrained: bool = True, learnable_scale: bool = True, shared: bool = False, rngs: nnx.Rngs):
        self.weight = nnx.Param(gaussian(rngs.params(), (out_features, in_features)) / jnp.sqrt(in_features))
        start = _inverse_softplus(bias) if constrained else bias
        per_unit = 1 if shared else out_features
        self.bias_raw = nnx.Param(jnp.full((per_unit,), start))
        self.epsilon_raw = nnx.Param(jnp.full((per_unit,), _inverse_softplus(epsilon)))
        self.scale = nnx.Param(jnp.ones((out_features,))) if learnable_scale and not shared else None
        self.constrained = constrained

    def bias(self) -> jax.Array:
        return jax.nn.softplus(self.bias_raw[...]) if self.constrained else self.bias_raw[...]

    def epsilon(self) -> jax.Array:
        return jax.nn.softplus(self.epsilon_raw[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.weight[...]
        similarity = x @ weight.T + leading_axes(self.bias(), x)  # s_j = w_j·x + b_j
        difference = x[..., None, :] - weight.reshape((1,) * (x.ndim - 1) + weight.shape)
        distance = jnp.sum(difference**2, axis=-1) + leading_axes(self.epsilon(), x)  # q_j
        out = similarity**2 / distance
        return out * leading_axes(self.scale[...], x) if self.scale is not None else out


class RBFDense(nnx.Module):
    """RBF units; `shared=True` uses one width σ for all units (a single kernel)."""

    def __init__(self, in_features: int, out_features: int, *, sigma: float = 1.0, shared: bool = False,
                 rngs: nnx.Rngs):
        self.centers = nnx.Param(gaussian(rngs.params(), (out_features, in_features)))
        self.sigma_raw = nnx.Param(jnp.full((1 if shared else out_features,), _inverse_softplus(sigma)))

    def sigma(self) -> jax.Array:
        return jax.nn.softplus(self.sigma_raw[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        centers = self.centers[...]
        squared = jnp.sum((x[..., None, :] - centers.reshape((1,) * (x.ndim - 1) + centers.shape)) ** 2, axis=-1)
        return jnp.exp(-squared / (2.0 * leading_axes(self.sigma(), x) ** 2))


class KernelMLP(nnx.Module):
    """in → [kernel layer (units) → linear (hidden)] × blocks → linear (out_features)."""

    def __init__(self, in_features: int, units: int, hidden: int, blocks: int, out_features: int, *,
                 kernel: str = "yat", constrained: bool = True, shared: bool = False, rngs: nnx.Rngs):
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
        if blocks < 1:
            raise ValueError(f"need at least one block, got {blocks}")
        self.in_features = in_features
        self.kernel = kernel
        sizes = [in_features] + [hidden] * blocks
        make = (lambda i, o: YatDense(i, o, constrained=constrained, shared=shared, rngs=rngs)) if kernel == "yat" \
            else (lambda i, o: RBFDense(i, o, shared=shared, rngs=rngs))
        self.kernel_layers = nnx.List([make(sizes[b], units) for b in range(blocks)])
        self.mixers = nnx.List([Dense(units, hidden, init="xavier", rngs=rngs) for _ in range(blocks)])
        self.readout = Dense(hidden, out_features, init="xavier", rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The last block's output: the representation the readout sees."""
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"KernelMLP expects inputs with last axis {self.in_features}, got shape {tuple(x.shape)}")
        h = x
        for kernel_layer, mixer in zip(self.kernel_layers, self.mixers):
            h = mixer(kernel_layer(h))
        return h

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.readout(self.features(x))


def parameter_count(model: nnx.Module) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
