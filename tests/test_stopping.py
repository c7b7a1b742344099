"""--stop plateau: the rule on scripted numbers, the moving-window curriculum, and exact resume in a plateau."""

import json

import jax
import numpy as np
import pytest

from jaxdd import distillation as distill_lib
from jaxdd import rundir, stopping, truncation
from jaxdd.errors import JaxddError


def _events(values, *, every=10, patience=30, positions=1):
    """(step, event) of each evaluation of a scripted validation-accuracy sequence, evaluated every `every`."""
    state, out = stopping.init(), []
    for i, value in enumerate(values):
        state, event = stopping.update(state, (i + 1) * every, value, patience=patience, positions=positions)
        out.append(((i + 1) * every, event))
        if event == "stop":
            break
    return state, out


def test_scripted_sequence_stops_at_the_right_step():
    # best 0.5 at step 30; 0.5 again is no improvement; patience 30 is reached at step 60
    state, events = _events([0.1, 0.3, 0.5, 0.4, 0.5, 0.45, 0.9, 0.9])
    assert events[-1] == (60, "stop")
    assert [e for _, e in events] == ["best", "best", "best", "wait", "wait", "stop"]
    assert (state.best, state.best_step, state.stopped) == (0.5, 30, True)
    # patience counts meta-steps, checked at evaluations: 25 steps at an interval of 10 act at the 3rd evaluation
    assert _events([0.5, 0.1, 0.1, 0.1, 0.1], patience=25)[1][-1] == (40, "stop")
    # an improvement restarts the count; NaN never improves
    assert _events([0.5, 0.1, 0.6, np.nan, 0.2, 0.3, 0.1])[1][-1] == (60, "stop")


def test_curriculum_moves_at_the_right_evaluations():
    values = [0.2, 0.4, 0.3, 0.3, 0.3, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    state, events = _events(values, patience=30, positions=3)
    moves = [(s, e) for s, e in events if e in ("move", "stop")]
    # best 0.4 at 20; move at 50 (the count restarts there, the best is kept); 0.5 at 60 is a new best;
    # move at 90 to the last position; the next plateau (30 steps later) stops
    assert moves == [(50, "move"), (90, "move"), (120, "stop")]
    assert (state.position, state.best, state.best_step) == (2, 0.5, 60)
    # the authors' moving window (cctype 1, minwindow 0): 0, W, 2W, ... capped at T - W
    assert truncation.moving_prefixes(200, 60) == (0, 60, 120, 140)
    assert truncation.moving_prefixes(130, 90) == (0, 40)
    schedule = truncation.moving(200, 60)
    assert schedule.positions == 4
    prefix, length = schedule.sample({"position": np.int32(3)}, jax.random.key(0))
    assert (int(prefix), int(length)) == (140, 60)


@pytest.fixture
def tiny(tiny):
    return {**tiny, "stop": "plateau", "eval_every": 2, "patience": 4}


def _rows(out):
    with open(rundir.path(out, rundir.METRICS)) as f:
        return [json.loads(line) for line in f]


def _end(out):
    """(last step, best step) of a run folder, from its metrics rows and distilled.npz."""
    with np.load(rundir.path(out, rundir.DISTILLED)) as npz:
        record = json.loads(str(npz["settings"]))
        return _rows(out)[-1]["step"], record["best_step"], npz["images"]


def test_resume_inside_a_plateau_stops_where_the_uninterrupted_run_stops(digits, tiny, tmp_path):
    bound = 60
    distill_lib.distill(digits, "rat-bptt", ipc=2, steps=bound, out=tmp_path / "full", progress=False,
                        final_eval=False, **tiny)
    stop, best, images = _end(tmp_path / "full")
    assert stop < bound and _rows(tmp_path / "full")[-1].get("stopped") == 1  # the rule ended the run
    cut = best + 2  # the first evaluation after the best: inside the plateau, before the stop
    assert cut < stop
    distill_lib.distill(digits, "rat-bptt", ipc=2, steps=cut, out=tmp_path / "part", progress=False,
                        final_eval=False, **tiny)
    distill_lib.distill(digits, "rat-bptt", ipc=2, steps=bound, out=tmp_path / "part", resume=True,
                        progress=False, final_eval=False, **tiny)
    stop2, best2, images2 = _end(tmp_path / "part")
    assert (stop2, best2) == (stop, best)
    np.testing.assert_array_equal(images2, images)
    # the result is the best evaluation's set, not the last step's
    with np.load(rundir.path(tmp_path / "full", rundir.BEST)) as npz:
        assert int(npz["best_step"]) == best
        np.testing.assert_array_equal(npz["images"], images)
    # a run the rule stopped stays stopped when resumed
    distill_lib.distill(digits, "rat-bptt", ipc=2, steps=bound, out=tmp_path / "part", resume=True,
                        progress=False, final_eval=False, **tiny)
    assert _rows(tmp_path / "part")[-1]["step"] == stop


def test_moving_window_follows_the_rule_in_a_run(digits, tiny, tmp_path):
    settings = dict(tiny, schedule="moving", unroll_steps=6, window=2)
    distill_lib.distill(digits, "rat-bptt", ipc=2, steps=60, out=tmp_path / "m", progress=False, final_eval=False,
                        **settings)
    rows = _rows(tmp_path / "m")
    prefixes = truncation.moving_prefixes(6, 2)
    state, position = stopping.init(), 0
    for i, row in enumerate(rows):
        assert row["prefix"] == prefixes[position]  # the window in use is the rule's position so far
        if "val_accuracy" in row:
            state, event = stopping.update(state, row["step"], row["val_accuracy"], patience=4, positions=3)
            assert row.get("curriculum") == (state.position if event == "move" else None)
            position = state.position
    assert state.stopped and state.position == 2  # every position was used before the run stopped


def test_plateau_settings_give_one_line_errors(digits, tiny):
    with pytest.raises(JaxddError, match="--stop plateau needs --eval-every"):
        distill_lib.prepare(digits, "rat-bptt", ipc=1, steps=2, **dict(tiny, patience=0))
    with pytest.raises(JaxddError, match="add --stop plateau"):
        distill_lib.prepare(digits, "rat-bptt", ipc=1, steps=2, **dict(tiny, stop="steps", schedule="moving"))
    with pytest.raises(JaxddError, match="unknown --stop"):
        distill_lib.prepare(digits, "rat-bptt", ipc=1, steps=2, **dict(tiny, stop="never"))
