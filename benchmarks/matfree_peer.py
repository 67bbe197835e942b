"""SLQ log volume side by side with the public `matfree` package (a `bench` extra, never a runtime
dependency), both against float64 dense truth.

Command:  python -m benchmarks.matfree_peer [--quick]
Writes:   benchmarks/results/matfree_peer-<device>.json (then `python -m benchmarks.report`)
Runtime:  about 3 minutes on 2 CPU cores (quick: ~40 s).

For each case — the issue's well-conditioned 256 → 512 → 512 → 128 and ill-conditioned
128 → 128 → 128 tanh nets, and 3072 → 1024 ×8 — at equal Krylov depth s (one J·v and one Jᵀ·u
per step in both, full reorthogonalisation in both) and the same number of Rademacher probes:
`matfree`'s `monte_carlo_funm_product_logdet` (Golub–Kahan bidiagonalisation, Gauss rule; on J
or Jᵀ, whichever makes the Gram matrix the smaller, non-singular one) with its standard error, against `geometry.matfree.log_volume(steps=s)` (Gauss–Radau / Gauss
bracket, total error) and the adaptive default. Reported: |error| relative to |Σ log σ|, the
error over the *reported* error (ours: total error; matfree: its standard error, all it
reports), the fraction of points within 2 reported errors, and the seconds per point after
compilation.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks._common import result_name, write_result
from benchmarks.matfree import tanh_net
from geometry import jacobians, matfree


def _peer_log_volume(f, steps: int, probes: int, symmetric: bool = False):
    """matfree's SLQ of log det(JᵀJ) / 2 = Σ log σ, jitted and vmapped over points: (values, sem); by
    bidiagonalisation of J, or (`symmetric`) by Lanczos on the Gram matrix itself (one J·v and one Jᵀ·u
    per step as well, but one orthogonalisation instead of two)."""
    from matfree import decomp, funm, stochtrace

    def one(x, key):
        y, pullback = jax.vjp(f, x)
        if y.size >= x.size:  # A = J: log det(JᵀJ), n × n, the smaller Gram matrix
            def matvec(v):
                return jax.jvp(f, (x,), (v,))[1]
            like = x
        else:  # A = Jᵀ: log det(J Jᵀ), m × m (JᵀJ would be singular)
            def matvec(u):
                return pullback(u)[0]
            like = y

        if symmetric:
            transpose = jax.linear_transpose(matvec, like)
            def gram(v):  # (JᵀJ or J Jᵀ) v
                return transpose(matvec(v))[0]
            integrand = funm.monte_carlo_funm_sym_logdet(decomp.tridiag_sym(steps))
            sampler = stochtrace.sampler_signs(like, num=probes)
            mean, sem = stochtrace.estimator_monte_carlo_mean_and_sem(integrand, sampler)(gram, key)
            return mean / 2, sem / 2
        integrand = funm.monte_carlo_funm_product_logdet(decomp.bidiag(steps))
        sampler = stochtrace.sampler_signs(like, num=probes)
        mean, sem = stochtrace.estimator_monte_carlo_mean_and_sem(integrand, sampler)(matvec, key)
        return mean / 2, sem / 2

    return jax.jit(jax.vmap(one))


def _timed(fn, repeats: int = 2):
    fn()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, out)
        best = min(best, time.perf_counter() - start)
    return out, best


def _scores(values, reported, truth) -> dict:
    error = np.abs(np.asarray(values, np.float64) - truth)
    ratio = error / np.maximum(np.asarray(reported, np.float64), 1e-300)
    return {"mean_relative_error": float(np.mean(error / np.abs(truth))),
            "max_relative_error": float(np.max(error / np.abs(truth))),
            "median_error_over_reported": float(np.median(ratio)), "max_error_over_reported": float(ratio.max()),
            "coverage_within_2_reported": float(np.mean(ratio <= 2)),
            "max_reported_relative": float(np.max(np.asarray(reported) / np.abs(truth)))}


def case(name: str, sizes, scale: float, points: int, probes: int, steps: int) -> dict:
    f = tanh_net(sizes, scale, seed=0)
    x = jax.random.normal(jax.random.key(1), (points, sizes[0]))
    start = time.perf_counter()
    sigma = np.linalg.svd(np.asarray(jacobians.jacobian_field(f, x), np.float64), compute_uv=False)
    dense_seconds = time.perf_counter() - start
    truth = np.sum(np.log(sigma), axis=1)
    peer = _peer_log_volume(f, steps, probes)
    keys = jax.random.split(jax.random.key(2), points)
    (peer_values, peer_sem), peer_seconds = _timed(lambda: peer(x, keys))
    symmetric = _peer_log_volume(f, steps, probes, symmetric=True)
    (sym_values, sym_sem), sym_seconds = _timed(lambda: symmetric(x, keys))
    ours, ours_seconds = _timed(lambda: matfree.log_volume(f, x, probes=probes, steps=steps))
    gram, gram_seconds = _timed(lambda: matfree.log_volume(f, x, probes=probes, steps=steps, kernel="gram"))
    default, default_seconds = _timed(lambda: matfree.log_volume(f, x, probes=probes), repeats=1)
    row = {"sizes": list(sizes), "scale": scale, "points": points, "probes": probes, "steps": steps,
           "condition_number_range": [float((sigma[:, 0] / sigma[:, -1]).min()), float((sigma[:, 0] / sigma[:, -1]).max())],
           "dense_seconds_per_point": dense_seconds / points,
           "matfree_package": {**_scores(peer_values, peer_sem, truth), "seconds_per_point": peer_seconds / points,
                               "reported": "standard error over probes"},
           "matfree_package_symmetric": {**_scores(sym_values, sym_sem, truth), "seconds_per_point": sym_seconds / points,
                                         "finite_fraction": float(np.mean(np.isfinite(np.asarray(sym_values)))),
                                         "reported": "standard error over probes (Lanczos on the Gram matrix)"},
           "ours_equal_steps": {**_scores(ours["values"], ours["total_error"], truth),
                                "seconds_per_point": ours_seconds / points,
                                "reported": "total error (Gauss–Radau/Gauss bracket + standard error)"},
           "ours_equal_steps_gram": {**_scores(gram["values"], gram["total_error"], truth),
                                     "seconds_per_point": gram_seconds / points,
                                     "reported": "total error incl. the Gram route's rounding estimate"},
           "ours_default": {**_scores(default["values"], default["total_error"], truth),
                            "seconds_per_point": default_seconds / points, "steps": np.asarray(default["steps"]).tolist(),
                            "reported": "total error, steps chosen per point (0: dense route)"}}
    print(f"{name}: matfree {row['matfree_package']['mean_relative_error']:.3f} rel. error "
          f"(cover {row['matfree_package']['coverage_within_2_reported']:.2f}, {peer_seconds / points * 1e3:.1f} ms/pt); "
          f"matfree symmetric {row['matfree_package_symmetric']['mean_relative_error']:.3f} ({sym_seconds / points * 1e3:.1f} ms/pt); "
          f"ours {row['ours_equal_steps']['mean_relative_error']:.3f} (cover "
          f"{row['ours_equal_steps']['coverage_within_2_reported']:.2f}, {ours_seconds / points * 1e3:.1f} ms/pt); "
          f"ours gram {row['ours_equal_steps_gram']['mean_relative_error']:.3f} (cover "
          f"{row['ours_equal_steps_gram']['coverage_within_2_reported']:.2f}, {gram_seconds / points * 1e3:.1f} ms/pt); "
          f"default {row['ours_default']['mean_relative_error']:.3f} (cover "
          f"{row['ours_default']['coverage_within_2_reported']:.2f})", flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    try:
        import matfree  # noqa: F401 - the peer; pip install -e ".[bench]"
    except ImportError as error:
        raise SystemExit('this benchmark compares with the matfree package: pip install -e ".[bench]"') from error
    points = 4 if args.quick else 16
    cases = {
        "well-conditioned 256→512→512→128": ((256, 512, 512, 128), 1.0, points, 32, 30),
        "ill-conditioned 128→128→128": ((128, 128, 128), 1.0, points, 32, 30),
        "3072→1024×8": ((3072,) + (1024,) * 8, 1.0, 2 if args.quick else 4, 8, 30),
    }
    rows = {name: case(name, *spec) for name, spec in cases.items()}
    write_result(result_name("matfree_peer") + ("-quick" if args.quick else ""), {"cases": rows})


if __name__ == "__main__":
    main()
