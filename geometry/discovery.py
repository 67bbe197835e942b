"""Activations found in the computation itself: every elementwise nonlinearity a model applies.

Models write their activations as function calls inside `__call__` (`nnx.relu(x)`,
`jax.nn.gelu(h)`, `x * jax.nn.sigmoid(x)`), not as modules. This module finds them in the
traced program (the jaxpr of one forward pass) and names each by *what it computes*, never
by a Python name.

**Finding.** Walking the program in order, every value that depends on the input x is given
a *root*: the last value made by something that is not elementwise (a matrix product, a
convolution, a reduction, a layer boundary, an input). An elementwise operation whose
x-dependent operands all share one root joins that root's *group*; affine operations
(adding, scaling by constants) before the first nonlinear one are the group's prefix and
start nothing. An operation combining values of different roots (a residual add, SwiGLU's
silu(a)·b) ends both groups: its result is a new root. So relu(BatchNorm(x)), gelu written
out as 0.5·x·(1 + erf(x/√2)), x·sigmoid(x) and a jitted `jax.nn.elu` are each one group.
Each value of a group that is used outside it is one found activation y = φ(z), with z the
single value its nonlinear operations read (or the group's root).

**Identifying.** φ is evaluated on a grid of z values spread over z's own shape (with the
operation's own constants) and compared with the candidates below (float32 tolerance 2e-5
relative to the scale, so the exact (erf) GELU and its tanh approximation are told apart:
they differ by up to 1e-3): "relu", "leaky_relu_<α>" (α read off), "elu", "selu", "celu",
"gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "softplus", "mish", "hard_tanh",
"hard_sigmoid", "hard_silu", "relu6", "clip(a, b)", "abs", "square", "sin", "exp",
"log_sigmoid", "soft_sign". Anything else elementwise is "elementwise" (a per-unit
parameter, a PReLU's slope, also lands here). A call whose body normalises exp over the
last axis is "softmax", reported as the non-elementwise map it is (`elementwise=False`).

`find(closed_jaxpr, varying)` returns the `Found` activations in program order together with
the layer markers (`geometry.recording` marks each recorded call's input and output) and
every other program position, so the probe can name each activation by the layer it runs in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex

from geometry import identification

bind = identification.bind  # re-exported: the program interpreter in geometry.capture uses them
evaluate = identification.evaluate
_UNKNOWN = object()
MARKER = "probe:"  # prefix of the names the recording gives its checkpoint_name markers

_AFFINE = {"add", "sub", "neg", "convert_element_type", "copy", "copy_p", "reduce_precision", "add_any"}
_NONLINEAR = {
    "tanh", "logistic", "exp", "exp2", "expm1", "log", "log1p", "erf", "erfc", "erf_inv", "sin", "cos", "tan",
    "atan", "sqrt", "rsqrt", "cbrt", "integer_pow", "pow", "abs", "sign", "max", "min", "clamp", "select_n", "ge",
    "gt", "le", "lt", "eq", "ne", "and", "or", "not", "is_finite", "square", "atan2", "floor", "ceil", "round",
    "sinh", "cosh", "asinh", "acosh", "atanh", "nextafter",
}
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and",
               "reduce_or", "cumsum", "cumlogsumexp", "cummax", "cummin", "cumprod"}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
          "remat", "checkpoint", "custom_lin"}


@dataclasses.dataclass(frozen=True, eq=False)
class Found:
    """One activation found in the program: y = φ(z), computed by `eqns` (in order) from z.

    `path` is the chain of call equations (their indices) that holds it; `position` its place
    in program order; `gated` whether y is multiplied by a value of another root (SwiGLU's
    silu(a)·b: an activation times a linear branch); `elementwise` False for softmax."""

    name: str
    path: tuple[int, ...]
    z: Any  # the jaxpr variable of the pre-activation
    y: Any  # the jaxpr variable of the output
    eqns: tuple
    position: int
    gated: bool = False
    elementwise: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.y.aval.shape)


@dataclasses.dataclass(frozen=True)
class Marker:
    """A layer boundary the recording put in the program: `kind` "enter" or "exit", `name` the
    call's "path@index", `var` the marked value (the call's first input, or one output leaf)."""

    kind: str
    name: str
    var: Any
    source: Any  # the value the marker reads (for exit: what the layer computed)
    position: int
    path: tuple[int, ...] = ()  # the call equations that hold it (as `Found.path`)


def sub_jaxpr(eqn):
    """The ClosedJaxpr a call equation runs (pjit, custom_jvp_call, ...), or None."""
    for name in _CALL_PARAMS:
        if name in eqn.params:
            sub = eqn.params[name]
            return sub if isinstance(sub, jex.ClosedJaxpr) else jex.ClosedJaxpr(sub, ())
    return None


def _is_elementwise_body(closed, varying_in=None) -> tuple[bool, bool]:
    """(every operation elementwise on the body's x-dependent inputs (`varying_in`, default: its array
    inputs), some of them nonlinear)."""
    invars = closed.jaxpr.invars
    flags = varying_in if varying_in is not None else [getattr(v.aval, "ndim", 0) > 0 for v in invars]
    varying = {v for v, flag in zip(invars, flags) if flag}
    nonlinear = False
    for eqn in closed.jaxpr.eqns:
        inputs = [v for v in eqn.invars if not isinstance(v, jex.Literal) and v in varying]
        if not inputs:
            continue
        name = eqn.primitive.name
        sub = sub_jaxpr(eqn)
        if sub is not None:
            ok, inner = _is_elementwise_body(sub, [not isinstance(v, jex.Literal) and v in varying for v in eqn.invars])
            if not ok:
                return False, False
            nonlinear |= inner
        elif name == "select_n" and eqn.invars[0] not in varying:
            pass  # a constant predicate: a masked copy
        elif name in _NONLINEAR:
            nonlinear = True
        elif name in ("mul", "div"):
            nonlinear |= name == "mul" and len(inputs) > 1 or name == "div" and eqn.invars[1] in inputs
        elif name not in _AFFINE:
            return False, False
        varying.update(eqn.outvars)
    return True, nonlinear


@dataclasses.dataclass
class _Group:
    root: Any
    eqns: list = dataclasses.field(default_factory=list)
    prefix: list = dataclasses.field(default_factory=list)
    started: set = dataclasses.field(default_factory=set)  # values made by the group's nonlinear part


class _Walker:
    def __init__(self):
        self.position = 0
        self.positions: dict = {}  # id(eqn) -> its place in program order
        self.events: list = []  # Found and Marker, in program order
        self.gated: set = set()
        self.absorbed: set = set()  # values inside a found softmax (its exp), not activations of their own
        self.statistics: set = set()  # values computed from reductions of x alone
        self.known: dict = {}

    @staticmethod
    def _fold(eqn, known: dict) -> None:
        """Evaluate an equation of constants alone (small ones) so activations' operands are known."""
        if sub_jaxpr(eqn) is not None or eqn.effects:
            return
        values = [v.val if isinstance(v, jex.Literal) else known.get(v, _UNKNOWN) for v in eqn.invars]
        if any(v is _UNKNOWN for v in values) or sum(math.prod(o.aval.shape) for o in eqn.outvars
                                                     if hasattr(o.aval, "shape")) > 1 << 16:
            return
        try:
            with jax.ensure_compile_time_eval(), jax.debug_nans(False), jax.debug_infs(False):
                known.update(zip(eqn.outvars, identification.bind(eqn, values)))
        except Exception:  # noqa: BLE001 - an operation that cannot run eagerly stays unknown
            return

    def walk(self, closed, varying_in: Sequence[bool], path: tuple[int, ...] = (), known_in=None):
        jaxpr = closed.jaxpr
        root: dict = {}  # var -> root var, for values that depend on x
        groups: dict = {}  # root var -> _Group
        # concrete values of what the program computes from its constants alone (not from x, not from
        # parameters): the operands an activation's own constants are made of (jnp.where's 0.0)
        known = dict(zip(jaxpr.constvars, closed.consts))
        for var, is_varying, value in zip(jaxpr.invars, varying_in, known_in or [None] * len(jaxpr.invars)):
            if is_varying:
                root[var] = var
            elif value is not None:
                known[var] = value
        consumers: dict = {}
        for index, eqn in enumerate(jaxpr.eqns):
            for v in eqn.invars:
                if not isinstance(v, jex.Literal):
                    consumers.setdefault(v, []).append(eqn)
        self.known = known
        for index, eqn in enumerate(jaxpr.eqns):
            self.position += 1
            self.positions[id(eqn)] = self.position
            inputs = [v for v in eqn.invars if not isinstance(v, jex.Literal) and v in root]
            # a statistic: made by a reduction, or from statistics alone (a LayerNorm's variance,
            # max(0, E x² − (E x)²), and its rsqrt): no activation acts on one
            if inputs and (eqn.primitive.name in _REDUCTIONS or all(v in self.statistics for v in inputs)):
                self.statistics.update(eqn.outvars)
            if not inputs:
                self._fold(eqn, known)
                continue
            name = eqn.primitive.name
            if name == "name" and str(eqn.params.get("name", "")).startswith(MARKER):
                kind, _, call = str(eqn.params["name"])[len(MARKER):].partition(":")
                self.events.append(Marker(kind, call, eqn.outvars[0], eqn.invars[0], self.position, path))
                root[eqn.outvars[0]] = eqn.outvars[0]
                continue
            roots = {root[v] for v in inputs}
            sub = sub_jaxpr(eqn)
            kind = self._kind(eqn, inputs, sub)
            if kind == "call":
                values = [v.val if isinstance(v, jex.Literal) else known.get(v) for v in eqn.invars]
                outputs = self.walk(sub, [not isinstance(v, jex.Literal) and v in root for v in eqn.invars],
                                    path + (index,), values)
                self.known = known
                for var, is_varying in zip(eqn.outvars, outputs):
                    if is_varying:
                        root[var] = var
                continue
            if kind == "softmax":
                self._emit(Found("softmax", path, inputs[0], eqn.outvars[0], (eqn,), self.position, elementwise=False))
                root[eqn.outvars[0]] = eqn.outvars[0]
                continue
            if kind != "other" and len(roots) > 1 and name == "div" and self._softmax_at(jaxpr.eqns[:index + 1], eqn,
                                                                                         path):
                root[eqn.outvars[0]] = eqn.outvars[0]
                continue
            if kind == "other" or len(roots) > 1:
                if len(roots) > 1 and name == "mul":
                    self.gated.update(v for v in inputs if any(v in g.started for g in groups.values()))
                for var in eqn.outvars:
                    root[var] = var
                continue
            (r,) = roots
            group = groups.setdefault(r, _Group(r))
            if kind == "affine" and not any(v in group.started for v in inputs):
                group.prefix.append(eqn)
            else:
                group.eqns.append(eqn)
                group.started.update(eqn.outvars)
            for var in eqn.outvars:
                root[var] = r
        outvars = set(v for v in jaxpr.outvars if not isinstance(v, jex.Literal))
        for group in groups.values():
            if group.eqns:
                self._close(group, consumers, outvars, path)
        return [not isinstance(v, jex.Literal) and v in root for v in jaxpr.outvars]

    @staticmethod
    def _kind(eqn, inputs, sub) -> str:
        name = eqn.primitive.name
        if sub is not None:
            out = eqn.outvars
            if len(out) == 1 and len(inputs) >= 1 and all(v.aval.shape == out[0].aval.shape for v in inputs
                                                           if v.aval.ndim):
                ok, nonlinear = _is_elementwise_body(sub, [not isinstance(v, jex.Literal) and v in inputs
                                                           for v in eqn.invars])
                if ok:
                    return "nonlinear" if nonlinear else "affine"
                if len(inputs) == 1 and _is_softmax(eqn):
                    return "softmax"
            return "call" if name in _CALLS or sub is not None else "other"
        if name == "select_n" and eqn.invars[0] not in inputs:
            return "affine"  # a constant predicate: a masked copy (a causal mask), not a nonlinearity
        if name in _NONLINEAR:
            return "nonlinear"
        if name in _AFFINE:
            return "affine"
        if name == "mul":
            return "nonlinear" if len(inputs) > 1 else "affine"
        if name == "div":
            return "nonlinear" if eqn.invars[1] in inputs else "affine"
        return "other"

    def _close(self, group: _Group, consumers, outvars, path):
        members = set(id(e) for e in group.eqns)
        outputs = [v for e in group.eqns for v in e.outvars
                   if v in outvars or any(id(c) not in members for c in consumers.get(v, []))]
        reads = {v for e in group.eqns for v in e.invars if not isinstance(v, jex.Literal)}
        made = {v for e in group.eqns + group.prefix for v in e.outvars}
        boundary = [v for v in reads if v not in group.started and (v in made or v is group.root)]
        z = boundary[0] if len(boundary) == 1 else group.root
        needed = group.eqns if z is not group.root else sorted(group.prefix + group.eqns, key=_order(group))
        if group.root in self.statistics:
            return  # rsqrt of a variance, exp of a log-sum: statistics of a normalisation, not features
        for y in outputs:
            if y in self.absorbed:
                continue
            if consumers.get(y) and all(c.primitive.name in _REDUCTIONS for c in consumers[y]) \
                    and y not in outvars:
                continue  # only summed up (a variance's square): a statistic, not an activation
            if getattr(y.aval, "dtype", None) is None or not jnp.issubdtype(y.aval.dtype, jnp.floating):
                continue
            if y.aval.shape != z.aval.shape:
                continue
            eqns = tuple(_upstream(needed, y, z))
            name = identification.identify(eqns, z, y, self.known)
            if name is None:  # affine after all (no nonlinear operation between z and y)
                continue
            position = max(self.positions[id(e)] for e in eqns)
            self._emit(Found(name, path, z, y, eqns, position, gated=y in self.gated))

    def _softmax_at(self, eqns, div, path) -> bool:
        """Whether div(E, sum(E)) with E = exp(z − m), the sum over the last axis and m constant
        along it, is a softmax of z over the last axis (read from the program's structure: the shift
        m, a stopped-gradient max, may come from a transposed copy of z). If so it is emitted and the
        exp inside is not reported on its own."""
        made = {v: e for e in eqns for v in e.outvars}
        numerator, denominator = div.invars
        exp = made.get(numerator)
        if exp is None or exp.primitive.name != "exp" or exp.invars[0] not in made:
            return False
        shift = made[exp.invars[0]]
        if shift.primitive.name != "sub" or isinstance(shift.invars[0], jex.Literal):
            return False
        z, y = shift.invars[0], div.outvars[0]
        if z.aval.shape != y.aval.shape or not z.aval.shape:
            return False
        last = len(z.aval.shape) - 1
        m = shift.invars[1]
        if not isinstance(m, jex.Literal) and (len(m.aval.shape) != len(z.aval.shape) or m.aval.shape[-1] != 1):
            return False
        total = made.get(denominator)
        while total is not None and total.primitive.name in ("broadcast_in_dim", "reshape", "expand_dims"):
            total = made.get(total.invars[0])
        if total is None or total.primitive.name != "reduce_sum" or total.invars[0] is not numerator \
                or tuple(int(a) for a in total.params["axes"]) != (last,):
            return False
        self.absorbed.add(numerator)
        self._emit(Found("softmax", path, z, y, (div,), self.positions[id(div)], elementwise=False))
        return True

    def _emit(self, found: Found):
        self.events.append(found)


def _order(group: _Group):
    order = {id(e): i for i, e in enumerate(group.prefix + group.eqns)}
    return lambda e: order[id(e)]


def _upstream(eqns: list, y, z) -> list:
    """The equations y depends on (back to z), in program order."""
    wanted, chosen = {y}, []
    for eqn in reversed(eqns):
        if any(v in wanted for v in eqn.outvars):
            chosen.append(eqn)
            wanted.update(v for v in eqn.invars if not isinstance(v, jex.Literal) and v is not z)
    return chosen[::-1]


def _is_softmax(eqn) -> bool:
    """Whether a call eqn with one input computes softmax over the last axis (checked on a test input)."""
    arrays = [v for v in eqn.invars if not isinstance(v, jex.Literal)]
    if len(arrays) != 1:
        return False
    (inp,) = arrays
    shape = inp.aval.shape
    if not shape or not jnp.issubdtype(inp.aval.dtype, jnp.floating):
        return False
    test = np.sin(np.arange(math.prod(shape)) * 0.7).reshape(shape) * 3
    try:
        with jax.ensure_compile_time_eval(), jax.debug_nans(False), jax.debug_infs(False):
            args = [v.val if isinstance(v, jex.Literal) else jnp.asarray(test, inp.aval.dtype) for v in eqn.invars]
            out = np.asarray(identification.bind(eqn, args)[0], np.float64)
    except Exception:  # noqa: BLE001 - any failure means: not a softmax we can read
        return False
    expected = np.exp(test - test.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    return out.shape == expected.shape and np.allclose(out, expected, atol=1e-5)


def find(closed, varying: Sequence[bool]) -> list:
    """The `Found` activations and `Marker`s of the program, in program order.

    Args:
      closed: a ClosedJaxpr (`jax.make_jaxpr` of one forward pass).
      varying: per input variable, whether it depends on the model input x.
    """
    walker = _Walker()
    walker.walk(closed, varying)
    found = [e if not isinstance(e, Found) or e.y not in walker.gated else dataclasses.replace(e, gated=True)
             for e in walker.events]
    return sorted(found, key=lambda e: e.position)
