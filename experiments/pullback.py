"""The pullback metric of networks trained on the two-arm spiral, mapped over the input plane.

Command:  python -m experiments pullback [--quick]
Writes:   figures/pullback.{png,pdf,json,npz}
Runtime:  ~1 min on 2 CPU cores (quick: ~20 s); reuses the spiral networks of `tradeoff`.

For each activation, an MLP 2 → 32 ×4 → 2 trained on the spiral (`experiments._classifiers`;
plus a width-4 ReLU net) defines F = x ↦ h_4(x) ∈ R³², with pullback metric g(x) = J(x)ᵀ J(x) (2×2). Over a grid
covering the data: ½ log det g (= Σ log σ_i, the log area element), σ_min(J), the
condition number, and metric-ellipse glyphs (semi-axes σ_1 ≥ σ_2 along the right singular
vectors, `metric.metric_ellipse`), over the data and the decision boundary. For
piecewise-linear φ (ReLU, leaky ReLU) also the linear regions — cells of constant
activation pattern — their count on the grid, and the fraction of the grid where g is
singular (numerical rank < 2), where the network crushes a neighbourhood onto a curve
or a point.

Other data (`--dataset digits`, `--dataset PATH`): the networks are trained on those data
(d inputs, C classes) and every map is drawn on the plane through the data mean spanned by
their first two principal components (`geometry.plane`), in a box around the projected
training data: J is then the Jacobian of c ↦ h_4(x̄ + c₁u₁ + c₂u₂) (width × 2) and g the metric
the network induces on that plane; linear regions are those the plane cuts.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import EllipseCollection

from experiments._classifiers import (
    ClassifierSpec,
    class_colours,
    decision_to_keep,
    decision_values,
    display_name,
    draw_decision,
    trained_classifier,
)
from geometry import data, jacobians, metric, plane, plotting, probe, spectra

PIECEWISE_LINEAR = ("relu", "leaky_relu")


@dataclasses.dataclass(frozen=True)
class Config:
    # (activation, width) rows; the narrow ReLU net is where g becomes singular on a visible area
    networks: tuple[tuple[str, int], ...] = (("relu", 32), ("leaky_relu", 32), ("tanh", 32), ("sigmoid", 32),
                                             ("gelu", 32), ("softplus", 32), ("relu", 4))
    depth: int = 4
    steps: int = 3000
    grid: int = 300
    glyph_grid: int = 15
    dataset: str = "spiral"  # a 2-D dataset, "digits" or a CSV/NPZ path (`experiments._classifiers`)
    bounds: tuple[float, float, float, float] = (-2.6, 2.6, -2.6, 2.6)  # the map's box for 2-D data


QUICK = Config(networks=(("relu", 32), ("tanh", 32)), steps=300, grid=80, glyph_grid=8)


def activation_patterns(model, points: np.ndarray) -> np.ndarray:
    """(P,) integer id of each point's pattern of signs of all pre-activations."""
    preactivations = probe.inputs(model, points, "layers/*/activation").values()
    bits = np.concatenate([np.asarray(a > 0) for a in preactivations], axis=1)  # (P, total units)
    _, ids = np.unique(np.packbits(bits, axis=1), axis=0, return_inverse=True)
    return ids.ravel()


def run(config: Config, context) -> dict:
    results = {}
    for activation, width in context.progress(config.networks, "networks"):
        key = f"{activation}/{width}"
        spec = ClassifierSpec(dataset=config.dataset, activation=activation, width=width, depth=config.depth,
                              steps=config.steps, seed=context.seed)
        trained = trained_classifier(spec, context.out_dir / ".checkpoints", context.log)
        drawn_on = plane.data_plane(trained.x_train)  # the same for every network: one data split
        bounds = config.bounds if drawn_on.is_input_plane else drawn_on.bounds(trained.x_train)
        points = data.grid(bounds, config.grid)  # (G², 2) plane coordinates
        J = jacobians.jacobian_field(drawn_on.restrict(trained.model.features), points)  # (G², width, 2)
        stats = {k: np.asarray(v, dtype=np.float64) for k, v in spectra.summary(J).items()}
        g = metric.pullback_metric(J)  # (G², 2, 2)
        record = {
            "train_accuracy": trained.train_accuracy,
            "test_accuracy": trained.test_accuracy,
            "singular_fraction": float(np.mean(stats["numerical_rank"] < 2)),
            "median_half_log_det_g": float(np.median(stats["log_volume"])),
            "median_sigma_min": float(np.median(stats["sigma_min"])),
            "median_condition_number": float(np.median(stats["condition_number"])),
            "max_condition_number_finite": float(np.max(stats["condition_number"][np.isfinite(stats["condition_number"])],
                                                        initial=0.0)),
        }
        if activation in PIECEWISE_LINEAR:
            patterns = activation_patterns(trained.model, drawn_on.points(points))
            record["linear_regions_on_grid"] = int(len(np.unique(patterns)))
            context.save_arrays(**{f"{key} patterns": patterns.astype(np.int32)})
        semi_axes, angle = glyphs(np.asarray(g), config)
        finite_condition = np.where(np.isfinite(stats["condition_number"]), stats["condition_number"], np.nan)
        shown = {"half_log_det_g": stats["log_volume"], "log10_sigma_min": np.log10(np.maximum(stats["sigma_min"], 1e-12)),
                 "log10_condition": np.log10(finite_condition)}
        for panel, values in shown.items():  # at the precision of a colour map (`plotting.quantise`)
            q = plotting.quantise(values)
            context.save_arrays(**{f"{key} {panel}": q["codes"], f"{key} {panel} range": [q["low"], q["high"]]})
        decision = decision_values(trained.model, drawn_on.points(points))
        context.save_arrays(**{
            f"{key} singular": stats["numerical_rank"] < 2,
            f"{key} decision": decision_to_keep(decision, config.grid, trained.classes),
            f"{key} glyph_semi_axes": semi_axes, f"{key} glyph_angle": angle})
        if key == f"{config.networks[0][0]}/{config.networks[0][1]}":  # one data split for every network
            context.save_arrays(points=drawn_on.coordinates(trained.x_train), labels=trained.y_train)
        results[key] = record

    name = display_name(config.dataset)
    d, classes = trained.x_train.shape[1], trained.classes
    numbers = {"networks": results, "grid": config.grid, "bounds": bounds,
               "architecture": f"{d} -> width x {config.depth} -> {classes}, trained on {name}; keys are activation/width"}
    if not drawn_on.is_input_plane:
        numbers["plane"] = {"axes": "first two principal components of the training inputs, through their mean",
                            "explained_variance": list(drawn_on.explained_variance)}
    return numbers


def glyphs(g: np.ndarray, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Semi-axes (P, 2) and angles (P,) of the metric ellipses on the coarse glyph sub-grid."""
    flat = _glyph_index(config)
    semi_axes, angle = (np.asarray(a) for a in metric.metric_ellipse(jnp.asarray(g[flat])))
    return semi_axes, angle


def _glyph_index(config: Config) -> np.ndarray:
    step = max(1, config.grid // config.glyph_grid)
    index = np.arange(config.grid)[step // 2 :: step]
    return (index[:, None] * config.grid + index[None, :]).ravel()  # row-major (y, x)


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    """Six panels per network from the JSON and pullback.npz."""
    results = numbers["networks"]
    extent = tuple(numbers["bounds"])
    x, y = arrays["points"], arrays["labels"]
    classes = int(y.max()) + 1
    n_cols = 6
    fig, axes = plt.subplots(len(config.networks), n_cols, figsize=(2.4 * n_cols, 2.4 * len(config.networks)),
                             squeeze=False)
    shape = (config.grid, config.grid)
    for row, (activation, width) in enumerate(config.networks):
        key = f"{activation}/{width}"
        r = results[key]
        panels = [("½ log det g", "half_log_det_g", "viridis"), ("log₁₀ σ_min(J)", "log10_sigma_min", "magma"),
                  ("log₁₀ cond(J)", "log10_condition", "cividis")]
        singular = arrays[f"{key} singular"].reshape(shape)
        for col, (title, panel, cmap) in enumerate(panels):
            ax = axes[row, col]
            low, high = (float(v) for v in arrays[f"{key} {panel} range"])
            values = plotting.dequantise(arrays[f"{key} {panel}"], low, high)
            image = ax.imshow(values.reshape(shape), origin="lower", extent=extent, cmap=cmap, vmin=low, vmax=high)
            if singular.any():
                ax.contourf(np.linspace(*extent[:2], config.grid), np.linspace(*extent[2:], config.grid), singular,
                            levels=[0.5, 1.5], colors=["red"], alpha=0.35)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
            ax.set_title(title + (" (red: g singular)" if singular.any() else ""), fontsize=7)
        ax = axes[row, 3]
        _ellipses(ax, arrays[f"{key} glyph_semi_axes"], arrays[f"{key} glyph_angle"], config, extent)
        ax.set_title("metric ellipses, data, boundary", fontsize=7)
        ax.scatter(x[:, 0], x[:, 1], c=y, s=1, lw=0, **class_colours(classes))
        draw_decision(ax, arrays[f"{key} decision"].astype(np.float32), extent, config.grid, classes, fill=False)
        ax = axes[row, 4]
        if f"{key} patterns" in arrays:
            patterns = arrays[f"{key} patterns"]
            shuffled = np.random.default_rng(0).permutation(patterns.max() + 1)[patterns]
            ax.imshow(shuffled.reshape(shape), origin="lower", extent=extent, cmap="tab20", interpolation="nearest")
            ax.set_title(f"linear regions: {r['linear_regions_on_grid']}", fontsize=7)
        else:
            ax.text(0.5, 0.5, "smooth φ:\nno linear regions", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        ax = axes[row, 5]
        ax.set_axis_off()
        ax.text(0.0, 0.5, "\n".join([
            f"test acc {r['test_accuracy']:.3f}",
            f"g singular on {100 * r['singular_fraction']:.1f}% of grid",
            f"median ½ log det g {r['median_half_log_det_g']:.2f}",
            f"median σ_min {r['median_sigma_min']:.3g}",
            f"median cond {r['median_condition_number']:.3g}",
        ]), fontsize=7, va="center", transform=ax.transAxes)
        axes[row, 0].set_ylabel(f"{activation}, width {width}", color=plotting.color(activation), fontsize=9)
    for ax in axes[:, :5].flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if "plane" in numbers:
        pcs = " and ".join(plane.principal_axis_labels(numbers["plane"]["explained_variance"]))
        fig.suptitle(f"{display_name(config.dataset)}: maps on the plane through the data mean spanned by {pcs}; "
                     "g is the metric induced on that plane", fontsize=9)
    fig.tight_layout()
    return {"": fig}


def _ellipses(ax, semi_axes: np.ndarray, angle: np.ndarray, config: Config, extent) -> None:
    """Glyphs on a coarse sub-grid: the image shape of a small circle, normalised per panel."""
    points = data.grid(extent, config.grid)[_glyph_index(config)]
    spacing = (extent[1] - extent[0]) / config.glyph_grid
    scale = 0.9 * spacing / max(float(np.median(semi_axes[:, 0])) * 2, 1e-12)
    widths = np.clip(2 * semi_axes[:, 0] * scale, 0, 1.5 * spacing)
    heights = np.clip(2 * semi_axes[:, 1] * scale, 0, 1.5 * spacing)
    ax.add_collection(EllipseCollection(widths, heights, np.degrees(angle), units="xy", offsets=points,
                                        offset_transform=ax.transData, facecolors="none", edgecolors="0.3",
                                        linewidths=0.6))
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_aspect("equal")
