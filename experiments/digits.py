"""Real data: MLPs and a small CNN on scikit-learn's handwritten digits, trained far into the
terminal phase (zero training error), with neural collapse per epoch and per-layer geometry.

Command:  python -m experiments digits [--quick]
Writes:   figures/digits.{png,pdf,json}
Runtime:  ~3 min on 2 CPU cores (quick: ~35 s); Orbax checkpoints, so a rerun restores (~10 s).

Data: `geometry.data.load_digits()` (1797 images of 8 × 8 pixels, 10 classes, scaled to
[0, 1]), split 80/20 per class by `stratified_split` (seeded). Models: `geometry.models.MLP`
64 → width × depth → 10 with relu, gelu, tanh and none (identity), and `DigitsCNN` below —
a user-style Flax NNX model (nnx.Conv and nnx.Linear, activations as `geometry.layers.Pointwise`
submodules), analysed through the same `geometry.probe` path as the library's own MLP.
Training: Adam, constant learning rate, minibatches, `geometry.training.train` with
checkpoints (an interrupted run resumes exactly: the series measured so far are saved beside
the checkpoints after every evaluation).

Terminal phase (Papyan, Han & Donoho 2020): at `evaluations` epochs spaced
logarithmically from 1 to `epochs`, train and test accuracy and the collapse metrics of the
penultimate features (`geometry.collapse.collapse_metrics`, default convention: nc1, cdnv,
nc2_equinorm, nc2_equiangle, nc3, nc4 with the head) on the training and on the test points.
Papyan et al. report that, past zero training error, NC1 → 0, the class means approach a
simplex ETF (equinorm, equiangle → 0), the head aligns with them (NC3 → 0) and the head
agrees with the nearest class mean (NC4 → 1); the JSON states for each model and metric whether
it moved toward collapse, away from it, or stayed flat (relative change < 2%) between the first
evaluation at zero training error and the last, and lists every move away as a finding.
Per layer at the test points (final models): numerical and effective rank, condition number
and the rank-deficient fraction of ∂h_l/∂x (`probe.input_jacobian_field`, cheapest mode:
forward, 64 inputs), the ReLU rank identity rank ∂h_l/∂x = min(n₀, k₁, …, k_l) (k_i active
units) checked at every test point on real data, and linear CKA between layers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from experiments.similarity import representations
from geometry import collapse, data, distributed, io, layers, models, plotting, probe, similarity, spectra, training

NC_KEYS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc3", "nc4")
# the direction Papyan et al. report past zero training error: -1 = decreases, +1 = increases
PAPYAN_TREND = {"nc1": -1, "cdnv": -1, "nc2_equinorm": -1, "nc2_equiangle": -1, "nc3": -1, "nc4": +1}
ACCURACY_FLOOR = 0.95  # the floor for the CNN and the ReLU MLP
FLAT = 0.02  # a relative change below this between zero training error and the end is "flat", not a trend


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("relu", "gelu", "tanh", "identity")
    width: int = 256
    depth: int = 3
    cnn: bool = True
    epochs: int = 300
    evaluations: int = 24  # epochs measured, log-spaced from 1 to `epochs`
    batch_size: int = 128
    learning_rate: float = 1e-3
    test_fraction: float = 0.2


QUICK = Config(activations=("relu", "identity"), width=64, epochs=24, evaluations=6)


class DigitsCNN(nnx.Module):
    """8×8×1 → conv 3×3 ×16 → φ → conv 3×3 stride 2 ×32 → φ → dense 64 → φ → dense 10.
    Written as a user would; the activations are submodules so `probe` can reach them."""

    def __init__(self, activation: str = "relu", *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), padding="SAME", rngs=rngs)
        self.act1 = layers.Pointwise(activation)
        self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, padding="SAME", rngs=rngs)
        self.act2 = layers.Pointwise(activation)
        self.dense = nnx.Linear(4 * 4 * 32, 64, rngs=rngs)
        self.act3 = layers.Pointwise(activation)
        self.head = nnx.Linear(64, 10, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:  # x: (64,) pixels of one image
        h = self.act1(self.conv1(x.reshape(1, 8, 8, 1)))
        h = self.act2(self.conv2(h))
        return self.act3(self.dense(h.reshape(-1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


def build(name: str, config: Config, seed: int):
    """(model, its hidden-layer paths, its pre-activation paths, its head) by model name."""
    if name == "cnn":
        model = DigitsCNN("relu", rngs=nnx.Rngs(seed))
        return model, ["act1", "act2", "act3"], ["act1", "act2", "act3"], model.head
    model = models.MLP(64, config.width, depth=config.depth, out_features=10, activation=name, rngs=nnx.Rngs(seed))
    hidden = [f"layers/{l}" for l in range(config.depth)]
    return model, hidden, [f"layers/{l}/activation" for l in range(config.depth)], model.readout


def evaluation_epochs(config: Config) -> list[int]:
    epochs = np.unique(np.round(np.geomspace(1, config.epochs, config.evaluations)).astype(int))
    return [int(e) for e in epochs]


@nnx.jit
def _features(model, x):
    return jax.vmap(model.features)(x)


def measure_epoch(model, head, split) -> dict:
    x_train, y_train, x_test, y_test = split
    record = {"train_accuracy": training.accuracy(model, x_train, y_train),
              "test_accuracy": training.accuracy(model, x_test, y_test)}
    for side, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        features = np.asarray(_features(model, jnp.asarray(x)), dtype=np.float64)
        try:
            metrics = collapse.collapse_metrics(features, y, head, num_classes=10, min_count=1)
            record[f"nc_{side}"] = {key: metrics[key] for key in NC_KEYS}
        except ValueError as error:  # e.g. two class means identical at initialisation: recorded, not hidden
            record[f"nc_{side}"] = {key: None for key in NC_KEYS} | {"refused": str(error)}
    return record


def train_with_series(name: str, config: Config, split, context, *, options: dict | None = None, tag: str = "",
                      measure=None) -> tuple[nnx.Module, list[str], list[str], dict]:
    """Train model `name` on split to config.epochs, measuring at `evaluation_epochs`; resumable.
    options: TrainConfig fields of another protocol (optimizer, momentum, weight decay, schedule; a
    schedule is laid out over the whole run); tag names its checkpoints; measure(model, head, split)
    replaces `measure_epoch`."""
    model, hidden, pre, head = build(name, config, context.seed)
    x_train, y_train = split[0], split[1]
    steps_per_epoch = -(-len(x_train) // config.batch_size)
    options = dict(options or {})
    if options.get("schedule", "constant") != "constant":
        options["schedule_steps"] = config.epochs * steps_per_epoch
    measure = measure or measure_epoch
    directory = Path(context.out_dir) / ".checkpoints" / context.name / f"{name}-w{config.width}-d{config.depth}{tag}"
    series_file = directory / "series.json"
    series = json.loads(series_file.read_text()) if series_file.exists() else {}
    epochs = evaluation_epochs(config)
    # measured epochs are skipped (their numbers are in the series file); a finished run only restores the end
    pending = [e for e in epochs if str(e) not in series] or [epochs[-1]]
    for epoch in pending:
        train_config = training.TrainConfig(**{
            "steps": epoch * steps_per_epoch, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
            "seed": context.seed, "checkpoint_every": 10**9, "log_every": 10**9, **options})
        training.train(model, x_train, y_train, train_config, checkpoint_dir=directory, name=f"  digits {name}",
                       log=lambda line: None)
        if str(epoch) not in series:
            series[str(epoch)] = measure(model, head, split)
            if distributed.is_writer():  # beside process 0's checkpoints, like them
                io.atomic_write(series_file, json.dumps(series))
    context.log(f"{name}: train {series[str(epochs[-1])]['train_accuracy']:.4f}, test "
                f"{series[str(epochs[-1])]['test_accuracy']:.4f} after {epochs[-1]} epochs")
    return model, hidden, pre, {int(k): v for k, v in sorted(series.items(), key=lambda kv: int(kv[0]))}


def layer_geometry(model, hidden: list[str], pre: list[str], x_test: np.ndarray, relu_mlp: bool) -> dict:
    fields = probe.input_jacobian_field(model, x_test, hidden, as_matrix=True)  # {path: (N, k_l, 64)}
    n0 = x_test.shape[1]
    result, ranks = {}, []
    for path, J in fields.items():
        s = spectra.summary(J)
        rank = np.asarray(s["numerical_rank"])
        ranks.append(rank)
        result[path] = {
            "units": int(J.shape[1]),
            "median_numerical_rank": float(np.median(rank)),
            "median_effective_rank": float(np.median(np.asarray(s["effective_rank"]))),
            "median_condition_number": float(np.median(np.asarray(s["condition_number"]))),
            "rank_deficient_fraction": float(np.mean(rank < min(n0, J.shape[1]))),
        }
    identity = None
    if relu_mlp:
        pre_activations = probe.inputs(model, x_test, pre)  # {path: (N, k_l)}
        active = np.stack([np.sum(np.asarray(z) > 0, axis=-1) for z in pre_activations.values()])  # (L, N)
        bound = np.minimum.accumulate(np.minimum(active, n0), axis=0)
        holds = np.stack(ranks) == bound
        identity = {"holds_fraction": float(holds.mean()), "points": int(holds.shape[1]),
                    "layers": int(holds.shape[0]), "max_abs_gap": int(np.max(np.abs(np.stack(ranks) - bound))),
                    "median_active_units": [float(np.median(a)) for a in active]}
    cka = similarity.cka_matrix(representations(model, x_test, hidden))  # x, each hidden layer, logits
    return {"layers": result, "relu_rank_identity": identity, "linear_cka": cka.tolist()}


def trends(series: dict[int, dict], keys=NC_KEYS, side: str = "nc_train", published=None, prefix: str = "") -> dict:
    """Per metric: value at the first evaluation with zero training error and at the last, and the
    direction: "toward collapse" (the way Papyan et al. report), "away from collapse", or "flat"
    (relative change below FLAT; for an agreement that rises toward 1 (nc4), change of the
    disagreement 1 − value below FLAT of it). `keys` of series[epoch][side], each going the way
    `published` says (default PAPYAN_TREND), reported as prefix + key."""
    published = PAPYAN_TREND if published is None else published
    epochs = sorted(series)
    perfect = [e for e in epochs if series[e]["train_accuracy"] == 1.0]
    if not perfect:
        return {"epoch_zero_train_error": None}
    first, last = perfect[0], epochs[-1]
    out = {"epoch_zero_train_error": first, "last_epoch": last}
    for key in keys:
        a, b = series[first][side].get(key), series[last][side].get(key)
        direction = None
        if a is not None and b is not None and first != last:
            scale = abs(1.0 - a) if published[key] > 0 else abs(a)
            if abs(b - a) < FLAT * max(scale, 1e-12):
                direction = "flat"
            else:
                direction = "toward collapse" if np.sign(b - a) == published[key] else "away from collapse"
        out[prefix + key] = {"at_zero_error": a, "last": b, "direction": direction}
    return out


def run(config: Config, context) -> dict:
    x, y = data.load_digits()  # (1797, 64) float32 in [0, 1]: load_digits has already divided by 16
    split = data.stratified_split(x, y, config.test_fraction, seed=context.seed)
    context.log(f"digits: {len(split[0])} training and {len(split[2])} test images, 10 classes")
    names = [*config.activations, *(["cnn"] if config.cnn else [])]
    results = {}
    for name in context.progress(names, "models trained and measured"):
        model, hidden, pre, series = train_with_series(name, config, split, context)
        geometry = layer_geometry(model, hidden, pre, split[2], relu_mlp=name == "relu")
        last = series[max(series)]
        results[name] = {"train_accuracy": last["train_accuracy"], "test_accuracy": last["test_accuracy"],
                         "series": {"epoch": list(series), **{k: [series[e][k] for e in series]
                                                              for k in ("train_accuracy", "test_accuracy")},
                                    **{f"nc_{side}": {key: [series[e][f"nc_{side}"][key] for e in series]
                                                      for key in NC_KEYS} for side in ("train", "test")}},
                         "terminal_phase": trends(series), **geometry}
    findings = []
    for name, r in results.items():
        for key, trend in r["terminal_phase"].items():
            if isinstance(trend, dict) and trend["direction"] == "away from collapse":
                findings.append(f"{name}: {key} went {trend['at_zero_error']:.4g} -> {trend['last']:.4g} after zero "
                                "training error, away from collapse (Papyan et al. report the opposite)")
        if r["terminal_phase"]["epoch_zero_train_error"] is None:
            findings.append(f"{name}: never reached zero training error (train accuracy {r['train_accuracy']:.4f})")
    floors = {name: results[name]["test_accuracy"] >= ACCURACY_FLOOR for name in ("relu", "cnn") if name in results}
    directions = {name: {key: t["direction"] for key, t in r["terminal_phase"].items() if isinstance(t, dict)}
                  for name, r in results.items()}
    return {"data": {"train": len(split[0]), "test": len(split[2]), "pixels": 64, "classes": 10},
            "models": results, "accuracy_floor": ACCURACY_FLOOR, "meets_accuracy_floor": floors,
            "terminal_phase_directions": directions, "flat_threshold": FLAT, "findings_against_papyan": findings}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    measured = numbers["models"]  # in the config's order (the JSON's keys are sorted)
    results = {name: measured[name] for name in [*config.activations, *(["cnn"] if config.cnn else [])]}
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    color = {name: plotting.color(name) if name != "cnn" else "tab:purple" for name in results}
    panels = [("accuracy", None), ("nc1", True), ("cdnv", True), ("nc2_equiangle", False), ("nc2_equinorm", False),
              ("nc3", False), ("nc4", False)]
    for ax, (key, log_y) in zip(axes.ravel(), panels):
        for name, r in results.items():
            epochs = r["series"]["epoch"]
            if key == "accuracy":
                ax.plot(epochs, r["series"]["train_accuracy"], "-", color=color[name], label=f"{name} train")
                ax.plot(epochs, r["series"]["test_accuracy"], "--", color=color[name])
                continue
            for side, style in (("train", "-"), ("test", "--")):
                values = np.array([np.nan if v is None else v for v in r["series"][f"nc_{side}"][key]])
                ax.plot(epochs, values, style, color=color[name], label=name if side == "train" else None)
            zero = r["terminal_phase"]["epoch_zero_train_error"]
            if zero is not None:
                ax.axvline(zero, color=color[name], lw=0.5, alpha=0.5)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{key} (solid: train, dashed: test)" if key != "accuracy" else "accuracy (dashed: test)",
                     fontsize=8)
    axes[0, 0].legend(fontsize=6)
    ax = axes[1, 3]
    for name, r in results.items():
        ranks = [v["median_numerical_rank"] for v in r["layers"].values()]
        ax.plot(range(1, len(ranks) + 1), ranks, "-o", ms=3, color=color[name], label=name)
    ax.set_xlabel("layer")
    ax.set_xticks(range(1, 1 + max(len(r["layers"]) for r in results.values())))
    ax.set_title("median rank of ∂h_l/∂x at test points (n₀ = 64)", fontsize=8)
    ax.legend(fontsize=6)
    fig.suptitle("Digits: terminal phase of training and per-layer geometry (vertical lines: zero training error)")
    fig.tight_layout()
    return {"": fig}
