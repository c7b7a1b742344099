"""Evaluate a (distilled) training set: train K fresh networks on it, report their test accuracy.

docs/evaluation.md. :func:`evaluate` trains ``num_models`` networks from independent seeds *at once*:
one jitted training function, vmapped over the K model keys, whose inner loop over steps runs inside
jit (``lax.fori_loop`` with traced bounds, so the step budget and the progress-bar chunks never cause
a recompilation). The images, the targets and the learning rate are arguments of the jitted
function, never constants closed over. Test accuracy is computed inside one more jitted function
that maps over fixed-size chunks of the test split (all K models per chunk), so memory stays bounded.

Protocols (:data:`PROTOCOLS`, frozen :class:`Protocol` dataclasses; every field can be overridden by
a keyword argument of :func:`evaluate`):

* ``"ratbptt"`` (RaT-BPTT): Adam lr 1e-3, one of {flip, rotate ±15°} per batch, class-balanced
  minibatches (the whole set when it has ≤ 256 images), 3000 steps, 8 networks, accuracy also at the
  checkpoints 300/600/1000 steps. The authors report the best of the four checkpoints on the test set
  (selection on the test set); ``accuracy_mean`` is the fixed budget's number (3000 steps), and when
  the data set has a validation split, ``accuracy_chosen`` is the test accuracy at the checkpoint
  whose *validation* accuracy is highest (docs/evaluation.md).
* ``"mtt"`` (MTT / DATM): SGD momentum 0.9, weight decay 5e-4 (PyTorch style, added to the gradient),
  lr 0.01 unless given (the lr learned with a distilled set, ``learned_lr``), lr × 0.1 at half
  the steps, batch 256, DSA augmentation, 1000 epochs (= 1000 · ⌈N / 256⌉ steps), 5 networks.
* ``"selmatch"`` (SelMatch's ResNet-18): SGD lr 0.1 cosine to 1e-3, momentum 0.9, weight decay 5e-4, batch
  128, 50 full-data epochs' worth of steps (epochs by ratio), DSA on distilled rows and crop (pad 4) +
  flip on the selected real rows (``rows``), 3 networks.
* ``"quick"``: a CPU preset for tests and the digits set: Adam 1e-3, no augmentation, batch 256,
  300 steps, 4 networks (not tuned; docs/evaluation.md).

The protocols, the trainer and the scorer live in jaxdd/training.py (minibatches are described there).

Checkpoints: the networks are trained once to the final step; at every step count in
``Protocol.checkpoints`` (and at the final one) the jitted training loop pauses between two
``fori_loop`` chunks and the K networks are scored, so the checkpoints cost no recompilation.

Labels: int class ids ``[N]`` (hard) or float ``[N, num_classes]`` (soft targets, used as given in
``-Σ_c t_c log softmax(z)_c``). Hard labels are turned into one-hot targets and go through the very
same code, so one-hot soft labels give bit-identical results.

Accuracies are fractions in [0, 1] (not percent).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import augment as augment_lib
from jaxdd import models as models_lib
from jaxdd import parallel, synthetic, training
from jaxdd import progress as progress_lib
from jaxdd.errors import require, require_count
from jaxdd.training import PROTOCOLS, Protocol, get_protocol

__all__ = ["Protocol", "PROTOCOLS", "evaluate", "get_protocol", "random_real", "full_data", "prefix_ipc", "check_set"]

# ----------------------------------------------------------------------------------------------
# validation and baselines


def _as_targets(labels, num_classes: int, n: int) -> np.ndarray:
    """Validate labels; return float32 targets [N, num_classes] (one-hot for hard labels)."""
    labels = np.asarray(labels)
    require(labels.ndim in (1, 2), f"labels must be int class ids [N] or soft labels [N, {num_classes}]; "
            f"got shape {labels.shape}")
    require(labels.shape[0] == n, f"got {n} images but {labels.shape[0]} labels: give one label per image")
    require(np.issubdtype(labels.dtype, np.number) or labels.dtype == bool,
            f"labels must be numeric, got dtype {labels.dtype}")
    require(bool(np.all(np.isfinite(labels))), "labels contain NaN or Inf: fix the labels (or the run that made them)")
    if labels.ndim == 2:
        require(labels.shape[1] == num_classes, f"soft labels have {labels.shape[1]} columns but the data set has "
                f"{num_classes} classes: use labels of shape [N, {num_classes}]")
        return labels.astype(np.float32)
    if not np.issubdtype(labels.dtype, np.integer):
        require(bool(np.all(labels == np.round(labels))),
                f"1-D labels must be integer class ids, got non-integer values (dtype {labels.dtype}): "
                f"use int labels [N] or soft labels [N, {num_classes}]")
    ids = labels.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= num_classes)]
    require(bad.size == 0, f"label {bad[:1].tolist()[0] if bad.size else ''} is out of range: class ids must lie in "
            f"[0, {num_classes}) for this data set")
    return np.eye(num_classes, dtype=np.float32)[ids]


def check_set(images, labels, dataset, model=None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a training set against ``dataset`` (and ``model``); return (images float32, targets [N, C]).

    Raises a one-line JaxddError for: images not 4-D, wrong H/W/C, an empty set, a label count that
    differs from the image count, hard labels outside [0, num_classes), soft labels of the wrong width,
    NaN/Inf in images or labels.
    """
    images = np.asarray(images)
    require(images.ndim == 4, f"images must be a 4-D array [N, H, W, C]; got shape {images.shape}")
    require(images.shape[0] > 0, "the training set is empty: give at least one image")
    require(np.issubdtype(images.dtype, np.number), f"images must be numeric, got dtype {images.dtype}")
    if model is not None:
        models_lib.check_input(model, images)
    else:
        require(tuple(images.shape[1:]) == tuple(dataset.image_shape),
                f"images have shape {tuple(images.shape[1:])} but the data set's are {tuple(dataset.image_shape)}: "
                f"distil and evaluate with the same --dataset")
    images = images.astype(np.float32)
    require(bool(np.all(np.isfinite(images))), "images contain NaN or Inf: fix the images (or the run that made them)")
    targets = _as_targets(labels, dataset.num_classes, images.shape[0])
    return images, targets


def random_real(dataset, ipc: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``ipc`` random training images per class (without replacement), seeded, class-major order:
    row ``c · ipc + j`` is the j-th image of class c. Returns (images [C·ipc, H, W, C], labels int32)."""
    require(isinstance(ipc, (int, np.integer)) and not isinstance(ipc, bool) and ipc >= 1,
            f"--ipc must be a positive integer, got {ipc!r}")
    counts = dataset.class_counts()
    smallest = int(np.argmin(counts))
    require(ipc <= counts[smallest], f"--ipc {ipc} is larger than the smallest class ({int(counts[smallest])} images, "
            f"class '{dataset.class_names[smallest]}'): use --ipc ≤ {int(counts[smallest])}")
    rng = np.random.default_rng(seed)
    y = np.asarray(dataset.y_train)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), size=ipc, replace=False)
                          for c in range(dataset.num_classes)])
    images = np.asarray(dataset.x_train)[idx].astype(np.float32)
    labels = np.repeat(np.arange(dataset.num_classes, dtype=np.int32), ipc)
    return images, labels


def prefix_ipc(images, labels, k: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `k` images of every class of a set (in their stored order), class-major."""
    images, labels = np.asarray(images), np.asarray(labels)
    hard = labels.argmax(-1) if labels.ndim == 2 else labels
    rows = [np.flatnonzero(hard == c)[:k] for c in range(num_classes)]
    short = min(len(r) for r in rows)
    require(short >= k, f"--prefix-ipc {k} is larger than the set's smallest class ({short} images): use --prefix-ipc <= {short}")
    idx = np.concatenate(rows)
    return images[idx], labels[idx]


def full_data(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All training images and labels (the upper baseline)."""
    return np.asarray(dataset.x_train, np.float32), np.asarray(dataset.y_train, np.int32)


def evaluate(images, labels, dataset, *, protocol: str | Protocol = "ratbptt", model: str | None = None,
             width: int | None = None, depth: int | None = None, norm: str | None = None,
             steps: int | None = None, num_models: int | None = None, batch_size: int | None = None,
             lr: float | None = None, augment: str | None = None, checkpoints=None, balanced: bool | None = None,
             select_augment: str | None = None, use_learned_lr: bool | None = None, learned_lr=None, rows=None,
             seed: int = 0, split: str = "test", progress: bool = False, mesh=None,
             stacked: bool = False) -> dict[str, Any]:
    """Train ``num_models`` fresh networks (vmapped) on (images, labels); report their accuracy.

    images: float [N, H, W, C] matching ``dataset.image_shape``; labels: int class ids [N] or soft
    targets float [N, num_classes]. ``protocol``: a name in :data:`PROTOCOLS` or a :class:`Protocol`;
    every other keyword (None = the protocol's value, or :func:`jaxdd.models.network_defaults` for the
    network) overrides one of its fields. ``learned_lr``: the lr learned with the set (a distilled.npz's
    ``lr``), used when the protocol's ``use_learned_lr`` holds and no ``lr`` is given. ``rows``: the
    set's row_block (rows marked ``synthetic.FROZEN`` are real, selected images) or a bool [N] mask of
    them; they get the protocol's ``select_augment`` (SelMatch's combined augmentation); None: no such
    row. ``split``: "test" (report) or "val" (for choices; needs a dataset loaded with ``val_fraction >
    0``). ``progress``: show progress on stderr (a bar on a terminal, lines elsewhere). ``mesh``: a device mesh with a 'data' axis
    (`jaxdd.parallel.make_mesh`); the K networks are split over it when K is a multiple of its size
    (each device trains K/n of them), else they all run on the first device. ``stacked``: images is
    [S, N, H, W, C], S sets sharing labels and rows (the draws of jaxdd/baseline.py), each trained by
    the same K network keys, all S·K networks as one vmapped batch.

    Returns a dict: accuracy_mean, accuracy_std (np.std over the models, ddof 0), accuracies (list),
    all as **fractions in [0, 1]**, at the final step; accuracy_at {step: {mean, std, accuracies}} at
    every checkpoint and the final step; with split "test", several checkpoints and a data set with a
    validation split: val_accuracy_at (same form, on the validation split), chosen_steps (the
    checkpoint of highest mean validation accuracy, the earliest on ties) and accuracy_chosen {mean,
    std} (the test accuracy there), else None; num_models, protocol, steps, checkpoints, balanced,
    model, width, depth, norm, optimizer, lr, batch_size, augment, split, seed, num_images, seconds.
    With ``stacked``, the accuracies and their summaries run over all S·K networks (set-major) and
    ``accuracies_by_set`` [S][K] holds the final step's per set.
    """
    require(dataset.num_classes >= 2, f"the data set has {dataset.num_classes} class: an accuracy needs at least 2 "
                                      f"(with one, every guess is right); add class folders")
    proto = get_protocol(protocol)
    overrides = dict(model=model, width=width, depth=depth, norm=norm, steps=steps, num_models=num_models,
                     batch_size=batch_size, lr=lr, augment=augment, balanced=balanced,
                     checkpoints=None if checkpoints is None else tuple(checkpoints), select_augment=select_augment,
                     use_learned_lr=use_learned_lr)
    proto = dataclasses.replace(proto, **{k: v for k, v in overrides.items() if v is not None})
    if proto.use_learned_lr and lr is None and learned_lr is not None:
        proto = dataclasses.replace(proto, lr=float(np.asarray(learned_lr)))
    model_name = proto.model
    require(model_name in models_lib.MODELS,
            f"unknown model {model_name!r}: use one of {', '.join(models_lib.MODELS)}")
    net_size = models_lib.network_defaults(model_name, dataset.image_shape, proto.width, proto.depth)
    width, depth = net_size["width"], net_size["depth"]
    require_count("num_models", proto.num_models, "--models")
    require_count("batch_size", proto.batch_size, "--batch-size")
    if proto.steps is not None:
        require(isinstance(proto.steps, (int, np.integer)) and proto.steps >= 0,
                f"steps must be a non-negative integer, got {proto.steps!r}: use --steps N")
    for c in proto.checkpoints:
        require(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1,
                f"checkpoints must be positive step counts, got {c!r}: use e.g. checkpoints=(300, 600, 1000)")
    require(float(proto.lr) > 0 and math.isfinite(float(proto.lr)), f"lr must be a positive number, got {proto.lr!r}")
    require(proto.optimizer in training.OPTIMIZERS,
            f"unknown optimizer {proto.optimizer!r}: use one of {', '.join(training.OPTIMIZERS)}")
    require(split in ("test", "val"), f"unknown split {split!r}: use test or val")
    augment_lib.strategy_ops(proto.augment)  # validates the name
    if proto.select_augment is not None:
        augment_lib.strategy_ops(proto.select_augment)

    has_val = getattr(dataset, "x_val", None) is not None and len(dataset.x_val) > 0
    if split == "val":
        require(has_val, "this data set has no validation split: load it with val_fraction > 0 (e.g. 0.1)")
        x_eval, y_eval = dataset.x_val, dataset.y_val
    else:
        x_eval, y_eval = dataset.x_test, dataset.y_test

    net = training.network(model_name, dataset.image_shape, dataset.num_classes, width, depth, proto.norm)
    if stacked:
        checked = [check_set(one, labels, dataset, net) for one in np.asarray(images)]
        images, targets = np.stack([c[0] for c in checked]), checked[0][1]
    else:
        images, targets = check_set(images, labels, dataset, net)
    sets = len(images) if stacked else 1
    n = targets.shape[0]
    total = proto.num_steps(n, len(dataset.x_train))
    real = np.zeros(n, bool) if rows is None else np.asarray(rows)
    if real.dtype != bool:
        real = real == synthetic.FROZEN
    require(real.shape == (n,), f"rows must be one flag per image ({n}), got shape {real.shape}")
    k = int(proto.num_models)
    marks = sorted({int(c) for c in proto.checkpoints if c <= total} | {total})
    choose = split == "test" and has_val and len(marks) > 1

    start_time = time.perf_counter()
    table, counts = np.zeros((1, 1), np.int32), np.ones((1,), np.int32)  # unused unless balanced
    per_class = 0
    if proto.balanced and n > proto.batch_size:
        table, counts = training.class_table(targets)
        per_class = int(min(max(1, proto.batch_size // len(counts)), counts.min()))
    extra = () if proto.select_augment is None and proto.cosine_to is None else (
        proto.select_augment, None if proto.cosine_to is None else float(proto.cosine_to))
    if stacked:
        extra = (proto.select_augment, None if proto.cosine_to is None else float(proto.cosine_to), True)
    init, run = training.trainer(net, proto.optimizer, float(proto.momentum), float(proto.weight_decay),
                         int(proto.batch_size), proto.augment, proto.lr_decay_at, float(proto.lr_decay), per_class,
                         *extra)
    keys = jax.random.split(jax.random.key(seed), k)
    carry = init(keys)
    x_dev, t_dev = jnp.asarray(images), jnp.asarray(targets)
    if stacked:  # every set trained by the same K networks: model s·K + j is network j on set s
        keys = jnp.concatenate([keys] * sets)
        carry = jax.tree.map(lambda a: jnp.concatenate([a] * sets), carry)
        x_dev = jnp.repeat(x_dev, k, axis=0)
    table_dev, counts_dev, rows_dev = jnp.asarray(table), jnp.asarray(counts), jnp.asarray(real)
    if mesh is not None and (k * sets) % parallel.num_devices(mesh) == 0:
        # the computation follows its inputs: models split over 'data' (with their sets when stacked), the set
        # replicated
        carry, keys = parallel.put((carry, keys), parallel.batch_sharding(mesh))
        x_dev = parallel.put(x_dev, parallel.batch_sharding(mesh) if stacked else parallel.replicated(mesh))
        t_dev, table_dev, counts_dev, rows_dev = parallel.put(
            (t_dev, table_dev, counts_dev, rows_dev), parallel.replicated(mesh))
    lr_dev = jnp.float32(proto.lr)
    num_chunks = min(20, total) if progress else 1
    bounds = np.linspace(0, total, num_chunks + 1).round().astype(int) if total else np.array([0])
    bounds = sorted(set(bounds.tolist()) | set(marks))

    score = training.scorer(net)
    splits = {"test": training.device_chunks(x_eval, y_eval)}
    if choose:
        splits["val"] = training.device_chunks(dataset.x_val, dataset.y_val)
    at: dict[str, dict[int, np.ndarray]] = {name: {} for name in splits}

    def record(step):
        params, state, _ = carry
        for name, (xs, ys, ms, size) in splits.items():
            at[name][step] = parallel.gather(score(params, state, xs, ys, ms)) / float(size)

    bar = None
    if progress:
        bar = progress_lib.Bar(total, f"training {k * sets} × {model_name}", "step", leave=False)
    try:
        if bounds[0] in marks:  # 0 steps
            record(bounds[0])
        for a, b in zip(bounds[:-1], bounds[1:]):
            carry = run(carry, keys, x_dev, t_dev, table_dev, counts_dev, rows_dev, jnp.int32(a), jnp.int32(b), lr_dev,
                        jnp.int32(total))
            if b in marks:
                record(b)  # blocks on the scores before the next chunk donates the carry
            if bar is not None:
                jax.block_until_ready(carry)
                bar.update(int(b - a))
    finally:
        if bar is not None:
            bar.close()
    accuracies = at["test"][total]
    seconds = time.perf_counter() - start_time
    chosen = max(marks, key=lambda m: (float(np.mean(at["val"][m])), -m)) if choose else None
    return {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "accuracies": [float(a) for a in accuracies],
        "accuracy_at": _summaries(at["test"]),
        "val_accuracy_at": _summaries(at["val"]) if choose else None,
        "chosen_steps": chosen,
        "accuracy_chosen": ({"mean": float(np.mean(at["test"][chosen])), "std": float(np.std(at["test"][chosen]))}
                            if choose else None),
        "num_models": k,
        **({"accuracies_by_set": accuracies.reshape(sets, k).tolist()} if stacked else {}),
        "protocol": proto.name,
        "steps": int(total),
        "checkpoints": marks,
        "balanced": bool(proto.balanced),
        "model": model_name,
        "width": width,
        "depth": depth,
        "norm": proto.norm,
        "optimizer": proto.optimizer,
        "lr": float(proto.lr),
        "batch_size": int(proto.batch_size),
        "augment": proto.augment,
        "select_augment": proto.select_augment,
        "split": split,
        "seed": int(seed),
        "num_images": int(n),
        "seconds": round(seconds, 3),
    }


def _summaries(acc_by_step: dict[int, np.ndarray]) -> dict[int, dict[str, Any]]:
    """{step: {mean, std, accuracies}} from per-model accuracies."""
    return {int(step): {"mean": float(np.mean(a)), "std": float(np.std(a)), "accuracies": [float(v) for v in a]}
            for step, a in sorted(acc_by_step.items())}
