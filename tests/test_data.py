"""The 2-D datasets: their defining rules, balance, determinism, and bad input."""

import numpy as np
import pytest

from geometry import data


@pytest.mark.parametrize("name", data.DATASETS)
def test_deterministic_balanced_and_typed(name):
    x1, y1 = data.make_dataset(name, 2000, noise=0.05, seed=3)
    x2, y2 = data.make_dataset(name, 2000, noise=0.05, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.dtype == np.float32 and x1.shape == (2000, 2) and y1.dtype == np.int32
    assert set(np.unique(y1)) == {0, 1}
    assert 0.3 < y1.mean() < 0.7  # both classes well represented
    assert not np.array_equal(x1, data.make_dataset(name, 2000, noise=0.05, seed=4)[0])


def test_labelling_rules_without_noise():
    x, y = data.make_dataset("circles", 20_000, seed=0)
    np.testing.assert_array_equal(y, np.linalg.norm(x, axis=1) < 1.5)
    # the radius-1.5 disk holds half the mass of N(0, 1.5²/(2 ln 2) I): P = 1 − exp(−1.5²/(2 s²)) = ½
    assert abs(y.mean() - 0.5) < 4 * np.sqrt(0.25 / 20_000)
    x, y = data.make_dataset("xor", 5000, seed=0)
    np.testing.assert_array_equal(y, x[:, 0] * x[:, 1] > 0)
    x, y = data.make_dataset("linear", 5000, seed=0)
    np.testing.assert_array_equal(y, x[:, 1] > 0.5 * x[:, 0] + 0.2)
    x, y = data.make_dataset("spiral", 1000, seed=0)
    radius = np.linalg.norm(x, axis=1) / 2  # r = t in [0.1, 1]
    theta = np.arctan2(x[:, 1], x[:, 0])
    predicted = 3 * np.pi * radius + np.pi * y
    np.testing.assert_allclose(np.cos(theta - predicted), 1.0, atol=1e-5)


def test_grid_layout():
    g = data.grid((-1, 1, -2, 2), 5)
    assert g.shape == (25, 2)
    np.testing.assert_allclose(g[:5, 0], np.linspace(-1, 1, 5))
    np.testing.assert_allclose(g[::5, 1], np.linspace(-2, 2, 5))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown dataset 'rings'; valid: linear"):
        data.make_dataset("rings")
    with pytest.raises(ValueError, match="size"):
        data.make_dataset("xor", 0)
    with pytest.raises(ValueError, match="noise"):
        data.make_dataset("xor", 10, noise=-1)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_dataset_reads_csv_and_npz(tmp_path):
    path = _write(tmp_path, "points.csv", "a,b,label\n0.5,1,3\n-2,4e-1,7\n\n1,2,3\n")
    x, y = data.load_dataset(path)
    np.testing.assert_array_equal(x, np.array([[0.5, 1], [-2, 0.4], [1, 2]], dtype=np.float32))
    np.testing.assert_array_equal(y, [0, 1, 0])  # labels 3, 7 mapped to 0, 1 in sorted order
    assert x.dtype == np.float32 and y.dtype == np.int32
    named = _write(tmp_path, "named.csv", "class,f1,f2\n1,0.1,0.2\n0,0.3,0.4\n")
    x, y = data.load_dataset(named, label="class")
    np.testing.assert_array_equal(y, [1, 0])
    np.testing.assert_allclose(x, [[0.1, 0.2], [0.3, 0.4]], rtol=1e-7)
    np.testing.assert_array_equal(data.load_dataset(named, label=0)[1], [1, 0])
    archive = tmp_path / "images.npz"
    np.savez(archive, x=np.arange(24.0).reshape(3, 2, 2, 2), y=np.array([0, 1, 1]))
    x, y = data.load_dataset(archive)
    assert x.shape == (3, 2, 2, 2) and y.tolist() == [0, 1, 1]


@pytest.mark.parametrize("text, message", [
    ("a,b,y\n1,2,0\n1,oops,1\n", r"line 3, column 'b': 'oops' is not a number"),
    ("a,b,y\n1,2,0\n1,2\n", "line 3 has 2 cells, the header has 3"),
    ("a,b,y\n1,2,0\n1,2, \n", "line 3: missing label in column 'y'"),
    ("a,b,y\n1,2,0\n1,2,0.5\n", r"line 3: label 0.5 is not an integer class"),
    ("a,b,y\n1,2,0\n1,2,cat\n", r"line 3: label 'cat' is not an integer class"),
    ("a,b,y\n1,nan,0\n1,2,1\n", r"line 2, column 'b': nan \(NaN or inf\)"),
    ("a,b,y\n1,2,4\n3,4,4\n", r"only one class \(\[4\]\)"),
    ("a,b,y\n", "needs a header row and at least one data row"),
    ("y\n1\n0\n", "no feature columns"),
    # labels that a float64 cannot tell apart, or that int64 cannot hold, never merge into one class
    ("a,y\n1,0\n2,1e19\n", r"line 3: label 1e\+19 is a float beyond 2\^53"),
    ("a,y\n1,0\n2,20000000000000000000\n", r"line 3: label 20000000000000000000 is beyond int64"),
    ("a,y\n1,9007199254740992.0\n2,9007199254740994.0\n", r"line 3: label 9.0072e\+15 is a float beyond 2\^53"),
    ("a,b,y\n1,1e300,0\n1,2,1\n", r"line 2, column 'b': 1e300 is beyond float32's range"),
])
def test_load_dataset_names_the_broken_line(tmp_path, text, message):
    path = _write(tmp_path, "broken.csv", text)
    with pytest.raises(ValueError, match=message) as error:
        data.load_dataset(path)
    assert str(path) in str(error.value)


def test_load_dataset_refuses_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        data.load_dataset(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown format '.json'"):
        data.load_dataset(_write(tmp_path, "d.json", "{}"))
    with pytest.raises(ValueError, match="no column named 'kind'; columns: a, b"):
        data.load_dataset(_write(tmp_path, "c.csv", "a,b\n1,0\n2,1\n"), label="kind")
    archive = tmp_path / "only_x.npz"
    np.savez(archive, x=np.ones((3, 2)))
    with pytest.raises(ValueError, match="no array y"):
        data.load_dataset(archive)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load_dataset(corrupt)
    nan_rows = tmp_path / "nan.npz"
    np.savez(nan_rows, x=np.array([[1.0, np.nan], [0.0, 1.0]]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"NaN or inf in 1 rows \(first rows: \[0\]\)"):
        data.load_dataset(nan_rows)


def test_exact_integer_labels_stay_distinct(tmp_path):
    # 2^53 and 2^53 + 1 are one float64: as integer literals they are two classes, kept apart
    path = _write(tmp_path, "big.csv", "a,y\n1,9007199254740992\n2,9007199254740993\n3,0\n")
    _, y = data.load_dataset(path)
    np.testing.assert_array_equal(y, [1, 2, 0])


def test_npz_refuses_complex_and_float_labels_past_2_53(tmp_path):
    x = np.ones((4, 2))
    np.savez(tmp_path / "complex.npz", x=x + 1j, y=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="x is complex"):
        data.load_dataset(tmp_path / "complex.npz")
    np.savez(tmp_path / "labels.npz", x=x, y=np.array([0.0, 1e19, 2e19, 2.0**53 + 2]))
    with pytest.raises(ValueError, match=r"row 1: label 1e\+19 is a float beyond 2\^53.*\(3 such labels\)"):
        data.load_dataset(tmp_path / "labels.npz")
    np.savez(tmp_path / "huge.npz", x=np.array([[1e300, 0.0], [1.0, 2.0]]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"beyond float32's range .* in 1 rows \(first rows: \[0\]\)"):
        data.load_dataset(tmp_path / "huge.npz")


def test_an_overlong_cell_and_binary_files_are_named(tmp_path):
    path = _write(tmp_path, "long.csv", "a,b,y\n1,2,0\n1," + "9" * 200_000 + ",1\n")
    with pytest.raises(ValueError, match=r"long.csv: line 3: field larger than field limit"):
        data.load_dataset(path)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"a,b,y\n\xff\xfe,1,0\n")
    with pytest.raises(ValueError, match="binary.csv: not a UTF-8 text file"):
        data.load_dataset(binary)
