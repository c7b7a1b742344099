"""Test configuration: 8 fake CPU devices (set before jax is imported) and shared fixtures."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

CHILD = "JAXDD_TEST_CHILD"  # set in the fresh process that runs isolated tests
REPORT = "JAXDD_TEST_REPORT"  # that process's file of results, one JSON line per test phase
_ISOLATED_RESULTS = pytest.StashKey[dict]()  # the results an isolated tests' process returned, not yet reported
ISOLATED_TIMEOUT = 600  # seconds one isolated test may run without a result


def pytest_configure(config):
    config.addinivalue_line("markers", "isolated: run in a fresh Python process, so that an abort of XLA's runtime "
                                       "(several simulated devices) fails this test with its message, not the run")


def pytest_runtest_logreport(report):
    """In an isolated tests' process: write each phase's outcome for the parent (`_run_isolated`)."""
    if os.environ.get(CHILD) and os.environ.get(REPORT) and (report.when == "call" or report.outcome != "passed"):
        with open(os.environ[REPORT], "a") as f:
            f.write(json.dumps(dict(nodeid=report.nodeid, outcome=report.outcome, text=report.longreprtext)) + "\n")


def _run_isolated(items, rootpath) -> dict:
    """Run `items` in order in one fresh process (a shared compilation cache, one start-up for all); return
    {nodeid: (outcome, text)} of the tests it finished. If the process aborts, crashes or stops reporting for
    ISOLATED_TIMEOUT seconds, the test it was running gets ("failed", the end of its output) and the tests
    after it get no entry: each starts a fresh process at its turn."""
    with tempfile.TemporaryDirectory() as tmp:
        report, log = os.path.join(tmp, "report.jsonl"), os.path.join(tmp, "out.log")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *[i.nodeid for i in items]]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=rootpath, env={**os.environ, CHILD: "1", REPORT: report},
                                    stdout=out, stderr=subprocess.STDOUT, text=True)
            last, seen, hung = time.monotonic(), 0, False
            while proc.poll() is None:
                time.sleep(0.5)
                size = os.path.getsize(report) if os.path.exists(report) else 0  # grows with every result
                if size != seen:
                    last, seen = time.monotonic(), size
                elif time.monotonic() - last > ISOLATED_TIMEOUT:
                    hung = True
                    proc.kill()
                    proc.wait()
        results: dict = {}
        lines = Path(report).read_text().splitlines() if os.path.exists(report) else []
        for r in map(json.loads, lines):
            outcome, text = results.get(r["nodeid"], ("passed", ""))
            if outcome == "passed":  # the first phase that did not pass decides
                results[r["nodeid"]] = (r["outcome"], r["text"])
        output = Path(log).read_text()
        fatal = output.rfind("Fatal Python error")  # XLA's own message comes just before Python's
        tail = output[max(0, fatal - 4000):fatal + 2000] if fatal >= 0 else output[-6000:]
    stopped = next((i.nodeid for i in items if i.nodeid not in results), None)
    if stopped is not None:  # the process ended (or was killed) inside this test
        how = (f"a hang: no result after {ISOLATED_TIMEOUT} s" if hung else
               f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}")
        results[stopped] = ("failed", f"the test's own process failed ({how}):\n{tail}")
    return results


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A test marked `isolated` runs in a fresh process, together with the isolated tests after it in this
    session (one start-up for all); an abort, a crash or a hang fails the test it happened in with the end of
    that process's output, and the tests after it run in a new process."""
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(CHILD):
        return None
    results = pyfuncitem.session.stash.setdefault(_ISOLATED_RESULTS, {})
    if pyfuncitem.nodeid not in results:
        items = pyfuncitem.session.items
        after = items[items.index(pyfuncitem):]
        results.update(_run_isolated([i for i in after if i.get_closest_marker("isolated") is not None
                                      and i.nodeid not in results], pyfuncitem.config.rootpath))
    outcome, text = results.pop(pyfuncitem.nodeid)
    if outcome == "skipped":
        pytest.skip(text.splitlines()[-1] if text else "skipped in the isolated process")
    if outcome != "passed":
        pytest.fail(text, pytrace=False)
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
