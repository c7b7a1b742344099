"""Training expert trajectories: E networks on the full real training split, vmapped by groups.

Plain SGD (lr 0.01, no momentum), batch 256, one DSA draw per batch, a fresh shuffle per expert and
epoch; every expert's parameters are saved at init and after every epoch into the cache folder
(jaxdd/experts/store.py), with forgetting counters (jaxdd/forgetting.py) updated on the way. A group
being trained is saved after every epoch, so an interrupted run resumes to the same snapshots.
Randomness is a function of (seed, expert, epoch) only (:func:`expert_keys`): the group size, the
device count and interruptions do not change what an expert sees.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdd import augment as augment_lib
from jaxdd import forgetting
from jaxdd import models as models_lib
from jaxdd import parallel, xla_options
from jaxdd import scores as scores_lib
from jaxdd import lock
from jaxdd import progress as progress_lib
from jaxdd.errors import require, require_count, warn
from jaxdd.experts.store import (DTYPES, MANIFEST, ExpertStore, check_fingerprint, check_folder, damage, default_expert_dir,
                                 fingerprint, network, new_manifest, read_manifest, seal, storage_dtype, to_storage,
                                 write_json)
from jaxdd.forgetting import ForgettingState

DEFAULT_GROUP_SIZE = 8


def compute_dtype():
    """The float experts train in: float32, or float64 under jax_enable_x64 (as the model's parameters)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def expert_keys(seed: int, expert: int) -> tuple[jax.Array, jax.Array]:
    """(init key, training key) of expert ``expert``; epoch e of its training draws from
    ``fold_in(training key, e)``."""
    init_key, train_key = jax.random.split(jax.random.fold_in(jax.random.key(int(seed)), int(expert)))
    return init_key, train_key


@functools.lru_cache(maxsize=16)
def epoch_fn(model: models_lib.Model, batch_size: int, augment: str):
    """jitted, vmapped over a group's experts: one epoch of plain SGD with forgetting bookkeeping.

    (params, state, forget, train_keys, x, y, epoch, lr) -> (params, state, forget, flat params [G, D],
    correct [G, N], loss [G], accuracy [G]).
    """
    aug = augment_lib.get_augment(augment)

    def loss_fn(params, state, x, y):
        logits, state = model.apply(params, state, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (state, logits)

    def sgd_step(carry, x_all, y_all, idx, key, lr):
        params, state, correct, loss_sum = carry
        y = y_all[idx]
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (state, logits)), grads = grad_fn(params, state, aug(x_all[idx], key), y)
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        correct = correct.at[idx].set(jnp.argmax(logits, -1) == y)
        return params, state, correct, loss_sum + loss * idx.shape[0]

    def epoch_one(params, state, forget, train_key, x_all, y_all, epoch, lr):
        n = x_all.shape[0]
        full, rest = divmod(n, batch_size)
        k_perm, k_aug = jax.random.split(jax.random.fold_in(train_key, epoch))
        perm = jax.random.permutation(k_perm, n)

        def body(s, carry):
            idx = jax.lax.dynamic_slice(perm, (s * batch_size,), (batch_size,))
            return sgd_step(carry, x_all, y_all, idx, jax.random.fold_in(k_aug, s), lr)

        carry = jax.lax.fori_loop(0, full, body, (params, state, jnp.zeros((n,), bool), jnp.zeros((), x_all.dtype)))
        if rest:  # the last, smaller batch (as a DataLoader without drop_last)
            carry = sgd_step(carry, x_all, y_all, perm[full * batch_size:], jax.random.fold_in(k_aug, full), lr)
        params, state, correct, loss_sum = carry
        forget = forgetting.update(forget, correct)
        return params, state, forget, ravel_pytree(params)[0], correct, loss_sum / n, correct.mean()

    # xla_options.jit: the CPU compiler options every other jaxdd step has (jaxdd/xla_options.py)
    return xla_options.jit(jax.vmap(epoch_one, in_axes=(0, 0, 0, 0, None, None, None, None)),
                           donate_argnums=(0, 1, 2))


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def init_group(model, seed: int, experts: range):
    """Eager per-expert init, stacked (jit(vmap(init)) compiles for seconds on CPU for nothing)."""
    params, state = zip(*(model.init(expert_keys(seed, e)[0]) for e in experts))
    train_keys = jnp.stack([expert_keys(seed, e)[1] for e in experts])
    return _stack(params), _stack(state), train_keys


def _flat_rows(tree) -> np.ndarray:
    """A stacked pytree [G, ...] -> [G, D] on the host, in the run's float (float64 under jax_enable_x64)."""
    dtype = compute_dtype()
    leaves = [np.asarray(x, dtype).reshape(x.shape[0], -1) for x in jax.tree.leaves(tree)]
    return np.concatenate(leaves, axis=1) if leaves else np.zeros((0, 0), dtype)


def _unflat_rows(rows: np.ndarray, like):
    """Inverse of :func:`_flat_rows` for a stacked pytree shaped like ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, at = [], 0
    for leaf in leaves:
        size = math.prod(leaf.shape[1:])
        out.append(jnp.asarray(rows[:, at:at + size].reshape(leaf.shape), leaf.dtype))
        at += size
    return jax.tree.unflatten(treedef, out)


def _save_progress(path: Path, params, state, forget: ForgettingState, metrics: dict) -> None:
    """Everything needed to continue a group exactly: params and state in the run's float, forgetting counters,
    the per-epoch metrics so far (their length = epochs done). Written atomically."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, params=_flat_rows(params), state=_flat_rows(state), last=np.asarray(forget.last),
             learned=np.asarray(forget.learned), events=np.asarray(forget.events),
             loss=np.asarray(metrics["loss"], np.float32), accuracy=np.asarray(metrics["accuracy"], np.float32))
    os.replace(tmp, path)


def _load_progress(path: Path, params, state):
    """(params, state, forget, metrics) saved by :func:`_save_progress`, shaped like params/state."""
    with np.load(path) as f:
        forget = ForgettingState(*(jnp.asarray(f[k]) for k in ("last", "learned", "events")))
        metrics = {k: f[k].tolist() for k in ("loss", "accuracy")}
        return _unflat_rows(f["params"], params), _unflat_rows(f["state"], state), forget, metrics


def check_batch(dataset, batch_size: int, flag: str) -> None:
    """One line, before any work, for a minibatch larger than the training split (an epoch needs one batch)."""
    n = len(dataset.x_train)
    require(batch_size <= n, f"{flag} {batch_size} is larger than the training split ({n} images): use {flag} {n} "
                             f"or less")


def resolve_settings(dataset, *, num_experts: int, epochs: int, model: str = "convnet", width: int | None = None,
                     depth: int | None = None, norm: str | None = None, lr: float = 0.01, batch_size: int = 256,
                     augment: str = "dsa", seed: int = 0, dtype: str = "float32") -> dict:
    """Validated expert settings (the defaults of :func:`train`; ``width=None`` and ``depth=None`` resolved for
    the data set): what the manifest records and the cache folder is keyed by."""
    require(model in models_lib.MODELS, f"unknown model {model!r}: use one of {', '.join(models_lib.MODELS)}")
    require_count("num_experts", num_experts, "--experts")
    require_count("epochs", epochs, "--epochs")
    require_count("batch_size", batch_size, "--batch-size")
    check_batch(dataset, batch_size, "--batch-size")
    require(isinstance(lr, (int, float)) and 0 < lr < math.inf, f"lr must be a positive number, got {lr!r}: use --lr")
    require(dtype in DTYPES, f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    augment_lib.strategy_ops(augment)  # validates the name
    # numbers, as `jaxdd distill` records them, so both find one cache folder
    size = models_lib.network_defaults(model, dataset.image_shape, width, depth)
    width, depth = size["width"], size["depth"]
    return dict(num_experts=int(num_experts), epochs=int(epochs), model=model, width=width, depth=depth, norm=norm,
                lr=float(lr), batch_size=int(batch_size), augment=augment, seed=int(seed), dtype=dtype)


def train(dataset, *, num_experts: int, epochs: int, out_dir, model: str = "convnet", width: int | None = None,
          depth: int | None = None, norm: str | None = None, lr: float = 0.01, batch_size: int = 256,
          augment: str = "dsa", seed: int = 0, dtype: str = "float32", group_size: int | None = None,
          resume: bool = True, progress: bool = True, mesh=None,
          on_epoch: Callable[[dict], None] | None = None) -> ExpertStore:
    """Train ``num_experts`` expert trajectories on ``dataset``'s training split; return their store.

    Experts train ``group_size`` at a time (default 8, rounded up to a multiple of the mesh size),
    vmapped; with a ``mesh`` whose size divides the group, the group is split over its 'data' axis.
    ``width=None``, ``depth=None``: :func:`jaxdd.models.network_defaults`. ``dtype``: storage of the snapshots
    (training is float32, float64 under jax_enable_x64). ``resume``: continue the experts already in ``out_dir`` (finished groups
    are kept, an unfinished one restarts after its last saved epoch); False refuses a non-empty
    store. Settings that differ from the stored ones are refused. ``on_epoch(info)`` is called after
    each saved epoch with info = dict(group, epoch, experts, loss [G], accuracy [G], correct [G, N]).
    """
    settings = resolve_settings(dataset, num_experts=num_experts, epochs=epochs, model=model, width=width,
                                depth=depth, norm=norm, lr=lr, batch_size=batch_size, augment=augment, seed=seed,
                                dtype=dtype)
    out = Path(out_dir)
    check_folder(out)
    lock.hold(out, f"the experts in {out}", hint="wait for it to finish training them")
    try:  # held while the folder is written; finished experts are only read, by any number of processes
        return _train_locked(dataset, out, settings, group_size, resume, progress, mesh, on_epoch)
    finally:
        lock.release(out)


def _train_locked(dataset, out: Path, settings: dict, group_size, resume, progress, mesh, on_epoch) -> ExpertStore:
    """`train`'s work once it holds the folder's lock."""
    num_experts, epochs = settings["num_experts"], settings["epochs"]
    net = network(fingerprint(dataset), settings)
    manifest = read_manifest(out)
    if manifest is not None:
        require(resume, f"{out} already holds experts: resume them (--resume / resume=True) or use another folder")
        _reopen_damaged(out, manifest)
        check_fingerprint(manifest, dataset, out)
        diff = [f"{k}: {manifest['settings'].get(k)!r} there, {v!r} here" for k, v in settings.items()
                if manifest["settings"].get(k) != v]
        require(not diff, f"{out} holds experts with other settings ({'; '.join(diff)}): use the same settings or "
                          f"another folder")
        require(group_size in (None, manifest["group_size"]),
                f"{out} was written with group size {manifest['group_size']}: resume with that group size")
    else:
        n_dev = parallel.num_devices(mesh)
        group_size = group_size or n_dev * math.ceil(min(num_experts, DEFAULT_GROUP_SIZE) / n_dev)
        require_count("group_size", group_size, "--group-size")
        manifest = new_manifest(dataset, settings, min(int(group_size), int(num_experts)), net.num_params)
        write_json(out / MANIFEST, manifest)

    x = np.asarray(dataset.x_train, compute_dtype())
    y = np.asarray(dataset.y_train, np.int32)
    x_dev, y_dev = parallel.put_dataset(mesh, x, y)
    step = epoch_fn(net, settings["batch_size"], settings["augment"])
    lr_dev = jnp.asarray(settings["lr"], compute_dtype())
    total = len(manifest["groups"]) * epochs
    done = sum(g["epochs_done"] for g in manifest["groups"])
    bar = None
    if progress:
        bar = progress_lib.Bar(total, f"{num_experts} experts × {epochs} epochs", "epoch", initial=done)
    try:
        for gi, group in enumerate(manifest["groups"]):
            if group["complete"]:  # a run stopped just before deleting the progress file
                _progress_file(out, group).unlink(missing_ok=True)
            else:
                _train_group(out, manifest, gi, net, step, x_dev, y_dev, lr_dev, mesh, bar, on_epoch)
    finally:
        if bar is not None:
            bar.close()
    _write_forgetting(out, manifest, y)
    return ExpertStore(out, dataset)


def _reopen_damaged(out: Path, manifest: dict) -> None:
    """Finished groups whose snapshots are damaged (`store.damage`) are trained again, with one warning."""
    for group in manifest["groups"]:
        why = group["complete"] and damage(out, manifest, group)
        if why:
            warn(f"{out / group['file']} {why}: training those {group['count']} experts again")
            (out / group["file"]).unlink(missing_ok=True)
            _progress_file(out, group).unlink(missing_ok=True)
            group.update(complete=False, epochs_done=0, metrics={"loss": [], "accuracy": []})
            for key in ("bytes", "sha256"):
                group.pop(key, None)
            write_json(out / MANIFEST, manifest)


def _progress_file(out: Path, group: dict) -> Path:
    return out / group["file"].replace(".npy", ".progress.npz")


def _train_group(out, manifest, gi, net, step, x_dev, y_dev, lr_dev, mesh, bar, on_epoch):
    group, settings = manifest["groups"][gi], manifest["settings"]
    epochs, dtype = settings["epochs"], settings["dtype"]
    experts = range(group["first"], group["first"] + group["count"])
    progress_file = _progress_file(out, group)
    params, state, train_keys = init_group(net, settings["seed"], experts)
    shape = (group["count"], epochs + 1, manifest["num_params"])
    if progress_file.exists():
        params, state, forget, metrics = _load_progress(progress_file, params, state)
        snapshots = np.lib.format.open_memmap(out / group["file"], mode="r+")
        require(snapshots.shape == shape, f"{out / group['file']} has shape {snapshots.shape}, expected {shape}: "
                                          f"the folder is damaged; delete it and train again")
    else:
        forget = forgetting.init(len(y_dev), (group["count"],))
        metrics = {"loss": [[] for _ in experts], "accuracy": [[] for _ in experts]}
        snapshots = np.lib.format.open_memmap(out / group["file"], mode="w+", dtype=storage_dtype(dtype), shape=shape)
        snapshots[:, 0] = to_storage(_flat_rows(params), dtype)
        snapshots.flush()
        _save_progress(progress_file, params, state, forget, metrics)
    done = len(metrics["loss"][0])
    if mesh is not None and group["count"] % parallel.num_devices(mesh) == 0:
        params, state, forget, train_keys = jax.device_put((params, state, forget, train_keys),
                                                           parallel.batch_sharding(mesh))
    for epoch in range(done, epochs):
        params, state, forget, flat, correct, loss, acc = step(params, state, forget, train_keys, x_dev, y_dev,
                                                               jnp.int32(epoch), lr_dev)
        snapshots[:, epoch + 1] = to_storage(np.asarray(flat), dtype)
        snapshots.flush()
        loss, acc = np.asarray(loss), np.asarray(acc)
        for k in range(group["count"]):
            metrics["loss"][k].append(float(loss[k]))
            metrics["accuracy"][k].append(float(acc[k]))
        _save_progress(progress_file, params, state, forget, metrics)
        group.update(epochs_done=epoch + 1, metrics=metrics)
        write_json(out / MANIFEST, manifest)
        if bar is not None:
            bar.set_postfix(group=gi, loss=f"{loss.mean():.3f}", acc=f"{acc.mean():.3f}")
            bar.update(1)
        if on_epoch is not None:
            on_epoch(dict(group=gi, epoch=epoch + 1, experts=list(experts), loss=loss, accuracy=acc,
                          correct=np.asarray(correct)))
    del snapshots
    counts = jax.vmap(forgetting.finalize, in_axes=(0, None))(forget, epochs)
    np.save(out / group["file"].replace(".npy", ".forgetting.npy"), np.asarray(counts, np.int32))
    seal(out, group)
    group["complete"] = True
    write_json(out / MANIFEST, manifest)
    progress_file.unlink()


def _write_forgetting(out: Path, manifest: dict, labels: np.ndarray) -> None:
    """forgetting.npz: the counts summed over every expert (once all groups are complete)."""
    if not all(g["complete"] for g in manifest["groups"]):
        return
    total = sum(np.load(out / g["file"].replace(".npy", ".forgetting.npy")).sum(0) for g in manifest["groups"])
    scores_lib.save_scores(out / scores_lib.FORGETTING_FILE, np.asarray(total, np.float32), labels, "forgetting")


def ensure(dataset, *, out_dir=None, cache_dir=None, progress: bool = True, mesh=None, **settings) -> ExpertStore:
    """The experts for ``dataset`` and ``settings`` (keywords of :func:`train`): trained, resumed or
    reused. ``out_dir=None``: :func:`default_expert_dir` under ``cache_dir``."""
    if out_dir is None:
        key = resolve_settings(dataset, **{k: v for k, v in settings.items() if k != "group_size"})
        out_dir = default_expert_dir(dataset, key, cache_dir)
    return train(dataset, out_dir=out_dir, progress=progress, mesh=mesh, resume=True, **settings)


def for_run(ctx) -> ExpertStore:
    """The experts a matching run needs, from its Context (settings, dataset, seed, mesh, cache_dir):
    ``settings.experts`` if given (a folder, checked against the run's data set and network), else the
    cached ones for this data set and expert settings, trained first (with progress unless ctx.progress is
    False) when missing
    or unfinished: one command end to end for a newcomer."""
    s = ctx.settings
    if getattr(s, "experts", ""):
        require(os.path.isdir(s.experts), f"--experts {s.experts} is not a folder of experts: give the folder "
                                          f"'jaxdd experts --out DIR' wrote, or leave --experts out to train them")
        store = ExpertStore(s.experts, ctx.dataset)
        require(store.num_params == ctx.model.num_params,
                f"the experts in {s.experts} have {store.num_params} parameters but the run's network has "
                f"{ctx.model.num_params}: use the experts' --width/--depth/--norm or other experts")
        return store
    check_batch(ctx.dataset, s.expert_batch, "--expert-batch")
    return ensure(ctx.dataset, cache_dir=ctx.cache_dir, mesh=ctx.mesh, progress=ctx.progress,
                  **run_keywords(s, ctx.seed))


def run_keywords(s, seed: int) -> dict:
    """The keywords of :func:`train` for a matching run's settings (`jaxdd plan` plans the same experts)."""
    for name, flag in (("expert_train_epochs", "--expert-train-epochs"), ("expert_batch", "--expert-batch")):
        require_count(name, getattr(s, name), flag)
    return dict(num_experts=s.num_experts, epochs=s.expert_train_epochs, model=s.model, width=s.width or None,
                depth=s.depth or None, norm=s.norm or None, augment=s.expert_augment, dtype=s.expert_dtype,
                seed=seed, lr=s.expert_lr, batch_size=s.expert_batch)
