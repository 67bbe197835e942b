"""The playground's data: 2-D points with integer labels (classification) or real targets
(regression), split train_percent / rest (per class for classification).

Toy sets come from `geometry.data.make_dataset` (400 points, the page's noise and seed),
regression sets from `geometry.data.make_regression` (400 points on [−3, 3]²);
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
    classes: int  # the net's outputs: classes, or 1 for regression
    bounds: tuple[float, float, float, float]
    axis_labels: tuple[str, str]
    problem: str = "classification"
    target_range: tuple[float, float] | None = None  # regression: the training targets' (min, max)


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


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int, train_percent: int = 80,
           problem: str = "classification") -> Data:
    coordinates, labels = _on_plane(x, standardise=name == "csv")
    test_fraction = 1 - train_percent / 100
    bounds = data.bounds_of(coordinates, margin=0.3)
    if problem == "regression":
        order = np.random.default_rng(seed).permutation(len(y))
        cut = min(max(1, int(round(train_percent / 100 * len(y)))), len(y) - 1)
        train, test = np.sort(order[:cut]), np.sort(order[cut:])
        y = y.astype(np.float32)
        return Data(name, coordinates[train], y[train], coordinates[test], y[test], 1, bounds, labels, problem,
                    (float(y[train].min()), float(y[train].max())))
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError("the uploaded file's targets are real numbers: for classification upload a file with integer "
                         "labels, or set the problem to regression")
    x_train, y_train, x_test, y_test = data.stratified_split(coordinates, y, test_fraction, seed=seed)
    if len(x_test) == 0 or len(x_train) == 0:
        raise ValueError(f"a {train_percent}% split leaves no {'test' if len(x_test) == 0 else 'training'} points: "
                         "choose another train percentage")
    return Data(name, x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32), int(y.max()) + 1,
                bounds, labels)


def load(name: str, *, noise: float, seed: int, upload: tuple[np.ndarray, np.ndarray] | None = None,
         train_percent: int = 80, problem: str = "classification") -> Data:
    """The dataset a config names; "csv" needs the arrays of an upload (`parse_csv`)."""
    if name == "digits":
        x, y = data.load_digits()
        return _split("digits", x, y, seed, train_percent)
    if name == "csv":
        if upload is None:
            raise ValueError("dataset 'csv' needs a file: upload a CSV first (header row, label or target last)")
        return _split("csv", *upload, seed, train_percent, problem)
    if name in data.REGRESSION_DATASETS:
        x, y = data.make_regression(name, TOY_POINTS, noise=noise, seed=seed)
        return _split(name, x, y, seed, train_percent, "regression")
    x, y = data.make_dataset(name, TOY_POINTS, noise=noise, seed=seed)
    return _split(name, x, y, seed, train_percent)


def parse_csv(text: bytes, filename: str = "upload.csv", problem: str = "classification") -> tuple[np.ndarray, np.ndarray]:
    """(x (N, d), y (N,)) of an uploaded CSV, checked by `geometry.data.load_dataset` (its errors
    name the line; regression: a real-valued last column); also refused: more than
    MAX_UPLOAD_ROWS rows or MAX_CLASSES classes."""
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
            x, y = data.load_dataset(path, targets="real" if problem == "regression" else "classes")
        except ValueError as error:
            raise ValueError(str(error).replace(str(path), filename)) from None
    x = x.reshape(len(x), -1)
    if len(x) > MAX_UPLOAD_ROWS:
        raise ValueError(f"{filename}: {len(x)} rows; the playground takes up to {MAX_UPLOAD_ROWS}")
    if problem == "classification" and int(y.max()) + 1 > MAX_CLASSES:
        raise ValueError(f"{filename}: {int(y.max()) + 1} classes; the playground draws up to {MAX_CLASSES}")
    if len(x) < 10:
        raise ValueError(f"{filename}: {len(x)} rows; give at least 10 examples to split into training and test")
    if x.shape[1] >= 2:
        plane.data_plane(x)  # refuses data that vary along fewer than two directions, now, not at training
    else:
        raise ValueError(f"{filename}: {x.shape[1]} feature column; the playground needs at least two")
    return x, y
