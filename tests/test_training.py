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
import jax.numpy as jnp
import numpy as np
import optax
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


def _updates(config, params, gradients):
    """The config's optimizer's updates for a sequence of gradients, starting from params (a dict of arrays)."""
    return _optax_updates(training.make_optimizer(config), params, gradients)


def test_step_schedule_divides_the_rate_at_a_third_and_two_thirds():
    config = training.TrainConfig(steps=30, learning_rate=0.5, optimizer="sgd", schedule="steps")
    updates, _ = _updates(config, {"w": jnp.zeros(())}, [{"w": jnp.ones(())}] * 30)
    rates = -np.array([float(u["w"]) for u in updates])  # plain SGD: the update is −rate · gradient
    expected = np.where(np.arange(30) < 10, 0.5, np.where(np.arange(30) < 20, 0.05, 0.005))
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    # laid out over a longer run trained in pieces: the first 12 steps of a 30-step schedule, one trajectory
    piece = dataclasses.replace(config, steps=12, schedule_steps=30)
    first, _ = _updates(piece, {"w": jnp.zeros(())}, [{"w": jnp.ones(())}] * 12)
    np.testing.assert_allclose(-np.array([float(u["w"]) for u in first]), expected[:12], rtol=1e-6)
    params, x, y = {"w": jnp.zeros(3)}, np.zeros((4, 2), np.float32), np.zeros(4, np.int32)
    assert training._fingerprint(piece, params, x, y, training.cross_entropy_loss) == training._fingerprint(
        dataclasses.replace(piece, steps=30), params, x, y, training.cross_entropy_loss)


def test_weight_decay_is_coupled_l2_for_sgd_with_momentum_and_decoupled_for_adamw():
    lr, wd, mu = 0.1, 5e-4 * 100, 0.9  # a large decay, so that its effect is far above rounding
    params = {"w": jnp.array([1.0, -2.0])}
    gradients = [{"w": jnp.array([0.3, 0.1])}, {"w": jnp.array([-0.2, 0.4])}, {"w": jnp.array([0.0, 0.0])}]
    config = training.TrainConfig(learning_rate=lr, optimizer="sgd", momentum=mu, weight_decay=wd)
    updates, final = _updates(config, params, gradients)
    # written out: v ← μ v + (g + wd θ); θ ← θ − lr v   (PyTorch's SGD(momentum, weight_decay), Papyan et al.)
    theta, velocity = np.array([1.0, -2.0]), np.zeros(2)
    for gradient, update in zip(gradients, updates):
        velocity = mu * velocity + (np.asarray(gradient["w"]) + wd * theta)
        np.testing.assert_allclose(update["w"], -lr * velocity, rtol=1e-6, atol=1e-7)  # float32 against float64
        theta = theta - lr * velocity
    np.testing.assert_allclose(final["w"], theta, rtol=1e-6, atol=1e-7)
    # adamw keeps optax's own (decoupled) default when weight_decay is not given
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
        default, _ = _updates(training.TrainConfig(learning_rate=lr, optimizer="adamw"), params, gradients)
        reference, _ = _optax_updates(optax.adamw(lr), params, gradients)
    for a, b in zip(default, reference):
        np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)


def _optax_updates(optimizer, params, gradients):
    state, out = optimizer.init(params), []
    for gradient in gradients:
        update, state = optimizer.update(gradient, state, params)
        params = optax.apply_updates(params, update)
        out.append(update)
    return out, params


def test_new_optimizer_fields_leave_old_fingerprints_alone_and_bad_values_are_refused():
    params = {"w": jnp.zeros(3)}
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int32)
    base = training.TrainConfig(optimizer="sgd")
    same = dataclasses.replace(base, momentum=0.0, weight_decay=None)
    other = dataclasses.replace(base, momentum=0.9)
    fingerprint = training._fingerprint
    assert fingerprint(base, params, x, y, training.cross_entropy_loss) == fingerprint(same, params, x, y,
                                                                                     training.cross_entropy_loss)
    assert fingerprint(base, params, x, y, training.cross_entropy_loss) != fingerprint(other, params, x, y,
                                                                                     training.cross_entropy_loss)
    for bad, message in ((dict(momentum=1.0), "momentum"), (dict(optimizer="adam", momentum=0.5), "momentum is for"),
                         (dict(weight_decay=-1.0), "weight_decay"), (dict(decay_at=(0.6, 0.3)), "decay_at"),
                         (dict(decay_factor=0.0), "decay_factor"), (dict(schedule="linear"), "unknown schedule")):
        with pytest.raises(ValueError, match=message):
            config = dataclasses.replace(base, **bad)
            training.check_config(config)
            training.make_optimizer(config)
