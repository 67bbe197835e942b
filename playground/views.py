"""One frame of the page: the geometry maps on a grid and the per-layer numbers at the data.

Everything is read from the running model through `geometry.probe` (outputs of
"layers/l", pre-activations = inputs of "layers/l/activation") and measured with the
library's own functions, in two compiled passes per frame:

* maps, at resolution² grid points: predicted class and its probability; for the chosen
  layer's Jacobian ∂h_l/∂x (k × 2, `geometry.jacobians.PerPointJacobian` in the cheaper
  mode), `spectra.summary`'s numerical rank, σ_min and log volume ½ log det g (g = JᵀJ,
  −∞ where J is singular); and the linear regions of the piecewise-linear units (relu,
  leaky relu): points share a region when every such unit has the same sign of its
  pre-activation, compared through two 32-bit hashes of the sign pattern. Where the whole net
  is piecewise linear (relu, leaky relu and no-activation layers, no LayerNorm) the panel
  shows the exact partition instead (`exact_regions`: `geometry.regions.partition`, polygons
  and an exact count), computed at the per-layer numbers' pace.
* numbers, at up to `SAMPLE` training points: per layer, the numerical and effective rank
  of the centred representation matrix H_l (points × units), the mean numerical rank of
  ∂h_l/∂x, dead units (φ′(a) = 0 at every point), the saturated fraction (|φ′(a)| <
  SATURATION, the threshold of experiments/saturation.py), and linear CKA (Kornblith et
  al. 2019, biased) to the input and to the previous layer (null when a representation is
  constant, where CKA is undefined).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from geometry import activations, data, jacobians, probe, regions, similarity, spectra
from geometry.functional import StaticKey
from geometry.layers import dense_weight
from playground import network
from playground.config import Config
from playground.datasets import Data

SAMPLE = 512
SATURATION = 0.05
SATURATED_UNIT = 0.9  # a unit is marked saturated when |φ′| < SATURATION on more than this share of the grid
NEURON_GRID = 20  # per-neuron maps: NEURON_GRID² points over the window
MAX_NEURON_MAPS = 64  # units per layer whose maps are sent (their marks are sent for all)
SINGULAR = 255  # map code of a point where J is singular (log volume −∞)
MAX_EXACT_REGIONS = 20_000  # beyond, the panel keeps the grid's count (a lower bound) and says why


@dataclasses.dataclass(frozen=True, eq=False)
class Plan(StaticKey):
    """What is static about one frame computation. Nets of the same structure have equal plans
    (their probe functions compare by graph definition), so a reset, a new seed or new data of
    the same classes reuse the compiled functions below."""

    outputs_fn: Any  # probe.capture_fn: (logits, {"layers/l": h_l})
    inputs_fn: Any  # probe.capture_fn of the pre-activations ("layers/l/activation" inputs), or None
    kinds: tuple[str, ...]
    probe_layer: int  # 1..depth, or depth + 1 for the logits
    probed_width: int
    pointwise: tuple[int, ...]
    piecewise: tuple[int, ...]
    regression: bool = False

    def probed(self, state, x):
        logits, outputs = self.outputs_fn(state, x)
        return logits if self.probe_layer > len(self.kinds) else outputs[f"layers/{self.probe_layer - 1}"]

    def hidden(self, state, x) -> dict:
        """{"layers/l": h_l} of one point (the feature map's output is captured too, under "features")."""
        _, outputs = self.outputs_fn(state, x)
        return {key: value for key, value in outputs.items() if key.startswith("layers/")}

    def pre_activations(self, state, points) -> dict[int, jax.Array]:
        if self.inputs_fn is None:
            return {}
        _, inputs = jax.vmap(self.inputs_fn, (None, 0))(state, points)
        return {l: inputs[f"layers/{l}/activation"] for l in self.pointwise}  # each (N, width)

    def derivative(self, l: int):
        return activations.get(network.activation_name(self.kinds[l])).derivative


@functools.partial(jax.jit, static_argnames="plan")
def _maps(plan: Plan, state, grid, hash_weights, neuron_grid):
    logits = jax.vmap(lambda x: plan.outputs_fn(state, x)[0])(grid)  # (G, classes)
    per_point = jacobians.PerPointJacobian(plan.probed, jacobians.resolve_mode("auto", 2, plan.probed_width))
    J = jax.vmap(per_point, (None, 0))(state, grid)  # (G, k, 2)
    summary = spectra.summary(J)
    result = {"rank": summary["numerical_rank"], "sigma_min": summary["sigma_min"],
              "log_volume": summary["log_volume"]}
    if plan.regression:
        result["value"] = logits[:, 0]
    else:
        result["class"] = jnp.argmax(logits, axis=-1)
        result["confidence"] = jax.nn.softmax(logits, axis=-1).max(axis=-1)
    pre = plan.pre_activations(state, grid)  # {l: (G, width)} of the pointwise layers
    if plan.piecewise:
        signs = jnp.concatenate([pre[l] > 0 for l in plan.piecewise], axis=-1).astype(jnp.uint32)  # (G, U)
        result["region_hash"] = signs @ hash_weights.T  # (G, 2), wraps mod 2³²
    # per neuron: the marks from φ′ on the whole map grid, the small maps on the neuron grid
    derivative = {l: plan.derivative(l)(pre[l]) for l in plan.pointwise}  # {l: (G, width)}
    result["unit_dead"] = {l: jnp.all(d == 0, axis=0) for l, d in derivative.items()}
    result["unit_saturated_share"] = {l: jnp.mean(jnp.abs(d) < SATURATION, axis=0) for l, d in derivative.items()}
    result["neuron_activation"] = jax.vmap(plan.hidden, (None, 0))(state, neuron_grid)  # {key: (g, width)}
    neuron_pre = plan.pre_activations(state, neuron_grid)
    result["neuron_derivative"] = {l: plan.derivative(l)(neuron_pre[l]) for l in plan.pointwise}
    return result


@functools.partial(jax.jit, static_argnames="plan")
def _numbers(plan: Plan, state, sample):
    _, outputs = jax.vmap(plan.outputs_fn, (None, 0))(state, sample)
    layer_jacobian = jacobians.PerPointJacobian(lambda s, x: plan.outputs_fn(s, x)[1], "forward")
    fields = jax.vmap(layer_jacobian, (None, 0))(state, sample)  # {key: (M, width, 2)}
    pre = plan.pre_activations(state, sample)
    centred = {k: H - H.mean(axis=0, keepdims=True) for k, H in outputs.items()}  # (M, width) each
    result = {"outputs": outputs,
              "jacobian_rank": {k: spectra.summary(J)["numerical_rank"].mean() for k, J in fields.items()},
              "rank": {k: spectra.numerical_rank(H) for k, H in centred.items()},
              "effective_rank": {k: spectra.effective_rank(H) for k, H in centred.items()}}
    derivative = {l: plan.derivative(l)(pre[l]) for l in plan.pointwise}
    result["dead"] = {l: jnp.sum(jnp.all(d == 0, axis=0)) for l, d in derivative.items()}
    result["saturated"] = {l: jnp.mean(jnp.abs(d) < SATURATION) for l, d in derivative.items()}
    return result


@functools.partial(jax.jit, static_argnames="plan")
def _score(plan: Plan, state, x, y):
    """Classification: accuracy; regression: mean squared error."""
    outputs = jax.vmap(lambda point: plan.outputs_fn(state, point)[0])(x)
    if plan.regression:
        return jnp.mean((outputs[:, 0] - y) ** 2)
    return jnp.mean(jnp.argmax(outputs, axis=-1) == y)


class Views:
    """The frame functions of one net on one dataset (the grid, the sample, the hash weights)."""

    def __init__(self, model: network.Net, config: Config, dataset: Data):
        example = jnp.zeros((2,), jnp.float32)
        self.config, self.data = config, dataset
        self.output_keys = tuple(f"layers/{l}" for l in range(config.depth))
        # the feature map is captured too: a net with no hidden layer still has a layer to capture
        outputs_fn, _, _ = probe.capture_fn(model, ["features", *self.output_keys], example=example)
        pointwise = tuple(l for l, kind in enumerate(config.layers) if not network.is_kernel(kind))
        inputs_fn = None
        if pointwise:
            inputs_fn, _, _ = probe.capture_fn(model, [f"layers/{l}/activation" for l in pointwise],
                                               example=example, what="inputs")
        piecewise = tuple(l for l in pointwise if config.layers[l] in network.PIECEWISE_LINEAR)
        probed_width = config.width if config.probe_layer <= config.depth else dataset.classes
        self.plan = Plan(outputs_fn, inputs_fn, config.layers, config.probe_layer, probed_width, pointwise, piecewise,
                         dataset.problem == "regression")
        self.grid = data.grid(dataset.bounds, config.resolution)  # (R², 2)
        self.neuron_grid = data.grid(dataset.bounds, NEURON_GRID)  # (g², 2)
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.permutation(len(dataset.x_train))[:SAMPLE])
        self.sample = dataset.x_train[keep]  # (M, 2)
        units = max(1, len(piecewise) * config.width)
        self.hash_weights = rng.integers(1, 2**32, size=(2, units), dtype=np.uint64).astype(np.uint32)
        self.exact = (not config.layernorm and network.piecewise_linear_inputs(config)
                      and all(kind in ("none",) + network.PIECEWISE_LINEAR for kind in config.layers))

    def exact_regions(self, model: network.Net) -> dict | None:
        """The exact partition of the map's window into linear regions of the logits, or None when the
        net is not piecewise linear: {"count", "vertices" (Σ counts, 2) plane points, "counts"} or
        {"count": None, "reason"} past MAX_EXACT_REGIONS."""
        if not self.exact:
            return None
        x0, x1, y0, y1 = self.data.bounds
        try:
            result = regions.partition(model, ((x0, y0), (x1, y1)), max_regions=MAX_EXACT_REGIONS)
        except ValueError as error:
            if "max_regions" not in str(error):
                raise
            return {"count": None, "reason": f"more than {MAX_EXACT_REGIONS} regions: the grid's count is shown"}
        return {"count": len(result), "vertices": np.concatenate(result.polygons).astype(np.float32),
                "counts": result.counts.astype(np.uint8)}

    def maps(self, state, grid):
        return _maps(self.plan, state, grid, self.hash_weights, self.neuron_grid)

    def numbers(self, state, sample):
        return _numbers(self.plan, state, sample)

    def scores(self, state) -> dict:
        """{"train_accuracy", "test_accuracy"} or, for regression, {"train_mse", "test_mse"}."""
        d = self.data
        name = "mse" if self.plan.regression else "accuracy"
        return {f"train_{name}": float(_score(self.plan, state, d.x_train, d.y_train)),
                f"test_{name}": float(_score(self.plan, state, d.x_test, d.y_test))}

    def layer_numbers(self, state) -> list[dict]:
        raw = jax.device_get(self.numbers(state, self.sample))
        rows, previous = [], self.sample
        for l, key in enumerate(self.output_keys):
            H = np.asarray(raw["outputs"][key], np.float64)  # (M, width)
            centred = H - H.mean(axis=0)
            constant = not np.any(centred)
            rows.append({
                "layer": l + 1, "kind": self.config.layers[l],
                "rank": int(raw["rank"][key]), "effective_rank": float(raw["effective_rank"][key]),
                "jacobian_rank": float(raw["jacobian_rank"][key]),
                "dead_units": int(raw["dead"][l]) if l in raw["dead"] else None,
                "saturated": float(raw["saturated"][l]) if l in raw["saturated"] else None,
                "cka_input": None if constant else similarity.cka(self.sample, H),
                "cka_previous": None if constant or not np.any(previous - previous.mean(0)) else similarity.cka(previous, H),
            })
            previous = H
        return rows


def linear_collapse(model: network.Net, config: Config) -> dict:
    """The rank of W_total, the matrix the same weights would be without activations."""
    total = network.linear_total(model)
    if total is None:
        return {"rank": None, "singular_values": None, "note": "kernel layers have no weight matrix to chain"}
    sigma = np.linalg.svd(total, compute_uv=False)
    note = "LayerNorm is not linear: without activations the net is this matrix only up to the norms" \
        if config.layernorm else f"a net without activations is one {total.shape[0]}×{total.shape[1]} matrix"
    return {"rank": int(spectra.numerical_rank(total)), "singular_values": sigma.tolist(), "shape": list(total.shape),
            "note": note}


def region_ids(hashes: np.ndarray) -> tuple[np.ndarray, int]:
    """(G,) region index per grid point (first appearance order) and the number of regions seen."""
    combined = hashes[:, 0].astype(np.uint64) << np.uint64(32) | hashes[:, 1].astype(np.uint64)
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber by first appearance: stable colours between frames
    return order[inverse.reshape(-1)], len(first)


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 codes 0..254 of each row of values (units, points) on its own [lo, hi], and lo, hi."""
    lo, hi = values.min(axis=1), values.max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.round((values - lo[:, None]) / span[:, None] * 254).astype(np.uint8), lo, hi


def unit_marks(dead: np.ndarray | None, saturated_share: np.ndarray | None, width: int) -> list[str]:
    """Each unit's mark: "dead" (φ′ = 0 at every grid point), "saturated" (|φ′| < SATURATION on more
    than SATURATED_UNIT of the grid), "live", or "kernel" (a kernel layer has no φ)."""
    if dead is None:
        return ["kernel"] * width
    return ["dead" if d else "saturated" if s > SATURATED_UNIT else "live" for d, s in zip(dead, saturated_share)]


def neurons(raw: dict, model: network.Net, config: Config) -> dict:
    """The network diagram: per hidden layer its units' marks (all of them) and, for the first
    MAX_NEURON_MAPS units (the ones drawn), small maps (activation h and φ′ on NEURON_GRID², uint8
    each on its own range) and the weights into them from the drawn units before (None for a kernel
    layer); the readout's weights from the drawn units; the feature names."""
    layers = []
    for l, layer in enumerate(model.layers):
        activation = np.asarray(raw["neuron_activation"][f"layers/{l}"], np.float64).T  # (units, g²)
        shown = activation[:MAX_NEURON_MAPS]
        codes, lo, hi = _codes(shown)
        entry = {"kind": config.layers[l], "units": int(activation.shape[0]),
                 "marks": unit_marks(np.asarray(raw["unit_dead"][l]) if l in raw["unit_dead"] else None,
                                     np.asarray(raw["unit_saturated_share"][l]) if l in raw["unit_saturated_share"]
                                     else None, activation.shape[0]),
                 "activation": {"data": codes, "lo": lo.tolist(), "hi": hi.tolist()},
                 "weights": None if network.is_kernel(config.layers[l]) else
                 np.asarray(dense_weight(layer.dense), np.float64)[:MAX_NEURON_MAPS, :MAX_NEURON_MAPS]}
        if l in raw["neuron_derivative"]:
            derivative = np.asarray(raw["neuron_derivative"][l], np.float64).T[:MAX_NEURON_MAPS]
            codes, lo, hi = _codes(derivative)
            entry["derivative"] = {"data": codes, "lo": lo.tolist(), "hi": hi.tolist()}
        layers.append(entry)
    return {"features": list(config.features), "grid": NEURON_GRID, "layers": layers,
            "readout": np.asarray(dense_weight(model.readout), np.float64)[:, :MAX_NEURON_MAPS],
            "drawn_units": MAX_NEURON_MAPS,
            "saturation": SATURATION, "saturated_unit": SATURATED_UNIT}
