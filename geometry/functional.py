"""Modules as pure functions of their state: the one place the split / jit / merge pattern lives.

Flax NNX modules are Python objects; JAX transforms want pure functions of arrays. The
pattern (Flax's own NNX examples) is to `nnx.split` a module once into a static graph
definition and a state pytree, hand a pure function of the state to `jax.jit` / `jax.vmap`
/ `jax.jacfwd`, and `nnx.merge` inside it.

* `jit_module(fn)`: fn(module, *args) jitted as a function of the module's state, compiled
  once per (graph definition, fn) — new parameter values do not recompile.
* `StaticKey` / `Static`: static arguments for `jax.jit` that hash like their contents when
  they can and fall back to equality when they cannot (a graph definition holding a
  `slice` is unhashable on Python 3.11, yet `nnx.jit` accepts such modules; so do we).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
from flax import nnx


class StaticKey:
    """Base for frozen dataclasses used as static jit arguments: hash by contents, or by type
    when the contents are unhashable (equality then decides, so the cache stays correct)."""

    def __hash__(self):
        try:
            return hash(self._key())
        except TypeError:
            return hash(type(self))

    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()

    def _key(self):
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


@dataclasses.dataclass(frozen=True, eq=False)
class Static(StaticKey):
    """Any value as a static jit argument (see `StaticKey`)."""

    value: Any


@functools.partial(jax.jit, static_argnames=("graphdef", "fn"))
def _apply(graphdef: Static, fn: Static, state, args):
    return fn.value(nnx.merge(graphdef.value, state), *args)


def jit_module(fn: Callable) -> Callable:
    """g(module, *args) = fn(module, *args), jitted as a pure function of the module's state.

    The module is split on each call (cheap) and merged inside the compiled function;
    `fn` should be a module-level function so that the compilation is reused. Array
    arguments are traced; pass static values through `fn` itself.
    """

    @functools.wraps(fn)
    def jitted(module: nnx.Module, *args):
        graphdef, state = nnx.split(module)
        return _apply(Static(graphdef), Static(fn), state, args)

    return jitted
