"""Training is deterministic, learns, and resumes exactly after SIGKILL; bad checkpoints
and bad data give named errors and destroy nothing."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from geometry import data, models, training

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from flax import nnx
    from geometry import data, models, training

    checkpoint_dir, out = sys.argv[1], sys.argv[2]
    x, y = data.make_dataset("spiral", 512, noise=0.02, seed=1)
    model = models.MLP(2, 32, depth=3, out_features=2, activation="tanh", rngs=nnx.Rngs(7))
    config = training.TrainConfig(steps=400, learning_rate=5e-3, batch_size=64, checkpoint_every=50, log_every=50)
    training.train(model, x, y, config, checkpoint_dir=None if checkpoint_dir == "-" else checkpoint_dir,
                   log=lambda line: print(line, flush=True))
    leaves = [np.asarray(a) for a in __import__("jax").tree_util.tree_leaves(nnx.state(model, nnx.Param))]
    np.savez(out, *leaves)
    """
)


def _leaves(path):
    with np.load(path) as archive:
        return [archive[k] for k in sorted(archive.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "train_once.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, str(script), "-", str(tmp_path / "straight.npz")], check=True, env=env,
                   capture_output=True, timeout=300)

    checkpoints = tmp_path / "ckpt"
    with subprocess.Popen([sys.executable, str(script), str(checkpoints), str(tmp_path / "killed.npz")],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        for line in proc.stdout:
            if "step 250/400" in line:  # the step-200 checkpoint is on disk; the kill may land mid-save of 250
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.npz").exists()

    resumed = subprocess.run([sys.executable, str(script), str(checkpoints), str(tmp_path / "resumed.npz")],
                             check=True, env=env, capture_output=True, text=True, timeout=300)
    assert "resumed from step" in resumed.stdout + resumed.stderr
    for a, b in zip(_leaves(tmp_path / "straight.npz"), _leaves(tmp_path / "resumed.npz"), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical: the same steps on the same batches


def _small_run(tmp_path, width=16, steps=20):
    x, y = data.make_dataset("xor", 128, seed=0)
    model = models.MLP(2, width, depth=2, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    config = training.TrainConfig(steps=steps, checkpoint_every=10, log_every=10)
    training.train(model, x, y, config, checkpoint_dir=tmp_path / "ckpt", log=lambda _: None)
    return x, y, config


def test_mismatched_checkpoint_is_refused_and_kept(tmp_path):
    x, y, config = _small_run(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "ckpt").rglob("*"))
    other = models.MLP(2, 24, depth=2, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    with pytest.raises(training.CheckpointError, match="different run"):
        training.train(other, x, y, config, checkpoint_dir=tmp_path / "ckpt", log=lambda _: None)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "ckpt").rglob("*")) == before


def test_corrupt_checkpoint_is_named_and_kept(tmp_path):
    x, y, config = _small_run(tmp_path)
    latest = tmp_path / "ckpt" / "20"
    for f in (latest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    model = models.MLP(2, 16, depth=2, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    with pytest.raises(training.CheckpointError, match="corrupt or unreadable"):
        training.train(model, x, y, config, checkpoint_dir=tmp_path / "ckpt", log=lambda _: None)
    assert all(f.read_bytes() == b"garbage" for f in (latest / "state").rglob("*") if f.is_file())


def test_another_activation_with_the_same_shapes_does_not_resume(tmp_path):
    # a tanh MLP has the ReLU run's parameter shapes; resuming it would report a ReLU net's accuracy
    x, y, config = _small_run(tmp_path, steps=20)
    tanh = models.MLP(2, 16, depth=2, out_features=2, activation="tanh", rngs=nnx.Rngs(0))
    with pytest.raises(training.CheckpointError, match="different run"):
        training.train(tanh, x, y, dataclasses.replace(config, steps=30), checkpoint_dir=tmp_path / "ckpt",
                       log=lambda _: None)
    relu = models.MLP(2, 16, depth=2, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    result = training.train(relu, x, y, dataclasses.replace(config, steps=30), checkpoint_dir=tmp_path / "ckpt",
                            log=lambda _: None)
    assert result["resumed_from"] == 20  # the same net (a fresh object, new addresses) still resumes


def test_an_edited_step_record_is_refused(tmp_path):
    x, y, config = _small_run(tmp_path, steps=20)
    path = tmp_path / "ckpt" / "20" / "meta" / "metadata"  # Orbax's JsonSave item
    record = json.loads(path.read_text())
    assert record["step"] == 20
    record["step"] = 5
    path.write_text(json.dumps(record))
    model = models.MLP(2, 16, depth=2, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    with pytest.raises(training.CheckpointError, match="records step 5"):
        training.train(model, x, y, dataclasses.replace(config, steps=30), checkpoint_dir=tmp_path / "ckpt",
                       log=lambda _: None)


def test_training_learns_and_is_deterministic():
    x, y = data.make_dataset("circles", 400, seed=2)
    accuracies, params = [], []
    for _ in range(2):
        model = models.MLP(2, 32, depth=2, out_features=2, activation="tanh", rngs=nnx.Rngs(3))
        result = training.train(model, x, y, training.TrainConfig(steps=300, batch_size=100, log_every=100),
                                log=lambda _: None)
        accuracies.append(training.accuracy(model, x, y))
        params.append(jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert accuracies[0] >= 0.95 and accuracies[0] == accuracies[1]
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    for a, b in zip(*params):
        np.testing.assert_array_equal(a, b)


def test_bad_data_and_optimizer():
    model = models.MLP(2, 4, depth=1, out_features=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="non-empty"):
        training.train(model, np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="labels must have shape"):
        training.train(model, np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
        training.train(model, np.array([[0.0, 1.0], [np.nan, 1.0]]), np.zeros(2))
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.train(model, np.zeros((2, 2)), np.zeros(2), training.TrainConfig(optimizer="lbfgs"))


def test_a_finished_run_can_be_extended_but_not_shortened(tmp_path):
    x, y, config = _small_run(tmp_path, steps=20)
    longer = dataclasses.replace(config, steps=30)
    extended = models.MLP(2, 16, depth=2, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    result = training.train(extended, x, y, longer, checkpoint_dir=tmp_path / "ckpt", log=lambda _: None)
    assert result["resumed_from"] == 20
    straight = models.MLP(2, 16, depth=2, out_features=2, activation="relu", rngs=nnx.Rngs(0))
    training.train(straight, x, y, longer, log=lambda _: None)
    for a, b in zip(jax.tree_util.tree_leaves(nnx.state(extended, nnx.Param)),
                    jax.tree_util.tree_leaves(nnx.state(straight, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(training.CheckpointError, match="past the 10 steps"):
        training.train(straight, x, y, dataclasses.replace(config, steps=10), checkpoint_dir=tmp_path / "ckpt",
                       log=lambda _: None)


def squared_error(model, batch):
    """A regression loss of a user's: mean ‖f(x) − y‖² over the batch."""
    x, y = batch
    return jax.numpy.mean(jax.numpy.sum((jax.vmap(model)(x) - y) ** 2, axis=-1))


def test_pluggable_loss_trains_a_regression_and_compiles_once(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype(np.float32)
    target_map = rng.normal(size=(3, 2)).astype(np.float32)
    y = x @ target_map  # a linear regression target: float, not class labels
    config = training.TrainConfig(steps=300, learning_rate=1e-2, log_every=300)
    model = models.MLP(3, 16, depth=1, out_features=2, activation="identity", rngs=nnx.Rngs(0))
    training.train(model, x, y, config, loss_fn=squared_error, log=lambda line: None)
    residual = float(squared_error(model, (x, y)))
    assert residual < 1e-3 * float(np.mean(np.sum(y**2, axis=1)))
    compiled = training.train_step._cache_size()
    other = models.MLP(3, 16, depth=1, out_features=2, activation="identity", rngs=nnx.Rngs(1))
    training.train(other, x, y, config, loss_fn=squared_error, log=lambda line: None)  # same structure, loss, config
    assert training.train_step._cache_size() == compiled
    # the loss is part of the run's identity: a checkpoint of one loss is not resumed with another
    training.train(other, x, y, dataclasses.replace(config, steps=10), loss_fn=squared_error,
                   checkpoint_dir=tmp_path / "ckpt", log=lambda line: None)
    with pytest.raises(training.CheckpointError, match="different run"):
        training.train(other, x, rng.integers(0, 2, 256), dataclasses.replace(config, steps=20),
                       checkpoint_dir=tmp_path / "ckpt", log=lambda line: None)
    with pytest.raises(ValueError, match="must be integers.*loss_fn"):
        training.train(other, x, y[:, 0], config, log=lambda line: None)
