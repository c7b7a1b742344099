"""XLA settings jaxdd uses on CPU, each measured in benchmarks/RESULTS.md ("CPU: what moved the ratios").

- `compiler_options()`: per-`jax.jit` XLA options (jax.jit's public ``compiler_options``), applied by
  jaxdd's own jitted steps (`jit`). On CPU: YNNPACK fusions only for reductions
  (``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE``). jaxlib 0.10's default also
  hands matmuls and convolutions to YNNPACK, whose convolution is slow for the kernel-gradient shapes
  of `models._conv_kgrad` and whose fusions first write every broadcast operand out at full size;
  with YNNPACK off entirely, XLA's own large reductions (reduce-window) are slower still.
  Elsewhere: no options. ``JAXDD_XLA_OPTIONS=0`` turns them off.
- `configure_cpu(threads=None, malloc=True)`: process settings for the CPU runtime, to call before
  JAX starts its backend (the CLI does, first thing): the size of XLA's CPU thread pool (``NPROC``,
  read by XLA when the CPU client is created; default = all cores) and glibc malloc without
  mmap for large blocks, so that XLA's per-step buffers of tens of MB are reused from the heap
  instead of being mapped and page-faulted anew at every execution.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import jax
import jax.numpy as jnp

ENV_OFF = "JAXDD_XLA_OPTIONS"

#: Per-jit XLA options on the CPU backend.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.lru_cache(maxsize=None)
def _accepted(backend: str, items: tuple) -> bool:
    """Whether this jaxlib compiles with these options (experimental XLA options come and go)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(jnp.zeros((2,), jnp.float32)).compile()
        return True
    except Exception:  # noqa: BLE001 - an unknown or invalid option: run without it
        return False


def compiler_options(backend: str | None = None) -> dict:
    """The XLA compiler options jaxdd passes to `jax.jit` on `backend` (default: JAX's default backend)."""
    if os.environ.get(ENV_OFF, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return {}
    items = tuple(sorted(CPU_COMPILER_OPTIONS.items()))
    return dict(items) if _accepted(backend, items) else {}


def jit(fun=None, **kwargs):
    """`jax.jit` with `compiler_options()` merged into any ``compiler_options`` given."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters

# Simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) run their collectives on XLA's intra-op
# pool, which XLA sizes max(NPROC or all cores, N): on a 2-core machine exactly N threads. A collective waits on its
# pool thread for the other devices, and one device may start two independent collectives at once, so N waiting
# threads can hold the whole pool while one device's collective has no thread to run on: a deadlock, which XLA's
# rendezvous turns into an abort after 40 s (issue 29: the abort log shows 8 of 8 pool threads waiting, 7 in one
# all-gather and 1 in an all-reduce of the same execution, and with the timeout raised a test hung 1200 s). A pool
# several times N leaves threads free for the late device.
THREADS_PER_SIMULATED_DEVICE = 4


def simulated_devices() -> int:
    """N of --xla_force_host_platform_device_count=N in XLA_FLAGS (1 when absent)."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_force_host_platform_device_count="):
            try:
                return int(flag.split("=", 1)[1])
            except ValueError:
                return 1
    return 1


def configure_cpu(threads: int | None = None, *, malloc: bool = True) -> dict:
    """Process settings for JAX on CPU; call before the first JAX computation. Returns what was set.

    threads: size of XLA's CPU thread pool (None: leave XLA's default, all cores, or with N simulated devices
    and no NPROC set, 4 N threads (THREADS_PER_SIMULATED_DEVICE); the 1-thread benchmarks use 1). malloc: on glibc, serve large allocations from the heap (mallopt
    M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 1 GiB): peak memory is unchanged, freed memory is kept for
    reuse instead of being returned to the system after every step.
    """
    done = {}
    simulated = simulated_devices()
    if threads is None and simulated > 1 and "NPROC" not in os.environ:
        threads = max(os.cpu_count() or 1, THREADS_PER_SIMULATED_DEVICE * simulated)
    if threads is not None:
        os.environ["NPROC"] = str(int(threads))
        done["NPROC"] = int(threads)
    if malloc and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
            done["malloc"] = bool(ok)
        except (OSError, AttributeError):  # not glibc
            done["malloc"] = False
    return done
