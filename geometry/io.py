"""Atomic file output and JSON encoding of measurement records.

Every file the project writes goes through `atomic_write`: the bytes land in a temporary
file in the same directory, which is then renamed over the target, so an interrupted
run leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_jsonable(value):
    """Plain JSON types; arrays become (nested) lists. Non-finite floats become the
    strings "inf", "-inf" and "nan" (standard JSON has no such numbers, and a condition
    number of inf is a measurement, not a missing value)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        array = np.asarray(value)
        return to_jsonable(array.tolist()) if array.ndim else to_jsonable(array.item())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return value


def from_jsonable(value):
    """Inverse of `to_jsonable` for what a plot reads back: the strings "inf", "-inf" and "nan"
    become floats again (lists stay lists)."""
    if isinstance(value, dict):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def write_json(path: str | os.PathLike, record) -> Path:
    text = json.dumps(to_jsonable(record), indent=1, sort_keys=True, allow_nan=False)
    return atomic_write(path, text + "\n")
