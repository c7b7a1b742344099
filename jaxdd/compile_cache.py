"""A persistent XLA compilation cache, so that a repeated command skips compiling.

`enable()` points JAX's persistent compilation cache (``jax_compilation_cache_dir``) at a directory
under the user's cache directory: the first run of a command compiles and stores each executable,
later runs with the same shapes, settings and jax/jaxlib version load it instead, which shortens the
start-up and the peak memory the compiler holds (benchmarks/RESULTS.md, "Start-up"). Call it once,
before the first compilation.

Directory: ``cache_dir`` if given, else ``$JAXDD_CACHE_DIR/jax``, else ``$XDG_CACHE_HOME/jaxdd/jax``,
else ``~/.cache/jaxdd/jax``. A cache directory the user already gave JAX (``JAX_COMPILATION_CACHE_DIR``
or ``jax.config``) is kept. Off with ``enable(False)`` (the CLI's ``--no-compile-cache``) or the
environment variable ``JAXDD_NO_COMPILE_CACHE=1``. Entries are keyed by JAX on the computation, the
compile options, the devices and the jax/jaxlib versions, so a stale entry is never used; the
directory can be deleted at any time.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax

ENV_DIR = "JAXDD_CACHE_DIR"
ENV_OFF = "JAXDD_NO_COMPILE_CACHE"

#: Compilations faster than this are not written to the cache (JAX's default is 1 s; the small
#: jitted helpers of a distillation compile in well under a second each and add up at start-up).
MIN_COMPILE_SECONDS = 0.2


def disabled_by_env() -> bool:
    return os.environ.get(ENV_OFF, "").strip().lower() not in ("", "0", "false", "no")


def default_dir() -> Path:
    """``$JAXDD_CACHE_DIR/jax``, else ``$XDG_CACHE_HOME/jaxdd/jax``, else ``~/.cache/jaxdd/jax``."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser() / "jax"
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(root).expanduser() / "jaxdd" / "jax"


def resolve(cache_dir: str | os.PathLike | bool | None = None) -> Path | None:
    """The directory `enable(cache_dir)` would use, or None when the cache is off."""
    if cache_dir is False or disabled_by_env():
        return None
    if cache_dir is None or cache_dir is True:
        return default_dir()
    return Path(cache_dir).expanduser()


def enable(cache_dir: str | os.PathLike | bool | None = None, *,
           min_compile_seconds: float = MIN_COMPILE_SECONDS) -> str | None:
    """Turn on JAX's persistent compilation cache; return the directory in use, or None when off.

    cache_dir: None (default directory, see the module docstring), a path, or False (off). With None,
    a directory already configured in JAX is kept. An unwritable directory gives a warning and no cache.
    """
    path = resolve(cache_dir)
    if path is None:
        return None
    configured = jax.config.jax_compilation_cache_dir
    if cache_dir in (None, True) and configured:
        path = Path(configured)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"compilation cache disabled: cannot create {path}: {e}", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return str(path)


# ---------------------------------------------------------------------------------------------------
# how long compiling took: JAX reports tracing, lowering and backend compilation (a persistent-cache
# hit included) as jax.monitoring duration events; one listener, registered once, adds them up.

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_totals = {"seconds": 0.0, "hits": 0}


def _on_duration(name: str, seconds: float, **_) -> None:
    if name in _COMPILE_EVENTS:
        _totals["seconds"] += float(seconds)


def _on_event(name: str, **_) -> None:
    if name == "/jax/compilation_cache/cache_hits":
        _totals["hits"] += 1


_listening = False


def compile_clock() -> dict:
    """The running totals of compile seconds and persistent-cache hits in this process (a copy); the
    difference of two readings is what was compiled between them."""
    global _listening
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    return dict(_totals)


def describe(before: dict, after: dict) -> str:
    """'compiled in 4.2 s' or 'compiled in 0.9 s (3 programs from the compilation cache)'."""
    hits = after["hits"] - before["hits"]
    cached = f" ({hits} program{'s' * (hits != 1)} from the compilation cache)" if hits else ""
    return f"compiled in {after['seconds'] - before['seconds']:.1f} s{cached}"
