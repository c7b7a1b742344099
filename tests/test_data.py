"""The data package: digits, folders/archives, tfds (mocked), preprocessing, validation, errors."""

import io
import os
import tarfile
import zipfile

import chex
import numpy as np
import pytest
from PIL import Image

from jaxdd import data
from jaxdd.data import folder as folder_mod
from jaxdd.data.dataset import Dataset
from jaxdd.data.preprocess import channel_mean_std
from jaxdd.errors import JaxddError


def assert_one_line_error(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


# -- digits ----------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_split(digits):
    chex.assert_shape(digits.x_train, (1295, 8, 8, 1))
    chex.assert_shape(digits.x_val, (142, 8, 8, 1))
    chex.assert_shape(digits.x_test, (360, 8, 8, 1))
    chex.assert_shape([digits.y_train, digits.y_val, digits.y_test], [(1295,), (142,), (360,)])
    chex.assert_type([digits.x_train, digits.x_val, digits.x_test], np.float32)
    chex.assert_type([digits.y_train, digits.y_val, digits.y_test], np.int32)
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.class_names == tuple("0123456789")
    assert digits.image_shape == (8, 8, 1)
    assert digits.preprocessing.name == "standardize"


def test_digits_raw_range_and_stratification():
    ds = data.load("digits", normalize="none")
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(np.unique(ds.x_train * 16), np.arange(17))  # 0..16 / 16
    # 20% test split stratified: per-class test share within one image of 20%.
    full = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    test = np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(test - 0.2 * full) <= 1), (test, full)
    # The split is fixed: loading again gives the same arrays.
    again = data.load("digits", normalize="none")
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_validation_split_stratified_seeded_disjoint():
    raw = data.load("digits", normalize="none")
    a = data.load("digits", normalize="none", val_fraction=0.25, seed=3)
    b = data.load("digits", normalize="none", val_fraction=0.25, seed=3)
    c = data.load("digits", normalize="none", val_fraction=0.25, seed=4)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)
    assert len(a.y_train) + len(a.y_val) == len(raw.y_train)
    counts = raw.class_counts()
    assert np.all(np.abs(np.bincount(a.y_val, minlength=10) - 0.25 * counts) <= 0.5 + 1e-9)
    # Disjoint and together the original training set (compare image rows as bytes).
    rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}  # noqa: E731
    assert rows(a.x_train).isdisjoint(rows(a.x_val)) or len(rows(raw.x_train)) < len(raw.x_train)
    assert rows(a.x_train) | rows(a.x_val) == rows(raw.x_train)
    # with_validation on an existing Dataset does the same split.
    w = raw.with_validation(0.25, seed=3)
    np.testing.assert_array_equal(w.x_val, a.x_val)
    np.testing.assert_array_equal(w.y_train, a.y_train)


def test_standardize_fitted_on_train(digits):
    mean = digits.x_train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = digits.x_train.std(axis=(0, 1, 2), dtype=np.float64)
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    np.testing.assert_allclose(std, 1.0, atol=1e-5)
    # Fitted on the training split only (after removing validation images), applied to the others.
    raw = data.load("digits", normalize="none", val_fraction=0.1)
    pre = digits.preprocessing
    np.testing.assert_allclose(pre.mean, raw.x_train.mean(), rtol=1e-5)
    np.testing.assert_allclose(digits.x_test, (raw.x_test - pre.mean) / pre.std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pre.inverse(digits.x_val), raw.x_val, atol=1e-6)


def test_channel_mean_std_accurate_in_float64():
    x = np.random.default_rng(0).random((64, 4, 4, 3), dtype=np.float32) * [1.0, 0.5, 0.1]
    mean, std = channel_mean_std(x.astype(np.float32), chunk=7)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=(0, 1, 2)), rtol=1e-8)


# -- ZCA -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_images():
    """Correlated colour images, so whitening has something to undo."""
    rng = np.random.default_rng(1)
    base = rng.random((300, 4, 4, 1), dtype=np.float32)
    return np.clip(base + 0.3 * rng.random((300, 4, 4, 3), dtype=np.float32), 0, 1).astype(np.float32)


def test_zca_kip_whitens(colour_images):
    reg = 1e-3
    z = data.fit_zca(colour_images, variant="zca", regularization=reg)
    w = np.asarray(z.transform(colour_images), np.float64).reshape(len(colour_images), -1)
    chex.assert_shape(z.whitening, (48, 48))
    cov = w.T @ w / len(w)  # this variant's covariance: uncentred, per-image-normalised
    eig = np.linalg.eigvalsh(cov)[::-1]
    expected = z.whitened_eigenvalues()
    np.testing.assert_allclose(eig, expected, atol=2e-4)
    e = z.eigenvalues.astype(np.float64)
    np.testing.assert_allclose(expected, e / (e + reg * e.mean()), rtol=1e-6)
    assert expected[: np.sum(e > 1e-2 * e.mean())].min() > 0.9  # ≈ identity on the data's span
    # Per-image normalisation: a rescaled, shifted image whitens to the same thing.
    np.testing.assert_allclose(z.transform(3 * colour_images[:5] + 0.2), z.transform(colour_images[:5]), atol=1e-4)


def test_zca_mtt_whitens_and_inverts(colour_images):
    z = data.fit_zca(colour_images, variant="zca-mtt", regularization=1e-6)
    w = np.asarray(z.transform(colour_images), np.float64).reshape(len(colour_images), -1)
    np.testing.assert_allclose(w.mean(axis=0), 0.0, atol=1e-4)
    cov = np.cov(w, rowvar=False)  # unbiased, as Kornia
    np.testing.assert_allclose(cov, np.eye(48), atol=2e-3)
    np.testing.assert_allclose(z.inverse_transform(z.transform(colour_images)), colour_images, atol=1e-4)
    # Default regularisation 0.1 is absolute: eigenvalues s/(s+0.1).
    z01 = data.fit_zca(colour_images, variant="zca-mtt")
    assert z01.regularization == 0.1
    w01 = np.asarray(z01.transform(colour_images), np.float64).reshape(len(colour_images), -1)
    np.testing.assert_allclose(
        np.linalg.eigvalsh(np.cov(w01, rowvar=False))[::-1], z01.whitened_eigenvalues(), atol=1e-5
    )


def test_zca_load_and_inverse_for_display():
    kip = data.load("digits", normalize="zca")
    mtt = data.load("digits", normalize="zca-mtt", zca_regularization=0.05)
    raw = data.load("digits", normalize="none")
    assert kip.preprocessing.zca.regularization == 0.1 and mtt.preprocessing.zca.regularization == 0.05
    np.testing.assert_allclose(mtt.preprocessing.inverse(mtt.x_test), raw.x_test, atol=1e-5)
    shown = kip.preprocessing.inverse(kip.x_test[:10])
    chex.assert_shape(shown, (10, 8, 8, 1))
    np.testing.assert_allclose(shown.min(axis=(1, 2, 3)), 0.0, atol=1e-6)  # min-max rescaled per image
    np.testing.assert_allclose(shown.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    # Same shape as the original up to the (lost) per-image offset and scale: correlation ~1.
    for s, r in zip(shown, raw.x_test[:10]):
        assert np.corrcoef(s.ravel(), r.ravel())[0, 1] > 0.999


def test_preprocessing_works_on_jax_arrays(digits):
    import jax.numpy as jnp

    pre = data.load("digits", normalize="zca").preprocessing
    x = digits.x_test[:4]
    np.testing.assert_allclose(np.asarray(pre.apply(jnp.asarray(x))), pre.apply(x), atol=1e-5)
    np.testing.assert_allclose(np.asarray(pre.inverse(jnp.asarray(x))), pre.inverse(x), atol=1e-5)


# -- folders and archives --------------------------------------------------------------------------


def _write_tree(root, classes=("cat", "ant", "bee"), per_class=(3, 2), size=(5, 4), grey=(), fmt="PNG"):
    """train/<class>/<i>.png and test/<class>/<i>.png; pixel value encodes split, class and index."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if c in grey:
                    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
                else:
                    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                ext = "png" if fmt == "PNG" else "jpg"
                Image.fromarray(arr).save(d / f"{i}.{ext}", format=fmt)
    return root


def _tar(src, dest, mode, arcroot=None):
    with tarfile.open(dest, mode) as tf:
        tf.add(src, arcname=arcroot or ".")
    return dest


def _zip(src, dest, arcroot=""):
    with zipfile.ZipFile(dest, "w") as zf:
        for dirpath, dirnames, filenames in os.walk(src):
            for d in dirnames:  # explicit directory entries, as zip tools write them
                rel = os.path.relpath(os.path.join(dirpath, d), src)
                zf.writestr(os.path.join(arcroot, rel) + "/", b"")
            for f in filenames:
                full = os.path.join(dirpath, f)
                zf.write(full, os.path.join(arcroot, os.path.relpath(full, src)))
    return dest


def test_folder_colour_png(tmp_path):
    root = _write_tree(tmp_path / "imgs")
    ds = data.load(root, normalize="none", cache_dir=tmp_path / "cache")
    assert ds.class_names == ("ant", "bee", "cat")  # sorted train folder names
    chex.assert_shape([ds.x_train, ds.x_test], [(9, 4, 5, 3), (6, 4, 5, 3)])
    chex.assert_type([ds.x_train, ds.y_train], [np.float32, np.int32])
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    expected = np.asarray(Image.open(root / "train" / "bee" / "1.png")) / 255.0
    np.testing.assert_allclose(ds.x_train[4], expected, atol=1e-6)
    assert ds.name == "imgs"


def test_folder_grey_and_mixed(tmp_path):
    grey = _write_tree(tmp_path / "grey", grey=("ant", "bee", "cat"))
    ds = data.load(grey, normalize="none", cache_dir=tmp_path / "cache")
    chex.assert_shape(ds.x_train, (9, 4, 5, 1))
    mixed = _write_tree(tmp_path / "mixed", grey=("bee",))
    ds = data.load(mixed, normalize="none", cache_dir=tmp_path / "cache")
    chex.assert_shape(ds.x_train, (9, 4, 5, 3))
    g = ds.x_train[ds.y_train == 1]
    np.testing.assert_array_equal(g[..., 0], g[..., 2])  # grey repeated to RGB
    expected = np.asarray(Image.open(mixed / "train" / "bee" / "0.png")) / 255.0
    np.testing.assert_allclose(g[0, ..., 1], expected, atol=1e-6)


@pytest.mark.parametrize(
    "suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.xz", "w:xz"), (".zip", None)]
)
def test_archives_match_folder(tmp_path, suffix, mode):
    root = _write_tree(tmp_path / "src", grey=("ant",), fmt="JPEG")
    cache = tmp_path / "cache"
    ref = data.load(root, normalize="none", cache_dir=cache)
    archive = tmp_path / f"set{suffix}"
    if mode is None:
        _zip(root, archive, arcroot="myset")  # under one top-level folder
    else:
        _tar(root, archive, mode)  # entries "./train/..."
    ds = data.load(archive, normalize="none", cache_dir=cache)
    assert ds.class_names == ref.class_names
    np.testing.assert_array_equal(ds.x_train, ref.x_train)
    np.testing.assert_array_equal(ds.y_test, ref.y_test)
    assert ds.name == ("myset" if mode is None else "set")


def test_archive_under_top_level_folder(tmp_path):
    root = _write_tree(tmp_path / "src")
    archive = _tar(root, tmp_path / "cifar-like.tar.gz", "w:gz", arcroot="cifar10")
    ds = data.load(archive, cache_dir=tmp_path / "cache")
    assert ds.name == "cifar10" and ds.class_names == ("ant", "bee", "cat")
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)


def test_cache_used_and_keyed(tmp_path, monkeypatch):
    root = _write_tree(tmp_path / "src")
    archive = _tar(root, tmp_path / "set.tar", "w")
    cache = tmp_path / "cache"
    first = data.load(archive, normalize="none", cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("set-")
    with np.load(files[0]) as z:
        assert z["x_train"].dtype == np.uint8

    def broken(*args, **kwargs):
        raise AssertionError("decoder called although the cache is fresh")

    monkeypatch.setattr(folder_mod, "_decode_image", broken)
    second = data.load(archive, normalize="none", cache_dir=cache)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert second.class_names == first.class_names
    # The environment variable is the fallback cache dir.
    monkeypatch.setenv("JAXDD_CACHE_DIR", str(cache))
    data.load(archive, normalize="none")
    # A changed archive (new mtime/size) misses the cache and decodes again.
    os.utime(archive, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoder called"):
        data.load(archive, normalize="none", cache_dir=cache)


# -- tensorflow-datasets (mocked, offline, no TensorFlow) ------------------------------------------


def test_tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        ds = data.load("tfds:mnist", normalize="standardize", val_fraction=0.2)
    assert ds.name == "mnist" and ds.class_names == tuple("0123456789")
    chex.assert_shape([ds.x_train, ds.x_val, ds.x_test], [(None, 28, 28, 1)] * 3)
    assert len(ds.y_train) + len(ds.y_val) == 60 and len(ds.y_test) == 60
    chex.assert_type([ds.x_train, ds.y_train], [np.float32, np.int32])
    np.testing.assert_allclose(ds.x_train.mean(), 0.0, atol=1e-5)
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 10


def test_tfds_not_prepared_says_how(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(JaxddError) as e:
        data.load("tfds:mnist", tfds_data_dir=tmp_path)
    assert_one_line_error(e, "not prepared", "tensorflow", "download_and_prepare", "--datasets=mnist")
    with pytest.raises(JaxddError) as e:
        data.load("tfds:no_such_dataset_xyz", tfds_data_dir=tmp_path)
    assert_one_line_error(e, "no_such_dataset_xyz", "check the name")


# -- bad input -------------------------------------------------------------------------------------


def test_bad_options():
    with pytest.raises(JaxddError) as e:
        data.load("digits", normalize="whiten")
    assert_one_line_error(e, "standardize", "zca-mtt", "none")
    with pytest.raises(JaxddError) as e:
        data.load("digits", val_fraction=1.5)
    assert_one_line_error(e, "val_fraction")
    with pytest.raises(JaxddError) as e:
        data.load("digits", normalize="standardize", zca_regularization=0.1)
    assert_one_line_error(e, "zca_regularization")
    with pytest.raises(JaxddError) as e:
        data.load("digits", normalize="zca", zca_regularization=-1.0)
    assert_one_line_error(e, ">= 0")
    with pytest.raises(JaxddError) as e:
        data.fit_zca(np.zeros((4, 2, 2, 1)), variant="pca")
    assert_one_line_error(e, "zca-mtt")


def test_bad_sources(tmp_path):
    with pytest.raises(JaxddError) as e:
        data.load("cifar11")
    assert_one_line_error(e, "unknown data source", "digits", "tfds:NAME", "train/")
    with pytest.raises(JaxddError) as e:
        data.load(tmp_path / "missing")
    assert_one_line_error(e, "does not exist")
    with pytest.raises(JaxddError) as e:
        data.load("./nope.tar.gz")
    assert_one_line_error(e, "does not exist")
    other = tmp_path / "data.csv"
    other.write_text("1,2\n")
    with pytest.raises(JaxddError) as e:
        data.load(other)
    assert_one_line_error(e, "neither a folder nor an archive", ".zip")
    bad_tar = tmp_path / "bad.tar.gz"
    bad_tar.write_bytes(b"not a tar file at all")
    with pytest.raises(JaxddError) as e:
        data.load(bad_tar, cache_dir=tmp_path / "cache")
    assert_one_line_error(e, "cannot read archive", "bad.tar.gz")


def _load_err(path, tmp_path):
    with pytest.raises(JaxddError) as e:
        data.load(path, normalize="none", cache_dir=tmp_path / "cache")
    return e


def test_bad_layouts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(_load_err(empty, tmp_path), "no train/ and test/")

    no_test = _write_tree(tmp_path / "no_test")
    for f in (no_test / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((no_test / "test").iterdir()):
        d.rmdir()
    (no_test / "test").rmdir()
    assert_one_line_error(_load_err(no_test, tmp_path), "test/")

    empty_class = _write_tree(tmp_path / "empty_class")
    (empty_class / "train" / "dog").mkdir()
    (empty_class / "train" / "dog" / "notes.txt").write_text("no images here")
    assert_one_line_error(_load_err(empty_class, tmp_path), "train/dog", "no images")

    mismatch = _write_tree(tmp_path / "mismatch")
    (mismatch / "test" / "cat").rename(mismatch / "test" / "cow")
    assert_one_line_error(_load_err(mismatch, tmp_path), "test classes do not match", "cat", "cow")

    unreadable = _write_tree(tmp_path / "unreadable")
    (unreadable / "train" / "bee" / "1.png").write_bytes(b"\x89PNG garbage")
    assert_one_line_error(_load_err(unreadable, tmp_path), "cannot read image", "train/bee/1.png")

    sizes = _write_tree(tmp_path / "sizes")
    Image.fromarray(np.zeros((7, 6), np.uint8)).save(sizes / "test" / "cat" / "1.png")
    assert_one_line_error(_load_err(sizes, tmp_path), "different sizes", "5x4", "6x7", "test/cat/1.png")


def test_bad_archive_layout_and_empty_class_in_zip(tmp_path):
    root = _write_tree(tmp_path / "src")
    (root / "train" / "dog").mkdir()  # empty class folder: kept as a zip directory entry
    archive = _zip(root, tmp_path / "set.zip", arcroot="top")
    assert_one_line_error(_load_err(archive, tmp_path), "top/train/dog", "no images")
    two_tops = tmp_path / "two.zip"
    with zipfile.ZipFile(two_tops, "w") as zf:
        zf.writestr("a/train/x/0.png", _png())
        zf.writestr("b/test/x/0.png", _png())
    assert_one_line_error(_load_err(two_tops, tmp_path), "no train/ and test/")


def _png():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_validate_catches_bad_arrays():
    x = np.zeros((4, 2, 2, 1), np.float32)
    y = np.array([0, 1, 0, 1], np.int32)
    good = Dataset("toy", x, y, x, y, 2, ("a", "b"))
    assert good.validate() is good
    with pytest.raises(JaxddError) as e:
        good.replace(x_train=np.where(np.arange(4)[:, None, None, None] == 2, np.nan, x)).validate()
    assert_one_line_error(e, "NaN")
    with pytest.raises(JaxddError) as e:
        good.replace(y_test=np.array([0, 1, 2, 1], np.int32)).validate()
    assert_one_line_error(e, "labels", "[0, 2]")
    with pytest.raises(JaxddError) as e:
        good.replace(num_classes=3, class_names=("a", "b", "c")).validate()
    assert_one_line_error(e, "'c'", "no training images")
    with pytest.raises(JaxddError) as e:
        good.with_validation(0.1)  # rounds to zero held-out images
    assert_one_line_error(e, "val_fraction")


def test_zca_with_nan_result_is_caught(monkeypatch):
    # NaN produced by preprocessing is caught by the final validation.
    monkeypatch.setattr(data.Preprocessing, "apply", lambda self, x: x * np.nan)
    with pytest.raises(JaxddError) as e:
        data.load("digits", normalize="zca-mtt")
    assert_one_line_error(e, "NaN")


def test_unreadable_image_in_archive_named_only_when_used(tmp_path):
    root = _write_tree(tmp_path / "src")
    (root / "train" / "ant" / "9.png").write_bytes(b"garbage")
    (root / "extra").mkdir()
    (root / "extra" / "junk.png").write_bytes(b"garbage")  # outside train/ and test/: ignored
    archive = _tar(root, tmp_path / "set.tar.gz", "w:gz")
    assert_one_line_error(_load_err(archive, tmp_path), "cannot read image", "train/ant/9.png")
    (root / "train" / "ant" / "9.png").unlink()
    archive = _tar(root, tmp_path / "set2.tar.gz", "w:gz")
    ds = data.load(archive, normalize="none", cache_dir=tmp_path / "cache")
    assert len(ds.y_train) == 9
