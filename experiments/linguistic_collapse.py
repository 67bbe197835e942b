"""Linguistic collapse: neural-collapse metrics of small causal LMs over a width × depth grid.

Command:  python -m experiments linguistic_collapse [--quick] [--corpus PATH] [--scale gpu]
Writes:   figures/linguistic_collapse.{png,pdf,json}, linguistic_collapse_scaling.{png,pdf},
          linguistic_collapse_attention.{png,pdf}, linguistic_collapse_conventions.{png,pdf}
Runtime:  ~6 min on 2 CPU cores (9 models; quick: ~40 s); checkpointed, so a rerun restores.

Each model (`geometry.models.CausalLM`, head dimension 32) is trained with AdamW (cosine
schedule, clipped gradients) on next-token prediction over the word-level corpus
(`geometry.data.text_dataset`: pydoc_data.topics by default, any UTF-8 file with
--corpus). The next token is the class. Its last-layer features (final LayerNorm output)
over the training tokens give the class statistics, streamed in three passes through
`geometry.collapse.CollapseAccumulator` (nc4 on validation tokens); classes with fewer than
`min_count` training tokens are excluded and counted. Per model also: validation loss,
attention entropy per layer and head relative to uniform attention over the visible
keys, and the anisotropy (mean pairwise cosine) of the token embeddings.

(a) every metric against validation loss over the grid, with the R² of a least-squares
line (log10 of nc1 and cdnv, which span decades), in this library's default definitions.
(conventions) like with like: the same models measured with Wu & Papyan's (2024) own
definitions (`collapse_metrics(convention="linguistic_collapse")`, with our min_count as
their min_per_class), R² with validation loss of each of their columns under one fixed
transform (`experiments._study_fits`), beside the R² of the same columns over their 230
published models (experiments/reference/), each with a 95% bootstrap interval over models.
Nine models make wide intervals; the JSON states each width.
(token collapse, issue 29) after every block, at initialisation and after training, on the
validation windows: Dong et al.'s relative residual and the mean pairwise cosine of the
tokens (`geometry.tokens`); `token_collapse_links` correlates (Pearson r over the grid, 95%
bootstrap interval over models) log10 CDNV and NC1 with the first and last block's measures:
do the LMs whose last-layer features collapse also collapse their tokens early?
`--scale gpu` trains a larger grid for an accelerator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
from flax import nnx

from experiments import _study_fits
from geometry import collapse, data, functional, language_model, models, probe, tokens, training

PUBLISHED = {"strongest": ["cdnv", "nc4", "gnc2"], "weakest": ["nc2_equinorm"],
             "source": "Wu & Papyan (2024), Linguistic Collapse, TinyStories width x depth grid",
             "note": "the paper's qualitative ranking, in its own definitions; our `fits` use ours. For numbers "
                     "in the same definitions on both sides see `study_convention`"}
LOG_SCALE = ("nc1", "cdnv")
# more collapse = smaller value for every metric but nc4 (agreement): the sign of the loss slope
# a metric needs for "collapse tracks generalisation" (lower loss, more collapse)
COLLAPSE_SLOPE_SIGN = {name: (-1 if name == "nc4" else 1) for name in collapse.METRICS}


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (1, 2, 4)
    head_dim: int = 32
    context: int = 64
    max_vocab: int = 2048
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    min_count: int = 10  # training tokens a class needs to enter the metrics
    eval_batch: int = 64  # windows per evaluation batch
    corpus: str | None = None  # None: pydoc_data.topics


QUICK = Config(widths=(16, 32), depths=(1, 2), head_dim=8, context=32, max_vocab=512, steps=60, warmup_steps=6)
SCALES = {"gpu": Config(widths=(128, 256, 512, 768), depths=(2, 4, 8), context=128, max_vocab=8192, steps=3000,
                        batch_size=64, learning_rate=1e-3, warmup_steps=200)}


def model_key(config: Config, width: int, depth: int, seed: int) -> str:
    shape = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("widths", "depths", "eval_batch")}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]
    return f"w{width}-d{depth}-seed{seed}-{digest}"


def batches(inputs: np.ndarray, targets: np.ndarray, size: int):
    for start in range(0, len(inputs), size):
        yield inputs[start:start + size], targets[start:start + size]


@functional.jit_module
def last_layer_features(model: models.CausalLM, tokens: jax.Array) -> jax.Array:
    """(B, T) token ids -> (B·T, width) final-LayerNorm features."""
    return jax.vmap(model.features)(tokens).reshape(-1, model.width)


def measure(model: models.CausalLM, text: data.TextData, config: Config) -> dict:
    """Validation loss, streamed collapse metrics, attention entropy, embedding anisotropy."""
    state = nnx.state(model)
    attention_paths = [f"blocks/{l}/attention/probabilities" for l in range(model.depth)]
    forward, _, _ = probe.capture_fn(model, ["final_norm", *attention_paths], example=text.train_inputs[0])

    @jax.jit
    def evaluate(state, tokens, targets):  # (B, T) ids
        logits, records = jax.vmap(forward, in_axes=(None, 0))(state, tokens)
        attention = jnp.stack([records[path] for path in attention_paths], axis=1)  # (B, L, H, T, T)
        loss = training.cross_entropy(logits, targets) * targets.size  # summed over tokens
        entropy = jnp.sum(language_model.attention_entropy(attention), axis=0)  # (L, H, T)
        return records["final_norm"], loss, entropy

    accumulator = collapse.CollapseAccumulator(len(text.vocabulary), model.width, min_count=config.min_count)
    train = list(batches(text.train_inputs, text.train_targets, config.eval_batch))
    for batch_inputs, targets in train:  # pass 1
        accumulator.add_means(np.asarray(last_layer_features(model, batch_inputs)), targets.ravel())
    for batch_inputs, targets in train:  # pass 2
        accumulator.add_variability(np.asarray(last_layer_features(model, batch_inputs)), targets.ravel())
    head_weight, head_bias = np.asarray(model.head.weight[...]), np.asarray(model.head.bias[...])  # (V, d), (V,)
    loss_sum, entropy_sum = 0.0, 0.0
    for batch_inputs, targets in batches(text.validation_inputs, text.validation_targets, config.eval_batch):  # pass 3
        features, loss, entropy = evaluate(state, batch_inputs, targets)
        accumulator.add_decisions(np.asarray(features).reshape(-1, model.width), targets.ravel(), head_weight, head_bias)
        loss_sum, entropy_sum = loss_sum + float(loss), entropy_sum + np.asarray(entropy, dtype=np.float64)
    windows = len(text.validation_inputs)
    entropy = entropy_sum / windows  # (L, H, T) mean entropy at each query position
    uniform = np.log(np.arange(1, config.context + 1))  # entropy of uniform attention over t + 1 keys
    entropy_ratio = np.mean(entropy[..., 1:] / uniform[1:], axis=-1)  # (L, H); position 0 has one key
    return {
        "validation_loss": loss_sum / text.validation_targets.size,
        "metrics": accumulator.result(head_weight),
        "study_metrics": accumulator.result(head_weight, convention="linguistic_collapse"),
        "attention_entropy_ratio": entropy_ratio.tolist(),
        "attention_entropy_nats": entropy[..., 1:].mean(-1).tolist(),
        "embedding_anisotropy": language_model.embedding_anisotropy(model.token_embedding[...]),
        "feature_mean_anisotropy": language_model.embedding_anisotropy(jnp.asarray(accumulator.means[accumulator.included])),
    }


def token_collapse(model: models.CausalLM, text: data.TextData, config: Config) -> dict:
    """Token collapse after every block on the validation windows (`geometry.tokens`, issue 29): the
    relative residual ‖X − 1x̄ᵀ‖/‖X‖ in Dong et al.'s composite norm and the mean pairwise cosine
    of the window's token matrix, each averaged over windows; per block, in order."""
    paths = [f"blocks/{l}" for l in range(model.depth)]
    outputs = probe.outputs(model, text.validation_inputs[: config.eval_batch], paths)
    return {"relative_residual": [float(np.mean(tokens.relative_residual(np.asarray(outputs[p])))) for p in paths],
            "mean_cosine": [float(np.mean(tokens.mean_pairwise_cosine(np.asarray(outputs[p])))) for p in paths]}


def _pearson_with_interval(x: np.ndarray, y: np.ndarray, seed: int, draws: int = 2000) -> dict:
    """Pearson r over models with a 95% bootstrap interval (models resampled)."""
    if len(x) < MIN_MODELS_TO_FIT or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": None, "ci": None, "models": len(x)}
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(draws):
        pick = rng.integers(0, len(x), len(x))
        if np.ptp(x[pick]) > 0 and np.ptp(y[pick]) > 0:
            samples.append(np.corrcoef(x[pick], y[pick])[0, 1])
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"r": float(np.corrcoef(x, y)[0, 1]), "ci": [float(low), float(high)], "models": len(x)}


def token_collapse_links(runs: list[dict], seed: int) -> dict:
    """Do the LMs whose last-layer features collapse more also collapse their tokens early? Pearson r
    over the grid between log10 CDNV (and NC1) and the first / last block's token measures."""
    out = {}
    for metric in ("cdnv", "nc1"):
        collapse_level = np.log10(np.array([r["metrics"][metric] for r in runs], dtype=np.float64))
        for block in ("first", "last"):
            for measure_name in ("mean_cosine", "relative_residual"):
                values = np.array([r["token_collapse"][measure_name][0 if block == "first" else -1] for r in runs])
                out[f"log10_{metric}~{block}_block_{measure_name}"] = _pearson_with_interval(values, collapse_level,
                                                                                             seed)
    return out


def train_model(config: Config, text: data.TextData, width: int, depth: int, context) -> tuple[models.CausalLM, dict]:
    heads = max(1, width // config.head_dim)
    model = models.CausalLM(len(text.vocabulary), width=width, depth=depth, heads=heads, context=config.context,
                            rngs=nnx.Rngs(context.seed))
    train_config = training.TrainConfig(steps=config.steps, learning_rate=config.learning_rate,
                                        batch_size=config.batch_size, optimizer="adamw", schedule="cosine",
                                        warmup_steps=config.warmup_steps, clip_norm=1.0, seed=context.seed,
                                        log_every=max(config.steps // 5, 1), checkpoint_every=max(config.steps // 3, 1))
    key = model_key(config, width, depth, context.seed)
    result = training.train(model, text.train_inputs, text.train_targets, train_config,
                            checkpoint_dir=context.out_dir / ".checkpoints" / context.name / key,
                            name=f"  {context.name}: {key}")
    parameters = sum(p.size for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    return model, {"width": width, "depth": depth, "heads": heads, "parameters": int(parameters),
                   "train_loss_history": result["history"]}


MIN_MODELS_TO_FIT = 3  # a line through two points has R² = 1 whatever they are
MAX_EXCLUDED_CLASSES = 0.9  # beyond this fraction of classes left out, the metrics describe almost nothing
NUMERICAL_ZERO = 1e-12  # a dimensionless metric this small at every model is 0 up to rounding


def refusal(values: np.ndarray) -> str | None:
    """Why a metric's values over the models cannot be regressed on loss (None when they can)."""
    if len(values) < MIN_MODELS_TO_FIT:
        return f"needs at least {MIN_MODELS_TO_FIT} models, got {len(values)}"
    if not np.all(np.isfinite(values)):
        return "non-finite values"
    if np.max(np.abs(values)) <= NUMERICAL_ZERO or np.ptp(values) <= 1e-9 * np.max(np.abs(values)):
        return "constant over the models (e.g. an NC2 spread with 2 classes is identically 0): R² is meaningless"
    return None


def check_coverage(runs: list[dict], min_count: int) -> None:
    """ValueError (the run exits non-zero) when a model's metrics leave out most classes."""
    for r in runs:
        m = r["metrics"]
        classes, tokens = m["classes"] + m["classes_excluded"], m["tokens"] + m["tokens_excluded"]
        if m["classes_excluded"] > MAX_EXCLUDED_CLASSES * max(classes, 1):
            raise ValueError(
                f"w{r['width']} d{r['depth']}: {m['classes_excluded']} of {classes} classes and "
                f"{m['tokens_excluded']} of {tokens} tokens have fewer than min_count={min_count} samples: the "
                "corpus is too small for these metrics (use a larger corpus, or lower max_vocab / min_count "
                "with --set)")


def fit(x: np.ndarray, y: np.ndarray) -> dict:
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1.0 - np.sum(residual**2) / np.sum((y - y.mean()) ** 2) if np.ptp(y) > 0 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def fits(runs: list[dict]) -> dict:
    loss = np.array([r["validation_loss"] for r in runs])
    out = {}
    for name in collapse.METRICS:
        values = np.array([r["metrics"][name] for r in runs], dtype=np.float64)
        scale = "log10" if name in LOG_SCALE else "linear"
        reason = refusal(values)
        if reason is not None:
            out[name] = {"scale": scale, "r2": None, "refused": reason}
            continue
        line = fit(loss, np.log10(values) if scale == "log10" else values)
        line["lower_loss_means_more_collapse"] = bool(np.sign(line["slope"]) == COLLAPSE_SLOPE_SIGN[name])
        out[name] = {"scale": scale, **line}
    return out


def run(config: Config, context) -> dict:
    text = data.text_dataset(config.corpus, context=config.context, max_vocab=config.max_vocab)
    context.log(f"corpus {config.corpus or 'pydoc_data.topics'}: {text.train_targets.size} training and "
                f"{text.validation_targets.size} validation tokens, vocabulary {len(text.vocabulary)}, "
                f"<unk> {text.unknown_fraction:.3f}")
    runs = []
    grid = [(w, d) for w in config.widths for d in config.depths]
    for width, depth in context.progress(grid, "models trained and measured"):
        heads = max(1, width // config.head_dim)
        untrained = models.CausalLM(len(text.vocabulary), width=width, depth=depth, heads=heads,
                                    context=config.context, rngs=nnx.Rngs(context.seed))  # train_model's start
        at_init = token_collapse(untrained, text, config)
        model, record = train_model(config, text, width, depth, context)
        runs.append({**record, **measure(model, text, config), "token_collapse": token_collapse(model, text, config),
                     "token_collapse_at_init": at_init})
        context.log(f"w{width} d{depth}: validation loss {runs[-1]['validation_loss']:.3f}, "
                    f"cdnv {runs[-1]['metrics']['cdnv']:.3f}, nc4 {runs[-1]['metrics']['nc4']:.3f}")
    check_coverage(runs, config.min_count)
    fitted = fits(runs)
    for name, line in fitted.items():
        if line["r2"] is None:
            context.log(f"no fit for {name}: {line['refused']}")
    ranked = sorted((name for name in fitted if fitted[name]["r2"] is not None),
                    key=lambda name: -np.nan_to_num(fitted[name]["r2"], nan=-1.0))
    loss = np.array([r["validation_loss"] for r in runs])
    ours = _study_fits.r_squared_table(
        loss, lambda name: np.array([r["study_metrics"][name] for r in runs], dtype=np.float64), seed=context.seed)
    published = _study_fits.published_table(seed=context.seed)
    study = {"definitions": "geometry.collapse_studies, convention 'linguistic_collapse'",
             "min_per_class": config.min_count, "transforms": {k: d for k, (d, _) in _study_fits.QUANTITIES.items()},
             "ours": ours, "published": published, "published_source": _study_fits.PUBLISHED_SOURCE,
             "order_ours": _order(ours), "order_published": _order(published),
             # differences the intervals resolve: ours and the published interval do not overlap
             "separated_by_95_intervals": [k for k in ours if ours[k]["r2"] is not None and published[k]["r2"] is not None
                                           and (ours[k]["ci"][0] > published[k]["ci"][1]
                                                or ours[k]["ci"][1] < published[k]["ci"][0])]}
    return {
        "corpus": {"source": config.corpus or "pydoc_data.topics", "documents": list(text.documents),
                   "train_tokens": int(text.train_targets.size), "validation_tokens": int(text.validation_targets.size),
                   "vocabulary": len(text.vocabulary), "unknown_fraction": text.unknown_fraction},
        "runs": runs,
        "fits": fitted,
        "r2_order": ranked,
        "published": PUBLISHED,
        "published_strongest_in_our_top3": [name for name in PUBLISHED["strongest"] if name in ranked[:3]],
        "study_convention": study,
        "token_collapse_links": token_collapse_links(runs, context.seed),
    }


def _order(table: dict) -> list[str]:
    return sorted((k for k in table if table[k]["r2"] is not None), key=lambda k: -np.nan_to_num(table[k]["r2"]))


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    """The grid figure, its scaling and attention companions, and the study-convention comparison."""
    return {**_plot_grid(config, numbers["runs"], numbers["fits"]),
            "_conventions": plot_conventions(numbers["study_convention"])}


def plot_conventions(study: dict):
    names = list(_study_fits.QUANTITIES)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = np.arange(len(names))
    for offset, side, color, label in ((-0.18, "ours", "tab:blue", "ours (this grid)"),
                                       (0.18, "published", "tab:orange", "Wu & Papyan (2024), 230 models")):
        table = study[side]
        r2 = np.array([np.nan if table[n]["r2"] is None else table[n]["r2"] for n in names])
        low = np.array([np.nan if table[n]["r2"] is None else table[n]["ci"][0] for n in names])
        high = np.array([np.nan if table[n]["r2"] is None else table[n]["ci"][1] for n in names])
        ax.barh(rows + offset, r2, height=0.34, color=color, alpha=0.8, label=label)
        ax.errorbar(r2, rows + offset, xerr=[np.clip(r2 - low, 0, None), np.clip(high - r2, 0, None)], fmt="none",
                    ecolor="0.2", lw=0.8, capsize=2)
    models = next((t["models"] for t in study["ours"].values() if t["r2"] is not None), 0)
    ax.legend(loc="upper center", bbox_to_anchor=(0.35, -0.13), ncol=2, fontsize=7,
              title=f"95% bootstrap intervals over models; ours: {models} models", title_fontsize=7)
    ax.set_yticks(rows, [study["transforms"][n] for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("R² with validation loss")
    ax.set_title("The study's own statistics, R² with validation loss: our models vs the published ones", fontsize=8)
    fig.tight_layout()
    return fig


def log_axis(ax) -> None:
    """Log y axis with plain tick labels (the ranges here span less than a decade or two)."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
    # label the minor ticks too when no decade boundary (major tick) falls inside the range
    minor = ticker.FormatStrFormatter("%.3g") if high / low < 10 else ticker.NullFormatter()
    ax.yaxis.set_minor_formatter(minor)


def _plot_grid(config: Config, runs: list[dict], fitted: dict) -> dict:
    figures = {}
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(config.widths)))
    markers = dict(zip(config.depths, "os^Dv<>"))
    style = {w: colors[i] for i, w in enumerate(config.widths)}
    loss = np.array([r["validation_loss"] for r in runs])

    fig, axes = plt.subplots(2, 4, figsize=(14, 6.4))
    for ax, name in zip(axes.ravel(), collapse.METRICS):
        values = np.array([r["metrics"][name] for r in runs])
        for r, v in zip(runs, values):
            ax.scatter(r["validation_loss"], v, color=style[r["width"]], marker=markers[r["depth"]], s=36, zorder=3)
        if fitted[name]["r2"] is not None:
            line = np.linspace(loss.min(), loss.max(), 20)
            trend = fitted[name]["slope"] * line + fitted[name]["intercept"]
            ax.plot(line, 10**trend if name in LOG_SCALE else trend, color="0.4", lw=1, ls="--")
        if name in LOG_SCALE and np.all(values > 0):
            log_axis(ax)
        r2 = "no fit" if fitted[name]["r2"] is None else f"R² = {fitted[name]['r2']:.2f}"
        ax.set_title(f"{name}   {r2}")
        ax.set_xlabel("validation loss (nats/token)")
    for w in config.widths:
        axes[0, 0].scatter([], [], color=style[w], label=f"width {w}")
    for d in config.depths:
        axes[0, 0].scatter([], [], color="0.3", marker=markers[d], label=f"depth {d}")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Neural-collapse metrics of causal LMs against validation loss (class = next token)")
    fig.tight_layout()
    figures[""] = fig

    panels = ("validation_loss", "nc1", "cdnv", "gnc2", "nc4", "embedding_anisotropy")
    fig, axes = plt.subplots(1, len(panels), figsize=(17, 3.4))
    for ax, name in zip(axes, panels):
        for d in config.depths:
            rows = [r for r in runs if r["depth"] == d]
            values = [r[name] if name in r else r["metrics"][name] for r in rows]
            ax.plot([r["width"] for r in rows], values, marker=markers[d], label=f"depth {d}")
        ax.set_xscale("log", base=2)
        if name in LOG_SCALE:
            log_axis(ax)
        ax.set_xlabel("width")
        ax.set_title(name)
    axes[0].legend(fontsize=7)
    fig.suptitle("Scaling: metrics against width, one line per depth")
    fig.tight_layout()
    figures["_scaling"] = fig

    fig, axes = plt.subplots(1, len(config.widths), figsize=(4.2 * len(config.widths), 3.4), sharey=True,
                             squeeze=False)
    for ax, w in zip(axes[0], config.widths):
        for i, d in enumerate(config.depths):
            ratio = np.array(next(r for r in runs if r["width"] == w and r["depth"] == d)["attention_entropy_ratio"])
            layers = np.arange(1, ratio.shape[0] + 1)
            jitter = (np.arange(ratio.shape[1]) - (ratio.shape[1] - 1) / 2) * 0.04
            ax.scatter((layers[:, None] + jitter[None, :] + 0.12 * i).ravel(), ratio.ravel(), s=10,
                       marker=markers[d], label=f"depth {d}")
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set_title(f"width {w}: attention entropy / uniform")
        ax.set_xlabel("layer (dots: heads)")
    axes[0, 0].set_ylabel("H(attention) / log(t + 1)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    figures["_attention"] = fig
    return figures
