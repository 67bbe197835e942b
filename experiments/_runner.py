"""The experiment runner: configs, seeds, progress, metadata and atomic outputs."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import platform
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import jax

from experiments import EXPERIMENTS
from geometry import plotting
from geometry.io import atomic_write, write_json

T = TypeVar("T")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def device() -> str:
    first = jax.devices()[0]
    return f"{first.platform}: {first.device_kind} x{jax.device_count()}"


@dataclasses.dataclass
class Context:
    """What an experiment gets from the runner: where to write, the seed, progress."""

    name: str
    out_dir: Path
    seed: int
    quick: bool
    written: list[Path] = dataclasses.field(default_factory=list)

    def save_figure(self, fig, suffix: str = "") -> None:
        self.written += plotting.save_figure(fig, self.out_dir / f"{self.name}{suffix}")

    def write_file(self, filename: str, data: bytes | str) -> None:
        self.written.append(atomic_write(self.out_dir / filename, data))

    def progress(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Yield items, printing `name: description i/N` (in place on a terminal)."""
        items = list(items) if total is None else items
        total = len(items) if total is None else total
        interactive = sys.stderr.isatty()
        step = max(1, total // 10)
        for i, item in enumerate(items, 1):
            yield item
            if interactive or i % step == 0 or i == total:
                end = "\r" if interactive and i < total else "\n"
                print(f"  {self.name}: {description} {i}/{total}", end=end, file=sys.stderr, flush=True)

    def log(self, message: str) -> None:
        print(f"  {self.name}: {message}", file=sys.stderr, flush=True)


def load(name: str):
    return importlib.import_module(EXPERIMENTS[name])


def run_experiment(name: str, *, quick: bool = False, seed: int = 0, out_dir: str | Path = "figures") -> dict:
    """Run one experiment; writes NAME.png/.pdf/.json (and any extras) under out_dir."""
    module = load(name)
    config = module.QUICK if quick else module.Config()
    context = Context(name=name, out_dir=Path(out_dir), seed=seed, quick=quick)
    plotting.use_style()
    print(f"[{name}] {'quick' if quick else 'full'} run, seed {seed}", flush=True)
    start = time.perf_counter()
    numbers = module.run(config, context)
    wall_time = time.perf_counter() - start
    record = {
        "experiment": name,
        "config": dataclasses.asdict(config),
        "quick": quick,
        "seed": seed,
        "versions": versions(),
        "device": device(),
        "wall_time_s": round(wall_time, 2),
        "numbers": numbers,
    }
    context.written.append(write_json(context.out_dir / f"{name}.json", record))
    for path in context.written:
        print(f"[{name}] wrote {path}", flush=True)
    print(f"[{name}] done in {wall_time:.1f} s", flush=True)
    return record
