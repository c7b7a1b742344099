"""Presets: published noise init, the CIFAR-100 IPC 1 fixed window, Tiny-ImageNet names, CPU presets safe
for any small image set, and `jaxdd evaluate` reproducing the number a run printed."""

import json

import chex
import jax
import numpy as np
import pytest

from jaxdd import initial, presets
from jaxdd.cli import main


def test_published_noise_init_has_unit_norm_per_image(digits, key):
    assert presets.preset("rat-bptt", "tfds:cifar10", 10, published=True).noise_scale == "unit"
    images, labels = initial.initial_set(digits, 1, "noise", key, noise_scale="unit")
    norms = np.linalg.norm(images.reshape(len(images), -1), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert images.shape == (10, 8, 8, 1) and labels.tolist() == list(range(10))


def test_means_init_is_the_class_mean_at_ipc1_and_lowers_the_kmeans_cost_at_ipc3(digits, key):
    x, y = np.asarray(digits.x_train, np.float64), np.asarray(digits.y_train)
    images, labels = initial.initial_set(digits, 1, "means", key)
    assert labels.tolist() == list(range(10))
    np.testing.assert_allclose(images, np.stack([x[y == c].mean(0) for c in range(10)]), atol=1e-5)

    def cost(centres):  # k-means objective: squared distance of every training image to its nearest centre
        c = np.asarray(centres, np.float64).reshape(10, 3, -1)
        return sum(((x[y == k].reshape(-1, 1, c.shape[-1]) - c[k][None]) ** 2).sum(-1).min(1).sum() for k in range(10))

    start, _ = initial.initial_set(digits, 3, "real", key)  # the same seeded real images Lloyd starts from
    centres, labels3 = initial.initial_set(digits, 3, "means", key)
    chex.assert_shape(centres, (30, 8, 8, 1))
    assert labels3.tolist() == np.repeat(np.arange(10), 3).tolist()
    assert cost(centres) < 0.8 * cost(start)


def test_cifar100_ipc1_published_is_a_fixed_window_of_prefix_40():
    s = presets.resolve("rat-bptt", "tfds:cifar100", 1, published=True)
    assert s.schedule == "fixed" and s.unroll_steps - s.window == 40


@pytest.mark.parametrize("name", ["path/tiny-imagenet-200", "path/tiny-imagenet-200/", "path/tiny-imagenet-200.tar.gz"])
def test_tiny_imagenet_names(name):
    assert presets.dataset_key(name) == "tiny_imagenet"
    assert presets.preset("rat-bptt", name, 10, published=True).depth == 4


def test_tiny_imagenet_fixed_window_variant_is_tbptt_published():
    """The authors' fixed-window Tiny-ImageNet IPC 10 script (W 90, T 270, batch 2000) is `--method tbptt
    --published`; rat-bptt keeps the random-window script (W 100, T 300, batch 1000)."""
    fixed = presets.resolve("tbptt", "tiny-imagenet-200", 10, published=True)
    assert (fixed.window, fixed.unroll_steps, fixed.real_batch, fixed.depth) == (90, 270, 2000, 4)
    rand = presets.resolve("rat-bptt", "tiny-imagenet-200", 10, published=True)
    assert (rand.window, rand.unroll_steps, rand.real_batch) == (100, 300, 1000)
    assert fixed.normalize == rand.normalize == "standardize"  # no --zca in their Tiny scripts
    assert presets.resolve("tbptt", "tfds:cifar100", 1, published=True).unroll_steps == 130


def test_published_default_steps_are_the_authors_budget():
    """60,000 passes over the training set at ceil(N / real batch) meta-steps a pass; CPU presets keep theirs."""
    assert presets.default_steps("rat-bptt", "tfds:cifar10", 10, published=True) == 600_000
    assert presets.default_steps("rat-bptt", "tiny-imagenet-200", 10, published=True) == 6_000_000
    assert presets.default_steps("tbptt", "tiny-imagenet-200", 10, published=True) == 3_000_000
    assert presets.default_steps("mtt", "tfds:cifar10", 10, published=True) == 5000
    assert presets.default_steps("rat-bptt", "digits", 1) == 300
    assert presets.default_steps("rat-bptt", "tfds:cifar10", 10) < 1000


@pytest.mark.parametrize("name", ["/data/digits28px", "/data/my-grey-set.tar.gz", "/data/cifar10-jpeg.tar.xz"])
def test_generic_small_preset_does_not_flip(name):
    """Data nobody tuned for may be digits or text: the generic CPU preset must not flip or rotate."""
    s = presets.resolve("rat-bptt", name, 1)
    assert "flip" not in s.augment and "rotate" not in s.augment
    assert "flip" not in s.real_augment and "rotate" not in s.real_augment


def test_evaluate_reproduces_the_number_distill_printed(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["--width", "8", "--unroll-steps", "6", "--window", "3", "--real-batch", "64", "--eval-steps", "40",
            "--eval-models", "2", "--no-progress", "--devices", "1"]
    assert main(["distill", "--dataset", "digits", "--ipc", "1", "--steps", "3", "--out", str(out), "--json", *tiny]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["evaluate", str(out / "distilled.npz"), "--dataset", "digits", "--json", "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["steps"] == 40 and again["num_models"] == 2
    assert abs(100 * again["accuracy_mean"] - 100 * printed["accuracy_mean"]) <= 0.5
