"""A model as a piecewise-linear function of its input: its switches and its affine pieces.

`pieces(fn, x)` runs fn's jaxpr with an interpreter that knows which values depend on x. Every
place where the function may bend is a *switch*: a choice among k affine candidates of which the
largest wins — relu's max(z, 0) (candidates z, 0), leaky relu's z ≥ 0 test, abs, min/max,
clipping, max pooling (the k entries of each window), argmax. Everything else that touches x
must be affine in it (Linear, Conv, BatchNorm in eval mode, residual adds, concatenation,
reshapes, nnx.scan over layers); anything else (tanh, a product of two x-dependent values, a
LayerNorm's division by its own spread) is a ValueError naming the operation and where it is.

With `choices` given, switches whose *level* is below `forced_level` take the given choice
instead of comparing their candidates. A switch's level is how many switches precede it on its
longest dependency path (a depth-L ReLU MLP: layer l's units are level l − 1), so once every
switch below level ℓ is forced the function is affine in x up to level ℓ, and the candidates of
the level-ℓ switches are affine functions of x everywhere: `jax.jacfwd` of this function gives
their exact forms, and with every switch forced, the exact affine piece of the whole model.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
from jax.extend import core as jex

# affine in every x-dependent operand (the others are parameters or region-wise constants)
_LINEAR = {
    "add", "sub", "neg", "add_any", "reduce_sum", "reshape", "broadcast_in_dim", "transpose", "squeeze",
    "expand_dims", "concatenate", "slice", "rev", "copy", "copy_p", "pad", "dynamic_slice",
    "dynamic_update_slice", "gather", "scatter-add", "scatter_add", "cumsum", "reduce_precision", "select_n",
    "split", "stack", "real", "optimization_barrier", "sharding_constraint",
}
# affine in x when at most one operand depends on x (the first one, for div)
_BILINEAR = {"mul", "dot_general", "conv_general_dilated"}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@dataclasses.dataclass(frozen=True)
class Switch:
    """One switching operation: `groups` independent choices among `candidates` values each,
    choices [offset, offset + groups) of the pattern, at `level`; `where` is the user's line."""

    primitive: str
    where: str
    groups: int
    candidates: int
    level: int
    offset: int


@dataclasses.dataclass
class _Value:
    value: jax.Array
    varying: bool = False  # depends on x affinely (within a region)
    level: int = 0  # switches on the longest path that decided it


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - private API; the message then names only the operation
        return "unknown location"


def not_piecewise_linear(name: str, where: str) -> ValueError:
    return ValueError(
        f"the model is not piecewise linear in its input: `{name}` acts on a value that depends on the "
        f"input (at {where}). Exact linear regions need a model built from affine layers (Linear, Conv, "
        "BatchNorm in eval mode, residual adds, concatenation) and piecewise-linear activations (relu, "
        "leaky_relu, abs, min/max, clipping, max pooling); smooth activations (tanh, sigmoid, gelu, "
        "softplus), softmax and LayerNorm are not. For smooth models use the sampled maps "
        "(geometry.jacobians.jacobian_field on a grid).")


class _Interpreter:
    def __init__(self, choices=None, forced_level=None):
        self.choices, self.forced_level = choices, forced_level
        self.switches: list[Switch] = []
        self.candidates: list[jax.Array] = []  # (groups · candidates,) per switch
        self.choices_made: list[jax.Array] = []  # (groups,) per switch

    @property
    def size(self) -> int:
        return sum(s.groups for s in self.switches)

    def switch(self, name, where, stacked: jax.Array, level: int) -> jax.Array:
        """The winning index along the last axis of stacked (..., k): computed, or forced."""
        groups, k = math.prod(stacked.shape[:-1]), stacked.shape[-1]
        self.switches.append(Switch(name, where, groups, k, level, self.size))
        flat = stacked.reshape(groups, k)
        self.candidates.append(flat.reshape(-1))
        choice = jnp.argmax(flat, axis=1).astype(jnp.int32)
        if self.choices is not None and self.choices.shape[0]:
            start = self.switches[-1].offset
            forced = self.choices[start:start + groups]
            choice = jnp.where(level < self.forced_level, forced, choice)
        self.choices_made.append(choice)
        return choice.reshape(stacked.shape[:-1])

    def run(self, jaxpr, consts, args: list[_Value]) -> list[_Value]:
        env = {}

        def read(var):
            if isinstance(var, jex.Literal):
                return _Value(var.val)
            return env[var]

        for var, const in zip(jaxpr.constvars, consts):
            env[var] = _Value(const)
        for var, arg in zip(jaxpr.invars, args):
            env[var] = arg
        for eqn in jaxpr.eqns:
            inputs = [read(v) for v in eqn.invars]
            outputs = self.equation(eqn, inputs)
            for var, out in zip(eqn.outvars, outputs):
                env[var] = out
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn, inputs: list[_Value]) -> list[_Value]:
        name = eqn.primitive.name
        level = max((v.level for v in inputs), default=0)
        if not any(v.varying for v in inputs):
            if level == 0 or not _has_subjaxpr(eqn):
                return [_Value(o, False, level) for o in _bind(eqn, [v.value for v in inputs])]
        if name == "scan":
            return self.scan(eqn, inputs)
        if name in ("cond", "while"):
            raise ValueError(f"`lax.{name}` on a value that depends on the input (at {_where(eqn)}): exact "
                             "linear regions need a loop or branch that does not depend on x (nnx.scan and "
                             "Python loops are fine)")
        sub = next((eqn.params[p] for p in _CALLS if p in eqn.params), None)
        if sub is not None:
            closed = sub if isinstance(sub, jex.ClosedJaxpr) else jex.ClosedJaxpr(sub, ())
            return self.run(closed.jaxpr, closed.consts, inputs)
        values = [v.value for v in inputs]
        varying = [v.varying for v in inputs]
        where = _where(eqn)
        switched = self.switching(name, eqn, values, varying, level, where)
        if switched is not None:
            return switched
        if name in _LINEAR or (name in _BILINEAR and sum(varying) <= 1) or (name == "div" and not varying[1]) \
                or (name == "integer_pow" and eqn.params["y"] == 1) \
                or (name == "convert_element_type" and jnp.issubdtype(eqn.params["new_dtype"], jnp.floating)):
            return [_Value(o, True, level) for o in _bind(eqn, values)]
        raise not_piecewise_linear(name, where)

    def switching(self, name, eqn, values, varying, level, where):
        """The switch primitives: (outputs) or None when name is not one."""
        def pick(stacked, choice):
            return jnp.take_along_axis(stacked, choice[..., None], axis=-1)[..., 0]

        def pair(a, b):
            a, b = jnp.broadcast_arrays(a, b)
            return jnp.stack([a, b], axis=-1)

        if name in ("max", "min"):
            stacked = pair(*values)
            choice = self.switch(name, where, stacked if name == "max" else -stacked, level)
            return [_Value(pick(stacked, choice), True, level + 1)]
        if name in ("ge", "gt", "le", "lt"):
            first, second = values if name in ("ge", "gt") else values[::-1]
            choice = self.switch(name, where, pair(first, second), level)
            return [_Value(choice == 0, False, level + 1)]
        if name in ("abs", "sign"):
            stacked = pair(values[0], -values[0])
            choice = self.switch(name, where, stacked, level)
            if name == "abs":
                return [_Value(pick(stacked, choice), True, level + 1)]
            return [_Value(jnp.where(choice == 0, 1, -1).astype(values[0].dtype), False, level + 1)]
        if name == "clamp":  # clamp(lo, x, hi) = min(max(x, lo), hi): two switches in sequence
            low, x, high = values
            stacked = pair(x, low)
            raised = pick(stacked, self.switch("clamp", where, stacked, level))
            stacked = pair(raised, high)
            return [_Value(pick(stacked, self.switch("clamp", where, -stacked, level + 1)), True, level + 2)]
        if name in ("reduce_max", "reduce_min", "argmax", "argmin"):
            axes = eqn.params["axes"]
            x = values[0]
            kept = [a for a in range(x.ndim) if a not in axes]
            stacked = jnp.transpose(x, kept + list(axes)).reshape(*[x.shape[a] for a in kept], -1)
            choice = self.switch(name, where, stacked if name in ("reduce_max", "argmax") else -stacked, level)
            if name.startswith("arg"):
                return [_Value(choice.astype(eqn.params["index_dtype"]), False, level + 1)]
            return [_Value(pick(stacked, choice), True, level + 1)]
        if name == "reduce_window_max":
            return [_Value(self.max_pool(eqn, values[0], level, where), True, level + 1)]
        return None

    def max_pool(self, eqn, x, level, where):
        p = eqn.params
        if any(lo or hi for lo, hi in p["padding"]) or set(p["base_dilation"]) | set(p["window_dilation"]) != {1}:
            raise ValueError(f"max pooling with padding or dilation (at {where}) is not supported by exact linear "
                             "regions; use padding='VALID'")
        out_shape = eqn.outvars[0].aval.shape
        windows = []
        for start in itertools.product(*[range(w) for w in p["window_dimensions"]]):
            limit = [s + (n - 1) * stride + 1 for s, n, stride in zip(start, out_shape, p["window_strides"])]
            windows.append(jax.lax.slice(x, start, limit, p["window_strides"]))
        stacked = jnp.stack(windows, axis=-1)
        choice = self.switch("max_pool", where, stacked, level)
        return jnp.take_along_axis(stacked, choice[..., None], axis=-1)[..., 0]

    def scan(self, eqn, inputs):
        """lax.scan (nnx.scan over layers) unrolled: each step's switches are its own."""
        p = eqn.params
        body = p["jaxpr"]
        consts = inputs[:p["num_consts"]]
        carry = inputs[p["num_consts"]:p["num_consts"] + p["num_carry"]]
        xs = inputs[p["num_consts"] + p["num_carry"]:]
        steps = range(p["length"])[::-1] if p["reverse"] else range(p["length"])
        ys = {}
        for i in steps:
            sliced = [_Value(x.value[i], x.varying, x.level) for x in xs]
            out = self.run(body.jaxpr, body.consts, consts + carry + sliced)
            carry, ys[i] = out[:p["num_carry"]], out[p["num_carry"]:]
        stacked = []
        for j, var in enumerate(eqn.outvars[p["num_carry"]:]):
            column = [ys[i][j] for i in range(p["length"])]
            stacked.append(_Value(jnp.stack([c.value for c in column]), any(c.varying for c in column),
                                  max(c.level for c in column)))
        return carry + stacked


def _bind(eqn, values) -> list:
    """The equation's primitive applied to values, as eval_jaxpr does."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


def _has_subjaxpr(eqn) -> bool:
    return eqn.primitive.name == "scan" or any(p in eqn.params for p in _CALLS)


def run(pure, params, x, choices=None, forced_level=None, *, with_choices: bool = False):
    """(output leaves, candidates (K,), switches) of pure(params, x), x-dependence traced from x,
    and with_choices, every switch's choice (G,) as a fourth entry.

    choices (G,) int32 and forced_level (a scalar) force the switches below that level."""
    closed = jax.make_jaxpr(pure)(params, x)
    leaves = jax.tree_util.tree_leaves(params)
    interpreter = _Interpreter(choices, forced_level)
    args = [_Value(leaf) for leaf in leaves] + [_Value(x, True, 0)]
    outputs = interpreter.run(closed.jaxpr, closed.consts, args)
    candidates = jnp.concatenate(interpreter.candidates) if interpreter.candidates else jnp.zeros((0,), x.dtype)
    if with_choices:
        made = jnp.concatenate(interpreter.choices_made) if interpreter.choices_made else jnp.zeros((0,), jnp.int32)
        return [o.value for o in outputs], candidates, interpreter.switches, made
    return [o.value for o in outputs], candidates, interpreter.switches
