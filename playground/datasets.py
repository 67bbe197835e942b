"""The playground's data: 2-D points with integer labels, split 80/20 per class.

Toy sets come from `geometry.data.make_dataset` (400 points, the page's noise and seed);
digits and an uploaded CSV of any dimension are drawn on their principal plane
(`geometry.plane.data_plane`: the first two principal components, scaled so the first
has unit standard deviation), so every net the page trains takes 2-D inputs and its maps
cover the whole input space.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from geometry import data, plane

TOY_POINTS = 400
MAX_UPLOAD_BYTES = 5 * 2**20
MAX_UPLOAD_ROWS = 20_000
MAX_CLASSES = 20


@dataclasses.dataclass(frozen=True, eq=False)
class Data:
    name: str
    x_train: np.ndarray  # (N_train, 2) float32
    y_train: np.ndarray  # (N_train,) int32
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    bounds: tuple[float, float, float, float]
    axis_labels: tuple[str, str]


def _on_plane(x: np.ndarray, standardise: bool = False) -> tuple[np.ndarray, tuple[str, str]]:
    """(N, 2) coordinates of x (N, d) on its principal plane, and axis names. 2-D data stay as
    they are, except a user's (`standardise`): centred and divided by one common standard
    deviation (the aspect ratio kept), as d > 2 data are on their plane, so that a file in units
    of 1e20 trains like one in units of 1 instead of diverging without a word."""
    surface = plane.data_plane(x)
    coordinates = surface.coordinates(x)
    if surface.is_input_plane:
        if not standardise:
            return coordinates, surface.axis_labels
        centred = np.asarray(coordinates, np.float64) - np.mean(coordinates, axis=0)
        scale = float(np.sqrt(np.mean(centred**2)))
        labels = tuple(f"{label} (standardised)" for label in surface.axis_labels)
        return (centred / (scale if scale > 0 else 1.0)).astype(np.float32), labels
    return (coordinates / coordinates[:, 0].std()).astype(np.float32), surface.axis_labels


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> Data:
    coordinates, labels = _on_plane(x, standardise=name == "csv")
    x_train, y_train, x_test, y_test = data.stratified_split(coordinates, y, 0.2, seed=seed)
    return Data(name, x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32), int(y.max()) + 1,
                data.bounds_of(coordinates, margin=0.3), labels)


def load(name: str, *, noise: float, seed: int, upload: tuple[np.ndarray, np.ndarray] | None = None) -> Data:
    """The dataset a config names; "csv" needs the arrays of an upload (`parse_csv`)."""
    if name == "digits":
        x, y = data.load_digits()
        return _split("digits", x, y, seed)
    if name == "csv":
        if upload is None:
            raise ValueError("dataset 'csv' needs a file: upload a CSV first (header row, integer label last)")
        return _split("csv", *upload, seed)
    x, y = data.make_dataset(name, TOY_POINTS, noise=noise, seed=seed)
    return _split(name, x, y, seed)


def parse_csv(text: bytes, filename: str = "upload.csv") -> tuple[np.ndarray, np.ndarray]:
    """(x (N, d), y (N,)) of an uploaded CSV, checked by `geometry.data.load_dataset` (its errors
    name the line); also refused: more than MAX_UPLOAD_ROWS rows or MAX_CLASSES classes."""
    if len(text) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{filename}: {len(text)} bytes; the playground takes CSV files up to "
                         f"{MAX_UPLOAD_BYTES // 2**20} MB")
    if not text.strip():
        raise ValueError(f"{filename}: the file is empty; give a header row and one example per row")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{filename}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.csv"
        path.write_bytes(text)
        try:
            x, y = data.load_dataset(path)
        except ValueError as error:
            raise ValueError(str(error).replace(str(path), filename)) from None
    x = x.reshape(len(x), -1)
    if len(x) > MAX_UPLOAD_ROWS:
        raise ValueError(f"{filename}: {len(x)} rows; the playground takes up to {MAX_UPLOAD_ROWS}")
    if int(y.max()) + 1 > MAX_CLASSES:
        raise ValueError(f"{filename}: {int(y.max()) + 1} classes; the playground draws up to {MAX_CLASSES}")
    if len(x) < 10:
        raise ValueError(f"{filename}: {len(x)} rows; give at least 10 examples to split into training and test")
    if x.shape[1] >= 2:
        plane.data_plane(x)  # refuses data that vary along fewer than two directions, now, not at training
    else:
        raise ValueError(f"{filename}: {x.shape[1]} feature column; the playground needs at least two")
    return x, y
