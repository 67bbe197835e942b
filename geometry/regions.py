"""Exact linear regions of a piecewise-linear model on a 2-D slice of its input space.

    result = regions.partition(model, window=(-3, 3))              # 2-D inputs: the input plane
    result = regions.partition(model, ((-4, -4), (4, 4)), plane=plane.data_plane(x_train))
    len(result), result.polygons[0], result.patterns[0], result.maps[0]   # count, cell, pattern, (A | b)
    result.verify()                                                  # forward pass vs the affine maps

**What is computed.** The slice is x(c) = origin + c₁u₁ + c₂u₂ (`geometry.plane`), c in the
window box. The model's switches (`geometry.piecewise`: relu, leaky relu, abs, min/max, clip,
max pooling, ...) are found in its jaxpr, so any Flax NNX module, bound method, function or
f(params, x) built from affine layers and those switches works unchanged (MLPs, CNNs, residual
blocks, concatenation, nnx.scan stacks). Level by level (layer l's units after layer l − 1's
are fixed), every cell is cut along the exact lines where a switch changes its choice: the
candidates' affine forms in a cell come from `jax.jacfwd` of the model with that cell's earlier
choices forced, so they are exact in the cell, not sampled. A cell (a *linear region*) is a
maximal convex polygon on which every switch makes one choice — the activation pattern — so the
model is one affine map y = A c + b on it, A = J_x U being the Jacobian restricted to the
plane: ½ log det(AᵀA), σ_min and the rank of A are exact per region.

**Conventions.** Regions are activation regions (Hanin & Rolnick's): two neighbouring cells with
different patterns count as two even where the model happens to be the same affine map on both.
A pattern entry is the index of the winning candidate in the operation's operand order (for
relu's max(z, 0): 0 = active, z ≥ 0; for leaky relu's z ≥ 0 test: 0 = active). Polygons are in
plane coordinates, float64, counter-clockwise. The forms are computed in the model's dtype
(float32 unless `dtype="float64"`); cells thinner than `tolerance` × the window's size are not
cut off (a line within that of a vertex passes through it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from geometry import batching, jacobians, partitions, piecewise, polygons, validation
from geometry import plane as plane_module

# the result type, re-exported: regions.Partition has always been its public path
from geometry.partitions import Partition


@dataclasses.dataclass(frozen=True, eq=False)
class _SlicedModel:
    """The model on the slice, as jitted functions of plane coordinates (compiled once per model
    structure: `pure` is a structural key, parameters and the plane are arguments)."""

    pure: Any
    state: Any
    origin: jax.Array
    basis: jax.Array
    input_shape: tuple
    float64: bool

    def _context(self):
        return jax.enable_x64(True) if self.float64 else contextlib.nullcontext()

    def forms(self, choices: np.ndarray, level: int, candidates: tuple[int, int] = (0, 0)):
        """(outputs (R, m, 3), candidates[0]:candidates[1] of the switches' candidates (R, K, 3)): affine
        forms with the switches below `level` forced."""
        rows = len(choices)
        bucket = max(8, 1 << (rows - 1).bit_length())  # few shapes, few compilations
        padded = np.concatenate([choices, np.repeat(choices[:1], bucket - rows, axis=0)])
        with self._context():
            out = _forms(self.pure, self.input_shape, tuple(int(i) for i in candidates), self.state, self.origin,
                         self.basis, jnp.asarray(padded, jnp.int32), jnp.int32(level))
            if batching.canary_enabled():  # the first and last rows again, compiled without vmap
                for row in sorted({0, rows - 1}):
                    one = _form(self.pure, self.input_shape, tuple(int(i) for i in candidates), self.state,
                                self.origin, self.basis, jnp.asarray(choices[row], jnp.int32), jnp.int32(level))
                    for batched, single in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(one)):
                        batching.assert_agree(np.asarray(batched[row]), np.asarray(single),
                                              f"the affine form of region candidate {row}")
        (value_out, value_cand), (grad_out, grad_cand) = jax.tree_util.tree_map(
            lambda a: np.asarray(a, np.float64)[:rows], out)
        return (np.concatenate([grad_out, value_out[..., None]], axis=-1),
                np.concatenate([grad_cand, value_cand[..., None]], axis=-1))

    def patterns(self, coordinates: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """(P, G) every switch's choice at plane coordinates (P, 2), nothing forced."""
        with self._context():
            parts = [np.asarray(_patterns(self.pure, self.input_shape, self.state, self.origin, self.basis,
                                          jnp.asarray(coordinates[i:i + chunk], self.origin.dtype)))
                     for i in range(0, len(coordinates), chunk)]
        return np.concatenate(parts)

    def outputs(self, coordinates: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """(P, m) the model's ordinary forward pass at plane coordinates (P, 2)."""
        with self._context():
            parts = [np.asarray(_outputs(self.pure, self.input_shape, self.state, self.origin, self.basis,
                                         jnp.asarray(coordinates[i:i + chunk], self.origin.dtype)), np.float64)
                     for i in range(0, len(coordinates), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, 0))


def _at(input_shape, origin, basis, c):
    """The input at plane coordinates c (2,), in the model's input shape."""
    return (origin + c @ basis).reshape(input_shape)


def _form_at(pure, input_shape, span, state, origin, basis, choice, level):
    """(value, gradient) on the plane at its origin with the switches below `level` forced to `choice`."""
    def on_plane(c, choice):
        outs, candidates, _ = piecewise.run(pure, state, _at(input_shape, origin, basis, c), choice, level)
        value = (jnp.concatenate([o.reshape(-1) for o in outs]), candidates[span[0]:span[1]])
        return value, value

    zero = jnp.zeros(2, origin.dtype)
    gradient, value = jax.jacfwd(on_plane, has_aux=True)(zero, choice)
    return value, gradient


# one choice compiled without vmap: the canary's independent route for `_forms`
_form = jax.jit(_form_at, static_argnames=("pure", "input_shape", "span"))


@functools.partial(jax.jit, static_argnames=("pure", "input_shape", "span"))
def _forms(pure, input_shape, span, state, origin, basis, choices, level):
    return jax.vmap(lambda choice: _form_at(pure, input_shape, span, state, origin, basis, choice, level))(choices)


@functools.partial(jax.jit, static_argnames=("pure", "input_shape"))
def _patterns(pure, input_shape, state, origin, basis, coordinates):
    def one(c):
        found = piecewise.run(pure, state, _at(input_shape, origin, basis, c),
                              jnp.zeros(0, jnp.int32), jnp.int32(0), with_choices=True)
        return found[3]
    return jax.vmap(one)(coordinates)


@functools.partial(jax.jit, static_argnames=("pure", "input_shape"))
def _outputs(pure, input_shape, state, origin, basis, coordinates):
    def one(c):
        out = pure(state, _at(input_shape, origin, basis, c))
        return jnp.concatenate([o.reshape(-1) for o in jax.tree_util.tree_leaves(out)])
    return jax.vmap(one)(coordinates)


def _discover(model: _SlicedModel):
    """The model's switches (static), found by tracing it once."""
    found = {}

    def trace(state, origin, basis):
        x = _at(model.input_shape, origin, basis, jnp.zeros(2, origin.dtype))
        outs, candidates, found["switches"] = piecewise.run(model.pure, state, x)
        return outs

    with model._context():
        shapes = jax.eval_shape(trace, model.state, model.origin, model.basis)
    return tuple(found["switches"]), shapes


def partition(model, window, plane=None, *, params=None, model_kwargs=None, input_shape=None,
              dtype=None, tolerance: float = 1e-9, max_regions: int = 200_000) -> Partition:
    """The exact linear regions of a piecewise-linear model on the window of a 2-D slice.

    Every operation of the traced model must be piecewise linear (Linear, Conv, relu, leaky relu,
    abs, min / max, clip, max pooling, residual adds, concatenation, `nnx.scan`); the window is cut
    along every unit's switching line, layer by layer, so each region is a convex polygon on which
    the model is one affine map.

    Args:
        model: an `nnx.Module`, a bound method, a function of x, or f(params, x) with `params=`; its
            output (any shape, flattened) is what the regions' affine maps give.
        window: (c_min, c_max): the corners of the rectangle in plane coordinates, each (2,).
        plane: a `geometry.plane.Plane` (None: the input plane of a model of 2-D inputs).
        params: the parameters of f(params, x).
        model_kwargs: keyword arguments of every call, held fixed.
        input_shape: the shape of one input when it is not the plane's flat (d,) (an image
            model's (8, 8, 1)).
        dtype: "float64" computes the forms in float64 (parameters cast); None: the model's dtype.
        tolerance: relative size below which a cut is not made (finite, ≥ 0).
        max_regions: a ValueError beyond this many regions, rather than running out of memory.

    Returns:
        `partitions.Partition`: `len()` is the count; per region its polygon, activation pattern,
        affine map (A = J on the plane, b), ½ log det, σ_min and rank; and the queries
        `decision_boundary()`, `density()`, `crossings()`, `regions_near()`,
        `distance_to_boundary()`, `region_of()`, `verify()`.

    Raises:
        ValueError: an operation that is not piecewise linear (named), a window that is not two
            finite corners with c_min < c_max, a model whose input is not 2-D without a `plane`,
            more than `max_regions` regions, or an unknown dtype.
        batching.CompilerFaultError: the batched affine forms disagree with their unbatched
            recomputation (a compiler fault).
    """
    c_min, c_max = partitions.window_box(window)
    tolerance = validation.number("tolerance", tolerance, low=0)
    max_regions = validation.integer("max_regions", max_regions, low=1)
    pure, state = jacobians.as_pure_function(model, params, model_kwargs=model_kwargs)
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError(f"the model's parameter {jax.tree_util.keystr(path)} holds NaN or inf: its linear regions "
                             "are undefined. Find where training diverged (or pass finite params=)")
    plane = plane_module.input_plane() if plane is None else plane
    if not isinstance(plane, plane_module.Plane):
        raise ValueError(f"plane must be a geometry.plane.Plane (e.g. plane.data_plane(x)), got {type(plane).__name__}")
    float64 = dtype is not None and np.dtype(dtype) == np.float64
    if dtype is not None and np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    real = np.float64 if float64 else np.float32
    input_shape = tuple(input_shape) if input_shape is not None else tuple(np.shape(plane.origin))
    if math.prod(input_shape) != np.shape(plane.origin)[0]:
        raise ValueError(f"input_shape {input_shape} has {math.prod(input_shape)} entries but the plane lives in "
                         f"{np.shape(plane.origin)[0]} dimensions")
    with jax.enable_x64(True) if float64 else contextlib.nullcontext():
        cast = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, real) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, state)
        sliced = _SlicedModel(pure, cast, jnp.asarray(plane.origin, real), jnp.asarray(plane.basis, real),
                              input_shape, float64)
    switches, output_shapes = _discover(sliced)
    vertices, counts, patterns = _cut(sliced, switches, c_min, c_max, tolerance, max_regions)
    maps, _ = sliced.forms(patterns, max((s.level for s in switches), default=-1) + 1)
    leaves = jax.tree_util.tree_leaves(output_shapes)
    output_shape = tuple(leaves[0].shape) if len(leaves) == 1 else (sum(math.prod(a.shape) for a in leaves),)
    return Partition(vertices, counts, patterns, maps, switches, (c_min, c_max), plane, output_shape, sliced)


def _cut(model, switches, c_min, c_max, tolerance, max_regions):
    """Level by level, cut every cell along its switches' exact lines; (vertices, counts, patterns)."""
    most = max((s.candidates for s in switches), default=2)
    cells = _Cells(polygons.box(c_min, c_max), sum(s.groups for s in switches),
                   np.int8 if most <= 127 else np.int32)
    diameter = math.hypot(c_max[0] - c_min[0], c_max[1] - c_min[1])
    min_area = 1e-12 * (c_max[0] - c_min[0]) * (c_max[1] - c_min[1])
    candidate_offsets = np.cumsum([0] + [s.groups * s.candidates for s in switches])
    for level in range(max((s.level for s in switches), default=-1) + 1):
        at_level = [(s, candidate_offsets[i]) for i, s in enumerate(switches) if s.level == level]
        if not at_level:
            continue
        span = (candidate_offsets[switches.index(at_level[0][0])], max(candidate_offsets[switches.index(s) + 1] for s, _ in at_level))
        _, candidates = model.forms(cells.patterns[:cells.size], level, span)  # (R, K, 3), exact in every current cell
        cells.row[:cells.size] = np.arange(cells.size)  # each cell's row in `candidates`: cells split, forms do not
        for switch, start in at_level:
            k = switch.candidates
            first = start - span[0]
            forms = candidates[:, first:first + switch.groups * k].reshape(len(candidates), switch.groups, k, 3)
            scales = np.abs(forms[..., :2]).max(axis=(2, 3)) * diameter + np.abs(forms[..., 2]).max(axis=2)
            tolerances = tolerance * scales  # (R₀, groups): a cut nearer a vertex than this goes through it
            # two candidates: one line f₀ − f₁ = 0 per group. A line that misses a cell misses all its
            # pieces, so each line is tested against the level's starting cells once, all lines at a time,
            # and later only against the pieces of the cells it crossed
            if k == 2:
                lines = forms[:, :, 0] - forms[:, :, 1]
                start_winner = _sides(cells.vertices[:cells.size], cells.counts[:cells.size], lines[cells.row[:cells.size]],
                                      tolerances[cells.row[:cells.size]])
                cells.mark[:cells.size] = np.arange(cells.size)  # each cell's row in start_winner
            for group in range(switch.groups):
                n = cells.size
                rows = cells.row[:n]
                if k == 2:  # only the cells the disc test could not place are tested at their vertices
                    winner = start_winner[cells.mark[:n], group]
                    cut = np.flatnonzero(winner < 0)
                else:
                    winner, cut = np.full(n, -1), np.arange(n)
                sub_winner, (parent, choice, pieces, piece_counts) = polygons.split_by_argmax(
                    cells.vertices[cut], cells.counts[cut], forms[rows[cut], group], tolerances[rows[cut], group],
                    np.full(len(cut), min_area))
                winner[cut] = sub_winner
                column = switch.offset + group
                decided = winner >= 0
                cells.patterns[:n][decided, column] = winner[decided]
                cells.split(cut[parent], choice, pieces, piece_counts, column)
                if cells.size > max_regions:
                    raise ValueError(f"more than max_regions={max_regions} linear regions (at level {level}, "
                                     f"{switch.primitive} at {switch.where}); shrink the window or raise max_regions")
    return cells.vertices[:cells.size], cells.counts[:cells.size], cells.patterns[:cells.size]


def _sides(vertices: np.ndarray, counts: np.ndarray, lines: np.ndarray, tolerances: np.ndarray) -> np.ndarray:
    """(R, G): 0 where line g (R, G, 3) is positive on all of cell r, 1 where negative, −1 where it may
    cut it: a cheap test against the disc around each cell (centre, farthest vertex), one value per
    (cell, line); the cells it leaves at −1 get the exact vertex test."""
    centres = polygons.centroids(vertices, counts)  # (R, 2)
    radii = np.linalg.norm(vertices - centres[:, None], axis=2).max(axis=1)  # unused slots repeat vertex 0
    values = lines[..., 0] * centres[:, :1] + lines[..., 1] * centres[:, 1:] + lines[..., 2]
    margin = np.hypot(lines[..., 0], lines[..., 1]) * radii[:, None] + tolerances
    return np.where(values > margin, 0, np.where(values < -margin, 1, -1)).astype(np.int8)


class _Cells:
    """The cells being cut, in arrays that grow by doubling: a cut rewrites its parent's row with
    the first piece and appends the others, so no step copies the cells it does not touch."""

    def __init__(self, corners: np.ndarray, switches: int, pattern_dtype):
        self.size = 1
        self.vertices = corners[None].copy()
        self.counts = np.array([len(corners)])
        self.patterns = np.zeros((1, switches), pattern_dtype)
        self.row = np.zeros(1, int)  # a cell's ancestor when its level began (rows of the level's forms)
        self.mark = np.zeros(1, int)  # a cell's ancestor when the current switch began

    def _reserve(self, size: int, width: int):
        capacity = len(self.counts)
        if width > self.vertices.shape[1]:
            extra = np.repeat(self.vertices[:, :1], width - self.vertices.shape[1], axis=1)
            self.vertices = np.concatenate([self.vertices, extra], axis=1)
        if size > capacity:
            grow = max(size, 2 * capacity) - capacity
            self.vertices = np.pad(self.vertices, ((0, grow), (0, 0), (0, 0)))
            self.counts = np.pad(self.counts, (0, grow))
            self.patterns = np.pad(self.patterns, ((0, grow), (0, 0)))
            self.row = np.pad(self.row, (0, grow))
            self.mark = np.pad(self.mark, (0, grow))

    def _write(self, at, vertices, counts):
        """Cells `at` become the polygons given, their unused slots repeating vertex 0."""
        width = self.vertices.shape[1]
        padded = np.concatenate([vertices, np.repeat(vertices[:, :1], width - vertices.shape[1], axis=1)], axis=1)
        used = polygons.valid(counts, width)[..., None]
        self.vertices[at] = np.where(used, padded, padded[:, :1])
        self.counts[at] = counts

    def split(self, parent, choice, vertices, counts, column):
        if not len(parent):
            return
        first = np.r_[True, parent[1:] != parent[:-1]]
        self._reserve(self.size + int((~first).sum()), vertices.shape[1])
        self._write(parent[first], vertices[first], counts[first])
        self.patterns[parent[first], column] = choice[first]
        new = np.arange(self.size, self.size + int((~first).sum()))
        self._write(new, vertices[~first], counts[~first])
        self.patterns[new] = self.patterns[parent[~first]]
        self.patterns[new, column] = choice[~first]
        self.row[new] = self.row[parent[~first]]
        self.mark[new] = self.mark[parent[~first]]
        self.size += len(new)
