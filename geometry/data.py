"""Small 2-D datasets and input grids, deterministic given a seed; the text corpus
(`text_dataset`, `load_corpus`, `Vocabulary`) lives in `geometry.text` and is re-exported here.

Every dataset returns (X, y): X float32 of shape (n, 2), y int32 labels in {0, 1}.
`noise` is the standard deviation of Gaussian jitter added to the points *after*
labelling (so labels near a boundary can end up on the wrong side, as in real data).

* linear:  uniform on [−2, 2]²; class 1 above the line x₂ = 0.5 x₁ + 0.2.
* circles: x ~ N(0, s² I) with s² = 1.5² / (2 ln 2), so the classes balance: class 1 is
           ‖x‖ < 1.5 (one class inside radius 1.5 of the origin, the rest the other).
* xor:     uniform on [−1, 1]²; class 1 when x₁ x₂ > 0.
* spiral:  two interleaved arms r = t, θ = 3π t + kπ (k = class), t ~ U(0.1, 1), scaled by 2.
* moons:   the two interleaved half circles (cos θ, sin θ) and (1 − cos θ, ½ − sin θ).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from geometry.text import (  # noqa: F401
    TextData,
    Vocabulary,
    load_corpus,
    split_documents,
    text_dataset,
    tokenize,
    windows,
)

DATASETS = ("linear", "circles", "xor", "spiral", "moons")


def _linear(rng, n):
    x = rng.uniform(-2.0, 2.0, size=(n, 2))
    return x, (x[:, 1] > 0.5 * x[:, 0] + 0.2)


def _circles(rng, n):
    scale = 1.5 / math.sqrt(2.0 * math.log(2.0))
    x = rng.normal(scale=scale, size=(n, 2))
    return x, np.linalg.norm(x, axis=1) < 1.5


def _xor(rng, n):
    x = rng.uniform(-1.0, 1.0, size=(n, 2))
    return x, x[:, 0] * x[:, 1] > 0


def _spiral(rng, n):
    label = np.arange(n) % 2
    t = rng.uniform(0.1, 1.0, size=n)
    theta = 3.0 * math.pi * t + math.pi * label
    x = 2.0 * np.stack([t * np.cos(theta), t * np.sin(theta)], axis=1)
    return x, label


def _moons(rng, n):
    label = np.arange(n) % 2
    theta = rng.uniform(0.0, math.pi, size=n)
    upper = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    lower = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    return np.where(label[:, None] == 0, upper, lower) - np.array([0.5, 0.25]), label


_MAKERS = {"linear": _linear, "circles": _circles, "xor": _xor, "spiral": _spiral, "moons": _moons}


REGRESSION_DATASETS = ("plane", "sine_ridge", "gaussian_bump", "abs_crease")
REGRESSION_BOX = 3.0  # inputs uniform on [−3, 3]²


def regression_target(name: str, x: np.ndarray) -> np.ndarray:
    """The noiseless target of a regression set at points x (N, 2), all within [−1, 1]:
    plane (x₁ − x₂/2)/4.5; sine ridge sin(x₁ + x₂) (constant along x₁ = −x₂); Gaussian bump
    exp(−‖x‖²/2); |x| crease |x₁ − x₂|/3 − 1 (a kink along the diagonal)."""
    x = np.asarray(x, np.float64)
    if name == "plane":
        return (x[:, 0] - 0.5 * x[:, 1]) / 4.5
    if name == "sine_ridge":
        return np.sin(x[:, 0] + x[:, 1])
    if name == "gaussian_bump":
        return np.exp(-0.5 * np.sum(x**2, axis=1))
    if name == "abs_crease":
        return np.abs(x[:, 0] - x[:, 1]) / 3.0 - 1.0
    raise ValueError(f"unknown regression dataset {name!r}; valid: {', '.join(REGRESSION_DATASETS)}")


def make_regression(name: str, n: int = 400, *, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, 2) float32 uniform on [−3, 3]², y (n,) float32 = target + noise · N(0, 1) / 2)."""
    if name not in REGRESSION_DATASETS:
        raise ValueError(f"unknown regression dataset {name!r}; valid: {', '.join(REGRESSION_DATASETS)}")
    rng = np.random.default_rng([seed, REGRESSION_DATASETS.index(name)])
    x = rng.uniform(-REGRESSION_BOX, REGRESSION_BOX, size=(n, 2))
    y = regression_target(name, x) + 0.5 * noise * rng.normal(size=n)
    return x.astype(np.float32), y.astype(np.float32)


def make_dataset(name: str, n: int = 1000, *, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A two-dimensional toy classification set, deterministic for a seed.

    Args:
        name: "linear", "circles", "xor", "spiral" (two arms) or "moons".
        n: number of points (a positive integer).
        noise: standard deviation of Gaussian noise added to the coordinates (finite, ≥ 0).
        seed: random seed (a non-negative integer).

    Returns:
        (X, y): X (n, 2) float32 points, y (n,) int32 labels in {0, 1}.

    Raises:
        ValueError: an unknown name (the valid ones are listed), a negative or non-finite noise,
            or a seed that is not a non-negative integer.
    """
    if name not in _MAKERS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if isinstance(n, bool) or not math.isfinite(n) or int(n) != n or not 1 <= n <= 10**8:
        raise ValueError(f"dataset size must be an integer in [1, 1e8], got {n}")
    n = int(n)
    if not (math.isfinite(noise) and 0 <= noise <= 1e30):
        raise ValueError(f"noise must be a number in [0, 1e30] (the data are float32), got {noise}")
    rng = np.random.default_rng(seed)
    x, y = _MAKERS[name](rng, n)
    x = x + noise * rng.normal(size=x.shape)
    return x.astype(np.float32), np.asarray(y, dtype=np.int32)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (nothing is downloaded: the data ship inside
    scikit-learn).

    Returns:
        (X, y): X (1797, 64) float32 in [0, 1] (8×8 images, row-major, grey levels 0..16 divided by
        16; reshape to (-1, 8, 8, 1) for image models), y (1797,) int32 in 0..9.

    Raises:
        ImportError: scikit-learn is not installed (it is a dependency of this package).
    """
    from sklearn.datasets import load_digits as sklearn_digits  # a heavy import, only when asked for

    digits = sklearn_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def load_dataset(path, *, label: str | int = -1, targets: str = "classes") -> tuple[np.ndarray, np.ndarray]:
    """A user's data set from a CSV or NPZ file, checked cell by cell.

    * CSV (``.csv``/``.txt``): a header row naming the columns, then one example per row; the label
      column is the last one, or the one `label` names. Every other cell must be a finite number.
    * NPZ (``.npz``): arrays ``x`` (N, ...) and ``y`` (N,).

    Labels must be integers; they are kept when they are 0..C-1 and otherwise mapped to 0..C-1 in
    sorted order.

    Args:
        path: the file (str or path-like).
        label: the label column of a CSV: a header name, or an integer index (default -1: the last).
        targets: "classes" (integer labels) or "real" (regression targets, any finite numbers).

    Returns:
        (X, y): X (N, d) float32; y (N,) int32 labels 0..C-1, or float32 targets with
        `targets="real"`.

    Raises:
        ValueError: naming the file and the line (CSV, counting the header as line 1) or the row: a
            non-numeric or empty cell, a ragged row, a missing or fractional label, NaN or inf, fewer
            than two classes, no rows, or an unsupported file type.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if targets not in ("classes", "real"):
        raise ValueError(f"targets must be 'classes' or 'real', got {targets!r}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".npz":
        x, y = _load_npz(path, targets)
    elif path.suffix in (".csv", ".txt"):
        x, y = _load_csv(path, label, targets)
    else:
        raise ValueError(f"{path}: unknown format {path.suffix!r}; give a .csv (header row, label column) or a "
                         ".npz (arrays x and y)")
    if x.reshape(len(x), -1).shape[1] == 0:
        raise ValueError(f"{path}: no feature columns besides the label")
    if targets == "real":
        return x.astype(np.float32), y.astype(np.float32)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"{path}: only one class ({classes.tolist()}): a classifier needs at least two")
    if not np.array_equal(classes, np.arange(len(classes))):
        y = np.searchsorted(classes, y)
    return x.astype(np.float32), y.astype(np.int32)


def _real_targets(values, where) -> np.ndarray:
    """float64 regression targets: finite and within float32's range."""
    try:
        numeric = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where(0)}: targets must be numbers") from None
    bad = np.flatnonzero(~np.isfinite(numeric) | (np.abs(numeric) > FLOAT32_MAX))
    if bad.size:
        raise ValueError(f"{where(int(bad[0]))}: target {numeric[bad[0]]:g} is NaN, inf or beyond float32's range "
                         f"({bad.size} such targets)")
    return numeric


def _load_npz(path: Path, targets: str = "classes") -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            missing = [name for name in ("x", "y") if name not in archive.files]
            if missing:
                raise ValueError(f"{path}: no array {' or '.join(missing)} (found: {', '.join(archive.files) or 'none'})")
            x, y = np.asarray(archive["x"]), np.asarray(archive["y"])
    except (OSError, EOFError, zipfile.BadZipFile) as error:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{path}: x must be a non-empty (N, features...) array, got shape {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"{path}: y must have shape ({len(x)},) to match x, got {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or x.dtype == bool:
        raise ValueError(f"{path}: x is not numeric (dtype {x.dtype})")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{path}: x is complex (dtype {x.dtype}); the data must be real: its imaginary part would "
                         "be dropped")
    bad = np.flatnonzero(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1))
    if bad.size:
        raise ValueError(f"{path}: x has NaN or inf in {bad.size} rows (first rows: {bad[:5].tolist()})")
    bad = np.flatnonzero(np.any(np.abs(x.reshape(len(x), -1).astype(np.float64)) > FLOAT32_MAX, axis=1))
    if bad.size:
        raise ValueError(f"{path}: x has values beyond float32's range (±{FLOAT32_MAX:.3g}) in {bad.size} rows "
                         f"(first rows: {bad[:5].tolist()}): rescale them")
    if np.issubdtype(y.dtype, np.complexfloating) or y.dtype == bool:
        raise ValueError(f"{path}: y must hold {'integer class labels' if targets == 'classes' else 'real numbers'}, "
                         f"got dtype {y.dtype}")
    if targets == "real":
        return x, _real_targets(y, lambda i: f"{path}: row {i}")
    return x, _integer_labels(y, lambda i: f"{path}: row {i}")


FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT_LABEL_LIMIT = 2**53  # beyond it a float64 holds only every other integer: 2^53 + 1 reads as 2^53


def _integer_labels(values, where) -> np.ndarray:
    """int64 class labels; floats only when integral and exactly representable (|y| ≤ 2^53), so
    that two different labels can never become one class (1e19 past int64, or 2^53 + 1)."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer) and not np.issubdtype(values.dtype, np.unsignedinteger):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.unsignedinteger):
        bad = np.flatnonzero(values > np.iinfo(np.int64).max)
        if bad.size:
            raise ValueError(f"{where(int(bad[0]))}: label {values[bad[0]]} is beyond int64 ({bad.size} such labels)")
        return values.astype(np.int64)
    if values.dtype == object:  # Python ints parsed from text: any size, checked against int64 below
        if all(isinstance(v, int) for v in values):
            bad = [i for i, v in enumerate(values) if not -2**63 <= v < 2**63]
            if bad:
                raise ValueError(f"{where(bad[0])}: label {values[bad[0]]} is beyond int64 ({len(bad)} such labels)")
            return values.astype(np.int64)
        values = np.asarray([float(v) for v in values])
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"{where(0)}: labels must be integer classes, got dtype {values.dtype}")
    numeric = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(numeric) | (numeric != np.round(numeric)))
    if bad.size:
        raise ValueError(f"{where(int(bad[0]))}: label {numeric[bad[0]]:g} is not an integer class "
                         f"({bad.size} such labels)")
    bad = np.flatnonzero(np.abs(numeric) > FLOAT_LABEL_LIMIT)
    if bad.size:
        raise ValueError(f"{where(int(bad[0]))}: label {numeric[bad[0]]:g} is a float beyond 2^53, where distinct "
                         f"integers share one float ({bad.size} such labels): store the labels as integers")
    return numeric.astype(np.int64)


def _load_csv(path: Path, label: str | int, targets: str = "classes") -> tuple[np.ndarray, np.ndarray]:
    import csv

    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            rows.extend(reader)
        except csv.Error as error:  # e.g. a cell past csv's 131 072-character field limit
            raise ValueError(f"{path}: line {reader.line_num}: {error}; a data cell is a number, so this is not a "
                             "data file (or a quote is unbalanced)") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    rows = [(number, row) for number, row in enumerate(rows, 1) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row and at least one data row, found {len(rows)} non-empty lines")
    (_, header), data_rows = rows[0], rows[1:]
    width = len(header)
    if isinstance(label, str) and label.lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, int):
        if not -width <= label < width:
            raise ValueError(f"{path}: label column {label} does not exist ({width} columns)")
        column = label % width
    elif label in header:
        column = header.index(label)
    else:
        raise ValueError(f"{path}: no column named {label!r}; columns: {', '.join(header)}")
    features, labels = [], []
    for number, row in data_rows:
        if len(row) != width:
            raise ValueError(f"{path}: line {number} has {len(row)} cells, the header has {width}")
        cells = [cell.strip() for cell in row]
        if not cells[column]:
            raise ValueError(f"{path}: line {number}: missing label in column {header[column]!r}")
        values = []
        for index, cell in enumerate(cells):
            if index == column:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"{path}: line {number}, column {header[index]!r}: {cell!r} is not a number") from None
            if not np.isfinite(value):
                raise ValueError(f"{path}: line {number}, column {header[index]!r}: {cell} (NaN or inf)")
            if abs(value) > FLOAT32_MAX:
                raise ValueError(f"{path}: line {number}, column {header[index]!r}: {cell} is beyond float32's range "
                                 f"(±{FLOAT32_MAX:.3g}), where the data is kept: rescale the column")
            values.append(value)
        features.append(values)
        try:  # an integer literal stays an exact Python int; "1.0" or "1e3" goes through float
            labels.append(int(cells[column]) if cells[column].lstrip("+-").isdigit() else float(cells[column]))
        except ValueError:
            kind = "an integer class" if targets == "classes" else "a number"
            raise ValueError(f"{path}: line {number}: {'label' if targets == 'classes' else 'target'} "
                             f"{cells[column]!r} is not {kind}") from None
    where = lambda i: f"{path}: line {data_rows[i][0]}"  # noqa: E731
    if targets == "real":
        return np.asarray(features, dtype=np.float64), _real_targets(labels, where)
    y = _integer_labels(np.asarray(labels, dtype=object), where)
    return np.asarray(features, dtype=np.float64), y


def stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, *, seed: int = 0):
    """(x_train, y_train, x_test, y_test): each class split in the same proportion, deterministically.

    Within every class the rows are shuffled by a generator seeded with `seed`, and the
    first round(test_fraction · count) go to the test set; row order is kept otherwise.
    """
    x, y = np.asarray(x), np.asarray(y)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need x (N, ...) and labels y (N,) with N >= 1, got shapes {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
    if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
        raise ValueError(f"x contains NaN or inf in {int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())} rows")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        test[rows[: int(round(test_fraction * len(rows)))]] = True
    return x[~test], y[~test], x[test], y[test]


def grid(bounds: tuple[float, float, float, float] = (-2.5, 2.5, -2.5, 2.5), resolution: int = 200):
    """Points of a regular grid over a rectangle, row-major from (xmin, ymin).

    Reshape per-point values to (resolution, resolution) for
    `imshow(origin="lower", extent=bounds)`.

    Args:
        bounds: (xmin, xmax, ymin, ymax), finite, with xmin < xmax and ymin < ymax.
        resolution: points per side (≥ 2).

    Returns:
        (resolution², 2) float32 points.

    Raises:
        ValueError: bounds that are not four finite numbers in increasing pairs, or resolution < 2.
    """
    if len(bounds) != 4 or not all(math.isfinite(b) for b in bounds) or bounds[0] >= bounds[1] or bounds[2] >= bounds[3]:
        raise ValueError(f"bounds must be finite (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {bounds}")
    if (isinstance(resolution, bool) or not math.isfinite(resolution) or int(resolution) != resolution
            or not 2 <= resolution <= 10**5):
        raise ValueError(f"resolution must be an integer in [2, 1e5] (points per axis), got {resolution}")
    resolution = int(resolution)
    xmin, xmax, ymin, ymax = bounds
    if max(abs(b) for b in bounds) > 1e30:
        raise ValueError(f"bounds must lie within ±1e30 (the grid is float32), got {bounds}")
    xs = np.linspace(xmin, xmax, resolution).astype(np.float32)
    ys = np.linspace(ymin, ymax, resolution).astype(np.float32)
    xx, yy = np.meshgrid(xs, ys)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def bounds_of(x: np.ndarray, margin: float = 0.3) -> tuple[float, float, float, float]:
    """A square box around the data with a margin, for boundary plots."""
    lo, hi = float(x.min()) - margin, float(x.max()) + margin
    return lo, hi, lo, hi
