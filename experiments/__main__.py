"""python -m experiments [NAME ... | all] [--quick | --scale gpu] [--seed S] [--out DIR] [--set KEY=VALUE ...]

`python -m experiments verify [--out DIR]` checks every output against DIR/MANIFEST.json.

With no name, lists the experiments. Unknown names exit with code 2 and the list.
`--scale gpu` picks the larger configs of experiments that define one (the others run
their full config). `--set KEY=VALUE` overrides a field of the config of every chosen
experiment that has it (`--set NAME.KEY=VALUE`: of one experiment), checked against the
frozen Config before anything runs: e.g. `--set corpus=stories.txt` gives the text
experiments a UTF-8 file instead of the built-in pydoc_data.topics corpus (`--corpus PATH`
is short for that, and checks the file exists).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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


def _unwritable(out: str) -> str | None:
    """Why OUT cannot take the outputs (None when it can): checked before any computing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        return "exists and is not a directory"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _verify(out: str) -> int:
    """Exit 0 when every file recorded in OUT/MANIFEST.json is there with its SHA-256, else 1."""
    from experiments._runner import MANIFEST, verify

    try:
        problems = verify(out)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {out}", file=sys.stderr)
        return 1
    print(f"every file in {Path(out) / MANIFEST} is present and matches its SHA-256")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="experiment names, or 'all'")
    parser.add_argument("--quick", action="store_true", help="small variant (CI-sized)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="figures", help="output directory (default: figures)")
    parser.add_argument("--scale", choices=sorted(_scales()), help="a larger config for an accelerator")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (NAME.KEY=VALUE for one experiment); repeatable")
    parser.add_argument("--corpus", help="short for --set corpus=PATH (a UTF-8 text file; the file must exist)")
    args = parser.parse_args(argv)
    if args.quick and args.scale:
        parser.error("--quick and --scale are exclusive")
    if args.corpus is not None:
        if not Path(args.corpus).is_file():
            parser.error(f"--corpus {args.corpus}: no such file")
        args.overrides.append(f"corpus={args.corpus}")
    if not args.names:
        print(_listing())
        return 0
    if args.names == ["verify"]:
        return _verify(args.out)
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in [0, 2**32), got {args.seed}")
    problem = _unwritable(args.out)
    if problem:
        parser.error(f"--out {args.out}: {problem}")
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s): {', '.join(unknown)}\n{_listing()}", file=sys.stderr)
        return 2
    from experiments import _overrides
    from experiments._runner import configure, load, read_manifest, run_experiment

    try:
        read_manifest(Path(args.out))
    except ValueError as error:
        parser.error(str(error))

    # every override is checked against every chosen experiment's Config before anything runs
    try:
        parsed = _overrides.parse(args.overrides)
        plans = {}
        for name in names:
            module = load(name)
            default = module.QUICK if args.quick else module.Config()
            plans[name] = _overrides.for_experiment(parsed, name, default)
            configure(module, quick=args.quick, scale=args.scale, overrides=plans[name], name=name)
        for scope, key, _ in parsed:
            if scope is not None and scope not in names:
                raise ValueError(f"--set {scope}.{key}: {scope} is not among the experiments to run")
            if scope is None and not any(key == k for plan in plans.values() for k, _ in plan):
                raise ValueError(f"--set {key}=...: no chosen experiment has a config field {key!r}")
    except ValueError as error:
        parser.error(str(error))
    for i, name in enumerate(names, 1):
        print(f"== {i}/{len(names)}: {name}", flush=True)
        run_experiment(name, quick=args.quick, seed=args.seed, out_dir=args.out, scale=args.scale,
                       overrides=plans[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
