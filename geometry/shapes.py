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
