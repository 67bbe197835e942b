"""Array types with their shapes, for the annotations of the public functions (jaxtyping).

`Float[AnyArray, "*batch m n"]` reads: a floating array, JAX or NumPy, whose last two axes
are (m, n) after any leading batch axes; names shared between arguments and results of one
call must agree. Public functions carry `@shape_checked`: every call is checked (jaxtyping
with beartype, ~20 µs a call) and a mismatch is a ValueError naming the argument, in the
tests and in use alike.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
from beartype import beartype
from jaxtyping import Float, Int, Shaped, TypeCheckError, jaxtyped  # noqa: F401  (Float, Int, Shaped re-exported)

AnyArray = jax.Array | np.ndarray


def shape_checked(fn):
    """Check `fn`'s jaxtyping annotations on every call; a mismatch is a ValueError that names
    the argument, what it got and what it should be (the library's promise for bad input)."""
    checked = jaxtyped(typechecker=beartype)(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return checked(*args, **kwargs)
        except TypeCheckError as error:
            raise ValueError(f"{fn.__name__}: {_summary(str(error))}") from error

    return wrapper


def _summary(message: str) -> str:
    """jaxtyping's report in one line: which argument, what it got, what shape it should have."""
    name = re.search(r"parameter '(\w+)'", message)
    actual = re.search(r"Actual value: (.*)", message)
    plain = re.search(r"Expected type: <class '([\w.]+)'>", message)  # a non-array annotation (int, str, ...)
    if name and actual and plain:
        return f"argument {name.group(1)} is {actual.group(1).strip()}; expected {plain.group(1)}"
    other = re.search(r"Expected type: (.*)", message)  # a union or generic: int | None, Sequence[...]
    if name and actual and other and not re.search(r"(Float|Int|Shaped)\[", other.group(1)):
        expected_type = re.sub(r"<class '([\w.]+)'>", r"\1", other.group(1).strip()).replace("typing.", "").rstrip(".")
        return f"argument {name.group(1)} is {actual.group(1).strip()}; expected {expected_type}"
    expected = re.search(r"(Float|Int|Shaped)\[[^,]+, '([^']*)'\]", message)
    if "return" in message.split("Actual value")[0] and name is None:
        return "returned a value of the wrong type or shape (a bug: please report it)\n" + message
    if name and actual and expected:
        kind = {"Float": "a floating-point", "Int": "an integer", "Shaped": "an"}[expected.group(1)]
        bound = re.findall(r"^(\w+)=(\d+)$", message.split("axis annotation are as follows.")[-1], flags=re.M)
        known = f", with {', '.join(f'{k}={v}' for k, v in bound)} from the arguments before it" if bound else ""
        return (f"argument {name.group(1)} is {actual.group(1).strip()}; expected {kind} array (JAX or NumPy) of "
                f"shape ({expected.group(2)}){known}")
    return " ".join(line.strip() for line in message.splitlines()[:4])


def as_float_array(name: str, value, *, finite: bool = False) -> jax.Array:
    """`value` as a floating JAX array, refusing what a silent conversion would corrupt: non-numeric
    or boolean data, and float64 values that JAX's default float32 would turn into inf (beyond
    ±3.4e38) or into 0 (nonzero below 1e-45). Integers become floats. `finite=True` also refuses
    NaN and inf. Tracers pass through unchecked."""
    if isinstance(value, jax.core.Tracer):
        return value
    array = _as_float_array(name, value)
    if finite and not bool(jax.numpy.all(jax.numpy.isfinite(array))):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def real_numeric(dtype) -> bool:
    """Whether arrays of `dtype` hold real numbers: not bool, not complex (whose imaginary part a
    conversion to float would drop), not strings or objects."""
    return np.dtype(dtype) != np.dtype(bool) and np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)


def _as_float_array(name: str, value) -> jax.Array:
    array = value if isinstance(value, jax.Array) else np.asarray(value)
    if not real_numeric(array.dtype):
        raise ValueError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating):
        return jax.numpy.asarray(array, dtype=jax.dtypes.canonicalize_dtype(np.float64))
    target = jax.dtypes.canonicalize_dtype(array.dtype)
    if isinstance(array, np.ndarray) and np.finfo(target).bits < np.finfo(array.dtype).bits and array.size:
        magnitude = np.abs(array[np.isfinite(array)])
        limits = np.finfo(target)
        if magnitude.size and magnitude.max() > limits.max:
            raise ValueError(f"{name} holds values up to {magnitude.max():.3g}, beyond {target}'s range "
                             f"({limits.max:.3g}): JAX would make them inf. Rescale, or enable float64 with "
                             "jax.config.update('jax_enable_x64', True)")
        if np.any((magnitude > 0) & (magnitude < limits.smallest_subnormal)):
            raise ValueError(f"{name} holds nonzero values as small as {magnitude[magnitude > 0].min():.3g}, below "
                             f"{target}'s smallest ({limits.smallest_subnormal:.3g}): JAX would make them 0. Rescale, "
                             "or enable float64 with jax.config.update('jax_enable_x64', True)")
    return jax.numpy.asarray(array)
