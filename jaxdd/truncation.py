"""Truncation schedules: where the differentiated window of the unroll sits, and how long it is.

A schedule is a small pure state machine (the shape of learned_optimization's truncation schedules):

    init()               -> state        a pytree of arrays (lives in the jitted step and in checkpoints)
    sample(state, key)   -> (prefix, length)   int32 scalars for one inner network
    update(state, stats) -> state        after each outer step, from that step's statistics

`max_window` is the static length of the window scan; a sampled `length <= max_window` runs through
the masked window (unless `masked` is False: then every length equals max_window) (`jaxdd.unroll.run_window(..., length=...)`), so a traced length never recompiles.
`stats` is a dict: grad_norms float32 [P, T] (per member and inner step; 0 where the step did not
run), steps_run int32 [P] (prefix + length), accuracy (mean real-batch accuracy of the unrolled
networks), step (the outer step index). See docs/methods/bptt.md.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxdd.errors import require


class Schedule(NamedTuple):
    init: Callable[[], Any]
    sample: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
    update: Callable[[Any, dict], Any]
    max_window: int
    masked: bool = True  # False: every sample's length is max_window (the plain window scan serves)
    positions: int = 1  # > 1: a curriculum; the state's "position" picks the window (set by the plateau rule)


def _i32(x):
    return jnp.asarray(x, jnp.int32)


def _stateless(sample, max_window: int) -> Schedule:
    return Schedule(init=lambda: {}, sample=sample, update=lambda state, stats: state, max_window=max_window,
                    masked=False)


def full(total: int) -> Schedule:
    """Full BPTT: no prefix, all `total` steps differentiated."""
    return _stateless(lambda state, key: (_i32(0), _i32(total)), total)


def fixed(total: int, window: int) -> Schedule:
    """T-BPTT: the last `window` of `total` steps (prefix T − W)."""
    return _stateless(lambda state, key: (_i32(total - window), _i32(window)), window)


def random(total: int, window: int) -> Schedule:
    """RaT-BPTT: prefix N ~ UniformInt[0, T − W] (both ends included), then `window` steps."""
    return _stateless(lambda state, key: (jax.random.randint(key, (), 0, total - window + 1, dtype=jnp.int32),
                                          _i32(window)), window)


def moving_prefixes(total: int, window: int) -> tuple[int, ...]:
    """The prefixes of the moving window: 0, W, 2W, ... capped at T − W (RaT-BPTT's authors' `--cctype 1`
    with `--minwindow 0`: their curriculum moves by W at each plateau up to T − W)."""
    return tuple(sorted({min(k * window, total - window) for k in range(-(-(total - window) // window) + 1)}))


def moving(total: int, window: int) -> Schedule:
    """A curriculum: the window starts at prefix 0 and moves by W at each plateau of the validation
    accuracy (jaxdd/stopping.py) up to the last W of T; state {"position": int32}."""
    prefixes = jnp.asarray(moving_prefixes(total, window), jnp.int32)
    return Schedule(init=lambda: {"position": _i32(0)},
                    sample=lambda state, key: (prefixes[state["position"]], _i32(window)),
                    update=lambda state, stats: state, max_window=window, masked=False, positions=len(prefixes))


SCHEDULES = {"full": full, "fixed": fixed, "random": random, "moving": moving}


def check(total: int, window: int) -> None:
    """One-line errors for a window that does not fit the unroll."""
    require(total >= 1, f"--unroll-steps must be at least 1, got {total}")
    require(1 <= window <= total, f"--window {window} must be between 1 and --unroll-steps {total}")


def sample_population(schedule: Schedule, state, keys, *, held=None, fresh_now=True):
    """(prefix [P], length [P]) for P members, one key each. With `held` = (prefix, length) of the
    previous step, members keep them unless `fresh_now` (per-pass redraws: fresh only on a pass's
    first step)."""
    prefix, length = jax.vmap(lambda k: schedule.sample(state, k))(keys)
    if held is not None:
        prefix = jnp.where(fresh_now, prefix, held[0])
        length = jnp.where(fresh_now, length, held[1])
    return prefix, length
