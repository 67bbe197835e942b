"""Deterministic optax training with Orbax checkpoints that resume.

`train(model, x, y, config, checkpoint_dir=...)` minimises mean softmax cross-entropy
with Adam (default). The minibatch of step t depends only on (seed, t) — a fresh
permutation per epoch — so a run killed at any point and resumed from its last
checkpoint takes exactly the same steps as one that never stopped.

Checkpoints: an Orbax `CheckpointManager` saves model parameters, optimizer state and
step every `checkpoint_every` steps and at the end (Orbax writes to a temporary
directory and renames it: a save is atomic). A JSON item records a fingerprint of the
run (the config fields that shape the trajectory, parameter shapes and dtypes, a hash of
the data): a run may be extended to more steps, but resuming with a different run
raises `CheckpointError` instead of mixing the two, and an unreadable checkpoint raises
`CheckpointError` naming it. Neither case deletes or overwrites anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}
SCHEDULES = ("constant", "cosine")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: corrupt, or from a different run."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    learning_rate: float = 1e-2
    batch_size: int | None = None  # None: full batch
    optimizer: str = "adam"
    checkpoint_every: int = 500  # steps between checkpoints (when a directory is given)
    log_every: int = 100
    seed: int = 0  # minibatch order
    schedule: str = "constant"  # or "cosine": linear warm-up over warmup_steps, cosine decay to 0 at `steps`
    warmup_steps: int = 0
    clip_norm: float | None = None  # clip the global gradient norm (transformers)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(model, x, y) -> float:
    logits = jax.vmap(model)(jnp.asarray(x))
    return float(jnp.mean(jnp.argmax(logits, axis=-1) == jnp.asarray(y)))


def _check_data(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, *input_shape) (or (N, T) token ids) and integer labels (N,) (or (N, T) next tokens)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"training inputs must be a non-empty (N, *input_shape) array, got shape {x.shape}")
    if y.shape not in ((x.shape[0],), x.shape):
        raise ValueError(f"labels must have shape ({x.shape[0]},) or {x.shape}, got {y.shape}")
    if not np.all(np.isfinite(x)):
        bad_rows = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise ValueError(f"training inputs contain NaN or inf in {bad_rows} rows")
    return x, y.astype(np.int32)


def batch_indices(step: int, n: int, batch_size: int | None, seed: int) -> np.ndarray:
    """Indices of the minibatch of `step`: a function of (seed, step) alone."""
    if batch_size is None or batch_size >= n:
        return np.arange(n)
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[position * batch_size : (position + 1) * batch_size]


# fields that do not change the trajectory: a run may be resumed with more steps or other logging
_TRAJECTORY_FREE = ("steps", "log_every", "checkpoint_every")
_ADDED_LATER = {"schedule": "constant", "warmup_steps": 0, "clip_norm": None}


def _fingerprint(config: TrainConfig, params, x: np.ndarray, y: np.ndarray) -> str:
    shapes = jax.tree_util.tree_map(lambda a: f"{a.dtype}{list(a.shape)}", params)
    data = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    free = set(_TRAJECTORY_FREE)
    if config.schedule != "constant":
        free.discard("steps")  # a decay ends at `steps`: more steps is another trajectory
    trajectory = {k: v for k, v in dataclasses.asdict(config).items() if k not in free}
    # fields added later are left out while at their defaults, so earlier checkpoints still resume
    trajectory = {k: v for k, v in trajectory.items() if not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    text = json.dumps({"config": trajectory, "params": str(shapes), "data": data}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _manager(directory: Path, config: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.checkpoint_every, max_to_keep=2, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory.resolve(), options=options, item_names=("state", "meta"))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")
    learning_rate = config.learning_rate
    if config.schedule == "cosine":
        # decays over the configured steps, so extending a cosine run changes its trajectory
        learning_rate = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1),
                                                           max(config.steps, config.warmup_steps + 1))
    optimizer = OPTIMIZERS[config.optimizer](learning_rate)
    if config.clip_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
    return optimizer


def train(model: nnx.Module, x, y, config: TrainConfig = TrainConfig(), *, checkpoint_dir=None, name: str = "train",
          log=None) -> dict:
    """Train `model` in place; returns {"history": [...], "resumed_from": step or None}.

    `log` receives progress lines (default: stderr every `log_every` steps).
    """
    x, y = _check_data(x, y)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(params)

    @jax.jit
    def step_fn(params, opt_state, xb, yb):
        def loss_fn(params):
            logits = jax.vmap(nnx.merge(graphdef, params, rest))(xb)
            return cross_entropy(logits, yb)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    fingerprint = _fingerprint(config, params, x, y)
    start, history, manager, resumed = 0, [], None, None
    if checkpoint_dir is not None:
        manager = _manager(Path(checkpoint_dir), config)
        latest = manager.latest_step()
        if latest is not None and latest > config.steps:
            raise CheckpointError(f"checkpoint in {checkpoint_dir} is at step {latest}, past the {config.steps} steps "
                                  "asked for; ask for at least as many steps or use another directory")
        if latest is not None:
            params, opt_state, start, history = _restore(manager, latest, params, opt_state, fingerprint, checkpoint_dir)
            resumed = start
            log(f"{name}: resumed from step {start} in {checkpoint_dir}")

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    for step in range(start, config.steps):
        idx = batch_indices(step, len(x), config.batch_size, config.seed)
        xb, yb = (xj, yj) if len(idx) == len(x) else (xj[idx], yj[idx])
        params, opt_state, loss = step_fn(params, opt_state, xb, yb)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            history.append({"step": done, "loss": float(loss)})
            log(f"{name}: step {done}/{config.steps} loss {float(loss):.4f}")
        if manager is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            _save(manager, done, params, opt_state, fingerprint, history)
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    nnx.update(model, params)
    return {"history": history, "resumed_from": resumed}


def _save(manager, step, params, opt_state, fingerprint, history) -> None:
    state = {"params": params, "opt_state": opt_state}
    meta = {"step": step, "fingerprint": fingerprint, "history": history}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                 force=True)


def _restore(manager, step, params, opt_state, fingerprint, directory):
    target = {"params": params, "opt_state": opt_state}
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as error:  # noqa: BLE001 - any failure to read means the same thing to the user
        raise CheckpointError(f"checkpoint step {step} in {directory} is corrupt or unreadable "
                              f"({type(error).__name__}: {error}); move it away to start over") from error
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint in {directory} belongs to a different run (fingerprint {meta.get('fingerprint')} != "
            f"{fingerprint}: config, model shape or data differ); use another directory or remove it"
        )
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"checkpoint step {step} in {directory} is corrupt or unreadable "
                              f"({type(error).__name__}: {error}); move it away to start over") from error
    return state["params"], state["opt_state"], int(meta["step"]), list(meta["history"])
