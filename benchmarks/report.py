"""benchmarks/RESULTS.md from benchmarks/results/*.json (no number typed by hand).

Command:  python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks._common import RESULTS
from geometry.io import atomic_write

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _machine(m: dict) -> str:
    v = m["versions"]
    return (f"*{m['device']}* ({m['processor']}, {m['cpu_count']} CPU cores); jax {v['jax']}, jaxlib {v['jaxlib']}, "
            f"flax {v['flax']}; commit `{m['git_commit'][:12]}`")


def jacobians_section(result: dict) -> list[str]:
    c = result["config"]
    lines = [f"MLP tanh, width {c['width']}, depth {c['depth']}, {c['resolution']}² grid; end-to-end Jacobian "
             f"(256 × 2) per point. Floor: n_in + 1 = 3 forward passes.", "",
             "| method | points/s | cost (forward passes) | × jacobian_field time | max rel. error |", "|---|---:|---:|---:|---:|"]
    for name, row in sorted(result["main"].items(), key=lambda item: item[1]["cost_in_forward_passes"]):
        error = "—" if row["max_error_vs_jacobian_field"] is None else f"{row['max_error_vs_jacobian_field']:.1e}"
        lines.append(f"| {name} | {row['points_per_second']:.3g} | {row['cost_in_forward_passes']:.2f} | "
                     f"{row['slowdown_vs_jacobian_field']:.2f} | {error} |")
    t = result["targets"]
    torch = "torch not installed" if t["speedup_vs_torch"] is None else f"{t['speedup_vs_torch']:.1f}× (target ≥ 3×)"
    lines += ["", f"jacobian_field: {t['cost_in_forward_passes']:.2f} forward passes (target ≤ "
              f"{t['target_cost_in_forward_passes']:.1f}); faster than torch.func by {torch}.", "",
              f"Width sweep ({c['sweep_resolution']}² grid): cost in forward passes", ""]
    methods = [m for m in ("forward", "jacobian_field", "closed_form", "torch_func_vmap_jacfwd")
               if m in next(iter(result["sweep"].values()))]
    lines += ["| width | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for width, rows in sorted(result["sweep"].items(), key=lambda item: int(item[0])):
        lines.append(f"| {width} | " + " | ".join(f"{rows[m]['cost_in_forward_passes']:.2f}" for m in methods) + " |")
    return lines


def memory_section(result: dict) -> list[str]:
    lines = ["| grid | chunking | peak RSS (MB) | seconds |", "|---|---|---:|---:|"]
    for row in result["rows"]:
        kind = "default (4096)" if row["chunked"] else "none"
        if "failed" in row:
            lines.append(f"| {row['resolution']}² | {kind} | failed | — |")
        else:
            lines.append(f"| {row['resolution']}² | {kind} | {row['peak_rss_mb']:.0f} | {row['seconds']:.1f} |")
    return lines + ["", f"Chunked peak grows {result['chunked_growth']:.2f}× from {result['resolutions'][0]}² to "
                        f"{result['resolutions'][-1]}² (target ≤ {result['target_growth']}×)."]


def wide_section(result: dict) -> list[str]:
    lines = [f"m = n = {result['width']}, {result['inputs']} inputs; agreement against a float64 SVD of D W on "
             f"{result['checked_inputs']} inputs.", "",
             "| route | seconds (best of) | inputs/s | max \\|Δσ\\|/σ_max | max rel. error, σ ≥ 0.1 σ_max |",
             "|---|---:|---:|---:|---:|"]
    for name, timing in sorted(result["routes"].items(), key=lambda item: item[1]["seconds"]):
        a = result["agreement_vs_float64_svd"][name]
        lines.append(f"| {name} | {timing['seconds']:.2f} ({len(timing['runs'])}) | {result['inputs'] / timing['seconds']:.1f} | "
                     f"{a['max_error_relative_to_sigma_max']:.1e} | {a['max_relative_error_sigma_ge_0.1_max']:.1e} |")
    error = result["agreement_vs_float64_svd"]["pullback_metric"]["max_error_relative_to_sigma_max"]
    return lines + ["", f"Pullback-metric route (the {result['refine']} smallest values recomputed without squaring): "
                        f"{result['speedup']:.1f}× faster than jacfwd + SVD in float32 (target ≥ "
                        f"{result['target_speedup']}×), {result['speedup_float64']:.1f}× with both routes in float64; "
                        f"largest float32 error {error:.1e} σ_max (target ≤ {result['target_error_relative_to_sigma_max']:.0e})."]


def modes_section(result: dict) -> list[str]:
    lines = ["Forward (jacfwd), reverse (jacrev) and auto mode of `jacobian_field`, seconds for the whole point set "
             "(best of the runs); auto must be within 1.1× of the faster fixed mode.", "",
             "| case | points | forward s | reverse s | auto s (picked) | auto / faster | max \\|fwd − rev\\| |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    sizes = {"a": result["config"]["grid"] ** 2, "b": result["config"]["points"], "c": result["config"]["wide_points"],
             "d": result["config"]["points"]}
    for name, row in result["cases"].items():
        lines.append(f"| {name} | {sizes[name[0]]} | {row['forward']['seconds']:.3f} | {row['reverse']['seconds']:.3f} | "
                     f"{row['auto']['seconds']:.3f} ({row['auto_picked']}) | {row['auto_over_faster']:.2f} | "
                     f"{row['max_abs_forward_vs_reverse']:.1e} |")
    sweep = result["sweep"]
    lines += ["", f"Cost of one cotangent in tangents, fitted over tanh MLPs n → 256 → 256 → m: median "
                  f"{sweep['fitted_reverse_cost']:.2f} (the library's `REVERSE_COST` is "
                  f"{sweep['library_reverse_cost']:.1f}: forward when n ≤ REVERSE_COST · m).", "",
              "| n → m | forward s | reverse s | cotangent / tangent |", "|---|---:|---:|---:|"]
    for key, row in sorted(sweep["rows"].items(), key=lambda item: (item[1]["n"], item[1]["m"])):
        lines.append(f"| {key} | {row['forward_seconds']:.4f} | {row['reverse_seconds']:.4f} | "
                     f"{row['cotangent_over_tangent']:.2f} |")
    lines += ["", "Per-layer fields (`probe.local_jacobian_field`, `probe.input_jacobian_field`, all hidden layers) "
                  "against the per-point loop they replace (the former `layer_jacobians`; target ≥ 500×):", "",
              "| model | points | local points/s | input points/s | loop points/s | local × loop | input × loop | "
              "max \\|Δ\\| vs loop |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, p in result["probe"].items():
        lines.append(f"| {name} | {p['points']} | {p['local_points_per_second']:.0f} | {p['input_points_per_second']:.0f} | "
                     f"{p['loop_points_per_second']:.0f} | {p['local_speedup_vs_loop']:.0f} | "
                     f"{p['input_speedup_vs_loop']:.0f} | {p['max_abs_difference_vs_loop']:.1e} |")
    return lines


def matfree_section(result: dict) -> list[str]:
    top, volume = result["top_k"], result["log_volume"]
    lines = [f"Top-{top['k']} singular values of the input Jacobian of a tanh MLP {top['inputs']} → {top['width']} "
             f"×{top['depth']} at {top['points']} points (every route timed as the best of {top.get('repeats', 1)} runs): speedup {top['speedup']:.1f}× (target ≥ "
             f"{top['target_speedup']:.0f}×), max relative difference {top['max_relative_difference']:.1e} (target ≤ "
             f"{top['target_relative_difference']:.0e}).", "", "| route | seconds | peak RSS (MB) |", "|---|---:|---:|"]
    lines += [f"| {name} | {row['seconds']:.2f} | {row['peak_rss_mb']:.0f} |" for name, row in top["routes"].items()]
    free = top["routes"]["matfree"]
    lines += ["", f"Golub–Kahan steps used: {free.get('steps')} (all values converged: {free.get('converged')}).", ""]
    if "steps_sweep" in top:
        lines += ["Fixed step counts (same points, one timed run each): how few steps reach 1e-4 and which the residual bound certifies "
                  f"(converged: bound ≤ {top['tol']:g} σ_max).", "",
                  "| steps | seconds | speedup | max relative difference | max bound / σ_max | converged |",
                  "|---:|---:|---:|---:|---:|---|"]
        for steps, row in sorted(top["steps_sweep"].items(), key=lambda item: int(item[0])):
            lines.append(f"| {steps} | {row['seconds']:.2f} | {row['speedup']:.1f}× | {row['max_relative_difference']:.1e} | "
                         f"{row['max_bound_over_sigma_max']:.1e} | {row['converged']} |")
        lines.append("")
    for kind, v in volume.items():
        lines.append(f"SLQ log volume at {v['inputs']}-D input, {kind} tanh MLP (depth {v['depth']}, condition number "
                     f"{v['dense_condition_number']:.3g}, {v['probes']} probes, {v['steps']} steps): max relative error "
                     f"{v['max_relative_error']:.2e} (target ≤ {v['target_relative_error']:.0%}); "
                     f"{v['max_error_in_standard_errors']:.1f} standard errors, "
                     f"{v['max_absolute_error_per_dimension']:.2e} per dimension"
                     + (f"; error / reported total error ≤ {v['max_error_over_total_error']:.2f}."
                        if "max_error_over_total_error" in v else "."))
    honest = result.get("log_volume_whole_error", {})
    if honest:
        lines += ["", "`log_volume` with its whole error (default: steps doubling from 32 until the Gauss–Radau/Gauss "
                  "bracket is within 2% of max(|Σ log σ|, r), the dense route where the next round would cost more "
                  "Jacobian products than the dense J), against float64 dense truth; "
                  "beside it the Gauss rule alone at 30 steps (the former default), whose error the standard error "
                  "did not cover. Target: |error| ≤ 2 × reported error at ≥ 95% of points, reported error ≤ 2%.", "",
                  "| case | condition | within 2× reported | max error / reported | max reported (rel.) | steps | dense-routed | s (dense s) | Gauss@30: rel. error, in SE |",
                  "|---|---|---:|---:|---:|---|---:|---|---|"]
        for kind, h in honest.items():
            low, high = h["condition_number_range"]
            steps = sorted(set(h["steps"]))
            lines.append(f"| {kind} | {low:.2g}–{high:.2g} | {100 * h['coverage_within_2_total_errors']:.0f}% | "
                         f"{h['max_error_over_total_error']:.2f} | {100 * h['max_reported_error_relative']:.2f}% | {steps} | "
                         f"{100 * h['dense_routed_fraction']:.0f}% | {h['seconds']:.1f} ({h['dense_seconds']:.1f}) | "
                         f"{100 * h['gauss_30_steps_max_relative_error']:.1f}%, "
                         f"{h['gauss_30_steps_max_error_in_standard_errors']:.1f} |")
    chain = result.get("chain_log_volume")
    if chain:
        routes = chain["routes"]
        low, high = chain.get("condition_number_range", [float("nan")] * 2)
        lines += ["", f"Log volume Σ log σ at the top-{top['k']} case's points ({top['inputs']} → {top['width']} ×{top['depth']}, "
                  f"condition numbers of J {low:.1e}–{high:.1e}: SLQ would need a depth near r there, and `log_volume`'s "
                  "default routes such points to the dense J) by the exact per-layer split `metric.chain_log_volume` (one "
                  "float64 forward pass for tanh′, Σ log|tanh′| per layer plus each W's log volume): "
                  f"{routes['chain_log_volume']['seconds']:.2f} s against {routes['dense_log_volume']['seconds']:.2f} s for "
                  f"the dense route at equal precision (the same weights, J and its SVD in float64): "
                  f"{chain['speedup_over_float64_dense']:.0f}× (target ≥ {chain['target_speedup']:.0f}×), and "
                  f"{chain['speedup_over_float32_dense_svd']:.0f}× the float32 dense route above; peak RSS "
                  f"{routes['chain_log_volume']['peak_rss_mb']:.0f} MB against {routes['dense_log_volume']['peak_rss_mb']:.0f} MB. "
                  f"The two differ by up to {chain['max_relative_error']:.1e} (relative)"
                  + (f", {chain['max_difference_over_dense_rounding']:.2f}× the dense SVD's own first-order rounding "
                     f"estimate (up to {chain['max_dense_rounding_relative']:.1e} relative at these condition numbers; "
                     f"the split's, from well-conditioned factors: {chain['max_chain_rounding_relative']:.1e})."
                     if "max_difference_over_dense_rounding" in chain else ".")]
    return lines


def playground_section(result: dict) -> list[str]:
    targets = " and ".join(result.get("target_cases", ["2-32x4-2, 128² maps"]))
    lines = ["Frames a page's event stream receives per second while the net trains (a real server on 127.0.0.1, "
             "its client in another process as a browser is), with the per-neuron views on, and the parts of one "
             f"update timed alone (best of 5, ms). Target: ≥ {result['target_frames_per_second']:.0f} frames/s for "
             f"{targets}: {'met' if result['meets_target'] else 'not met'}.", "",
             "| case | frames/s | optimizer steps/s | kB per frame | train | maps | encode | per-neuron views | "
             "per-layer numbers | exact regions |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["cases"].items():
        s, p = row["stream"], row["parts"]
        lines.append(f"| {name} | {s['frames_per_second']:.1f} | {s['optimizer_steps_per_second']:.0f} | "
                     f"{s['mean_frame_bytes'] / 1e3:.0f} | " + " | ".join(
                         f"{1e3 * p[k]['seconds']:.1f}" if k in p else "–"
                         for k in ("train", "maps", "encode", "neurons", "layer_numbers")) +
                     (f" | {1e3 * p['exact_regions']['seconds']:.1f} |" if "exact_regions" in p else " | – |"))
    return lines + ["", "The per-layer numbers (CKA's Gram matrices dominate) are recomputed at most every 0.4 s "
                        "while training runs and, for a piecewise-linear net, the exact partition of the region panel "
                        "at most every 1 s (the page fetches its polygons only when a new one exists), so they do not "
                        "hold back the maps (exact regions: – where the net is not piecewise linear). The per-neuron "
                        "maps and marks are part of the compiled maps function; their encoding is the per-neuron "
                        "column. An in-process client (this benchmark until issue 32) competes with the server for "
                        "the GIL and measured 6–8 frames/s for the first row. Timings on a shared 2-core machine vary "
                        "by up to 1.5× between sessions: compare rows of one run."]


def _all_layers_lines(model: str, a: dict) -> list[str]:
    met = "met" if a["ratio_vs_deepest"] <= 1.3 else "not met"
    return [f"All-layer input fields of {model} at {a['points']} points, forward mode: {a['all_layers_seconds']:.2f} s "
            f"for every layer ({a['field_bytes'] / 2**30:.2f} GiB of Jacobians) against {a['deepest_alone_seconds']:.2f} s "
            f"for the deepest alone ({a['ratio_vs_deepest']:.2f}×; target ≤ 1.3×, {met}) and "
            f"{a['one_call_per_layer_seconds']:.2f} s for one call per layer. A hand-written `jax.jacfwd` of every "
            f"output at once takes {a['hand_jacfwd_all_seconds']:.2f} s ({a['hand_ratio_vs_deepest']:.2f}× the deepest): "
            "the probe shares one sweep as autodiff can (its time includes the check that every Jacobian is finite, "
            "one more pass over the field), and what is left is writing every layer's Jacobian.", ""]


def published_models_section(result: dict) -> list[str]:
    a, n, r, t = result["all_layers"], result["norm_spectra"], result["recompilation"], result["token_memory"]
    h, w, c = n["feature_map"]
    return [
        *_all_layers_lines("a ReLU MLP 784 → 256 → 256 → 10", a),
        *([] if "all_blocks" not in result else _all_layers_lines(
            f"a 4-block pre-LN transformer ({result['all_blocks']['layers'][0]}…, block outputs (T, d))",
            result["all_blocks"])),
        f"Local spectra of BatchNorm and LayerNorm on a {h}×{w}×{c} feature map (`probe.local_singular_values`, "
        f"structures {', '.join(f'{k}: {v}' for k, v in n['structures'].items())}): {n['structured_seconds']:.4f} s "
        f"against {n['dense_seconds']:.1f} s for the dense Jacobians and their SVD ({n['speedup']:.0f}×, target ≥ 100×; "
        f"max relative difference {n['max_relative_difference']:.1e}).", "",
        f"`model_kwargs`: {r['compilations_for_5_new_array_values']} compilations for 5 new array values, "
        f"{r['compilations_for_a_new_python_float']} for a new Python float (static by design).", "",
        f"Per-token blocks of a {t['tokens']}-token, width-{t['width']} causal mixer (`probe.token_jacobians`, "
        f"diagonal): {t['diagonal_blocks_bytes_per_point'] / 2**20:.1f} MiB of blocks per point against "
        f"{t['full_jacobian_bytes_per_point'] / 2**20:.0f} MiB for the full Jacobian; "
        f"{t['diagonal_blocks_seconds']:.2f} s against {t['full_jacobian_seconds']:.2f} s."]


def matfree_peer_section(result: dict) -> list[str]:
    lines = ["SLQ log volume Σ log σ against float64 dense truth, beside the `matfree` package at equal Krylov depth "
             "and probes (both Golub–Kahan with full reorthogonalisation, one J·v and one Jᵀ·u per step). "
             "Reported error: ours the total error (Gauss–Radau/Gauss bracket + standard error), matfree's its "
             "standard error (all it reports). Coverage: fraction of points within 2 reported errors.", "",
             "| case | condition | steps | route | mean rel. error | coverage | median error / reported | "
             "ms per point |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for name, row in result["cases"].items():
        low, high = row["condition_number_range"]
        for route, label in (("matfree_package", "matfree (Gauss)"),
                             ("matfree_package_symmetric", "matfree, Lanczos on the Gram matrix"),
                             ("ours_equal_steps", "ours, same steps (Golub–Kahan)"),
                             ("ours_equal_steps_gram", "ours, same steps, kernel=\"gram\""),
                             ("ours_default", "ours, default (adaptive)")):
            r = row[route]
            steps = row["steps"] if route != "ours_default" else "auto"
            lines.append(f"| {name} | {low:.0e}–{high:.0e} | {steps} | {label} | {r['mean_relative_error']:.4f} | "
                         f"{r['coverage_within_2_reported']:.2f} | {r['median_error_over_reported']:.2f} | "
                         f"{1e3 * r['seconds_per_point']:.1f} |")
        lines.append(f"| {name} | | | dense float64 SVD | 0 | | | {1e3 * row['dense_seconds_per_point']:.1f} |")
    return lines


def regions_section(result: dict) -> list[str]:
    lines = ["Exact linear regions of a 2-D slice (`geometry.regions.partition`, window [−3, 3]²): time of the "
             "whole partition (best of 5 after a first call that compiles; the first call's time beside it), and "
             f"its count against a sign-pattern grid. Target: ≤ {result['target_seconds']:g} s for 2 → 64 ×4 → 2.", "",
             "| model | regions | seconds | first call (s) | grid | grid patterns | grid seconds | exact ≥ grid | "
             "regions holding a grid point | regions smaller than a grid cell | verify error |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for row in result["cases"].values():
        lines.append(f"| {row['model']} | {row['regions']} | {row['seconds']:.3f} | {row['first_call_seconds']:.2f} | "
                     f"{row['grid_resolution']}² | {row['grid_patterns']} | {row['grid_seconds']:.2f} | "
                     f"{'yes' if row['exact_at_least_grid'] else 'NO'} | {row['regions_holding_a_grid_point']} | "
                     f"{row['regions_smaller_than_a_grid_cell']} | "
                     f"{row['max_verify_error']:.1e} |")
    return lines + ["", "A grid sees a region only if one of its points falls inside: its count equals the number of "
                        "exact regions holding a grid point in every case (the regions it misses are slivers near "
                        "crossings of nearly parallel boundaries; column 10 counts those smaller than one grid cell), "
                        "so on a one-layer net too the grid is below the exact count by exactly the regions none of "
                        "its points falls in. Verify error: the largest |forward pass − affine map| relative to the output "
                        "scale at random points inside every region."]


def canary_section(result: dict) -> list[str]:
    lines = [f"The canary recomputes at most {result['sample_points']} points per call unbatched and compares "
             "(geometry.batching). Best of the repeated calls, compilation excluded; the first call "
             "compiles the unbatched program too.", "",
             "| route | canary off (s) | canary on (s) | overhead | first call off (s) | first call on (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['seconds_off']:.4f} | {row['seconds_on']:.4f} | {100 * row['overhead']:+.1f}% | "
                     f"{row['first_call_seconds_off']:.2f} | {row['first_call_seconds_on']:.2f} |")
    return lines


def activations_section(result: dict) -> list[str]:
    rows = result["rows"]
    return [f"Zoo-style MLP 784 → 256 → 256 → 10 with inline relus, {result['config']['points']} points; found: "
            f"{', '.join(f'{k} ({v})' for k, v in result['found'].items())}.", "",
            "| step | seconds | first call (s) |", "|---|---:|---:|",
            *[f"| {name} | {row['seconds']:.4f} | {row['first_call_seconds']:.2f} |" for name, row in rows.items()],
            "", f"activation_stats / forward pass: **{result['ratio']:.2f}** (target ≤ {result['target']})."]


def layer_report_section(result: dict) -> list[str]:
    mlp, vit = result["mlp"], result["vit"]
    return [f"geometry.report of a zoo-style MLP 784 → 256 → 256 → 10 at {result['config']['points']} points: "
            f"{mlp['report']['seconds']:.2f} s against {mlp['fields']['seconds']:.2f} s for its all-layer input "
            f"fields, **{mlp['ratio']:.2f}×** (target ≤ {mlp['target']:g}×). The examples' image transformer at "
            f"{result['config']['images']} digits: **{vit['seconds_first_call']:.1f} s**, first call included "
            f"(target < {vit['target_seconds']:g} s)."]


SECTIONS = {"jacobians": ("Jacobian fields", jacobians_section), "modes": ("Autodiff modes", modes_section),
            "memory": ("Memory", memory_section), "wide_layers": ("Wide layers", wide_section),
            "matfree": ("Matrix-free spectra", matfree_section), "playground": ("Playground stream", playground_section),
            "published_models": ("Published-model routes", published_models_section),
            "matfree_peer": ("Log volume beside the matfree package", matfree_peer_section),
            "regions": ("Exact linear regions", regions_section),
            "canary": ("The compiler canary's cost", canary_section),
            "activations": ("Finding the activations", activations_section),
            "layer_report": ("The per-layer report", layer_report_section)}


def main() -> None:
    lines = ["# Benchmark results", "", "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; "
             "regenerate the JSON with `python -m benchmarks.jacobians`, `python -m benchmarks.modes`, "
             "`python -m benchmarks.memory`, `python -m benchmarks.wide_layers`, `python -m benchmarks.matfree`, "
             "`python -m benchmarks.playground`, `python -m benchmarks.published_models`, "
             "`python -m benchmarks.matfree_peer`, `python -m benchmarks.regions`, `python -m benchmarks.canary`, "
             "`python -m benchmarks.activations` and `python -m benchmarks.layer_report` on each machine.", ""]
    platforms = {json.loads(path.read_text())["machine"]["device"].split(":")[0] for path in RESULTS.glob("*.json")}
    if platforms <= {"cpu"}:
        lines += ["No accelerator results yet (no GPU was available where these were run): run the "
                  "benchmarks on a GPU or TPU machine, then this report, and its tables appear beside the CPU ones.", ""]
    found = [(prefix, title, section, path, json.loads(path.read_text()))
             for prefix, (title, section) in SECTIONS.items()
             for path in sorted(RESULTS.glob(f"{prefix}-*.json")) if "-quick" not in path.stem]
    lines += ["| result | device | processes | commit |", "|---|---|---:|---|"]
    lines += [f"| {path.stem} | {result['machine']['device']} | {result['machine'].get('processes', 1)} | "
              f"`{result['machine']['git_commit'][:12]}` |" for _, _, _, path, result in found]
    lines += ["", "`jacobians`, `modes` and `wide_layers` take the launch flags of `python -m experiments` "
              "(`--coordinator HOST:PORT --num-processes N --process-id I`, or none under SLURM, Open MPI or a "
              "TPU pod); `memory` and `matfree` measure one process's peak memory in single-process workers. "
              "Several processes on one host share its cores: such a result shows the cost of the exchange between "
              "processes (gloo over TCP on CPUs), not a speedup.", ""]
    for prefix, title, section, path, result in found:
        lines += [f"## {title} — {path.stem}", "", _machine(result["machine"]), "", *section(result), ""]
    atomic_write(OUT, "\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
