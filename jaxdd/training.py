"""The training core: K fresh networks trained at once (vmapped over seeds) and scored in chunks.

Every network jaxdd trains outside the distillation step goes through here: the evaluation of a set
(jaxdd/evaluation.py), EL2N scores (jaxdd/scores.py) and, for its network, the expert trajectories
(jaxdd/experts/). The pieces:

* :class:`Protocol` and :data:`PROTOCOLS`: how evaluation networks are trained, as a typed value;
* :func:`network`: the `Model` for a name and shape, cached, so jitted trainers are reused;
* :func:`make_optimizer`: an optax optimizer whose learning rate lives in its state (no recompiles);
* :func:`trainer`: (init, run), jitted and vmapped over K model keys; ``run`` trains steps
  ``start..stop-1`` of a ``total``-step schedule, so a caller pauses between chunks to score,
  checkpoint or draw progress (the per-step hook) at no recompilation;
* :func:`scorer`, :func:`chunks`, :func:`device_chunks`: accuracy over a split in fixed-size chunks;
* :func:`class_table`, :func:`balanced_batch`: class-balanced minibatches.

Minibatches: with N ≤ batch_size every step uses the whole set; otherwise every step draws
batch_size distinct images uniformly at random (a fresh draw per step), or, with ``balanced``,
⌊batch_size / C⌋ distinct images of each of the C classes present (capped at the smallest class).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import augment as augment_lib
from jaxdd import models as models_lib
from jaxdd import xla_options
from jaxdd.errors import require

OPTIMIZERS = ("adam", "sgd")
EVAL_CHUNK = 512  # test images per chunk (× K models) when computing accuracy


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How to train the evaluation networks. ``steps=None`` means ``epochs · ⌈N / batch_size⌉`` steps.

    ``lr_decay_at``: fraction of the steps after which the lr is multiplied by ``lr_decay`` (None: constant).
    ``use_learned_lr``: train with the lr learned with a distilled set (``learned_lr`` of
    :func:`jaxdd.evaluation.evaluate`) unless an lr is given.
    ``checkpoints``: step counts at which accuracy is also reported (those beyond the final step are
    dropped; the final step is always reported). ``balanced``: class-balanced minibatches.
    ``model``/``width``/``depth``/``norm``: None means :func:`jaxdd.models.network_defaults`.
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


def get_protocol(name: str | Protocol) -> Protocol:
    """A protocol by name (or pass a Protocol through)."""
    if isinstance(name, Protocol):
        return name
    require(isinstance(name, str) and name in PROTOCOLS,
            f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


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



def network(name, image_shape, num_classes, width, depth, norm) -> models_lib.Model:
    """The `Model` for these settings, one object per settings, so the jitted functions below are reused."""
    return _network(name, tuple(int(s) for s in image_shape), int(num_classes), width, depth, norm)


@functools.lru_cache(maxsize=32)
def _network(name, image_shape, num_classes, width, depth, norm) -> models_lib.Model:
    return models_lib.make_model(name, image_shape=image_shape, num_classes=num_classes, width=width, depth=depth,
                                 norm=norm)


def make_optimizer(kind: str, momentum: float, weight_decay: float) -> optax.GradientTransformation:
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
def trainer(model: models_lib.Model, optimizer: str, momentum: float, weight_decay: float,
             batch_size: int, augment: str, lr_decay_at: float | None, lr_decay: float, per_class: int = 0,
             select_augment: str | None = None, cosine_to: float | None = None, per_model_images: bool = False):
    """(init, run) jitted and vmapped over K model keys.

    init(keys [K]) -> carry; run(carry, keys, images, targets, table, counts, rows, start, stop, lr, total)
    -> carry runs steps start..stop-1 of a `total`-step schedule. rows: bool [N], the rows that get
    `select_augment` instead of `augment` (unused when select_augment is None). cosine_to: cosine lr
    from lr to this value over `total` steps (instead of the step decay). Model k initialises from
    split(keys[k])[0]; its step t draws batch and augmentation from fold_in(split(keys[k])[1], t), so
    any split of the steps into chunks gives the same result. per_class > 0: class-balanced batches
    from (table, counts) (:func:`balanced_batch`); else uniform ones (table and counts unused).
    per_model_images: `images` is [K, N, ...], model k trains on images[k] (several sets of the same
    labels as one vmapped batch, e.g. the draws of the random-real baseline); else [N, ...], shared.
    """
    tx = make_optimizer(optimizer, momentum, weight_decay)
    aug = augment_lib.get_augment(augment)
    aug_select = augment_lib.get_augment(select_augment) if select_augment is not None else None

    def init(keys):
        # Eagerly, one model at a time, then stacked: jit(vmap(model.init)) compiles a new program for every
        # K and shape, while the eager ops compile once per process.
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

    run = xla_options.jit(jax.vmap(run_one, in_axes=(0, 0, 0 if per_model_images else None) + (None,) * 8),
                          donate_argnums=(0,))
    return init, run


@functools.lru_cache(maxsize=32)
def scorer(model: models_lib.Model):
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


def chunks(x: np.ndarray, y: np.ndarray, size: int):
    """Pad the test split to whole chunks: (xs [n, size, ...], ys [n, size], mask [n, size])."""
    n = x.shape[0]
    size = min(size, n)
    num = math.ceil(n / size)
    pad = num * size - n
    xs = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((num, size) + x.shape[1:])
    ys = np.concatenate([y, np.zeros((pad,), y.dtype)]).reshape(num, size)
    ms = (np.arange(num * size) < n).reshape(num, size)
    return xs, ys, ms


def device_chunks(x, y):
    """An evaluation split as device arrays in fixed-size chunks: (xs, ys, mask, number of images)."""
    xs, ys, ms = chunks(np.asarray(x, np.float32), np.asarray(y, np.int32), EVAL_CHUNK)
    return jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(ms), len(y)


