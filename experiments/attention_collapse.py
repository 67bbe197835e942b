"""Rank collapse in self-attention stacks at initialisation: pure attention against skips, MLPs, LayerNorm.

Command:  python -m experiments attention_collapse [--quick]
Writes:   figures/attention_collapse.{png,pdf,json}
Runtime:  ~6 min on 2 CPU cores (quick: ~25 s).

Stacks of `depth` self-attention layers over T random Gaussian tokens of width d (float64,
weights N(0, 1/d), one head), built as `AttentionStack` in each variant: pure attention
h ← SA(h); with skips h ← h + SA(h); with MLPs h ← MLP(SA(h)); both; pre-LN and post-LN
transformer blocks; and pre-LN with residual branches scaled by 1/√depth (Noci et al. 2022).
Each runs causal and bidirectional, with the scores scaled by 1/√d_k (default) and without,
and pure attention over a temperature sweep of the logits. After every layer l the probe
(`geometry.probe.outputs`, the library's route into any model) reads the token matrix, and
`geometry.tokens` measures it: Dong, Cordonnier & Loukas's relative residual ‖X − 1x̄ᵀ‖/‖X‖
in their composite norm √(‖·‖₁‖·‖∞) and in Frobenius norm, the mean pairwise cosine
(Noci et al.), the numerical and effective rank of the centred tokens, and the attention
entropy relative to uniform. Dong et al.'s bound ‖res_{l+1}‖ ≤ c‖res_l‖³ makes
log(−log ‖res_l‖) linear in l with slope log 3: the fitted per-layer rate ρ (with a bootstrap
interval over sequences) is reported next to 3 for pure attention, a disagreement being a
finding. The per-token Jacobian blocks ∂h_l,t/∂h_0,t and the last token's causal row
∂h_l,T/∂h_0,s (`probe.token_jacobians`) give the spectra the collapse leaves to gradients.
Trained: each variant (causal, float32, depth `trained_depth`) as a small LM on the project's
corpus (`geometry.text`), measured the same way on validation windows before and after training.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from geometry import probe, tokens, training
from geometry import text as language_text

VARIANTS = ("attention", "attention+skip", "attention+mlp", "attention+skip+mlp", "pre_ln", "post_ln",
            "pre_ln_scaled")


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 32
    tokens: int = 16
    depth: int = 32
    sequences: int = 32
    networks: int = 3  # independent weight draws, pooled
    variants: tuple[str, ...] = VARIANTS
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    jacobian_depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    jacobian_sequences: int = 4
    bootstrap: int = 1000
    # trained: each variant as a causal LM (token + position embedding, the stack, a linear head) on the
    # project's corpus (geometry.text, pydoc_data.topics), AdamW with a cosine schedule
    trained_depth: int = 8
    trained_steps: int = 300
    context: int = 32
    max_vocab: int = 1024
    batch_size: int = 16
    learning_rate: float = 3e-3


QUICK = Config(width=8, tokens=6, depth=6, sequences=8, networks=1, variants=("attention", "attention+skip"),
               temperatures=(2.0,), jacobian_depths=(1,), jacobian_sequences=2, bootstrap=100,
               trained_depth=2, trained_steps=20, context=8, max_vocab=128, batch_size=8)


class Tokens(nnx.Module):
    """The identity: its output is h₀, so `wrt="tokens"` differentiates by the input tokens."""

    def __call__(self, x):
        return x


class Softmax(nnx.Module):
    """Attention probabilities (T, T) from scores, causal or not; recorded by the probe."""

    def __init__(self, causal: bool):
        self.causal = causal

    def __call__(self, scores):
        if self.causal:
            length = scores.shape[-1]
            scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, -jnp.inf)
        return jax.nn.softmax(scores, axis=-1)


def _gaussian(rngs, shape, variance, dtype):
    return nnx.Param(math.sqrt(variance) * jax.random.normal(rngs.params(), shape, dtype))


class SelfAttention(nnx.Module):
    def __init__(self, width: int, *, causal: bool, scaled: bool, temperature: float, rngs: nnx.Rngs, dtype):
        self.query, self.key, self.value = (_gaussian(rngs, (width, width), 1.0 / width, dtype) for _ in range(3))
        self.scale = temperature / (math.sqrt(width) if scaled else 1.0)
        self.probabilities = Softmax(causal)

    def __call__(self, h):  # (T, d)
        scores = (h @ self.query[...]) @ (h @ self.key[...]).T * self.scale
        return self.probabilities(scores) @ (h @ self.value[...])


class MLP(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs, dtype):
        self.inner = _gaussian(rngs, (width, 2 * width), 2.0 / width, dtype)  # He: ReLU keeps the scale
        self.outer = _gaussian(rngs, (2 * width, width), 1.0 / (2 * width), dtype)

    def __call__(self, h):
        return jax.nn.relu(h @ self.inner[...]) @ self.outer[...]


class Norm(nnx.Module):
    """LayerNorm over features, no learned scale or bias (they are 1 and 0 at initialisation)."""

    def __call__(self, h):
        centred = h - h.mean(axis=-1, keepdims=True)
        return centred / jnp.sqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + 1e-6)


class Layer(nnx.Module):
    def __init__(self, width: int, variant: str, depth: int, *, causal: bool, scaled: bool, temperature: float,
                 rngs: nnx.Rngs, dtype):
        self.variant = variant
        self.attention = SelfAttention(width, causal=causal, scaled=scaled, temperature=temperature, rngs=rngs,
                                       dtype=dtype)
        self.mlp = MLP(width, rngs=rngs, dtype=dtype) if "mlp" in variant or "ln" in variant else None
        self.norm = Norm() if "ln" in variant else None
        self.branch = 1.0 / math.sqrt(depth) if variant.endswith("scaled") else 1.0

    def __call__(self, h):
        v, a = self.variant, self.branch
        if v == "attention":
            return self.attention(h)
        if v == "attention+skip":
            return h + self.attention(h)
        if v == "attention+mlp":
            return self.mlp(self.attention(h))
        if v == "attention+skip+mlp":
            h = h + self.attention(h)
            return h + self.mlp(h)
        if v == "post_ln":
            h = self.norm(h + self.attention(h))
            return self.norm(h + self.mlp(h))
        h = h + a * self.attention(self.norm(h))  # pre_ln, pre_ln_scaled
        return h + a * self.mlp(self.norm(h))


class AttentionStack(nnx.Module):
    def __init__(self, width: int, depth: int, variant: str, *, causal: bool, scaled: bool = True,
                 temperature: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float64):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.tokens = Tokens()
        self.layers = nnx.List([Layer(width, variant, depth, causal=causal, scaled=scaled, temperature=temperature,
                                      rngs=rngs, dtype=dtype) for _ in range(depth)])

    def __call__(self, x):  # (T, d) one sequence
        h = self.tokens(x)
        for layer in self.layers:
            h = layer(h)
        return h


class StackLM(nnx.Module):
    """A causal LM around one stack variant: ids (T,) → embeddings + positions → stack → logits (T, V)."""

    def __init__(self, vocab: int, context: int, width: int, depth: int, variant: str, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, embedding_init=jax.nn.initializers.normal(1.0), rngs=rngs)
        self.position = nnx.Param(jax.random.normal(rngs.params(), (context, width)))
        self.stack = AttentionStack(width, depth, variant, causal=True, rngs=rngs, dtype=jnp.float32)
        self.head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids) + self.position[...][: ids.shape[0]]
        return self.head(self.stack(h))


def _trained(config: Config, variant: str, text, seed: int, context) -> dict:
    """The stack's token collapse after every layer on validation windows, before and after training."""
    model = StackLM(len(text.vocabulary), config.context, config.width, config.trained_depth, variant,
                    rngs=nnx.Rngs(seed))
    windows = text.validation_inputs[: config.sequences]
    paths = [f"stack/layers/{l}" for l in range(config.trained_depth)]

    def measures():
        outputs = probe.outputs(model, windows, paths)
        layers = np.stack([np.asarray(outputs[p], np.float64) for p in paths], axis=1)  # (N, L, T, d)
        return {"relative_residual": _geometric_mean(tokens.relative_residual(layers)).tolist(),
                "mean_cosine": np.median(tokens.mean_pairwise_cosine(layers), axis=0).tolist()}

    before = measures()
    train_config = training.TrainConfig(steps=config.trained_steps, learning_rate=config.learning_rate,
                                        batch_size=config.batch_size, optimizer="adamw", schedule="cosine",
                                        warmup_steps=max(config.trained_steps // 10, 1), clip_norm=1.0, seed=seed,
                                        log_every=max(config.trained_steps // 3, 1))
    result = training.train(model, text.train_inputs, text.train_targets, train_config,
                            name=f"{context.name}: {variant}", log=context.log)
    logits = jax.vmap(model)(jnp.asarray(text.validation_inputs[:512]))
    loss = float(training.cross_entropy(logits, jnp.asarray(text.validation_targets[:512])))
    return {"at_init": before, "trained": measures(), "validation_loss": loss,
            "first_loss": result["history"][0]["loss"], "last_loss": result["history"][-1]["loss"]}


def _per_layer(config: Config, variant: str, causal: bool, scaled: bool, temperature: float, seed: int) -> dict:
    """The token-collapse measures after every layer, pooled over `networks` weight draws:
    {measure: (networks · sequences, depth)}."""
    rows = {key: [] for key in ("relative_residual", "relative_residual_frobenius", "mean_cosine",
                                "centred_rank", "centred_effective_rank", "attention_entropy_ratio")}
    rng = np.random.default_rng(seed)
    for network in range(config.networks):
        model = AttentionStack(config.width, config.depth, variant, causal=causal, scaled=scaled,
                               temperature=temperature, rngs=nnx.Rngs(seed + 1000 * network))
        x = rng.normal(size=(config.sequences, config.tokens, config.width))
        outputs = probe.outputs(model, x, ["layers/*", "layers/*/attention/probabilities"])
        layers = np.stack([np.asarray(outputs[f"layers/{l}"]) for l in range(config.depth)], axis=1)  # (N, L, T, d)
        weights = np.stack([np.asarray(outputs[f"layers/{l}/attention/probabilities"]) for l in range(config.depth)],
                           axis=1)  # (N, L, T, T)
        ranks = tokens.token_ranks(layers)
        rows["relative_residual"].append(tokens.relative_residual(layers))
        rows["relative_residual_frobenius"].append(tokens.relative_residual(layers, "frobenius"))
        rows["mean_cosine"].append(tokens.mean_pairwise_cosine(layers))
        rows["centred_rank"].append(ranks["centred_rank"].astype(np.float64))
        rows["centred_effective_rank"].append(ranks["centred_effective_rank"])
        rows["attention_entropy_ratio"].append(tokens.attention_entropy_ratio(weights, causal).mean(axis=-1))
    return {key: np.concatenate(value) for key, value in rows.items()}


def _geometric_mean(values: np.ndarray) -> np.ndarray:
    return np.exp(np.mean(np.log(np.maximum(values, 1e-300)), axis=0))


def _rate_with_interval(residuals: np.ndarray, bootstrap: int, seed: int) -> dict:
    """Dong et al.'s per-layer rate from the geometric mean over sequences, with a 95% bootstrap
    interval (sequences resampled)."""
    fit = tokens.collapse_rate(_geometric_mean(residuals))
    rng = np.random.default_rng(seed)
    draws = [tokens.collapse_rate(_geometric_mean(residuals[rng.integers(0, len(residuals), len(residuals))]))["rate"]
             for _ in range(bootstrap)]
    draws = np.asarray(draws)[np.isfinite(draws)]
    low, high = (np.percentile(draws, [2.5, 97.5]) if draws.size else (float("nan"), float("nan")))
    return {**fit, "interval": [float(low), float(high)]}


def _summary(measures: dict) -> dict:
    """Per-layer medians (the figure's curves) and the geometric mean of the residuals."""
    return {"relative_residual_geometric_mean": _geometric_mean(measures["relative_residual"]).tolist(),
            **{f"{key}_median": np.median(value, axis=0).tolist() for key, value in measures.items()}}


def _token_jacobians(config: Config, variant: str, causal: bool, seed: int) -> dict:
    """Effective rank and condition number of ∂h_l,t/∂h_0,t (median over sequences and tokens), and
    the last token's causal row norms ‖∂h_l,T/∂h_0,s‖_F, at the chosen depths."""
    model = AttentionStack(config.width, config.depth, variant, causal=causal, rngs=nnx.Rngs(seed))
    x = np.random.default_rng(seed).normal(size=(config.jacobian_sequences, config.tokens, config.width))
    result = {}
    for depth in [d for d in config.jacobian_depths if d <= config.depth]:
        layer = f"layers/{depth - 1}"
        diagonal = np.asarray(probe.token_jacobians(model, x, layer, wrt="tokens", pairs="diagonal"))  # (N, T, d, d)
        last_row = np.asarray(probe.token_jacobians(model, x, layer, wrt="tokens", pairs="last_row"))
        sigma = np.linalg.svd(diagonal, compute_uv=False)  # (N, T, d)
        result[str(depth)] = {
            "diagonal_effective_rank_median": float(np.median(tokens.effective_rank(sigma))),
            "diagonal_condition_median": float(np.median(sigma[..., 0] / np.maximum(sigma[..., -1], 1e-300))),
            "diagonal_sigma_max_median": float(np.median(sigma[..., 0])),
            "last_row_norm_median": np.median(np.linalg.norm(last_row, axis=(-2, -1)), axis=0).tolist(),
        }
    return result


def run(config: Config, context) -> dict:
    seed = context.seed
    variants, sweeps = {}, {}
    with jax.enable_x64(True):  # pure attention reaches residuals of 1e-12 within a few layers
        cases = [(v, c) for v in config.variants for c in (False, True)]
        for variant, causal in context.progress(cases, "variants"):
            key = f"{variant}/{'causal' if causal else 'bidirectional'}"
            measures = _per_layer(config, variant, causal, True, 1.0, seed)
            variants[key] = _summary(measures)
            if variant == "attention":
                variants[key]["rate"] = _rate_with_interval(measures["relative_residual"], config.bootstrap, seed)
                unscaled = _per_layer(config, variant, causal, False, 1.0, seed)
                sweeps[f"{key}/unscaled"] = {**_summary(unscaled), "rate": _rate_with_interval(
                    unscaled["relative_residual"], config.bootstrap, seed)}
                for temperature in config.temperatures:
                    swept = _per_layer(config, variant, causal, True, temperature, seed)
                    sweeps[f"{key}/temperature={temperature:g}"] = {
                        **_summary(swept), "rate": _rate_with_interval(swept["relative_residual"], config.bootstrap,
                                                                       seed)}
        jacobians = {variant: _token_jacobians(config, variant, True, seed)
                     for variant in context.progress(config.variants, "token Jacobians")}
    text = language_text.text_dataset(context=config.context, max_vocab=config.max_vocab)
    trained = {variant: _trained(config, variant, text, seed, context)
               for variant in context.progress(config.variants, "trained stacks")}
    last = config.depth - 1
    findings = {
        "pure_attention_rate": {k: variants[f"attention/{k}"]["rate"] for k in ("bidirectional", "causal")},
        "residual_at_depth": {key: value["relative_residual_geometric_mean"][last] for key, value in variants.items()},
        "cosine_at_depth": {key: value["mean_cosine_median"][last] for key, value in variants.items()},
        # the quick test's claim: with skips, the tokens stay apart where pure attention collapses
        "skip_slows_collapse": all(variants[f"attention+skip/{c}"]["relative_residual_geometric_mean"][last]
                                   > variants[f"attention/{c}"]["relative_residual_geometric_mean"][last]
                                   for c in ("bidirectional", "causal")),
    }
    findings["trained_last_layer_cosine"] = {v: t["trained"]["mean_cosine"][-1] for v, t in trained.items()}
    findings["init_last_layer_cosine"] = {v: t["at_init"]["mean_cosine"][-1] for v, t in trained.items()}
    findings["trained_validation_loss"] = {v: t["validation_loss"] for v, t in trained.items()}
    return {"variants": variants, "sweeps": sweeps, "token_jacobians": jacobians, "trained": trained,
            "findings": findings, "depth": config.depth, "bound_rate": 3.0}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    variants, sweeps = numbers["variants"], numbers["sweeps"]
    layers = np.arange(1, config.depth + 1)
    fig, axes = plt.subplots(3, 3, figsize=(14, 12))
    colors = {v: plt.get_cmap("tab10")(i) for i, v in enumerate(VARIANTS)}
    for ax, direction in zip(axes[0, :2], ("bidirectional", "causal")):
        for variant in config.variants:
            curve = np.maximum(variants[f"{variant}/{direction}"]["relative_residual_geometric_mean"], 1e-17)
            ax.plot(layers, curve, "-o", ms=2.5, color=colors[variant], label=variant)
        ax.set_yscale("log")
        ax.set_xlabel("layer l")
        ax.set_ylabel("‖X − 1x̄ᵀ‖₁,∞ / ‖X‖₁,∞ (geometric mean)")
        ax.set_title(f"{direction}: token residual at initialisation", fontsize=9)
        ax.legend(fontsize=6)
    ax = axes[0, 2]  # Dong et al.'s law: log(−log r) linear in l, slope log 3
    for direction, style in (("bidirectional", "-o"), ("causal", "--s")):
        r = np.asarray(variants[f"attention/{direction}"]["relative_residual_geometric_mean"])
        reached = np.flatnonzero(r <= tokens.RESIDUAL_FLOOR)
        usable = (np.arange(len(r)) < (reached[0] if reached.size else len(r))) & (r < 1)
        rate = variants[f"attention/{direction}"]["rate"]
        ax.plot(layers[usable], np.log(-np.log(r[usable])), style, ms=3,
                label=f"{direction}: ρ = {rate['rate']:.2f} [{rate['interval'][0]:.2f}, {rate['interval'][1]:.2f}]")
        if np.isfinite(rate["slope"]):
            fitted = layers[usable]
            ax.plot(fitted, rate["intercept"] + rate["slope"] * fitted, ":", color="gray")
    start = ax.get_ylim()[0]
    ax.plot(layers[:4], start + np.log(3.0) * (layers[:4] - 1), "k-", lw=1, label="slope log 3 (cubic bound)")
    ax.set_xlabel("layer l")
    ax.set_ylabel("log(−log ‖res_l‖ / ‖X_l‖)")
    ax.set_title("pure attention: per-layer collapse rate ρ vs Dong et al.'s 3", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1, 0]  # Noci et al.: mean cosine rises with depth; residual scaling holds it back
    for variant in ("attention", "attention+skip+mlp", "pre_ln", "pre_ln_scaled", "post_ln"):
        if variant in config.variants:
            ax.plot(layers, variants[f"{variant}/causal"]["mean_cosine_median"], "-o", ms=2.5, color=colors[variant],
                    label=variant)
    ax.set_xlabel("layer l")
    ax.set_ylabel("mean cosine between tokens (median)")
    ax.set_title("causal: token cosine vs depth at initialisation", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1, 1]  # temperature and the 1/√d_k scaling
    for key in sorted(k for k in sweeps if k.startswith("attention/bidirectional/")):
        label = key.split("/")[-1]
        ax.plot(layers, np.maximum(sweeps[key]["relative_residual_geometric_mean"], 1e-17), "-", lw=1.2,
                label=f"{label}: ρ = {sweeps[key]['rate']['rate']:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("layer l")
    ax.set_ylabel("relative residual")
    ax.set_title("pure attention (bidirectional): logit temperature, unscaled scores", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1, 2]  # what the collapse leaves to gradients: ∂h_l,t/∂h_0,t
    for variant, by_depth in numbers["token_jacobians"].items():
        depths = sorted(int(d) for d in by_depth)
        ax.plot(depths, [by_depth[str(d)]["diagonal_effective_rank_median"] for d in depths], "-o", ms=3,
                color=colors[variant], label=variant)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth l")
    ax.set_ylabel("effective rank of ∂h_l,t/∂h_0,t (median)")
    ax.set_title(f"causal: per-token Jacobian blocks (d = {config.width})", fontsize=9)
    ax.legend(fontsize=6)
    trained = numbers["trained"]
    depth_axis = np.arange(1, config.trained_depth + 1)
    for ax, measure, label in ((axes[2, 0], "mean_cosine", "mean cosine between tokens (median)"),
                               (axes[2, 1], "relative_residual", "relative residual (geometric mean)")):
        for variant, record in trained.items():
            ax.plot(depth_axis, record["at_init"][measure], ":", color=colors[variant])
            ax.plot(depth_axis, record["trained"][measure], "-o", ms=2.5, color=colors[variant], label=variant)
        ax.set_xlabel("layer l")
        ax.set_ylabel(label)
        ax.set_title("causal LMs on the corpus: trained (solid) vs initialisation (dotted)", fontsize=9)
        ax.legend(fontsize=6)
    axes[2, 1].set_yscale("log")
    ax = axes[2, 2]
    names = list(trained)
    ax.barh(np.arange(len(names)), [trained[v]["validation_loss"] for v in names],
            color=[colors[v] for v in names])
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("validation cross-entropy (nats)")
    ax.set_title(f"after {config.trained_steps} steps, depth {config.trained_depth}", fontsize=9)
    fig.tight_layout()
    return {"": fig}
