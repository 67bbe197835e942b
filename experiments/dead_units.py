"""ReLU dead units and rank deficiency: the closed forms against Monte Carlo.

Command:  python -m experiments dead_units [--quick]
Writes:   figures/dead_units.{png,pdf,json}
Runtime:  ~60 s on 2 CPU cores (quick: ~10 s).

(a) P(at least one of n units has z ≤ 0) = 1 − 2⁻ⁿ (`theory.prob_any_dead`) against the
    fraction of random inputs to random He-initialised, zero-bias ReLU networks of width
    n with a dead unit, at hidden layer 1 and at hidden layer `deep_layer`. With zero
    biases and W_l independent of h_{l−1}, z_l is iid symmetric given h_{l−1} — but only
    if h_{l−1} ≠ 0: once a whole layer is dead every later z is exactly 0. The iid model
    of the seed article therefore under-predicts deep layers at small n; the corrected
    curve 1 − 2⁻ⁿ(1 − 2⁻ⁿ)^(l−1) is drawn too, and the JSON scores both.
(b) the same on a log scale, P(no dead unit) = 2⁻ⁿ, where Monte Carlo can resolve it.
(c) P(rank J < n) for an m×n ReLU layer with Gaussian W
    (`theory.prob_relu_rank_deficient` = P(Binomial(m, ½) < n)) against the fraction of
    iid (W, x) draws whose Jacobian (`jax.jacfwd`, rank by `spectra.numerical_rank`) is
    rank-deficient.

Each Monte Carlo point carries its binomial standard error under the theory; the JSON
gives z = (MC − theory)/SE for every point.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from geometry import plotting, spectra, theory


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64, 128, 256, 512, 1024)
    input_dim: int = 16
    deep_layer: int = 3
    trials: int = 200_000  # random (network, input) draws per width, capped by max_work
    max_work: float = 5e8  # trials × n² × depth random numbers per width, at most
    rank_widths: tuple[int, ...] = (2, 4, 8, 16)  # n of the m×n layer; m runs from n to 4n
    rank_m_points: int = 13
    rank_draws: int = 20_000


QUICK = Config(widths=(1, 2, 4, 8, 16, 64), trials=20_000, max_work=2e8, rank_widths=(2, 4), rank_m_points=5,
               rank_draws=4000)


def any_dead_fractions(key, n: int, config: Config) -> tuple[np.ndarray, int]:
    """Fraction of draws with a dead unit at layers 1..deep_layer of random ReLU nets."""
    depth = config.deep_layer
    # wide layers: P(no dead unit) < 1e-19 is beyond any sample size; a few hundred draws suffice
    trials = int(min(config.trials, max(200, config.max_work / (n * n * depth))))

    def one_draw(key):
        keys = jax.random.split(key, depth + 1)
        h = jax.random.normal(keys[0], (config.input_dim,))
        dead = []
        for l in range(depth):
            fan_in = h.shape[0]
            w = jax.random.normal(keys[l + 1], (n, fan_in)) * jnp.sqrt(2.0 / fan_in)
            z = w @ h
            dead.append(jnp.any(z <= 0))
            h = jax.nn.relu(z)
        return jnp.stack(dead)

    # each draw holds `depth` n×n weight matrices: batch the draws to ~64 MB of weights
    batch = max(1, int(64e6 / (4 * n * max(n, config.input_dim) * depth)))
    draws = jax.jit(lambda keys: jax.lax.map(one_draw, keys, batch_size=batch))
    dead = draws(jax.random.split(key, trials))  # (trials, depth)
    return np.asarray(dead).mean(axis=0, dtype=np.float64), trials  # float32 means round near 1


def rank_deficient_fraction(key, m: int, n: int, config: Config) -> float:
    """Fraction of iid (W, x) draws with rank J < n for J the Jacobian of x ↦ relu(Wx).

    A fresh W for every draw keeps the samples independent (a fixed W shared by many x
    makes the fraction heavy-tailed across weight draws); J comes from `jax.jacfwd`
    vmapped over the draws, with its argument W as well as x.
    """
    w_key, x_key = jax.random.split(key)
    weights = jax.random.normal(w_key, (config.rank_draws, m, n)) / math.sqrt(n)
    inputs = jax.random.normal(x_key, (config.rank_draws, n))
    J = jax.vmap(jax.jacfwd(lambda w, x: jax.nn.relu(w @ x), argnums=1))(weights, inputs)  # (draws, m, n)
    return float(np.mean(np.asarray(spectra.numerical_rank(J) < n), dtype=np.float64))


def _binomial_se(p: float, samples: int) -> float:
    return math.sqrt(p * (1 - p) / samples)


def _z(measured: float, predicted: float, se: float) -> float:
    if se > 0:
        return (measured - predicted) / se
    return 0.0 if math.isclose(measured, predicted, abs_tol=1e-12) else math.inf


def run(config: Config, context) -> dict:
    key = jax.random.key(context.seed)
    deep = f"layer_{config.deep_layer}"
    dead = {"width": [], "trials": [], "theory": [], f"theory_{deep}": [], "layer_1": [], deep: [], "z_layer_1": [],
            f"z_{deep}": [], f"z_{deep}_vs_iid_theory": []}
    for n in context.progress(config.widths, "dead-unit widths"):
        key, sub = jax.random.split(key)
        fractions, trials = any_dead_fractions(sub, n, config)
        dead["width"].append(n)
        dead["trials"].append(trials)
        for name, value, layer in (("layer_1", fractions[0], 1), (deep, fractions[-1], config.deep_layer)):
            p = float(theory.prob_any_dead(n, layer=layer))
            dead["theory" if layer == 1 else f"theory_{deep}"].append(p)
            dead[name].append(float(value))
            dead[f"z_{name}"].append(_z(float(value), p, _binomial_se(p, trials)))
        p_iid = dead["theory"][-1]
        dead[f"z_{deep}_vs_iid_theory"].append(_z(dead[deep][-1], p_iid, _binomial_se(p_iid, trials)))

    rank = []
    cases = [(n, int(m)) for n in config.rank_widths for m in np.unique(np.linspace(n, 4 * n, config.rank_m_points).round())]
    for i, (n, m) in enumerate(context.progress(cases, "rank cases")):
        key, sub = jax.random.split(key)
        measured = rank_deficient_fraction(sub, m, n, config)
        p = theory.prob_relu_rank_deficient(m, n)
        se = _binomial_se(p, config.rank_draws)
        rank.append({"n": n, "m": m, "theory": p, "measured": measured, "se": se, "z": _z(measured, p, se)})

    z_all = [abs(z) for k in ("z_layer_1", f"z_{deep}") for z in dead[k]] + [abs(r["z"]) for r in rank]
    summary = {"max_abs_z": max(z_all), "all_within_4_se": bool(max(z_all) < 4)}

    return {"any_dead": dead, "rank_deficient": rank, "agreement": summary}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    dead, rank = numbers["any_dead"], numbers["rank_deficient"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    widths = np.asarray(dead["width"])
    n_curve = np.unique(np.logspace(0, math.log10(max(config.widths)), 400).round())
    ax = axes[0]
    ax.plot(n_curve, theory.prob_any_dead(n_curve), color="k", label="theory 1 − 2⁻ⁿ (iid)")
    ax.plot(n_curve, theory.prob_any_dead(n_curve, layer=config.deep_layer), color="#1f77b4", ls=":",
            label=f"theory, layer {config.deep_layer}")
    ax.plot(widths, dead["layer_1"], "o", color=plotting.color("relu"), label="MC, hidden layer 1")
    ax.plot(widths, dead[f"layer_{config.deep_layer}"], "x", color="#1f77b4", label=f"MC, hidden layer {config.deep_layer}")
    ax.set_xscale("log")
    ax.set_xlabel("width n")
    ax.set_ylabel("P(at least one dead unit)")
    ax.set_title("(a) a dead unit is almost certain")
    ax.legend()
    ax = axes[1]
    small = n_curve[n_curve <= 40]
    ax.plot(small, 1 - theory.prob_any_dead(small), color="k", label="theory 2⁻ⁿ")
    ax.plot(small, 1 - theory.prob_any_dead(small, layer=config.deep_layer), color="#1f77b4", ls=":",
            label=f"theory, layer {config.deep_layer}")
    for name, marker, colour in (("layer_1", "o", plotting.color("relu")),
                                 (f"layer_{config.deep_layer}", "x", "#1f77b4")):
        alive = 1 - np.asarray(dead[name])
        ok = alive > 0
        ax.plot(widths[ok], alive[ok], marker, color=colour, label=f"MC, {name.replace('_', ' ')}")
    ax.set_yscale("log")
    ax.set_xlabel("width n")
    ax.set_ylabel("P(no dead unit)")
    ax.set_title("(b) all units alive: 2⁻ⁿ")
    ax.legend()
    ax = axes[2]
    for n in config.rank_widths:
        rows = [r for r in rank if r["n"] == n]
        ms = np.arange(n, 4 * n + 1)
        line, = ax.plot(ms, [theory.prob_relu_rank_deficient(m, n) for m in ms], label=f"n = {n}")
        ax.errorbar([r["m"] for r in rows], [r["measured"] for r in rows], yerr=[2 * r["se"] for r in rows], fmt="o",
                    ms=3, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("layer width m")
    ax.set_ylabel("P(rank J < n)")
    ax.set_title("(c) m×n ReLU layer: P(Bin(m, ½) < n)\nlines theory, points MC ± 2 SE")
    ax.legend()
    fig.tight_layout()
    return {"": fig}
