"""Runs that survive (issue 17, docs/runs.md): SIGTERM / SIGINT / SIGKILL mid-run and mid-checkpoint,
damaged checkpoints and run files, folders that are never overwritten silently, every bad input refused
with one line before any file, and readable logs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxdd import checkpoint, distillation, rundir
from jaxdd.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "digits", "--ipc", "1", "--width", "4", "--depth", "1", "--unroll-steps", "6", "--window", "3",
        "--real-batch", "64", "--eval-steps", "20", "--eval-models", "2", "--devices", "1"]
LONG = 200  # steps of the runs that are signalled: ~10 ms each once compiled, so a signal lands mid-run


def _argv(out, steps, *extra):
    return ["distill", *TINY, "--steps", str(steps), "--out", str(out), *extra]


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, rundir.METRICS))]


def _images(out):
    with np.load(os.path.join(out, rundir.DISTILLED)) as f:
        return f["images"]


def _cli(capsys, argv):
    """(exit status, stdout, stderr lines) of an in-process `jaxdd ...`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def _start(out, steps, *extra, log):
    """`python -m jaxdd distill ...` in a subprocess running this worktree's code (compilation cache shared)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAXDD_TEST_JAX_CACHE", "/tmp/jaxdd-test-jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
    return subprocess.Popen([sys.executable, "-m", "jaxdd", *map(str, _argv(out, steps, *extra))], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait_for_rows(proc, out, n, timeout=240):
    """Block until metrics.jsonl holds >= n complete rows (the run is then inside its loop)."""
    file, t0 = os.path.join(out, rundir.METRICS), time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {n} rows"
        if os.path.exists(file) and open(file).read().count("\n") >= n:
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {n} rows after {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted LONG-step run: (images, losses by step)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_argv(out, LONG, "--no-eval", "--no-progress")) == 0
    return _images(out), [r["loss"] for r in _rows(out)]


def _assert_same_as(reference, out):
    images, losses = reference
    assert np.max(np.abs(_images(out) - images)) == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, LONG + 1))  # every step exactly once
    assert [r["loss"] for r in rows] == losses


# ------------------------------------------------------------------------------------------------------
# faults: signals, kills, damaged files


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_checkpoints_and_resume_is_exact(sig, reference, tmp_path, capsys):
    if signal.getsignal(sig) is signal.SIG_IGN:
        pytest.skip(f"{sig.name} is ignored here (a background job): the run would ignore it too, as it should")
    out = tmp_path / "run"
    with open(tmp_path / "log", "w") as log:
        proc = _start(out, LONG, "--checkpoint-every", "50", "--no-eval", log=log)
        _wait_for_rows(proc, out, 2)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 128 + sig  # 143 for SIGTERM, 130 for SIGINT
    last = (tmp_path / "log").read_text().strip().splitlines()[-1]
    stopped = int(last.split("after step ")[1].split()[0])
    assert last.startswith(f"jaxdd: stopped by {signal.Signals(sig).name}") and "--resume" in last, last
    assert 2 <= stopped < LONG
    assert checkpoint.latest_step_in(out / "checkpoints") == stopped  # the step it finished was saved
    assert [r["step"] for r in _rows(out)] == list(range(1, stopped + 1))  # and its metrics row too
    code, _, err = _cli(capsys, _argv(out, LONG, "--checkpoint-every", "50", "--no-eval", "--resume"))
    assert code == 0, err
    _assert_same_as(reference, out)


@pytest.mark.slow
def test_kill_9_mid_run_and_mid_checkpoint_then_resume_is_exact(reference, tmp_path, capsys):
    out = tmp_path / "run"
    with open(tmp_path / "log", "w") as log:  # a checkpoint every step: the kill most likely lands in a write
        proc = _start(out, LONG, "--checkpoint-every", "1", "--no-eval", "--no-progress", log=log)
        _wait_for_rows(proc, out, 5)
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    assert checkpoint.latest_step_in(out / "checkpoints") >= 4
    code, _, err = _cli(capsys, _argv(out, LONG, "--checkpoint-every", "50", "--no-eval", "--no-progress",
                                      "--resume"))
    assert code == 0, err
    takeover = f"jaxdd: warning: --out {out}: taking over the lock of pid {proc.pid} "  # the killed run's lock file
    assert all(line.startswith(("distill: ", "jaxdd: warning: removed the unfinished checkpoint", takeover))
               for line in err), err
    _assert_same_as(reference, out)


@pytest.fixture
def sigint_default():
    """Ctrl-C raising KeyboardInterrupt in this process, as in a terminal (even if pytest runs in the background)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signal_in_the_loop_finishes_the_step_and_a_second_one_cuts_nothing(tmp_path, capsys, monkeypatch,
                                                                           sigint_default):
    """In-process: SIGINT after step 2's metrics row, SIGTERM again while the checkpoint is written."""
    out, before = tmp_path / "run", (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    append, save = rundir.append_metrics, checkpoint.save

    def append_and_signal(folder, row):
        append(folder, row)
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    def save_and_signal(mgr, step, state):
        os.kill(os.getpid(), signal.SIGTERM)
        save(mgr, step, state)

    monkeypatch.setattr(rundir, "append_metrics", append_and_signal)
    monkeypatch.setattr(checkpoint, "save", save_and_signal)
    code, _, err = _cli(capsys, _argv(out, 6, "--checkpoint-every", "100", "--no-eval", "--no-progress"))
    assert code == 130 and err[-1].startswith("jaxdd: stopped by SIGINT (Ctrl-C) after step 2 of 6"), err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers given back
    assert checkpoint.latest_step_in(out / "checkpoints") == 2 and [r["step"] for r in _rows(out)] == [1, 2]
    monkeypatch.undo()
    code, _, err = _cli(capsys, _argv(out, 6, "--no-eval", "--no-progress", "--resume"))
    assert code == 0 and [r["step"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6], err
    code, _, err = _cli(capsys, _argv(tmp_path / "whole", 6, "--no-eval", "--no-progress"))
    assert np.max(np.abs(_images(out) - _images(tmp_path / "whole"))) == 0
    # an ignored SIGINT (a background job) stays ignored: the run goes on to the end
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    monkeypatch.setattr(rundir, "append_metrics", append_and_signal)
    code, _, err = _cli(capsys, _argv(tmp_path / "ignored", 3, "--no-eval", "--no-progress"))
    assert code == 0 and len(_rows(tmp_path / "ignored")) == 3, err
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_starting_or_in_the_final_evaluation_says_what_was_kept(sig, tmp_path, capsys, monkeypatch,
                                                                           sigint_default):
    def signal_now(*args, **kwargs):
        os.kill(os.getpid(), sig)  # SIGINT: KeyboardInterrupt; SIGTERM: the CLI's handler
        time.sleep(1)
        raise AssertionError("the signal did not interrupt")

    monkeypatch.setattr(distillation, "prepare", signal_now)
    code, _, err = _cli(capsys, _argv(tmp_path / "a", 2))
    assert code == 128 + sig and len(err) == 1 and "while starting, before any step" in err[0], err
    monkeypatch.undo()
    monkeypatch.setattr(distillation, "evaluate_set", signal_now)
    code, _, err = _cli(capsys, _argv(tmp_path / "b", 2, "--no-progress"))
    assert code == 128 + sig and "during the final evaluation" in err[-1] and "jaxdd evaluate" in err[-1], err
    assert "test_accuracy" not in json.loads(str(np.load(tmp_path / "b" / "distilled.npz")["settings"]))


def test_interrupted_is_a_keyboard_interrupt_with_the_exit_status():
    from jaxdd.errors import Interrupted

    assert isinstance(Interrupted("x", signal.SIGTERM), KeyboardInterrupt)
    assert Interrupted("x", signal.SIGTERM).signum == 15


def _damage(step_dir, how):
    if how == "truncated":
        for folder, _, files in os.walk(step_dir):
            for name in files:
                if os.sep + "d" in folder:  # the array data
                    with open(os.path.join(folder, name), "r+b") as f:
                        f.truncate(10)
    elif how == "garbled":
        for folder, _, files in os.walk(step_dir):
            for name in files:
                if name == "_METADATA" or name == "manifest.ocdbt":
                    with open(os.path.join(folder, name), "wb") as f:
                        f.write(b"\x00garbage\xff" * 7)
    else:  # the array folder is gone
        shutil.rmtree(os.path.join(step_dir, "default"))


@pytest.mark.parametrize("how", ["truncated", "garbled", "missing"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(how, tmp_path, capsys):
    out, whole = tmp_path / "run", tmp_path / "whole"
    assert main(_argv(whole, 6, "--no-eval", "--no-progress")) == 0
    assert main(_argv(out, 6, "--checkpoint-every", "3", "--no-eval", "--no-progress")) == 0
    capsys.readouterr()
    _damage(out / "checkpoints" / "6", how)
    code, _, err = _cli(capsys, _argv(out, 6, "--no-eval", "--no-progress", "--resume"))
    assert code == 0, err
    warning = [line for line in err if line.startswith("jaxdd: warning:")]
    assert len(warning) == 1 and "step 6" in warning[0] and "resuming from step 3" in warning[0], err
    assert len(err) == 3 and len(warning[0]) < 400, err  # the warning, the start and the end line
    assert np.max(np.abs(_images(out) - _images(whole))) == 0
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoints" / "6.damaged").is_dir() and checkpoint.latest_step_in(out / "checkpoints") == 6
    # nothing readable at all: one line, exit 2
    for step in ("3", "6"):
        if (out / "checkpoints" / step).is_dir():
            _damage(out / "checkpoints" / step, how)
    code, _, err = _cli(capsys, _argv(out, 6, "--no-eval", "--no-progress", "--resume"))
    assert code == 2 and len(err) == 1 and "no checkpoint" in err[0] and "can be read" in err[0], err


def test_unfinished_checkpoint_write_is_removed_with_one_line(tmp_path, capsys):
    """A kill during Orbax's write leaves `<step>.orbax-checkpoint-tmp`: removed with one jaxdd line."""
    out, whole = tmp_path / "run", tmp_path / "whole"
    assert main(_argv(whole, 6, "--no-eval", "--no-progress")) == 0
    assert main(_argv(out, 3, "--no-eval", "--no-progress")) == 0
    shutil.copytree(out / "checkpoints" / "3", out / "checkpoints" / "6.orbax-checkpoint-tmp")
    os.remove(out / "checkpoints" / "6.orbax-checkpoint-tmp" / "commit_success.txt")
    capsys.readouterr()
    code, _, err = _cli(capsys, _argv(out, 6, "--no-eval", "--no-progress", "--resume"))
    assert code == 0 and err[0].startswith("jaxdd: warning: removed the unfinished checkpoint 6"), err
    assert len(err) == 3 and not any("absl" in line for line in err), err
    assert sorted(os.listdir(out / "checkpoints")) == ["3", "6"]
    assert np.max(np.abs(_images(out) - _images(whole))) == 0


def test_damaged_run_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(out, 3, "--checkpoint-every", "2", "--no-eval", "--no-progress")) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 2.')  # a kill mid-write
    (out / "checkpoints" / "3").rename(out / "checkpoints" / "3.moved")  # resume from step 2
    capsys.readouterr()
    code, _, err = _cli(capsys, _argv(out, 4, "--no-eval", "--no-progress", "--resume"))
    assert code == 0 and [r["step"] for r in _rows(out)] == [1, 2, 3, 4], err
    (out / "settings.json").write_text('{"method": "rat-')
    code, _, err = _cli(capsys, _argv(out, 5, "--no-eval", "--no-progress", "--resume"))
    assert code == 2 and len(err) == 1 and "settings.json is damaged" in err[0], err


# ------------------------------------------------------------------------------------------------------
# folders holding results are never overwritten silently; a resume never shortens a run


def test_refusals_keep_every_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(out, 3)) == 0  # with the final evaluation
    capsys.readouterr()

    def contents():
        return {name: (out / name).read_bytes() for name in rundir.RESULTS if (out / name).exists()}

    before = contents()
    recorded = json.loads(str(np.load(out / "distilled.npz")["settings"]))
    assert {"test_accuracy", "random_real_accuracy"} <= set(recorded)
    cases = [
        ([], "already holds a run (checkpoint at step 3): pass --resume"),
        (["--resume", "--window", "2"], "--resume with different window than"),
        (["--resume", "--seed", "1"], "--resume with different seed than"),
        (["--resume", "--method", "tbptt"], "--resume with different method than"),
    ]
    for extra, message in cases:
        code, _, err = _cli(capsys, _argv(out, 3, *extra))
        assert code == 2 and len(err) == 1 and message in err[0], (extra, err)
        assert contents() == before
    # settings that do not change the result are accepted; a shorter --steps does not shorten the run
    code, _, err = _cli(capsys, _argv(out, 1, "--resume", "--no-eval", "--checkpoint-every", "7", "--eval-models", "3",
                                      "--eval-steps", "5", "--eval-every", "2"))
    assert code == 0, err
    assert json.loads((out / "settings.json").read_text())["steps"] == 3 and len(_rows(out)) == 3
    kept = json.loads(str(np.load(out / "distilled.npz")["settings"]))
    assert kept["test_accuracy"] == recorded["test_accuracy"] and kept["steps"] == 3  # the scores stay recorded
    # results without a checkpoint: refused both ways
    shutil.rmtree(out / "checkpoints")
    before = contents()
    for extra, message in (([], "already holds results"), (["--resume"], "but no checkpoint to continue from")):
        code, _, err = _cli(capsys, _argv(out, 3, *extra))
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert contents() == before
    # --overwrite replaces them
    code, _, err = _cli(capsys, _argv(out, 2, "--overwrite", "--no-eval", "--no-progress"))
    assert code == 0 and len(_rows(out)) == 2 and json.loads((out / "settings.json").read_text())["steps"] == 2, err
    # --resume on a new folder starts the run (a first SLURM submission needs no other command)
    code, _, err = _cli(capsys, _argv(tmp_path / "new", 2, "--resume", "--no-eval", "--no-progress"))
    assert code == 0 and len(_rows(tmp_path / "new")) == 2, err


# ------------------------------------------------------------------------------------------------------
# every bad input: exit 2, one line, no file or folder


def _one_class_folder(root):
    from PIL import Image

    for split in ("train", "test"):
        os.makedirs(root / split / "cat")
        for i in range(12):
            Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / split / "cat" / f"{i}.png")
    return root


BAD = [  # (arguments after `jaxdd distill` + TINY, words of the one error line); @ = a scratch folder
    (["--width", "0"], "--width must be at least 1"),
    (["--depth", "5"], "too deep for 8×8 images"),
    (["--augment", "bogus"], "--augment: unknown augmentation 'bogus'"),
    (["--real-augment", "bogus"], "--real-augment: unknown augmentation"),
    (["--eval-models", "0"], "--eval-models must be at least 1"),
    (["--eval-steps", "0"], "--eval-steps must be at least 1"),
    (["--val-fraction", "1"], "--val-fraction must lie in [0, 1)"),
    (["--val-fraction", "0", "--eval-every", "2"], "--eval-every needs a validation split"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
    (["--real-batch", "0"], "--real-batch must be at least 1"),
    (["--real-batch", "100000"], "larger than the training set"),
    (["--seed", "99999999999999999999"], "--seed must be an integer in [0, 2^63)"),
    (["--outer-lr", "0"], "--outer-lr must be positive"),
    (["--outer-lr", "inf"], "argument --outer-lr: expected a number >= 0, got 'inf'"),
    (["--outer-lr", "nan"], "argument --outer-lr: expected a number >= 0, got 'nan'"),
    (["--label-lr", "-1"], "argument --label-lr"),
    (["--inner-lr", "0"], "--inner-lr must be positive"),
    (["--unroll-steps", "0"], "--unroll-steps must be at least 1"),
    (["--window", "0"], "--window 0 must be between 1 and --unroll-steps 6"),
    (["--window", "9"], "--window 9 must be between 1 and --unroll-steps 6"),
    (["--population", "0"], "--population must be at least 1"),
    (["--population", "3"], "must be a multiple of --population 3"),
    (["--outer-chunk", "5"], "--outer-chunk 5 must divide"),
    (["--per-class", "2"], "--per-class 2 is larger than --ipc 1"),
    (["--classes-per-step", "11"], "--classes-per-step 11 is larger than the number of classes (10)"),
    (["--init", "bogus"], "unknown --init 'bogus'"),
    (["--init", "@/missing.npz"], "no such file"),
    (["--noise-scale", "bogus"], "unknown --noise-scale"),
    (["--normalize", "bogus"], "unknown --normalize"),
    (["--model", "bogus"], "unknown model 'bogus'"),
    (["--norm", "bogus"], "unknown norm 'bogus'"),
    (["--schedule", "bogus"], "unknown --schedule"),
    (["--resample", "bogus"], "unknown --resample"),
    (["--remat", "bogus"], "unknown --remat"),
    (["--inner-optimizer", "bogus"], "unknown --inner-optimizer"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--ipc", "0"], "argument --ipc: expected a positive integer"),
    (["--ipc", "5000"], "larger than the smallest class"),
    (["--steps", "-1"], "argument --steps"),
    (["--steps", "abc"], "argument --steps"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["--out", "@/afile"], "is a file, not a folder"),
    (["--out", "@/afile/run"], "is a file, not a folder"),
    (["--out", "/proc/jaxdd-run"], "cannot write in /proc"),
    (["--dataset", "@/missing"], "does not exist"),
    (["--dataset", "@/oneclass"], "at least 2"),
    (["--devices", "64"], "--devices 64 is not available"),
    (["--published"], "no published preset for digits IPC 1"),
    (["--method", "boost", "--ipc", "3", "--block", "2"], "--ipc 3 must be a multiple of --block 2"),
    (["--method", "boost", "--beta", "2"], "--beta must lie in [0, 1]"),
    (["--method", "boost", "--inner-method", "nope"], "unknown --inner-method 'nope'"),
    (["--resume", "--overwrite"], "--resume and --overwrite"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_distill_input_is_one_line_before_any_file(extra, message, tmp_path, tmp_path_factory, capsys,
                                                       monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "afile").write_text("")
    _one_class_folder(scratch / "oneclass")
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.chdir(scratch)  # the default --out (runs/...) would land here
    listing = sorted(os.path.relpath(os.path.join(d, n), scratch) for d, ds, fs in os.walk(scratch) for n in ds + fs)
    extra = [a.replace("@", str(scratch)) for a in extra]
    out = [] if "--out" in extra else ["--out", str(scratch / "run")]
    code, stdout, err = _cli(capsys, ["distill", *TINY, "--steps", "2", "--no-eval", "--cache-dir", cache, *out,
                                      *extra])
    assert code == 2 and len(err) == 1 and err[0].startswith("jaxdd: error: ") and message in err[0], err
    assert stdout == ""
    assert sorted(os.path.relpath(os.path.join(d, n), scratch) for d, ds, fs in os.walk(scratch)
                  for n in ds + fs) == listing


@pytest.mark.parametrize("override,message", [
    (dict(outer_lr=float("nan")), "--outer-lr must be a finite number"),
    (dict(inner_lr=float("inf")), "--inner-lr must be a finite number"),
    (dict(label_lr=-0.5), "--label-lr must be >= 0"),
    (dict(width=1.5), "--width must be an integer"),
    (dict(window=True), "--window must be an integer"),
    (dict(clip=1), "--clip must be true or false"),
    (dict(augment=None, real_augment=3), "--real-augment must be a str"),
])
def test_bad_settings_through_the_library_are_one_line(override, message):
    from jaxdd import presets
    from jaxdd.errors import JaxddError

    with pytest.raises(JaxddError, match=message) as err:
        presets.resolve("rat-bptt", "digits", 1, None, override)
    assert "\n" not in str(err.value)


def test_bad_evaluate_input_is_one_line(tmp_path, capsys):
    made = dict(images=np.zeros((10, 8, 8, 1), np.float32), labels=np.arange(10))
    np.savez(tmp_path / "cifar.npz", **made, settings=json.dumps({"dataset": "tfds:cifar10"}))
    np.savez(tmp_path / "zca.npz", **made, settings=json.dumps({"dataset": "digits", "normalize": "zca"}))
    for argv, message in [
        (["evaluate", tmp_path / "cifar.npz", "--dataset", "digits"], "the set was made on 'tfds:cifar10', not 'digits'"),
        (["evaluate", tmp_path / "cifar.npz"], "tfds:cifar10 is not prepared"),  # the recorded data set is used
        (["evaluate", tmp_path / "zca.npz", "--normalize", "standardize"], "made with --normalize zca"),
        (["evaluate", "--full-data", "--width", "0"], "argument --width: expected a positive integer"),
        (["evaluate", "--random-real", "--ipc", "1", "--models", "0"], "argument --models"),
    ]:
        code, _, err = _cli(capsys, argv)
        assert code == 2 and len(err) == 1 and message in err[0], err


# ------------------------------------------------------------------------------------------------------
# logs


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    code, _, err = _cli(capsys, _argv(tmp_path / "a", 40))
    assert code == 0 and not any("\r" in line for line in err), err
    steps = [line for line in err if line.startswith("distill: step ")]
    assert [line.split()[2] for line in steps] == [f"{n}/40," for n in range(2, 41, 2)]  # every 40 // 20 steps
    assert err[0] == "distill: rat-bptt IPC 1 on digits: steps 1-40" and "40 steps done" in err[21]
    assert [line.split(":")[1].strip().split()[0] for line in err[22:]] == ["scoring", "distilled", "random"]
    code, _, err = _cli(capsys, _argv(tmp_path / "b", 4, "--no-progress", "--no-eval"))
    assert code == 0 and len(err) == 2 and err[0].endswith("steps 1-4") and "4 steps done" in err[1], err
    code, _, err = _cli(capsys, _argv(tmp_path / "b", 6, "--no-progress", "--no-eval", "--resume"))
    assert code == 0 and err[0].endswith("steps 5-6 (resuming after step 4)"), err
