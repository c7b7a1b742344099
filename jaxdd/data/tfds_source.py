"""``tfds:NAME`` sources through tensorflow-datasets' random-access ``tfds.data_source``.

Reading a prepared data set needs no TensorFlow (array_record files are read with numpy); preparing
one (download + conversion) does need TensorFlow and network, so this module never downloads:
``download=False`` makes an unprepared data set fail at once, and that failure becomes a JaxddError
saying how to prepare it. tensorflow-datasets is imported only here, and only for ``tfds:`` sources.

The images are read from the feature ``image`` and the labels from ``label``; the class names come
from ``info.features['label'].names``. Splits ``train`` and ``test`` are used. ``data_dir`` defaults to
tensorflow-datasets' own (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from jaxdd.errors import JaxddError, one_line, require


def _prepare_hint(name: str) -> str:
    return (
        f"run `pip install tensorflow && python -m tensorflow_datasets.scripts.download_and_prepare "
        f"--datasets={name} --file_format=array_record` on a machine with network "
        "(preparing needs TensorFlow), or pass --dataset PATH to an image folder/archive"
    )


def _read_split(source, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    require(n > 0, f"split {split!r} of tfds:{name} is empty: prepare the data set again")
    images, labels = [], []
    batch = 1024
    for start in range(0, n, batch):
        keys = list(range(start, min(start + batch, n)))
        try:
            records = source.__getitems__(keys)
        except (TypeError, AttributeError, NotImplementedError):  # some sources (and mocks) lack batch reads
            records = [source[k] for k in keys]
        for rec in records:
            require(
                "image" in rec and "label" in rec,
                f"tfds:{name} records have features {sorted(rec)}, not 'image' and 'label': "
                "use an image classification data set",
            )
            images.append(np.asarray(rec["image"]))
            labels.append(int(rec["label"]))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise JaxddError(
            f"images of different sizes in tfds:{name} split {split!r}: {a} and {b}: "
            "use a data set with one image size, or resize into an image folder"
        )
    x = np.stack(images)
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(labels, np.int32)


def load_tfds_raw(name: str, data_dir: str | os.PathLike | None = None) -> dict:
    """Raw arrays of a prepared tensorflow-datasets data set (see load_folder_raw for the keys)."""
    require(name != "", "empty tfds data set name: use e.g. 'tfds:cifar10'")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise JaxddError(
            f"tfds:{name} needs tensorflow-datasets ({one_line(e)}): pip install tensorflow-datasets"
        ) from None
    absl_logger = logging.getLogger("absl")
    old_level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # quiet "Variant folder ... has no dataset_info.json"
    try:
        return _load(tfds, name, data_dir)
    finally:
        absl_logger.setLevel(old_level)


def _load(tfds, name: str, data_dir) -> dict:
    sources = {}
    for split in ("train", "test"):
        try:
            sources[split] = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except JaxddError:
            raise
        except Exception as e:  # DatasetNotFoundError, AssertionError (not prepared), NotImplementedError...
            kind = type(e).__name__
            if kind == "DatasetNotFoundError":
                raise JaxddError(
                    f"tensorflow-datasets has no data set {name!r}: check the name (e.g. tfds:cifar10, "
                    "tfds:mnist), or pass --dataset PATH to an image folder/archive"
                ) from None
            if "split" in str(e).lower() and "unknown" in str(e).lower():
                raise JaxddError(f"tfds:{name} has no {split!r} split: use a data set with train and test splits") from None
            raise JaxddError(
                f"tfds:{name} is not prepared (as array_record) in "
                f"{data_dir or 'the tensorflow-datasets data dir'} and jaxdd does not download: "
                + _prepare_hint(name)
            ) from None
    info = sources["train"].dataset_info
    try:
        class_names = tuple(str(c) for c in info.features["label"].names)
    except (KeyError, AttributeError, TypeError):
        raise JaxddError(
            f"tfds:{name} has no class label feature 'label': use an image classification data set"
        ) from None
    x_train, y_train = _read_split(sources["train"], name, "train")
    x_test, y_test = _read_split(sources["test"], name, "test")
    require(
        x_train.shape[1:] == x_test.shape[1:],
        f"tfds:{name} train images are {x_train.shape[1:]} but test images {x_test.shape[1:]}: "
        "use a data set with one image size",
    )
    require(
        x_train.dtype == np.uint8,
        f"tfds:{name} images are {x_train.dtype}, not uint8 pixels: use an image data set",
    )
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "class_names": class_names,
        "name": name,
    }
