"""Evaluate a (distilled) training set: train K fresh networks on it, report their test accuracy.

ALGORITHMS.md §7.4. :func:`evaluate` trains ``num_models`` networks from independent seeds *at once*:
one jitted training function, vmapped over the K model keys, whose inner loop over steps runs inside
jit (``lax.fori_loop`` with traced bounds, so the step budget and the progress-bar chunks never cause
a recompilation). The images, the targets and the learning rate are arguments of the jitted
function, never constants closed over. Test accuracy is computed inside one more jitted function
that maps over fixed-size chunks of the test split (all K models per chunk), so memory stays bounded.

Protocols (:data:`PROTOCOLS`, frozen :class:`Protocol` dataclasses; every field can be overridden by
a keyword argument of :func:`evaluate`):

* ``"ratbptt"`` (RaT-BPTT): Adam lr 1e-3, one of {flip, rotate ±15°} per batch, minibatch = the whole
  set when it has ≤ 256 images, else a random 256 per step; 1000 steps, 8 networks. The authors
  report the best of 300/600/1000/3000 steps, which selects on the test set; this is the fixed-budget
  number.
* ``"mtt"`` (MTT / DATM): SGD momentum 0.9, weight decay 5e-4 (PyTorch style, added to the gradient),
  lr 0.01 unless given (the CLI passes the learned lr stored with a distilled set), lr × 0.1 at half
  the steps, batch 256, DSA augmentation, 1000 epochs (= 1000 · ⌈N / 256⌉ steps), 5 networks.
* ``"quick"``: a CPU preset for tests and the digits set: Adam 1e-3, no augmentation, batch 256,
  300 steps, 4 networks (not tuned; see ``QUICK_NOTES``).

Minibatches: with N ≤ batch_size every step uses the whole set; otherwise every step draws
batch_size distinct images uniformly at random (a fresh draw per step, not epoch-wise shuffling).

Labels: int class ids ``[N]`` (hard) or float ``[N, num_classes]`` (soft targets, used as given in
``-Σ_c t_c log softmax(z)_c``). Hard labels are turned into one-hot targets and go through the very
same code, so one-hot soft labels give bit-identical results.

Accuracies are fractions in [0, 1] (not percent).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import augment as augment_lib
from jaxdd import models as models_lib
from jaxdd import parallel, xla_options
from jaxdd.errors import require

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "QUICK_NOTES",
    "evaluate",
    "get_protocol",
    "model_defaults",
    "random_real",
    "full_data",
    "check_set",
]

OPTIMIZERS = ("adam", "sgd")
EVAL_CHUNK = 512  # test images per chunk (× K models) when computing accuracy


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How to train the evaluation networks. ``steps=None`` means ``epochs · ⌈N / batch_size⌉`` steps.

    ``lr_decay_at``: fraction of the steps after which the lr is multiplied by ``lr_decay`` (None: constant).
    ``use_learned_lr``: take the lr stored with a distilled set (the CLI does this) unless one is given.
    ``model``/``width``/``depth``/``norm``: None means :func:`model_defaults`.
    """

    name: str
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_decay_at: float | None = None
    lr_decay: float = 0.1
    batch_size: int = 256
    augment: str = "none"
    steps: int | None = 1000
    epochs: int | None = None
    num_models: int = 8
    use_learned_lr: bool = False
    model: str = "convnet"
    width: int | None = None
    depth: int | None = None
    norm: str | None = None

    def num_steps(self, num_images: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return int(self.epochs) * math.ceil(num_images / self.batch_size)


PROTOCOLS: dict[str, Protocol] = {
    "ratbptt": Protocol("ratbptt", optimizer="adam", lr=1e-3, augment="flip_rotate", batch_size=256, steps=1000,
                        num_models=8),
    "mtt": Protocol("mtt", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, lr_decay_at=0.5,
                    augment="dsa", batch_size=256, steps=None, epochs=1000, num_models=5, use_learned_lr=True),
    "quick": Protocol("quick", optimizer="adam", lr=1e-3, augment="none", batch_size=256, steps=300, num_models=4),
}

QUICK_NOTES = """\
"quick" is not tuned: RaT-BPTT's evaluation optimizer (Adam 1e-3) with a CPU-sized budget of 300 steps and
4 networks, and no augmentation (handwritten digits are not flip-invariant). The digits distillation preset
trains its synthetic set for the same inner setting it is scored with (see presets.SMALL)."""


def get_protocol(name: str | Protocol) -> Protocol:
    """A protocol by name (or pass a Protocol through)."""
    if isinstance(name, Protocol):
        return name
    require(isinstance(name, str) and name in PROTOCOLS,
            f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def model_defaults(dataset) -> dict[str, Any]:
    """Default evaluation network for a data set: the field's ConvNet (instance norm), width 128 for
    images of 16 px or more (32×32 CIFAR: the standard 320k-parameter ConvNet), width 32 for smaller
    images (8×8 digits, where width 128 only costs CPU time); depth = make_model's default (3, or
    fewer for images too small to pool three times)."""
    h, w, _ = dataset.image_shape
    return {"model": "convnet", "width": 128 if min(h, w) >= 16 else 32, "depth": None, "norm": None}


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


def full_data(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All training images and labels (the upper baseline)."""
    return np.asarray(dataset.x_train, np.float32), np.asarray(dataset.y_train, np.int32)


# ----------------------------------------------------------------------------------------------
# training (pure, jitted, vmapped over models)


@functools.lru_cache(maxsize=32)
def _cached_model(name, image_shape, num_classes, width, depth, norm) -> models_lib.Model:
    # Same Model object for the same settings -> the jitted functions below are reused across calls.
    return models_lib.make_model(name, image_shape=image_shape, num_classes=num_classes, width=width,
                                 depth=depth, norm=norm)


def _optimizer(kind: str, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """An optax optimizer whose learning rate lives in its state (set per step; traced, no recompiles)."""

    def make(learning_rate):
        if kind == "adam":
            opt = optax.adam(learning_rate)
        else:
            opt = optax.sgd(learning_rate, momentum=momentum or None)
        if weight_decay:
            opt = optax.chain(optax.add_decayed_weights(weight_decay), opt)
        return opt

    return optax.inject_hyperparams(make)(learning_rate=0.0)


@functools.lru_cache(maxsize=32)
def _trainer(model: models_lib.Model, optimizer: str, momentum: float, weight_decay: float,
             batch_size: int, augment: str, lr_decay_at: float | None, lr_decay: float):
    """(init, run) jitted and vmapped over K model keys.

    init(keys [K]) -> carry; run(carry, keys, images, targets, start, stop, lr, total) -> carry runs
    steps start..stop-1 of a `total`-step schedule. Model k initialises from split(keys[k])[0]; its step
    t draws batch and augmentation from fold_in(split(keys[k])[1], t), so any split of the steps into
    chunks gives the same result.
    """
    tx = _optimizer(optimizer, momentum, weight_decay)
    aug = augment_lib.get_augment(augment)

    def init(keys):
        # Eagerly, one model at a time, then stacked: jit(vmap(model.init)) compiled for 6-14 s on a
        # 2-core CPU, while the eager ops compile once per process (~6 s) and then take ~10 ms a model.
        carries = []
        for key in keys:
            params, state = model.init(jax.random.split(key)[0])
            carries.append((params, state, tx.init(params)))
        return jax.tree.map(lambda *xs: jnp.stack(xs), *carries)

    def loss_fn(params, state, x, t):
        logits, state = model.apply(params, state, x, train=True)
        loss = -jnp.mean(jnp.sum(t * jax.nn.log_softmax(logits), axis=-1))
        return loss, state

    def run_one(carry, key, images, targets, start, stop, lr, total):
        n = images.shape[0]
        key = jax.random.split(key)[1]

        def body(t, carry):
            params, state, opt_state = carry
            k_batch, k_aug = jax.random.split(jax.random.fold_in(key, t))
            if n <= batch_size:
                x, y = images, targets
            else:
                idx = jax.random.choice(k_batch, n, (batch_size,), replace=False)
                x, y = images[idx], targets[idx]
            x = aug(x, k_aug)
            grads, state = jax.grad(loss_fn, has_aux=True)(params, state, x, y)
            if lr_decay_at is None:
                step_lr = lr
            else:
                boundary = jnp.floor(lr_decay_at * total).astype(jnp.int32)
                step_lr = jnp.where(t >= boundary, lr * lr_decay, lr)
            opt_state = opt_state._replace(
                hyperparams={**opt_state.hyperparams, "learning_rate": jnp.asarray(step_lr, jnp.float32)})
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), state, opt_state

        return jax.lax.fori_loop(start, stop, body, carry)

    run = xla_options.jit(jax.vmap(run_one, in_axes=(0, 0, None, None, None, None, None, None)), donate_argnums=(0,))
    return init, run


@functools.lru_cache(maxsize=32)
def _scorer(model: models_lib.Model):
    """jitted: (params [K], state [K], x [n_chunks, chunk, ...], y, mask) -> correct counts [K]."""

    def correct_one(params, state, x, y, m):
        logits, _ = model.apply(params, state, x, train=False)
        return jnp.sum((jnp.argmax(logits, -1) == y) & m)

    def score(params, state, xs, ys, ms):
        def chunk(_, xym):
            x, y, m = xym
            return None, jax.vmap(correct_one, in_axes=(0, 0, None, None, None))(params, state, x, y, m)

        _, counts = jax.lax.scan(chunk, None, (xs, ys, ms))  # [n_chunks, K]
        return counts.sum(0)

    return xla_options.jit(score)


def _chunks(x: np.ndarray, y: np.ndarray, size: int):
    """Pad the test split to whole chunks: (xs [n, size, ...], ys [n, size], mask [n, size])."""
    n = x.shape[0]
    size = min(size, n)
    num = math.ceil(n / size)
    pad = num * size - n
    xs = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((num, size) + x.shape[1:])
    ys = np.concatenate([y, np.zeros((pad,), y.dtype)]).reshape(num, size)
    ms = (np.arange(num * size) < n).reshape(num, size)
    return xs, ys, ms


def evaluate(images, labels, dataset, *, protocol: str | Protocol = "ratbptt", model: str | None = None,
             width: int | None = None, depth: int | None = None, norm: str | None = None,
             steps: int | None = None, num_models: int | None = None, batch_size: int | None = None,
             lr: float | None = None, augment: str | None = None, seed: int = 0, split: str = "test",
             progress: bool = False, mesh=None) -> dict[str, Any]:
    """Train ``num_models`` fresh networks (vmapped) on (images, labels); report their accuracy.

    images: float [N, H, W, C] matching ``dataset.image_shape``; labels: int class ids [N] or soft
    targets float [N, num_classes]. ``protocol``: a name in :data:`PROTOCOLS` or a :class:`Protocol`;
    every other keyword (None = the protocol's value, or :func:`model_defaults` for the network)
    overrides one of its fields. ``split``: "test" (report) or "val" (for choices; needs a dataset
    loaded with ``val_fraction > 0``). ``progress``: draw a tqdm bar on stderr. ``mesh``: a device mesh
    with a 'data' axis (`jaxdd.parallel.make_mesh`); the K networks are split over it when K is a
    multiple of its size (each device trains K/n of them), else they all run on the first device.

    Returns a dict: accuracy_mean, accuracy_std (np.std over the models, ddof 0), accuracies (list),
    all as **fractions in [0, 1]**; num_models, protocol, steps, model, width, depth, norm, optimizer,
    lr, batch_size, augment, split, seed, num_images, seconds.
    """
    proto = get_protocol(protocol)
    defaults = model_defaults(dataset)
    overrides = dict(model=model, width=width, depth=depth, norm=norm, steps=steps, num_models=num_models,
                     batch_size=batch_size, lr=lr, augment=augment)
    proto = dataclasses.replace(proto, **{k: v for k, v in overrides.items() if v is not None})
    model_name = proto.model
    require(model_name in models_lib.MODELS,
            f"unknown model {model_name!r}: use one of {', '.join(models_lib.MODELS)}")
    width = proto.width if proto.width is not None else (defaults["width"] if model_name.startswith("convnet") else None)
    _check_positive("num_models", proto.num_models, "--models")
    _check_positive("batch_size", proto.batch_size, "--batch-size")
    if proto.steps is not None:
        require(isinstance(proto.steps, (int, np.integer)) and proto.steps >= 0,
                f"steps must be a non-negative integer, got {proto.steps!r}: use --steps N")
    require(float(proto.lr) > 0 and math.isfinite(float(proto.lr)), f"lr must be a positive number, got {proto.lr!r}")
    require(proto.optimizer in OPTIMIZERS, f"unknown optimizer {proto.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    require(split in ("test", "val"), f"unknown split {split!r}: use test or val")
    augment_lib.strategy_ops(proto.augment)  # validates the name

    if split == "val":
        require(getattr(dataset, "x_val", None) is not None and len(dataset.x_val) > 0,
                "this data set has no validation split: load it with val_fraction > 0 (e.g. 0.1)")
        x_eval, y_eval = dataset.x_val, dataset.y_val
    else:
        x_eval, y_eval = dataset.x_test, dataset.y_test

    net = _cached_model(model_name, tuple(int(s) for s in dataset.image_shape), int(dataset.num_classes),
                        width, proto.depth, proto.norm)
    images, targets = check_set(images, labels, dataset, net)
    n = images.shape[0]
    total = proto.num_steps(n)
    k = int(proto.num_models)

    start_time = time.perf_counter()
    init, run = _trainer(net, proto.optimizer, float(proto.momentum), float(proto.weight_decay),
                         int(proto.batch_size), proto.augment, proto.lr_decay_at, float(proto.lr_decay))
    keys = jax.random.split(jax.random.key(seed), k)
    carry = init(keys)
    x_dev, t_dev = jnp.asarray(images), jnp.asarray(targets)
    if mesh is not None and k % parallel.num_devices(mesh) == 0:
        # the computation follows its inputs: models split over 'data', the set replicated
        carry, keys = jax.device_put((carry, keys), parallel.batch_sharding(mesh))
        x_dev, t_dev = jax.device_put((x_dev, t_dev), parallel.replicated(mesh))
    lr_dev = jnp.float32(proto.lr)
    num_chunks = min(20, total) if progress else 1
    bounds = np.linspace(0, total, num_chunks + 1).round().astype(int) if total else np.array([0, 0])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"training {k} × {model_name}", unit="step", leave=False)
    try:
        for a, b in zip(bounds[:-1], bounds[1:]):
            carry = run(carry, keys, x_dev, t_dev, jnp.int32(a), jnp.int32(b), lr_dev, jnp.int32(total))
            if bar is not None:
                jax.block_until_ready(carry)
                bar.update(int(b - a))
    finally:
        if bar is not None:
            bar.close()
    params, state, _ = carry
    xs, ys, ms = _chunks(np.asarray(x_eval, np.float32), np.asarray(y_eval, np.int32), EVAL_CHUNK)
    correct = np.asarray(_scorer(net)(params, state, jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(ms)))
    accuracies = correct / float(len(y_eval))
    seconds = time.perf_counter() - start_time
    return {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "accuracies": [float(a) for a in accuracies],
        "num_models": k,
        "protocol": proto.name,
        "steps": int(total),
        "model": model_name,
        "width": width,
        "depth": proto.depth,
        "norm": proto.norm,
        "optimizer": proto.optimizer,
        "lr": float(proto.lr),
        "batch_size": int(proto.batch_size),
        "augment": proto.augment,
        "split": split,
        "seed": int(seed),
        "num_images": int(n),
        "seconds": round(seconds, 3),
    }


def _check_positive(name, value, flag):
    require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
            f"{name} must be a positive integer, got {value!r}: use {flag} N")
