"""A trained playground model as one zip: an Orbax checkpoint of its state plus config.json.

    from playground import export
    model, config, meta = export.load("playground-model.zip")   # an nnx.Module, ready to call

config.json holds the page's `Config` (so the same net is rebuilt), the input size and
class count, and the logits of a few training points: `load` recomputes them and raises
`CheckpointError` when they differ, so a corrupt or mismatched checkpoint never loads
silently.
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
import zipfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from geometry.training import CheckpointError
from playground import datasets, network
from playground.config import ConfigError, as_json, parse

FORMAT = "layer-geometry playground model, version 1"
_EXPORTING = threading.Lock()
# an export of the largest net the page builds (width 256, depth 8) is about 2 MiB in ~20 files
MAX_MEMBERS, MAX_MEMBER_BYTES, MAX_TOTAL_BYTES = 256, 32 * 2**20, 64 * 2**20
CHECK_RTOL, CHECK_ATOL = 1e-5, 1e-6  # float32 logits recomputed on the same CPU/accelerator kind


def _logits(model, points: np.ndarray) -> np.ndarray:
    return np.asarray(jax.vmap(model)(np.asarray(points, np.float32)))


def to_zip(config, classes: int, state: tuple, points: np.ndarray) -> bytes:
    """The zip's bytes for a model of `config` with `state` ((params, rest) as `nnx.split` gives them),
    checked later against its logits at `points`. One export at a time: Orbax's checkpointer runs
    background threads of its own, and concurrent saves left half-written folders behind."""
    with _EXPORTING:
        return _to_zip(config, classes, state, points)


def _to_zip(config, classes: int, state: tuple, points: np.ndarray) -> bytes:
    model = network.build(config, 2, classes)
    nnx.update(model, *state)
    meta = {"format": FORMAT, "config": as_json(config), "in_features": 2, "classes": classes,
            "check_points": np.asarray(points).tolist(), "check_logits": _logits(model, points).tolist()}
    with tempfile.TemporaryDirectory() as folder:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(Path(folder).resolve() / "checkpoint", nnx.state(model))
        checkpointer.wait_until_finished()
        (Path(folder) / "config.json").write_text(json.dumps(meta, indent=1))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _check_meta(meta: dict, problem: str = "classification") -> None:
    """The numbers config.json must hold, with their types and shapes (a tampered file otherwise
    fails deep inside with an AttributeError, KeyError or ZeroDivisionError)."""
    if meta.get("in_features") != 2:
        raise ValueError(f"in_features is {meta.get('in_features')!r}; the playground's nets take 2")
    classes = meta.get("classes")
    if problem == "regression":
        if classes != 1 or isinstance(classes, bool):
            raise ValueError(f"classes is {classes!r}; a regression net has 1 output")
    elif not isinstance(classes, int) or isinstance(classes, bool) or not 2 <= classes <= datasets.MAX_CLASSES:
        raise ValueError(f"classes is {classes!r}; expected a whole number in [2, {datasets.MAX_CLASSES}]")
    try:
        points = np.asarray(meta.get("check_points"), dtype=np.float64)
        logits = np.asarray(meta.get("check_logits"), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("check_points / check_logits are not arrays of numbers") from None
    if points.ndim != 2 or points.shape[1] != 2 or not 1 <= len(points) <= 1024 or \
            logits.shape != (len(points), classes) or not (np.isfinite(points).all() and np.isfinite(logits).all()):
        raise ValueError(f"check_points {points.shape} / check_logits {logits.shape} are not (N, 2) / (N, {classes}) "
                         "finite arrays")


def _extract(archive: zipfile.ZipFile, folder: Path) -> None:
    """Extract the export's members with limits on their count and sizes, counted as the bytes
    are written (a member's declared size can lie), and only plain relative paths inside `folder`:
    a zip bomb or a hostile member name is a ValueError, never a full disk or a file outside."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"{len(members)} members; an export has at most {MAX_MEMBERS}")
    total = 0
    for member in members:
        parts = Path(member.filename).parts
        is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
        if member.filename.startswith(("/", "\\")) or ".." in parts or ":" in member.filename or is_link:
            raise ValueError(f"member {member.filename!r} is not a plain relative path")
        if member.is_dir():
            continue
        target = folder / member.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with archive.open(member) as source, open(target, "wb") as sink:
            while chunk := source.read(2**20):
                written, total = written + len(chunk), total + len(chunk)
                if written > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                    raise ValueError(f"member {member.filename!r} unpacks past the limits ({MAX_MEMBER_BYTES // 2**20} "
                                     f"MiB a member, {MAX_TOTAL_BYTES // 2**20} MiB in all): not a playground export")
                sink.write(chunk)


def load(path):
    """(model, config, meta) from an exported zip; CheckpointError if it is not one or does not
    reproduce its recorded logits."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a playground export ({error}); export the model again") from None
    with archive, tempfile.TemporaryDirectory() as folder:
        try:
            meta = json.loads(archive.read("config.json"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
                raise ValueError(f"format {found!r}, expected {FORMAT!r}")
            if not isinstance(meta.get("config"), dict):
                raise ValueError("'config' is not an object")
            config = parse(meta["config"])
            _check_meta(meta, config.problem)
            _extract(archive, Path(folder))
        except (KeyError, ValueError, ConfigError, zipfile.BadZipFile, RecursionError) as error:
            raise CheckpointError(f"{path}: unreadable config.json ({error}); export the model again") from None
        # built for real, not under nnx.eval_shape: the library's initialisers draw on the host
        graphdef, fresh_state = nnx.split(network.build(config, meta["in_features"], meta["classes"]))
        abstract_state = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, fresh_state)
        try:
            state = ocp.StandardCheckpointer().restore(Path(folder).resolve() / "checkpoint", abstract_state)
        except Exception as error:  # noqa: BLE001 - any failure to read means the same thing to the user
            raise CheckpointError(f"{path}: the checkpoint is corrupt or unreadable ({type(error).__name__}: "
                                  f"{error}); export the model again") from None
    model = nnx.merge(graphdef, state)
    recomputed = _logits(model, np.asarray(meta["check_points"]))
    if not np.allclose(recomputed, meta["check_logits"], rtol=CHECK_RTOL, atol=CHECK_ATOL):
        raise CheckpointError(f"{path}: the restored model does not reproduce its recorded logits "
                              f"(max difference {np.max(np.abs(recomputed - meta['check_logits'])):.3g})")
    return model, config, meta
