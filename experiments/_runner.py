"""The experiment runner: configs, seeds, progress, metadata and atomic outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import jax

from experiments import EXPERIMENTS, _overrides
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


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows: float32 kernels, and
    so trained networks, differ between CPU instruction sets, so a figure records its CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device() -> str:
    first = jax.devices()[0]
    host = f" on {cpu_model()}, {os.cpu_count()} cores" if first.platform == "cpu" else ""
    return f"{first.platform}: {first.device_kind} x{jax.device_count()}{host}"


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


MANIFEST = "MANIFEST.json"


def git_commit() -> str:
    """HEAD of the repository the code runs from, '+dirty' if its code (anything outside
    figures/) has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        # the committed outputs under figures/ change as experiments run; only code makes a run dirty
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)figures"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def config_hash(config) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def update_manifest(out_dir: Path, record: dict, written: list[Path]) -> Path:
    """Add or replace this experiment's entry in OUT/MANIFEST.json (atomically)."""
    path = out_dir / MANIFEST
    manifest = {}
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it, it is not overwritten") from error
    manifest[record["experiment"]] = {
        "experiment": record["experiment"],
        "quick": record["quick"],
        "config_hash": record["config_hash"],
        "seed": record["seed"],
        "git_commit": record["git_commit"],
        "versions": record["versions"],
        "device": record["device"],
        "wall_time_s": record["wall_time_s"],
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written},
    }
    return write_json(path, dict(sorted(manifest.items())))


def load(name: str):
    return importlib.import_module(EXPERIMENTS[name])


def configure(module, *, quick: bool = False, scale: str | None = None,
              overrides: list[tuple[str, str]] = (), name: str | None = None):
    """The experiment's config: full, QUICK, or a named scale from its SCALES (experiments without
    that scale keep their default), then the (key, raw value) overrides applied and type-checked."""
    if quick and scale:
        raise ValueError("--quick and --scale are exclusive")
    config = module.QUICK if quick else getattr(module, "SCALES", {}).get(scale, module.Config())
    return _overrides.apply(config, list(overrides), name or module.__name__.rpartition(".")[2])


def run_experiment(name: str, *, quick: bool = False, seed: int = 0, out_dir: str | Path = "figures",
                   scale: str | None = None, overrides: list[tuple[str, str]] = ()) -> dict:
    """Run one experiment; writes NAME.png/.pdf/.json (and any extras) under out_dir."""
    module = load(name)
    config = configure(module, quick=quick, scale=scale, overrides=overrides, name=name)
    context = Context(name=name, out_dir=Path(out_dir), seed=seed, quick=quick)
    plotting.use_style()
    print(f"[{name}] {'quick' if quick else scale or 'full'} run, seed {seed}", flush=True)
    commit = git_commit()  # the code as it was when the run started, not after edits made during it
    start = time.perf_counter()
    numbers = module.run(config, context)
    wall_time = time.perf_counter() - start
    record = {
        "experiment": name,
        "config": dataclasses.asdict(config),
        "config_hash": config_hash(config),
        "git_commit": commit,
        "quick": quick,
        "seed": seed,
        "versions": versions(),
        "device": device(),
        "wall_time_s": round(wall_time, 2),
        "numbers": numbers,
    }
    context.written.append(write_json(context.out_dir / f"{name}.json", record))
    manifest = update_manifest(context.out_dir, record, context.written)
    for path in [*context.written, manifest]:
        print(f"[{name}] wrote {path}", flush=True)
    print(f"[{name}] done in {wall_time:.1f} s", flush=True)
    return record
