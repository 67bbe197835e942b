"""The shared checks of public functions' numeric arguments, with one wording for their errors.

Every message names the argument, what it must be and what it got, so the caller can fix the
call without reading the source:

    number("tol", tol, low=0, low_open=True)         # "tol must be a finite number > 0, got nan"
    integer("k", k, low=1, high=r)                   # "k must be an integer in [1, 12], got 13"
    finite_array("values", values, ndim=1)           # float64 NumPy, refusing NaN / inf / wrong rank

They run on the host: arguments that are tracers (inside `jax.jit`) are returned unchecked.
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '≥'} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '≤'} {high:g}"
    return ""


def _refuse_non_scalar(value, wanted: str) -> None:
    """A bool, a non-number or an array of more than one element is no scalar argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)) \
            or np.ndim(value) != 0:
        raise ValueError(f"{wanted}, got {value!r}")


def number(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> float:
    """`value` as a finite float within the bounds.

    Args:
        name: the argument's name, as the caller wrote it.
        value: a real number (bool is refused: True is not a tolerance).
        low: the smallest allowed value (None: unbounded below).
        high: the largest allowed value (None: unbounded above).
        low_open: exclude `low` itself.
        high_open: exclude `high` itself.

    Returns:
        The value as a Python float.

    Raises:
        ValueError: not a real number, NaN or infinite, or out of bounds.
    """
    if isinstance(value, jax.core.Tracer):
        return value
    wanted = f"{name} must be a finite number {_interval(low, high, low_open, high_open)}".rstrip()
    _refuse_non_scalar(value, wanted)
    value = float(value)
    if not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low))) \
            or (high is not None and (value > high or (high_open and value == high))):
        raise ValueError(f"{wanted}, got {value!r}")
    return value


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """`value` as a Python int within [low, high].

    Args:
        name: the argument's name, as the caller wrote it.
        value: an integer, or a float with an integral value (2.0); bool is refused.
        low: the smallest allowed value (None: unbounded below).
        high: the largest allowed value (None: unbounded above).

    Returns:
        The value as a Python int.

    Raises:
        ValueError: not an integer, or out of bounds.
    """
    wanted = f"{name} must be an integer {_interval(low, high, False, False)}".rstrip()
    _refuse_non_scalar(value, wanted)
    if isinstance(value, numbers.Integral) or np.issubdtype(np.asarray(value).dtype, np.integer):
        result = int(value)
    elif math.isfinite(float(value)) and float(value).is_integer():
        result = int(float(value))
    else:
        raise ValueError(f"{wanted}, got {value!r}")
    if (low is not None and result < low) or (high is not None and result > high):
        raise ValueError(f"{wanted}, got {result}")
    return result


def finite_array(name: str, value, *, ndim: int | tuple[int, ...] | None = None, min_ndim: int | None = None,
                 nonempty: bool = True) -> np.ndarray:
    """`value` as a float64 NumPy array of real, finite numbers.

    Args:
        name: the argument's name, as the caller wrote it.
        value: array-like of real numbers (bool, complex and object data are refused).
        ndim: the number (or allowed numbers) of axes (None: any).
        min_ndim: the fewest axes allowed (None: any).
        nonempty: refuse arrays with no elements.

    Returns:
        (shape of value) float64 array.

    Raises:
        ValueError: non-numeric, boolean or complex data, the wrong number of axes, no elements, or
            NaN / inf (with how many and the first position).
    """
    array = np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must be an array of real numbers, got dtype {array.dtype}")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and array.ndim not in allowed:
        raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} axes, got shape {array.shape}")
    if min_ndim is not None and array.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got shape {array.shape}")
    if nonempty and array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} holds NaN or inf at {int(bad.sum())} of {array.size} entries (first at "
                         f"{first}); find where they come from")
    return array
