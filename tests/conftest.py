"""Strict JAX settings for the whole suite: warnings are errors (pyproject), NaNs raise,
ranks of arrays are never silently promoted, and everything runs on the CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_debug_nans", False)  # some tests feed NaN on purpose to check the errors


@pytest.fixture
def x64():
    """Run a test body with float64 enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield
