"""The Dataset container every loader returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxdd.errors import JaxddError, require


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/test (and optional validation) arrays of one data set, already preprocessed.

    Images are float32 NHWC ``[N, H, W, C]``; labels int32 ``[N]`` in ``[0, num_classes)``.
    ``preprocessing`` maps the preprocessed pixels back to [0, 1] display pixels with ``inverse``.
    ``x_val``/``y_val`` are carved from the training data (see ``with_validation``) and are the only
    split used for choices that are tuned; the test split is for final reporting.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    preprocessing: Any = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def class_counts(self) -> np.ndarray:
        """Number of training images per class, shape [num_classes]."""
        return np.bincount(self.y_train, minlength=self.num_classes)

    def replace(self, **changes) -> "Dataset":
        return dataclasses.replace(self, **changes)

    # -- added by the data package ------------------------------------------------------------------

    @staticmethod
    def stratified_indices(labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Split indices of ``labels`` into (keep, held_out), ``round(fraction · n_c)`` per class.

        Seeded by ``seed`` (numpy Generator); every class keeps at least one example; both index
        arrays are sorted, so the original order is preserved within each part.
        """
        require(
            isinstance(fraction, (int, float)) and 0.0 < float(fraction) < 1.0,
            f"val_fraction must be a number in (0, 1), got {fraction!r}",
        )
        labels = np.asarray(labels)
        rng = np.random.default_rng(seed)
        held = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = min(int(round(float(fraction) * idx.size)), idx.size - 1)
            if k > 0:
                held.append(rng.permutation(idx)[:k])
        held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
        require(
            held.size > 0,
            f"val_fraction={fraction} leaves no validation images out of {labels.size}: use a larger fraction",
        )
        keep = np.setdiff1d(np.arange(labels.size), held)
        return keep, held

    def with_validation(self, fraction: float, seed: int = 0) -> "Dataset":
        """Carve a stratified validation split (seeded) out of the training split.

        Replaces any existing x_val/y_val. The preprocessing is not refitted: it stays the one fitted
        on the whole training split (``data.load(..., val_fraction=f)`` fits it without the validation
        images instead, which is the leak-free choice).
        """
        keep, held = Dataset.stratified_indices(self.y_train, fraction, seed)
        return self.replace(
            x_train=self.x_train[keep],
            y_train=self.y_train[keep],
            x_val=self.x_train[held],
            y_val=self.y_train[held],
        )

    def validate(self, check_finite: bool = True) -> "Dataset":
        """Check shapes, finiteness (unless check_finite=False) and labels; raise JaxddError or return self."""
        require(self.num_classes >= 1, f"data set {self.name!r} has no classes")
        require(
            len(self.class_names) == self.num_classes,
            f"data set {self.name!r} has {len(self.class_names)} class names for {self.num_classes} classes",
        )
        splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if self.x_val is not None or self.y_val is not None:
            splits.append(("validation", self.x_val, self.y_val))
        shape = None
        for split, x, y in splits:
            require(x is not None and y is not None, f"the {split} split of {self.name!r} lacks images or labels")
            require(
                x.ndim == 4, f"{split} images of {self.name!r} must be [N, H, W, C], got shape {x.shape}"
            )
            require(
                x.shape[0] == y.shape[0] and y.ndim == 1,
                f"{split} split of {self.name!r} has {x.shape[0]} images but labels of shape {y.shape}",
            )
            require(x.shape[0] > 0 or split != "train", f"the train split of {self.name!r} is empty")
            shape = x.shape[1:] if shape is None else shape
            require(
                x.shape[1:] == shape,
                f"{split} images of {self.name!r} have shape {x.shape[1:]}, train images {shape}: "
                "use images of one size",
            )
            require(
                not check_finite or all(np.isfinite(x[i : i + 4096]).all() for i in range(0, len(x), 4096)),
                f"{split} images of {self.name!r} contain NaN or Inf: fix the source images or the preprocessing",
            )
            if y.size:
                lo, hi = int(y.min()), int(y.max())
                require(
                    lo >= 0 and hi < self.num_classes,
                    f"{split} labels of {self.name!r} range over [{lo}, {hi}], outside [0, {self.num_classes}): "
                    "fix the labels or num_classes",
                )
        counts = self.class_counts()
        empty = [self.class_names[c] for c in np.flatnonzero(counts == 0)]
        if empty:
            raise JaxddError(
                f"class {empty[0]!r} of {self.name!r} has no training images"
                + (f" ({len(empty)} empty classes)" if len(empty) > 1 else "")
                + ": give every class training images"
            )
        return self
