"""Flax NNX models whose layer geometry the library measures.

`MLP` is a stack of hidden layers (`HiddenLayer`, under the paths "layers/0", "layers/1", …)

    z_l = W_l h_{l-1} + b_l,     a_l = LayerNorm(z_l) or z_l,     h_l = φ(a_l)
    (residual: h_l = h_{l-1} + φ(a_l) where the widths allow it)

followed by an optional linear readout ("readout"). Weights are stored as (out, in)
matrices so the code reads like the maths: the layer Jacobian is D_φ(a_l) W_l (no norm,
no residual); `geometry.layers.dense_weight` converts to and from Flax's (in, out) kernels.

The models expose their internals the way any user's model does: as submodules.
`geometry.probe` reads them by path or type — h_l is the output of "layers/l", the
pre-activation a_l the input of "layers/l/activation" (a `Pointwise`), z_l the output of
"layers/l/dense" — so the library's models and a user's go through one code path.
Models take one example of shape (in_features,); leading batch axes also work.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from geometry import activations
from geometry.kernel_models import KernelMLP, RBFDense, YatDense  # noqa: F401  (every model, one namespace)
from geometry.language_model import CausalLM  # noqa: F401
from geometry.layers import INITS, Dense, LayerNorm, Pointwise, gaussian, init_weight, leading_axes, orthogonal  # noqa: F401

NORMS = (None, "layernorm")


class HiddenLayer(nnx.Module):
    """h = φ(LayerNorm(W h_prev + b)) (LayerNorm optional), plus h_prev when residual and the widths agree."""

    def __init__(self, in_features: int, out_features: int, activation, *, norm: str | None, residual: bool,
                 dense: dict, rngs: nnx.Rngs):
        self.dense = Dense(in_features, out_features, rngs=rngs, **dense)
        self.norm = LayerNorm(out_features, dtype=dense["dtype"]) if norm == "layernorm" else None
        self.activation = Pointwise(activation)
        self.residual = residual and in_features == out_features

    def __call__(self, h: jax.Array) -> jax.Array:
        preactivation = self.dense(h)
        if self.norm is not None:
            preactivation = self.norm(preactivation)
        out = self.activation(preactivation)
        return h + out if self.residual else out


class MLP(nnx.Module):
    """Multilayer perceptron with pointwise activation.

    Args:
      in_features: input dimension n₀.
      widths: hidden width (int, with `depth`) or one width per hidden layer.
      depth: number of hidden layers when `widths` is an int.
      out_features: size of a linear readout; None means the output is h_L.
      activation: a name from `geometry.activations.NAMES` (or an `Activation`).
      residual: h_l = h_{l-1} + φ(a_l) for layers whose input and output widths agree.
      norm: None or "layernorm" (applied to z_l, before φ).
      spectral_norm: every weight matrix divided by its largest singular value.
      init, sigma_w2, sigma_b2: initialisation (see `geometry.layers.init_weight`); biases ~ N(0, σ_b²).
    """

    def __init__(
        self,
        in_features: int,
        widths: int | Sequence[int],
        depth: int | None = None,
        out_features: int | None = None,
        activation: str | activations.Activation = "relu",
        *,
        residual: bool = False,
        norm: str | None = None,
        spectral_norm: bool = False,
        init: str = "he",
        sigma_w2: float | None = None,
        sigma_b2: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if isinstance(widths, int):
            if depth is None:
                raise ValueError("give depth when widths is a single int")
            widths = (widths,) * depth
        widths = tuple(int(w) for w in widths)
        if depth is not None and depth != len(widths):
            raise ValueError(f"depth={depth} but {len(widths)} widths given")
        if not widths or min(widths) < 1 or in_features < 1:
            raise ValueError(f"need at least one layer and positive sizes, got in={in_features}, widths={widths}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: None, 'layernorm'")
        self.activation = activations.get(activation)
        self.in_features = in_features
        self.widths = widths
        self.residual = residual
        dense = dict(init=init, sigma_w2=sigma_w2, sigma_b2=sigma_b2, spectral_norm=spectral_norm, dtype=dtype)
        sizes = (in_features, *widths)
        # the layers draw their weights in order 0..L-1 and the readout last: the same draws
        # from `rngs` whatever the norm or residual options
        self.layers = nnx.List([HiddenLayer(sizes[i], sizes[i + 1], self.activation, norm=norm, residual=residual,
                                            dense=dense, rngs=rngs) for i in range(len(widths))])
        self.readout = Dense(widths[-1], out_features, rngs=rngs, **dense) if out_features else None

    @property
    def depth(self) -> int:
        return len(self.widths)

    def features(self, x: jax.Array) -> jax.Array:
        """The last hidden state h_L: the representation the readout sees."""
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects inputs with last axis {self.in_features}, got shape {tuple(x.shape)}")
        h = x
        for layer in self.layers:
            h = layer(h)
        return h

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.features(x)
        return self.readout(h) if self.readout is not None else h


def _layernorm_jacobian(norm: LayerNorm, z: jax.Array) -> jax.Array:
    # a = γ ⊙ ẑ + β,  ẑ = (z − μ)/s,  s = √(var + ε):  ∂ẑ/∂z = (I − 11ᵀ/k − ẑẑᵀ/k) / s
    k = z.shape[-1]
    centred = z - z.mean()
    s = jnp.sqrt(jnp.mean(centred**2) + norm.epsilon)
    z_hat = centred / s
    projector = jnp.eye(k, dtype=z.dtype) - 1.0 / k - jnp.outer(z_hat, z_hat) / k
    return norm.scale[...][:, None] * projector / s


def closed_form_input_jacobians(model: MLP, x: jax.Array) -> tuple[jax.Array, ...]:
    """∂h_l/∂x of an MLP by the closed form J_l = D_φ(a_l) [J_LN] W_l (+ J_{l-1} if residual), chained.

    Uses the activation's hand-written derivative and the weights, not autodiff: the oracle
    that `geometry.jacobians` and `geometry.probe` are tested against. One example x (n₀,).
    """
    total = jnp.eye(model.in_features, dtype=x.dtype)  # ∂h_0/∂x, (n₀, n₀)
    h, result = x, []
    for layer in model.layers:
        z = layer.dense(h)
        a = layer.norm(z) if layer.norm is not None else z
        # D_φ [J_LN] W applied to the running product, not formed: under vmap a formed D_φ W
        # is a (k_l, k_{l-1}) array per point, while W J_{l-1} shares W across all points
        chained = layer.dense.effective_weight() @ total  # (k_l, n₀)
        if layer.norm is not None:
            chained = _layernorm_jacobian(layer.norm, z) @ chained
        chained = layer.activation.derivative(a)[:, None] * chained
        total = chained + total if layer.residual else chained
        h = layer(h)
        result.append(total)
    return tuple(result)
