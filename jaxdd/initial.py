"""Initial synthetic sets: strategies by name (noise, real, means) or a file, class-major (row = class·IPC + j).

`STRATEGIES` maps a name to fn(dataset, ipc, key, noise_scale) -> (images float32 [C·IPC, H, W, C], labels
int32); room for more. A method that starts from a set of its own (SelMatch's selection by difficulty
scores) replaces the initial set in its `init` instead.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdd import rundir
from jaxdd.errors import JaxddError, require
from jaxdd.evaluation import check_set, random_real


def real(dataset, ipc: int, key, noise_scale: str = "real"):
    """Random real training images, `ipc` per class (seeded by `key`)."""
    seed = int(jax.random.randint(key, (), 0, 2**30))
    images, labels = random_real(dataset, ipc, seed=seed)  # also validates ipc against the class sizes
    return images.astype(np.float32), labels


def noise(dataset, ipc: int, key, noise_scale: str = "real"):
    """Gaussian noise, each image scaled to unit L2 norm ("unit": RaT-BPTT's authors, on ZCA data) or
    to the mean L2 norm of real training images ("real": the same relative scale on any preprocessing)."""
    images, labels = real(dataset, ipc, key)  # the class layout (and the ipc check)
    noise = np.asarray(jax.random.normal(key, images.shape), np.float32)
    norms = np.linalg.norm(noise.reshape(len(noise), -1), axis=1).reshape(-1, 1, 1, 1)
    target = 1.0
    if noise_scale == "real":
        sample = np.asarray(dataset.x_train[:1000]).reshape(min(1000, len(dataset.x_train)), -1)
        target = float(np.linalg.norm(sample, axis=1).mean())
    return (noise / norms * target).astype(np.float32), labels


def from_file(path: str, dataset, ipc: int):
    """The first `ipc` images per class of a distilled.npz (class-major), checked against `dataset`."""
    saved = rundir.load_distilled(path)
    images, labels = np.asarray(saved["images"], np.float32), np.asarray(saved["labels"])
    made_on = (saved["settings"] or {}).get("dataset", "another data set")
    require(saved["class_names"] is None or saved["class_names"] == [str(n) for n in dataset.class_names],
            f"--init {path}: the set was made on {made_on}, whose classes ({', '.join(saved['class_names'][:3])}, ...) "
            f"are not this data set's: start from a set made on this data set")
    try:  # the checks `jaxdd evaluate` applies to a set (finite images, labels of this data set)
        check_set(images, labels, dataset)
    except JaxddError as err:
        raise JaxddError(f"--init {path}: {err}") from None
    hard = labels.argmax(-1) if labels.ndim == 2 else labels
    require(images.shape[1:] == tuple(dataset.image_shape),
            f"--init {path}: images of shape {images.shape[1:]} do not fit the data set's {tuple(dataset.image_shape)}")
    rows = [np.flatnonzero(hard == c)[:ipc] for c in range(dataset.num_classes)]
    short = [c for c, r in enumerate(rows) if len(r) < ipc]
    require(not short, f"--init {path}: class {short[:1]} has fewer than --ipc {ipc} images: "
                       f"use --ipc {min(len(r) for r in rows)} or another file")
    idx = np.concatenate(rows)
    return images[idx], np.repeat(np.arange(dataset.num_classes, dtype=np.int32), ipc)


def means(dataset, ipc: int, key, noise_scale: str = "real", iterations: int = 10):
    """Per class, `ipc` k-means centroids of its training images (Lloyd's iterations from random real
    images seeded by `key`); at IPC 1 the class's mean image. Not real images, but the points that one
    or a few images per class can best stand for."""
    return means_beside(dataset, None, ipc, key, iterations)


def means_beside(dataset, existing, ipc: int, key, iterations: int = 10):
    """Per class, `ipc` new k-means centroids of its training images with the class's `existing` images
    (class-major [C·k, H, W, C], or None) held fixed as further centroids, for Boost-DD's fresh blocks.
    The new ones start from training images drawn with probability ∝ their squared distance to the
    nearest centroid so far (k-means++ seeding beside the existing images, seeded by `key`), and Lloyd's
    iterations move only them, so they tend to settle where the existing images leave the class
    uncovered (a local optimum, not a guarantee). With no existing images, plain k-means (`means`:
    Lloyd's iterations from random real images)."""
    start, labels = real(dataset, ipc, key)
    x, y = np.asarray(dataset.x_train, np.float32), np.asarray(dataset.y_train)
    out = start.reshape(len(start), -1).copy()
    fixed = (None if existing is None
             else np.asarray(existing, np.float32).reshape(dataset.num_classes, -1, out.shape[1]))
    rng = np.random.default_rng(int(jax.random.randint(jax.random.fold_in(key, 1), (), 0, 2**30)))
    for c in range(dataset.num_classes):
        pts = x[y == c].reshape(-1, out.shape[1])
        held = np.zeros((0, out.shape[1]), np.float32) if fixed is None else fixed[c]
        cent = out[c * ipc:(c + 1) * ipc]
        if len(held):
            cent = _seed_beside(pts, held, ipc, rng)
        for _ in range(iterations if ipc > 1 or len(held) else 1):
            both = np.concatenate([held, cent])
            near = _sq_dist(pts, both).argmin(1) - len(held)  # < 0: nearest to an existing image
            cent = np.stack([pts[near == j].mean(0) if (near == j).any() else cent[j] for j in range(ipc)])
        out[c * ipc:(c + 1) * ipc] = cent
    return out.reshape(start.shape).astype(np.float32), labels


def _sq_dist(pts, cent):
    """Squared Euclidean distances [P, K] between rows of `pts` and of `cent`."""
    return np.maximum((pts ** 2).sum(1)[:, None] - 2 * pts @ cent.T + (cent ** 2).sum(1)[None], 0.0)


def _seed_beside(pts, held, k: int, rng):
    """k points of `pts` drawn one by one with probability ∝ squared distance to the nearest of `held` and
    those drawn so far (k-means++ seeding with fixed centres)."""
    nearest = _sq_dist(pts, held).min(1)
    chosen = []
    for _ in range(k):
        total = nearest.sum()
        i = int(rng.choice(len(pts), p=nearest / total)) if total > 0 else int(rng.integers(len(pts)))
        chosen.append(pts[i])
        nearest = np.minimum(nearest, _sq_dist(pts, pts[i:i + 1])[:, 0])
    return np.stack(chosen)


STRATEGIES = {"noise": noise, "real": real, "means": means}


def initial_set(dataset, ipc: int, how: str, key, *, noise_scale: str = "real"):
    """(images, labels) to start from: a strategy in STRATEGIES or a path to a distilled.npz."""
    if how in STRATEGIES:
        return STRATEGIES[how](dataset, ipc, key, noise_scale)
    require(str(how).endswith(".npz"), f"unknown --init '{how}': use {', '.join(STRATEGIES)} or a distilled.npz")
    return from_file(how, dataset, ipc)
