"""Flax NNX models whose layer geometry the library measures.

`MLP` is a stack of hidden layers

    z_l = W_l h_{l-1} + b_l,     a_l = LayerNorm(z_l) or z_l,     h_l = φ(a_l)
    (residual: h_l = h_{l-1} + φ(a_l) where the widths allow it)

followed by an optional linear readout. Weights are stored as (out, in) matrices so the
code reads like the maths: the layer Jacobian is D_φ(a_l) W_l (no norm, no residual).

`MLP.trace(x)` returns every layer's pre-activation a_l (the argument of φ, i.e. after
LayerNorm when ``norm="layernorm"``), every hidden state h_l, and the output.
Models take one example of shape (in_features,) — leading batch axes also work, but the
Jacobian helpers expect a single example and are batched with `jax.vmap`.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry import activations

INITS = ("he", "xavier", "gaussian", "orthogonal")
NORMS = (None, "layernorm")


def gaussian(key, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal draws of `shape`, from a NumPy generator seeded by a JAX key.

    jax.random.normal compiles an XLA program for every new shape (~0.2 s each on CPU),
    which made building a model cost seconds; NumPy's generator needs no compilation and
    is just as deterministic given the key.
    """
    return jnp.asarray(_normal_draws(key, shape), dtype=dtype)


def _normal_draws(key, shape: tuple[int, ...]) -> np.ndarray:
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return np.random.default_rng(seed).standard_normal(shape)


def orthogonal(key, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """A Haar-random matrix with orthonormal rows (out ≤ in) or columns (out ≥ in)."""
    rows, cols = shape
    q, r = np.linalg.qr(_normal_draws(key, (max(shape), min(shape))))
    q = q * np.sign(np.diag(r))  # the sign fix makes the distribution Haar
    return jnp.asarray(q if rows >= cols else q.T, dtype=dtype)


def leading_axes(v: jax.Array, x: jax.Array) -> jax.Array:
    """v (k,) reshaped to broadcast against a batch shaped like x (..., n) without rank promotion."""
    return v.reshape((1,) * (x.ndim - 1) + v.shape)


def init_weight(key, out_features: int, in_features: int, init: str, sigma_w2: float | None, dtype):
    """An (out, in) weight matrix.

    he:         N(0, 2 / fan_in)
    xavier:     N(0, 2 / (fan_in + fan_out))
    gaussian:   N(0, σ_w² / fan_in)             (mean-field convention; σ_w² default 1)
    orthogonal: σ_w · Q, Q with orthonormal rows or columns (Haar; σ_w² default 1)
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if sigma_w2 is not None and init in ("he", "xavier"):
        raise ValueError(f"sigma_w2 applies to init='gaussian' or 'orthogonal', not {init!r}")
    if init == "orthogonal":
        gain = jnp.sqrt(1.0 if sigma_w2 is None else sigma_w2)
        return gain * orthogonal(key, (out_features, in_features), dtype)
    variance = {
        "he": 2.0 / in_features,
        "xavier": 2.0 / (in_features + out_features),
        "gaussian": (1.0 if sigma_w2 is None else sigma_w2) / in_features,
    }[init]
    return jnp.sqrt(variance) * gaussian(key, (out_features, in_features), dtype)


class Dense(nnx.Module):
    """x ↦ W x + b with W of shape (out, in); optionally W divided by its spectral norm."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init: str = "he",
        sigma_w2: float | None = None,
        sigma_b2: float = 0.0,
        spectral_norm: bool = False,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.weight = nnx.Param(init_weight(rngs.params(), out_features, in_features, init, sigma_w2, dtype))
        bias = jnp.sqrt(sigma_b2) * gaussian(rngs.params(), (out_features,), dtype)
        self.bias = nnx.Param(bias if sigma_b2 > 0 else jnp.zeros((out_features,), dtype))
        self.spectral_norm = spectral_norm

    def effective_weight(self) -> jax.Array:
        """The matrix actually applied: W, or W / σ_max(W) with spectral normalisation."""
        weight = self.weight[...]
        if self.spectral_norm:
            # exact σ_max (an SVD of a small matrix), not a power-iteration estimate: the
            # geometry measurements need the bound ‖W‖₂ = 1 to hold exactly
            weight = weight / jnp.linalg.norm(weight, ord=2)
        return weight

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.effective_weight().T + leading_axes(self.bias[...], x)


class LayerNorm(nnx.Module):
    """a = γ ⊙ (z − mean z) / √(var z + ε) + β over the last axis.

    The project's own rather than `nnx.LayerNorm`: under jit(vmap(jacfwd)) over 512
    points, both nnx.LayerNorm and the form (z − μ)/√(mean((z − μ)²) + ε) came out wrong
    on XLA:CPU (jax 0.10.2; errors ~0.3–1.8 on entries of size ~1.5; eager evaluation and
    batches ≤ 128 were right), while this jnp.var / rsqrt form is right. A regression
    test compares 512-point fields with the closed form.
    """

    def __init__(self, num_features: int, *, epsilon: float = 1e-6, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((num_features,), dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), dtype))
        self.epsilon = epsilon

    def __call__(self, z: jax.Array) -> jax.Array:
        mean = jnp.mean(z, axis=-1, keepdims=True)
        normalised = (z - mean) * jax.lax.rsqrt(jnp.var(z, axis=-1, keepdims=True) + self.epsilon)
        return normalised * leading_axes(self.scale[...], z) + leading_axes(self.bias[...], z)


class TracedModel:
    """`hidden_states`, `features` and `__call__` for any model with a `trace(x)` method
    returning `.hidden` (one array per layer) and `.output`."""

    def hidden_states(self, x: jax.Array) -> tuple[jax.Array, ...]:
        return self.trace(x).hidden

    def features(self, x: jax.Array) -> jax.Array:
        """The last hidden state h_L: the representation the readout sees."""
        return self.trace(x).hidden[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.trace(x).output


class Trace(NamedTuple):
    preactivations: tuple[jax.Array, ...]  # a_l, the argument of φ in layer l
    hidden: tuple[jax.Array, ...]  # h_l
    output: jax.Array


class MLP(TracedModel, nnx.Module):
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
      init, sigma_w2, sigma_b2: initialisation (see `init_weight`); biases ~ N(0, σ_b²).
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
        self.layers = nnx.List([Dense(sizes[i], sizes[i + 1], rngs=rngs, **dense) for i in range(len(widths))])
        self.norms = nnx.List(
            [LayerNorm(w, dtype=dtype) for w in widths] if norm == "layernorm" else []
        )
        self.readout = Dense(widths[-1], out_features, rngs=rngs, **dense) if out_features else None

    @property
    def depth(self) -> int:
        return len(self.widths)

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects inputs with last axis {self.in_features}, got shape {tuple(x.shape)}")

    def apply_layer(self, l: int, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Hidden layer l (0-based): h_{l} from h_{l-1}; returns (a_l, h_l)."""
        preactivation = self.layers[l](h)
        if len(self.norms):
            preactivation = self.norms[l](preactivation)
        out = self.activation(preactivation)
        if self.residual and h.shape[-1] == out.shape[-1]:
            out = h + out
        return preactivation, out

    def trace(self, x: jax.Array) -> Trace:
        self._check_input(x)
        preactivations, hidden, h = [], [], x
        for l in range(self.depth):
            a, h = self.apply_layer(l, h)
            preactivations.append(a)
            hidden.append(h)
        output = self.readout(h) if self.readout is not None else h
        return Trace(tuple(preactivations), tuple(hidden), output)


# Kernel layers and the causal language model live in their own modules (one concept per
# file) and are re-exported here, so `geometry.models` names every model of the project.
# Lazily: those modules import Dense and LayerNorm from this one, in either import order.
_REEXPORTED = {"KernelMLP": "kernel_models", "RBFDense": "kernel_models", "YatDense": "kernel_models",
               "CausalLM": "language_model"}


def __getattr__(name: str):
    if name in _REEXPORTED:
        return getattr(importlib.import_module(f"geometry.{_REEXPORTED[name]}"), name)
    raise AttributeError(f"module 'geometry.models' has no attribute {name!r}")
