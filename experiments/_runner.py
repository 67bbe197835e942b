"""The experiment runner: configs, seeds, progress, metadata and atomic outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import jax
import numpy as np

from experiments import EXPERIMENTS, _overrides
from geometry import distributed, plotting
from geometry.io import atomic_write, from_jsonable, to_jsonable, write_json

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
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"{first.platform}: {first.device_kind} x{jax.device_count()}{processes}{host}"


@dataclasses.dataclass
class Context:
    """What an experiment gets from the runner: where to write, the seed, progress.

    Outputs are staged in OUT/.staging-NAME/ and moved into OUT together when the run has
    finished (`publish`), so a run that fails or is killed leaves the previous set intact.
    Under several processes only process 0 draws and publishes.
    """

    name: str
    out_dir: Path
    seed: int
    quick: bool
    written: list[Path] = dataclasses.field(default_factory=list)  # staged files
    arrays: dict = dataclasses.field(default_factory=dict)  # for the plot, and NAME.npz

    @property
    def staging(self) -> Path:
        return self.out_dir / f".staging-{self.name}"

    def save_arrays(self, **arrays) -> None:
        """Arrays the plot needs beside the JSON: handed to the experiment's `plot` with the numbers,
        and written once, compressed, as NAME.npz when the run has finished."""
        self.arrays.update({key: np.asarray(value) for key, value in arrays.items()})

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


def read_manifest(out_dir: Path) -> dict:
    """OUT/MANIFEST.json ({} when absent); ValueError when it is not a JSON object."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {}
    if not path.is_file():
        raise ValueError(f"{path} is not a file (a folder?); remove it, the run writes the manifest there")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it, it is not overwritten") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a JSON object; fix or remove it, it is not overwritten")
    return manifest


@contextlib.contextmanager
def manifest_lock(out_dir: Path):
    """Hold an advisory lock on the folder OUT itself (no lock file is left behind): runs sharing
    one OUT each read, change and write the manifest in turn, so no run's entry is lost."""
    descriptor = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def update_manifest(out_dir: Path, record: dict, written: list[Path], manifest: dict | None = None) -> Path:
    """Add or replace this experiment's entry in OUT/MANIFEST.json (atomically, under
    `manifest_lock`: the manifest is re-read there, `manifest` only says it was readable)."""
    with manifest_lock(out_dir):
        return _update_manifest(out_dir, record, written)


def _update_manifest(out_dir: Path, record: dict, written: list[Path]) -> Path:
    manifest = read_manifest(out_dir)
    path = out_dir / MANIFEST
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


def clean_leftovers(out_dir: Path, name: str) -> list[Path]:
    """Remove what a killed run can leave: this experiment's staging folder and atomic_write's
    hidden temporary files (.FILE.XXXX.tmp) in OUT. Returns what was removed."""
    removed = []
    staging = Path(out_dir) / f".staging-{name}"
    if staging.exists():
        shutil.rmtree(staging)
        removed.append(staging)
    for leftover in Path(out_dir).glob(".*.tmp"):
        if leftover.is_file():
            leftover.unlink()
            removed.append(leftover)
    return removed


def publish(context: Context, record: dict) -> list[Path]:
    """Move the staged outputs and the JSON into OUT as a set, then record them in the manifest."""
    staged = [*context.written, write_json(context.staging / f"{context.name}.json", record)]
    manifest = read_manifest(context.out_dir)  # refuse a corrupt manifest before replacing anything
    final = []
    for path in staged:
        target = context.out_dir / path.name
        os.replace(path, target)
        final.append(target)
    shutil.rmtree(context.staging, ignore_errors=True)
    return [*final, update_manifest(context.out_dir, record, final, manifest)]


def _plain_name(filename) -> bool:
    return isinstance(filename, str) and filename not in ("", ".", "..") and Path(filename).name == filename \
        and "\\" not in filename


def verify(out_dir: str | Path = "figures") -> list[str]:
    """Problems with OUT against its MANIFEST.json ([] if none): an empty or malformed manifest,
    files missing or whose SHA-256 differs, an experiment without its own NAME.json, and files
    in OUT that no entry accounts for (an entry deleted over a tampered file). Only regular
    files directly inside OUT are read: a manifest naming ../../etc/passwd, a link or a FIFO
    gets a problem, never a read."""
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).is_file():
        return [f"{out_dir / MANIFEST}: missing"]
    manifest = read_manifest(out_dir)
    problems, accounted = [] if manifest else [f"{out_dir / MANIFEST}: records no experiment"], {MANIFEST}
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), dict):
            problems.append(f"{out_dir / MANIFEST}: the entry {name!r} is not an object with a 'sha256' table")
            continue
        if f"{name}.json" not in entry["sha256"]:
            problems.append(f"{out_dir / MANIFEST}: the entry {name!r} does not list its own {name}.json")
        for filename, digest in entry["sha256"].items():
            if not _plain_name(filename):
                problems.append(f"{out_dir / MANIFEST}: {name} lists {filename!r}, not a file name inside {out_dir}")
                continue
            accounted.add(filename)
            path = out_dir / filename
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                problems.append(f"{path}: missing (written by {name})")
                continue
            if not stat.S_ISREG(mode):
                problems.append(f"{path}: not a regular file (a link, folder or FIFO; written by {name})")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                problems.append(f"{path}: SHA-256 differs from the manifest (written by {name} at "
                                f"{entry.get('git_commit', '?')})")
    for path in sorted(out_dir.iterdir()):
        if path.name not in accounted and not path.name.startswith("."):
            problems.append(f"{path}: in {out_dir} but in no manifest entry (written by what?)")
    return problems


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
                   scale: str | None = None, overrides: list[tuple[str, str]] = (), watchdog=None) -> dict:
    """Run one experiment; writes NAME.png/.pdf/.json (and any extras) under out_dir (process 0 only,
    under several processes; `watchdog` is then told what to remove if a peer is lost)."""
    module = load(name)
    config = configure(module, quick=quick, scale=scale, overrides=overrides, name=name)
    context = Context(name=name, out_dir=Path(out_dir), seed=seed, quick=quick)
    writer = distributed.is_writer()
    read_manifest(context.out_dir)  # a corrupt manifest is reported before any work
    if watchdog is not None and writer:
        watchdog.cleanup = lambda: shutil.rmtree(context.staging, ignore_errors=True)
    for leftover in clean_leftovers(context.out_dir, name) if writer else ():
        print(f"[{name}] removed {leftover}, left by an interrupted run", flush=True)
    plotting.use_style()
    print(f"[{name}] {'quick' if quick else scale or 'full'} run, seed {seed}", flush=True)
    commit = git_commit()  # the code as it was when the run started, not after edits made during it
    start = time.perf_counter()
    numbers = module.run(config, context)
    if writer:  # drawn from what the JSON holds (keys sorted), so `replot` draws the same
        context.written += draw(module, from_jsonable(json.loads(json.dumps(to_jsonable(numbers), sort_keys=True))),
                                context.arrays, config, context.staging, name)
        if context.arrays:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **context.arrays)
            context.written.append(atomic_write(context.staging / f"{name}.npz", buffer.getvalue()))
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
    if not writer:
        print(f"[{name}] process {jax.process_index()} of {jax.process_count()}: computed its share in "
              f"{wall_time:.1f} s; process 0 writes the outputs", flush=True)
        return record
    for path in publish(context, record):
        print(f"[{name}] wrote {path}", flush=True)
    print(f"[{name}] done in {wall_time:.1f} s", flush=True)
    return record


def draw(module, numbers: dict, arrays: dict, config, directory: Path, name: str) -> list[Path]:
    """What module.plot(numbers, arrays, config) returns, written into `directory`: a figure as
    NAME+suffix.{png,pdf}, a page or an animation (text or bytes) as the file NAME+suffix."""
    written = []
    for suffix, drawn in module.plot(numbers, dict(arrays), config).items():
        if isinstance(drawn, (str, bytes)):
            written.append(atomic_write(directory / f"{name}{suffix}", drawn))
        else:
            written += plotting.save_figure(drawn, directory / f"{name}{suffix}")
    return written


def replot(name: str, out_dir: str | Path = "figures") -> list[Path]:
    """Redraw NAME's figures from OUT/NAME.json (and NAME.npz) alone, with the committed plotting
    code, and record their new SHA-256 in the manifest: restyling without recomputing."""
    module = load(name)
    out_dir = Path(out_dir)
    path = out_dir / f"{name}.json"
    if not path.exists():
        raise ValueError(f"{path}: missing; run `python -m experiments {name}` first")
    try:
        record = json.loads(path.read_text())
        arrays_path = out_dir / f"{name}.npz"
        arrays = dict(np.load(arrays_path, allow_pickle=False)) if arrays_path.exists() else {}
        config = _overrides.from_record(module.Config, record["config"])
        read_manifest(out_dir)  # refuse a corrupt manifest before drawing over the figures
        plotting.use_style()
        written = draw(module, from_jsonable(record["numbers"]), arrays, config, out_dir, name)
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} (or {name}.npz) lacks what the plot needs ({type(error).__name__}: {error}): it was "
                         f"written by other code or edited; rerun `python -m experiments {name}`") from None
    with manifest_lock(out_dir):
        manifest = read_manifest(out_dir)
        entry = manifest.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), dict):  # a malformed entry is replaced
            entry = manifest[name] = {"experiment": name, "sha256": {}}
        entry["sha256"].update({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written})
        write_json(out_dir / MANIFEST, dict(sorted(manifest.items())))
    return written
