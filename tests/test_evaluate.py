"""jaxdd.evaluate: baselines, vmapped evaluation on digits, and one-line errors for bad input.

Small settings (ConvNet width 16, 3 networks, 150 Adam steps at lr 1e-2) keep the file fast on 2 CPU cores;
the training runs are shared between tests through module-scoped fixtures.
"""

import chex
import numpy as np
import pytest

from jaxdd import evaluation as ev
from jaxdd import models, training
from jaxdd.errors import JaxddError

FAST = dict(protocol="quick", width=16, num_models=3, steps=150, lr=1e-2)


@pytest.fixture(scope="module")
def ipc10_set(digits):
    return ev.random_real(digits, 10, seed=0)


@pytest.fixture(scope="module")
def ipc10_result(digits, ipc10_set):
    return ev.evaluate(*ipc10_set, digits, **FAST)


@pytest.fixture(scope="module")
def full_result(digits):
    return ev.evaluate(*ev.full_data(digits), digits, **FAST)


# ---------------------------------------------------------------------------------------------- baselines


def test_random_real_shapes_balance_and_order(digits):
    images, labels = ev.random_real(digits, 7, seed=3)
    chex.assert_shape(images, (70, 8, 8, 1))
    chex.assert_shape(labels, (70,))
    assert images.dtype == np.float32 and np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 7))
    np.testing.assert_array_equal(labels, np.arange(70) // 7)  # class-major: row = class * ipc + j
    # every image is a training image of its label's class, no image twice
    flat_train = digits.x_train.reshape(len(digits.x_train), -1)
    for img, lab in zip(images, labels):
        hits = np.flatnonzero(np.all(flat_train == img.reshape(-1), axis=1))
        assert hits.size >= 1 and np.any(digits.y_train[hits] == lab)
    assert len(np.unique(images.reshape(70, -1), axis=0)) == 70


def test_random_real_is_seeded(digits):
    a = ev.random_real(digits, 5, seed=11)
    b = ev.random_real(digits, 5, seed=11)
    c = ev.random_real(digits, 5, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_random_real_ipc_too_large(digits):
    counts = digits.class_counts()
    m, name = int(counts.min()), digits.class_names[int(np.argmin(counts))]
    with pytest.raises(JaxddError) as err:
        ev.random_real(digits, m + 1)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"--ipc {m + 1} is larger than the smallest class ({m} images, class '{name}')" in msg
    assert f"--ipc ≤ {m}" in msg
    ev.random_real(digits, m)  # the largest valid IPC works


@pytest.mark.parametrize("ipc", [0, -1, 2.5, True])
def test_random_real_bad_ipc(digits, ipc):
    with pytest.raises(JaxddError, match="--ipc must be a positive integer"):
        ev.random_real(digits, ipc)


def test_full_data(digits):
    images, labels = ev.full_data(digits)
    np.testing.assert_array_equal(images, digits.x_train)
    np.testing.assert_array_equal(labels, digits.y_train)


# ---------------------------------------------------------------------------------------------- accuracy


def test_full_data_accuracy(full_result):
    # measured: 97.8 ± 0.2 % (width 16, 3 networks, 150 Adam steps of batch 256 at lr 1e-2)
    assert full_result["accuracy_mean"] > 0.94, full_result
    assert full_result["num_models"] == 3 and full_result["steps"] == 150
    assert full_result["protocol"] == "quick" and full_result["model"] == "convnet"


def test_random_real_between_chance_and_full_data(ipc10_result, full_result):
    # measured: IPC 10 86.7 ± 1.8 %; chance is 10 %
    assert 0.10 + 0.30 < ipc10_result["accuracy_mean"] < full_result["accuracy_mean"], (ipc10_result, full_result)


def test_models_differ_and_std_matches(ipc10_result):
    accs = np.asarray(ipc10_result["accuracies"])
    chex.assert_shape(accs, (3,))
    assert np.all((accs >= 0) & (accs <= 1))
    assert len(np.unique(accs)) > 1, accs  # K independent networks, not K copies
    np.testing.assert_allclose(ipc10_result["accuracy_std"], np.std(accs), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ipc10_result["accuracy_mean"], np.mean(accs), rtol=0, atol=1e-12)


def test_soft_one_hot_labels_equal_hard_labels(digits, ipc10_set, ipc10_result):
    images, labels = ipc10_set
    soft = np.eye(10, dtype=np.float32)[labels]
    result = ev.evaluate(images, soft, digits, **FAST)
    assert result["accuracies"] == ipc10_result["accuracies"]


def test_same_seed_same_result_and_progress_chunks_do_not_matter(digits, ipc10_set, ipc10_result):
    again = ev.evaluate(*ipc10_set, digits, **FAST, progress=True)  # 20 jitted chunks instead of one
    assert again["accuracies"] == ipc10_result["accuracies"]


def test_val_split(digits, ipc10_set):
    result = ev.evaluate(*ipc10_set, digits, **{**FAST, "steps": 5, "num_models": 1}, split="val")
    assert result["split"] == "val" and 0 <= result["accuracy_mean"] <= 1
    with pytest.raises(JaxddError, match="no validation split"):
        ev.evaluate(*ipc10_set, digits.replace(x_val=None, y_val=None), **FAST, split="val")


def test_protocols_and_overrides():
    assert set(ev.PROTOCOLS) >= {"ratbptt", "mtt", "quick"}
    r, m, q = ev.PROTOCOLS["ratbptt"], ev.PROTOCOLS["mtt"], ev.PROTOCOLS["quick"]
    assert (r.optimizer, r.lr, r.augment, r.batch_size, r.num_steps(100), r.num_models) == (
        "adam", 1e-3, "flip_rotate", 256, 3000, 8)
    assert r.checkpoints == (300, 600, 1000, 3000) and r.balanced
    assert not m.balanced and not q.balanced and m.checkpoints == q.checkpoints == ()
    assert (m.optimizer, m.momentum, m.weight_decay, m.lr_decay_at, m.augment, m.num_models) == (
        "sgd", 0.9, 5e-4, 0.5, "dsa", 5)
    assert m.num_steps(100) == 1000 and m.num_steps(1000) == 4000  # 1000 epochs of batch 256
    assert q.num_steps(10) == 300 and q.num_models == 4


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpointed(digits, ipc10_set):
    return ev.evaluate(*ipc10_set, digits, **FAST, checkpoints=(50, 100, 400))


def test_checkpoints_do_not_change_the_final_numbers(checkpointed, ipc10_result):
    assert list(checkpointed["accuracy_at"]) == checkpointed["checkpoints"] == [50, 100, 150]  # 400 > 150 steps
    final = checkpointed["accuracy_at"][150]
    assert final["mean"] == checkpointed["accuracy_mean"] and final["std"] == checkpointed["accuracy_std"]
    assert final["accuracies"] == checkpointed["accuracies"] == ipc10_result["accuracies"]
    assert ipc10_result["accuracy_at"][150]["accuracies"] == ipc10_result["accuracies"]
    assert ipc10_result["chosen_steps"] is None  # one checkpoint: nothing to choose


def test_checkpoint_accuracy_equals_a_shorter_run(digits, ipc10_set, checkpointed):
    short = ev.evaluate(*ipc10_set, digits, **{**FAST, "steps": 50})
    assert checkpointed["accuracy_at"][50]["accuracies"] == short["accuracies"]
    assert checkpointed["accuracy_at"][50] != checkpointed["accuracy_at"][150]  # training went on


def test_checkpoints_do_not_recompile(digits, ipc10_set, checkpointed):
    depth = models.network_defaults("convnet", digits.image_shape)["depth"]
    net = training.network("convnet", (8, 8, 1), 10, 16, depth, None)  # as evaluate builds it
    _, run = training.trainer(net, "adam", 0.0, 0.0, 256, "none", None, 0.1, 0)
    before = (run._cache_size(), training.scorer(net)._cache_size())
    ev.evaluate(*ipc10_set, digits, **{**FAST, "steps": 60}, checkpoints=(10, 20, 30, 45))
    assert (run._cache_size(), training.scorer(net)._cache_size()) == before and before[0] >= 1


def test_checkpoint_is_chosen_on_the_validation_split(digits, ipc10_set, checkpointed):
    val = checkpointed["val_accuracy_at"]
    assert list(val) == [50, 100, 150]
    means = [val[s]["mean"] for s in (50, 100, 150)]
    assert checkpointed["chosen_steps"] == (50, 100, 150)[int(np.argmax(means))]
    chosen = checkpointed["accuracy_at"][checkpointed["chosen_steps"]]
    assert checkpointed["accuracy_chosen"] == {"mean": chosen["mean"], "std": chosen["std"]}
    # the validation numbers are the validation split's: the same networks scored by split="val"
    on_val = ev.evaluate(*ipc10_set, digits, **FAST, split="val")
    assert val[150]["accuracies"] == on_val["accuracies"]
    assert on_val["chosen_steps"] is None  # never choose on the split being reported
    # without a validation split nothing is chosen
    no_val = ev.evaluate(*ipc10_set, digits.replace(x_val=None, y_val=None), **{**FAST, "steps": 50},
                         checkpoints=(25,))
    assert no_val["chosen_steps"] is None and no_val["accuracy_chosen"] is None and no_val["val_accuracy_at"] is None
    assert list(no_val["accuracy_at"]) == [25, 50]


def test_balanced_batches_have_equal_class_counts():
    import jax

    hard = np.array([0] * 3 + [2] * 7 + [3] * 5 + [0] * 2)  # class 1 absent, unequal sizes, not class-major
    table, counts = training.class_table(np.eye(4, dtype=np.float32)[hard])
    np.testing.assert_array_equal(counts, [5, 7, 5])
    seen = set()
    for i in range(40):
        idx = np.asarray(training.balanced_batch(jax.random.key(i), table, counts, 4))
        chex.assert_shape(idx, (12,))
        np.testing.assert_array_equal(hard[idx], np.repeat([0, 2, 3], 4))  # equal counts, class-major
        for c in range(3):
            assert len(set(idx[4 * c:4 * c + 4].tolist())) == 4  # without replacement
        seen |= set(idx.tolist())
    assert seen == set(range(len(hard)))  # every image gets drawn


def test_balanced_protocol_trains(digits, ipc10_set):
    result = ev.evaluate(*ipc10_set, digits, **{**FAST, "steps": 30, "num_models": 2, "batch_size": 20},
                         balanced=True)  # 100 images > batch 20: 2 of each class per step
    assert result["balanced"] and 0.0 <= result["accuracy_mean"] <= 1.0
    chex.assert_tree_all_finite(np.asarray(result["accuracies"]))


# ---------------------------------------------------------------------------------------------- errors


def _one_line_error(fn, match):
    with pytest.raises(JaxddError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x, y: (x[0], y), r"4-D array \[N, H, W, C\]"),
        (lambda x, y: (x[:, :4], y), r"images have shape \(4, 8, 1\) but the model was built for \(8, 8, 1\)"),
        (lambda x, y: (np.repeat(x, 3, axis=-1), y), r"same --dataset"),
        (lambda x, y: (x[:0], y[:0]), r"empty"),
        (lambda x, y: (x, y[:-1]), r"got 20 images but 19 labels"),
        (lambda x, y: (x, np.where(np.arange(20) == 3, 10, y)), r"label 10 is out of range.*\[0, 10\)"),
        (lambda x, y: (x, np.where(np.arange(20) == 3, -1, y)), r"label -1 is out of range"),
        (lambda x, y: (x, np.eye(9, dtype=np.float32)[y % 9]), r"soft labels have 9 columns .* 10 classes"),
        (lambda x, y: (np.where(np.arange(20)[:, None, None, None] == 2, np.nan, x), y), r"images contain NaN or Inf"),
        (lambda x, y: (np.where(np.arange(20)[:, None, None, None] == 2, np.inf, x), y), r"images contain NaN or Inf"),
        (lambda x, y: (x, np.where(np.arange(20)[:, None] == 0, np.nan, np.eye(10, dtype=np.float32)[y])),
         r"labels contain NaN or Inf"),
        (lambda x, y: (x, y + 0.5), r"integer class ids"),
        (lambda x, y: (x, y[:, None, None]), r"labels must be int class ids"),
    ],
    ids=["3d", "wrong-hw", "wrong-c", "empty", "count", "label-high", "label-neg", "soft-width", "nan-img",
         "inf-img", "nan-label", "float-1d", "3d-labels"],
)
def test_bad_inputs(digits, make, match):
    x, y = ev.random_real(digits, 2)
    images, labels = make(x, y)
    _one_line_error(lambda: ev.evaluate(images, labels, digits, **FAST), match)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(protocol="nope"), r"unknown protocol 'nope': use one of ratbptt, mtt, quick"),
        (dict(model="vgg"), r"unknown model 'vgg': use one of convnet.*mlp"),
        (dict(augment="blur"), r"unknown augmentation"),
        (dict(num_models=0), r"num_models must be a positive integer"),
        (dict(steps=-3), r"steps must be a non-negative integer"),
        (dict(lr=-1.0), r"lr must be a positive number"),
        (dict(split="train"), r"unknown split 'train': use test or val"),
        (dict(checkpoints=(100, 0)), r"checkpoints must be positive step counts, got 0"),
    ],
)
def test_bad_options(digits, kwargs, match):
    x, y = ev.random_real(digits, 1)
    _one_line_error(lambda: ev.evaluate(x, y, digits, **{**FAST, **kwargs}), match)
