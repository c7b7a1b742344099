"""When a run ends: after --steps (``steps``), or on a validation plateau (``plateau``), as pure functions.

The plateau rule follows RaT-BPTT's training loop (Feng et al., framework/base.py), with the number
it watches changed from theirs to the validation accuracy (docs/methods/bptt.md, "When a run ends"):
at every evaluation (every ``--eval-every`` meta-steps) a validation accuracy above the best so far is
the new best (its set is kept); otherwise, once ``--patience`` meta-steps have passed since the last
improvement or curriculum move, the rule either moves the curriculum to its next position (the counter
restarts, the best is kept) or, at the last position (or without a curriculum), stops the run.

The state is a small value; `replay` rebuilds it from the metrics rows of the evaluations, which is how
a resumed run continues with exactly the state it stopped with (the rows past the checkpoint are
dropped and recomputed, so the state matches the checkpoint's step).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

STOPS = ("steps", "plateau")
VALUE = "val_accuracy"  # the metrics row field the rule watches (higher is better)


class Plateau(NamedTuple):
    """The rule's state. best: the highest value so far (-inf before the first evaluation); best_step:
    the step it was measured at (the set kept as the result); since: the step patience counts from (the
    last improvement or curriculum move); position: the curriculum position (0 .. positions - 1);
    stopped: the rule has ended the run; evaluations: how many it has seen."""

    best: float = -math.inf
    best_step: int = 0
    since: int = 0
    position: int = 0
    stopped: bool = False
    evaluations: int = 0


def init() -> Plateau:
    return Plateau()


def update(state: Plateau, step: int, value: float, *, patience: int, positions: int = 1) -> tuple[Plateau, str]:
    """The state after an evaluation at `step` measuring `value`, and what happened: "best" (a new best:
    keep this set), "wait", "move" (go to curriculum position `state.position`) or "stop".

    An improvement is strictly higher (a NaN never improves). Patience is checked at evaluations only:
    with evaluations every E steps, the rule acts at the first evaluation at least `patience` steps after
    `since`. positions: the curriculum's positions (1: no curriculum, the first plateau stops)."""
    state = state._replace(evaluations=state.evaluations + 1)
    if state.stopped:
        return state, "stop"
    if value > state.best:
        return state._replace(best=float(value), best_step=int(step), since=int(step)), "best"
    if step - state.since < patience:
        return state, "wait"
    if state.position + 1 < positions:
        return state._replace(position=state.position + 1, since=int(step)), "move"
    return state._replace(stopped=True), "stop"


def replay(rows: Iterable[dict], *, patience: int, positions: int = 1) -> Plateau:
    """The state after the evaluations recorded in `rows` (metrics rows; those with a `VALUE` count)."""
    state = init()
    for row in rows:
        if VALUE in row:
            state, _ = update(state, int(row["step"]), float(row[VALUE]), patience=patience, positions=positions)
    return state


def describe(stop: str, eval_every: int, patience: int) -> str:
    """One phrase for help texts and progress lines."""
    if stop != "plateau":
        return "after --steps meta-steps"
    return (f"on a validation plateau: evaluated every {eval_every:,} meta-steps, stopped (or the curriculum "
            f"moved on) once {patience:,} meta-steps pass without a higher validation accuracy; the best set is "
            f"the result")
