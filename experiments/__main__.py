"""python -m experiments [NAME ... | all] [--quick] [--seed S] [--out DIR]

With no name, lists the experiments. Unknown names exit with code 2 and the list.
"""

from __future__ import annotations

import argparse
import sys

from experiments import EXPERIMENTS


def _listing() -> str:
    from experiments._runner import load

    lines = []
    for name in EXPERIMENTS:
        doc = (load(name).__doc__ or "").strip().splitlines()
        lines.append(f"  {name:22s} {doc[0] if doc else ''}")
    return "experiments (run with `python -m experiments NAME ... [--quick]`, or `all`):\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="experiment names, or 'all'")
    parser.add_argument("--quick", action="store_true", help="small variant (CI-sized)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="figures", help="output directory (default: figures)")
    args = parser.parse_args(argv)
    if not args.names:
        print(_listing())
        return 0
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s): {', '.join(unknown)}\n{_listing()}", file=sys.stderr)
        return 2
    from experiments._runner import run_experiment

    for i, name in enumerate(names, 1):
        print(f"== {i}/{len(names)}: {name}", flush=True)
        run_experiment(name, quick=args.quick, seed=args.seed, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
