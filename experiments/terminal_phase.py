"""Neural collapse like for like: Papyan, Han & Donoho's terminal phase in their own training protocol.

Command:  python -m experiments terminal_phase [--quick]
Writes:   figures/terminal_phase.{png,pdf,json}
Runtime:  ~2.5 min on 2 CPU cores (quick: ~20 s); Orbax checkpoints, so a rerun restores.

`digits` trains with Adam at a constant rate and no weight decay. `--set protocols=papyan` runs
one protocol; its optimizer, rate, momentum, weight decay and decay points are Config fields
(`--set weight_decay=1e-3 --set sgd_learning_rate=0.1`). Papyan, Han & Donoho (PNAS
2020) train with SGD, momentum 0.9, weight decay 5e-4 (coupled L2, as PyTorch's SGD applies it:
here `training.TrainConfig(weight_decay=)` on "sgd"), the learning rate divided by 10 at 1/3 and
2/3 of ≈ 350 epochs, and report that past zero training error NC1 = Tr(Σ_W Σ_B†)/C falls by
orders of magnitude (≥ 10× over the terminal phase in their plots), the class means approach a
simplex ETF (equinorm and equiangle → 0), the classifier aligns with them (NC3 → 0) and agrees
with the nearest class mean (NC4 → 1).

Both protocols train the digits ReLU MLP (64 → width^depth → 10, `digits.build`) on two data sets:
scikit-learn's digits (1797 images, 80/20 split) and `blobs8x8` below, a deterministic synthetic
set of 8×8 images with `per_class` examples per class (so the terminal phase has many examples per
class). At log-spaced epochs: train/test accuracy and the collapse metrics of the penultimate
features in both conventions the library offers (`collapse.collapse_metrics`: "default" — NC1–NC4
as Papyan et al. define them — and "linguistic_collapse", the study columns CDNV, ETF error, dual
error, NC4 agreement). Under Papyan's protocol on digits, NC1 is also measured for three weight
decays. For each run and metric the JSON gives the first epoch at zero training error, the value
there and at the end, their ratio, the direction, and the published direction beside it; a metric
that does not follow is listed as a finding with its number.
"""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np

from experiments import digits
from geometry import collapse, data

PROTOCOL_NAMES = ("adam", "papyan")
STUDY_KEYS = ("cdnv", "etf_error", "dual_error", "nc4_agreement")


@dataclasses.dataclass(frozen=True)
class Config:
    datasets: tuple[str, ...] = ("digits", "blobs8x8")
    protocols: tuple[str, ...] = ("adam", "papyan")
    width: int = 256
    depth: int = 3
    epochs: int = 350
    evaluations: int = 16
    batch_size: int = 128
    per_class: int = 500  # blobs8x8 training images per class (and a fifth of it for testing)
    weight_decays: tuple[float, ...] = (5e-5, 5e-4, 5e-3)  # under Papyan's protocol, on digits
    # "adam": digits' protocol (Adam, constant rate, no weight decay)
    adam_learning_rate: float = 1e-3
    # "papyan": SGD with momentum, coupled L2 weight decay, the rate × decay_factor at each of decay_at
    sgd_learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_at: tuple[float, ...] = (1 / 3, 2 / 3)
    decay_factor: float = 0.1


def protocol(config: Config, name: str) -> dict:
    """The TrainConfig fields of a protocol by name ("adam" or "papyan") from the config's fields."""
    if name == "adam":
        return {"optimizer": "adam", "learning_rate": config.adam_learning_rate}
    if name == "papyan":
        return {"optimizer": "sgd", "learning_rate": config.sgd_learning_rate, "momentum": config.momentum,
                "weight_decay": config.weight_decay, "schedule": "steps", "decay_at": tuple(config.decay_at),
                "decay_factor": config.decay_factor}
    raise ValueError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOL_NAMES)}")


QUICK = Config(width=64, depth=2, epochs=60, evaluations=5, per_class=100, weight_decays=(5e-4,))


def blobs8x8(per_class: int, seed: int = 0):
    """(x (N, 64) float32 in [0, 1], y (N,) int32): 10 classes of 8×8 images, each a mixture of three
    smooth prototypes (sums of two Gaussian bumps at class-specific places) with pixel noise 0.15 and
    a random brightness; deterministic given (per_class, seed). Nothing is downloaded."""
    rng = np.random.default_rng(1000 + seed)
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 2).astype(np.float64)
    images, labels = [], []
    for c in range(10):
        prototypes = []
        for _ in range(3):
            centres = rng.uniform(1, 6, (2, 2))
            widths = rng.uniform(0.8, 1.8, 2)
            bumps = [np.exp(-np.sum((grid - m) ** 2, axis=1) / (2 * w**2)) for m, w in zip(centres, widths)]
            prototypes.append(np.clip(sum(bumps), 0, 1))
        which = rng.integers(0, 3, per_class)
        brightness = rng.uniform(0.7, 1.0, (per_class, 1))
        noise = rng.normal(0, 0.15, (per_class, 64))
        images.append(np.clip(brightness * np.stack(prototypes)[which] + noise, 0, 1))
        labels.append(np.full(per_class, c))
    return np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.int32)


def load(name: str, config: Config, seed: int):
    if name == "digits":
        x, y = data.load_digits()
    else:
        x, y = blobs8x8(config.per_class + config.per_class // 5, seed)
    return data.stratified_split(x, y, test_fraction=0.2 if name == "digits" else 1 / 6, seed=seed)


def measure(model, head, split) -> dict:
    """digits' measures (default convention) plus the linguistic-collapse study's columns."""
    record = digits.measure_epoch(model, head, split)
    for side, x, y in (("train", split[0], split[1]), ("test", split[2], split[3])):
        features = np.asarray(digits._features(model, x), np.float64)
        try:
            study = collapse.collapse_metrics(features, y, head, num_classes=10, min_count=1,
                                              convention="linguistic_collapse")
            hits, misses = study.get("hits"), study.get("misses")
            record[f"study_{side}"] = {"cdnv": study["cdnv"], "etf_error": study["etf_error"],
                                       "dual_error": study["dual_error"],
                                       "nc4_agreement": None if hits is None else hits / max(hits + misses, 1)}
        except ValueError as error:
            record[f"study_{side}"] = {key: None for key in STUDY_KEYS} | {"refused": str(error)}
    return record


# the direction each metric takes in Papyan et al. past zero training error (−1: decreases)
PUBLISHED = {**digits.PAPYAN_TREND, "study/cdnv": -1, "study/etf_error": -1, "study/dual_error": -1,
             "study/nc4_agreement": +1}


def terminal_trends(series: dict[int, dict]) -> dict:
    """digits.trends for the default metrics, and the same for the study's, with the fold change."""
    out = digits.trends(series)
    if out.get("epoch_zero_train_error") is None:
        return out
    study = {key: PUBLISHED[f"study/{key}"] for key in STUDY_KEYS}
    out.update(digits.trends(series, STUDY_KEYS, "study_train", study, prefix="study/"))
    for key, value in out.items():
        if isinstance(value, dict) and value.get("at_zero_error") and value.get("last") is not None:
            value["ratio_last_over_zero_error"] = value["last"] / value["at_zero_error"]
            value["published_direction"] = "decreases" if PUBLISHED[key] < 0 else "increases"
    return out


def run(config: Config, context) -> dict:
    runs, findings = {}, []
    base = digits.Config(activations=("relu",), width=config.width, depth=config.depth, cnn=False, epochs=config.epochs,
                         evaluations=config.evaluations, batch_size=config.batch_size)
    for name in config.protocols:
        protocol(config, name)  # an unknown name fails before any training
    settings = [(d, p, None) for d in config.datasets for p in config.protocols]
    if "papyan" in config.protocols and "digits" in config.datasets:
        settings += [("digits", "papyan", wd) for wd in config.weight_decays if wd != config.weight_decay]
    for dataset, protocol_name, weight_decay in context.progress(settings, "runs"):
        split = load(dataset, config, context.seed)
        options = protocol(config, protocol_name)
        if weight_decay is not None:
            options["weight_decay"] = weight_decay
        name = f"{dataset}/{protocol_name}" + ("" if weight_decay is None else f"/wd={weight_decay:g}")
        _, _, _, series = digits.train_with_series("relu", base, split, context, options=options, measure=measure,
                                                   tag="-" + name.replace("/", "-"))
        trend = terminal_trends(series)
        runs[name] = {"dataset": dataset, "protocol": protocol_name, "options": options, "train_points": len(split[0]),
                      "series": {str(e): r for e, r in series.items()}, "trends": trend}
        for key, value in trend.items():
            if isinstance(value, dict) and value.get("direction") == "away from collapse":
                findings.append(f"{name}: {key} moved away from collapse ({value['at_zero_error']:.4g} → "
                                f"{value['last']:.4g}), where Papyan et al. report it {value['published_direction']}")
        nc1 = trend.get("nc1", {})
        if nc1.get("ratio_last_over_zero_error") is not None and nc1["ratio_last_over_zero_error"] > 0.1:
            findings.append(f"{name}: NC1 fell only {1 / nc1['ratio_last_over_zero_error']:.2f}× over the terminal phase "
                            f"({nc1['at_zero_error']:.4g} → {nc1['last']:.4g}); Papyan et al.'s plots fall ≥ 10×")
        elif trend.get("epoch_zero_train_error") is None:
            findings.append(f"{name}: never reached zero training error in {config.epochs} epochs")
    weight_decay = {}
    if "digits/papyan" in runs:
        for wd in sorted(set(config.weight_decays) | {config.weight_decay}):
            key = "digits/papyan" if wd == config.weight_decay else f"digits/papyan/wd={wd:g}"
            weight_decay[f"{wd:g}"] = runs[key]["trends"].get("nc1", {}).get("last")
    return {"protocols": {name: protocol(config, name) for name in config.protocols}, "runs": runs, "findings": findings, "nc1_by_weight_decay": weight_decay,
            "published": {"source": "Papyan, Han & Donoho (2020), PNAS 117(40): 24652–24663",
                          "directions": {k: ("decreases" if v < 0 else "increases") for k, v in PUBLISHED.items()},
                          "nc1_fold_decrease_over_terminal_phase": "≥ 10 (their plots: orders of magnitude)"}}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    metrics = [("nc1", "NC1 (train)"), ("nc2_equiangle", "NC2 equiangle"), ("nc3", "NC3 self-duality"),
               ("nc4", "NC4 agreement"), ("study/cdnv", "CDNV (study convention)"), ("test_accuracy", "test accuracy")]
    fig, axes = plt.subplots(len(config.datasets), len(metrics), figsize=(3.1 * len(metrics), 3.0 * len(config.datasets)),
                             squeeze=False)
    styles = {"adam": ("#1f77b4", "-"), "papyan": ("#d62728", "-")}
    for row, dataset in enumerate(config.datasets):
        for col, (key, label) in enumerate(metrics):
            ax = axes[row, col]
            for name, run in numbers["runs"].items():
                if run["dataset"] != dataset:
                    continue
                epochs = sorted(int(e) for e in run["series"])
                if key == "test_accuracy":
                    values = [run["series"][str(e)]["test_accuracy"] for e in epochs]
                elif key.startswith("study/"):
                    values = [run["series"][str(e)]["study_train"].get(key.split("/")[1]) for e in epochs]
                else:
                    values = [run["series"][str(e)]["nc_train"].get(key) for e in epochs]
                values = [np.nan if v is None else v for v in values]
                colour, line = styles[run["protocol"]]
                extra = name.count("/") == 2
                ax.plot(epochs, values, "o" + (":" if extra else line), ms=3, color=colour, alpha=0.5 if extra else 1,
                        label=name.split("/", 1)[1])
                zero = run["trends"].get("epoch_zero_train_error")
                if zero is not None and not extra:
                    ax.axvline(zero, color=colour, lw=0.6, ls="--")
            ax.set_xscale("log")
            if key in ("nc1", "study/cdnv", "nc2_equiangle", "nc3"):
                ax.set_yscale("log")
            ax.set_title(f"{dataset}: {label}", fontsize=8)
            ax.set_xlabel("epoch (dashed: zero training error)", fontsize=7)
            if col == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    return {"": fig}
