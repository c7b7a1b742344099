"""Round two of runs that survive (issue 29, docs/runs.md): the lock on run folders, metrics lost on resume,
output paths checked before any work, a full disk, and arrays from files checked before they are used."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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


def _tiny_set(file, images=None, class_names=None):
    images = np.zeros((10, 8, 8, 1), np.float32) if images is None else images
    names = [str(c) for c in range(10)] if class_names is None else class_names
    np.savez(file, images=images, labels=np.arange(10), class_names=np.asarray(names))


CHEAP = [  # (argv after the command, message): one line, status 2, before any work
    (["distill", "--method", "mtt", "--momentum", "5"], "--momentum must lie in [0, 1)"),
    (["distill", "--method", "mtt", "--num-experts", "0"], "--num-experts must be at least 1"),
    (["distill", "--method", "mtt", "--experts", "/etc/passwd"], "--experts /etc/passwd is not a folder of experts"),
    (["distill", "--method", "selmatch", "--beta", "5"], "--beta 5.0 is past the easiest image"),
    (["distill", "--method", "bptt", "--window", "3"], "--window"),
    (["distill", "--method", "boost", "--block", "0"], "--block"),
    (["distill", "--init", "@/nan.npz"], "--init @/nan.npz: images contain NaN or Inf"),
    (["distill", "--init", "@/other.npz"], "--init @/other.npz: the set was made on"),
    (["experts", "--out", "@/afile"], "--out @/afile is a file, not a folder"),
    (["experts", "--out", "@/run"], "--out @/run holds a distillation run"),
    (["scores", "--kind", "el2n", "--out", "@/afile.npz"], "--out @/afile.npz already exists: pass --overwrite"),
    (["scores", "--kind", "el2n", "--out", "@"], "give a file name ending in .npz"),
    (["scores", "--kind", "el2n", "--out", "@/afile.npz/x.npz"], "is a file, not a folder"),
    (["experts", "--batch-size", "5000"], "--batch-size 5000 is larger than the training split (1437 images): use "
                                          "--batch-size 1437 or less"),
    (["distill", "--method", "mtt", "--expert-batch", "5000"], "--expert-batch 5000 is larger than the training split"),
    (["experts", "--out", "@/afile/x"], "--out @/afile/x: @/afile is a file, not a folder"),
    (["evaluate", "--full-data", "--dataset", "@/oneclass", "--cache-dir", "@/oneclass/cache"],
     "the data set has 1 class: an accuracy needs at least 2"),
]


@pytest.mark.parametrize("argv,message", CHEAP, ids=[" ".join(a) for a, _ in CHEAP])
def test_cheap_probe_cases_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afile.npz").write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "settings.json").write_text("{}")
    _tiny_set(tmp_path / "nan.npz", images=np.full((10, 8, 8, 1), np.nan, np.float32))
    _tiny_set(tmp_path / "other.npz", class_names=[f"c{i}" for i in range(10)])
    for split in ("train", "test"):  # a folder data set of one class
        (tmp_path / "oneclass" / split / "cat").mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(tmp_path / "oneclass" / split / "cat" / f"{i}.png")
    before = sorted(os.listdir(tmp_path))
    argv = [a.replace("@", str(tmp_path)) for a in argv]
    if argv[0] == "distill":  # the method's options first: the parser is built for the --method given
        argv = [*argv, "--dataset", "digits", "--ipc", "1", "--width", "4", "--depth", "1", "--devices", "1",
                "--steps", "2", "--no-eval", "--no-progress", "--out", str(tmp_path / "new")]
    elif "--dataset" not in argv:
        argv = [*argv, "--dataset", "digits"]
    code, stdout, err = _cli(capsys, argv)
    message = message.replace("@", str(tmp_path))
    assert code == 2 and len(err) == 1 and err[0].startswith("jaxdd: error: ") and message in err[0], err
    assert sorted(os.listdir(tmp_path)) == before and open(tmp_path / "afile.npz").read() == "x"


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands for a full disk: one line naming where and why, no unfinished
    checkpoint kept, and --resume (without the limit) finishes the run with every step once."""
    out = tmp_path / "run"
    argv = ["distill", *TINY, "--steps", "10", "--checkpoint-every", "5", "--no-eval", "--out", str(out)]
    limited = argv + ["--no-compile-cache"]  # the cache's own files would meet the limit first
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4000, resource.RLIM_INFINITY)); "
            f"sys.path.insert(0, {ROOT!r}); from jaxdd.cli import main; sys.exit(main({limited!r}))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}  # XLA's own lines (a slow-compile alarm under load)
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    lines = [line for line in proc.stdout.splitlines() if not line.startswith(("I1", "W1", "distill:"))]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-3000:]
    assert f"cannot write the checkpoint of step 5 in {out}" in lines[0] and "the disk or quota is full" in lines[0]
    assert main(argv + ["--resume"]) == 0
    assert [json.loads(line)["step"] for line in open(out / rundir.METRICS)] == list(range(1, 11))
    assert not [name for name in os.listdir(out / "checkpoints") if "tmp" in name]


STRAGGLER = """
import asyncio, errno, gc, sys
sys.path.insert(0, ROOT)
import jax.numpy as jnp
import tensorstore as ts
from jaxdd import checkpoint
from jaxdd.errors import JaxddError

mgr = checkpoint.manager(DIR)
promise, in_flight = ts.Promise.new()

def failing_save(*args, **kwargs):  # what Orbax does when one write fails: its loop closes, another write in flight
    async def run():
        asyncio.ensure_future(in_flight)
        await asyncio.sleep(0.01)
        raise OSError(errno.EFBIG, "File too large")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()

mgr.save = failing_save
try:
    checkpoint.save(mgr, 1, {"x": jnp.zeros(3)})
except JaxddError as err:
    print(err, flush=True)
promise.set_result(None)  # the straggler finishes: its callback meets the closed loop
gc.collect()
"""


def test_the_stragglers_of_a_failed_write_print_nothing(tmp_path):
    """The full disk's one line is the only line: the writes still in flight when Orbax closed its loop
    print no 'Event loop is closed' tracebacks (a full disk shows this at random; here it always happens)."""
    code = STRAGGLER.replace("ROOT", repr(ROOT)).replace("DIR", repr(str(tmp_path / "ckpt")))
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1 and "the disk or quota is full" in lines[0], proc.stdout


def test_progress_in_a_piped_log_is_plain_lines(capsys):
    """Long phases (evaluation here; experts use the same Bar) write plain lines, not tqdm's redrawn bars, when
    stderr is not a terminal (a log file, a pipe, pytest's capture)."""
    from jaxdd import data, evaluation

    digits = data.load("digits")
    images, labels = digits.x_train[:20], digits.y_train[:20]
    evaluation.evaluate(images, labels, digits, protocol="quick", steps=40, num_models=1, width=4, depth=1,
                        progress=True)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and len(lines) >= 2, err
    assert lines[-1].startswith("training 1 × convnet: 40/40 steps (") and lines[-1].endswith(" s)"), lines


def test_class_names_the_font_lacks_are_one_warning(tmp_path):
    """matplotlib warns once per missing character, per layout and per save; jaxdd folds them into one line."""
    import warnings

    from jaxdd import viz
    from jaxdd.errors import JaxddWarning

    names = ["\U000f0000", "\U000f0001", "cat"]  # private-use characters: no font has them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viz.image_grid(np.zeros((3, 8, 8, 1)), np.arange(3), names, tmp_path / "grid.png")
    messages = [(w.category, str(w.message)) for w in caught]
    assert len(messages) == 1 and messages[0][0] is JaxddWarning, messages
    assert "\U000f0000 \U000f0001" in messages[0][1] and str(tmp_path / "grid.png") in messages[0][1]


def test_simulated_devices_get_a_pool_that_cannot_fill_with_waiting_collectives(monkeypatch):
    """XLA's CPU pool is max(NPROC, devices) threads; with simulated devices jaxdd asks for 4 per device, so
    waiting collectives cannot hold every thread (benchmarks/collective_deadlock.py); a given NPROC or
    --threads is kept."""
    from jaxdd import xla_options

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.delenv("NPROC", raising=False)
    assert xla_options.configure_cpu(malloc=False) == {"NPROC": max(os.cpu_count(), 32)}
    assert os.environ["NPROC"] == str(max(os.cpu_count(), 32))
    monkeypatch.setenv("NPROC", "3")
    assert xla_options.configure_cpu(malloc=False) == {} and os.environ["NPROC"] == "3"
    assert xla_options.configure_cpu(threads=1, malloc=False) == {"NPROC": 1}
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv("NPROC")
    assert xla_options.configure_cpu(malloc=False) == {} and "NPROC" not in os.environ


def test_a_damaged_checkpoint_is_one_warning_without_orbax_lines(tmp_path, capsys, caplog):
    """Orbax logs 'Failed to json parse' (absl, several times) for a damaged metadata file; jaxdd's one line
    saying what it resumes from is all the user sees."""
    out = tmp_path / "run"
    argv = ["distill", *TINY, "--steps", "4", "--checkpoint-every", "2", "--no-eval", "--out", out]
    assert main([str(a) for a in argv]) == 0
    for name in ("_CHECKPOINT_METADATA", "default/_METADATA"):
        (out / "checkpoints" / "4" / name).write_text('{"bro')
    capsys.readouterr()
    code, _, err = _cli(capsys, [*argv[:-7], "--steps", "6", "--checkpoint-every", "2", "--no-eval", "--out", out,
                                 "--resume"])
    assert code == 0 and [line for line in err if "warning" in line or "ERROR" in line] == [
        f"jaxdd: warning: checkpoint(s) at step 4 in {out / 'checkpoints'} could not be read (JSONDecodeError: "
        f"Unterminated string starting at: line 1 column 2 (char 1)): resuming from step 2; the damaged ones are "
        f"kept as <step>.damaged"], err
    assert "Failed to json parse" not in caplog.text


def test_a_damaged_archive_cache_is_rebuilt_with_one_warning(tmp_path):
    """The decoded-archive cache records a checksum: a truncated file or arrays changed on disk are decoded
    again (one warning each), never used."""
    import warnings

    from jaxdd.data import cache, folder

    for split in ("train", "test"):
        for c in ("ant", "bee"):
            (tmp_path / "set" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8, 3), 30 * i + (c == "bee"), np.uint8)).save(
                    tmp_path / "set" / split / c / f"{i}.png")
    first = folder.load_folder_raw(tmp_path / "set", tmp_path / "cache")
    (file,) = (tmp_path / "cache").glob("*.npz")

    def reload():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = folder.load_folder_raw(tmp_path / "set", tmp_path / "cache")
        assert all(np.array_equal(again[k], first[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
        return [str(w.message) for w in caught]

    assert reload() == []  # a sound cache is read as it is
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # truncated
    messages = reload()
    assert len(messages) == 1 and "ignoring unreadable cache" in messages[0], messages
    with np.load(file) as z:  # rebuilt: sound again
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"][0, 0, 0, 0] += 1  # one pixel changed on disk, the recorded checksum kept
    np.savez(file, **arrays)
    messages = reload()
    assert len(messages) == 1 and "does not match its checksum" in messages[0], messages
    assert cache.read_cache(file) is not None  # rewritten


def test_finished_experts_are_not_held(tmp_path, digits):
    """The expert folder's lock is held while experts are written and released after: a second run (another
    process) can use finished experts while the first one still runs (before, the lock stayed until exit)."""
    from jaxdd import experts

    out = tmp_path / "experts"
    experts.train(digits, num_experts=1, epochs=1, out_dir=out, width=4, depth=1, batch_size=64, progress=False)
    probe = ("import sys, jaxdd.lock as l; l.hold(sys.argv[1], 'the experts'); print('held')")
    done = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "held" in done.stdout, done.stderr
