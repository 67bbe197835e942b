"""python -m experiments [NAME ... | all] [--quick | --scale gpu] [--seed S] [--out DIR] [--corpus PATH]

With no name, lists the experiments. Unknown names exit with code 2 and the list.
`--scale gpu` picks the larger configs of experiments that define one (the others run
their full config); `--corpus` gives experiments that read text (linguistic_collapse) a
UTF-8 file instead of the built-in pydoc_data.topics corpus.
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


def _scales() -> set[str]:
    from experiments._runner import load

    return {scale for name in EXPERIMENTS for scale in getattr(load(name), "SCALES", {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="experiment names, or 'all'")
    parser.add_argument("--quick", action="store_true", help="small variant (CI-sized)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="figures", help="output directory (default: figures)")
    parser.add_argument("--scale", choices=sorted(_scales()), help="a larger config for an accelerator")
    parser.add_argument("--corpus", help="UTF-8 text file for the text experiments (default: pydoc_data.topics)")
    args = parser.parse_args(argv)
    if args.quick and args.scale:
        parser.error("--quick and --scale are exclusive")
    if args.corpus is not None:
        from pathlib import Path

        if not Path(args.corpus).is_file():
            parser.error(f"--corpus {args.corpus}: no such file")
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
        run_experiment(name, quick=args.quick, seed=args.seed, out_dir=args.out, scale=args.scale, corpus=args.corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
