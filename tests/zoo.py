"""Models written as public NNX model zoos write them (inline activations, no library layers),
shared by the tests; `small_mlp` is a factory for the report's command line."""

import jax
import jax.numpy as jnp
from flax import nnx


class ZooCNN(nnx.Module):
    """conv → BatchNorm → relu, conv + skip → relu, as the Flax MNIST tutorial and ResNets write it."""

    def __init__(self, rngs, dtype=jnp.float32):
        self.conv1 = nnx.Conv(1, 4, (3, 3), param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.bn1 = nnx.BatchNorm(4, param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3), param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(4 * 25, 3, param_dtype=dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.conv2(x) + x)
        return self.head(x.reshape(-1))


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(6, 6, rngs=rngs)

    def __call__(self, x):
        return x + jax.nn.gelu(self.linear(x), approximate=False)


class ScanStack(nnx.Module):
    def __init__(self, rngs, depth=3):
        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return Block(rngs)

        self.blocks = create(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, block):
            return block(x)

        return step(x, self.blocks)


def small_mlp():
    """A 64 → 16 → 10 MLP with an inline relu (digits-sized), for `python -m geometry.report zoo:small_mlp`."""

    class SmallMLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden, self.head = nnx.Linear(64, 16, rngs=rngs), nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.hidden(x)))

    return SmallMLP(nnx.Rngs(0))
