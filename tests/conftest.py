"""Test configuration: 8 fake CPU devices (set before jax is imported) and shared fixtures."""

import os
import subprocess
import sys

# 8 simulated devices. XLA's CPU collectives abort the process when a device's thread misses a rendezvous
# for 40 s; under load that was a real deadlock (every thread of XLA's pool waiting in a collective, issue 29),
# which jaxdd.xla_options.configure_cpu guards against with a pool of 4 threads per simulated device (before
# JAX's CPU client exists); every multi-device test still runs isolated, so an abort would fail one test.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxdd import xla_options  # noqa: E402

xla_options.configure_cpu(malloc=False)  # NPROC for the simulated devices (inherited by isolated tests' processes)

CHILD = "JAXDD_TEST_CHILD"  # set in the fresh process that runs one isolated test
ISOLATED_TIMEOUT = 600


def pytest_configure(config):
    config.addinivalue_line("markers", "isolated: run in a fresh Python process, so that an abort of XLA's runtime "
                                       "(several simulated devices) fails this test with its message, not the run")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A test marked `isolated` runs as `python -m pytest NODEID` in a fresh process (the compilation cache
    is shared); an abort, a crash or a hang fails it with the end of that process's output."""
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(CHILD):
        return None
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid]
    try:
        proc = subprocess.run(cmd, cwd=pyfuncitem.config.rootpath, env={**os.environ, CHILD: "1"}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=ISOLATED_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"no result after {ISOLATED_TIMEOUT} s (a hang):\n{(err.output or '')[-4000:]}", pytrace=False)
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        pytest.fail(f"the test's own process failed ({how}):\n{proc.stdout[-6000:]}", pytrace=False)
    return True


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
