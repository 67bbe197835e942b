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

DATASETS = (*TOY_DATASETS, "digits", "csv")
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
    layers: tuple[str, ...] = ("relu", "relu", "relu", "relu")  # one kind per hidden layer: depth = len
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
    kinds = value.split(",") if isinstance(value, str) else value
    if not isinstance(kinds, (list, tuple)) or not kinds:
        raise ConfigError(f"layers must be a list of 1 to {MAX_DEPTH} layer kinds, got {value!r}")
    kinds = tuple(str(k).strip().lower().replace("-", "_").replace(" ", "_") for k in kinds)
    unknown = [k for k in kinds if k not in LAYER_KINDS]
    if unknown:
        raise ConfigError(f"unknown activation {unknown[0]!r}; valid: {', '.join(LAYER_KINDS)}")
    if not 1 <= len(kinds) <= MAX_DEPTH:
        raise ConfigError(f"depth must be between 1 and {MAX_DEPTH} layers, got {len(kinds)}")
    return kinds


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
        elif name in ("residual", "layernorm"):
            value = _flag(name, value)
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
    if config.probe_layer > config.depth + 1:  # a shallower net: look at its output
        config = dataclasses.replace(config, probe_layer=config.depth + 1)
    return config


def to_query(config: Config) -> str:
    """The URL query string holding every field (the page's shareable state)."""
    fields = dataclasses.asdict(config)
    fields["layers"] = ",".join(config.layers)
    fields["residual"], fields["layernorm"] = int(config.residual), int(config.layernorm)
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
    return {**dataclasses.asdict(config), "layers": list(config.layers)}
