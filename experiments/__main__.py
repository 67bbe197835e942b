"""python -m experiments [NAME ... | all] [--quick | --scale gpu] [--seed S] [--out DIR] [--set KEY=VALUE ...]

`python -m experiments verify [--out DIR]` checks every output against DIR/MANIFEST.json.
`python -m experiments plot NAME ... [--out DIR]` redraws figures from DIR/NAME.json (and
NAME.npz) without computing anything: restyle a figure by editing its experiment's `plot`.

With no name, lists the experiments. Unknown names exit with code 2 and the list.
`--scale gpu` picks the larger configs of experiments that define one (the others run
their full config). `--set KEY=VALUE` overrides a field of the config of every chosen
experiment that has it (`--set NAME.KEY=VALUE`: of one experiment), checked against the
frozen Config before anything runs: e.g. `--set corpus=stories.txt` gives the text
experiments a UTF-8 file instead of the built-in pydoc_data.topics corpus (`--corpus PATH`
is short for that, and checks the file exists).

`--dataset digits` or `--dataset PATH` (a CSV with a header row and an integer label in the
last column, or an NPZ with arrays x and y) runs the classifier experiments — those whose
Config has a `datasets` or `dataset` field: linear_collapse, failure_table, tradeoff,
pullback, fidelity, kernel_layers — on that data instead of the 2-D toy sets (`all` then
means all of those). The file is read and checked before anything runs, and unless `--out`
is given the outputs go to figures/dataset-NAME/, so the committed figures are not replaced.

Several processes (`geometry.distributed`): `--coordinator HOST:PORT --num-processes N
--process-id I` on each, or nothing under SLURM, Open MPI or a TPU pod (detected). Every
process computes its share of every field; process 0 writes the outputs, the others exit 0.
A lost process makes the others exit 1 within the heartbeat timeout, naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path

import jax

from experiments import EXPERIMENTS
from geometry import distributed

SUBCOMMANDS = {
    "all": "run every experiment below, in this order",
    "verify": "check every file DIR/MANIFEST.json lists against its recorded SHA-256 (exit 1 naming each "
              "missing or changed file)",
    "plot NAME ...": "redraw figures from DIR/NAME.json (and .npz) without computing anything",
}


def summary(docstring: str | None) -> str:
    """The first sentence of a docstring's first paragraph, joined onto one line (never cut mid-sentence)."""
    paragraph = " ".join((docstring or "").strip().split("\n\n")[0].split())
    end = re.search(r"[.?!](\s|$)", paragraph)
    return paragraph[: end.end()].strip() if end else paragraph


def _listing() -> str:
    from experiments._runner import load

    width = max(map(len, [*EXPERIMENTS, *SUBCOMMANDS])) + 2
    lines = ["usage: python -m experiments [NAME ... | all] [--quick | --scale gpu] [--seed S] [--out DIR] "
             "[--set KEY=VALUE ...]   (--help: every option)", "", "subcommands:"]
    for heading, entries in (("subcommands", SUBCOMMANDS),
                             ("experiments", {name: summary(load(name).__doc__) for name in EXPERIMENTS})):
        lines += ["", f"{heading}:"] if heading == "experiments" else []
        lines += [textwrap.fill(text, 110, break_on_hyphens=False, initial_indent=f"  {name:{width}s}", subsequent_indent=" " * (width + 2))
                  for name, text in entries.items()]
    return "\n".join(lines)


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
    try:  # root passes os.access everywhere, and /proc or a read-only mount refuse only the real write
        with tempfile.TemporaryDirectory(dir=existing, prefix=".layer-geometry-check-"):
            pass
    except OSError as error:
        return f"{existing} does not take new files ({error.strerror or error})"
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


def _replot(names: list[str], out: str) -> int:
    """Redraw the named experiments' figures from their JSON (and .npz) in OUT, computing nothing."""
    from experiments._runner import replot

    if not names:
        print("python -m experiments plot NAME ... [--out DIR]: name the experiments to redraw", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s): {', '.join(unknown)}\n{_listing()}", file=sys.stderr)
        return 2
    for name in names:
        try:
            for path in replot(name, out):
                print(f"[{name}] redrew {path}", flush=True)
        except ValueError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 1
    return 0


def _dataset_field(name: str) -> str | None:
    """"datasets" or "dataset", whichever field the experiment's Config has (None: neither)."""
    from experiments._runner import load

    fields = {f.name for f in dataclasses.fields(load(name).Config)}
    return next((f for f in ("datasets", "dataset") if f in fields), None)


def _with_dataset(args, names: list[str]) -> list[str]:
    """The experiments to run on --dataset (all that take one when the names were `all`), with the
    overrides that set it added to args; the data are loaded once here so a broken file stops
    the run before any work. Default --out: figures/dataset-NAME."""
    from experiments import _classifiers

    taking = [n for n in names if _dataset_field(n)]
    if args.names != ["all"] and len(taking) < len(names):
        valid = ", ".join(n for n in EXPERIMENTS if _dataset_field(n))
        raise ValueError(f"--dataset: {', '.join(n for n in names if n not in taking)} take(s) no dataset; "
                         f"the experiments that do: {valid}")
    _classifiers.load_split(_classifiers.ClassifierSpec(dataset=args.dataset, activation="relu"))
    for name in taking:
        field = _dataset_field(name)
        value = (args.dataset,) if field == "datasets" else args.dataset
        args.overrides.append(f"{name}.{field}={value!r}")
    if args.out is None:
        args.out = str(Path("figures") / f"dataset-{_classifiers.display_name(args.dataset)}")
    return taking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments", description=__doc__.split("\n\n", 1)[1].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_listing().split("\n", 2)[2])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="experiment names, 'all', 'verify' or 'plot NAME ...' (below); none: list them")
    parser.add_argument("--quick", action="store_true", help="small variant (CI-sized)")
    parser.add_argument("--seed", type=int, default=0, help="random seed in [0, 2**32) (default 0)")
    parser.add_argument("--out", help="output directory (default: figures, or figures/dataset-NAME with --dataset)")
    parser.add_argument("--scale", choices=sorted(_scales()), help="a larger config for an accelerator")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (NAME.KEY=VALUE for one experiment); repeatable")
    parser.add_argument("--corpus", help="short for --set corpus=PATH (a UTF-8 text file; the file must exist)")
    parser.add_argument("--dataset", help="digits or a CSV/NPZ path: the classifier experiments on that data")
    args = distributed.parse_args(parser, argv)
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
        return _verify(args.out or "figures")
    if args.names[0] == "plot":
        return _replot(args.names[1:], args.out or "figures")
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s): {', '.join(unknown)}\n{_listing()}", file=sys.stderr)
        return 2
    if args.dataset is not None:
        try:
            names = _with_dataset(args, names)
        except ValueError as error:
            parser.error(str(error))
    args.out = args.out or "figures"
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in [0, 2**32), got {args.seed}")
    problem = _unwritable(args.out)
    if problem:
        parser.error(f"--out {args.out}: {problem}")
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
                valid = sorted({f.name for name in names for f in dataclasses.fields(load(name).Config)})
                raise ValueError(f"--set {key}=...: no chosen experiment has a config field {key!r}; valid keys: "
                                 f"{', '.join(valid)} (or NAME.KEY=VALUE for one experiment)")
    except ValueError as error:
        parser.error(str(error))
    # joined only now, when everything is checked: a bad option must not leave the peers waiting
    several = (args.num_processes or 1) > 1 or (args.coordinator is None and distributed.detected_cluster())
    if several and os.environ.get(distributed.CHILD) != "1":
        command = [sys.executable, "-m", "experiments", *(sys.argv[1:] if argv is None else argv)]
        return distributed.supervise(command, args.coordinator, args.process_id, args.num_processes)
    distributed.join(args)
    watchdog = distributed.Watchdog(args.heartbeat_timeout).start()
    try:
        for i, name in enumerate(names, 1):
            print(f"== {i}/{len(names)}: {name}", flush=True)
            run_experiment(name, quick=args.quick, seed=args.seed, out_dir=args.out, scale=args.scale,
                           overrides=plans[name], watchdog=watchdog)
    except Exception as error:
        if jax.process_count() > 1:
            watchdog.fail(error)  # names a lost peer, or reports the error; exits 1
        raise
    watchdog.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
