"""What the page can ask for: one validated, immutable `Config`, read from a request or a URL.

Every field has a range; anything else is a `ConfigError` whose message names the field,
what was given and what is allowed, so the page can show it next to the control. The
same `Config` is the URL's query string (`to_query` / `from_query`), the exported
config JSON, and the key a trained model is rebuilt from.
"""

from __future__ import annotations

import dataclasses
import math
from urllib.parse import parse_qs, urlencode

from geometry.data import DATASETS as TOY_DATASETS
from geometry.data import REGRESSION_DATASETS

CLASSIFICATION_DATASETS = (*TOY_DATASETS, "digits", "csv")
DATASETS = (*TOY_DATASETS, "digits", *REGRESSION_DATASETS, "csv")  # "csv": a user's file, for either problem
PROBLEMS = ("classification", "regression")
REGULARIZATIONS = ("none", "l1", "l2")
# TensorFlow Playground's input features, as functions of the plane point (x₁, x₂); the URL names
FEATURES = ("x1", "x2", "x1sq", "x2sq", "x1x2", "sinx1", "sinx2")
LINEAR_FEATURES = ("x1", "x2")
MAX_BATCH = 512
# "none" is the identity (a linear layer); "yat" and "rbf" replace Dense + φ by a kernel layer
LAYER_KINDS = ("none", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softplus", "elu", "yat", "rbf")
KERNEL_KINDS = ("yat", "rbf")
MAX_DEPTH, MAX_WIDTH = 8, 256
RESOLUTIONS = (64, 96, 128, 192, 256)


class ConfigError(ValueError):
    """A request asked for something the playground does not offer; the message says what to send."""


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "spiral"
    noise: float = 0.1
    problem: str = "classification"  # or "regression" (MSE; the map shows the predicted value)
    features: tuple[str, ...] = ("x1", "x2")  # the net's inputs, functions of the plane point (FEATURES)
    train_percent: int = 80  # share of the points trained on (per class for classification)
    batch_size: int = 0  # 0: full batch
    regularization: str = "none"  # "l1": rate · Σ|w|; "l2": rate · ½ Σ w² (weights, not biases)
    regularization_rate: float = 0.0
    discretize: bool = False  # the output map shows the decision only (regression: above / below the middle)
    layers: tuple[str, ...] = ("relu", "relu", "relu", "relu")  # one kind per hidden layer: depth = len (0: none)
    width: int = 32
    residual: bool = False
    layernorm: bool = False
    learning_rate: float = 0.01
    seed: int = 0
    probe_layer: int = 4  # whose geometry the maps show: 1..depth, or depth + 1 for the logits
    resolution: int = 128  # geometry maps are resolution² points
    steps_per_update: int = 5  # optimizer steps between two streamed frames

    @property
    def depth(self) -> int:
        return len(self.layers)


def _shown(value) -> str:
    """A value as the user typed it: 0 for "0" from a form or a URL, quoted only when empty or not numeric."""
    if isinstance(value, str):
        try:
            float(value)
            return value
        except ValueError:
            return repr(value)
    return repr(value)


def _number(name: str, value, kind, lo, hi):
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{name} must be a number in [{lo:g}, {hi:g}], got {_shown(value)}")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(1e309), which JSON reads as inf
        raise ConfigError(f"{name} must be a number in [{lo:g}, {hi:g}], got {_shown(value)}") from None
    if kind is int and float(value) != number:
        raise ConfigError(f"{name} must be a whole number in [{lo}, {hi}], got {_shown(value)}")
    if not (math.isfinite(number) and lo <= number <= hi):
        raise ConfigError(f"{name} must be in [{lo:g}, {hi:g}], got {_shown(value)}")
    return number


def _flag(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "on", "yes"):
        return True
    if str(value).lower() in ("0", "false", "off", "no", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _layers(value) -> tuple[str, ...]:
    if value in ("", [], ()):  # no hidden layer: the features go straight to the readout
        return ()
    kinds = value.split(",") if isinstance(value, str) else value
    if not isinstance(kinds, (list, tuple)):
        raise ConfigError(f"layers must be a list of 0 to {MAX_DEPTH} layer kinds, got {value!r}")
    kinds = tuple(str(k).strip().lower().replace("-", "_").replace(" ", "_") for k in kinds)
    unknown = [k for k in kinds if k not in LAYER_KINDS]
    if unknown:
        raise ConfigError(f"unknown activation {unknown[0]!r}; valid: {', '.join(LAYER_KINDS)}")
    if not len(kinds) <= MAX_DEPTH:
        raise ConfigError(f"depth must be between 0 and {MAX_DEPTH} layers, got {len(kinds)}")
    return kinds


def _features(value) -> tuple[str, ...]:
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"features must be a list of {', '.join(FEATURES)}, got {value!r}")
    names = tuple(str(n).strip().lower().replace("²", "sq").replace("_", "").replace(" ", "") for n in names if str(n).strip())
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ConfigError(f"unknown feature {unknown[0]!r}; valid: {', '.join(FEATURES)}")
    if not names:
        raise ConfigError(f"choose at least one input feature of {', '.join(FEATURES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"feature given twice in {','.join(names)}")
    return tuple(n for n in FEATURES if n in names)  # one canonical order: the same net whatever the click order


def parse(fields: dict, base: Config = Config()) -> Config:
    """`base` with the given fields replaced, each checked; unknown fields are refused by name."""
    if not isinstance(fields, dict):
        raise ConfigError(f"a config is a JSON object of fields, got {type(fields).__name__}")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    values = dataclasses.asdict(base)
    for name, value in fields.items():
        if name == "dataset":
            if value not in DATASETS:
                raise ConfigError(f"unknown dataset {value!r}; valid: {', '.join(DATASETS)}")
        elif name == "layers":
            value = _layers(value)
        elif name in ("residual", "layernorm", "discretize"):
            value = _flag(name, value)
        elif name == "problem":
            if value not in PROBLEMS:
                raise ConfigError(f"unknown problem {value!r}; valid: {', '.join(PROBLEMS)}")
        elif name == "regularization":
            if value not in REGULARIZATIONS:
                raise ConfigError(f"unknown regularization {value!r}; valid: {', '.join(REGULARIZATIONS)}")
        elif name == "regularization_rate":
            value = _number(name, value, float, 0.0, 10.0)
        elif name == "features":
            value = _features(value)
        elif name == "train_percent":
            value = _number(name, value, int, 10, 90)
        elif name == "batch_size":
            value = _number(name, value, int, 0, MAX_BATCH)
        elif name == "noise":
            value = _number(name, value, float, 0.0, 1.0)
        elif name == "width":
            value = _number(name, value, int, 1, MAX_WIDTH)
        elif name == "learning_rate":
            value = _number(name, value, float, 1e-5, 1.0)
        elif name == "seed":
            value = _number(name, value, int, 0, 2**31 - 1)
        elif name == "probe_layer":
            value = _number(name, value, int, 1, MAX_DEPTH + 1)
        elif name == "resolution":
            value = _number(name, value, int, RESOLUTIONS[0], RESOLUTIONS[-1])
            if value not in RESOLUTIONS:
                raise ConfigError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {value}")
        elif name == "steps_per_update":
            value = _number(name, value, int, 1, 100)
        values[name] = value
    config = Config(**values)
    if config.problem == "regression" and config.dataset not in (*REGRESSION_DATASETS, "csv"):
        raise ConfigError(f"dataset {config.dataset!r} is a classification set; for regression use one of "
                          f"{', '.join((*REGRESSION_DATASETS, 'csv'))}")
    if config.problem == "classification" and config.dataset not in CLASSIFICATION_DATASETS:
        raise ConfigError(f"dataset {config.dataset!r} is a regression set; set problem=regression, or use one of "
                          f"{', '.join(CLASSIFICATION_DATASETS)}")
    if config.probe_layer > config.depth + 1:  # a shallower net: look at its output
        config = dataclasses.replace(config, probe_layer=config.depth + 1)
    return config


def to_query(config: Config) -> str:
    """The URL query string holding every field (the page's shareable state)."""
    fields = dataclasses.asdict(config)
    fields["layers"] = ",".join(config.layers)
    fields["features"] = ",".join(config.features)
    fields["residual"], fields["layernorm"] = int(config.residual), int(config.layernorm)
    fields["discretize"] = int(config.discretize)
    return urlencode(fields)


def from_query(query: str) -> Config:
    """`parse` of a query string; a field given twice is refused."""
    fields = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if len(values) != 1:
            raise ConfigError(f"field {name!r} given {len(values)} times")
        fields[name] = values[0]
    return parse(fields)


def as_json(config: Config) -> dict:
    return {**dataclasses.asdict(config), "layers": list(config.layers), "features": list(config.features)}
