"""Test configuration: 8 fake CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """The bundled digits data set, standardized, with a validation split."""
    from jaxdd import data

    return data.load("digits", val_fraction=0.1)


@pytest.fixture
def key():
    return jax.random.key(0)


# One tiny distillation for the tests where the point is exactness, not accuracy: a 4-wide depth-1 network,
# T 6, W 3, 64 real images per outer step, and a 2-network, 20-step evaluation.
TINY_SETTINGS = dict(width=4, depth=1, unroll_steps=6, window=3, real_batch=64, eval_steps=20, eval_models=2)


@pytest.fixture
def tiny():
    """The shared tiny distillation settings (`TINY_SETTINGS`), a fresh dict per test: ``distill(..., **tiny)``.
    A test file that adds settings of its own overrides it: ``def tiny(tiny): return {**tiny, ...}``."""
    return dict(TINY_SETTINGS)


# Tests compile many identical jitted steps (every distill() call builds its own closure): a persistent
# compilation cache makes repeats cheap within one run.
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAXDD_TEST_JAX_CACHE", "/tmp/jaxdd-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
