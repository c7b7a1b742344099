"""Data sets for jaxdd: ``load(source) -> Dataset``.

Sources: ``"digits"`` (bundled with scikit-learn, the default), ``"tfds:NAME"`` (a prepared
tensorflow-datasets data set), or a path to a folder or archive holding ``train/<class>/<image>`` and
``test/<class>/<image>``. Pixels are scaled to [0, 1], an optional validation split is carved from the
training split, then the chosen normalisation is fitted on the (remaining) training images and applied
to every split. ``Dataset.preprocessing.inverse`` maps model inputs back to display pixels.
"""

from __future__ import annotations

import os

import numpy as np

from jaxdd.data.dataset import Dataset
from jaxdd.data.digits import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, load_digits_raw
from jaxdd.data.folder import cache_path, default_cache_dir, load_folder_raw, looks_like_path
from jaxdd.data.tfds_source import load_tfds_raw
from jaxdd.data.hf_source import load_hf_raw
from jaxdd.data.preprocess import (
    NORMALIZATIONS,
    ZCA_VARIANTS,
    Preprocessing,
    Zca,
    apply_preprocessing,
    fit_preprocessing,
    fit_zca,
)
from jaxdd.errors import JaxddError, require

__all__ = [
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "Dataset",
    "NORMALIZATIONS",
    "Preprocessing",
    "Zca",
    "ZCA_VARIANTS",
    "cache_path",
    "default_cache_dir",
    "fit_preprocessing",
    "fit_zca",
    "load",
    "load_raw",
    "preprocess_dataset",
]

_UNKNOWN = "use 'digits', 'tfds:NAME', 'hf:NAME' or a path to a folder/archive with train/ and test/"


def load_raw(
    source: str | os.PathLike = "digits",
    *,
    cache_dir: str | os.PathLike | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
) -> Dataset:
    """The source's images scaled to [0, 1] float32, unnormalised and unvalidated (see ``load``)."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    require(isinstance(source, str) and source.strip() != "", f"unknown data source {source!r}: {_UNKNOWN}")
    if source == "digits":
        x_train, y_train, x_test, y_test, names = load_digits_raw()
        return Dataset("digits", x_train, y_train, x_test, y_test, len(names), names)
    if source.startswith("tfds:"):
        raw = load_tfds_raw(source[len("tfds:"):].strip(), data_dir=tfds_data_dir)
    elif source.startswith("hf:"):
        raw = load_hf_raw(source[len("hf:"):].strip(), cache_dir=cache_dir)
    elif os.path.exists(os.path.expanduser(source)) or looks_like_path(source):
        raw = load_folder_raw(source, cache_dir=cache_dir)
    else:
        raise JaxddError(f"unknown data source {source!r}: {_UNKNOWN}")
    return Dataset(
        raw["name"],
        _to_unit(raw["x_train"]),
        raw["y_train"],
        _to_unit(raw["x_test"]),
        raw["y_test"],
        len(raw["class_names"]),
        raw["class_names"],
    )


def _to_unit(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, np.float32)
    np.multiply(x, np.float32(1.0 / 255.0), out=out, casting="unsafe")
    return out


def preprocess_dataset(
    dataset: Dataset,
    normalize: str = "standardize",
    zca_regularization: float | None = None,
    *,
    _inplace: bool = False,
) -> Dataset:
    """Fit ``normalize`` on dataset.x_train (pixels in [0, 1]) and apply it to every split.

    Returns a new Dataset; the input's arrays are left untouched.
    """
    require(
        dataset.preprocessing is None or dataset.preprocessing.name == "none",
        f"data set {dataset.name!r} is already preprocessed ({dataset.preprocessing!r}): start from load_raw",
    )
    pre = fit_preprocessing(dataset.x_train, normalize, zca_regularization)
    if normalize == "none":
        return dataset.replace(preprocessing=pre)
    x_train, x_test, x_val = apply_preprocessing(
        pre, dataset.x_train, dataset.x_test, dataset.x_val, inplace=_inplace
    )
    return dataset.replace(x_train=x_train, x_test=x_test, x_val=x_val, preprocessing=pre)


def load(
    source: str | os.PathLike = "digits",
    *,
    normalize: str = "standardize",
    val_fraction: float = 0.0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    zca_regularization: float | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load a data set, carve an optional validation split, normalise, validate.

    Args:
      source: "digits", "tfds:NAME", or a path to a folder/archive (.tar, .tar.gz, .tgz, .tar.xz,
        .zip) holding train/<class>/<image> and test/<class>/<image>.
      normalize: "none", "standardize" (per-channel mean/std), "zca" (KIP/RaT-BPTT) or "zca-mtt"
        (Kornia/MTT), fitted on the training split (after removing the validation images).
      val_fraction: in [0, 1); > 0 moves a stratified, ``seed``-seeded share of the training images
        to x_val/y_val.
      cache_dir: where decoded folders/archives are cached (else $JAXDD_CACHE_DIR, else ~/.cache/jaxdd).
      zca_regularization: the ZCA regulariser (default 0.1; relative to the mean eigenvalue for "zca",
        absolute for "zca-mtt").
      tfds_data_dir: tensorflow-datasets' data_dir for tfds: sources (default: its own).

    Raises:
      JaxddError: with a one-line message, for any bad source, option or data.
    """
    if not isinstance(normalize, str) or normalize not in NORMALIZATIONS:
        raise JaxddError(f"unknown normalize {normalize!r}: use one of {', '.join(NORMALIZATIONS)}")
    require(
        isinstance(val_fraction, (int, float)) and 0.0 <= float(val_fraction) < 1.0,
        f"val_fraction must be a number in [0, 1), got {val_fraction!r}",
    )
    require(
        zca_regularization is None or normalize in ZCA_VARIANTS,
        f"zca_regularization only applies to normalize='zca' or 'zca-mtt', not {normalize!r}",
    )
    ds = load_raw(source, cache_dir=cache_dir, tfds_data_dir=tfds_data_dir)
    # Catch bad labels and empty classes before fitting anything (pixels from uint8 are finite).
    ds.validate(check_finite=False)
    if val_fraction > 0:
        ds = ds.with_validation(float(val_fraction), seed=seed)
    # The arrays are fresh copies made by load_raw / with_validation: preprocess them in place.
    ds = preprocess_dataset(ds, normalize, zca_regularization, _inplace=True)
    return ds.validate()
