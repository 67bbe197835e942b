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


def _copy(figures, folder):
    folder.mkdir()
    for path in figures.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _edit_manifest(folder, change):
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    change(manifest)
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def test_verify_accounts_for_every_file_and_reads_only_inside_out(figures, tmp_path):
    emptied = _copy(figures, tmp_path / "emptied")
    _edit_manifest(emptied, lambda m: m.clear())
    problems = _runner.verify(emptied)
    assert problems[0] == f"{emptied / 'MANIFEST.json'}: records no experiment"
    assert len(problems) == 1 + len(list(figures.iterdir())) - 1  # and every file is unaccounted for
    # an entry deleted over a tampered file: the file is no longer accounted for
    deleted = _copy(figures, tmp_path / "deleted")
    (deleted / "activations.png").write_bytes(b"tampered")
    _edit_manifest(deleted, lambda m: m.pop("activations"))
    problems = _runner.verify(deleted)
    assert f"{deleted / 'activations.png'}: in {deleted} but in no manifest entry (written by what?)" in problems
    stray = _copy(figures, tmp_path / "stray")
    (stray / "extra.png").write_bytes(b"?")
    assert any("extra.png: in" in p for p in _runner.verify(stray))
    # names outside OUT are refused unread; a FIFO is reported, never opened (it would hang)
    hostile = _copy(figures, tmp_path / "hostile")
    os.mkfifo(hostile / "pipe.png")
    _edit_manifest(hostile, lambda m: m["activations"]["sha256"].update(
        {"../../etc/passwd": "0" * 64, "/etc/hostname": "0" * 64, "pipe.png": "0" * 64}))
    problems = _runner.verify(hostile)
    assert any("lists '../../etc/passwd', not a file name inside" in p for p in problems)
    assert any("lists '/etc/hostname', not a file name inside" in p for p in problems)
    assert f"{hostile / 'pipe.png'}: not a regular file (a link, folder or FIFO; written by activations)" in problems
    broken = _copy(figures, tmp_path / "broken")
    _edit_manifest(broken, lambda m: m.update({"other": [1, 2]}))
    assert f"{broken / 'MANIFEST.json'}: the entry 'other' is not an object with a 'sha256' table" in \
        _runner.verify(broken)


def test_concurrent_manifest_updates_lose_no_entry(tmp_path):
    # two processes each adding 60 entries to one manifest: all 120 must be there at the end
    script = (
        "import sys; from pathlib import Path; from experiments import _runner\n"
        "out, tag = Path(sys.argv[1]), sys.argv[2]\n"
        "for i in range(60):\n"
        "    record = {'experiment': f'{tag}{i}', 'quick': True, 'config_hash': '', 'seed': 0, 'git_commit': '',\n"
        "              'versions': {}, 'device': '', 'wall_time_s': 0}\n"
        "    _runner.update_manifest(out, record, [])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag], env=env) for tag in "ab"]
    try:
        assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert len(json.loads((tmp_path / "MANIFEST.json").read_text())) == 120


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
    result = _cli("activations", "--quick", "--out", "/proc/layer-geometry-out")  # os.access says yes to root
    assert result.returncode == 2 and "does not take new files" in result.stderr, result.stderr[-500:]
    for setting, message in (("pullback.glyph_grid=-3", "is negative"), ("nothing=1", "valid keys: ")):
        result = _cli("activations", "pullback", "--quick", "--out", str(tmp_path / "b"), "--set", setting)
        assert result.returncode == 2 and message in result.stderr, (setting, result.stderr[-500:])
    assert not (tmp_path / "b").exists()
    from experiments import _overrides, activations, pullback

    for config, key, raw, message in ((pullback.QUICK, "networks", "()", "is empty"),
                                      (activations.QUICK, "grid_points", "0", "must be at least 1"),
                                      (pullback.QUICK, "steps", "-5", "is negative")):
        with pytest.raises(ValueError, match=message):
            _overrides.apply(config, [(key, raw)], "x")


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


def test_datasets_named_alike_are_refused_not_merged(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _blobs_csv(tmp_path / folder / "data.csv")
    _blobs_csv(tmp_path / "spiral.csv")
    for datasets, name in ((["spiral", str(tmp_path / "spiral.csv")], "spiral"),
                           ([str(tmp_path / "a" / "data.csv"), str(tmp_path / "b" / "data.csv")], "data")):
        with pytest.raises(ValueError, match=f"are both called '{name}' in the results"):
            _classifiers.by_name(datasets)
    assert list(_classifiers.by_name(["spiral", "spiral", str(tmp_path / "a" / "data.csv")])) == ["spiral", "data"]


def test_replot_of_a_record_missing_a_key_names_the_problem(figures, tmp_path):
    copy = _copy(figures, tmp_path / "copy")
    record = json.loads((copy / "activations.json").read_text())
    record["numbers"].pop(next(iter(record["numbers"])))
    (copy / "activations.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"activations.json \(or activations.npz\) lacks what the plot needs"):
        _runner.replot("activations", copy)


def test_a_manifest_that_is_a_folder_is_refused_before_computing(tmp_path):
    out = tmp_path / "out"
    (out / "MANIFEST.json").mkdir(parents=True)
    result = _cli("activations", "--quick", "--out", str(out))
    assert result.returncode == 2 and "MANIFEST.json is not a file (a folder?)" in result.stderr
    assert _cli("verify", "--out", str(out)).returncode == 1


def test_help_and_the_bare_list_name_every_subcommand_and_no_description_is_cut():
    from experiments import EXPERIMENTS
    from experiments._runner import load

    listing, help_text = _cli().stdout, _cli("--help").stdout
    for text in (listing, help_text):
        for word in ("all", "verify", "plot NAME", *EXPERIMENTS):
            assert f"\n  {word}" in text, (word, text)
    for option in ("--quick", "--seed", "--out", "--scale", "--set", "--corpus", "--dataset", "--coordinator",
                   "--num-processes", "--process-id", "--heartbeat-timeout"):
        assert option in help_text
    # each experiment's line is its docstring's whole first sentence, never a clause cut at a line break
    from experiments.__main__ import summary

    joined = " ".join(listing.split())
    for name in EXPERIMENTS:
        sentence = summary(load(name).__doc__)
        assert sentence[-1] in ".?!" and f" {name} {sentence} " in joined + " ", name
    assert summary("A first sentence\nthat goes on: past a colon. Then more.\n\nNext.") == \
        "A first sentence that goes on: past a colon."
