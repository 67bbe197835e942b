"""Exact linear regions of ReLU networks on 2-D slices, and the region-density laws.

Command:  python -m experiments linear_regions [--quick]
Writes:   figures/linear_regions.{png,pdf,json,npz}
Runtime:  ~1.5 min on 2 CPU cores (quick: ~15 s).

Every count here is exact (`geometry.regions.partition`), not a sign-pattern grid.

(a–c) At initialisation — He weights (σ_w² = 2), biases N(0, σ_b²) — for widths × depths of
    2 → width^depth → 2 ReLU MLPs, with N = width · depth hidden neurons: regions per unit
    area of the window, boundary crossings per unit length along random chords, and the mean
    distance from random points to the nearest boundary. Hanin & Rolnick predict ~N² per unit
    area on a 2-D slice (arXiv 1906.00904), ~N per unit length and ~1/N for the distance
    (arXiv 1901.09021), all roughly independent of depth at fixed N. Fitted: log y = a +
    b log N (+ c · depth), exponents with bootstrap intervals over the networks.
(d) The depth effect at fixed N: the density divided by N², per depth.
(e–h) Over training (Adam, the library's `training.train`, resumable checkpoints), on the
    spiral (the input plane) and on digits (the plane of its first two principal components):
    the partition before and after, and the local complexity (regions meeting a small square,
    Humayun, Balestriero & Baraniuk, arXiv 2402.15555) at the training points, at points on the
    exact decision boundary and at random points of the window, at log-spaced steps. Their
    report: regions gather near the data during training and later move toward the decision
    boundary ("region migration").
"""

from __future__ import annotations

import dataclasses
import math
import shutil

import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.collections import LineCollection, PolyCollection

from geometry import data, models, plane, regions, training


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (8, 16, 32, 64)
    depths: tuple[int, ...] = (1, 2, 3, 4)
    nets: int = 3  # random networks per (width, depth)
    sigma_b2: float = 0.1
    window: float = 3.0  # the init window is [−window, window]²
    chords: int = 24  # random chords per network (boundary crossings per unit length)
    probes: int = 200  # random points per network (distance to the nearest boundary)
    resamples: int = 2000  # bootstrap resamples of the networks for the fitted exponents
    train_width: int = 32
    train_depth: int = 3
    spiral_points: int = 400
    digits_points: int = 600  # training images (the rest are not used here)
    steps: tuple[int, ...] = (0, 10, 30, 100, 300, 1000, 3000)
    learning_rate: float = 3e-3
    radius: float = 0.05  # half-side of the local-complexity square, as a fraction of the window's side
    local_points: int = 150  # points at which local complexity is counted, per kind


QUICK = Config(widths=(8, 16, 32), depths=(1, 2), nets=1, chords=8, probes=60, resamples=300, train_width=16,
               train_depth=2, spiral_points=200, digits_points=300, steps=(0, 200), local_points=40)


def _chords(rng, count: int, radius: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random chords of the disc of `radius` (uniform direction and offset)."""
    angle = rng.uniform(0, np.pi, count)
    offset = rng.uniform(-0.6 * radius, 0.6 * radius, count)
    direction = np.stack([np.cos(angle), np.sin(angle)], 1)
    normal = np.stack([-direction[:, 1], direction[:, 0]], 1)
    half = np.sqrt(radius**2 - offset**2)[:, None]
    centre = offset[:, None] * normal
    return list(zip(centre - half * direction, centre + half * direction))


def at_initialisation(config: Config, context) -> list[dict]:
    rng = np.random.default_rng(context.seed)
    rows = []
    settings = [(w, d, n) for w in config.widths for d in config.depths for n in range(config.nets)]
    for width, depth, net in context.progress(settings, "networks at init"):
        model = models.MLP(2, width, depth=depth, out_features=2, activation="relu", sigma_b2=config.sigma_b2,
                           rngs=nnx.Rngs(1000 * context.seed + 100 * net + 10 * depth + width))
        result = regions.partition(model, (-config.window, config.window))
        chords = _chords(rng, config.chords, 0.9 * config.window)
        per_length = [(result.crossings(s, e) - 1) / np.linalg.norm(e - s) for s, e in chords]
        probes = rng.uniform(-0.9 * config.window, 0.9 * config.window, (config.probes, 2))
        distance = result.distance_to_boundary(probes)
        rows.append({"width": width, "depth": depth, "net": net, "neurons": width * depth, "regions": len(result),
                     "regions_per_area": result.density(), "crossings_per_length": float(np.mean(per_length)),
                     "mean_distance": float(np.mean(distance[np.isfinite(distance)]))})
    return rows


def fit_exponent(rows: list[dict], key: str, *, resamples: int, seed: int) -> dict:
    """log y = a + b log N + c · depth by least squares, b and c with 95% bootstrap intervals over networks."""
    neurons = np.array([r["neurons"] for r in rows], np.float64)
    depth = np.array([r["depth"] for r in rows], np.float64)
    y = np.log(np.array([r[key] for r in rows], np.float64))

    def fit(index, with_depth: bool):
        columns = [np.ones(len(index)), np.log(neurons[index])] + ([depth[index]] if with_depth else [])
        return np.linalg.lstsq(np.stack(columns, 1), y[index], rcond=None)[0]

    everything = np.arange(len(rows))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(rows), len(rows)) for _ in range(resamples)]
    slope = np.array([fit(i, False)[1] for i in draws])
    depth_term = np.array([fit(i, True)[2] for i in draws]) if len(set(depth)) > 1 else np.zeros(1)
    return {"exponent": float(fit(everything, False)[1]),
            "exponent_interval": [float(v) for v in np.percentile(slope, [2.5, 97.5])],
            "depth_coefficient": float(fit(everything, True)[2]) if len(set(depth)) > 1 else 0.0,
            "depth_coefficient_interval": [float(v) for v in np.percentile(depth_term, [2.5, 97.5])]}


def _local_points(result: regions.Partition, x: np.ndarray, rng, count: int) -> dict[str, np.ndarray]:
    """Plane points of three kinds: training points, points on the decision boundary, uniform points."""
    segments, _ = result.decision_boundary()
    if len(segments):
        length = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
        pick = rng.choice(len(segments), count, p=length / length.sum())
        t = rng.uniform(0, 1, (count, 1))
        boundary = segments[pick, 0] + t * (segments[pick, 1] - segments[pick, 0])
    else:
        boundary = np.zeros((0, 2))
    (x0, y0), (x1, y1) = result.window
    return {"data": x[rng.choice(len(x), min(count, len(x)), replace=False)], "boundary": boundary,
            "random": rng.uniform((x0, y0), (x1, y1), (count, 2))}


def over_training(name: str, config: Config, context) -> tuple[dict, dict]:
    if name == "spiral":
        x, y = data.make_dataset("spiral", config.spiral_points, noise=0.05, seed=context.seed)
        slice_plane, inputs = plane.input_plane(), x
    else:
        images, labels = data.load_digits()
        order = np.random.default_rng(context.seed).permutation(len(images))[:config.digits_points]
        inputs, y = images[order], labels[order]
        slice_plane = plane.pca_plane(inputs)
        x = slice_plane.coordinates(inputs)
    classes = int(y.max()) + 1
    lo, hi, _, _ = data.bounds_of(x)
    window = ((lo, lo), (hi, hi))
    radius = config.radius * (hi - lo)
    directory = context.out_dir / ".checkpoints" / context.name / f"{name}-seed{context.seed}"
    shutil.rmtree(directory, ignore_errors=True)  # the steps extend one run; each invocation starts it afresh
    rng = np.random.default_rng(context.seed + 1)
    series = {"step": [], "regions": [], "train_accuracy": [], "local_data": [], "local_boundary": [], "local_random": []}
    kept = {}
    for step in context.progress(config.steps, f"{name} training steps"):
        model = models.MLP(inputs.shape[1], config.train_width, depth=config.train_depth, out_features=classes,
                           activation="relu", sigma_b2=config.sigma_b2, rngs=nnx.Rngs(context.seed))
        training.train(model, inputs, y, training.TrainConfig(
            steps=step, learning_rate=config.learning_rate, checkpoint_every=max(step, 1), log_every=max(step, 1),
            seed=context.seed), checkpoint_dir=directory, log=lambda line: None)
        result = regions.partition(model, window, slice_plane)
        points = _local_points(result, x, rng, config.local_points)
        series["step"].append(step)
        series["regions"].append(len(result))
        series["train_accuracy"].append(training.accuracy(model, inputs, y))
        for kind, at in points.items():
            series[f"local_{kind}"].append(float(result.regions_near(at, radius).mean()) if len(at) else math.nan)
        if step in (config.steps[0], config.steps[-1]):
            segments, _ = result.decision_boundary()
            kept[step] = {"vertices": result.vertices, "counts": result.counts, "half_log_det": result.half_log_det,
                          "segments": segments}
    first, last = config.steps[0], config.steps[-1]
    arrays = {f"{name}_points": x, f"{name}_labels": y}
    for step, tag in ((first, "init"), (last, "trained")):
        for key, value in kept[step].items():
            arrays[f"{name}_{tag}_{key}"] = value
    series["window"] = [lo, hi]
    series["radius"] = radius
    peak = int(np.argmax(series["local_data"]))
    series["findings"] = {
        "data_over_random_at_peak": series["local_data"][peak] / series["local_random"][peak],
        "boundary_over_data_at_end": series["local_boundary"][-1] / series["local_data"][-1],
        "boundary_over_data_at_init": series["local_boundary"][0] / series["local_data"][0],
        "step_of_peak_at_data": series["step"][peak],
        "data_fell_after_peak": bool(series["local_data"][-1] < series["local_data"][peak]),
        "regions_grew": bool(series["regions"][-1] > series["regions"][0]),
    }
    return series, arrays


PREDICTED = {"regions_per_area": 2.0, "crossings_per_length": 1.0, "mean_distance": -1.0}


def run(config: Config, context) -> dict:
    rows = at_initialisation(config, context)
    fits = {key: fit_exponent(rows, key, resamples=config.resamples, seed=context.seed) for key in PREDICTED}
    for key, fit in fits.items():
        low, high = fit["exponent_interval"]
        fit["predicted"] = PREDICTED[key]
        fit["interval_holds_prediction"] = bool(low <= PREDICTED[key] <= high)
        fit["relative_gap"] = abs(fit["exponent"] - PREDICTED[key]) / abs(PREDICTED[key])
        d_low, d_high = fit["depth_coefficient_interval"]
        fit["depth_independent"] = bool(d_low <= 0.0 <= d_high)
    arrays = {}
    trained = {}
    for name in ("spiral", "digits"):
        trained[name], more = over_training(name, config, context)
        arrays.update(more)
    context.save_arrays(**arrays)
    return {"at_init": rows, "fits": fits, "training": trained,
            "conventions": {"regions": "activation regions (distinct patterns; geometry.regions), counted exactly",
                            "local_complexity": "regions meeting the square of half-side radius around a point, "
                                                "clipped to the window (Humayun et al. count hyperplanes crossing "
                                                "a cross-polytope; on a 2-D slice both count the cells it touches)",
                            "neurons": "N = width × depth hidden ReLU units"}}


def _draw_partition(ax, arrays, name, tag, title):
    vertices, counts = arrays[f"{name}_{tag}_vertices"], arrays[f"{name}_{tag}_counts"]
    value = arrays[f"{name}_{tag}_half_log_det"]
    finite = np.isfinite(value)
    low, high = (np.percentile(value[finite], [2, 98]) if finite.any() else (0.0, 1.0))
    colours = plt.get_cmap("viridis")((np.clip(np.where(finite, value, low), low, high) - low) / max(high - low, 1e-9))
    ax.add_collection(PolyCollection([v[:n] for v, n in zip(vertices, counts)], facecolors=colours,
                                     edgecolors="white", linewidths=0.15))
    ax.add_collection(LineCollection(arrays[f"{name}_{tag}_segments"], colors="red", linewidths=0.8))
    x, y = arrays[f"{name}_points"], arrays[f"{name}_labels"]
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="tab10" if y.max() > 1 else "coolwarm", s=2, lw=0)
    ax.set_xlim(vertices[..., 0].min(), vertices[..., 0].max())
    ax.set_ylim(vertices[..., 1].min(), vertices[..., 1].max())
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}: {len(counts)} regions\n(colour ½ log det, red: decision boundary)", fontsize=8)


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    rows, fits = numbers["at_init"], numbers["fits"]
    fig, axes = plt.subplots(2, 4, figsize=(17, 8.2))
    labels = {"regions_per_area": "regions per unit area", "crossings_per_length": "boundary crossings per unit length",
              "mean_distance": "mean distance to nearest boundary"}
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(config.depths)))
    for ax, (key, label), letter in zip(axes[0], labels.items(), "abc"):
        for depth, colour in zip(config.depths, colours):
            mine = [r for r in rows if r["depth"] == depth]
            ax.plot([r["neurons"] for r in mine], [r[key] for r in mine], "o", color=colour, ms=4, label=f"depth {depth}")
        fit = fits[key]
        n = np.array(sorted({r["neurons"] for r in rows}), np.float64)
        centre = np.exp(np.mean(np.log([r[key] for r in rows])) - fit["exponent"] * np.mean(np.log([r["neurons"] for r in rows])))
        ax.plot(n, centre * n ** fit["exponent"], "k-", lw=1,
                label=f"fit N^{fit['exponent']:.2f} [{fit['exponent_interval'][0]:.2f}, {fit['exponent_interval'][1]:.2f}]")
        ax.plot(n, centre * n[0] ** (fit["exponent"] - fit["predicted"]) * n ** fit["predicted"], "k:", lw=1,
                label=f"Hanin & Rolnick: N^{fit['predicted']:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hidden neurons N")
        ax.set_ylabel(label)
        ax.set_title(f"({letter}) {label} at init", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[0, 3]
    for depth, colour in zip(config.depths, colours):
        mine = [r for r in rows if r["depth"] == depth]
        ax.plot([r["neurons"] for r in mine], [r["regions_per_area"] / r["neurons"] ** 2 for r in mine], "o",
                color=colour, ms=4, label=f"depth {depth}")
    ax.set_xscale("log")
    ax.set_xlabel("hidden neurons N")
    ax.set_ylabel("regions per unit area / N²")
    c = fits["regions_per_area"]
    ax.set_title(f"(d) depth at fixed N: log-density slope per layer {c['depth_coefficient']:+.2f} "
                 f"[{c['depth_coefficient_interval'][0]:+.2f}, {c['depth_coefficient_interval'][1]:+.2f}]", fontsize=8)
    ax.legend(fontsize=7)
    first, last = config.steps[0], config.steps[-1]
    _draw_partition(axes[1, 0], arrays, "spiral", "init", f"(e) spiral, step {first}")
    _draw_partition(axes[1, 1], arrays, "spiral", "trained", f"(f) spiral, step {last}")
    for ax, name, letter in ((axes[1, 2], "spiral", "g"), (axes[1, 3], "digits", "h")):
        series = numbers["training"][name]
        steps = np.maximum(np.array(series["step"]), 1)
        for kind, colour in (("data", "#1f77b4"), ("boundary", "red"), ("random", "grey")):
            ax.plot(steps, series[f"local_{kind}"], "o-", color=colour, ms=3, label=f"at {kind} points")
        ax.set_xscale("log")
        ax.set_xlabel("training step (0 drawn at 1)")
        ax.set_ylabel(f"regions within ±{series['radius']:.2g} (local complexity)")
        plane_name = "input plane" if name == "spiral" else "principal plane"
        ax.set_title(f"({letter}) {name} ({plane_name}): final train acc {series['train_accuracy'][-1]:.2f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return {"": fig}
