"""Round two of runs that survive (issue 29, docs/runs.md): the lock on run folders, metrics lost on resume,
output paths checked before any work, a full disk, and arrays from files checked before they are used."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxdd import lock, rundir
from jaxdd.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "digits", "--ipc", "1", "--width", "4", "--depth", "1", "--unroll-steps", "6", "--window", "3",
        "--real-batch", "64", "--eval-steps", "20", "--eval-models", "2", "--devices", "1", "--no-progress"]


def _cli(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def _holder(folder):
    """A process holding `folder`'s lock (started and waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", f"import sys, time; sys.path.insert(0, {ROOT!r}); "
                             f"from jaxdd import lock; lock.hold({str(folder)!r}, 'x'); print('held', flush=True); "
                             f"time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_the_same_out_is_refused_and_a_dead_holder_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        code, _, err = _cli(capsys, ["distill", *TINY, "--steps", "2", "--no-eval", "--out", out])
        assert code == 2 and len(err) == 1 and f"pid {proc.pid}" in err[0] and "in use" in err[0], err
        assert sorted(os.listdir(out)) == [lock.LOCK]  # nothing written
    finally:
        proc.kill()
        proc.wait()
    code, _, err = _cli(capsys, ["distill", *TINY, "--steps", "2", "--no-eval", "--out", out])
    assert code == 0, err
    assert [line for line in err if "warning" in line] == [
        f"jaxdd: warning: --out {out}: taking over the lock of pid {proc.pid} on {os.uname().nodename}, which no "
        f"longer runs (it was killed or crashed)"]
    assert open(out / lock.LOCK).read() == ""  # released at the end of the run


def test_damaged_metrics_on_resume_name_the_steps_lost(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", *TINY, "--steps", "4", "--checkpoint-every", "4", "--no-eval", "--out", str(out)]) == 0
    lines = open(out / rundir.METRICS).read().splitlines()
    lines[1] = lines[1][:10]  # a torn middle row (step 2)
    open(out / rundir.METRICS, "w").write("\n".join(lines) + "\n")
    capsys.readouterr()
    code, _, err = _cli(capsys, ["distill", *TINY, "--steps", "6", "--checkpoint-every", "4", "--no-eval",
                                 "--out", out, "--resume"])
    assert code == 0
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1 and "no rows for step(s) 2 " in warnings[0], err
    os.remove(out / rundir.METRICS)
    code, _, err = _cli(capsys, ["distill", *TINY, "--steps", "6", "--checkpoint-every", "4", "--no-eval",
                                 "--out", out, "--resume"])
    assert code == 0 and any("no rows for step(s) 1-6 " in line for line in err), err


def test_lost_steps_are_ranges():
    rows = [{"step": s} for s in (1, 4, 5, 9)]
    assert rundir.lost_steps(rows, 10) == "2-3, 6-8, 10"
    assert rundir.lost_steps(rows[:1], 1) == ""
