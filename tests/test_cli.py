"""The `jaxdd` command line: evaluate subcommand, JSON output, one-line errors, --help, python -m jaxdd."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from jaxdd import evaluation as ev
from jaxdd.cli import main
from jaxdd.distillation import warn_if_not_better

TINY = ["--steps", "20", "--models", "2", "--width", "16", "--no-progress"]
REQUIRED = {"accuracy_mean", "accuracy_std", "num_models"}


def _last_json(out: str) -> dict:
    lines = out.strip().splitlines()
    assert lines, "no output"
    return json.loads(lines[-1])


def test_random_real_json(capsys):
    code = main(["evaluate", "--random-real", "--ipc", "1", "--dataset", "digits", "--json", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = _last_json(out)
    assert REQUIRED <= set(result)
    assert result["num_models"] == 2 and result["steps"] == 20 and result["num_images"] == 10
    assert 0.0 <= result["accuracy_mean"] <= 1.0 and len(result["accuracies"]) == 2 * 5  # 5 draws (the default)
    assert result["protocol"] == "quick" and result["lr"] == 3e-3 and result["augment"] == "none"  # as distill uses on digits
    np.testing.assert_allclose(result["accuracy_std"], np.std(result["draw_means"]))  # the spread over draws


def test_evaluate_npz(tmp_path, capsys, digits):
    images, labels = ev.random_real(digits, 1, seed=5)
    soft = np.eye(10, dtype=np.float32)[labels] * 0.9 + 0.01
    path = tmp_path / "distilled.npz"
    np.savez(path, images=images, labels=soft, lr=np.float32(0.02),
             settings=json.dumps({"method": "test", "ipc": 1}))
    code = main(["evaluate", str(path), "--json", "--protocol", "mtt", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = _last_json(out)
    assert REQUIRED <= set(result)
    assert result["protocol"] == "mtt" and result["optimizer"] == "sgd"
    assert result["lr"] == pytest.approx(0.02)  # the learned lr stored with the set
    assert result["settings"] == {"method": "test", "ipc": 1}
    # a folder holding distilled.npz works too, and --lr overrides the stored lr
    code = main(["evaluate", str(tmp_path), "--json", "--protocol", "mtt", "--lr", "0.05", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert _last_json(out)["lr"] == pytest.approx(0.05)


def _error_line(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxdd: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_missing_file(tmp_path, capsys):
    line = _error_line(capsys, ["evaluate", str(tmp_path / "nope.npz")])
    assert "no such file" in line and "nope.npz" in line


def test_npz_missing_keys_and_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 1), np.float32))
    line = _error_line(capsys, ["evaluate", str(path)])
    assert "no 'labels' array" in line
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    assert "cannot read" in _error_line(capsys, ["evaluate", str(junk)])


def test_bad_combinations(capsys, tmp_path):
    assert "exactly one of" in _error_line(capsys, ["evaluate"])
    assert "--random-real needs --ipc" in _error_line(capsys, ["evaluate", "--random-real"])
    assert "exactly one of" in _error_line(capsys, ["evaluate", "--random-real", "--ipc", "1", "--full-data"])
    assert "larger than the smallest class" in _error_line(capsys, ["evaluate", "--random-real", "--ipc", "100000"])
    assert "unknown protocol" in _error_line(capsys, ["evaluate", "--full-data", "--protocol", "nope"])
    assert "unknown model" in _error_line(capsys, ["evaluate", "--full-data", "--model", "vgg", *TINY])
    path = tmp_path / "wrong.npz"
    np.savez(path, images=np.zeros((2, 4, 4, 3), np.float32), labels=np.array([0, 1]))
    assert "same --dataset" in _error_line(capsys, ["evaluate", str(path), *TINY])


def test_argparse_errors_exit_2(capsys):
    assert main(["evaluate", "--random-real", "--ipc", "zero"]) == 2
    assert main(["frobnicate"]) == 2
    capsys.readouterr()


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "evaluate" in capsys.readouterr().out
    assert main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--protocol", "--model", "--width", "--depth", "--steps", "--models", "--seed",
                   "--normalize", "--json", "--random-real", "--full-data", "--ipc", "examples:"):
        assert option in out, option


def test_python_m_jaxdd():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdd", "evaluate", "--random-real", "--ipc", "1", "--steps", "20", "--models", "2",
         "--json"],
        capture_output=True, text=True, timeout=300, cwd=root, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert REQUIRED <= set(_last_json(proc.stdout))


DISTILL_TINY = ["--width", "4", "--depth", "1", "--unroll-steps", "6", "--window", "3", "--real-batch", "64",
                "--eval-steps", "20", "--eval-models", "2", "--no-progress", "--devices", "1"]


def test_distill_writes_outputs_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["distill", "--dataset", "digits", "--method", "tbptt", "--ipc", "1", "--steps", "3", "--out", str(out),
                 "--json", *DISTILL_TINY])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = _last_json(stdout)
    assert REQUIRED <= set(summary) and {"random_real_mean", "random_real_std"} <= set(summary)
    assert summary["steps"] == 3 and summary["devices"] == 1 and "random real" in stdout
    for name in ("distilled.npz", "grid.png", "metrics.jsonl", "checkpoints"):
        assert (out / name).exists(), name
    with np.load(out / "distilled.npz") as f:
        assert f["images"].shape == (10, 8, 8, 1) and f["labels"].shape == (10,)
        settings = json.loads(str(f["settings"]))
    assert settings["method"] == "tbptt" and settings["settings"]["window"] == 3
    # the same --out without --resume is refused; with --resume it continues to --steps 5
    assert "--resume" in _error_line(capsys, ["distill", "--method", "tbptt", "--steps", "5", "--out", str(out),
                                              *DISTILL_TINY])
    code = main(["distill", "--method", "tbptt", "--steps", "5", "--out", str(out), "--resume", "--no-eval",
                 *DISTILL_TINY])
    capsys.readouterr()
    assert code == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5
    # and the result evaluates from the command line
    code = main(["evaluate", str(out / "distilled.npz"), "--json", *TINY])
    assert code == 0 and REQUIRED <= set(_last_json(capsys.readouterr().out))


def test_distill_warns_when_the_set_does_not_beat_random_real(tmp_path, capsys):
    """One step from noise cannot beat real images (about 10 % against 60 %): one warning line that names
    both numbers and the metrics file; a run that beats them (unit call below) stays quiet."""
    out = tmp_path / "noise"
    code = main(["distill", "--dataset", "digits", "--ipc", "1", "--steps", "1", "--init", "noise", "--out", str(out),
                 *DISTILL_TINY, "--eval-steps", "50"])
    _, err = capsys.readouterr()
    assert code == 0, err
    lines = [line for line in err.splitlines() if "scores no better than random real" in line]
    assert len(lines) == 1 and lines[0].startswith("jaxdd: warning: "), err
    assert str(out / "metrics.jsonl") in lines[0] and "--steps" in lines[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # better: no warning (an error here)
        warn_if_not_better(dict(accuracy_mean=0.61, accuracy_std=0.02), dict(accuracy_mean=0.60, accuracy_std=0.01))
    with pytest.warns(UserWarning, match=r"\(40.00 ± 2.00 %\) scores no better than .* \(60.00 ± 1.00 %\)"):
        warn_if_not_better(dict(accuracy_mean=0.40, accuracy_std=0.02), dict(accuracy_mean=0.60, accuracy_std=0.01))


def test_distill_bad_input(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/... under the working directory
    assert "unknown method" in _error_line(capsys, ["distill", "--method", "kip", *DISTILL_TINY])
    assert "larger than the smallest class" in _error_line(capsys, ["distill", "--ipc", "5000", *DISTILL_TINY])
    assert "--window" in _error_line(capsys, ["distill", *DISTILL_TINY, "--window", "9"])
    assert "no published preset" in _error_line(capsys, ["distill", "--published", *DISTILL_TINY])
    assert "not available" in _error_line(capsys, ["distill", "--devices", "64", "--no-progress"])
    assert "does not exist" in _error_line(capsys, ["distill", "--dataset", str(tmp_path / "missing"), *DISTILL_TINY])
    assert main(["distill", "--steps", "-1"]) == 2  # argparse
    capsys.readouterr()


def test_distill_help_lists_every_setting(capsys):
    import dataclasses

    from jaxdd.methods.bptt import BPTTSettings as Settings

    assert main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ["--dataset", "--method", "--ipc", "--steps", "--out", "--seed", "--resume", "--devices",
                   "--population", "--published", "--distributed"]:
        assert option in out, option
    for field in dataclasses.fields(Settings):
        assert "--" + field.name.replace("_", "-") in out, field.name


def test_threads_option_sets_the_cpu_pool_before_jax_runs(monkeypatch, capsys, tmp_path):
    """--threads N reaches XLA's CPU pool size (NPROC) before any work; 0 is a usage error."""
    monkeypatch.delenv("NPROC", raising=False)
    assert main(["evaluate", str(tmp_path / "missing.npz"), "--threads", "1"]) == 2  # fails on the file, after setup
    assert os.environ.get("NPROC") == "1"
    assert main(["distill", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_evaluate_defaults_to_the_data_set_the_set_records(tmp_path, monkeypatch, capsys, digits):
    """Without --dataset, `jaxdd evaluate SET` loads the data set recorded in SET (not digits)."""
    from jaxdd import data
    from jaxdd.errors import JaxddError

    images, labels = ev.random_real(digits, 1, seed=5)
    path = tmp_path / "distilled.npz"
    np.savez(path, images=images, labels=labels, settings=json.dumps({"method": "test", "ipc": 1,
                                                                      "dataset": str(tmp_path / "my-folder")}))
    seen = []

    def load(name, **kwargs):
        seen.append(name)
        raise JaxddError("stopped here")

    monkeypatch.setattr(data, "load", load)
    assert main(["evaluate", str(path)]) == 2
    assert main(["evaluate", str(path), "--dataset", "digits"]) == 2  # an explicit --dataset is checked, not replaced
    assert seen == [str(tmp_path / "my-folder")]
    assert "made on" in capsys.readouterr().err
