"""The command line checks everything before computing, writes an experiment's outputs as a set,
cleans up after killed runs, and `verify` checks a folder against its manifest."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import _classifiers, _runner


ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # run from another folder when cwd is given
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    result = _cli("activations", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_verify_reports_tampered_and_missing_files(figures, tmp_path):
    assert _cli("verify", "--out", str(figures)).returncode == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in figures.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    (copy / "activations.json").write_text((copy / "activations.json").read_text().replace("0", "1", 1))
    (copy / "activations.pdf").unlink()
    result = _cli("verify", "--out", str(copy))
    assert result.returncode == 1
    assert "activations.json: SHA-256 differs" in result.stderr and "activations.pdf: missing" in result.stderr
    assert _runner.verify(tmp_path / "empty") == [f"{tmp_path / 'empty' / 'MANIFEST.json'}: missing"]


def test_options_are_checked_before_any_computing(tmp_path):
    for args, message in ((["--seed", "-1"], "--seed must be in [0, 2**32)"),
                          (["--seed", str(2**64)], "--seed must be in [0, 2**32)")):
        result = _cli("activations", "--quick", "--out", str(tmp_path / "a"), *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-500:]
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = _cli("activations", "--quick", "--out", str(a_file))
    assert result.returncode == 2 and "exists and is not a directory" in result.stderr
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = _cli("activations", "--quick", "--out", str(locked / "out"))
        assert result.returncode == 2 and "is not writable" in result.stderr
    assert not (tmp_path / "a").exists()


def test_a_corrupt_manifest_is_refused_before_outputs_are_replaced(figures, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "MANIFEST.json").write_text("{ not json")
    (out / "activations.png").write_bytes(b"old")
    result = _cli("activations", "--quick", "--out", str(out))
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    assert (out / "activations.png").read_bytes() == b"old"


def test_leftovers_of_a_killed_run_are_removed_and_the_set_published_together(tmp_path):
    out = tmp_path / "out"
    (out / ".staging-activations").mkdir(parents=True)
    (out / ".staging-activations" / "activations.png").write_bytes(b"half")
    (out / ".activations.png.abc123.tmp").write_bytes(b"torn")
    result = _cli("activations", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "left by an interrupted run" in result.stdout
    assert not list(out.glob(".*"))  # no staging folder, no temporary files
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert set(manifest["activations"]["sha256"]) == {p.name for p in out.iterdir() if p.name != "MANIFEST.json"}
    assert _runner.verify(out) == []


def _blobs_csv(path, classes=3, d=4, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.normal(size=(classes, d))
    rows = [(centres[k] + rng.normal(size=d), k) for k in range(classes) for _ in range(per_class)]
    path.write_text(",".join(f"f{i}" for i in range(d)) + ",label\n"
                    + "".join(",".join(f"{v:.5f}" for v in x) + f",{k}\n" for x, k in rows))
    return path


def test_dataset_option_is_checked_before_any_computing(tmp_path):
    out = tmp_path / "out"
    result = _cli("activations", "--quick", "--dataset", "digits", "--out", str(out))
    assert result.returncode == 2 and "activations take(s) no dataset" in result.stderr
    assert "linear_collapse" in result.stderr and "pullback" in result.stderr  # the ones that do
    result = _cli("pullback", "--quick", "--dataset", str(tmp_path / "missing.csv"), "--out", str(out))
    assert result.returncode == 2 and "neither a built-in dataset" in result.stderr
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n0.1,0.2,0\n0.3,1\n")
    result = _cli("pullback", "--quick", "--dataset", str(ragged), "--out", str(out))
    assert result.returncode == 2 and "ragged.csv: line 3" in result.stderr, result.stderr[-500:]
    assert not out.exists()


def test_linear_collapse_on_a_users_csv(tmp_path):
    """A 3-class, 4-D CSV: the outputs go to figures/dataset-STEM under the working directory, the
    `none` network is one affine map of rank <= 3, and no exact best line is claimed."""
    _blobs_csv(tmp_path / "blobs.csv")
    result = _cli("linear_collapse", "--quick", "--dataset", "blobs.csv", "--set", "steps=60", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "figures" / "dataset-blobs"
    numbers = json.loads((out / "linear_collapse.json").read_text())["numbers"]
    assert numbers["best_linear_accuracy"] == {"blobs": None}
    assert numbers["summary"]["none_never_beats_a_line"] is None
    collapse = numbers["results"]["blobs/identity"]["collapse"]
    assert np.asarray(collapse["W_total"]).shape == (3, 4) and collapse["numerical_rank"] <= 3
    assert collapse["max_abs_difference_stack_vs_single_matrix"] <= 1e-5 * max(1.0, collapse["max_abs_output"])
    assert {"linear_collapse.png", "linear_collapse.json", "MANIFEST.json"} <= {p.name for p in out.iterdir()}


def test_real_data_are_split_per_class_and_standardised(tmp_path):
    spec = _classifiers.ClassifierSpec(dataset="digits", activation="relu")
    x_train, y_train, x_test, y_test = _classifiers.load_split(spec)
    assert x_train.shape[1] == 64 and len(x_train) + len(x_test) == 1797
    np.testing.assert_allclose(np.bincount(y_test) / np.bincount(y_train + 0), 0.25, atol=0.02)  # 80/20 per class
    spread = x_train.std(0)
    np.testing.assert_allclose(x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(spread[spread > 0], 1.0, rtol=1e-4)  # constant pixels are only centred
    path = _blobs_csv(tmp_path / "mine.csv")
    key = _classifiers.ClassifierSpec(dataset=str(path), activation="relu").key
    assert key.startswith("mine-") and "/" not in key
    _blobs_csv(path, seed=1)  # new content: new checkpoints, never the old ones
    assert _classifiers.ClassifierSpec(dataset=str(path), activation="relu").key != key
    with pytest.raises(ValueError, match="neither a built-in dataset"):
        _classifiers.check_dataset("rings")
