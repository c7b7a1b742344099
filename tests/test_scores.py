"""jaxdd.scores: difficulty score files (forgetting, C-score, EL2N) checked against the data set."""

import chex
import numpy as np
import pytest

from jaxdd import cli, scores
from jaxdd.errors import JaxddError

EL2N = dict(num_models=2, epochs=4, width=8, depth=2, batch_size=64, lr=0.05, seed=0)


@pytest.fixture(scope="module")
def el2n(digits):
    return scores.el2n_scores(digits, **EL2N)


def cscore_file(path, labels, values):
    np.savez(path, labels=labels, scores=values)  # the public C-score layout: no 'kind'
    return path


def test_el2n_from_logits_by_hand():
    logits = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [np.log(3.0), 0.0]], np.float32)
    labels = np.array([0, 0, 0, 1])
    # p = [.5,.5] -> √(.25+.25); confident right -> 0; confident wrong -> √2; p = [.75,.25], y = 1 -> √(2·.75²)
    want = [np.sqrt(0.5), 0.0, np.sqrt(2.0), np.sqrt(2 * 0.75 ** 2)]
    np.testing.assert_allclose(np.asarray(scores.el2n_from_logits(logits, labels)), want, rtol=1e-6, atol=1e-6)


def test_el2n_scores(el2n, digits):
    chex.assert_shape(el2n, (len(digits.y_train),))
    assert el2n.dtype == np.float32 and np.all(el2n >= 0) and np.all(el2n <= np.sqrt(2) + 1e-6)
    uniform = np.sqrt(1 - 1 / digits.num_classes)  # EL2N of a network that predicts 1/C everywhere
    assert el2n.mean() < 0.8 * uniform  # the networks have learned something
    assert el2n.std() > 0.05  # and the scores separate examples
    np.testing.assert_array_equal(scores.el2n_scores(digits, **EL2N), el2n)  # seeded
    np.testing.assert_array_equal(scores.load_scores("el2n", digits, **EL2N), el2n)


def test_load_scores_kinds(digits, tmp_path):
    y = digits.y_train
    values = np.linspace(0, 1, len(y)).astype(np.float32)
    scores.save_scores(tmp_path / "f.npz", values * 7, y, "forgetting")
    np.testing.assert_array_equal(scores.load_scores(tmp_path / "f.npz", digits), values * 7)
    (tmp_path / "experts").mkdir()
    scores.save_scores(tmp_path / "experts" / scores.FORGETTING_FILE, values, y, "forgetting")
    np.testing.assert_array_equal(scores.load_scores(tmp_path / "experts", digits, kind="forgetting"), values)
    cfile = cscore_file(tmp_path / "c.npz", y, values)
    hard_first = scores.load_scores(cfile, digits)
    np.testing.assert_allclose(hard_first, 1 - values, atol=1e-7)  # low C-score = hard -> high difficulty
    assert np.argmax(hard_first) == np.argmin(values)
    np.testing.assert_array_equal(scores.load_scores(cfile, digits, kind="el2n"), values)  # a stated kind is kept


@pytest.mark.parametrize("case, message", [
    ("short", r"has 1294 scores but data set 'digits' has 1295 training images"),
    ("labels", r"labels differ from the training labels of 'digits' at 2 of 1295 positions \(first at index 3\)"),
    ("kind", r"holds forgetting scores, not cscore"),
    ("keys", r"has no 'labels' array"),
    ("nan", r"scores must be finite"),
    ("missing", r"no score file"),
])
def test_bad_score_files_are_refused_in_one_line(digits, tmp_path, case, message):
    y = np.asarray(digits.y_train)
    v = np.zeros(len(y), np.float32)
    path = tmp_path / "s.npz"
    if case == "short":
        cscore_file(path, y[:-1], v[:-1])
    elif case == "labels":
        bad = y.copy()
        bad[[3, 10]] = (bad[[3, 10]] + 1) % 10
        cscore_file(path, bad, v)
    elif case == "kind":
        scores.save_scores(path, v, y, "forgetting")
    elif case == "keys":
        np.savez(path, scores=v)
    elif case == "nan":
        cscore_file(path, y, np.full(len(y), np.nan))
    with pytest.raises(JaxddError, match=message) as err:
        scores.load_scores(path, digits, kind="cscore" if case == "kind" else None)
    assert "\n" not in str(err.value)


def test_cli_scores_cscore_and_errors(tmp_path, capsys):
    from jaxdd import data

    y = data.load("digits").y_train
    values = np.random.default_rng(0).uniform(size=len(y)).astype(np.float32)
    cfile = cscore_file(tmp_path / "c.npz", y, values)
    out = tmp_path / "out.npz"
    assert cli.main(["scores", "--dataset", "digits", "--kind", "cscore", "--from", str(cfile), "--out", str(out)]) == 0
    with np.load(out) as f:
        np.testing.assert_allclose(f["scores"], 1 - values, atol=1e-7)
        np.testing.assert_array_equal(f["labels"], y)
        assert str(f["kind"]) == "cscore" and bool(f["higher_is_harder"])
    # the written file is read back as it is (no second conversion)
    np.testing.assert_allclose(scores.load_scores(out, data.load("digits")), 1 - values, atol=1e-7)
    capsys.readouterr()
    assert cli.main(["scores", "--kind", "cscore", "--out", str(out)]) == 2
    assert "--kind cscore needs --from PATH" in capsys.readouterr().err
    assert cli.main(["scores", "--kind", "el2n", "--from", str(cfile), "--out", str(out)]) == 2
    assert "drop --from" in capsys.readouterr().err
