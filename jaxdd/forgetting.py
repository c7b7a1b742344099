"""Forgetting events (Toneva et al., ICLR 2019): running counters over the presentations of N examples.

A forgetting event is an example predicted correctly at one presentation and incorrectly at the next;
an example never predicted correctly gets the maximum, the number of presentations. Higher = harder.
The expert trainer (jaxdd/experts/training.py) updates these counters after every epoch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdd.errors import require

class ForgettingState(NamedTuple):
    """Running forgetting counters over the presentations of N examples (leading axes allowed)."""

    last: jax.Array  # bool [N]: correct at the previous presentation
    learned: jax.Array  # bool [N]: correct at least once
    events: jax.Array  # int32 [N]: correct -> incorrect transitions so far


def init(num_examples: int, leading: tuple[int, ...] = ()) -> ForgettingState:
    """Counters before the first presentation (nothing correct, nothing forgotten), shape
    ``leading + (num_examples,)`` (e.g. ``leading=(experts,)`` for a vmapped group)."""
    shape = tuple(leading) + (num_examples,)
    return ForgettingState(jnp.zeros(shape, bool), jnp.zeros(shape, bool), jnp.zeros(shape, jnp.int32))


def update(state: ForgettingState, correct: jax.Array) -> ForgettingState:
    """Add one presentation: ``correct`` bool [N], each example's prediction before its update."""
    forgot = state.last & ~correct
    return ForgettingState(correct, state.learned | correct, state.events + forgot.astype(jnp.int32))


def finalize(state: ForgettingState, presentations: int) -> jax.Array:
    """Forgetting counts: events, or ``presentations`` for examples never predicted correctly."""
    return jnp.where(state.learned, state.events, jnp.int32(presentations))


def counts(correct) -> jax.Array:
    """Forgetting counts from a whole history ``correct`` bool [presentations, N] -> int32 [N].

    A forgetting event is correct at one presentation and incorrect at the next; an example never
    correct gets the maximum, the number of presentations. Higher = harder.
    """
    correct = jnp.asarray(correct, bool)
    require(correct.ndim == 2, f"correct must be [presentations, N], got shape {correct.shape}")
    state, _ = jax.lax.scan(lambda s, c: (update(s, c), None), init(correct.shape[1]), correct)
    return finalize(state, correct.shape[0])
