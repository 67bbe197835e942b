"""The layers every model of the library is built from, in Flax NNX.

* `Dense`: x ↦ W x + b. The weight is stored **(out, in)**, the layout of the maths
  (J = D_φ W), where Flax's `nnx.Linear` stores its kernel (in, out). `dense_weight`
  turns either (or a bare array with its layout named) into the (out, in) matrix that the
  library's formulas take, so a user's `nnx.Linear` needs no hand transpose.
* `LayerNorm`: over the last axis, in the form that differentiates correctly under
  jit(vmap(jacfwd)) on XLA:CPU (see its docstring).
* `Pointwise`: φ applied elementwise, as a module of its own so that its input — the
  pre-activation a_l — is a value `geometry.probe` can read like any layer's.

Initialisers (`init_weight`, `gaussian`, `orthogonal`) draw from NumPy generators seeded
by JAX keys: no XLA compilation per shape, and the same draws on every backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry import activations

LAYOUTS = ("out_in", "in_out")

INITS = ("he", "xavier", "gaussian", "orthogonal")


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


class Pointwise(nnx.Module):
    """h = φ(a), elementwise: holds an `activations.Activation` (its φ' and declared facts)."""

    def __init__(self, activation: str | activations.Activation):
        self.activation = activations.get(activation)

    def derivative(self, a: jax.Array) -> jax.Array:
        """φ'(a), the diagonal of D_φ, from the hand-written derivative (not autodiff)."""
        return self.activation.derivative(a)

    def __call__(self, a: jax.Array) -> jax.Array:
        return self.activation(a)


def dense_weight(layer, *, layout: str = "out_in") -> jax.Array | np.ndarray:
    """The (out, in) weight matrix W of a dense layer y = W x + b (an array stays NumPy or JAX).

    `layer` may be
      * a `geometry.layers.Dense` (stored (out, in); its spectral normalisation applied),
      * a Flax `nnx.Linear` (kernel stored (in, out): transposed here), or
      * a 2-D array, read in the `layout` named: ``"out_in"`` (the maths, y = W x; the
        default) or ``"in_out"`` (a Flax kernel, y = x @ K).
    `layout` applies only to bare arrays; a layer knows its own.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)} ((out, in) as in y = W x, "
                         "or (in, out) as a Flax kernel)")
    if isinstance(layer, Dense):
        return layer.effective_weight()
    if isinstance(layer, nnx.Linear):
        return layer.kernel[...].T
    if isinstance(layer, nnx.Module):
        raise ValueError(f"dense_weight takes a geometry Dense, an nnx.Linear or a 2-D array, got a "
                         f"{type(layer).__name__} module; pass its weight array and name its layout")
    weight = layer if isinstance(layer, (jax.Array, np.ndarray)) else np.asarray(layer)  # keep float64 NumPy
    if weight.ndim != 2:
        raise ValueError(f"a dense weight must be 2-D, got shape {tuple(weight.shape)}")
    return weight if layout == "out_in" else weight.T


def dense_bias(layer) -> jax.Array | None:
    """The bias b of a `Dense` or `nnx.Linear` (None when the layer has none)."""
    bias = getattr(layer, "bias", None)
    return None if bias is None else bias[...]
