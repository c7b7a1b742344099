"""SelMatch: the selection window, score files, frozen D_select / moving D_distill, combined augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment, evaluation as ev, presets, scores
from jaxdd.errors import JaxddError
from jaxdd.methods import selmatch

# 3 classes of 10, 12 and 20 examples; scores chosen so that each class's hardest-first order is known
LABELS = np.array([0] * 10 + [1] * 12 + [2] * 20)[np.random.default_rng(0).permutation(42)]


def _scores():
    rng = np.random.default_rng(1)
    return rng.permutation(42).astype(np.float32)  # distinct: no ties


def _hardest_first(scores, c):
    rows = np.flatnonzero(LABELS == c)
    return rows[np.argsort(-scores[rows])]


@pytest.mark.parametrize("reading,beta", [("fraction", 0.0), ("fraction", 0.25), ("fraction", 0.9),
                                          ("ipc", 0.5), ("ipc", 1.0), ("ipc", 4.0)])
def test_window_is_class_balanced_and_starts_where_beta_says(reading, beta):
    s, ipc = _scores(), 4
    idx = selmatch.select(s, LABELS, 3, ipc, beta, reading)
    assert idx.shape == (12,) and len(set(idx.tolist())) == 12
    np.testing.assert_array_equal(LABELS[idx], np.repeat([0, 1, 2], ipc))  # class-major, IPC each
    for c, n in enumerate((10, 12, 20)):
        want = int(np.floor(beta * (n if reading == "fraction" else ipc) + 0.5))
        start = min(want, n - ipc)  # moved back only when the window would run past the class
        np.testing.assert_array_equal(idx[c * ipc:(c + 1) * ipc], _hardest_first(s, c)[start:start + ipc])


def test_window_numbers_by_hand():
    assert selmatch.window_start(5000, 250, 0.5, "fraction") == 2500  # CIFAR-10 5 %: the paper's reading
    assert selmatch.window_start(5000, 250, 0.5, "ipc") == 125  # the released code's round(beta * IPC)
    assert selmatch.window_start(100, 50, 0.9, "fraction") == 50  # moved back to fit
    assert selmatch.scan_betas([10, 12, 20], 4, 0.1) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # 0.6*10 + 4 = 10
    assert selmatch.scan_betas([10], 4, 0.5, "ipc") == [0.0, 0.5, 1.0, 1.5]  # round(1.5*4) + 4 = 10


def test_partial_rows_freeze_the_harder_part():
    rb = selmatch.partial_rows(2, 5, 0.4)
    np.testing.assert_array_equal(rb, [-1, -1, -1, 0, 0] * 2)
    assert (selmatch.partial_rows(3, 4, 0.0) == -1).all() and (selmatch.partial_rows(3, 4, 1.0) == 0).all()


def test_published_presets_and_ratio_settings():
    s = presets.preset("selmatch", "cifar10", 250, published=True)
    assert (s.alpha, s.beta, s.eval_protocol) == (0.6, 0.5, "selmatch")
    assert presets.preset("selmatch", "cifar100", 50, published=True).alpha == 0.6
    assert presets.preset("selmatch", "tiny_imagenet", 100, published=True).beta == 0.7
    with pytest.raises(JaxddError, match=r"no published preset for cifar10 IPC 10 \(--method selmatch\)"):
        presets.preset("selmatch", "cifar10", 10, published=True)


def test_score_file_of_wrong_length_or_labels_is_refused(digits, tmp_path):
    y = np.asarray(digits.y_train)
    short = tmp_path / "short.npz"
    scores.save_scores(short, np.zeros(len(y) - 1), y[:-1], "forgetting")
    wrong = tmp_path / "wrong.npz"
    scores.save_scores(wrong, np.zeros(len(y)), (y + 1) % 10, "forgetting")
    for path, text in ((short, "scores but data set"), (wrong, "labels differ")):
        s = presets.resolve("selmatch", "digits", 5, overrides=dict(scores=str(path)))
        ctx = type("Ctx", (), dict(settings=s, dataset=digits, seed=0))
        with pytest.raises(JaxddError, match=text) as err:
            selmatch.difficulty(ctx)
        assert "\n" not in str(err.value)


def test_combined_augmentation_touches_each_kind_of_row_with_its_own_op(key):
    x = jax.random.normal(jax.random.key(3), (6, 8, 8, 1))
    real = jnp.array([True, False, True, False, False, True])
    out = augment.combined(x, key, real, lambda x, k: 2 * x, lambda x, k: x + 1)
    np.testing.assert_array_equal(out[real], x[real] + 1)
    np.testing.assert_array_equal(out[~real], 2 * x[~real])
    # real ops: crop + flip (pad 4) on the real rows exactly as with the real half of the key; none elsewhere
    out = augment.combined(x, key, real, augment.get_augment("none"), augment.get_augment("standard"))
    np.testing.assert_array_equal(out[~real], x[~real])
    np.testing.assert_array_equal(out[real], augment.crop_flip(x, jax.random.split(key)[1])[real])
    assert not np.array_equal(out[real], x[real])


def test_evaluation_routes_rows_to_their_augmentation(digits):
    """All rows real with select_augment 'none' = no augmentation at all, bit for bit (and not DSA)."""
    images, labels = ev.random_real(digits, 3, seed=0)
    kw = dict(protocol="quick", steps=20, num_models=2, width=4)
    plain = ev.evaluate(images, labels, digits, augment="none", **kw)
    routed = ev.evaluate(images, labels, digits, augment="dsa", select_augment="none",
                         rows=np.full(len(images), -1), **kw)
    assert routed["accuracies"] == plain["accuracies"] and routed["select_augment"] == "none"
    none_real = ev.evaluate(images, labels, digits, augment="none", select_augment="dsa",
                            rows=np.zeros(len(images), bool), **kw)
    assert none_real["accuracies"] == plain["accuracies"]


def test_cosine_protocol_and_epochs_by_ratio(digits):
    p = ev.get_protocol("selmatch")
    assert p.num_steps(500, 50000) == 50 * 391 and p.num_steps(7, 1295) == 50 * 11  # 50 full-data epochs, batch 128
    assert (p.lr, p.cosine_to, p.momentum, p.weight_decay, p.batch_size, p.model) == (0.1, 1e-3, 0.9, 5e-4, 128,
                                                                                       "resnet18")


TINY = dict(width=4, depth=1, num_experts=1, expert_train_epochs=3, expert_epochs=1, max_start_epoch=2,
            syn_steps=3, eval_steps=5, eval_models=1, alpha=0.5, outer_lr=1000.0, beta_step=0.3)


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    import jaxdd

    out = tmp_path_factory.mktemp("selmatch")
    return jaxdd.distill(digits, "selmatch", 4, 10, out=out, progress=False, cache_dir=out / "cache", **TINY)


def test_after_ten_steps_d_select_is_identical_and_d_distill_moved(run, digits):
    a = run.arrays
    real = np.asarray(digits.x_train, np.float32)[a["selected_index"]]
    frozen = a["row_block"] == -1
    assert frozen.sum() == 20 and (~frozen).sum() == 20  # alpha 0.5 of 4 per class, 10 classes
    np.testing.assert_array_equal(a["images"][frozen], real[frozen])  # bit-identical
    moved = np.abs(a["images"][~frozen] - real[~frozen]).reshape(20, -1).max(1)
    assert (moved > 0).all()
    np.testing.assert_array_equal(frozen.reshape(10, 4), [[True, True, False, False]] * 10)


def test_beta_is_the_best_of_the_validation_scan(run, digits):
    curve = run.report["beta_scan"]
    assert [row["beta"] for row in curve] == selmatch.scan_betas(digits.class_counts(), 4, 0.3)
    best = max(curve, key=lambda r: (r["val_accuracy_mean"], -r["beta"]))
    assert run.report["beta"] == best["beta"]
    np.testing.assert_allclose(float(run.arrays["beta"]), best["beta"], rtol=1e-6)  # stored as float32
    want = selmatch.select(_forgetting(run, digits), digits.y_train, 10, 4, best["beta"])
    np.testing.assert_array_equal(run.arrays["selected_index"], want)


def _forgetting(run, digits):
    import glob

    (folder,) = glob.glob(str(run.out) + "/cache/experts/*")
    return scores.load_scores(folder, digits)
