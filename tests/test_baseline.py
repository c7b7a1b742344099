"""The random-real baseline (jaxdd/baseline.py): R draws scored by the same networks, the same number from
`jaxdd distill` and `jaxdd evaluate --random-real --like`, and the gain's interval behind the warning."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from jaxdd import baseline
from jaxdd import evaluation as ev
from jaxdd.cli import main
from jaxdd.distillation import warn_if_not_better

# a 2-network, 30-step protocol on a width-8 depth-1 ConvNet: seconds on the CPU
SMALL = dict(protocol="quick", width=8, depth=1, steps=30, num_models=2, lr=3e-3)


def test_one_draw_is_the_single_draw_number(digits):
    """R = 1 is the number `jaxdd evaluate --random-real --seed S` printed before draws: the seed's own draw,
    scored by the seed's networks (the very same computation, so equal to the last digit)."""
    one = baseline.random_real(digits, 1, draws=1, seed=3, **SMALL)
    images, labels = ev.random_real(digits, 1, seed=3)
    single = ev.evaluate(images, labels, digits, seed=3, rows=np.ones(len(labels), bool), **SMALL)
    assert one["accuracies"] == single["accuracies"] and one["accuracy_mean"] == single["accuracy_mean"]
    assert one["draws"] == 1 and one["draws_std"] == 0.0 and one["baseline"]["draws"] == 1


def test_draws_report_both_spreads(digits):
    """Three draws × two networks as one vmapped batch: the mean over draws, a spread over draws above zero
    and, separately, the spread over networks; each draw trained by the same networks as a lone set would be
    (draw 0 agrees with the single-draw number up to the batch's round-off); at_once=1 loops over draws."""
    r = baseline.random_real(digits, 1, draws=3, seed=3, **SMALL)
    by = np.array(r["accuracies_by_draw"])
    assert by.shape == (3, 2) and r["num_models"] == 2 and r["draws"] == 3 and r["num_images"] == 10
    assert r["draw_means"] == pytest.approx(by.mean(1).tolist())
    assert r["accuracy_mean"] == pytest.approx(by.mean()) and r["accuracy_std"] == r["draws_std"]
    assert r["draws_std"] == pytest.approx(np.std(by.mean(1))) and r["draws_std"] > 0
    assert r["networks_std"] == pytest.approx(np.std(by, axis=1).mean())
    assert r["draw_seeds"][0] == 3 and len(set(r["draw_seeds"])) == 3
    single = baseline.random_real(digits, 1, draws=1, seed=3, **SMALL)
    np.testing.assert_allclose(by[0], single["accuracies"], atol=0.02)
    looped = baseline.random_real(digits, 1, draws=3, seed=3, at_once=1, **SMALL)
    np.testing.assert_allclose(np.array(looped["accuracies_by_draw"]), by, atol=0.02)
    assert looped["draws_std"] > 0


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_distill_and_evaluate_print_the_same_baseline(tmp_path, capsys):
    """`jaxdd distill --seed 1` and `jaxdd evaluate --random-real --like RUN/distilled.npz --seed 1` report the
    same random-real number to the last digit (same draws, same networks, same training images: the
    validation split is carved with the seed in both), and the run records which baseline it used."""
    out = tmp_path / "run"
    assert main(["distill", "--dataset", "digits", "--ipc", "1", "--steps", "1", "--seed", "1", "--out", str(out),
                 "--width", "4", "--depth", "1", "--unroll-steps", "6", "--window", "3", "--real-batch", "64",
                 "--eval-steps", "20", "--eval-models", "2", "--baseline-draws", "2", "--no-progress",
                 "--devices", "1", "--json"]) == 0
    stdout = capsys.readouterr().out
    run = _last_json(stdout)
    assert "(2 draws × 2 networks)" in stdout and "interval" in stdout
    assert run["random_real_baseline"] == {"kind": "random real", "draws": 2, "networks": 2, "seed": 1}
    assert len(run["random_real_draw_means"]) == 2 and run["gain_low"] <= run["gain"] <= run["gain_high"]
    with np.load(out / "distilled.npz") as f:
        record = json.loads(str(f["settings"]))
    assert record["random_real_baseline"]["draws"] == 2
    assert record["random_real_accuracy"] == run["random_real_mean"]
    npz = str(out / "distilled.npz")
    assert main(["evaluate", "--random-real", "--ipc", "1", "--like", npz, "--seed", "1", "--no-progress",
                 "--json"]) == 0
    again = _last_json(capsys.readouterr().out)
    assert again["draws"] == 2  # the run's setting
    assert again["accuracy_mean"] == run["random_real_mean"]
    assert again["draw_means"] == run["random_real_draw_means"]


def test_gain_interval_and_the_warning():
    """Welch's interval from the set's networks and the baseline's draw means, checked by hand; the warning
    fires when the interval reaches 0 even though the set's mean is higher, and not when it is clear of 0."""
    d = dict(accuracy_mean=0.70, accuracy_std=0.01, accuracies=[0.69, 0.70, 0.71, 0.70], num_models=4)
    b = dict(accuracy_mean=0.66, accuracy_std=0.05, draw_means=[0.60, 0.72, 0.62, 0.70, 0.66], num_models=4,
             draws=5, accuracies=[0.66] * 20)
    g = baseline.gain(d, b)
    vd, vb = np.var(d["accuracies"], ddof=1) / 4, np.var(b["draw_means"], ddof=1) / 5
    se = math.sqrt(vd + vb)
    dof = se ** 4 / (vd ** 2 / 3 + vb ** 2 / 4)
    assert g["gain"] == pytest.approx(0.04) and g["se"] == pytest.approx(se) and g["dof"] == pytest.approx(dof)
    assert g["low"] == pytest.approx(0.04 - stats.t.ppf(0.975, dof) * se)
    assert g["low"] < 0 < g["high"]
    with pytest.warns(UserWarning, match=r"scores no better than random real images .*5 draws × 4 networks.*"
                                         r"gain \+4.00 points"):
        warn_if_not_better(d, b)
    clear = dict(b, draw_means=[0.60, 0.61, 0.62, 0.61, 0.61])
    assert baseline.gain(d, clear)["low"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_not_better(d, clear)
