"""Representation collapse in self-supervised learning on digits: complete, dimensional, and what prevents it.

Command:  python -m experiments ssl_collapse [--quick]
Writes:   figures/ssl_collapse.{png,pdf,json}
Runtime:  ~8 min on 2 CPU cores (quick: ~12 s); each finished run is saved, so a rerun restores.

Six objectives (`geometry.ssl`: SimCLR's InfoNCE, VICReg, BYOL with a predictor and an EMA
target, SimSiam with and without stop-gradient, and alignment alone — the control with no
repulsion) × five encoders (`geometry.models.MLP` 64 → width^depth → d with relu, gelu, tanh
and none; `ConvEncoder` below, a small CNN written as a user would) × augmentation strengths
(`geometry.augment.ImageAugment`: rotation, shift, cut-out, noise), trained with Adam on the
unlabelled digits training split (80/20 per class, the labels used only by the probe). Every
run: Siamese(encoder → representation h ∈ R^d, projector MLP d → 2d → d, predictor d → d → d
for BYOL/SimSiam), `ssl.fit`.

At log-spaced epochs (0 = initialisation): the spectrum of the representations of the
training images and of the projector's embeddings (`geometry.embeddings.embedding_spectrum`:
RankMe in Garrido et al.'s convention, the centred RankMe, relative variance, covariance
eigenvalues, VICReg's variance and covariance terms, mean pairwise cosine) and the test
accuracy of a linear probe on the frozen representations (`embeddings.linear_probe`). At
initialisation and at the end: per encoder layer, the numerical and effective rank of ∂h_l/∂x
at test points (`probe.input_jacobian_field`) — does dimensional collapse of the
representation show up in the Jacobians?

Checked against the anchors, each stated in the JSON with its numbers: alignment alone and
SimSiam without stop-gradient collapse completely (Chen & He; here: relative variance below
COMPLETE_COLLAPSE, RankMe ≤ 1.5); SimCLR, VICReg, BYOL and SimSiam do not; RankMe correlates with
probe accuracy across runs (Garrido et al.; Spearman and Pearson with bootstrap intervals, over
all runs and over the runs that did not collapse completely); RankMe falls with augmentation
strength (Jing et al.'s dimensional collapse from strong augmentation). A result that disagrees
is a finding.
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

from experiments._study_fits import bootstrap_interval
from geometry import data, distributed, embeddings, io, layers, models, probe, spectra, ssl, training
from geometry.augment import ImageAugment
from geometry.metric import spearman

# complete collapse: every input at one point — the spread √tr C below this fraction of the mean's norm
# (relative variance tr C / (‖μ‖² + tr C) < COMPLETE_COLLAPSE) or of its own value at initialisation (a
# collapse onto the origin, which no direction-based measure sees)
COMPLETE_COLLAPSE = 1e-3
RECORD_VERSION = 2  # part of a saved run's key: records measured by older code are not reused
COLLAPSING = ("alignment", "simsiam_no_stop_gradient")  # the anchors' collapsing controls
SPECTRUM_KEYS = ("rankme", "centred_rankme", "relative_variance", "total_std", "normalised_std", "numerical_rank",
                 "dimensions_for_99_percent", "vicreg_variance", "vicreg_covariance", "off_diagonal_fraction",
                 "mean_pairwise_cosine")


@dataclasses.dataclass(frozen=True)
class Config:
    methods: tuple[str, ...] = ssl.METHODS
    encoders: tuple[str, ...] = ("relu", "gelu", "tanh", "identity", "cnn")
    strengths: tuple[float, ...] = (0.5, 1.0, 2.0)
    width: int = 128
    depth: int = 2
    dim: int = 32  # representation (and embedding) dimension
    epochs: int = 100
    evaluations: int = 6  # epoch 0 and log-spaced epochs up to `epochs`
    batch_size: int = 256
    learning_rate: float = 1e-3
    temperature: float = 0.5  # SimCLR
    ema: float = 0.99  # BYOL's target decay
    jacobian_points: int = 64
    bootstrap: int = 2000
    test_fraction: float = 0.2


QUICK = Config(methods=("simclr", "alignment"), encoders=("relu",), strengths=(1.0,), epochs=6, evaluations=3,
               bootstrap=200)


class ConvEncoder(nnx.Module):
    """8×8 image (64 pixels) → conv 3×3 ×16 → φ → conv 3×3 stride 2 ×32 → φ → dense d."""

    def __init__(self, dim: int, activation: str = "relu", *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), padding="SAME", rngs=rngs)
        self.act1 = layers.Pointwise(activation)
        self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, padding="SAME", rngs=rngs)
        self.act2 = layers.Pointwise(activation)
        self.dense = nnx.Linear(4 * 4 * 32, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.act2(self.conv2(self.act1(self.conv1(x.reshape(1, 8, 8, 1)))))
        return self.dense(h.reshape(-1))


def build(method: str, encoder: str, config: Config, seed: int) -> tuple[ssl.Siamese, list[str]]:
    """The two-branch model and the encoder's layer paths whose Jacobians are measured."""
    rngs = nnx.Rngs(seed)
    if encoder == "cnn":
        backbone, paths = ConvEncoder(config.dim, rngs=rngs), ["act1", "act2", "dense"]
    else:
        backbone = models.MLP(64, config.width, depth=config.depth, out_features=config.dim, activation=encoder,
                              rngs=rngs)
        paths = [*(f"layers/{l}" for l in range(config.depth)), "readout"]
    projector = models.MLP(config.dim, 2 * config.dim, depth=1, out_features=config.dim, activation="relu", rngs=rngs)
    predictor = (models.MLP(config.dim, config.dim, depth=1, out_features=config.dim, activation="relu", rngs=rngs)
                 if method in ("byol", "simsiam", "simsiam_no_stop_gradient") else None)
    return ssl.Siamese(backbone, projector, predictor, ema=config.ema if method == "byol" else None), paths


def evaluation_epochs(config: Config) -> list[int]:
    later = np.unique(np.round(np.geomspace(1, config.epochs, max(config.evaluations - 1, 1))).astype(int))
    return [0, *(int(e) for e in later)]


@nnx.jit
def _embed(model, x):
    return jax.vmap(model.representation)(x), jax.vmap(model)(x)


def _spectrum(values: np.ndarray) -> dict:
    s = embeddings.embedding_spectrum(values)
    return {**{key: s[key] for key in SPECTRUM_KEYS},
            "covariance_eigenvalues": [float(v) for v in s["covariance_eigenvalues"]]}


def measure(model, split) -> dict:
    x_train, y_train, x_test, y_test = split
    h_train, z_train = (np.asarray(a, np.float64) for a in _embed(model, jnp.asarray(x_train)))
    h_test, _ = _embed(model, jnp.asarray(x_test))
    probe_result = embeddings.linear_probe(h_train, y_train, np.asarray(h_test, np.float64), y_test)
    return {"representation": _spectrum(h_train), "embedding": _spectrum(z_train),
            "probe_test_accuracy": probe_result["test_accuracy"], "probe_train_accuracy": probe_result["train_accuracy"]}


def jacobian_geometry(encoder, paths: list[str], points: np.ndarray) -> dict:
    fields = probe.input_jacobian_field(encoder, points, paths, as_matrix=True)  # {path: (N, k_l, 64)}
    out = {}
    for path, J in fields.items():
        s = spectra.summary(J)
        out[path] = {"units": int(J.shape[1]), "median_numerical_rank": float(np.median(s["numerical_rank"])),
                     "median_effective_rank": float(np.median(s["effective_rank"]))}
    return out


def train_run(method: str, encoder: str, strength: float, config: Config, split, context) -> dict:
    """One run, measured at `evaluation_epochs`; its record is saved so a rerun restores it."""
    name = f"{method}/{encoder}/s={strength:g}"
    record_file = Path(context.out_dir) / ".checkpoints" / context.name / f"{name.replace('/', '-')}.json"
    key = json.dumps({"config": dataclasses.asdict(config), "seed": context.seed, "run": name,
                      "version": RECORD_VERSION}, sort_keys=True)
    if record_file.exists():
        saved = json.loads(record_file.read_text())
        if saved.get("key") == key:
            return saved["record"]
    model, paths = build(method, encoder, config, context.seed)
    x_train = split[0]
    steps_per_epoch = len(x_train) // config.batch_size
    epochs = evaluation_epochs(config)
    train_config = training.TrainConfig(steps=epochs[-1] * steps_per_epoch, learning_rate=config.learning_rate,
                                        batch_size=config.batch_size, seed=context.seed, log_every=10**9)
    points = split[2][: config.jacobian_points]
    at_init = jacobian_geometry(model.encoder, paths, points)
    loss = ssl.SSLLoss(method, temperature=config.temperature)
    result = ssl.fit(model, x_train, loss, train_config, ImageAugment(strength),
                     measure=lambda m: measure(m, split), measure_at=[e * steps_per_epoch for e in epochs],
                     log=lambda line: None)
    series = {str(step // steps_per_epoch): r for step, r in sorted(result["measurements"].items())}
    record = {"method": method, "encoder": encoder, "strength": strength, "series": series,
              "final_loss": result["history"][-1]["loss"] if result["history"] else None,
              "jacobians": {"initialisation": at_init, "final": jacobian_geometry(model.encoder, paths, points)}}
    if distributed.is_writer():
        io.atomic_write(record_file, json.dumps({"key": key, "record": record}))
    return record


def _bootstrap(x: np.ndarray, y: np.ndarray, statistic, resamples: int, seed: int) -> dict:
    # a resample with a constant column has no correlation (spearman would call it 0): left out
    defined = lambda a, b: statistic(a, b) if np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan  # noqa: E731
    low, high, _ = bootstrap_interval(x, y, defined, resamples=resamples, seed=seed)
    return {"value": float(statistic(x, y)), "ci95": [low, high], "resamples": resamples, "runs": int(len(x))}


def _pearson(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def correlations(runs: list[dict], config: Config, seed: int) -> dict:
    """RankMe of the final representations against the probe's test accuracy, across runs."""
    rank = np.array([r["final"]["rankme"] for r in runs])
    accuracy = np.array([r["final"]["probe_test_accuracy"] for r in runs])
    collapsed = np.array([r["complete_collapse"] for r in runs])
    out = {}
    for label, keep in (("all_runs", np.ones(len(runs), bool)), ("without_complete_collapse", ~collapsed)):
        if keep.sum() < 4 or np.ptp(rank[keep]) == 0 or np.ptp(accuracy[keep]) == 0:
            out[label] = {"refused": f"{int(keep.sum())} runs, or a constant column"}
            continue
        out[label] = {"spearman": _bootstrap(rank[keep], accuracy[keep], spearman, config.bootstrap, seed),
                      "pearson": _bootstrap(rank[keep], accuracy[keep], _pearson, config.bootstrap, seed)}
    return out


def strength_trends(runs: list[dict], config: Config) -> dict:
    """Per method: final RankMe against augmentation strength (Spearman over every encoder's runs,
    and the mean RankMe per strength)."""
    out = {}
    for method in config.methods:
        mine = [r for r in runs if r["method"] == method]
        strengths = np.array([r["strength"] for r in mine])
        rank = np.array([r["final"]["rankme"] for r in mine])
        entry = {"mean_rankme": {f"{s:g}": float(rank[strengths == s].mean()) for s in config.strengths}}
        if len(config.strengths) > 1 and np.ptp(rank) > 0:
            entry["spearman_strength_rankme"] = spearman(strengths, rank)
            entry["direction"] = "falls" if entry["spearman_strength_rankme"] < 0 else "rises or flat"
        out[method] = entry
    return out


def jacobian_link(runs: list[dict]) -> dict:
    """Does a collapsed representation have collapsed Jacobians? Across runs, the effective rank of
    ∂h/∂x at the representation layer against the representation's centred RankMe (final)."""
    jacobian = np.array([list(r["jacobians"]["final"].values())[-1]["median_effective_rank"] for r in runs])
    initial = np.array([list(r["jacobians"]["initialisation"].values())[-1]["median_effective_rank"] for r in runs])
    representation = np.array([r["final"]["centred_rankme"] for r in runs])
    out = {"median_jacobian_effective_rank_initialisation": float(np.median(initial)),
           "median_jacobian_effective_rank_final": float(np.median(jacobian)),
           "runs_where_jacobian_effective_rank_fell": int(np.sum(jacobian < initial)), "runs": len(runs)}
    if len(runs) > 2 and np.ptp(jacobian) > 0 and np.ptp(representation) > 0:
        out["spearman_jacobian_vs_representation"] = spearman(jacobian, representation)
    return out


def collapsed(final: dict, prefix: str) -> bool:
    return bool(final[f"{prefix}relative_variance"] < COMPLETE_COLLAPSE
                or final[f"{prefix}spread_vs_initialisation"] < COMPLETE_COLLAPSE)


def run(config: Config, context) -> dict:
    for method in config.methods:
        ssl.SSLLoss(method)  # an unknown method fails before any training
    x, y = data.load_digits()  # (1797, 64) in [0, 1]
    split = data.stratified_split(x, y, config.test_fraction, seed=context.seed)
    context.log(f"digits: {len(split[0])} unlabelled training images, {len(split[2])} test images for the probe")
    settings = [(m, e, s) for m in config.methods for e in config.encoders for s in config.strengths]
    runs = []
    for method, encoder, strength in context.progress(settings, "runs"):
        record = train_run(method, encoder, strength, config, split, context)
        first, last = record["series"]["0"], record["series"][max(record["series"], key=int)]
        final = {**last["representation"], "probe_test_accuracy": last["probe_test_accuracy"],
                 **{f"embedding_{k}": v for k, v in last["embedding"].items()}}
        final = {k: v for k, v in final.items() if not k.endswith("covariance_eigenvalues")}
        for side, prefix in (("representation", ""), ("embedding", "embedding_")):
            final[f"{prefix}spread_vs_initialisation"] = last[side]["total_std"] / first[side]["total_std"]
        runs.append({**record, "final": final, "complete_collapse": collapsed(final, "embedding_"),
                     "representation_complete_collapse": collapsed(final, "")})
    findings, anchors = [], {}
    for method in config.methods:
        mine = [r for r in runs if r["method"] == method]
        collapsed_runs = [f"{r['encoder']}/s={r['strength']:g}" for r in mine if r["complete_collapse"]]
        expected = method in COLLAPSING
        anchors[method] = {"expected": "complete collapse" if expected else "no complete collapse",
                           "collapsed_runs": collapsed_runs, "runs": len(mine),
                           "median_embedding_mean_cosine": float(np.median(
                               [r["final"]["embedding_mean_pairwise_cosine"] for r in mine])),
                           "median_embedding_normalised_std_times_sqrt_d": float(np.median(
                               [r["final"]["embedding_normalised_std"] * np.sqrt(config.dim) for r in mine])),
                           "final_rankme": {f"{r['encoder']}/s={r['strength']:g}": r["final"]["rankme"] for r in mine},
                           "final_embedding_relative_variance": {f"{r['encoder']}/s={r['strength']:g}":
                                                                 r["final"]["embedding_relative_variance"] for r in mine},
                           "final_embedding_spread_vs_initialisation": {
                               f"{r['encoder']}/s={r['strength']:g}": r["final"]["embedding_spread_vs_initialisation"]
                               for r in mine}}
        anchors[method]["agrees"] = len(collapsed_runs) == len(mine) if expected else not collapsed_runs
        for r in mine:
            label = f"{method}/{r['encoder']}/s={r['strength']:g}"
            f = r["final"]
            state = (f"embedding: relative variance {f['embedding_relative_variance']:.3g}, spread ×"
                     f"{f['embedding_spread_vs_initialisation']:.3g} of initialisation, mean cosine "
                     f"{f['embedding_mean_pairwise_cosine']:.4f}; representation RankMe {f['rankme']:.2f}")
            if expected and not r["complete_collapse"]:
                findings.append(f"{label}: did not collapse completely in {config.epochs} epochs ({state}), where "
                                "the anchors report complete collapse")
            if not expected and r["complete_collapse"]:
                findings.append(f"{label}: collapsed completely ({state}), where the method is reported not to")
    correlation = correlations(runs, config, context.seed)
    for label, entry in correlation.items():
        if "spearman" in entry and entry["spearman"]["ci95"][0] <= 0:
            findings.append(f"RankMe vs probe accuracy ({label}): Spearman {entry['spearman']['value']:.2f}, 95% CI "
                            f"{entry['spearman']['ci95']} includes 0 — Garrido et al. report a strong positive link")
    strength = strength_trends(runs, config)
    for method, entry in strength.items():
        if entry.get("direction") == "rises or flat":
            findings.append(f"{method}: RankMe does not fall with augmentation strength (Spearman "
                            f"{entry['spearman_strength_rankme']:.2f}; means {entry['mean_rankme']}) — Jing et al. "
                            "report stronger augmentation collapsing more dimensions")
    return {"data": {"train": len(split[0]), "test": len(split[2])}, "epochs_measured": evaluation_epochs(config),
            "complete_collapse_threshold": COMPLETE_COLLAPSE, "runs": runs, "anchors": anchors,
            "rankme_vs_probe_accuracy": correlation, "augmentation_strength": strength,
            "jacobians_vs_representation": jacobian_link(runs), "findings": findings,
            "conventions": embeddings.embedding_spectrum(np.eye(3))["conventions"],
            "published": {"collapse_without_repulsion": "Chen & He (CVPR 2021): SimSiam without stop-gradient",
                          "rankme_vs_accuracy": "Garrido et al. (ICML 2023)",
                          "dimensional_collapse_with_augmentation": "Jing et al. (ICLR 2022)"}}


METHOD_COLOURS = {"simclr": "#1f77b4", "vicreg": "#2ca02c", "byol": "#9467bd", "simsiam": "#ff7f0e",
                  "simsiam_no_stop_gradient": "#d62728", "alignment": "#7f7f7f"}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    runs = numbers["runs"]
    middle = config.strengths[len(config.strengths) // 2]
    first_encoder = config.encoders[0]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    ax = axes[0, 0]
    for r in runs:
        if r["encoder"] == first_encoder and r["strength"] == middle:
            epochs = sorted(int(e) for e in r["series"])
            ax.plot([max(e, 0.5) for e in epochs], [r["series"][str(e)]["representation"]["rankme"] for e in epochs],
                    "o-", ms=3, color=METHOD_COLOURS[r["method"]], label=r["method"])
    ax.set_xscale("log")
    ax.set_xlabel("epoch (0 drawn at 0.5)")
    ax.set_title(f"RankMe of the representation ({first_encoder} MLP, strength {middle:g})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    table = np.array([[next(r["final"]["rankme"] for r in runs if r["method"] == m and r["encoder"] == e
                            and r["strength"] == middle) for e in config.encoders] for m in config.methods])
    image = ax.imshow(table, cmap="viridis", vmin=1, vmax=config.dim, aspect="auto")
    for (i, j), value in np.ndenumerate(table):
        ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="w" if value < config.dim / 2 else "k")
    ax.set_xticks(range(len(config.encoders)), config.encoders, fontsize=7)
    ax.set_yticks(range(len(config.methods)), config.methods, fontsize=7)
    ax.set_title(f"final RankMe (d = {config.dim}), strength {middle:g}", fontsize=9)
    fig.colorbar(image, ax=ax)
    ax = axes[0, 2]
    for r in runs:
        ax.plot(r["final"]["rankme"], r["final"]["probe_test_accuracy"], "o" if not r["complete_collapse"] else "x",
                ms=4, color=METHOD_COLOURS[r["method"]])
    rho = numbers["rankme_vs_probe_accuracy"].get("all_runs", {}).get("spearman")
    title = "probe test accuracy vs RankMe (x: complete collapse)"
    if rho:
        title += f"\nSpearman {rho['value']:.2f} [{rho['ci95'][0]:.2f}, {rho['ci95'][1]:.2f}]"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("RankMe")
    ax.set_ylabel("linear probe test accuracy")
    ax = axes[1, 0]
    for method in config.methods:
        means = numbers["augmentation_strength"][method]["mean_rankme"]
        ax.plot([float(s) for s in means], list(means.values()), "o-", color=METHOD_COLOURS[method], label=method)
    ax.set_xlabel("augmentation strength")
    ax.set_title("final RankMe, mean over encoders", fontsize=9)
    ax = axes[1, 1]
    for r in runs:
        if r["encoder"] == first_encoder and r["strength"] == middle:
            last = r["series"][max(r["series"], key=int)]
            values = np.maximum(np.array(last["representation"]["covariance_eigenvalues"]), 1e-30)
            ax.semilogy(range(1, len(values) + 1), values, "-", color=METHOD_COLOURS[r["method"]], label=r["method"])
    ax.set_xlabel("index")
    ax.set_title(f"covariance eigenvalues of the representation ({first_encoder}, end)", fontsize=9)
    ax = axes[1, 2]
    for r in runs:
        jac = list(r["jacobians"]["final"].values())[-1]["median_effective_rank"]
        ax.plot(r["final"]["centred_rankme"], jac, "o", ms=4, color=METHOD_COLOURS[r["method"]])
    ax.set_xlabel("centred RankMe of the representation")
    ax.set_ylabel("median effective rank of ∂h/∂x")
    ax.set_title("is the collapse in the Jacobians too? (end of training)", fontsize=9)
    fig.suptitle("Self-supervised collapse on digits: objectives × encoders × augmentation strength")
    fig.tight_layout()
    return {"": fig}
