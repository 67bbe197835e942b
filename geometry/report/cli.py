"""The command line of `geometry.report`: a per-layer report of a model a factory builds.

    python -m geometry.report MODULE:FACTORY --data digits|PATH.csv|PATH.npz [--points N] [--labels]
                              [--shape 8,8,1] [--budget quick] [--out DIR]

FACTORY is a function of no arguments in MODULE returning the model (an NNX module), or the
model and the keyword arguments of its call, e.g. `examples.published_model:vit`. The data: scikit-learn's bundled digits, or a CSV / NPZ file
(`geometry.data.load_dataset`); `--shape` reshapes each point (digits as 8×8×1 images).
Writes report.csv, report.md, report.html and report.png to --out (default: the current
directory) and prints the table. A bad factory, data file or option exits 2 with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _fail(message: str) -> int:
    print(f"geometry.report: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geometry.report", description=__doc__.splitlines()[0])
    parser.add_argument("factory", help="MODULE:FACTORY, a function returning the model")
    parser.add_argument("--data", required=True, help="digits, or a .csv / .npz file")
    parser.add_argument("--points", type=int, default=256, help="how many points (default 256)")
    parser.add_argument("--labels", action="store_true", help="add the neural-collapse columns from the labels")
    parser.add_argument("--shape", default=None, help="one point's shape, comma-separated (e.g. 8,8,1)")
    parser.add_argument("--budget", choices=["quick"], default=None, help="cap points, matrix-free wide rows")
    parser.add_argument("--out", default=".", help="directory for report.csv/.md/.html/.png")
    args = parser.parse_args(argv)
    if args.points < 2:
        return _fail(f"--points must be at least 2, got {args.points}")
    module_name, _, factory_name = args.factory.partition(":")
    if not module_name or not factory_name:
        return _fail(f"the factory must be MODULE:FACTORY (e.g. examples.published_model:vit), got {args.factory!r}")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        return _fail(f"cannot load {args.factory!r}: {error}")
    if not callable(factory):
        return _fail(f"{args.factory!r} is not a function")
    import numpy as np

    from geometry import data, report

    try:
        x, y = data.load_digits() if args.data == "digits" else data.load_dataset(args.data)
    except ValueError as error:
        return _fail(str(error))
    x, y = x[: args.points], y[: args.points]
    if args.shape:
        try:
            shape = tuple(int(part) for part in args.shape.split(","))
            x = np.asarray(x).reshape(len(x), *shape)
        except ValueError as error:
            return _fail(f"--shape {args.shape!r} does not fit points of shape {np.asarray(x).shape[1:]}: {error}")
    try:
        made = factory()
    except Exception as error:  # noqa: BLE001 - whatever the user's factory raises, said plainly
        return _fail(f"{args.factory} raised {type(error).__name__}: {error}")
    model, model_kwargs = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    try:
        result = report.report(model, x, labels=np.asarray(y, np.int32) if args.labels else None, budget=args.budget,
                               model_kwargs=model_kwargs)
    except ValueError as error:
        return _fail(str(error))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.to_csv(out / "report.csv")
    (out / "report.md").write_text(result.to_markdown())
    result.to_html(out / "report.html")
    result.plot(out / "report.png")
    print(result.to_markdown())
    print(f"wrote {out / 'report.csv'}, report.md, report.html, report.png")
    return 0
