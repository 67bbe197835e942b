"""Like with like: R² with validation loss of the Linguistic Collapse study's own columns, over
our models and over the study's published models, each with a bootstrap confidence interval.

The quantities are the study's columns (`geometry.collapse_studies`, convention
"linguistic_collapse") under one fixed transform each — the ones that make them comparable
across models (log10 for quantities spanning decades, a coefficient of variation for the
equinorm and self-duality spreads):
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PUBLISHED_CSV = Path(__file__).parent / "reference" / "linguistic-collapse-lc-2024_10_24.csv"
PUBLISHED_SOURCE = ("Wu & Papyan (2024), Linguistic Collapse, arXiv 2405.17767: rhubarbwu/linguistic-collapse "
                    "artifacts/lc-2024_10_24.csv (230 TinyStories models)")


def _ratio(numerator, denominator):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(numerator, np.float64) / np.asarray(denominator, np.float64)


# name -> (description, function of a column getter returning one value per model)
QUANTITIES = {
    "log10_cdnv": ("log10 cdnv (‖Δμ‖⁴ normaliser)", lambda c: np.log10(c("cdnv"))),
    "nc4_agreement": ("hits / (hits + misses)", lambda c: _ratio(c("hits"), c("hits") + c("misses"))),
    "log_kern_mean": ("mean log kernel (GNC2 mean)", lambda c: c("log_kern_mean")),
    "log10_interfere_var": ("log10 variance of interference", lambda c: np.log10(c("interfere_var"))),
    "log_kern_var": ("variance of log kernel (GNC2)", lambda c: c("log_kern_var")),
    "etf_error": ("ETF error", lambda c: c("etf_error")),
    "simcos_cov": ("CoV of cos(w_c, μ̄_c)", lambda c: _ratio(np.sqrt(c("simcos_var")), c("simcos_mean"))),
    "dual_error": ("self-duality error", lambda c: c("dual_error")),
    "equinorm_cov": ("equinorm CoV (ddof 1)", lambda c: _ratio(np.sqrt(c("norms_var")), c("norms_mean"))),
}
__doc__ += "\n".join(f"    {name:<22} {description}" for name, (description, _) in QUANTITIES.items()) + "\n"


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares line y ~ x (the squared Pearson correlation); NaN when x or y is constant."""
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sum(x**2) * np.sum(y**2)
    return float(min(np.sum(x * y) ** 2 / denominator, 1.0)) if denominator > 0 else float("nan")  # rounding


def bootstrap_interval(x: np.ndarray, y: np.ndarray, statistic, *, resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, int]:
    """(low, high, resamples with a finite statistic): the percentile bootstrap interval of
    statistic(x, y) over pairs resampled with replacement; resamples where it is not finite are left out."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(resamples, len(x)))
    values = np.array([statistic(x[d], y[d]) for d in draws])
    finite = values[np.isfinite(values)]
    tail = (1.0 - level) / 2.0
    low, high = (np.quantile(finite, [tail, 1.0 - tail]) if len(finite) else (float("nan"), float("nan")))
    return float(low), float(high), int(len(finite))


def bootstrap_r_squared(x: np.ndarray, y: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """R² with a percentile bootstrap interval over models resampled with replacement. Resamples
    where x or y is constant have no R² and are left out (their count is reported)."""
    low, high, finite = bootstrap_interval(x, y, r_squared, resamples=resamples, seed=seed, level=level)
    return {"r2": r_squared(x, y), "ci": [low, high], "ci_width": float(high - low),
            "level": level, "resamples": resamples, "resamples_without_r2": int(resamples - finite),
            "models": int(len(x))}


def quantity_values(get) -> dict[str, np.ndarray]:
    return {name: np.asarray(transform(get), dtype=np.float64) for name, (_, transform) in QUANTITIES.items()}


def r_squared_table(loss: np.ndarray, get, *, seed: int, resamples: int = 2000) -> dict:
    """{quantity: bootstrap_r_squared(quantity, loss) or a refusal} over the models whose
    quantity is finite."""
    table = {}
    for name, values in quantity_values(get).items():
        keep = np.isfinite(values) & np.isfinite(loss)
        if keep.sum() < 3 or np.ptp(values[keep]) == 0:
            table[name] = {"r2": None, "refused": f"{int(keep.sum())} finite models, or constant"}
            continue
        table[name] = bootstrap_r_squared(values[keep], loss[keep], resamples=resamples, seed=seed)
        table[name]["models_left_out"] = int((~keep).sum())
    return table


def published_table(*, seed: int, resamples: int = 2000) -> dict:
    """The same table from the study's published per-model results."""
    with open(PUBLISHED_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = lambda name: np.array([float(r[name]) if r[name] else np.nan for r in rows])  # noqa: E731
    return r_squared_table(column("val_loss"), column, seed=seed, resamples=resamples)
