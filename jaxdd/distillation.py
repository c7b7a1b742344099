"""The one driver loop for every method: progress, evaluation cadence, checkpoints, outputs.

Methods supply init / step / finalize (`jaxdd.methods`); this module only loops. The outer step is
one jitted pure function `step(state, batch, key) -> (state, metrics)`; the real batch of step n and
its key are functions of (seed, n) alone, so a resumed run continues exactly as if never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxdd import checkpoint, parallel
from jaxdd.errors import JaxddError, require
from jaxdd.methods import bptt
from jaxdd.models import make_model
from jaxdd.presets import DEFAULT_STEPS, METHODS, Settings, dataset_key, preset


@dataclasses.dataclass
class DistillResult:
    """What a distillation produced. images/labels are class-major numpy arrays."""

    images: np.ndarray
    labels: np.ndarray
    lr: float | None
    settings: dict
    metrics: list[dict]
    dataset: Any
    evaluation: dict | None = None
    baseline: dict | None = None
    out: str | None = None


def sample_real(x, y, key, step, *, batch: int):
    """The real batch of outer step `step`: a slice of a per-pass permutation of the training set.

    A pass is ``len(x) // batch`` steps; each pass draws a fresh permutation from fold_in(key, pass).
    """
    n = x.shape[0]
    per_pass = max(1, n // batch)
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_pass), n)
    idx = jax.lax.dynamic_slice_in_dim(perm, (step % per_pass) * batch, batch)
    return x[idx], y[idx]


def _prepare_dataset(dataset, settings: Settings, seed: int, cache_dir=None):
    from jaxdd import data

    if isinstance(dataset, (str, os.PathLike)):
        return data.load(dataset, normalize=settings.normalize, val_fraction=settings.val_fraction, seed=seed,
                         cache_dir=cache_dir)
    if dataset.x_val is None and settings.val_fraction > 0:
        dataset = dataset.with_validation(settings.val_fraction, seed=seed)
    return dataset


def initial_set(dataset, ipc: int, how: str, key):
    """Class-major initial images and int labels: random real images, or Gaussian noise whose per-image
    L2 norm equals the mean norm of real images (unit norm on ZCA-KIP data, as RaT-BPTT does)."""
    from jaxdd.evaluation import random_real

    seed = int(jax.random.randint(key, (), 0, 2**30))
    images, labels = random_real(dataset, ipc, seed=seed)  # also validates ipc against the class sizes
    if how == "noise":
        sample = np.asarray(dataset.x_train[:1000]).reshape(min(1000, len(dataset.x_train)), -1)
        target = float(np.linalg.norm(sample, axis=1).mean())
        noise = np.asarray(jax.random.normal(key, images.shape), np.float32)
        norms = np.linalg.norm(noise.reshape(len(noise), -1), axis=1).reshape(-1, 1, 1, 1)
        images = noise / norms * target
    return images.astype(np.float32), labels


def _host_metrics(metrics) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _read_metrics(path, upto: int) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def _write_metrics(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def resolve_settings(method: str, dataset_name: str, ipc: int, image_shape, settings: Settings | None,
                     overrides: dict) -> Settings:
    """Preset for (method, data set, ipc), then `settings` (if given) and `overrides` on top."""
    require(method in METHODS, f"unknown method '{method}': use one of {', '.join(METHODS)}")
    base = settings or preset(method, dataset_name, ipc, image_shape)
    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - fields)
    require(not unknown, f"unknown setting(s) {', '.join(unknown)}: see `jaxdd distill --help`")
    base = base.replace(**{k: v for k, v in overrides.items() if v is not None})
    if method == "bptt":
        base = base.replace(window=base.unroll_steps)
    return base.validate(method, ipc)


def distill(dataset="digits", method: str = "rat-bptt", ipc: int = 1, steps: int | None = None, *,
            out: str | os.PathLike | None = None, seed: int = 0, resume: bool = False, progress: bool = True,
            final_eval: bool = True, settings: Settings | None = None, mesh=None, cache_dir=None,
            **overrides) -> DistillResult:
    """Distil `dataset` into `ipc` images per class with `method` (bptt, tbptt, rat-bptt).

    dataset: a `jaxdd.data.Dataset` or a source string for `jaxdd.data.load`. steps: outer steps
    (default per preset). out: a directory for distilled.npz, grid.png, metrics.jsonl and
    checkpoints/ (None: nothing is written). resume: continue from out/checkpoints. overrides: any
    `jaxdd.presets.Settings` field. final_eval: evaluate the result and the random-real baseline on the
    test split with the same protocol. mesh: a `jax.sharding.Mesh` with a 'data' axis to shard the
    population, the real batch and the evaluation networks over (`jaxdd.parallel.make_mesh`).
    cache_dir: where a data source string is decoded and cached.
    """
    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", "dataset")
    require(isinstance(ipc, (int, np.integer)) and ipc >= 1, f"--ipc must be a positive integer, got {ipc!r}")
    settings = resolve_settings(method, str(name), int(ipc), None, settings, overrides)
    dataset = _prepare_dataset(dataset, settings, seed, cache_dir)
    steps = DEFAULT_STEPS.get(dataset_key(str(name)), 200) if steps is None else int(steps)
    require(steps >= 0, f"--steps must be non-negative, got {steps}")
    require(settings.real_batch <= len(dataset.x_train),
            f"--real-batch {settings.real_batch} is larger than the training set ({len(dataset.x_train)} images)")
    model = make_model(settings.model, image_shape=dataset.image_shape, num_classes=dataset.num_classes,
                       width=settings.width, depth=settings.depth or None, norm=settings.norm)
    record = dict(method=method, ipc=int(ipc), seed=int(seed), dataset=str(name), steps=steps,
                  settings=dataclasses.asdict(settings))

    key = jax.random.key(seed)
    k_init, k_run = jax.random.split(key)
    images0, labels0 = initial_set(dataset, int(ipc), settings.init, k_init)
    steps_per_pass = max(1, len(dataset.x_train) // settings.real_batch)
    parallel.check_divisible(mesh, real_batch=settings.real_batch, population=settings.population)
    meth = bptt.make(model, settings, method, ipc=int(ipc), num_classes=dataset.num_classes,
                     steps_per_pass=steps_per_pass, mesh=mesh)
    state = meth.init(k_run, images0, labels0)

    x_train, y_train = parallel.put_dataset(mesh, dataset.x_train, dataset.y_train)
    num_images = len(images0) if settings.shard_images else None
    if mesh is not None:
        state = parallel.put(state, parallel.state_shardings(mesh, state, num_images=num_images))
    step_fn = parallel.jit_step(meth.step, mesh, state, num_images=num_images)
    split = None if mesh is None else (parallel.batch_sharding(mesh),) * 2
    sampler = jax.jit(sample_real, static_argnames="batch", out_shardings=split)

    mgr, metrics_path, rows = None, None, []
    primary = jax.process_index() == 0  # multi-host: every process checkpoints (Orbax), one writes files
    if out is not None:
        out = os.fspath(out)
        os.makedirs(out, exist_ok=True)
        metrics_path = os.path.join(out, "metrics.jsonl")
        settings_path = os.path.join(out, "settings.json")
        mgr = checkpoint.manager(os.path.join(out, "checkpoints"))
        if mgr.latest_step() is not None and not resume:
            raise JaxddError(f"{out} already holds a run (checkpoint at step {mgr.latest_step()}): "
                             f"pass --resume to continue it or choose another --out")
        if resume and mgr.latest_step() is not None:
            with open(settings_path) as f:
                saved = json.load(f)
            diff = {k for k in ("method", "ipc", "seed", "dataset", "settings") if saved.get(k) != record[k]}
            require(not diff, f"--resume with different {', '.join(sorted(diff))} than the run in {out}: "
                              f"use the same options or another --out")
            done, state = checkpoint.restore_latest(mgr, state)
            rows = _read_metrics(metrics_path, done)
        if primary:
            _write_metrics(metrics_path, rows)  # drop rows past the checkpoint: they will be recomputed
            with open(settings_path, "w") as f:
                json.dump(record, f, indent=1)
        else:
            metrics_path = None

    base_key = jax.random.wrap_key_data(np.asarray(jax.device_get(state.key)))  # a copy: state is donated
    start = int(state.step)
    bar = _progress(progress, start, steps)
    t0 = time.perf_counter()
    try:
        for n in range(start, steps):
            k_batch, k_step = jax.random.split(jax.random.fold_in(base_key, n))
            batch = sampler(x_train, y_train, k_batch, n, batch=settings.real_batch)
            state, m = step_fn(state, batch, k_step)
            row = dict(step=n + 1, **_host_metrics(m), seconds=round(time.perf_counter() - t0, 3))
            if settings.eval_every and (n + 1) % settings.eval_every == 0 and n + 1 < steps:
                row["val_accuracy"] = _evaluate(meth.finalize(state), dataset, settings, split="val",
                                                seed=seed, mesh=mesh)["accuracy_mean"]
            rows.append(row)
            if metrics_path:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if mgr is not None and (n + 1) % settings.checkpoint_every == 0:
                checkpoint.save(mgr, n + 1, state)
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}",
                                gnorm=f"{row['grad_norm']:.2g}", refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        if mgr is not None:
            checkpoint.save(mgr, int(state.step), state)
            raise KeyboardInterrupt(f"interrupted at step {int(state.step)}; continue with --resume") from None
        raise
    finally:
        if bar is not None:
            bar.close()
    if mgr is not None:
        checkpoint.save(mgr, int(state.step), state)

    final = jax.device_get(meth.finalize(state))
    result = DistillResult(np.asarray(final["images"]), np.asarray(final["labels"]),
                           float(final["lr"]) if "lr" in final else None, record, rows, dataset, out=out)
    if final_eval:
        result.evaluation = _evaluate(final, dataset, settings, split="test", seed=seed, mesh=mesh)
        result.baseline = _evaluate({"images": images0 if settings.init == "real" else
                                     initial_set(dataset, int(ipc), "real", k_init)[0], "labels": labels0},
                                    dataset, settings, split="test", seed=seed, mesh=mesh)
    if out is not None and primary:
        write_outputs(result, out)
    return result


def _evaluate(final, dataset, settings: Settings, *, split: str, seed: int, mesh=None) -> dict:
    """Evaluate a set with the distillation's own inner setup (same network, Adam lr, augmentation)."""
    from jaxdd.evaluation import evaluate

    return evaluate(np.asarray(final["images"]), np.asarray(final["labels"]), dataset, protocol="quick",
                    model=settings.model, width=settings.width, depth=settings.depth or None, norm=settings.norm,
                    steps=settings.eval_steps, num_models=settings.eval_models, lr=settings.inner_lr,
                    augment=settings.augment, split=split, seed=seed, mesh=mesh)


def write_outputs(result: DistillResult, out: str) -> None:
    """DIR/distilled.npz (images, labels, lr, settings JSON, class names) and DIR/grid.png."""
    from jaxdd.viz import image_grid

    record = dict(result.settings)
    if result.evaluation:
        record["test_accuracy"] = result.evaluation["accuracy_mean"]
    if result.baseline:
        record["random_real_accuracy"] = result.baseline["accuracy_mean"]
    arrays = dict(images=result.images, labels=result.labels, settings=json.dumps(record),
                  class_names=np.asarray(result.dataset.class_names))
    if result.lr is not None:
        arrays["lr"] = np.float32(result.lr)
    np.savez(os.path.join(out, "distilled.npz"), **arrays)
    image_grid(result.images, result.labels, result.dataset.class_names, os.path.join(out, "grid.png"),
               preprocessing=result.dataset.preprocessing,
               title=f"{record['method']} IPC {record['ipc']} on {record['dataset']}")


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="distill", unit="step", dynamic_ncols=True)
