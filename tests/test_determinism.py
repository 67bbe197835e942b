"""The same experiment with the same seed, run twice from scratch on CPU, writes the same
numbers (wall time aside): random draws come from seeded generators, training batches
from (seed, step), and nothing reads the clock or the environment into the results."""

import json

import pytest

from experiments._runner import run_experiment


def _numbers(path):
    record = json.loads(path.read_text())
    record.pop("wall_time_s")
    return record


@pytest.mark.parametrize("name", ["injectivity", "linear_collapse"])  # random networks; trained networks
def test_same_seed_same_json(name, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"  # separate dirs: no checkpoint is reused
    run_experiment(name, quick=True, seed=5, out_dir=first)
    run_experiment(name, quick=True, seed=5, out_dir=second)
    assert _numbers(first / f"{name}.json") == _numbers(second / f"{name}.json")
    third = tmp_path / "third"
    run_experiment(name, quick=True, seed=6, out_dir=third)
    assert _numbers(third / f"{name}.json")["numbers"] != _numbers(first / f"{name}.json")["numbers"]


def test_rerun_in_the_same_directory_reuses_or_restarts_cleanly(tmp_path):
    # frame-by-frame training extends one checkpointed run; a second invocation must not trip over it
    run_experiment("training_animation", quick=True, seed=1, out_dir=tmp_path)
    first = _numbers(tmp_path / "training_animation.json")
    run_experiment("training_animation", quick=True, seed=1, out_dir=tmp_path)
    assert _numbers(tmp_path / "training_animation.json") == first


def test_terminal_phase_reproduces_byte_for_byte(tmp_path):
    # Papyan's protocol (momentum, coupled weight decay, stepped rate) trained twice from scratch, small
    overrides = [("datasets", "digits"), ("protocols", "papyan"), ("epochs", "6"), ("evaluations", "3"),
                 ("width", "16"), ("depth", "1"), ("weight_decays", "5e-4")]
    first, second = tmp_path / "first", tmp_path / "second"
    run_experiment("terminal_phase", quick=True, seed=3, out_dir=first, overrides=overrides)
    run_experiment("terminal_phase", quick=True, seed=3, out_dir=second, overrides=overrides)
    assert (first / "terminal_phase.json").exists()
    assert _numbers(first / "terminal_phase.json") == _numbers(second / "terminal_phase.json")


def test_ssl_collapse_reproduces_byte_for_byte(tmp_path):
    # augmented views drawn from (seed, step), BYOL's EMA target and the L-BFGS probe, twice from scratch
    overrides = [("methods", "byol"), ("epochs", "2"), ("evaluations", "2"), ("width", "16"), ("depth", "1"),
                 ("bootstrap", "50")]
    first, second = tmp_path / "first", tmp_path / "second"
    run_experiment("ssl_collapse", quick=True, seed=3, out_dir=first, overrides=overrides)
    run_experiment("ssl_collapse", quick=True, seed=3, out_dir=second, overrides=overrides)
    assert (first / "ssl_collapse.json").read_bytes() != b""
    assert _numbers(first / "ssl_collapse.json") == _numbers(second / "ssl_collapse.json")
