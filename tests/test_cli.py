"""The command line checks everything before computing, writes an experiment's outputs as a set,
cleans up after killed runs, and `verify` checks a folder against its manifest."""

import json
import os
import subprocess
import sys

import pytest

from experiments import _runner


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, timeout=300)


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
