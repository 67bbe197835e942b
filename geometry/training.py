"""Deterministic optax training with Orbax checkpoints that resume.

`train(model, x, y, config, checkpoint_dir=..., loss_fn=...)` minimises
`loss_fn(model, (x_batch, y_batch))` — mean softmax cross-entropy on integer labels by
default (`cross_entropy_loss`), or any scalar function of the model and a batch: a
regression, contrastive or language-model loss. One top-level step, `train_step`, is
jitted with the graph definition, the loss and the optimizer as static arguments, so it
compiles once per (model structure, loss, optimizer config) and later `train` calls with
the same three reuse it. The minibatch of step t depends only on (seed, t) — a fresh
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
import functools
import hashlib
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from geometry import distributed
from geometry.functional import Static

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}
SCHEDULES = ("constant", "cosine", "steps")


class TrainingDivergedError(ValueError):
    """Training produced NaN or inf loss or weights: nothing is written to the model."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: corrupt, or from a different run."""


def check_config(config: "TrainConfig") -> None:
    """ValueError naming the field of a config that cannot train (checked before any step runs)."""
    problems = []
    if int(config.steps) != config.steps or config.steps < 0:
        problems.append(f"steps must be an integer >= 0, got {config.steps}")
    if not (np.isfinite(config.learning_rate) and config.learning_rate > 0):
        problems.append(f"learning_rate must be finite and > 0, got {config.learning_rate}")
    if config.batch_size is not None and (int(config.batch_size) != config.batch_size or config.batch_size < 1):
        problems.append(f"batch_size must be None (full batch) or an integer >= 1, got {config.batch_size}")
    for field in ("checkpoint_every", "log_every"):
        value = getattr(config, field)
        if int(value) != value or value < 1:
            problems.append(f"{field} must be an integer >= 1, got {value}")
    if config.warmup_steps < 0:
        problems.append(f"warmup_steps must be >= 0, got {config.warmup_steps}")
    if not (np.isfinite(config.momentum) and 0 <= config.momentum < 1):
        problems.append(f"momentum must be in [0, 1), got {config.momentum}")
    if config.momentum and config.optimizer != "sgd":
        problems.append(f"momentum is for optimizer='sgd' (adam and adamw have their own), got optimizer={config.optimizer!r}")
    if config.weight_decay is not None and not (np.isfinite(config.weight_decay) and config.weight_decay >= 0):
        problems.append(f"weight_decay must be finite and >= 0, got {config.weight_decay}")
    if not all(0 < f < 1 for f in config.decay_at) or list(config.decay_at) != sorted(config.decay_at):
        problems.append(f"decay_at must be increasing fractions of the steps in (0, 1), got {config.decay_at}")
    if not (np.isfinite(config.decay_factor) and 0 < config.decay_factor <= 1):
        problems.append(f"decay_factor must be in (0, 1], got {config.decay_factor}")
    if config.schedule_steps is not None and (int(config.schedule_steps) != config.schedule_steps
                                              or config.schedule_steps < max(1, config.steps)):
        problems.append(f"schedule_steps must be None or an integer >= steps ({config.steps}), got {config.schedule_steps}")
    if config.clip_norm is not None and not (np.isfinite(config.clip_norm) and config.clip_norm > 0):
        problems.append(f"clip_norm must be None or finite and > 0, got {config.clip_norm}")
    if problems:
        raise ValueError("TrainConfig: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How `train` trains: every field is checked by `check_config` before a step is taken.

    Attributes:
        steps: optimizer steps (≥ 0).
        learning_rate: the base rate (finite, > 0).
        batch_size: examples per step (None: the full batch).
        optimizer: "adam", "adamw" or "sgd".
        checkpoint_every: steps between checkpoints, when a directory is given.
        log_every: steps between progress lines.
        seed: the minibatch order's seed.
        schedule: "constant"; "cosine" (linear warm-up over `warmup_steps`, cosine decay to 0 at
            `steps`); or "steps" (the rate times `decay_factor` at each fraction of `steps` in
            `decay_at`; Papyan et al.: ÷10 at 1/3 and 2/3).
        warmup_steps: linear warm-up length of "cosine".
        clip_norm: clip the global gradient norm (None: no clipping).
        momentum: heavy-ball momentum of "sgd" (0: plain SGD).
        weight_decay: for "sgd" and "adam" coupled L2 (wd · θ added to every gradient, as PyTorch's
            SGD(weight_decay=)); for "adamw" decoupled. None: none for sgd/adam, optax's 1e-4 for adamw.
        decay_at: fractions of the schedule's length where "steps" decays.
        decay_factor: the factor of each decay (in (0, 1]).
        schedule_steps: the length a "steps" / "cosine" schedule is laid out over (None: `steps`), to
            train one trajectory in pieces.
    """
    steps: int = 2000
    learning_rate: float = 1e-2
    batch_size: int | None = None  # None: full batch
    optimizer: str = "adam"
    checkpoint_every: int = 500  # steps between checkpoints (when a directory is given)
    log_every: int = 100
    seed: int = 0  # minibatch order
    schedule: str = "constant"  # or "cosine": linear warm-up over warmup_steps, cosine decay to 0 at `steps`;
    # or "steps": the rate times decay_factor at each fraction of `steps` in decay_at (Papyan et al.: ÷10 at 1/3, 2/3)
    warmup_steps: int = 0
    clip_norm: float | None = None  # clip the global gradient norm (transformers)
    momentum: float = 0.0  # heavy-ball momentum of "sgd" (0: plain SGD)
    # weight decay: for "sgd" and "adam" coupled L2 (wd · θ added to every parameter's gradient before the
    # update, as PyTorch's SGD(weight_decay=) and Papyan et al.'s protocol); for "adamw" decoupled (Loshchilov &
    # Hutter). None: none for sgd/adam, optax's default 1e-4 for adamw
    weight_decay: float | None = None
    decay_at: tuple[float, ...] = (1 / 3, 2 / 3)
    decay_factor: float = 0.1
    # the length the "steps" / "cosine" schedule is laid out over (None: `steps`): set it to a run's final
    # length to train it in pieces (measuring in between) on one trajectory
    schedule_steps: int | None = None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def cross_entropy_loss(model: nnx.Module, batch) -> jax.Array:
    """The default loss: mean cross-entropy of the model's logits (one example per vmapped call)
    against integer labels; labels may carry extra axes (next-token targets (B, T))."""
    x, y = batch
    return cross_entropy(jax.vmap(model)(x), y)


@functools.partial(jax.jit, static_argnames=("graphdef", "loss_fn", "optimizer"))
def train_step(graphdef: Static, params, rest, opt_state, batch, *, loss_fn, optimizer):
    """One optimizer step on `batch`: (params, opt_state, loss). Pure; merges the model inside.
    `graphdef` is the model's graph definition wrapped in `functional.Static`."""

    def loss_of(params):
        return loss_fn(nnx.merge(graphdef.value, params, rest), batch)

    loss, grads = jax.value_and_grad(loss_of)(params)
    # optax mixes its int32 step count with float statistics; the rest of the step stays strict
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def accuracy(model, x, y) -> float:
    logits = jax.vmap(model)(jnp.asarray(x))
    return float(jnp.mean(jnp.argmax(logits, axis=-1) == jnp.asarray(y)))


def check_data(x, y, labels: str = "integer") -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, *input_shape) (or (N, T) token ids) and targets: integer labels (N,) (or (N, T)
    next tokens) for the default loss; with `labels="any"` (a loss of the user's) any finite
    targets with N rows."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"training inputs must be a non-empty (N, *input_shape) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad_rows = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise ValueError(f"training inputs contain NaN or inf in {bad_rows} rows")
    if labels == "any":
        if y.ndim < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"targets must have {x.shape[0]} rows like the inputs, got shape {y.shape}")
        if np.issubdtype(y.dtype, np.inexact) and not np.all(np.isfinite(y)):
            raise ValueError("targets contain NaN or inf")
        return x, y
    if y.shape not in ((x.shape[0],), x.shape):
        raise ValueError(f"labels must have shape ({x.shape[0]},) or {x.shape}, got {y.shape}")
    if np.issubdtype(y.dtype, np.inexact) and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise ValueError("labels for the cross-entropy loss must be integers (class indices); for other targets "
                         "pass your own loss_fn")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(y.min())} ({int((y < 0).sum())} negative)")
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
# fields added after checkpoints existed: left out of the fingerprint at their defaults, so those runs still resume
_LATER_FIELDS = {"momentum": 0.0, "weight_decay": None, "decay_at": (1 / 3, 2 / 3), "decay_factor": 0.1,
                 "schedule_steps": None}


def _graph_description(graphdef) -> str:
    """The model's structure with every static attribute (activations, norms, flags, init
    functions), without the memory addresses that differ between processes and runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(graphdef))


def _fingerprint(config: TrainConfig, params, x: np.ndarray, y: np.ndarray, loss_fn, graphdef=None) -> str:
    # the graph too: a tanh MLP has the same parameter shapes as a ReLU one, and must not resume it
    shapes = jax.tree_util.tree_map(lambda a: f"{a.dtype}{list(a.shape)}", params)
    data = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    free = set(_TRAJECTORY_FREE)
    if config.schedule != "constant" and config.schedule_steps is None:
        free.discard("steps")  # a decay ends at `steps`: more steps is another trajectory
    trajectory = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in free and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    if config.schedule != "steps":  # the decay points only shape a "steps" schedule
        trajectory.pop("decay_at", None), trajectory.pop("decay_factor", None)
    loss = f"{getattr(loss_fn, '__module__', '?')}.{getattr(loss_fn, '__qualname__', type(loss_fn).__name__)}"
    graph = "" if graphdef is None else hashlib.sha256(_graph_description(graphdef).encode()).hexdigest()
    text = json.dumps({"config": trajectory, "params": str(shapes), "data": data, "loss": loss, "graph": graph},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _manager(directory: Path, config: TrainConfig) -> ocp.CheckpointManager:
    # under several processes each manager serves its own process alone (no barriers with the
    # others, which train the same model independently); only process 0 creates and writes
    this_process = jax.process_index()
    if distributed.is_writer():
        directory.mkdir(parents=True, exist_ok=True)  # Orbax creates no folder for a subset of processes
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.checkpoint_every, max_to_keep=2, enable_async_checkpointing=False,
        create=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=this_process,
                                                                   active_processes={this_process}),
    )
    return ocp.CheckpointManager(directory.resolve(), options=options, item_names=("state", "meta"))


@functools.lru_cache(maxsize=64)
def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optimizer of a config; one object per config, so the jitted step is cached on it."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")
    learning_rate = config.learning_rate
    total = config.schedule_steps or config.steps
    if config.schedule == "cosine":
        # decays over the configured steps, so extending a cosine run changes its trajectory
        learning_rate = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1),
                                                           max(total, config.warmup_steps + 1))
    if config.schedule == "steps":  # piecewise constant: × decay_factor at each fraction of the steps
        boundaries = sorted({max(1, int(round(f * total))) for f in config.decay_at})

        def learning_rate(count):
            rate = jnp.asarray(config.learning_rate, jnp.float32)
            for boundary in boundaries:
                rate = jnp.where(count >= boundary, rate * jnp.float32(config.decay_factor), rate)
            return rate
    if config.optimizer == "sgd":
        optimizer = optax.sgd(learning_rate, momentum=config.momentum or None)
    elif config.optimizer == "adamw" and config.weight_decay is not None:
        optimizer = optax.adamw(learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = OPTIMIZERS[config.optimizer](learning_rate)
    if config.weight_decay and config.optimizer != "adamw":  # coupled L2: the gradient of (wd / 2) ‖θ‖²
        optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay), optimizer)
    if config.clip_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
    return optimizer


def train(model: nnx.Module, x, y, config: TrainConfig = TrainConfig(), *, loss_fn=cross_entropy_loss,
          checkpoint_dir=None, name: str = "train", log=None) -> dict:
    """Train `model` in place with optax, deterministically, checkpointing with Orbax.

    Under several processes (`geometry.distributed`) every process trains its own copy the same
    way, resuming from the checkpoints it can read, and only process 0 writes them.

    Args:
        model: the NNX module, updated in place.
        x: (N, ...) inputs.
        y: (N,) targets (integer labels for the default loss).
        config: steps, learning rate, batch size, optimizer, schedule, weight decay, ...
            (`TrainConfig`; checked before anything runs).
        loss_fn: `loss_fn(model, (x_batch, y_batch))` → the scalar to minimise (default: mean
            cross-entropy on integer labels). Pass a module-level function, not a new lambda per
            call, so the compiled step is reused.
        checkpoint_dir: a directory for Orbax checkpoints every `config.checkpoint_every` steps; an
            interrupted run resumes from the last one (None: no checkpoints).
        name: the run's name in the progress lines.
        log: a callable receiving progress lines (default: stderr every `config.log_every` steps).

    Returns:
        dict: "history" (a list of {"step", "loss", ...} records) and "resumed_from" (the step a
        checkpoint was restored from, or None).

    Raises:
        ValueError: a config out of range (every problem listed), inputs and targets of different
            lengths, NaN / inf in the data, or a checkpoint_dir that is empty or a file.
        TrainingDivergedError: the loss or the weights became NaN or inf (a ValueError; the model keeps
            the weights it had).
        CheckpointError: a checkpoint in `checkpoint_dir` that is corrupt or from a different run.
    """
    check_config(config)
    if checkpoint_dir is not None and (not str(checkpoint_dir).strip() or Path(checkpoint_dir).is_file()):
        raise ValueError(f"checkpoint_dir={str(checkpoint_dir)!r} is {'a file' if str(checkpoint_dir).strip() else 'empty'}"
                         ": pass a directory for the checkpoints, or None for none")
    x, y = check_data(x, y, labels="integer" if loss_fn is cross_entropy_loss else "any")
    if loss_fn is cross_entropy_loss:  # a label past the last logit makes the loss NaN, silently
        classes = jax.eval_shape(lambda v: model(v), jax.ShapeDtypeStruct(x.shape[1:], x.dtype)).shape[-1]
        if y.max() >= classes:
            raise ValueError(f"labels go up to {int(y.max())} but the model has {classes} outputs (classes 0.."
                             f"{classes - 1})")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    raw_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    graphdef = Static(raw_graphdef)
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(params)
    step_fn = functools.partial(train_step, graphdef, loss_fn=loss_fn, optimizer=optimizer)
    fingerprint = _fingerprint(config, params, x, y, loss_fn, raw_graphdef)
    start, history, manager, resumed = 0, [], None, None
    writer = distributed.is_writer()  # under jax.distributed the others only read checkpoints
    if checkpoint_dir is not None and (writer or Path(checkpoint_dir).is_dir()):
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
        params, opt_state, loss = step_fn(params, rest, opt_state, (xb, yb))
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            history.append({"step": done, "loss": float(loss)})
            log(f"{name}: step {done}/{config.steps} loss {float(loss):.4f}")
            if not np.isfinite(float(loss)):
                _diverged(name, done, history, config)
        if writer and manager is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            _save(manager, done, params, opt_state, fingerprint, history)
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(params)):
        _diverged(name, config.steps, history, config)
    nnx.update(model, params)
    return {"history": history, "resumed_from": resumed}


def _diverged(name: str, step: int, history: list, config: "TrainConfig") -> None:
    finite = [record["step"] for record in history if np.isfinite(record["loss"])]
    raise TrainingDivergedError(
        f"{name}: training diverged by step {step} (the loss or the weights are NaN or inf; last finite loss at step "
        f"{finite[-1] if finite else 'none logged'}): lower the learning rate ({config.learning_rate:g}), clip the "
        "gradient norm (clip_norm=) or standardise the inputs. The model keeps the weights it had before train().")


def _save(manager, step, params, opt_state, fingerprint, history) -> None:
    state = {"params": params, "opt_state": opt_state}
    if jax.process_count() > 1:  # Orbax refuses process-local jax.Arrays when several processes run
        state = jax.device_get(state)
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
    if meta.get("step") != step:  # an edited or mixed-up record: resuming would re-run finished steps
        raise CheckpointError(f"checkpoint step {step} in {directory} records step {meta.get('step')!r}: it was "
                              "edited or mixed up; move it away to start over")
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
