"""Strict JAX settings for the whole suite: warnings are errors (pyproject), a NaN produced
inside any JAX computation raises (`jax_debug_nans`; tests that make NaNs on purpose use the
`nans_allowed` fixture), ranks and dtypes are never silently promoted, and everything runs on
the CPU."""

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_debug_nans", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Every compiled XLA:CPU program keeps about three memory mappings until JAX's caches let it go.
    The suite compiles well over 20 000 programs: past Linux's default limit of 65 530 mappings
    per process, where the next compilation aborts the whole run (it did: exit 134 inside
    test_spectra, on CI and here). Clearing the caches after each module bounds the count by the
    largest module's programs."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def nans_allowed():
    """For tests that produce NaN on purpose (to check how it is reported)."""
    with jax.debug_nans(False):
        yield


@pytest.fixture
def x64():
    """Run a test body with float64 enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield
