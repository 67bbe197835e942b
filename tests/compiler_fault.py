"""The jaxlib 0.10.2 fault, in plain JAX: batched Jacobians of RMSNorm / LayerNorm over tokens.

Run by tests/test_canary.py, and by hand against any installed jaxlib:

    python tests/compiler_fault.py        # prints each route's relative error per point

`jit(vmap(jacfwd))` and `jit(vmap(jacrev))` of a norm over a (T, d) token matrix are compared
with the float64 closed form of its Jacobian (no library code, no autodiff in the reference).
On jaxlib 0.10.2 (CPU) the batched routes are 0.18–0.37 off; on 0.10.0 and 0.10.1 all are
within 2e-7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-6
POINTS, TOKENS, WIDTH = 5, 8, 32


def rms_norm(v):
    return v * jax.lax.rsqrt(jnp.mean(jnp.square(v), -1, keepdims=True) + EPS)


def layer_norm(v):
    centred = v - jnp.mean(v, -1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), -1, keepdims=True) + EPS)


def closed_form(name: str, v: np.ndarray) -> np.ndarray:
    """(T, d, T, d) float64 Jacobian of the norm at one token matrix v (T, d): block diagonal.

    RMSNorm: r I − r³ v vᵀ / d with r = (mean v² + eps)^(−1/2). LayerNorm: the same map applied
    to c = P v, P = I − 11ᵀ/d, so its block is (r I − r³ c cᵀ / d) P."""
    v = np.asarray(v, np.float64)
    tokens, width = v.shape
    jacobian = np.zeros((tokens, width, tokens, width))
    centring = np.eye(width) - np.full((width, width), 1.0 / width)
    for t in range(tokens):
        u = v[t] if name == "rms_norm" else centring @ v[t]
        r = (np.mean(u ** 2) + EPS) ** -0.5
        block = r * np.eye(width) - np.outer(u, u) * r ** 3 / width
        jacobian[t, :, t, :] = block if name == "rms_norm" else block @ centring
    return jacobian


def points() -> jax.Array:
    return jax.random.normal(jax.random.key(0), (POINTS, TOKENS, WIDTH))


def errors() -> dict[tuple[str, str], np.ndarray]:
    """{(norm, route): (POINTS,) relative Frobenius error against the closed form}."""
    x = points()
    result = {}
    for name, norm in (("rms_norm", rms_norm), ("layer_norm", layer_norm)):
        reference = [closed_form(name, v) for v in np.asarray(x)]
        routes = {"per-point jit(jacfwd)": lambda v, norm=norm: jnp.stack([jax.jit(jax.jacfwd(norm))(u) for u in v]),
                  "jit(vmap(jacfwd))": jax.jit(jax.vmap(jax.jacfwd(norm))),
                  "jit(vmap(jacrev))": jax.jit(jax.vmap(jax.jacrev(norm)))}
        for route, fn in routes.items():
            field = np.asarray(fn(x), np.float64)
            result[name, route] = np.array([np.linalg.norm(field[i] - reference[i]) / np.linalg.norm(reference[i])
                                            for i in range(POINTS)])
    return result


def faulty(tolerance: float = 1e-4) -> bool:
    """Whether the installed jaxlib gets any route wrong beyond `tolerance`."""
    return any((error > tolerance).any() for error in errors().values())


def library_routes() -> dict[str, str]:
    """{route: "raised CompilerFaultError" or "returned, max relative error e"}: the library's
    derivative routes on an RMSNorm / LayerNorm over tokens, against the closed form."""
    from flax import nnx

    from geometry import batching, jacobians, probe

    class Block(nnx.Module):  # a norm over tokens then a linear map: the first norm of a decoder block
        def __init__(self, norm):
            self.norm = norm

        def __call__(self, v):
            return self.norm(v)

    x = points()
    outcomes = {}
    for name in ("rms_norm", "layer_norm"):
        reference = np.stack([closed_form(name, v) for v in np.asarray(x)])
        norm = (nnx.RMSNorm(WIDTH, epsilon=EPS, use_scale=False, rngs=nnx.Rngs(0)) if name == "rms_norm" else
                nnx.LayerNorm(WIDTH, epsilon=EPS, use_scale=False, use_bias=False, rngs=nnx.Rngs(0)))
        block = Block(norm)
        routes = {
            "jacobian_field(function, forward)": lambda: jacobians.jacobian_field(globals()[name], x, mode="forward"),
            "jacobian_field(function, reverse)": lambda: jacobians.jacobian_field(globals()[name], x, mode="reverse"),
            "jacobian_field(module, forward)": lambda: jacobians.jacobian_field(norm, x, mode="forward"),
            "jacobian_field(module, reverse)": lambda: jacobians.jacobian_field(norm, x, mode="reverse"),
            "input_jacobian_field": lambda: probe.input_jacobian_field(block, x, "norm")["norm"],
            "local_jacobian_field": lambda: probe.local_jacobian_field(block, x, "norm")["norm"],
        }
        for route, run in routes.items():
            try:
                field = np.asarray(run(), np.float64)
            except batching.CompilerFaultError:
                outcomes[f"{name} {route}"] = "raised CompilerFaultError"
                continue
            error = max(np.linalg.norm(field[i] - reference[i]) / np.linalg.norm(reference[i]) for i in range(POINTS))
            outcomes[f"{name} {route}"] = f"returned, max relative error {error:.2e}"
    return outcomes


if __name__ == "__main__":
    print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, {jax.devices()[0].platform}")
    for (name, route), error in errors().items():
        print(f"{name:10s} {route:22s} " + " ".join(f"{e:.2e}" for e in error))
    print("through the library (canary on):")
    for route, outcome in library_routes().items():
        print(f"  {route:45s} {outcome}")
