"""One call, one table: a per-layer geometry report of any model.

    from geometry import report
    result = report(model, points)          # any NNX module the probe takes, or f(params, x) with params=
    result.table                            # pandas DataFrame, one row per layer / activation, then the output
    result.plot()                           # one matplotlib figure
    result.to_markdown(); result.to_csv(path); result.to_html(path); result.settings

Rows, in call order: the selected layers (default: the top-level layers the model calls) and
every activation found in the computation (`geometry.discovery`: inline `nnx.relu`,
`jax.nn.gelu`, ..., or the library's activation layers), then "output" (the model's output).
With `params=` (an `f(params, x)`, a Linen `model.apply`) there are no layers to read: the
report has the output row only.

Columns (medians are over the points; J is ∂(row's output)/∂(model input), or ∂/∂(output of
layer `wrt`) with `wrt=`, flattened to (m, n)):

* `layer`, `kind` (module type, or the identified activation), `shape` (per-point output),
  `params` (parameters the module holds; the output row: the model's total).
* `rank_median` (numerical rank, `spectra.numerical_rank`'s tolerance max(m, n)·eps·σ₁),
  `rank_deficient_fraction` (the fraction of points where that rank is below min(m, n)),
  `effective_rank_median` (Roy–Vetterli, exp of the entropy of σ/‖σ‖₁), `condition_median`
  (σ₁/σ_min over min(m, n) values; inf when rank-deficient), `log_volume_median` (½ log det JᵀJ
  = Σ log σ_i over min(m, n) values; −inf when rank-deficient), `log_volume_error` (the
  matrix-free estimate's total error; 0 on the dense route), `route` ("dense": SVD of the formed
  J; "matrix-free": `matfree.log_volume`, rank and condition then not computed).
* `dead_fraction`, `saturated_fraction` (activation rows: φ'(z) = 0, and 0 < |φ'(z)| <
  `settings["saturation"]`, over units and points; `probe.activation_stats`).
* `weight_stable_rank`, `weight_alpha`, `weight_alpha_error`, `weight_note` (the module's
  `kernel`: eigenvalues of WᵀW, a convolution's pooled over its window; the Clauset–Shalizi–
  Newman power-law fit of their tail, `geometry.weights`; NaN with the reason in `weight_note`).
* `rankme` (Garrido et al., of the row's outputs flattened per point, N × d), `mean_cosine`
  (mean cosine between the outputs of distinct points), `cka_previous` (linear CKA,
  Kornblith's convention, with the previous row's outputs; NaN on the first row).
* with `labels=`: `nc1`, `cdnv`, `nc2_equinorm`, `nc2_equiangle` (`collapse.collapse_metrics`,
  default convention) of the flattened outputs.
* sequence outputs (T, d): `token_residual` (Dong et al.'s relative residual ‖X − 1x̄ᵀ‖/‖X‖,
  composite norm) and `token_cosine` (mean cosine between distinct tokens), medians over points.
"""

from __future__ import annotations

import dataclasses
import html
import math
import sys
import time
import types

import jax
import numpy as np
import pandas as pd
from flax import nnx

from geometry import (
    activation_stats,
    calling,
    collapse,
    embeddings,
    jacobians,
    matfree,
    probe,
    recording,
    similarity,
    spectra,
    tokens,
    weights,
)
from geometry import layers as layer_types

BUDGETS = (None, "quick")
QUICK_POINTS = 256  # budget="quick": at most this many points
QUICK_DENSE_ENTRIES = 1 << 16  # budget="quick": rows whose J has more entries go matrix-free
SATURATION = 0.05


@dataclasses.dataclass
class Report:
    """A per-layer geometry report, as `report` returns it.

    Attributes:
        table: pandas DataFrame, one row per layer and activation in call order, then "output";
            the columns and their conventions are in the module docstring.
        settings: everything that decided a number: points, budget, saturation threshold, `wrt`,
            the activations found, package versions, wall time.
    """

    table: pd.DataFrame
    settings: dict

    def to_markdown(self) -> str:
        """The table as a Markdown table (numbers to 4 significant digits)."""
        columns = list(self.table.columns)
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        for _, row in self.table.iterrows():
            lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path) -> None:
        """Write the table as CSV.

        Args:
            path: the file to write.
        """
        self.table.to_csv(path, index=False)

    def to_html(self, path) -> None:
        """Write the table as a standalone HTML page with the settings beneath it.

        Args:
            path: the file to write.
        """
        settings = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in self.settings.items())
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>geometry report</title></head><body>"
                f"{self.table.to_html(index=False, na_rep='')}<ul>{settings}</ul></body></html>")
        with open(path, "w", encoding="utf-8") as file:
            file.write(page)

    def plot(self, path=None):
        """One figure, a panel per family of columns against the rows (activations shaded).

        Args:
          path: also save it there (png or pdf by the suffix).

        Returns:
          The matplotlib Figure.
        """
        import matplotlib
        import matplotlib.pyplot as plt

        if path is not None:
            matplotlib.use("Agg", force=False)
        table = self.table
        x = np.arange(len(table))
        panels = [("rank", ["rank_median", "effective_rank_median"]),
                  ("conditioning", ["log10_condition", "log_volume_median"]),
                  ("activations", ["dead_fraction", "saturated_fraction"]),
                  ("weights and representations", ["weight_alpha", "rankme", "cka_previous"])]
        data = table.assign(log10_condition=np.log10(table["condition_median"].astype(float)))
        figure, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.55 * len(table) + 2), 2.4 * len(panels)),
                                    sharex=True)
        activation_rows = x[table["is_activation"].to_numpy(bool)]
        for ax, (title, columns) in zip(axes, panels):
            for column in columns:
                values = np.asarray(data[column], float)
                if np.isfinite(values).any():
                    ax.plot(x, values, marker="o", label=column)
            for row in activation_rows:
                ax.axvspan(row - 0.4, row + 0.4, color="0.9", zorder=0)
            ax.set_title(title, fontsize=9, loc="left")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
        axes[-1].set_xticks(x, table["layer"], rotation=60, ha="right", fontsize=7)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
        return figure


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _param_count(module) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))))


def _kernel_columns(module) -> dict:
    if isinstance(module, layer_types.Dense):  # the library's own dense layer stores W as (out, in)
        kernel = layer_types.dense_weight(module)
    else:
        kernel = getattr(module, "kernel", None) if module is not None else None
        kernel = kernel[...] if isinstance(kernel, nnx.Variable) else kernel
    if kernel is None:
        return {"weight_stable_rank": np.nan, "weight_alpha": np.nan, "weight_alpha_error": np.nan,
                "weight_note": "no kernel"}
    kernel = np.asarray(kernel)
    if kernel.ndim < 2:
        return {"weight_stable_rank": np.nan, "weight_alpha": np.nan, "weight_alpha_error": np.nan,
                "weight_note": f"kernel of shape {kernel.shape} is no matrix"}
    values = weights.eigenvalues(kernel)
    fit = weights.power_law_fit(values)
    return {"weight_stable_rank": weights.stable_rank(values), "weight_alpha": fit["alpha"],
            "weight_alpha_error": fit["alpha_error"], "weight_note": fit["reason"]}


def _spectral_columns(sigma, shape) -> dict:
    summary = spectra.summarize_singular_values(sigma, shape, sigma.dtype)
    rank = np.asarray(summary["numerical_rank"])
    return {"rank_median": float(np.median(rank)),
            "rank_deficient_fraction": float(np.mean(rank < sigma.shape[-1])),
            "effective_rank_median": float(np.median(np.asarray(summary["effective_rank"]))),
            "condition_median": float(np.median(np.asarray(summary["condition_number"], np.float64))),
            "log_volume_median": float(np.median(np.asarray(summary["log_volume"], np.float64))),
            "log_volume_error": 0.0, "route": "dense"}


def _representation_columns(values, previous, labels) -> dict:
    flat = np.asarray(values, np.float64).reshape(len(values), -1)
    spectrum = embeddings.embedding_spectrum(flat) if len(flat) >= 2 else None
    row = {"rankme": spectrum["rankme"] if spectrum else np.nan,
           "mean_cosine": spectrum["mean_pairwise_cosine"] if spectrum else np.nan, "cka_previous": np.nan}
    if previous is not None and len(flat) >= 2:
        try:  # CKA is undefined for a representation constant over the points: NaN
            row["cka_previous"] = float(similarity.cka(previous, flat))
        except ValueError:
            pass
    if labels is not None:
        try:  # classes with fewer than collapse.DEFAULT_MIN_COUNT points are left out; fewer than 2 left: NaN
            metrics = collapse.collapse_metrics(flat, labels)
        except ValueError:
            metrics = {}
        row.update({key: float(metrics.get(key, np.nan)) for key in ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangle")})
    per_point = np.asarray(values).shape[1:]
    if len(per_point) == 2 and per_point[0] >= 2:
        X = np.asarray(values, np.float64)
        row["token_residual"] = float(np.median(tokens.relative_residual(X)))
        row["token_cosine"] = float(np.median(tokens.mean_pairwise_cosine(X)))
    return row


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="geometry report", delay=1.0, leave=False)


def report(model, points, *, labels=None, layers=None, model_kwargs=None, batched: bool = False, wrt=None,
           params=None, budget: str | None = None, progress: bool = True) -> Report:
    """A per-layer geometry report of `model` at `points` (module docstring: rows and columns).

    Args:
      model: an nnx.Module or bound method (layers read by `geometry.probe`), or f(params, x)
        with `params=` (the output row only).
      points: (N, *input_shape); integer token ids need `wrt=`.
      labels: (N,) integer classes: adds the neural-collapse columns.
      layers: a probe selector for the layer rows (None: the top-level layers); found
        activations are always rows.
      model_kwargs: keyword arguments of every call (`rngs=`, a KV cache), held fixed.
      batched: the model is written batch-first: it is called on x[None] per point.
      wrt: differentiate with respect to this layer's output instead of the points (token models).
      params: the parameters of f(params, x).
      budget: None (dense Jacobians everywhere) or "quick" (at most QUICK_POINTS points; rows whose
        J has more than QUICK_DENSE_ENTRIES entries go matrix-free).
      progress: a progress bar (tqdm) when the report takes more than a second.

    Returns:
      `Report`: `.table` one row per layer and activation, then "output"; `.settings`.

    Raises:
      ValueError: a bad budget, labels not matching the points, or what the probe refuses
        (a selector matching no layer, points that do not fit the model, a model changing its
        state under a transform, NaN or inf Jacobians).
      batching.CompilerFaultError: a batched computation disagrees with its unbatched
        recomputation (a compiler fault).
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    start = time.perf_counter()
    integer = np.issubdtype(np.asarray(points).dtype if not hasattr(points, "dtype") else points.dtype, np.integer)
    points = calling.check_points(points, differentiable=not integer and wrt is None)
    if budget == "quick" and points.shape[0] > QUICK_POINTS:
        points = points[:QUICK_POINTS]
        labels = None if labels is None else np.asarray(labels)[:QUICK_POINTS]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (points.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be ({points.shape[0]},) integers, one class per point; got "
                             f"{labels.shape} {labels.dtype}")
    if params is not None:
        return _function_report(model, points, params, labels, model_kwargs, batched, budget, start)
    found = recording.plan(model, points[0], batched=batched, model_kwargs=model_kwargs)
    selected = set(recording.select(found, layers)) | set(found.sites)
    keys = [key for key in found.keys if key in selected and found.types[key] is not None]
    bar = _progress(len(keys) + 3, progress)
    values = probe.outputs(model, points, keys, batched=batched, model_kwargs=model_kwargs)
    pure, state = calling.as_pure_function(model, batched=batched, model_kwargs=model_kwargs)
    output = _flat_output(jax.jit(jax.vmap(pure, in_axes=(None, 0)))(state, points))
    _step(bar)
    sigma, free = _fields(model, points, keys, found, wrt, batched, model_kwargs, budget)
    _step(bar)
    stats = activation_stats.activation_stats(model, points, [k for k in keys if k in found.sites] or None,
                                              batched=batched, model_kwargs=model_kwargs) \
        if any(k in found.sites for k in keys) else {}
    _step(bar)
    modules = recording.callable_modules(calling.module_and_method(model)[0])
    rows, previous = [], None
    in_size = math.prod(found.outputs[wrt].shape) if wrt is not None else math.prod(points.shape[1:])
    for key in keys + ["output"]:
        value = output if key == "output" else values[key]
        module = modules.get(key.split("@")[0]) if key != "output" and key not in found.found else None
        is_activation = key in found.sites
        kind = "output" if key == "output" else (found.identified[key] if key in found.identified
                                                 else type(module).__name__ if module is not None else "value")
        shape = tuple(np.asarray(value).shape[1:])
        row = {"layer": key, "kind": kind, "shape": str(shape), "is_activation": is_activation,
               "params": _param_count(calling.module_and_method(model)[0] if key == "output" else module)
               if (module is not None or key == "output") else 0}
        row.update(free[key] if key in free else _spectral_columns(sigma[key], (math.prod(shape), in_size)))
        row.update({"dead_fraction": stats[key]["dead_fraction"] if key in stats else np.nan,
                    "saturated_fraction": stats[key]["saturated_fraction"] if key in stats else np.nan})
        row.update(_kernel_columns(module) if key != "output" else _kernel_columns(None))
        row.update(_representation_columns(value, previous, labels))
        previous = np.asarray(value, np.float64).reshape(len(value), -1)
        rows.append(row)
        _step(bar)
    if bar is not None:
        bar.close()
    settings = _settings(points, budget, wrt, labels, start, found, free)
    return Report(pd.DataFrame(rows), settings)


def _flat_output(output):
    """The model's output as one array per point: a tuple or dict of outputs concatenated, flattened."""
    leaves = jax.tree_util.tree_leaves(output)
    if len(leaves) == 1:
        return leaves[0]
    return np.concatenate([np.asarray(leaf).reshape(len(leaf), -1) for leaf in leaves], axis=1)


def _step(bar) -> None:
    if bar is not None:
        bar.update(1)


def _fields(model, points, keys, found, wrt, batched, model_kwargs, budget):
    """({key: (N, r) singular values of J} for dense rows, {key: columns} for matrix-free rows)."""
    in_size = math.prod(found.outputs[wrt].shape) if wrt is not None else math.prod(points.shape[1:])
    sizes = {key: math.prod(found.outputs[key].shape) * in_size for key in keys}
    free_keys = [k for k in keys if budget == "quick" and wrt is None and sizes[k] > QUICK_DENSE_ENTRIES
                 and k not in found.found]
    dense_keys = [k for k in keys if k not in free_keys]
    sigma = {}
    if dense_keys:
        sigma = probe.input_jacobian_field(model, points, dense_keys, wrt=wrt, reduce=spectra.singular_values,
                                           as_matrix=True, batched=batched, model_kwargs=model_kwargs)
    sigma["output"] = jacobians.jacobian_field(model, points, reduce=spectra.singular_values, as_matrix=True,
                                               batched=batched, model_kwargs=model_kwargs, wrt=wrt)
    free = {}
    for key in free_keys:
        f, state = probe.layer_function(model, key, example=points[0], batched=batched, model_kwargs=model_kwargs)
        estimate = matfree.log_volume(f, points, params=state)
        free[key] = {"rank_median": np.nan, "rank_deficient_fraction": np.nan, "effective_rank_median": np.nan,
                     "condition_median": np.nan,
                     "log_volume_median": float(np.median(estimate["values"])),
                     "log_volume_error": float(np.median(estimate["total_error"])), "route": "matrix-free"}
    return sigma, free


def _function_report(f, points, params, labels, model_kwargs, batched, budget, start) -> Report:
    pure, state = calling.as_pure_function(f, params, batched=batched, model_kwargs=model_kwargs)
    output = _flat_output(jax.jit(jax.vmap(pure, in_axes=(None, 0)))(state, points))
    sigma = jacobians.jacobian_field(f, points, params=params, reduce=spectra.singular_values, as_matrix=True,
                                     batched=batched, model_kwargs=model_kwargs)
    shape = tuple(np.asarray(output).shape[1:])
    row = {"layer": "output", "kind": "output", "shape": str(shape), "is_activation": False,
           "params": int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))}
    row.update(_spectral_columns(sigma, (math.prod(shape), math.prod(points.shape[1:]))))
    row.update({"dead_fraction": np.nan, "saturated_fraction": np.nan})
    row.update(_kernel_columns(None))
    row.update(_representation_columns(output, None, labels))
    return Report(pd.DataFrame([row]), _settings(points, budget, None, labels, start, None, {}))


def _settings(points, budget, wrt, labels, start, found, free) -> dict:
    return {"points": int(points.shape[0]), "dtype": str(points.dtype), "budget": budget,
            "saturation": SATURATION, "wrt": wrt, "labels": labels is not None,
            "rank_tolerance": "max(m, n) * eps * sigma_max (spectra.numerical_rank)",
            "weight_fit": "Clauset-Shalizi-Newman, alpha > 1, KS-chosen xmin (geometry.weights)",
            "matrix_free_rows": sorted(free), "activations_found": dict(found.identified) if found else {},
            "seconds": round(time.perf_counter() - start, 3), "versions": _versions(), "seed": None}


def _versions() -> dict:
    import importlib.metadata

    found = {}
    for name in ("jax", "jaxlib", "flax", "numpy", "pandas"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - every one is a dependency
            found[name] = None
    return found


class _CallableModule(types.ModuleType):
    """`geometry.report` is the module and the function: `geometry.report(model, x)` calls `report`."""

    def __call__(self, *args, **kwargs) -> Report:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
