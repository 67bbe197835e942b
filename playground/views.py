"""One frame of the page: the geometry maps on a grid and the per-layer numbers at the data.

Everything is read from the running model through `geometry.probe` (outputs of
"layers/l", pre-activations = inputs of "layers/l/activation") and measured with the
library's own functions, in two compiled passes per frame:

* maps, at resolution² grid points: predicted class and its probability; for the chosen
  layer's Jacobian ∂h_l/∂x (k × 2, `geometry.jacobians.PerPointJacobian` in the cheaper
  mode), `spectra.summary`'s numerical rank, σ_min and log volume ½ log det g (g = JᵀJ,
  −∞ where J is singular); and the linear regions of the piecewise-linear units (relu,
  leaky relu): points share a region when every such unit has the same sign of its
  pre-activation, compared through two 32-bit hashes of the sign pattern.
* numbers, at up to `SAMPLE` training points: per layer, the numerical and effective rank
  of the centred representation matrix H_l (points × units), the mean numerical rank of
  ∂h_l/∂x, dead units (φ′(a) = 0 at every point), the saturated fraction (|φ′(a)| <
  SATURATION, the threshold of experiments/saturation.py), and linear CKA (Kornblith et
  al. 2019, biased) to the input and to the previous layer (null when a representation is
  constant, where CKA is undefined).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from geometry import activations, data, jacobians, probe, similarity, spectra
from playground import network
from playground.config import Config
from playground.datasets import Data

SAMPLE = 512
SATURATION = 0.05
SINGULAR = 255  # map code of a point where J is singular (log volume −∞)


class Views:
    """The compiled frame functions of one network structure on one dataset."""

    def __init__(self, model: network.Net, config: Config, dataset: Data):
        example = jnp.zeros((2,), jnp.float32)
        self.config, self.data = config, dataset
        self.output_keys = tuple(f"layers/{l}" for l in range(config.depth))
        self.outputs_fn, _, _ = probe.capture_fn(model, list(self.output_keys), example=example)
        pointwise = [l for l, kind in enumerate(config.layers) if not network.is_kernel(kind)]
        self.pointwise = tuple(pointwise)
        self.piecewise = tuple(l for l in pointwise if config.layers[l] in network.PIECEWISE_LINEAR)
        self.inputs_fn = None
        if pointwise:
            self.inputs_fn, _, _ = probe.capture_fn(model, [f"layers/{l}/activation" for l in pointwise],
                                                    example=example, what="inputs")
        self.derivatives = {l: activations.get(network.activation_name(config.layers[l])).derivative
                            for l in pointwise}
        self.grid = data.grid(dataset.bounds, config.resolution)  # (R², 2)
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.permutation(len(dataset.x_train))[:SAMPLE])
        self.sample = dataset.x_train[keep]  # (M, 2)
        units = max(1, len(self.piecewise) * config.width)
        self.hash_weights = rng.integers(1, 2**32, size=(2, units), dtype=np.uint64).astype(np.uint32)
        self.maps = jax.jit(self._maps)
        self.numbers = jax.jit(self._numbers)
        self.evaluate = jax.jit(self._evaluate)

    def _probed(self, state, x):
        logits, outputs = self.outputs_fn(state, x)
        l = self.config.probe_layer
        return logits if l > self.config.depth else outputs[f"layers/{l - 1}"]

    def _pre_activations(self, state, points) -> dict[int, jax.Array]:
        if self.inputs_fn is None:
            return {}
        _, inputs = jax.vmap(self.inputs_fn, (None, 0))(state, points)
        return {l: inputs[f"layers/{l}/activation"] for l in self.pointwise}  # each (N, width)

    def _maps(self, state, grid):
        logits = jax.vmap(lambda x: self.outputs_fn(state, x)[0])(grid)  # (G, classes)
        probabilities = jax.nn.softmax(logits, axis=-1)
        width = self.config.width if self.config.probe_layer <= self.config.depth else self.data.classes
        per_point = jacobians.PerPointJacobian(self._probed, jacobians.resolve_mode("auto", 2, width))
        J = jax.vmap(per_point, (None, 0))(state, grid)  # (G, k, 2)
        summary = spectra.summary(J)
        result = {"class": jnp.argmax(logits, axis=-1), "confidence": probabilities.max(axis=-1),
                  "rank": summary["numerical_rank"], "sigma_min": summary["sigma_min"],
                  "log_volume": summary["log_volume"]}
        if self.piecewise:
            pre = self._pre_activations(state, grid)
            signs = jnp.concatenate([pre[l] > 0 for l in self.piecewise], axis=-1).astype(jnp.uint32)  # (G, U)
            result["region_hash"] = signs @ jnp.asarray(self.hash_weights).T  # (G, 2), wraps mod 2³²
        return result

    def _numbers(self, state, sample):
        _, outputs = jax.vmap(self.outputs_fn, (None, 0))(state, sample)
        layer_jacobian = jacobians.PerPointJacobian(lambda s, x: self.outputs_fn(s, x)[1], "forward")
        fields = jax.vmap(layer_jacobian, (None, 0))(state, sample)  # {key: (M, width, 2)}
        pre = self._pre_activations(state, sample)
        centred = {k: H - H.mean(axis=0, keepdims=True) for k, H in outputs.items()}  # (M, width) each
        result = {"outputs": outputs,
                  "jacobian_rank": {k: spectra.summary(J)["numerical_rank"].mean() for k, J in fields.items()},
                  "rank": {k: spectra.numerical_rank(H) for k, H in centred.items()},
                  "effective_rank": {k: spectra.effective_rank(H) for k, H in centred.items()}}
        derivative = {l: self.derivatives[l](pre[l]) for l in self.pointwise}
        result["dead"] = {l: jnp.sum(jnp.all(d == 0, axis=0)) for l, d in derivative.items()}
        result["saturated"] = {l: jnp.mean(jnp.abs(d) < SATURATION) for l, d in derivative.items()}
        return result

    def _evaluate(self, state, x, y):
        logits = jax.vmap(lambda point: self.outputs_fn(state, point)[0])(x)
        return jnp.mean(jnp.argmax(logits, axis=-1) == y)

    def accuracies(self, state) -> tuple[float, float]:
        d = self.data
        return float(self.evaluate(state, d.x_train, d.y_train)), float(self.evaluate(state, d.x_test, d.y_test))

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
