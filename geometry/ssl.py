"""Self-supervised objectives on two views, and the two-branch model they train.

Losses of embeddings, each a pure function of two (N, d) arrays (row i of both: two views of
input i), averaged over the batch:

* `info_nce(z1, z2, temperature)` — SimCLR's NT-Xent (Chen et al. 2020): the 2N rows
  normalised, s_ij = cos(z_i, z_j) / τ, for every row −log(exp s_i,pos / Σ_{k≠i} exp s_ik),
  averaged over the 2N rows.
* `vicreg(z1, z2, invariance, variance, covariance)` — Bardes et al.'s three terms in their
  reference implementation's normalisation: invariance = mean over all N·d entries of
  (z1 − z2)²; variance = mean_j max(0, 1 − √(Var z_j + 1e-4)) averaged over the two branches;
  covariance = (1/d) Σ_{i≠j} C_ij² summed over the two branches (C unbiased). Weights 25, 25, 1.
  `vicreg_terms` returns the three unweighted.
* `byol(p1, p2, t1, t2)` — Grill et al.: ‖p̂ − t̂‖² = 2 − 2 cos(p, t), symmetrised (p1 against
  the target's t2 and p2 against t1, summed); the target t is stop-gradient.
* `simsiam(p1, p2, z1, z2, stop_gradient=True)` — Chen & He: −½ cos(p1, sg z2) − ½ cos(p2, sg z1);
  `stop_gradient=False` is their collapsing ablation.
* `alignment(z1, z2)` — mean ‖z1 − z2‖²: pulls views together and pushes nothing apart, the
  control that collapses completely.

`Siamese(encoder, projector, predictor=None, ema=None)` holds the branches; with `ema` it keeps
an exponential-moving-average target copy of encoder + projector (BYOL) in `target_encoder`
/ `target_projector`, excluded from training by `trainable(model)`'s filter and moved by
`ema_update(model)` after each step. `SSLLoss(method, ...)` is a frozen dataclass and a
`loss_fn(model, (x1, x2))` for `training.train_step`: hashable by value, so one compiled step
serves every run of a method.

`fit(model, x, loss, config, augment)` trains a `Siamese` model on unlabelled x: each step takes
the minibatch `training.batch_indices` gives, draws two views with `augment(key, batch)` (key =
fold_in(key(seed), step), so a run is a function of the seed), takes `training.train_step`, and
moves the EMA target — all in one jitted program — and calls `measure(model)` at the steps in
`measure_at`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geometry import training, validation
from geometry.functional import Static

METHODS = ("simclr", "vicreg", "byol", "simsiam", "simsiam_no_stop_gradient", "alignment")


def _normalise(z: jax.Array) -> jax.Array:
    # the 1e-12 keeps an exactly zero embedding (complete collapse under relu) finite: its cosines are 0
    return z / jnp.sqrt(jnp.sum(z**2, axis=-1, keepdims=True) + 1e-12)


def _two_views(z1, z2, loss: str) -> None:
    """The views' shapes are static, so this holds under jit too: (N, d) each, the same N ≥ 2."""
    if jnp.ndim(z1) != 2 or jnp.shape(z1) != jnp.shape(z2):
        raise ValueError(f"{loss} takes two views of the same (N, d) shape, got {jnp.shape(z1)} and {jnp.shape(z2)}")
    if jnp.shape(z1)[0] < 2:
        raise ValueError(f"{loss} needs at least 2 samples per view (its statistics are over the batch), got "
                         f"{jnp.shape(z1)[0]}")


def info_nce(z1: jax.Array, z2: jax.Array, temperature: float = 0.5) -> jax.Array:
    _two_views(z1, z2, "info_nce")
    temperature = validation.number("temperature", temperature, low=0, low_open=True)
    n = z1.shape[0]
    z = _normalise(jnp.concatenate([z1, z2]))  # (2N, d)
    logits = z @ z.T / temperature  # (2N, 2N)
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    log_probability = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(log_probability, positive[:, None], axis=1))


def _variance_and_covariance(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    n, d = z.shape
    centred = z - z.mean(axis=0, keepdims=True)
    covariance = centred.T @ centred / (n - 1)  # (d, d)
    variance = jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(jnp.diagonal(covariance) + 1e-4)))
    off_diagonal = covariance - jnp.diag(jnp.diagonal(covariance))
    return variance, jnp.sum(off_diagonal**2) / d


def vicreg_terms(z1: jax.Array, z2: jax.Array) -> dict[str, jax.Array]:
    _two_views(z1, z2, "vicreg")
    variance1, covariance1 = _variance_and_covariance(z1)
    variance2, covariance2 = _variance_and_covariance(z2)
    return {"invariance": jnp.mean((z1 - z2) ** 2), "variance": (variance1 + variance2) / 2,
            "covariance": covariance1 + covariance2}


def vicreg(z1, z2, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0) -> jax.Array:
    terms = vicreg_terms(z1, z2)
    return invariance * terms["invariance"] + variance * terms["variance"] + covariance * terms["covariance"]


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(_normalise(a) * _normalise(b), axis=-1)


def byol(p1, p2, t1, t2) -> jax.Array:
    t1, t2 = jax.lax.stop_gradient(t1), jax.lax.stop_gradient(t2)
    return jnp.mean((2 - 2 * _cosine(p1, t2)) + (2 - 2 * _cosine(p2, t1)))


def simsiam(p1, p2, z1, z2, stop_gradient: bool = True) -> jax.Array:
    if stop_gradient:
        z1, z2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
    return -jnp.mean(_cosine(p1, z2) + _cosine(p2, z1)) / 2


def alignment(z1, z2) -> jax.Array:
    return jnp.mean(jnp.sum((z1 - z2) ** 2, axis=-1))


class Siamese(nnx.Module):
    """encoder → representation h, projector → embedding z, optional predictor → p; an optional
    EMA target copy of encoder and projector (BYOL). Every part is any NNX module of one example."""

    def __init__(self, encoder: nnx.Module, projector: nnx.Module, predictor: nnx.Module | None = None, *,
                 ema: float | None = None):
        if ema is not None and not 0 <= ema < 1:
            raise ValueError(f"ema is the target's decay in [0, 1) (BYOL: 0.99-0.996), got {ema}")
        self.encoder, self.projector, self.predictor = encoder, projector, predictor
        self.ema = ema
        self.target_encoder = copy.deepcopy(encoder) if ema is not None else None
        self.target_projector = copy.deepcopy(projector) if ema is not None else None

    def representation(self, x: jax.Array) -> jax.Array:
        return self.encoder(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The embedding z of one example."""
        return self.projector(self.encoder(x))

    def target(self, x: jax.Array) -> jax.Array:
        return self.target_projector(self.target_encoder(x))


def trainable(model: Siamese):
    """The filter of the parameters a step updates: every nnx.Param outside the EMA target."""
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("target_encoder")),
                   nnx.Not(nnx.PathContains("target_projector")))


def ema_update(model: Siamese) -> None:
    """target ← ema · target + (1 − ema) · online, for encoder and projector (in place)."""
    for online, target in ((model.encoder, model.target_encoder), (model.projector, model.target_projector)):
        online_state, target_state = nnx.state(online, nnx.Param), nnx.state(target, nnx.Param)
        moved = jax.tree_util.tree_map(lambda t, o: model.ema * t + (1 - model.ema) * o, target_state, online_state)
        nnx.update(target, moved)


@dataclasses.dataclass(frozen=True)
class SSLLoss:
    """loss_fn(model, (x1, x2)) of `method` for a `Siamese` model; x1, x2: (N, *input_shape) views."""

    method: str
    temperature: float = 0.5  # simclr
    invariance: float = 25.0  # vicreg's weights
    variance: float = 25.0
    covariance: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown self-supervised method {self.method!r}; valid: {', '.join(METHODS)}")

    def __call__(self, model: Siamese, batch) -> jax.Array:
        x1, x2 = batch
        z1, z2 = jax.vmap(model)(x1), jax.vmap(model)(x2)
        if self.method == "simclr":
            return info_nce(z1, z2, self.temperature)
        if self.method == "vicreg":
            return vicreg(z1, z2, self.invariance, self.variance, self.covariance)
        if self.method == "alignment":
            return alignment(z1, z2)
        if model.predictor is None:
            raise ValueError(f"{self.method} needs a predictor: make the Siamese model with predictor=")
        p1, p2 = jax.vmap(model.predictor)(z1), jax.vmap(model.predictor)(z2)
        if self.method == "byol":
            if model.target_encoder is None:
                raise ValueError("byol needs an EMA target: make the Siamese model with ema= (e.g. 0.99)")
            return byol(p1, p2, jax.vmap(model.target)(x1), jax.vmap(model.target)(x2))
        return simsiam(p1, p2, z1, z2, stop_gradient=self.method == "simsiam")


@functools.partial(jax.jit, static_argnames=("graphdef", "loss_fn", "optimizer", "augment"))
def ssl_step(graphdef: Static, params, rest, opt_state, x, key, *, loss_fn, optimizer, augment):
    """Two views of batch x, one optimizer step, the EMA target moved: (params, rest, opt_state, loss)."""
    first_key, second_key = jax.random.split(key)
    views = (augment(first_key, x), augment(second_key, x))
    params, opt_state, loss = training.train_step(graphdef, params, rest, opt_state, views, loss_fn=loss_fn,
                                                  optimizer=optimizer)
    model = nnx.merge(graphdef.value, params, rest)
    if model.ema is not None:
        ema_update(model)
        _, params, rest = nnx.split(model, trainable(model), ...)
    return params, rest, opt_state, loss


def fit(model: Siamese, x, loss: SSLLoss, config: training.TrainConfig, augment, *, measure=None,
        measure_at=(), log=None) -> dict:
    """Train `model` in place on unlabelled inputs x (N, *input_shape); returns {"history": [{step,
    loss}], "measurements": {step: measure(model)}} (step 0 = before training, when asked for)."""
    if not isinstance(model, Siamese):
        raise TypeError(f"fit trains a geometry.ssl.Siamese model, got {type(model).__name__}: wrap your encoder "
                        "as Siamese(encoder, projector, predictor, ema=)")
    training.check_config(config)
    x, _ = training.check_data(x, np.zeros(len(x)), labels="any")
    if config.batch_size is not None and config.batch_size < 2:
        raise ValueError("self-supervised losses compare examples within a batch: batch_size must be >= 2")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    raw_graphdef, params, rest = nnx.split(model, trainable(model), ...)
    graphdef = Static(raw_graphdef)
    optimizer = training.make_optimizer(config)
    opt_state = optimizer.init(params)
    step_fn = functools.partial(ssl_step, graphdef, loss_fn=loss, optimizer=optimizer, augment=augment)
    base_key = jax.random.key(config.seed)
    history, measurements, measure_at = [], {}, set(measure_at)
    if measure is not None and 0 in measure_at:
        measurements[0] = measure(model)
    xj = jnp.asarray(x)
    for step in range(config.steps):
        idx = training.batch_indices(step, len(x), config.batch_size, config.seed)
        batch = xj if len(idx) == len(x) else xj[idx]
        params, rest, opt_state, value = step_fn(params, rest, opt_state, batch, jax.random.fold_in(base_key, step))
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            value = float(value)
            if not jnp.isfinite(value):
                raise FloatingPointError(f"{loss.method}: the loss became {value} at step {done}; lower the "
                                         "learning rate or check the model")
            history.append({"step": done, "loss": value})
            log(f"{loss.method}: step {done}/{config.steps} loss {value:.4f}")
        if measure is not None and done in measure_at:
            nnx.update(model, params, rest)
            measurements[done] = measure(model)
    nnx.update(model, params, rest)
    return {"history": history, "measurements": measurements}
