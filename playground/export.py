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
import zipfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from geometry.training import CheckpointError
from playground import network
from playground.config import ConfigError, as_json, parse

FORMAT = "layer-geometry playground model, version 1"
CHECK_RTOL, CHECK_ATOL = 1e-5, 1e-6  # float32 logits recomputed on the same CPU/accelerator kind


def _logits(model, points: np.ndarray) -> np.ndarray:
    return np.asarray(jax.vmap(model)(np.asarray(points, np.float32)))


def to_zip(config, classes: int, state: tuple, points: np.ndarray) -> bytes:
    """The zip's bytes for a model of `config` with `state` ((params, rest) as `nnx.split` gives them),
    checked later against its logits at `points`."""
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
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            config = parse(meta["config"])
            archive.extractall(folder)
        except (KeyError, ValueError, ConfigError, zipfile.BadZipFile) as error:
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
