"""Generate the paper's tables and in-text numbers from figures/*.json and benchmarks/results/*.json.

Command:  python paper/make_tables.py
Writes:   paper/tables/*.tex (one tabular each) and paper/tables/numbers.tex (\\newcommand macros)
Runtime:  < 1 s

No number in the paper is typed by hand: tables are `\\input` from here and the prose uses
the macros. `tests/test_paper.py` regenerates everything and fails if a committed file
differs, i.e. if a table or macro disagrees with its JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIGURES, TABLES = ROOT / "figures", ROOT / "paper" / "tables"
BENCHMARKS = ROOT / "benchmarks" / "results"


def load(name: str) -> dict:
    return json.loads((FIGURES / f"{name}.json").read_text())["numbers"]


def numbers_config(name: str) -> dict:
    return json.loads((FIGURES / f"{name}.json").read_text())["config"]


def fmt(value, digits: int = 3) -> str:
    """A number as LaTeX: fixed or scientific with `digits` significant digits; inf as $\\infty$."""
    if value is None:
        return "--"
    if isinstance(value, str) and value in ("inf", "-inf"):
        return "$\\infty$" if value == "inf" else "$-\\infty$"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\\,")
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"${mantissa} \\times 10^{{{int(exponent)}}}$"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def tabular(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell if isinstance(cell, str) else fmt(cell) for cell in row) + " \\\\" for row in rows]
    return "\n".join([*lines, "\\bottomrule", "\\end{tabular}", ""])


def linear_collapse_table() -> str:
    numbers = load("linear_collapse")
    results, best = numbers["results"], numbers["best_linear_accuracy"]
    activations = ("identity", "relu", "tanh", "gelu")
    rows = [[name, best[name], *(results[f"{name}/{a}"]["test_accuracy"] for a in activations)] for name in best]
    return tabular(["dataset", "best line", "no activation", "ReLU", "tanh", "GELU"], rows)


def grid_warp_table() -> str:
    activations = load("grid_warp")["activations"]
    rows = []
    for name, entry in activations.items():
        measured = entry["measured"]["0"]
        rows.append([name.replace("_", "\\_"), measured["folded"], entry["theory"]["folded"],
                     measured["orientation_reversed"], entry["theory"]["orientation_reversed"]])
    return tabular(["activation", "folded", "theory", "folded over", "theory"], rows)


def pullback_table() -> str:
    networks = load("pullback")["networks"]
    rows = [[key.replace("_", "\\_").replace("/", ", width "), n["test_accuracy"], n["singular_fraction"],
             n["median_condition_number"], n["median_half_log_det_g"]] for key, n in networks.items()]
    return tabular(["network", "test acc.", "singular frac.", "median cond.", "median $\\frac12\\log\\det g$"], rows)


def isometry_table() -> str:
    rows = [[s["activation"], s["weights"], s["regime"], s["sigma_w2"], s["prediction"]["mean"],
             s["measured_mean_hutchinson"], s["prediction"]["variance_over_mean2"], s["measured_variance_over_mean2"]]
            for s in load("dynamical_isometry")["spectra"]]
    return tabular(["$\\phi$", "weights", "regime", "$\\sigma_w^2$", "$\\chi_1^L$", "mean (meas.)",
                    "var/mean$^2$ (theory)", "(meas.)"], rows, "lllrrrrr")


def kernel_table() -> str:
    results = load("kernel_layers")["results"]
    rows = [[key.split("/")[0], key.split("/")[1], r["test_accuracy"], r["median_condition_number"],
             r["median_half_log_det_g"]] for key, r in results.items() if "test_accuracy" in r]
    return tabular(["dataset", "model", "test acc.", "median cond.", "median $\\frac12\\log\\det g$"], rows, "llrrr")


def linguistic_fit_table() -> str:
    numbers = load("linguistic_collapse")
    strongest = set(numbers["published"]["strongest"])
    rows = [[name.replace("_", "\\_"), f["scale"], f["r2"], f["slope"], f["lower_loss_means_more_collapse"],
             "strong" if name in strongest else ("weak" if name in numbers["published"]["weakest"] else "--")]
            for name, f in sorted(numbers["fits"].items(), key=lambda item: -item[1]["r2"])]
    return tabular(["metric", "fit on", "$R^2$", "slope", "collapse $\\uparrow$ as loss $\\downarrow$",
                    "Wu \\& Papyan"], rows, "llrrll")


def linguistic_runs_table() -> str:
    runs = load("linguistic_collapse")["runs"]
    rows = [[str(r["width"]), str(r["depth"]), r["parameters"], r["validation_loss"],
             *(r["metrics"][m] for m in ("nc1", "cdnv", "gnc2", "nc4"))] for r in runs]
    return tabular(["width", "depth", "parameters", "val. loss", "NC1", "CDNV", "GNC2", "NC4"], rows, "rrrrrrrr")


def _interval(fitted: dict) -> str:
    if fitted["r2"] is None:
        return "--"
    return f"{fmt(fitted['r2'], 2)} [{fmt(fitted['ci'][0], 2)}, {fmt(fitted['ci'][1], 2)}]"


def linguistic_conventions_table() -> str:
    study = load("linguistic_collapse")["study_convention"]
    rows = [[description.replace("‖Δμ‖⁴", "$\\|\\Delta\\mu\\|^4$").replace("μ̄_c", "$\\bar\\mu_c$")
             .replace("w_c", "$w_c$"), _interval(study["ours"][name]), _interval(study["published"][name])]
            for name, description in study["transforms"].items()]
    return tabular(["the study's column (transform)", "$R^2$ here [95\\% CI]", "$R^2$ published [95\\% CI]"],
                   rows, "lll")


def digits_table() -> str:
    models = load("digits")["models"]
    rows = []
    for name, m in models.items():
        phase = m["terminal_phase"]
        nc1 = phase.get("nc1") or {}
        rows.append([name.replace("identity", "none"), m["train_accuracy"], m["test_accuracy"],
                     phase["epoch_zero_train_error"] if phase["epoch_zero_train_error"] is not None else "--",
                     nc1.get("at_zero_error"), nc1.get("last"), (phase.get("nc4") or {}).get("last"),
                     max(layer["rank_deficient_fraction"] for layer in m["layers"].values())])
    return tabular(["model", "train acc.", "test acc.", "epoch of 0 train error", "NC1 then", "NC1 last",
                    "NC4 last", "max rank-def. fraction"], rows, "lrrrrrrr")


def universality_table() -> str:
    numbers = load("spectral_universality")
    rows = []
    for key, r in numbers["results"].items():
        if r["width"] != numbers["largest_width"]:
            continue
        activation, weights = key.split("/")[:2]
        rows.append([activation, weights, str(r["depth"]), r["predicted_moments"][1], r["measured_moments"][1],
                     r["standard_errors"][1], max(r["relative_errors"]), r.get("cms_distance_fuss_catalan")])
    return tabular(["$\\phi$", "weights", "$L$", "$m_2$ predicted", "$m_2$ measured", "s.e.",
                    "max rel. err. $m_{1..4}$", "CMS dist. to Fuss--Catalan"], rows, "llrrrrrr")


def attention_table() -> str:
    numbers = load("attention_collapse")
    depth = numbers["depth"]
    rows = []
    for key, value in numbers["variants"].items():
        variant, direction = key.split("/")
        rows.append([variant.replace("_", "\\_"), direction, value["relative_residual_geometric_mean"][depth - 1],
                     value["mean_cosine_median"][depth - 1], value["centred_effective_rank_median"][depth - 1],
                     value["attention_entropy_ratio_median"][depth - 1]])
    return tabular(["variant", "attention", f"$\\|\\mathrm{{res}}\\|/\\|X\\|$ at $L={depth}$", "mean cosine",
                    "eff. rank (centred)", "entropy / uniform"], rows, "llrrrr")


def attention_rate_table() -> str:
    numbers = load("attention_collapse")
    cases = {f"{k.split('/')[1]}, $1/\\sqrt{{d_k}}$, $\\tau=1$": v for k, v in numbers["variants"].items() if "rate" in v}
    for key, value in numbers["sweeps"].items():
        _, direction, setting = key.split("/")
        if setting == "temperature=1":  # the row above
            continue
        label = "unscaled scores" if setting == "unscaled" else f"$\\tau={setting.split('=')[1]}$"
        cases[f"{direction}, {label}"] = value
    rows = [[label, value["rate"]["rate"], f"[{fmt(value['rate']['interval'][0])}, {fmt(value['rate']['interval'][1])}]",
             value["rate"]["geometric_factor"], value["rate"]["layers_used"]] for label, value in cases.items()]
    return tabular(["pure attention", "rate $\\rho$", "95\\% bootstrap", "geometric $q$", "layers fitted"], rows,
                   "lrrrr")


def regions_table() -> str:
    fits = load("linear_regions")["fits"]
    names = {"regions_per_area": "regions per unit area", "crossings_per_length": "boundary crossings per unit length",
             "mean_distance": "distance to the nearest boundary"}
    rows = [[names[key], fit["predicted"], fit["exponent"],
             f"[{fmt(fit['exponent_interval'][0])}, {fmt(fit['exponent_interval'][1])}]", fit["depth_coefficient"],
             f"[{fmt(fit['depth_coefficient_interval'][0])}, {fmt(fit['depth_coefficient_interval'][1])}]"]
            for key, fit in fits.items()]
    return tabular(["quantity at init", "predicted exponent", "fitted", "95\\% bootstrap", "per layer (log)",
                    "95\\% bootstrap"], rows, "lrrrrr")


def regions_training_table() -> str:
    training = load("linear_regions")["training"]
    rows = []
    for name, series in training.items():
        for i, step in enumerate(series["step"]):
            rows.append([name, step, series["regions"][i], series["train_accuracy"][i], series["local_data"][i],
                         series["local_boundary"][i], series["local_random"][i]])
    return tabular(["data", "step", "regions", "train acc.", "LC at data", "LC at boundary", "LC at random"], rows,
                   "lrrrrrr")


def terminal_phase_table() -> str:
    numbers = load("terminal_phase")
    rows = []
    for name, run in numbers["runs"].items():
        trend = run["trends"]
        last = run["series"][max(run["series"], key=int)]

        def cell(key):
            value = trend.get(key) or {}
            if value.get("at_zero_error") is None or value.get("last") is None:
                return "--"
            return f"{fmt(value['at_zero_error'])} $\\to$ {fmt(value['last'])}"

        rows.append([name.replace("_", "\\_"), trend.get("epoch_zero_train_error") or "--", cell("nc1"),
                     cell("nc2_equiangle"), cell("nc3"), cell("nc4"), cell("study/cdnv"), last["test_accuracy"]])
    return tabular(["run", "epoch 0 err.", "NC1", "NC2 angle", "NC3", "NC4", "CDNV (study)", "test acc."], rows,
                   "lrllllll")


def ssl_table() -> str:
    numbers = load("ssl_collapse")
    config = numbers_config("ssl_collapse")
    middle = config["strengths"][len(config["strengths"]) // 2]
    rows = []
    for method in config["methods"]:
        runs = [r for r in numbers["runs"] if r["method"] == method]
        at_middle = {r["encoder"]: r for r in runs if r["strength"] == middle}
        rows.append([method.replace("_", "\\_"), *(fmt(at_middle[e]["final"]["rankme"]) for e in config["encoders"]),
                     f"{sum(r['complete_collapse'] for r in runs)}/{len(runs)}",
                     fmt(float(np.median([r["final"]["probe_test_accuracy"] for r in runs])))])
    return tabular(["method", *config["encoders"], "complete collapse", "probe acc."], rows,
                   "l" + "r" * (len(config["encoders"]) + 2))


def benchmark_table() -> str:
    result = json.loads((BENCHMARKS / "jacobians-cpu.json").read_text())
    rows = [[name.replace("_", "\\_"), row["points_per_second"], row["cost_in_forward_passes"],
             row["slowdown_vs_jacobian_field"]] for name, row in result["main"].items()]
    return tabular(["method", "points/s", "forward passes", "time / jacobian\\_field"], rows)


def wide_error(wide: dict, route: str) -> float:
    """Largest |σ − σ_float64_svd| / σ_max of one wide-layer route."""
    return wide["agreement_vs_float64_svd"][route]["max_error_relative_to_sigma_max"]


def ssl_macros() -> dict[str, object]:
    numbers = load("ssl_collapse")
    link = numbers["rankme_vs_probe_accuracy"]
    strength = numbers["augmentation_strength"]
    jacobians = numbers["jacobians_vs_representation"]
    by_method = {m: [r for r in numbers["runs"] if r["method"] == m] for m in strength}
    return {
        "SSLRuns": len(numbers["runs"]),
        "SSLFindings": len(numbers["findings"]),
        "SSLRhoAll": link["all_runs"]["spearman"]["value"],
        "SSLRhoAllLow": link["all_runs"]["spearman"]["ci95"][0],
        "SSLRhoAllHigh": link["all_runs"]["spearman"]["ci95"][1],
        "SSLRhoLive": link["without_complete_collapse"]["spearman"]["value"],
        "SSLRhoLiveLow": link["without_complete_collapse"]["spearman"]["ci95"][0],
        "SSLRhoLiveHigh": link["without_complete_collapse"]["spearman"]["ci95"][1],
        "SSLStrengthSimclr": strength["simclr"]["spearman_strength_rankme"],
        "SSLStrengthFalls": sum(e.get("direction") == "falls" for e in strength.values()),
        "SSLMethods": len(strength),
        "SSLAlignCollapsed": sum(r["complete_collapse"] for r in by_method["alignment"]),
        "SSLNoSgCollapsed": sum(r["complete_collapse"] for r in by_method["simsiam_no_stop_gradient"]),
        "SSLPerMethod": len(by_method["alignment"]),
        "SSLJacobianRho": jacobians.get("spearman_jacobian_vs_representation"),
        "SSLKeepLow": min(r["final"]["rankme"] for m in ("simclr", "vicreg") for r in by_method[m]),
        "SSLKeepHigh": max(r["final"]["rankme"] for m in ("simclr", "vicreg") for r in by_method[m]),
        "SSLSimsiamCos": numbers["anchors"]["simsiam"]["median_embedding_mean_cosine"],
        "SSLByolCos": numbers["anchors"]["byol"]["median_embedding_mean_cosine"],
        "SSLSimsiamStd": numbers["anchors"]["simsiam"]["median_embedding_normalised_std_times_sqrt_d"],
        "SSLNoSgStd": numbers["anchors"]["simsiam_no_stop_gradient"]["median_embedding_normalised_std_times_sqrt_d"],
        "SSLSimclrStd": numbers["anchors"]["simclr"]["median_embedding_normalised_std_times_sqrt_d"],
        "SSLJacobianInit": jacobians["median_jacobian_effective_rank_initialisation"],
        "SSLJacobianFinal": jacobians["median_jacobian_effective_rank_final"],
    }


def macros() -> dict[str, object]:
    linear, rank, iso = load("linear_collapse"), load("rank_depth"), load("dynamical_isometry")["summary"]
    saturation, yat, language = load("saturation"), load("yat_xor"), load("linguistic_collapse")
    relu4 = load("pullback")["networks"]["relu/4"]
    digits = load("digits")
    universality = load("spectral_universality")
    wide = json.loads((BENCHMARKS / "wide_layers-cpu.json").read_text())
    memory = json.loads((BENCHMARKS / "memory-cpu.json").read_text())
    speed = json.loads((BENCHMARKS / "jacobians-cpu.json").read_text())["targets"]
    attention = load("attention_collapse")
    rates = attention["findings"]["pure_attention_rate"]
    links = language["token_collapse_links"]
    linear_regions = load("linear_regions")
    region_fits, region_training = linear_regions["fits"], linear_regions["training"]
    region_speed = json.loads((BENCHMARKS / "regions-cpu.json").read_text())["cases"]
    spiral = region_training["spiral"]
    terminal = load("terminal_phase")["runs"]
    peer = json.loads((BENCHMARKS / "matfree_peer-cpu.json").read_text())["cases"]
    ill, big = peer["ill-conditioned 128→128→128"], peer["3072→1024×8"]
    deepest = max(language["runs"], key=lambda r: (r["depth"], -r["width"]))  # the narrowest of the deepest LMs
    return {
        "StackVsSingle": linear["summary"]["max_abs_difference_stack_vs_single_matrix"],
        "SpiralNone": linear["summary"]["spiral_train_accuracy"]["identity"],
        "ReluRankExact": rank["relu_rank_identity_exact_everywhere"],
        "IsoMeanErr": 100 * iso["worst_mean_rel_error"],
        "IsoVarErr": 100 * iso["worst_variance_rel_error"],
        "IsoMomentErr": 100 * iso["worst_moment_rel_error"],
        "LNSigmaRatio": saturation["first_layer_median_sigma_min_over_max"]["layernorm"],
        "PlainSigmaRatio": saturation["first_layer_median_sigma_min_over_max"]["none"],
        "SatGap": saturation["max_abs_gap_to_theory_layer1"]["none"],
        "NarrowSingular": 100 * relu4["singular_fraction"],
        "NarrowAccuracy": 100 * relu4["test_accuracy"],
        "YatXorAccuracy": 100 * yat["single_unit"]["b >= 0 (softplus)"]["grid_accuracy"],
        "YatMostNegative": yat["most_negative_relative_eigenvalue_for_negative_b"],
        "LCModels": len(language["runs"]),
        "LCTopMetric": language["r2_order"][0].replace("_", "\\_"),
        "LCTopRsq": language["fits"][language["r2_order"][0]]["r2"],
        "LCCdnvRsq": language["fits"]["cdnv"]["r2"],
        "LCNcFourRsq": language["fits"]["nc4"]["r2"],
        "LCGncTwoRsq": language["fits"]["gnc2"]["r2"],
        "LCEquinormRsq": language["fits"]["nc2_equinorm"]["r2"],
        "LCTrainTokens": language["corpus"]["train_tokens"],
        "LCStudyCdnvOurs": language["study_convention"]["ours"]["log10_cdnv"]["r2"],
        "LCStudyCdnvPub": language["study_convention"]["published"]["log10_cdnv"]["r2"],
        "LCStudyEquinormOurs": language["study_convention"]["ours"]["equinorm_cov"]["r2"],
        "LCStudyEquinormPub": language["study_convention"]["published"]["equinorm_cov"]["r2"],
        "LCStudyMedianWidth": float(np.median([f["ci_width"] for f in language["study_convention"]["ours"].values()
                                               if f["r2"] is not None])),
        "LCStudyTopOurs": language["study_convention"]["order_ours"][0].replace("_", "\\_"),
        "LCStudyTopPub": language["study_convention"]["order_published"][0].replace("_", "\\_"),
        "DigitsReluAcc": 100 * digits["models"]["relu"]["test_accuracy"],
        "DigitsCnnAcc": 100 * digits["models"]["cnn"]["test_accuracy"],
        "DigitsIdentityHolds": 100 * digits["models"]["relu"]["relu_rank_identity"]["holds_fraction"],
        "DigitsFindings": len(digits["findings_against_papyan"]),
        "DigitsFlat": sum(d == "flat" for m in digits["terminal_phase_directions"].values() for d in m.values()),
        "DigitsToward": sum(d == "toward collapse" for m in digits["terminal_phase_directions"].values()
                            for d in m.values()),
        "DigitsTrends": sum(d is not None for m in digits["terminal_phase_directions"].values() for d in m.values()),
        "SUWidth": universality["largest_width"],
        "SUGaussMeanErr": 100 * max(r["relative_errors"][0] for k, r in universality["results"].items()
                                    if k.startswith("linear/gaussian") and r["width"] == universality["largest_width"]),
        "SUMaxCMS": max(r["cms_distance_fuss_catalan"] for r in universality["results"].values()
                       if r.get("cms_distance_fuss_catalan") is not None and r["width"] == universality["largest_width"]),
        # linear orthogonal rows are exact (every moment 1): their "standard error" is float32 rounding
        "SUMaxSE": max(max(r["errors_in_standard_errors"][:2]) for k, r in universality["results"].items()
                       if r["width"] == universality["largest_width"] and not k.startswith("linear/orthogonal")),
        "BenchForwardPasses": speed["cost_in_forward_passes"],
        "BenchTorchSpeedup": speed["speedup_vs_torch"],
        "WideSpeedup": wide["speedup"],
        "WideSpeedupDouble": wide["speedup_float64"],
        "MemoryGrowth": memory["chunked_growth"],
        "BenchVerdict": "meets" if speed["cost_in_forward_passes"] <= speed["target_cost_in_forward_passes"] else "misses",
        "TorchVerdict": "meets" if (speed["speedup_vs_torch"] or 0) >= speed["target_speedup_vs_torch"] else "misses",
        "WideVerdict": ("meets both" if wide["speedup"] >= wide["target_speedup"] and wide_error(wide, "pullback_metric")
                        <= wide["target_error_relative_to_sigma_max"] else "does not meet both"),
        "WideInputs": wide["inputs"],
        "WideSvdInputsPerSecond": wide["inputs"] / wide["routes"]["jacfwd_svd"]["seconds"],
        "WideMetricInputsPerSecond": wide["inputs"] / wide["routes"]["pullback_metric"]["seconds"],
        "WideFloatErr": wide_error(wide, "pullback_metric"),
        "WideUnrefinedErr": wide_error(wide, "pullback_metric_unrefined"),
        "WideSvdErr": wide_error(wide, "jacfwd_svd"),
        "WideRefine": wide["refine"],
        "AttnDepth": attention["depth"],
        "AttnRateBi": rates["bidirectional"]["rate"], "AttnRateBiLow": rates["bidirectional"]["interval"][0],
        "AttnRateBiHigh": rates["bidirectional"]["interval"][1], "AttnLayersBi": rates["bidirectional"]["layers_used"],
        "AttnRateCausal": rates["causal"]["rate"], "AttnRateCausalLow": rates["causal"]["interval"][0],
        "AttnRateCausalHigh": rates["causal"]["interval"][1], "AttnQCausal": rates["causal"]["geometric_factor"],
        "AttnResCausal": attention["findings"]["residual_at_depth"]["attention/causal"],
        "AttnResSkip": attention["findings"]["residual_at_depth"]["attention+skip/bidirectional"],
        "AttnCosPreLN": attention["findings"]["cosine_at_depth"]["pre_ln/causal"],
        "AttnCosPreLNScaled": attention["findings"]["cosine_at_depth"]["pre_ln_scaled/causal"],
        "AttnCosPure": attention["findings"]["cosine_at_depth"]["attention/causal"],
        "AttnTrainedDepth": len(attention["trained"]["attention"]["trained"]["mean_cosine"]),
        "AttnTrainedCosPure": attention["findings"]["trained_last_layer_cosine"]["attention"],
        "AttnTrainedLossPure": attention["findings"]["trained_validation_loss"]["attention"],
        "AttnTrainedLossPreLN": attention["findings"]["trained_validation_loss"]["pre_ln"],
        "AttnTrainedLossSkip": attention["findings"]["trained_validation_loss"]["attention+skip"],
        "AttnTrainedCosPreLNScaledInit": attention["findings"]["init_last_layer_cosine"]["pre_ln_scaled"],
        "AttnTrainedCosPreLNScaled": attention["findings"]["trained_last_layer_cosine"]["pre_ln_scaled"],
        "LmNcOneResR": links["log10_nc1~first_block_relative_residual"]["r"],
        "LmNcOneResLow": links["log10_nc1~first_block_relative_residual"]["ci"][0],
        "LmNcOneResHigh": links["log10_nc1~first_block_relative_residual"]["ci"][1],
        "LmCdnvResR": links["log10_cdnv~first_block_relative_residual"]["r"],
        "LmCdnvResLow": links["log10_cdnv~first_block_relative_residual"]["ci"][0],
        "LmCdnvResHigh": links["log10_cdnv~first_block_relative_residual"]["ci"][1],
        "LmModels": links["log10_nc1~first_block_relative_residual"]["models"],
        "LmDeepWidth": deepest["width"], "LmDeepDepth": deepest["depth"],
        "LmCosInit": deepest["token_collapse_at_init"]["mean_cosine"][-1],
        "LmCosTrained": deepest["token_collapse"]["mean_cosine"][-1],
        "RegAreaExp": region_fits["regions_per_area"]["exponent"],
        "RegAreaLow": region_fits["regions_per_area"]["exponent_interval"][0],
        "RegAreaHigh": region_fits["regions_per_area"]["exponent_interval"][1],
        "RegLineExp": region_fits["crossings_per_length"]["exponent"],
        "RegDistExp": region_fits["mean_distance"]["exponent"],
        "RegDepthPct": 100 * (1 - np.exp(region_fits["regions_per_area"]["depth_coefficient"])),
        "RegNets": len(linear_regions["at_init"]),
        "RegSpeedBiased": region_speed["2→64×4→2, biases N(0, 0.1)"]["seconds"],
        "RegCountBiased": region_speed["2→64×4→2, biases N(0, 0.1)"]["regions"],
        "RegGridBiased": region_speed["2→64×4→2, biases N(0, 0.1)"]["grid_patterns"],
        "RegSpiralDataInit": spiral["local_data"][0], "RegSpiralDataEnd": spiral["local_data"][-1],
        "RegSpiralBoundaryInit": spiral["local_boundary"][0], "RegSpiralBoundaryEnd": spiral["local_boundary"][-1],
        "RegSpiralRandomEnd": spiral["local_random"][-1], "RegSpiralSteps": spiral["step"][-1],
        "PeerIllCondLow": ill["condition_number_range"][0], "PeerIllCondHigh": ill["condition_number_range"][1],
        "PeerSteps": ill["steps"],
        "PeerIllMatfreeErr": 100 * ill["matfree_package"]["mean_relative_error"],
        "PeerIllOursErr": 100 * ill["ours_equal_steps"]["mean_relative_error"],
        "PeerIllMatfreeCover": 100 * ill["matfree_package"]["coverage_within_2_reported"],
        "PeerIllOursCover": 100 * ill["ours_equal_steps"]["coverage_within_2_reported"],
        "PeerBigMatfreeErr": 100 * big["matfree_package"]["mean_relative_error"],
        "PeerBigOursErr": 100 * big["ours_equal_steps"]["mean_relative_error"],
        "PeerBigDefaultErr": 100 * big["ours_default"]["mean_relative_error"],
        "PeerIllDefaultErr": 100 * ill["ours_default"]["mean_relative_error"],
        "TPDigitsAdamZero": terminal["digits/adam"]["trends"]["nc1"]["at_zero_error"],
        "TPDigitsAdamLast": terminal["digits/adam"]["trends"]["nc1"]["last"],
        "TPDigitsSgdZero": terminal["digits/papyan"]["trends"]["nc1"]["at_zero_error"],
        "TPDigitsSgdLast": terminal["digits/papyan"]["trends"]["nc1"]["last"],
        "TPBlobsSgdZero": terminal["blobs8x8/papyan"]["trends"]["nc1"]["at_zero_error"],
        "TPBlobsSgdLast": terminal["blobs8x8/papyan"]["trends"]["nc1"]["last"],
        "TPBlobsAdamZero": terminal["blobs8x8/adam"]["trends"]["nc1"]["at_zero_error"],
        "TPBlobsAdamLast": terminal["blobs8x8/adam"]["trends"]["nc1"]["last"],
        "TPFindings": len(load("terminal_phase")["findings"]),
        **ssl_macros(),
        "RegDigitsDataPeak": max(region_training["digits"]["local_data"]),
        "RegDigitsPeakStep": region_training["digits"]["findings"]["step_of_peak_at_data"],
        "RegDigitsDataEnd": region_training["digits"]["local_data"][-1],
        "RegDigitsBoundaryEnd": region_training["digits"]["local_boundary"][-1],
    }


TABLE_FUNCTIONS = {
    "linear_collapse": linear_collapse_table, "grid_warp": grid_warp_table, "pullback": pullback_table,
    "isometry": isometry_table, "kernel_layers": kernel_table, "linguistic_fits": linguistic_fit_table,
    "linguistic_runs": linguistic_runs_table, "linguistic_conventions": linguistic_conventions_table,
    "digits": digits_table, "universality": universality_table,
    "benchmark": benchmark_table, "attention": attention_table, "attention_rates": attention_rate_table,
    "regions": regions_table, "regions_training": regions_training_table, "terminal_phase": terminal_phase_table,
    "ssl": ssl_table,
}


def generate() -> dict[str, str]:
    """file name -> contents of every generated file."""
    files = {f"{name}.tex": function() for name, function in TABLE_FUNCTIONS.items()}
    files["numbers.tex"] = "".join(f"\\newcommand{{\\{name}}}{{{fmt(value)}}}\n" for name, value in macros().items())
    return files


def main() -> int:
    from geometry.io import atomic_write

    for name, text in generate().items():
        path = atomic_write(TABLES / name, text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
