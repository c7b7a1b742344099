"""Per-example difficulty scores of a training split, always returned as "higher = harder".

docs/methods/experts.md describes them. Three kinds:

* ``forgetting``: forgetting events counted while the experts train (jaxdd/experts/ writes
  ``forgetting.npz`` next to them), summed over experts; never-learned examples count the maximum.
* ``el2n``: ‖softmax(f(x)) − onehot(y)‖₂ averaged over a few briefly trained networks (vmapped),
  :func:`el2n_scores`.
* ``cscore``: a user's C-score file (npz with ``labels`` and ``scores``, low = hard, as the public
  CIFAR files); converted to 1 − C.

Score files written here (:func:`save_scores`) hold ``scores`` float32 [N], ``labels`` int32 [N],
``kind`` and ``higher_is_harder`` (True). :func:`load_scores` reads any of them, or a C-score file,
and refuses one whose length or labels do not match the data set's training split.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import evaluation
from jaxdd import models as models_lib
from jaxdd import training, xla_options
from jaxdd.errors import require, require_count
from jaxdd.rundir import read_npz

__all__ = ["KINDS", "FORGETTING_FILE", "save_scores", "read_score_file", "load_scores", "el2n_from_logits",
           "el2n_scores", "cscore_to_difficulty"]

KINDS = ("forgetting", "el2n", "cscore")
FORGETTING_FILE = "forgetting.npz"


def save_scores(path, scores, labels, kind: str) -> None:
    """Write a score file: scores (higher = harder) and the training labels they belong to."""
    require(kind in KINDS, f"unknown score kind {kind!r}: use one of {', '.join(KINDS)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int32), kind=kind,
             higher_is_harder=True)
    os.replace(tmp, path)


def read_score_file(path) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [N], labels int [N]) of a score file, as stored (no conversion)."""
    scores, labels, _, _ = _read(path)
    return scores, labels


def _read(path) -> tuple[np.ndarray, np.ndarray, str | None, bool]:
    """(scores, labels, stored kind or None, whether the scores are already "higher = harder")."""
    path = Path(path)
    require(path.is_file(), f"no score file {path}: give an npz with 'scores' and 'labels' (or an experts folder)")
    arrays = read_npz(path, ("scores", "labels"), give="an npz with 'scores' and 'labels'",
                      save="scores [N] and labels [N]")
    scores, labels = np.asarray(arrays["scores"]), np.asarray(arrays["labels"])
    require(scores.ndim == 1 and labels.shape == scores.shape,
            f"{path}: scores {scores.shape} and labels {labels.shape} must both be 1-D of the same length")
    require(np.issubdtype(scores.dtype, np.number) and bool(np.all(np.isfinite(scores))),
            f"{path}: scores must be finite numbers")
    kind = str(arrays["kind"]) if "kind" in arrays else None
    return scores.astype(np.float32), labels, kind, bool(arrays.get("higher_is_harder", False))


def cscore_to_difficulty(cscores) -> np.ndarray:
    """C-scores (consistency: high = easy, in [0, 1]) -> difficulty 1 − C (higher = harder)."""
    return (1.0 - np.asarray(cscores, np.float32)).astype(np.float32)


def _check_against(path, scores, labels, dataset) -> None:
    y = np.asarray(dataset.y_train)
    require(scores.size == y.size, f"{path} has {scores.size} scores but data set {dataset.name!r} has {y.size} "
                                   f"training images: use scores computed on this data set and split")
    bad = np.flatnonzero(labels != y)
    require(bad.size == 0, f"{path}: labels differ from the training labels of {dataset.name!r} at {bad.size} of "
                           f"{y.size} positions (first at index {bad[0] if bad.size else 0}): the scores are for "
                           f"another data set, split or order")


def load_scores(source, dataset, *, kind: str | None = None, **el2n_options) -> np.ndarray:
    """Difficulty scores for ``dataset``'s training split: float32 [N_train], higher = harder.

    ``source``: ``"el2n"`` (computed now, :func:`el2n_scores` with ``el2n_options``), an experts folder
    (its forgetting.npz), or an npz file. A file written by :func:`save_scores` names its kind and is
    already "higher = harder"; any other file is raw: a C-score file (low = hard, converted to 1 − C)
    unless ``kind`` says otherwise. ``kind`` given for a jaxdd file must match its stored kind.
    """
    require(kind in (None,) + KINDS, f"unknown score kind {kind!r}: use one of {', '.join(KINDS)}")
    if str(source) == "el2n":
        return el2n_scores(dataset, **el2n_options)
    path = Path(source)
    if path.is_dir():
        path = path / FORGETTING_FILE
        require(path.is_file(), f"{source} has no {FORGETTING_FILE}: train the experts to the end "
                                f"('jaxdd experts ... --resume') or give a score file")
    scores, labels, stored, oriented = _read(path)
    require(stored is None or kind in (None, stored),
            f"{path} holds {stored} scores, not {kind}: drop the kind or give a {kind} file")
    _check_against(path, scores, labels, dataset)
    if oriented or (kind or "cscore") != "cscore":
        return scores
    return cscore_to_difficulty(scores)


# ----------------------------------------------------------------------------------------------
# EL2N (Paul, Ganguli, Dziugaite, "Deep learning on a data diet", NeurIPS 2021)


def el2n_from_logits(logits, labels) -> jax.Array:
    """‖softmax(logits) − onehot(labels)‖₂ over the class axis: logits [..., C], labels int [...]."""
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.linalg.norm(probs - jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype), axis=-1)


@functools.lru_cache(maxsize=16)
def _el2n_scorer(model):
    """jitted: (params [K], state [K], xs [chunks, c, ...], ys [chunks, c]) -> mean EL2N over K [chunks, c]."""

    def one(params, state, x, y):
        logits, _ = model.apply(params, state, x, train=False)
        return el2n_from_logits(logits, y)

    def score(params, state, xs, ys):
        def chunk(_, xy):
            return None, jax.vmap(one, in_axes=(0, 0, None, None))(params, state, *xy).mean(0)

        return jax.lax.scan(chunk, None, (xs, ys))[1]

    return xla_options.jit(score)


def el2n_scores(dataset, *, num_models: int = 4, epochs: int = 20, model: str = "convnet", width: int | None = None,
                depth: int | None = None, norm: str | None = None, lr: float = 0.01, momentum: float = 0.9,
                batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """EL2N of every training image: float32 [N_train], higher = harder.

    ``num_models`` networks (vmapped; seeds from ``seed``) train ``epochs · ⌈N / batch_size⌉`` SGD
    steps (momentum, random minibatches, no augmentation) with jaxdd.training's trainer; the score
    is their mean ‖softmax − onehot‖₂ on the un-augmented image. 20 epochs is the paper's "early"
    point on CIFAR (of 200); a small set such as digits (6 steps an epoch at batch 256) needs a
    smaller batch or more epochs before the scores separate examples.
    """
    require_count("num_models", num_models, "--models")
    require_count("epochs", epochs, "--epochs")
    require_count("batch_size", batch_size, "--batch-size")
    net = training.network(model, dataset.image_shape, dataset.num_classes,
                           **models_lib.network_defaults(model, dataset.image_shape, width, depth), norm=norm)
    images, labels = evaluation.full_data(dataset)
    images, targets = evaluation.check_set(images, labels, dataset, net)
    init, run = training.trainer(net, "sgd", float(momentum), 0.0, int(batch_size), "none", None, 0.1)
    keys = jax.random.split(jax.random.key(seed), num_models)
    total = int(epochs) * math.ceil(len(images) / batch_size)
    unused = jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32), jnp.zeros(len(images), bool)  # uniform batches
    params, state, _ = run(init(keys), keys, jnp.asarray(images), jnp.asarray(targets), *unused, jnp.int32(0),
                           jnp.int32(total), jnp.float32(lr), jnp.int32(total))
    xs, ys, _ = training.chunks(images, labels, training.EVAL_CHUNK)
    scores = _el2n_scorer(net)(params, state, jnp.asarray(xs), jnp.asarray(ys))
    return np.asarray(scores, np.float32).reshape(-1)[: len(images)]
