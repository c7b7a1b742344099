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
  lr 0.01 unless given (the CLI passes the learned lr stored with a distilled set), lr × 0.1 at half
  the steps, batch 256, DSA augmentation, 1000 epochs (= 1000 · ⌈N / 256⌉ steps), 5 networks.
* ``"selmatch"`` (SelMatch's ResNet-18): SGD lr 0.1 cosine to 1e-3, momentum 0.9, weight decay 5e-4, batch
  128, 50 full-data epochs' worth of steps (epochs by ratio), DSA on distilled rows and crop (pad 4) +
  flip on the selected real rows (``rows``), 3 networks.
* ``"quick"``: a CPU preset for tests and the digits set: Adam 1e-3, no augmentation, batch 256,
  300 steps, 4 networks (not tuned; see ``QUICK_NOTES``).

Minibatches: with N ≤ batch_size every step uses the whole set; otherwise every step draws
batch_size distinct images uniformly at random (a fresh draw per step, not epoch-wise shuffling), or,
with ``balanced=True``, ⌊batch_size / C⌋ distinct images of each of the C classes present (capped at
the smallest class's size), as the inner batches of distillation are drawn (:func:`balanced_batch`).

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
    "prefix_ipc",
    "class_table",
    "balanced_batch",
    "check_set",
]

OPTIMIZERS = ("adam", "sgd")
EVAL_CHUNK = 512  # test images per chunk (× K models) when computing accuracy


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How to train the evaluation networks. ``steps=None`` means ``epochs · ⌈N / batch_size⌉`` steps.

    ``lr_decay_at``: fraction of the steps after which the lr is multiplied by ``lr_decay`` (None: constant).
    ``use_learned_lr``: take the lr stored with a distilled set (the CLI does this) unless one is given.
    ``checkpoints``: step counts at which accuracy is also reported (those beyond the final step are
    dropped; the final step is always reported). ``balanced``: class-balanced minibatches.
    ``model``/``width``/``depth``/``norm``: None means :func:`model_defaults`.
    ``cosine_to``: a cosine schedule from ``lr`` down to this value at the last step (instead of the step
    decay). ``full_data_epochs``: with ``epochs=None`` and ``steps=None``, train as many steps as
    ``full_data_epochs`` epochs of the whole training split take (``full_data_epochs · ⌈N_train / batch⌉``):
    SelMatch's "epochs by ratio" (1000/500/250/167 epochs at 5/10/20/30 % are all 50 full-data epochs).
    ``select_augment``: SelMatch's combined augmentation: rows marked real (``rows`` of :func:`evaluate`,
    row_block −1 in a distilled.npz) get this strategy, the other rows ``augment`` (None: every row
    ``augment``).
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
    checkpoints: tuple[int, ...] = ()
    balanced: bool = False
    cosine_to: float | None = None
    full_data_epochs: int | None = None
    select_augment: str | None = None

    def num_steps(self, num_images: int, num_train: int | None = None) -> int:
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is None and self.full_data_epochs is not None:
            return int(self.full_data_epochs) * math.ceil((num_train or num_images) / self.batch_size)
        return int(self.epochs) * math.ceil(num_images / self.batch_size)


PROTOCOLS: dict[str, Protocol] = {
    "ratbptt": Protocol("ratbptt", optimizer="adam", lr=1e-3, augment="flip_rotate", batch_size=256, steps=3000,
                        num_models=8, checkpoints=(300, 600, 1000, 3000), balanced=True),
    "mtt": Protocol("mtt", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, lr_decay_at=0.5,
                    augment="dsa", batch_size=256, steps=None, epochs=1000, num_models=5, use_learned_lr=True),
    "quick": Protocol("quick", optimizer="adam", lr=1e-3, augment="none", batch_size=256, steps=300, num_models=4),
    # SelMatch's ResNet-18 evaluation: SGD 0.1 cosine to 1e-3, momentum 0.9, wd 5e-4, batch 128, epochs by ratio,
    # DSA on the distilled rows and crop (pad 4) + flip on the selected real rows (docs/methods/selmatch.md)
    "selmatch": Protocol("selmatch", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, cosine_to=1e-3,
                         batch_size=128, augment="dsa", select_augment="standard", steps=None, epochs=None,
                         full_data_epochs=50, num_models=3, model="resnet18"),
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
    images (8×8 digits, where width 128 only costs CPU time); depth: :func:`jaxdd.models.default_depth`
    (3 for 32×32, 2 for 16-31 px, 1 for 8-15 px), make_model's default."""
    h, w, _ = dataset.image_shape
    return {"model": "convnet", "width": 128 if min(h, w) >= 16 else 32,
            "depth": models_lib.default_depth(dataset.image_shape), "norm": None}


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


def class_table(targets) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each class present in a set: (table int32 [C', n_max], counts int32 [C']).

    targets: float [N, num_classes] (one-hot or soft; the class is the argmax). Row r of the table
    lists the indices of the r-th present class, padded with 0 after its ``counts[r]`` entries.
    """
    hard = np.asarray(targets).argmax(-1)
    rows = [np.flatnonzero(hard == c) for c in np.unique(hard)]
    counts = np.array([len(r) for r in rows], np.int32)
    table = np.zeros((len(rows), int(counts.max())), np.int32)
    for r, idx in enumerate(rows):
        table[r, :len(idx)] = idx
    return table, counts


def balanced_batch(key, table, counts, per_class: int):
    """Indices of a class-balanced minibatch: `per_class` distinct rows of every class (class-major).

    (table, counts) from :func:`class_table`; `per_class` (static) must not exceed ``counts.min()``.
    Each class's rows are a uniformly random subset (the top `per_class` of i.i.d. uniform scores).
    """
    valid = jnp.arange(table.shape[1])[None, :] < counts[:, None]
    scores = jnp.where(valid, jax.random.uniform(key, table.shape), -1.0)
    _, pos = jax.lax.top_k(scores, per_class)
    return jnp.take_along_axis(table, pos, axis=1).reshape(-1)


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
             batch_size: int, augment: str, lr_decay_at: float | None, lr_decay: float, per_class: int = 0,
             select_augment: str | None = None, cosine_to: float | None = None):
    """(init, run) jitted and vmapped over K model keys.

    init(keys [K]) -> carry; run(carry, keys, images, targets, table, counts, rows, start, stop, lr, total)
    -> carry runs steps start..stop-1 of a `total`-step schedule. rows: bool [N], the rows that get
    `select_augment` instead of `augment` (unused when select_augment is None). cosine_to: cosine lr
    from lr to this value over `total` steps (instead of the step decay). Model k initialises from
    split(keys[k])[0]; its step t draws batch and augmentation from fold_in(split(keys[k])[1], t), so
    any split of the steps into chunks gives the same result. per_class > 0: class-balanced batches
    from (table, counts) (:func:`balanced_batch`); else uniform ones (table and counts unused).
    """
    tx = _optimizer(optimizer, momentum, weight_decay)
    aug = augment_lib.get_augment(augment)
    aug_select = augment_lib.get_augment(select_augment) if select_augment is not None else None

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

    def run_one(carry, key, images, targets, table, counts, rows, start, stop, lr, total):
        n = images.shape[0]
        key = jax.random.split(key)[1]

        def body(t, carry):
            params, state, opt_state = carry
            k_batch, k_aug = jax.random.split(jax.random.fold_in(key, t))
            if n <= batch_size:
                x, y, real = images, targets, rows
            else:
                if per_class:
                    idx = balanced_batch(k_batch, table, counts, per_class)
                else:
                    idx = jax.random.choice(k_batch, n, (batch_size,), replace=False)
                x, y, real = images[idx], targets[idx], rows[idx]
            if aug_select is None:
                x = aug(x, k_aug)
            else:  # SelMatch's combined augmentation: each kind of row gets its own strategy
                x = augment_lib.combined(x, k_aug, real, aug, aug_select)
            grads, state = jax.grad(loss_fn, has_aux=True)(params, state, x, y)
            if cosine_to is not None:
                frac = t.astype(jnp.float32) / jnp.maximum(total, 1).astype(jnp.float32)
                step_lr = cosine_to + (lr - cosine_to) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
            elif lr_decay_at is None:
                step_lr = lr
            else:
                boundary = jnp.floor(lr_decay_at * total).astype(jnp.int32)
                step_lr = jnp.where(t >= boundary, lr * lr_decay, lr)
            opt_state = opt_state._replace(
                hyperparams={**opt_state.hyperparams, "learning_rate": jnp.asarray(step_lr, jnp.float32)})
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), state, opt_state

        return jax.lax.fori_loop(start, stop, body, carry)

    run = xla_options.jit(jax.vmap(run_one, in_axes=(0, 0) + (None,) * 9), donate_argnums=(0,))
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
             lr: float | None = None, augment: str | None = None, checkpoints=None, balanced: bool | None = None,
             select_augment: str | None = None, rows=None, seed: int = 0, split: str = "test",
             progress: bool = False, mesh=None) -> dict[str, Any]:
    """Train ``num_models`` fresh networks (vmapped) on (images, labels); report their accuracy.

    images: float [N, H, W, C] matching ``dataset.image_shape``; labels: int class ids [N] or soft
    targets float [N, num_classes]. ``protocol``: a name in :data:`PROTOCOLS` or a :class:`Protocol`;
    every other keyword (None = the protocol's value, or :func:`model_defaults` for the network)
    overrides one of its fields. ``split``: "test" (report) or "val" (for choices; needs a dataset
    loaded with ``val_fraction > 0``). ``rows``: bool [N] (or a row_block, −1 = real), the rows that get the
    protocol's ``select_augment`` (SelMatch's selected real images); None: none of them. ``progress``: draw a tqdm bar on stderr. ``mesh``: a device mesh
    with a 'data' axis (`jaxdd.parallel.make_mesh`); the K networks are split over it when K is a
    multiple of its size (each device trains K/n of them), else they all run on the first device.

    Returns a dict: accuracy_mean, accuracy_std (np.std over the models, ddof 0), accuracies (list),
    all as **fractions in [0, 1]**, at the final step; accuracy_at {step: {mean, std, accuracies}} at
    every checkpoint and the final step; with split "test", several checkpoints and a data set with a
    validation split: val_accuracy_at (same form, on the validation split), chosen_steps (the
    checkpoint of highest mean validation accuracy, the earliest on ties) and accuracy_chosen {mean,
    std} (the test accuracy there), else None; num_models, protocol, steps, checkpoints, balanced,
    model, width, depth, norm, optimizer, lr, batch_size, augment, split, seed, num_images, seconds.
    """
    proto = get_protocol(protocol)
    defaults = model_defaults(dataset)
    overrides = dict(model=model, width=width, depth=depth, norm=norm, steps=steps, num_models=num_models,
                     batch_size=batch_size, lr=lr, augment=augment, balanced=balanced,
                     checkpoints=None if checkpoints is None else tuple(checkpoints), select_augment=select_augment)
    proto = dataclasses.replace(proto, **{k: v for k, v in overrides.items() if v is not None})
    model_name = proto.model
    require(model_name in models_lib.MODELS,
            f"unknown model {model_name!r}: use one of {', '.join(models_lib.MODELS)}")
    convnet = model_name.startswith("convnet")
    width = proto.width if proto.width is not None else (defaults["width"] if convnet else None)
    depth = proto.depth or (defaults["depth"] if convnet else None)
    _check_positive("num_models", proto.num_models, "--models")
    _check_positive("batch_size", proto.batch_size, "--batch-size")
    if proto.steps is not None:
        require(isinstance(proto.steps, (int, np.integer)) and proto.steps >= 0,
                f"steps must be a non-negative integer, got {proto.steps!r}: use --steps N")
    for c in proto.checkpoints:
        require(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1,
                f"checkpoints must be positive step counts, got {c!r}: use e.g. checkpoints=(300, 600, 1000)")
    require(float(proto.lr) > 0 and math.isfinite(float(proto.lr)), f"lr must be a positive number, got {proto.lr!r}")
    require(proto.optimizer in OPTIMIZERS, f"unknown optimizer {proto.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
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

    net = _cached_model(model_name, tuple(int(s) for s in dataset.image_shape), int(dataset.num_classes),
                        width, depth, proto.norm)
    images, targets = check_set(images, labels, dataset, net)
    n = images.shape[0]
    total = proto.num_steps(n, len(dataset.x_train))
    real = np.zeros(n, bool) if rows is None else np.asarray(rows)
    if real.dtype != bool:
        real = real == -1  # a row_block: −1 = a selected (real, frozen) row
    require(real.shape == (n,), f"rows must be one flag per image ({n}), got shape {real.shape}")
    k = int(proto.num_models)
    marks = sorted({int(c) for c in proto.checkpoints if c <= total} | {total})
    choose = split == "test" and has_val and len(marks) > 1

    start_time = time.perf_counter()
    table, counts = np.zeros((1, 1), np.int32), np.ones((1,), np.int32)  # unused unless balanced
    per_class = 0
    if proto.balanced and n > proto.batch_size:
        table, counts = class_table(targets)
        per_class = int(min(max(1, proto.batch_size // len(counts)), counts.min()))
    extra = () if proto.select_augment is None and proto.cosine_to is None else (
        proto.select_augment, None if proto.cosine_to is None else float(proto.cosine_to))
    init, run = _trainer(net, proto.optimizer, float(proto.momentum), float(proto.weight_decay),
                         int(proto.batch_size), proto.augment, proto.lr_decay_at, float(proto.lr_decay), per_class,
                         *extra)
    keys = jax.random.split(jax.random.key(seed), k)
    carry = init(keys)
    x_dev, t_dev = jnp.asarray(images), jnp.asarray(targets)
    table_dev, counts_dev, rows_dev = jnp.asarray(table), jnp.asarray(counts), jnp.asarray(real)
    if mesh is not None and k % parallel.num_devices(mesh) == 0:
        # the computation follows its inputs: models split over 'data', the set replicated
        carry, keys = parallel.put((carry, keys), parallel.batch_sharding(mesh))
        x_dev, t_dev, table_dev, counts_dev, rows_dev = parallel.put(
            (x_dev, t_dev, table_dev, counts_dev, rows_dev), parallel.replicated(mesh))
    lr_dev = jnp.float32(proto.lr)
    num_chunks = min(20, total) if progress else 1
    bounds = np.linspace(0, total, num_chunks + 1).round().astype(int) if total else np.array([0])
    bounds = sorted(set(bounds.tolist()) | set(marks))

    score = _scorer(net)
    splits = {"test": _device_chunks(x_eval, y_eval)}
    if choose:
        splits["val"] = _device_chunks(dataset.x_val, dataset.y_val)
    at: dict[str, dict[int, np.ndarray]] = {name: {} for name in splits}

    def record(step):
        params, state, _ = carry
        for name, (xs, ys, ms, size) in splits.items():
            at[name][step] = parallel.gather(score(params, state, xs, ys, ms)) / float(size)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"training {k} × {model_name}", unit="step", leave=False)
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


def _device_chunks(x, y):
    """An evaluation split as device arrays in fixed-size chunks: (xs, ys, mask, number of images)."""
    xs, ys, ms = _chunks(np.asarray(x, np.float32), np.asarray(y, np.int32), EVAL_CHUNK)
    return jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(ms), len(y)


def _summaries(acc_by_step: dict[int, np.ndarray]) -> dict[int, dict[str, Any]]:
    """{step: {mean, std, accuracies}} from per-model accuracies."""
    return {int(step): {"mean": float(np.mean(a)), "std": float(np.std(a)), "accuracies": [float(v) for v in a]}
            for step, a in sorted(acc_by_step.items())}


def _check_positive(name, value, flag):
    require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
            f"{name} must be a positive integer, got {value!r}: use {flag} N")
