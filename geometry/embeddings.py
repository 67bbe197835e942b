"""The spectrum of a representation: complete and dimensional collapse of embeddings (N, d).

    spectrum = embedding_spectrum(Z)            # Z: (N, d) embeddings of N inputs
    acc = EmbeddingAccumulator(d)               # the same numbers from batches
    for Z_batch in batches: acc.add(Z_batch)
    spectrum = acc.result()

Every number comes from four running sums, accumulated in float64 on the host (so batches of
any size and order give the same result up to rounding): N, Σ z, Σ z zᵀ and Σ z/‖z‖.

Conventions (each key of the result says which):
* ``singular_values``: of the *uncentred* embedding matrix Z, descending — Garrido et al.'s
  RankMe (ICML 2023) is computed from these. ``centred_singular_values``: of Z − 1 μᵀ.
* ``covariance_eigenvalues``: of C = (Z − 1μᵀ)ᵀ(Z − 1μᵀ) / (N − 1), the unbiased covariance
  (Jing et al.'s "singular value spectrum of the embedding covariance", which they plot on a
  log scale; C is symmetric positive semi-definite, so its singular values are these).
* ``rankme`` = exp(−Σ p_k log p_k) with p_k = σ_k / ‖σ‖₁ + ε, σ the singular values of Z and
  ε = 1e-7 — RankMe exactly as Garrido et al. define it (uncentred, ε added to every p_k).
  Without ε it is the project's Roy–Vetterli effective rank (`spectra.effective_rank`); the
  ε changes it by less than d · ε · (1 + |log ε|) ≈ 2e-6 · d. ``centred_rankme``: the same
  on Z − 1μᵀ (a constant offset shared by all embeddings adds one direction to the uncentred
  one: a completely collapsed encoder has rankme ≈ 1 and centred_rankme ≈ 0 or noise).
* ``explained_variance``: cumulative fraction of the total variance in the top k covariance
  directions, k = 1..d; ``dimensions_for_99_percent``: the smallest such k reaching 0.99.
* ``numerical_rank``: covariance eigenvalues above rtol · λ_max, rtol = (max(N, d) · eps)²
  for the dtype the embeddings arrived in (NumPy's matrix_rank tolerance on the centred
  singular values, squared), and above the float64 rounding of the centring (16 d eps₆₄ ·
  λ_max(ZᵀZ) / (N − 1)); ``numerical_rank_threshold`` is the eigenvalue cut used;
  ``collapsed_dimensions`` = d − numerical_rank.
* ``std``: per-dimension standard deviation √(C_jj); ``vicreg_variance`` = mean_j
  max(0, γ − √(C_jj + ε)) with γ = 1, ε = 1e-4 (Bardes et al.'s variance term on one branch);
  ``vicreg_covariance`` = (1/d) Σ_{i≠j} C_ij² (their covariance term on one branch);
  ``off_diagonal_fraction`` = Σ_{i≠j} C_ij² / Σ_ij C_ij² (0: decorrelated dimensions).
* ``relative_variance`` = tr C / (‖μ‖² + tr C): the share of the embeddings' second moment that
  is spread rather than a common offset — 0 when every input maps to one point (complete
  collapse), whatever that point is.
* ``mean_pairwise_cosine``: mean of cos(z_i, z_j) over ordered pairs i ≠ j, from
  (‖Σ u_i‖² − Σ ‖u_i‖²) / (N (N − 1)) with u_i = z_i / ‖z_i‖; an exactly zero embedding has no
  direction: it counts as u = 0 (cosine 0 with every other) and is counted in ``zero_rows``.
* ``normalised_std``: Chen & He's collapse monitor — the standard deviation (over inputs,
  divided by N) of each coordinate of u = z/‖z‖, averaged over the d coordinates: 0 when every
  embedding points the same way, ≈ 1/√d for directions spread evenly over the sphere.
  Neither it nor the cosine sees a collapse onto the origin (tiny embeddings in all
  directions); ``total_std`` = √tr C, compared with its value elsewhere (at initialisation),
  does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geometry import validation

RANKME_EPS = 1e-7  # Garrido et al.'s ε
VICREG_GAMMA, VICREG_EPS = 1.0, 1e-4  # Bardes et al.'s target standard deviation and its ε


def rankme(sigma, eps: float = RANKME_EPS) -> float:
    """RankMe of singular values σ (any order): exp(−Σ p log p), p = σ / ‖σ‖₁ + eps; 0 for σ = 0."""
    sigma = np.asarray(sigma, dtype=np.float64)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total + eps
    return float(np.exp(-np.sum(p * np.log(np.where(p > 0, p, 1.0)))))  # 0 log 0 = 0 (only with eps = 0)


def _as_embeddings(Z, dim: int | None = None) -> np.ndarray:
    Z = np.asarray(Z)
    if np.iscomplexobj(Z):
        raise ValueError("embeddings must be real; got a complex array")
    if Z.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, d), got shape {Z.shape}; flatten each input's "
                         "representation to one row first")
    if dim is not None and Z.shape[1] != dim:
        raise ValueError(f"embeddings of dimension {Z.shape[1]}, but the accumulator was made for dim={dim}")
    if not np.issubdtype(Z.dtype, np.number) or np.issubdtype(Z.dtype, np.bool_):
        raise ValueError(f"embeddings must be numbers, got dtype {Z.dtype}")
    if not np.all(np.isfinite(Z)):
        rows = np.flatnonzero(~np.isfinite(Z).all(axis=1))
        raise ValueError(f"embeddings contain NaN or inf in {len(rows)} rows (first: row {rows[0]}); the model "
                         "produced them — check its inputs and training")
    return Z


class EmbeddingAccumulator:
    """`embedding_spectrum` from batches: add(Z) any number of times, then result()."""

    def __init__(self, dim: int):
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self.zero_rows = 0
        self.sum = np.zeros(self.dim)
        self.second_moment = np.zeros((self.dim, self.dim))  # Σ z zᵀ
        self.unit_sum = np.zeros(self.dim)  # Σ z / ‖z‖
        self.unit_squares = np.zeros(self.dim)  # Σ (z / ‖z‖)² per coordinate
        self.eps = 0.0  # the coarsest machine epsilon among the batches' dtypes

    def add(self, Z) -> None:
        Z = _as_embeddings(Z, self.dim)
        if np.issubdtype(Z.dtype, np.floating):
            self.eps = max(self.eps, float(np.finfo(Z.dtype).eps))
        Z = Z.astype(np.float64)
        norms = np.linalg.norm(Z, axis=1)
        self.count += len(Z)
        self.zero_rows += int(np.sum(norms == 0))
        self.sum += Z.sum(axis=0)
        self.second_moment += Z.T @ Z
        units = Z / np.where(norms > 0, norms, 1.0)[:, None]
        self.unit_sum += units.sum(axis=0)
        self.unit_squares += (units**2).sum(axis=0)

    def result(self) -> dict:
        n, d = self.count, self.dim
        if n < 2:
            raise ValueError(f"the spectrum of embeddings needs at least 2 rows, got {n}: add more data")
        mean = self.sum / n
        scatter = self.second_moment - n * np.outer(mean, mean)  # (Z − 1μᵀ)ᵀ(Z − 1μᵀ)
        scatter = (scatter + scatter.T) / 2
        gram_eigenvalues = np.clip(np.linalg.eigvalsh((self.second_moment + self.second_moment.T) / 2)[::-1], 0, None)
        scatter_eigenvalues = np.clip(np.linalg.eigvalsh(scatter)[::-1], 0, None)
        rank_cap = min(n, d)
        singular_values = np.sqrt(gram_eigenvalues[:rank_cap])
        centred_singular_values = np.sqrt(scatter_eigenvalues[: min(n - 1, d)])
        covariance = scatter / (n - 1)
        eigenvalues = scatter_eigenvalues / (n - 1)
        total = eigenvalues.sum()
        explained = np.cumsum(eigenvalues) / total if total > 0 else np.zeros(d)
        eps = self.eps or float(np.finfo(np.float64).eps)
        rtol = (max(n, d) * eps) ** 2
        # the sums are float64, but centring Σ z zᵀ − N μ μᵀ loses eps64 · ‖Σ z zᵀ‖: below that nothing is resolved
        floor = 16 * d * np.finfo(np.float64).eps * gram_eigenvalues[0] / (n - 1)
        threshold = max(rtol * eigenvalues[0], floor)
        numerical_rank = int(np.sum(eigenvalues > threshold)) if eigenvalues[0] > 0 else 0
        variances = np.clip(np.diag(covariance), 0, None)
        off_diagonal = covariance - np.diag(np.diag(covariance))
        off_energy = float(np.sum(off_diagonal**2))
        energy = float(np.sum(covariance**2))
        unit_rows = n - self.zero_rows
        return {
            "count": n, "dim": d, "zero_rows": self.zero_rows,
            "singular_values": singular_values, "centred_singular_values": centred_singular_values,
            "covariance_eigenvalues": eigenvalues,
            "rankme": rankme(singular_values), "centred_rankme": rankme(centred_singular_values),
            "explained_variance": explained,
            "dimensions_for_99_percent": int(np.searchsorted(explained, 0.99 - 1e-12) + 1) if total > 0 else 0,
            "numerical_rank": numerical_rank, "numerical_rank_threshold": threshold, "collapsed_dimensions": d - numerical_rank,
            "std": np.sqrt(variances),
            "vicreg_variance": float(np.mean(np.maximum(0.0, VICREG_GAMMA - np.sqrt(variances + VICREG_EPS)))),
            "vicreg_covariance": off_energy / d,
            "off_diagonal_fraction": off_energy / energy if energy > 0 else 0.0,
            "relative_variance": float(total / (mean @ mean + total)) if mean @ mean + total > 0 else 0.0,
            "total_std": float(np.sqrt(total)),
            "normalised_std": float(np.mean(np.sqrt(np.clip(self.unit_squares / n - (self.unit_sum / n) ** 2, 0,
                                                            None)))),
            "mean_pairwise_cosine": float((self.unit_sum @ self.unit_sum - unit_rows) / (n * (n - 1))),
            "conventions": {
                "rankme": "Garrido et al.: uncentred singular values of Z, p = σ/‖σ‖₁ + 1e-7",
                "covariance": "unbiased, divided by N - 1",
                "vicreg_variance": "mean_j max(0, 1 - sqrt(C_jj + 1e-4)), one branch",
                "vicreg_covariance": "(1/d) sum_{i != j} C_ij^2, one branch",
                "numerical_rank": "covariance eigenvalues > max((max(N, d) eps)^2 lambda_max, float64 rounding of the centring)",
                "mean_pairwise_cosine": "ordered pairs i != j; zero rows count as cosine 0",
                "normalised_std": "Chen & He: mean over coordinates of the std (ddof 0) of z/|z|",
            },
        }


def embedding_spectrum(Z) -> dict:
    """Collapse measures of embeddings Z (N, d); see the module docstring for every key's convention."""
    Z = _as_embeddings(Z)
    if Z.shape[0] == 0:
        raise ValueError("embeddings are empty (0 rows): pass at least 2")
    accumulator = EmbeddingAccumulator(Z.shape[1])
    accumulator.add(Z)
    return accumulator.result()


@functools.partial(jax.jit, static_argnames=("classes", "iterations"))
def _fit_logistic(features, labels, classes: int, l2: float, iterations: int):
    def loss(weights):
        logits = features @ weights["w"] + weights["b"][None, :]
        data_term = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return data_term + 0.5 * l2 * jnp.sum(weights["w"] ** 2)

    weights = {"w": jnp.zeros((features.shape[1], classes), features.dtype), "b": jnp.zeros(classes, features.dtype)}
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry, _):
        weights, state = carry
        value, grad = value_and_grad(weights, state=state)
        updates, state = solver.update(grad, state, weights, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(weights, updates), state), None

    with jax.numpy_dtype_promotion("standard"):  # optax's line search mixes int32 counters with floats
        (weights, _), _ = jax.lax.scan(body, (weights, solver.init(weights)), None, length=iterations)
    return weights, loss(weights)


MAX_PROBE_CLASSES_PER_LABEL = 4  # a head larger than this many times the classes present (and > 1024) is refused


def linear_probe(train_features, train_labels, test_features, test_labels, *, l2: float = 1e-4,
                 iterations: int = 200) -> dict:
    """Accuracy of a linear classifier on frozen features: multinomial logistic regression with an
    L2 penalty (l2/2)‖W‖² on features standardised with the training set's mean and standard
    deviation (a constant dimension is left at 0), fitted by L-BFGS (optax, `iterations` steps,
    float64 when x64 is on, else float32) from zero. Deterministic. Returns train and test accuracy
    and the final training objective."""
    train_features = _as_embeddings(train_features).astype(np.float64)
    test_features = _as_embeddings(test_features, train_features.shape[1]).astype(np.float64)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if train_labels.shape != (len(train_features),) or test_labels.shape != (len(test_features),):
        raise ValueError(f"labels must have one entry per row: got {train_labels.shape} for {len(train_features)} "
                         f"training rows and {test_labels.shape} for {len(test_features)} test rows")
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
            raise ValueError(f"{name} must be integer class indices >= 0 (got dtype {labels.dtype}, smallest "
                             f"{labels.min() if labels.size else None}); map your labels to 0..C-1 first")
    l2 = validation.number("l2", l2, low=0)
    iterations = validation.integer("iterations", iterations, low=1)
    classes_seen = np.unique(np.concatenate([train_labels, test_labels]))
    if classes_seen[-1] + 1 > MAX_PROBE_CLASSES_PER_LABEL * len(classes_seen) and classes_seen[-1] + 1 > 1024:
        raise ValueError(f"the largest label is {classes_seen[-1]} but only {len(classes_seen)} classes occur: the "
                         f"probe's head would have {classes_seen[-1] + 1} mostly unused outputs. Map the labels "
                         "to 0..C-1 first (np.unique(labels, return_inverse=True))")
    mean, std = train_features.mean(axis=0), train_features.std(axis=0)
    scale = np.where(std > 0, std, np.inf)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    standardise = lambda f: jnp.asarray((f - mean) / scale, dtype)  # noqa: E731
    weights, objective = _fit_logistic(standardise(train_features), jnp.asarray(train_labels, jnp.int32), classes,
                                       l2, iterations)
    predict = lambda f: np.asarray(jnp.argmax(standardise(f) @ weights["w"] + weights["b"][None, :], axis=1))  # noqa: E731
    return {"train_accuracy": float(np.mean(predict(train_features) == train_labels)),
            "test_accuracy": float(np.mean(predict(test_features) == test_labels)),
            "objective": float(objective), "l2": l2, "iterations": iterations}
