"""The digits data set bundled with scikit-learn: 1,797 grey 8×8 images of the digits 0–9.

Pixels 0..16 are scaled to [0, 1] float32 and shaped [N, 8, 8, 1]. The train/test split is fixed:
20% test, stratified by class, ``sklearn.model_selection.train_test_split(..., test_size=0.2,
stratify=y, random_state=0)``, which gives 1,437 training and 360 test images (both in the order
train_test_split returns them). No download: the data ship with scikit-learn.
"""

from __future__ import annotations

import numpy as np

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))


def load_digits_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """(x_train, y_train, x_test, y_test, class_names) with images in [0, 1], float32 [N, 8, 8, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return x_train, y_train, x_test, y_test, DIGITS_CLASS_NAMES
