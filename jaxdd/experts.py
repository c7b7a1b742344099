"""Expert trajectories for trajectory matching, with forgetting scores logged on the way.

docs/methods/experts.md describes the method and the files. In short: :func:`train` trains E networks
on the full real training set (plain SGD, lr 0.01, no momentum, batch 256, one DSA draw per batch,
a fresh shuffle per expert and epoch), vmapped over the experts of a *group* (and split over a
mesh's 'data' axis), and saves every expert's parameters at init and after every epoch.

Files in ``out_dir``:

* ``manifest.json``: settings, number of parameters D, storage dtype, the data set's fingerprint,
  and per group its file, its experts, how many epochs are done, whether it is complete, and the
  per-epoch training loss / accuracy of each of its experts.
* ``group_GGGG.npy``: ``[experts in the group, epochs + 1, D]`` in the storage dtype (bfloat16 is
  stored as its raw uint16 bits); read lazily with ``np.load(mmap_mode="r")``.
* ``group_GGGG.progress.npz``: float32 parameters, model state and forgetting counters of the group
  being trained, rewritten after every epoch and deleted when the group completes. Resuming starts
  from it, so an interrupted run gives the same snapshots as an uninterrupted one.
* ``group_GGGG.forgetting.npy``: ``[experts, N]`` forgetting counts of a finished group.
* ``forgetting.npz``: the forgetting scores summed over all experts (written once all groups are
  complete; format of :func:`jaxdd.scores.save_scores`).

Randomness is a function of (seed, expert, epoch) only (:func:`expert_keys`): the group size, the
device count and interruptions do not change what an expert sees.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdd import augment as augment_lib
from jaxdd import evaluation
from jaxdd import models as models_lib
from jaxdd import parallel, xla_options
from jaxdd import scores as scores_lib
from jaxdd.data.folder import default_cache_dir
from jaxdd.errors import require

__all__ = ["train", "ensure", "for_run", "resolve_settings", "ExpertStore", "expert_keys", "fingerprint",
           "default_expert_dir", "ForgettingState", "forgetting_init", "forgetting_update", "forgetting_finalize",
           "forgetting_counts", "add_parser", "DTYPES"]

FORMAT = 1
DTYPES = ("float32", "float16", "bfloat16")
MANIFEST = "manifest.json"
DEFAULT_GROUP_SIZE = 8


# ----------------------------------------------------------------------------------------------
# forgetting events (Toneva et al., ICLR 2019)


class ForgettingState(NamedTuple):
    """Running forgetting counters over the presentations of N examples (leading axes allowed)."""

    last: jax.Array  # bool [N]: correct at the previous presentation
    learned: jax.Array  # bool [N]: correct at least once
    events: jax.Array  # int32 [N]: correct -> incorrect transitions so far


def forgetting_init(num_examples: int, leading: tuple[int, ...] = ()) -> ForgettingState:
    """Counters before the first presentation (nothing correct, nothing forgotten), shape
    ``leading + (num_examples,)`` (e.g. ``leading=(experts,)`` for a vmapped group)."""
    shape = tuple(leading) + (num_examples,)
    return ForgettingState(jnp.zeros(shape, bool), jnp.zeros(shape, bool), jnp.zeros(shape, jnp.int32))


def forgetting_update(state: ForgettingState, correct: jax.Array) -> ForgettingState:
    """Add one presentation: ``correct`` bool [N], each example's prediction before its update."""
    forgot = state.last & ~correct
    return ForgettingState(correct, state.learned | correct, state.events + forgot.astype(jnp.int32))


def forgetting_finalize(state: ForgettingState, presentations: int) -> jax.Array:
    """Forgetting counts: events, or ``presentations`` for examples never predicted correctly."""
    return jnp.where(state.learned, state.events, jnp.int32(presentations))


def forgetting_counts(correct) -> jax.Array:
    """Forgetting counts from a whole history ``correct`` bool [presentations, N] -> int32 [N].

    A forgetting event is correct at one presentation and incorrect at the next; an example never
    correct gets the maximum, the number of presentations. Higher = harder.
    """
    correct = jnp.asarray(correct, bool)
    require(correct.ndim == 2, f"correct must be [presentations, N], got shape {correct.shape}")
    state, _ = jax.lax.scan(lambda s, c: (forgetting_update(s, c), None), forgetting_init(correct.shape[1]), correct)
    return forgetting_finalize(state, correct.shape[0])


# ----------------------------------------------------------------------------------------------
# keys, fingerprints, cache folder


def expert_keys(seed: int, expert: int) -> tuple[jax.Array, jax.Array]:
    """(init key, training key) of expert ``expert``; epoch e of its training draws from
    ``fold_in(training key, e)``."""
    init_key, train_key = jax.random.split(jax.random.fold_in(jax.random.key(int(seed)), int(expert)))
    return init_key, train_key


def fingerprint(dataset) -> dict:
    """What identifies a data set's training split: name, size, image shape, classes, preprocessing
    and a SHA-256 of its int32 labels (in order)."""
    labels = np.ascontiguousarray(np.asarray(dataset.y_train, np.int32))
    pre = getattr(dataset, "preprocessing", None)
    return {"name": str(dataset.name), "num_train": int(labels.size), "image_shape": list(dataset.image_shape),
            "num_classes": int(dataset.num_classes), "preprocessing": getattr(pre, "name", "none"),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}


def default_expert_dir(dataset, settings: dict, cache_dir=None) -> Path:
    """``<cache>/experts/<hash>``, keyed by the data set (a name, or a Dataset: its :func:`fingerprint`)
    and the expert settings. ``<cache>``: ``cache_dir``, else ``$JAXDD_CACHE_DIR``, else ~/.cache/jaxdd."""
    what = dataset if isinstance(dataset, str) else fingerprint(dataset)
    text = json.dumps({"dataset": what, "settings": settings}, sort_keys=True, default=str)
    return default_cache_dir(cache_dir) / "experts" / hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# storage


def _to_storage(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """float32 vectors -> the stored representation (bfloat16 as raw uint16 bits)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return vectors.astype(ml_dtypes.bfloat16).view(np.uint16)
    return vectors.astype(dtype)


def _from_storage(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows -> float32 (a copy; the memory map is only read)."""
    if dtype == "bfloat16":
        import ml_dtypes

        rows = np.asarray(rows).view(ml_dtypes.bfloat16)
    return np.array(rows, np.float32)  # always a copy, never a view into the memory map


def _storage_dtype(dtype: str):
    return np.uint16 if dtype == "bfloat16" else np.dtype(dtype)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        manifest = None
    require(isinstance(manifest, dict) and manifest.get("format") == FORMAT,
            f"{path} is not a jaxdd expert manifest (format {FORMAT}): use another folder or delete it")
    return manifest


class ExpertStore:
    """Read-only, lazy view of the experts in ``out_dir`` (only the groups that are complete).

    Vectors are float32 ``[D]``, the parameters flattened with ``jax.flatten_util.ravel_pytree``;
    :meth:`unravel` turns one back into the model's params pytree (jittable). Snapshot ``t`` of an
    expert is its parameters after t epochs (t = 0: at init), t = 0..num_epochs. Give ``dataset`` to
    refuse experts trained on another data set, split or preprocessing.
    """

    def __init__(self, out_dir, dataset=None):
        self.path = Path(out_dir)
        manifest = _read_manifest(self.path)
        require(manifest is not None, f"no experts in {self.path} (no {MANIFEST}): train them first with "
                                      f"'jaxdd experts --out {self.path}'")
        self.manifest = manifest
        self.settings = manifest["settings"]
        self.dtype = manifest["dtype"]
        self.num_params = int(manifest["num_params"])
        self.num_epochs = int(self.settings["epochs"])
        self._groups = [g for g in manifest["groups"] if g["complete"]]
        require(self._groups, f"no group of experts in {self.path} is finished yet: resume the training "
                              f"('jaxdd experts ... --out {self.path} --resume')")
        self.num_experts = sum(g["count"] for g in self._groups)
        self._arrays: dict[int, np.ndarray] = {}
        if dataset is not None:
            _check_fingerprint(manifest, dataset, self.path)

    @functools.cached_property
    def model(self) -> models_lib.Model:
        """The experts' network (the same `Model` the trainer used)."""
        return _model_for(self.manifest["dataset"], self.settings)

    @functools.cached_property
    def _unravel(self):
        shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0))[0])
        _, unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
        return unravel

    def unravel(self, vector):
        """Flat parameter vector ``[D]`` -> params pytree (works on traced arrays inside jit)."""
        return self._unravel(vector)

    def _locate(self, expert: int):
        require(isinstance(expert, (int, np.integer)) and 0 <= expert < self.num_experts,
                f"expert {expert!r} is out of range: {self.path} has experts 0..{self.num_experts - 1}")
        for i, g in enumerate(self._groups):
            if expert < g["first"] + g["count"]:
                if i not in self._arrays:
                    self._arrays[i] = np.load(self.path / g["file"], mmap_mode="r")
                return self._arrays[i], expert - g["first"]
        raise AssertionError("unreachable")

    def _check_epoch(self, epoch, name="epoch"):
        require(isinstance(epoch, (int, np.integer)) and 0 <= epoch <= self.num_epochs,
                f"{name} {epoch!r} is out of range: the experts have snapshots 0..{self.num_epochs}")

    def snapshot(self, expert: int, epoch: int) -> np.ndarray:
        """Parameters of ``expert`` after ``epoch`` epochs: float32 [D]."""
        self._check_epoch(epoch)
        array, row = self._locate(expert)
        return _from_storage(array[row, epoch], self.dtype)

    def segment(self, expert: int, start: int, stop: int) -> np.ndarray:
        """Snapshots ``start..stop`` (both included) of ``expert``: float32 [stop - start + 1, D]."""
        self._check_epoch(start, "start")
        self._check_epoch(stop, "stop")
        require(start <= stop, f"segment start {start} is after stop {stop}: give start <= stop")
        array, row = self._locate(expert)
        return _from_storage(array[row, start:stop + 1], self.dtype)

    def sample_segment(self, rng, t_min: int, t_max: int, m: int):
        """A random expert and start epoch t ~ UniformInt[t_min, t_max): (τ_t, τ_{t+m}, expert, t).

        ``rng``: a numpy Generator, an int seed or a JAX key (drawn on the host). The vectors are
        float32 [D], ready to pass to a jitted step as arguments.
        """
        require(isinstance(m, (int, np.integer)) and m >= 1, f"m (expert epochs to match) must be >= 1, got {m!r}")
        require(0 <= t_min < t_max, f"start epochs [{t_min}, {t_max}) are empty or negative: use 0 <= t_min < t_max")
        require(t_max - 1 + m <= self.num_epochs,
                f"start epoch up to {t_max - 1} + {m} epochs exceeds the experts' {self.num_epochs} epochs: "
                f"use t_max <= {self.num_epochs - m + 1} or train longer experts")
        if isinstance(rng, jax.Array):
            k_expert, k_epoch = jax.random.split(rng)
            expert = int(jax.random.randint(k_expert, (), 0, self.num_experts))
            epoch = int(jax.random.randint(k_epoch, (), t_min, t_max))
        else:
            rng = np.random.default_rng(rng)
            expert, epoch = int(rng.integers(self.num_experts)), int(rng.integers(t_min, t_max))
        both = self.segment(expert, epoch, epoch + m)
        return both[0], both[-1], expert, epoch

    def metrics(self) -> dict[str, np.ndarray]:
        """Training loss and accuracy of every expert per epoch: arrays [num_experts, num_epochs]."""
        return {k: np.concatenate([np.asarray(g["metrics"][k], np.float32) for g in self._groups])
                for k in ("loss", "accuracy")}

    def forgetting(self):
        """(scores, labels) from ``forgetting.npz`` (all groups must be complete)."""
        return scores_lib.read_score_file(self.path / scores_lib.FORGETTING_FILE)


def _check_fingerprint(manifest: dict, dataset, where) -> None:
    have, want = manifest["dataset"], fingerprint(dataset)
    diff = [k for k in want if have.get(k) != want[k]]
    require(not diff, f"the experts in {where} were trained on another data set or split ({', '.join(diff)} "
                      f"differ: {have.get('name')} with {have.get('num_train')} training images): train experts "
                      f"for this data set or load it as they were trained")


# ----------------------------------------------------------------------------------------------
# training


def _model_for(data_info: dict, settings: dict) -> models_lib.Model:
    return evaluation._cached_model(settings["model"], tuple(data_info["image_shape"]), int(data_info["num_classes"]),
                                    settings["width"], settings["depth"], settings["norm"])


@functools.lru_cache(maxsize=16)
def _epoch_fn(model: models_lib.Model, batch_size: int, augment: str):
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

        carry = jax.lax.fori_loop(0, full, body, (params, state, jnp.zeros((n,), bool), jnp.float32(0)))
        if rest:  # the last, smaller batch (as a DataLoader without drop_last)
            carry = sgd_step(carry, x_all, y_all, perm[full * batch_size:], jax.random.fold_in(k_aug, full), lr)
        params, state, correct, loss_sum = carry
        forget = forgetting_update(forget, correct)
        return params, state, forget, ravel_pytree(params)[0], correct, loss_sum / n, correct.mean()

    # xla_options.jit: the CPU compiler options every other jaxdd step has; with plain jax.jit a CIFAR epoch of
    # two w32 experts ran 2.9x slower (YNNPACK's kernel-gradient convolutions, jaxdd/xla_options.py)
    return xla_options.jit(jax.vmap(epoch_one, in_axes=(0, 0, 0, 0, None, None, None, None)),
                           donate_argnums=(0, 1, 2))


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _init_group(model, seed: int, experts: range):
    """Eager per-expert init, stacked (jit(vmap(init)) compiles for seconds on CPU for nothing)."""
    params, state = zip(*(model.init(expert_keys(seed, e)[0]) for e in experts))
    train_keys = jnp.stack([expert_keys(seed, e)[1] for e in experts])
    return _stack(params), _stack(state), train_keys


def _flat_rows(tree) -> np.ndarray:
    """A stacked pytree [G, ...] -> float32 [G, D] on the host."""
    leaves = [np.asarray(x, np.float32).reshape(x.shape[0], -1) for x in jax.tree.leaves(tree)]
    return np.concatenate(leaves, axis=1) if leaves else np.zeros((0, 0), np.float32)


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
    """Everything needed to continue a group exactly: float32 params and state, forgetting counters,
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


def resolve_settings(dataset, *, num_experts: int, epochs: int, model: str = "convnet", width: int | None = None,
                     depth: int | None = None, norm: str | None = None, lr: float = 0.01, batch_size: int = 256,
                     augment: str = "dsa", seed: int = 0, dtype: str = "float32") -> dict:
    """Validated expert settings (the defaults of :func:`train`; ``width=None`` and ``depth=None`` resolved for
    the data set): what the manifest records and the cache folder is keyed by."""
    require(model in models_lib.MODELS, f"unknown model {model!r}: use one of {', '.join(models_lib.MODELS)}")
    evaluation._check_positive("num_experts", num_experts, "--experts")
    evaluation._check_positive("epochs", epochs, "--epochs")
    evaluation._check_positive("batch_size", batch_size, "--batch-size")
    require(isinstance(lr, (int, float)) and 0 < lr < math.inf, f"lr must be a positive number, got {lr!r}: use --lr")
    require(dtype in DTYPES, f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    augment_lib.strategy_ops(augment)  # validates the name
    if model.startswith("convnet"):  # numbers, as `jaxdd distill` records them, so both find one cache
        defaults = evaluation.model_defaults(dataset)
        width = defaults["width"] if width is None else width
        depth = defaults["depth"] if depth is None else depth
    return dict(num_experts=int(num_experts), epochs=int(epochs), model=model, width=width, depth=depth, norm=norm,
                lr=float(lr), batch_size=int(batch_size), augment=augment, seed=int(seed), dtype=dtype)


def _new_manifest(dataset, settings, group_size, num_params) -> dict:
    e = settings["num_experts"]
    groups = [dict(file=f"group_{i:04d}.npy", first=first, count=min(group_size, e - first), complete=False,
                   epochs_done=0, metrics={"loss": [], "accuracy": []})
              for i, first in enumerate(range(0, e, group_size))]
    return dict(format=FORMAT, settings=settings, group_size=group_size, num_params=num_params,
                dtype=settings["dtype"], dataset=fingerprint(dataset), groups=groups)


def train(dataset, *, num_experts: int, epochs: int, out_dir, model: str = "convnet", width: int | None = None,
          depth: int | None = None, norm: str | None = None, lr: float = 0.01, batch_size: int = 256,
          augment: str = "dsa", seed: int = 0, dtype: str = "float32", group_size: int | None = None,
          resume: bool = True, progress: bool = True, mesh=None,
          on_epoch: Callable[[dict], None] | None = None) -> ExpertStore:
    """Train ``num_experts`` expert trajectories on ``dataset``'s training split; return their store.

    Experts train ``group_size`` at a time (default 8, rounded up to a multiple of the mesh size),
    vmapped; with a ``mesh`` whose size divides the group, the group is split over its 'data' axis.
    ``width=None``: :func:`jaxdd.evaluation.model_defaults`. ``dtype``: storage of the snapshots
    (training is float32). ``resume``: continue the experts already in ``out_dir`` (finished groups
    are kept, an unfinished one restarts after its last saved epoch); False refuses a non-empty
    store. Settings that differ from the stored ones are refused. ``on_epoch(info)`` is called after
    each saved epoch with info = dict(group, epoch, experts, loss [G], accuracy [G], correct [G, N]).
    """
    settings = resolve_settings(dataset, num_experts=num_experts, epochs=epochs, model=model, width=width,
                                depth=depth, norm=norm, lr=lr, batch_size=batch_size, augment=augment, seed=seed,
                                dtype=dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = _model_for(fingerprint(dataset), settings)
    manifest = _read_manifest(out)
    if manifest is not None:
        require(resume, f"{out} already holds experts: resume them (--resume / resume=True) or use another folder")
        _check_fingerprint(manifest, dataset, out)
        diff = [f"{k}: {manifest['settings'].get(k)!r} there, {v!r} here" for k, v in settings.items()
                if manifest["settings"].get(k) != v]
        require(not diff, f"{out} holds experts with other settings ({'; '.join(diff)}): use the same settings or "
                          f"another folder")
        require(group_size in (None, manifest["group_size"]),
                f"{out} was written with group size {manifest['group_size']}: resume with that group size")
    else:
        n_dev = parallel.num_devices(mesh)
        group_size = group_size or n_dev * math.ceil(min(num_experts, DEFAULT_GROUP_SIZE) / n_dev)
        evaluation._check_positive("group_size", group_size, "--group-size")
        manifest = _new_manifest(dataset, settings, min(int(group_size), int(num_experts)), net.num_params)
        _write_json(out / MANIFEST, manifest)

    x = np.asarray(dataset.x_train, np.float32)
    y = np.asarray(dataset.y_train, np.int32)
    x_dev, y_dev = parallel.put_dataset(mesh, x, y)
    step = _epoch_fn(net, settings["batch_size"], settings["augment"])
    lr_dev = jnp.float32(settings["lr"])
    total = len(manifest["groups"]) * epochs
    done = sum(g["epochs_done"] for g in manifest["groups"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=done, desc=f"{num_experts} experts × {epochs} epochs", unit="epoch")
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


def _progress_file(out: Path, group: dict) -> Path:
    return out / group["file"].replace(".npy", ".progress.npz")


def _train_group(out, manifest, gi, net, step, x_dev, y_dev, lr_dev, mesh, bar, on_epoch):
    group, settings = manifest["groups"][gi], manifest["settings"]
    epochs, dtype = settings["epochs"], settings["dtype"]
    experts = range(group["first"], group["first"] + group["count"])
    progress_file = _progress_file(out, group)
    params, state, train_keys = _init_group(net, settings["seed"], experts)
    shape = (group["count"], epochs + 1, manifest["num_params"])
    if progress_file.exists():
        params, state, forget, metrics = _load_progress(progress_file, params, state)
        snapshots = np.lib.format.open_memmap(out / group["file"], mode="r+")
        require(snapshots.shape == shape, f"{out / group['file']} has shape {snapshots.shape}, expected {shape}: "
                                          f"the folder is damaged; delete it and train again")
    else:
        forget = forgetting_init(len(y_dev), (group["count"],))
        metrics = {"loss": [[] for _ in experts], "accuracy": [[] for _ in experts]}
        snapshots = np.lib.format.open_memmap(out / group["file"], mode="w+", dtype=_storage_dtype(dtype), shape=shape)
        snapshots[:, 0] = _to_storage(_flat_rows(params), dtype)
        snapshots.flush()
        _save_progress(progress_file, params, state, forget, metrics)
    done = len(metrics["loss"][0])
    if mesh is not None and group["count"] % parallel.num_devices(mesh) == 0:
        params, state, forget, train_keys = jax.device_put((params, state, forget, train_keys),
                                                           parallel.batch_sharding(mesh))
    for epoch in range(done, epochs):
        params, state, forget, flat, correct, loss, acc = step(params, state, forget, train_keys, x_dev, y_dev,
                                                               jnp.int32(epoch), lr_dev)
        snapshots[:, epoch + 1] = _to_storage(np.asarray(flat), dtype)
        snapshots.flush()
        loss, acc = np.asarray(loss), np.asarray(acc)
        for k in range(group["count"]):
            metrics["loss"][k].append(float(loss[k]))
            metrics["accuracy"][k].append(float(acc[k]))
        _save_progress(progress_file, params, state, forget, metrics)
        group.update(epochs_done=epoch + 1, metrics=metrics)
        _write_json(out / MANIFEST, manifest)
        if bar is not None:
            bar.set_postfix(group=gi, loss=f"{loss.mean():.3f}", acc=f"{acc.mean():.3f}")
            bar.update(1)
        if on_epoch is not None:
            on_epoch(dict(group=gi, epoch=epoch + 1, experts=list(experts), loss=loss, accuracy=acc,
                          correct=np.asarray(correct)))
    del snapshots
    counts = jax.vmap(forgetting_finalize, in_axes=(0, None))(forget, epochs)
    np.save(out / group["file"].replace(".npy", ".forgetting.npy"), np.asarray(counts, np.int32))
    group["complete"] = True
    _write_json(out / MANIFEST, manifest)
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
    cached ones for this data set and expert settings, trained first (with a progress bar) when missing
    or unfinished: one command end to end for a newcomer."""
    s = ctx.settings
    if getattr(s, "experts", ""):
        store = ExpertStore(s.experts, ctx.dataset)
        require(store.num_params == ctx.model.num_params,
                f"the experts in {s.experts} have {store.num_params} parameters but the run's network has "
                f"{ctx.model.num_params}: use the experts' --width/--depth/--norm or other experts")
        return store
    return ensure(ctx.dataset, cache_dir=ctx.cache_dir, mesh=ctx.mesh, num_experts=s.num_experts,
                  epochs=s.expert_train_epochs, model=s.model, width=s.width or None, depth=s.depth or None,
                  norm=s.norm or None, augment=s.expert_augment, dtype=s.expert_dtype, seed=ctx.seed,
                  lr=s.expert_lr, batch_size=s.expert_batch)


# ----------------------------------------------------------------------------------------------
# command line

EXPERTS_EPILOG = """\
examples:
  jaxdd experts --dataset digits --experts 5 --epochs 15 --out runs/experts-digits
  jaxdd experts --dataset digits --experts 5 --epochs 15 --out runs/experts-digits --resume
  jaxdd experts --dataset /data/cifar10-jpeg.tar.xz --experts 100 --epochs 50 --width 128 --dtype float16

Every expert: plain SGD (lr 0.01, no momentum), batch 256, one DSA op per batch, a new shuffle per
epoch; parameters saved at init and after every epoch. Forgetting scores of the training images
are written to forgetting.npz once every expert is done. Ctrl-C keeps the finished epochs: run the
same command with --resume to continue.
"""


def add_parser(subparsers):
    """The ``jaxdd experts`` subcommand."""
    import argparse

    from jaxdd.cli import _positive_float, _positive_int, add_data_arguments

    p = subparsers.add_parser("experts", help="train expert trajectories (for trajectory matching) and forgetting "
                                              "scores", description=__doc__.split("\n")[0], epilog=EXPERTS_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    g = p.add_argument_group("experts")
    g.add_argument("--experts", type=_positive_int, default=10, metavar="N", help="number of experts (default 10)")
    g.add_argument("--epochs", type=_positive_int, default=50, metavar="E", help="epochs per expert (default 50)")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: a cache folder keyed by data set and settings, under --cache-dir, "
                        "$JAXDD_CACHE_DIR or ~/.cache/jaxdd)")
    g.add_argument("--dtype", default="float32", choices=DTYPES, help="storage of the snapshots (default float32)")
    g.add_argument("--model", default="convnet", metavar="NAME", help="network (default convnet)")
    g.add_argument("--width", type=_positive_int, default=None, metavar="N",
                   help="width (ConvNet default 128 for images >= 16 px, else 32)")
    g.add_argument("--depth", type=_positive_int, default=None, metavar="N",
                   help="depth (ConvNet default: the depth for the image size, 3 for 32 px, 2 for 16-31 px, "
                        "1 for 8-15 px)")
    g.add_argument("--norm", default=None, metavar="KIND", help="ConvNet norm: instance (default), batch, none")
    g.add_argument("--lr", type=_positive_float, default=0.01, metavar="LR", help="SGD learning rate (default 0.01)")
    g.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="minibatch size (default 256)")
    g.add_argument("--augment", default="dsa", metavar="STRATEGY", help="augmentation per batch (default dsa)")
    g.add_argument("--seed", type=int, default=0, help="seed: expert e's randomness depends on (seed, e, epoch)")
    g.add_argument("--group-size", type=_positive_int, default=None, metavar="G",
                   help="experts trained at once, vmapped (default 8, a multiple of --devices)")
    g.add_argument("--devices", type=int, default=None, metavar="N", help="split each group over N devices")
    g.add_argument("--resume", action="store_true", help="continue the experts already in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.set_defaults(func=cmd_experts)
    return p


def cmd_experts(args) -> int:
    from jaxdd import data

    dataset = data.load(args.dataset, normalize=args.normalize or "standardize", cache_dir=args.cache_dir)
    settings = dict(num_experts=args.experts, epochs=args.epochs, model=args.model, width=args.width,
                    depth=args.depth, norm=args.norm, lr=args.lr, batch_size=args.batch_size, augment=args.augment,
                    seed=args.seed, dtype=args.dtype)
    out = args.out or default_expert_dir(dataset, resolve_settings(dataset, **settings), args.cache_dir)
    mesh = parallel.make_mesh(args.devices) if args.devices is not None else None
    start = time.perf_counter()
    # the cache folder is keyed by the settings: continuing it is always safe
    store = train(dataset, out_dir=out, group_size=args.group_size, resume=args.resume or args.out is None,
                  progress=not args.no_progress, mesh=mesh, **settings)
    metrics = store.metrics()
    scores, _ = store.forgetting()
    summary = dict(out=str(out), num_experts=store.num_experts, epochs=store.num_epochs, num_params=store.num_params,
                   dtype=store.dtype, bytes_per_expert=(store.num_epochs + 1) * store.num_params
                   * _storage_dtype(store.dtype).itemsize, final_loss=float(metrics["loss"][:, -1].mean()),
                   final_train_accuracy=float(metrics["accuracy"][:, -1].mean()),
                   never_learned=int(np.sum(scores >= store.num_experts * store.num_epochs)),
                   seconds=round(time.perf_counter() - start, 2))
    print(f"{store.num_experts} experts × {store.num_epochs} epochs ({store.num_params} parameters, {store.dtype}) "
          f"in {out}: last-epoch training loss {summary['final_loss']:.4f}, accuracy "
          f"{100 * summary['final_train_accuracy']:.2f} %; forgetting scores in {out}/{scores_lib.FORGETTING_FILE}")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
