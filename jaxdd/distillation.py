"""The one driver for every method: prepare, loop, finish (docs/architecture.md).

Methods supply init / step / batch / finalize (`jaxdd.methods`); this module never names one. The
outer step is one jitted pure function `step(state, batch, key) -> (state, metrics)`; the batch of
step n and its key are functions of (seed, n) alone, so a resumed run continues exactly as if never
stopped. Files are written through jaxdd/rundir.py only.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
import weakref
from typing import Any

import jax
import numpy as np

from jaxdd import (baseline, checkpoint, compile_cache, data, lock, methods, parallel, presets, rundir, stopping,
                   synthetic, tracking)
from jaxdd.errors import Interrupted, require, signal_name, warn
from jaxdd.evaluation import evaluate
from jaxdd.initial import initial_set
from jaxdd.models import make_model
from jaxdd.progress import Progress


@dataclasses.dataclass
class DistillResult:
    """What a distillation produced. images/labels are class-major numpy arrays; `arrays` holds every
    array written to distilled.npz (row_block, lr, and what the method adds)."""

    images: np.ndarray
    labels: np.ndarray
    lr: float | None
    settings: dict
    metrics: list[dict]
    dataset: Any
    evaluation: dict | None = None
    baseline: dict | None = None
    out: str | None = None
    arrays: dict | None = None
    report: dict | None = None


@dataclasses.dataclass
class Run:
    """Everything `loop` and `finish` need, made by `prepare`."""

    spec: methods.MethodSpec
    settings: Any
    dataset: Any
    method: methods.Method
    state: methods.DistillState
    record: dict
    steps: int
    seed: int
    mesh: Any
    initial: tuple
    out: str | None = None
    mgr: Any = None
    rows: list = dataclasses.field(default_factory=list)
    primary: bool = True
    best: tuple | None = None  # --stop plateau: (step, validation accuracy, arrays) of the best evaluation
    trackers: list = dataclasses.field(default_factory=list)  # --log: jaxdd/tracking.py


def _load(dataset, seed: int, cache_dir=None):
    """load(settings) -> Dataset for `presets.resolve_run`: a source is loaded with the settings'
    normalisation and validation split; a Dataset given as is gets its validation split if it lacks one."""
    def load(settings):
        if isinstance(dataset, (str, os.PathLike)):
            return data.load(dataset, normalize=settings.normalize, val_fraction=settings.val_fraction, seed=seed,
                             cache_dir=cache_dir)
        if dataset.x_val is None and settings.val_fraction > 0:
            return dataset.with_validation(settings.val_fraction, seed=seed)
        return dataset

    return load


def prepare(dataset="digits", method: str = "rat-bptt", ipc: int = 1, steps: int | None = None, *, out=None,
            seed: int = 0, resume: bool = False, overwrite: bool = False, settings=None, published: bool = False,
            mesh=None, cache_dir=None, log=None, track=(), track_images_every=None, final_eval: bool = True,
            **overrides) -> Run:
    """Resolve settings, check every input, load the data, build the method and its state (restored
    from out/checkpoints with `resume`). Nothing is written before every check has passed. log(text):
    where the method's progress goes (None: nowhere, expert training too); final_eval: score the set at ipc."""
    spec = methods.get(method)
    require(not (resume and overwrite), "--resume and --overwrite contradict each other: --resume continues the "
                                        "run in --out, --overwrite replaces it; pass one of them")
    name = str(dataset) if isinstance(dataset, (str, os.PathLike)) else getattr(dataset, "name", "dataset")
    require(isinstance(ipc, (int, np.integer)) and not isinstance(ipc, bool) and ipc >= 1,
            f"--ipc must be a positive integer, got {ipc!r}")
    require(isinstance(seed, (int, np.integer)) and 0 <= seed < 2**63, f"--seed must be an integer in [0, 2^63), got {seed!r}")
    require(steps is None or (isinstance(steps, (int, np.integer)) and steps >= 0),
            f"--steps must be a non-negative integer, got {steps!r}")
    track = tracking.check(track, out)
    if out is not None:
        out = os.fspath(out)
        rundir.check_writable(out)
        _check_run_folder(out, resume, overwrite)
    settings, ipc, dataset = presets.resolve_run(method, name, int(ipc), settings, overrides, published=published,
                                                 load=_load(dataset, seed, cache_dir))
    steps = presets.default_steps(method, name, ipc, published) if steps is None else steps
    require(dataset.num_classes >= 2, f"the data set has {dataset.num_classes} class: distillation needs at least 2")
    model = make_model(settings.model, image_shape=dataset.image_shape, num_classes=dataset.num_classes,
                       width=settings.width, depth=settings.depth or None, norm=settings.norm)
    record = dict(method=method, ipc=int(ipc), seed=int(seed), dataset=name, steps=int(steps),
                  settings=dataclasses.asdict(settings), evaluation=spec.evaluation(settings),
                  normalize=settings.normalize, num_classes=int(dataset.num_classes),
                  image_shape=list(dataset.image_shape))

    k_init, k_run = jax.random.split(jax.random.key(seed))
    images0, labels0 = initial_set(dataset, int(ipc), settings.init, k_init, noise_scale=settings.noise_scale)
    ctx = methods.Context(settings, model, dataset, int(ipc), int(steps), int(seed), mesh, cache_dir,
                          log or (lambda text: None), bool(final_eval), progress=log is not None)
    meth = spec.build(ctx)
    theta, consts = synthetic.make(images0, labels0, dataset.num_classes, learn_labels=settings.learn_labels)
    state = meth.init(k_run, theta, consts)
    run = Run(spec, settings, dataset, meth, state, record, int(steps), int(seed), mesh, (images0, labels0, k_init),
              out=out, primary=jax.process_index() == 0)
    if out is not None:
        _open_run_folder(run, resume)
    if run.primary:
        run.trackers = tracking.open_trackers(track, out, record, start=int(run.state.step), steps=run.steps,
                                              images_every=track_images_every, class_names=dataset.class_names,
                                              preprocessing=dataset.preprocessing)
    return run


def _check_run_folder(out: str, resume: bool, overwrite: bool) -> None:
    lock.check(out, f"--out {out}")  # another process on this folder: refused before any work
    done = checkpoint.latest_step_in(rundir.path(out, rundir.CHECKPOINTS))
    if resume:
        if done is None and set(rundir.holds_results(out)) <= {rundir.METRICS, rundir.SETTINGS}:
            return  # a run stopped before its first checkpoint (a kill, a full disk): it starts again
        require(done is not None or not rundir.holds_results(out),
                f"--resume: {out} holds results ({', '.join(rundir.holds_results(out))}) but no checkpoint to "
                f"continue from: choose another --out, or pass --overwrite without --resume to start again")
        return
    if done is not None:
        require(overwrite, f"{out} already holds a run (checkpoint at step {done}): pass --resume to continue "
                           f"it, --overwrite to replace it, or choose another --out")
    elif rundir.holds_results(out):
        require(overwrite, f"{out} already holds results ({', '.join(rundir.holds_results(out))}): pass "
                           f"--overwrite to replace them or choose another --out")


def _open_run_folder(run: Run, resume: bool) -> None:
    """Create the folder and the checkpoint manager; on resume, check settings and restore the state. The
    folder is locked (jaxdd/lock.py) until the run object goes."""
    rundir.make(run.out)
    if run.primary:  # one lock per run, however many processes share it
        lock.hold(run.out, f"--out {run.out}")
        weakref.finalize(run, lock.release, run.out)
    if not resume and run.primary:
        shutil.rmtree(rundir.path(run.out, rundir.CHECKPOINTS), ignore_errors=True)
        for name in rundir.RESULTS:
            if os.path.exists(rundir.path(run.out, name)):
                os.remove(rundir.path(run.out, name))
    run.mgr = checkpoint.manager(rundir.path(run.out, rundir.CHECKPOINTS))
    if resume and run.mgr.latest_step() is not None:
        saved = rundir.read_settings(run.out) or {}
        diff = sorted(k for k in ("method", "ipc", "seed", "dataset") if saved.get(k) != run.record[k])
        old, new = saved.get("settings", {}), run.record["settings"]
        resumable = RESUMABLE - (PLATEAU_RULED if new.get("stop") == "plateau" else set())
        diff += sorted(k for k in new if k not in resumable and old.get(k) != new[k])
        require(not diff, f"--resume with different {', '.join(diff)} than the run in {run.out}: use the same "
                          f"options or another --out")
        run.steps = max(run.steps, int(saved.get("steps", 0)))
        run.record["steps"] = run.steps
        grow, fresh = run.method.grow, run.state
        done, run.state, run.mgr = checkpoint.restore_latest(
            run.mgr, lambda step: grow(fresh, step - 1) if grow is not None and step else fresh)
        run.rows = rundir.read_metrics(run.out, done)
        lost = rundir.lost_steps(run.rows, done)
        if lost:
            warn(f"{rundir.path(run.out, rundir.METRICS)} had no rows for step(s) {lost} (damaged or deleted); the "
                 f"checkpoint at step {done} holds the state but not those rows: they stay missing")
    if run.primary:
        rundir.write_metrics(run.out, run.rows)  # rows past the checkpoint are recomputed
        rundir.write_settings(run.out, run.record)


# settings that do not change the result: a resume may change them
RESUMABLE = {"checkpoint_every", "eval_every", "eval_steps", "eval_models", "baseline_draws"}
PLATEAU_RULED = {"eval_every", "eval_steps", "eval_models"}  # with --stop plateau, evaluations decide the result


class StopOnSignal:
    """While active (a context manager), SIGINT and SIGTERM only record that a stop was asked for
    (`signum`: the first one's number); the loop finishes its step, checkpoints and stops. A second
    signal (SLURM may send two, an impatient user presses Ctrl-C twice) changes nothing, so a
    checkpoint being written is never cut. The previous handlers come back on exit. A signal the process
    ignores (SIGINT in a background job) stays ignored; outside the main thread (where Python cannot
    install handlers) it does nothing."""

    def __enter__(self):
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal (a background job) stays so
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        return False


def loop(run: Run, *, progress=True) -> None:
    """Run outer steps from the state's step to run.steps; checkpoint at the cadence, after the last step,
    and on SIGINT / SIGTERM, which end the current step (its metrics row written) and then raise
    `Interrupted` saying how to continue."""
    meth, mesh, settings = run.method, run.mesh, run.settings
    num_images = int(len(run.initial[0])) if settings.shard_images else None

    def jitted(state):
        if mesh is not None:
            state = parallel.put(state, parallel.state_shardings(mesh, state, num_images=num_images))
        return state, parallel.jit_step(meth.step, mesh, state, num_images=num_images,
                                        batch_sharding_kind=meth.batch_sharding)

    report = progress if isinstance(progress, Progress) else Progress(progress)
    with StopOnSignal() as stop:
        run.state, step_fn = jitted(run.state)
        base_key = jax.random.wrap_key_data(np.asarray(jax.device_get(run.state.key)))  # a copy: state is donated
        start = int(run.state.step)
        watch = _watch(run, report)
        end = start if watch is not None and watch.stopped else run.steps  # a run the rule stopped stays stopped
        report.start(start, run.steps, f"{run.record['method']} IPC {run.record['ipc']} on {run.record['dataset']}")
        t0, clock, first = time.perf_counter(), compile_cache.compile_clock(), ""
        try:
            for n in range(start, end):
                if meth.grow is not None:
                    grown = meth.grow(run.state, n)
                    if jax.tree.structure(grown) != jax.tree.structure(run.state):
                        run.state, step_fn = jitted(grown)
                k_batch, k_step = jax.random.split(jax.random.fold_in(base_key, n))
                state, m = step_fn(run.state, meth.batch(n, k_batch), k_step)
                row = dict(step=n + 1, **{k: float(v) for k, v in jax.device_get(m).items()},
                           seconds=round(time.perf_counter() - t0, 3))
                last = n + 1 == run.steps  # finish scores the last set, unless the rule needs it
                if settings.eval_every and (n + 1) % settings.eval_every == 0 and (not last or watch is not None):
                    arrays = finalize_arrays(run, state)
                    row["val_accuracy"] = evaluate_set(run, arrays, split="val")["accuracy_mean"]
                    if watch is not None:
                        state, watch = _watch_step(run, state, watch, row, arrays, report)
                run.state = state
                run.rows.append(row)
                if run.out is not None and run.primary:
                    rundir.append_metrics(run.out, row)
                for tracker in run.trackers:  # the same row to TensorBoard / W&B, and the grid at their cadence
                    tracker.log(row, lambda: finalize_arrays(run, state))
                if run.mgr is not None and (n + 1) % settings.checkpoint_every == 0:
                    checkpoint.save(run.mgr, n + 1, run.state)
                if n == start:  # the first step compiled the outer step: the end line says how long that took
                    first = (f"; the first step took {row['seconds']:.1f} s, "
                             + compile_cache.describe(clock, compile_cache.compile_clock()))
                report.step(row)
                if stop.signum is not None or (watch is not None and watch.stopped):
                    break
        except KeyboardInterrupt as err:  # only where no handler could be installed (not the main thread)
            stop.signum = getattr(err, "signum", signal.SIGINT)
        finally:
            report.close()
        if run.mgr is not None:
            checkpoint.save(run.mgr, int(run.state.step), run.state)  # a second signal here is only noted
    done = int(run.state.step)
    if stop.signum is not None:
        saved = (f"checkpoint saved in {rundir.path(run.out, rundir.CHECKPOINTS)}: run the same command with "
                 f"--resume to continue" if run.mgr is not None else "nothing saved (no output folder)")
        raise Interrupted(f"stopped by {signal_name(stop.signum)} after step {done} of {run.steps}; {saved}",
                          stop.signum)
    ended = " (the plateau rule stopped the run)" if watch is not None and watch.stopped else ""
    report.note(f"{done} steps done{ended} in {report.elapsed():.1f} s{first}")


def _watch(run: Run, report: Progress):
    """The plateau rule's state where the run starts (None with --stop steps): replayed from the metrics
    rows up to the checkpoint, with the best set so far read back from best.npz."""
    s = run.settings
    if s.stop != "plateau":
        return None
    positions = run.method.curriculum.positions if run.method.curriculum is not None else 1
    watch = stopping.replay(run.rows, patience=s.patience, positions=positions)
    if watch.best_step and run.best is None and run.out is not None:
        best = rundir.read_best(run.out)  # of this step or of a later one, which the run recomputes exactly
        if best is not None and best[0] >= watch.best_step:
            run.best = best
        else:
            warn(f"{rundir.path(run.out, rundir.BEST)} is missing or older than the best evaluation (step "
                 f"{watch.best_step}): the run's last set will be its result unless a later evaluation is better")
    if watch.stopped:
        report.note(f"the plateau rule stopped this run at step {int(run.state.step)}")
    return watch


def _watch_step(run: Run, state, watch, row: dict, arrays: dict, report: Progress):
    """One evaluation through the plateau rule: keep (and write) a new best set, move the curriculum, or
    stop; returns (state, watch)."""
    s, step, value = run.settings, row["step"], row[stopping.VALUE]
    curriculum = run.method.curriculum
    watch, event = stopping.update(watch, step, value, patience=s.patience,
                                   positions=curriculum.positions if curriculum is not None else 1)
    if event == "best":
        run.best = (step, value, {k: np.asarray(v) for k, v in arrays.items()})
        if run.out is not None and run.primary:
            rundir.write_best(run.out, step, value, run.best[2])
    elif event == "move":
        state = curriculum.at(state, watch.position)
        row["curriculum"] = watch.position
        report.detail(f"step {step}: no higher validation accuracy for {s.patience} steps: the curriculum moves "
                      f"to position {watch.position + 1} of {curriculum.positions}")
    elif event == "stop":
        row["stopped"] = 1
        report.detail(f"step {step}: no higher validation accuracy for {s.patience} steps: the run stops; the set "
                      f"of step {watch.best_step} ({100 * watch.best:.2f} % on validation) is the result")
    return state, watch


def finalize_arrays(run: Run, state) -> dict:
    """The arrays of distilled.npz for `state` (the method's finalize, or the set's own), on the host."""
    return jax.device_get((run.method.finalize or methods.default_finalize)(state))


def finish(run: Run, *, final_eval: bool = True, progress=False) -> DistillResult:
    """Write distilled.npz and grid.png, then (final_eval) score the set and random real images of the same
    size under the method's protocol, and write the set again with both accuracies recorded. The set is on
    disk before the evaluation starts, so an interrupted evaluation loses nothing."""
    report = progress if isinstance(progress, Progress) else Progress(progress)
    arrays = {k: np.asarray(v) for k, v in finalize_arrays(run, run.state).items()}
    if run.best is not None:  # --stop plateau: the set of the best validation evaluation
        arrays = dict(run.best[2])
        run.record = dict(run.record, best_step=run.best[0], best_val_accuracy=run.best[1],
                          steps_done=int(run.state.step))
    result = DistillResult(arrays["images"], arrays["labels"], float(arrays["lr"]) if "lr" in arrays else None,
                           run.record, run.rows, run.dataset, out=run.out, arrays=arrays)
    write = run.out is not None and run.primary
    if write:
        if not final_eval:  # a resumed finished run keeps the accuracies recorded for its (identical) set
            run.record = dict(run.record, **rundir.recorded_scores(run.out, arrays["images"]))
        rundir.write_distilled(run.out, arrays, run.record, run.dataset.class_names, run.dataset.preprocessing)
        rundir.write_curves(run.out, run.rows)
    if final_eval:
        try:
            _final_evaluation(run, arrays, result, report, write)
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", signal.SIGINT)
            saved = (f"the set is saved in {rundir.path(run.out, rundir.DISTILLED)}: score it with 'jaxdd evaluate "
                     f"{rundir.path(run.out, rundir.DISTILLED)}'" if write else "nothing was saved (no output folder)")
            raise Interrupted(f"stopped by {signal_name(signum)} during the final evaluation; {saved}",
                              signum) from None
    for tracker in run.trackers:
        if result.evaluation:
            tracker.results({"test_accuracy": result.evaluation["accuracy_mean"],
                             "random_real_accuracy": result.baseline["accuracy_mean"]}, run.steps)
        tracker.close()
    return result


def warn_if_not_better(distilled: dict, random_real: dict, out=None) -> None:
    """Warn (one line) when a distilled set is not clearly better than random real images of its size (an
    evaluation result and a baseline, as from :func:`evaluate_set` and `jaxdd.baseline.random_real`): the
    gain's interval (`jaxdd.baseline.gain`, both spreads) reaches 0 or below. The run may not have learned
    anything yet, which a user comparing two numbers should not have to spot."""
    g = baseline.gain(distilled, random_real)
    if g["low"] <= 0:
        where = f" in {rundir.path(out, rundir.METRICS)}" if out is not None else ""
        warn(f"the distilled set ({baseline.describe(distilled)}) scores no better than random real images of the "
             f"same size ({baseline.describe(random_real)}) beyond their spread: gain {100 * g['gain']:+.2f} points, "
             f"{100 * baseline.LEVEL:.0f} % interval [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}]; the run may "
             f"not have learned yet; check the outer loss{where} and, e.g., run longer (--resume with a larger "
             "--steps) or change the method's step sizes (docs/methods/)")


def _final_evaluation(run: Run, arrays: dict, result: DistillResult, report: Progress, write: bool) -> None:
    protocol = run.spec.evaluation(run.settings)
    what = f"{protocol.get('num_models', '?')} networks x {protocol.get('steps', '?')} steps on the test split"
    draws = run.settings.baseline_draws
    report.detail(f"scoring the distilled set ({what})")
    result.evaluation = evaluate_set(run, arrays, split="test", progress=report.bar_on)
    report.detail(f"distilled set: test accuracy {100 * result.evaluation['accuracy_mean']:.2f} %; scoring random "
                f"real images of the same size, {draws} draws ({what} each)")
    real = lambda ipc, **kw: baseline.random_real(run.dataset, ipc, draws=draws, seed=run.seed, split="test",  # noqa: E731
                                                  mesh=run.mesh, learned_lr=arrays.get("lr"), **protocol, **kw)
    result.baseline = real(run.record["ipc"], progress=report.bar_on)
    report.detail(f"random real images: test accuracy {baseline.describe(result.baseline)}")
    warn_if_not_better(result.evaluation, result.baseline, run.out)
    run.record = dict(run.record, test_accuracy=result.evaluation["accuracy_mean"],
                      random_real_accuracy=result.baseline["accuracy_mean"],
                      random_real_baseline=result.baseline["baseline"])
    if run.method.report is not None:
        report.detail("scoring the method's extra report")
        result.report = run.method.report(arrays, lambda images, labels: evaluate_set(
            run, {"images": images, "labels": labels}, split="test"), real)
        if write:
            rundir.write_report(run.out, result.report)
    if write:
        rundir.write_distilled(run.out, arrays, run.record, run.dataset.class_names, run.dataset.preprocessing)


def evaluate_set(run: Run, arrays: dict, *, split: str, progress: bool = False) -> dict:
    """Score a set (and, the same way, its baseline) under the method's protocol, with the lr learned with
    it and its frozen (real) rows as the protocol wants them."""
    return evaluate(np.asarray(arrays["images"]), np.asarray(arrays["labels"]), run.dataset, split=split,
                    seed=run.seed, mesh=run.mesh, progress=progress, learned_lr=arrays.get("lr"),
                    rows=arrays.get("row_block"), **run.spec.evaluation(run.settings))


def distill(dataset="digits", method: str = "rat-bptt", ipc: int = 1, steps: int | None = None, *,
            out: str | os.PathLike | None = None, seed: int = 0, resume: bool = False, overwrite: bool = False,
            progress=True, final_eval: bool = True, settings=None, published: bool = False, mesh=None,
            cache_dir=None, track=(), track_images_every=None, **overrides) -> DistillResult:
    """Distil `dataset` into `ipc` images per class with `method` (see `jaxdd.methods.available()`).

    dataset: a `jaxdd.data.Dataset` or a source string for `jaxdd.data.load`. steps: outer steps in
    total (default: the method's preset). out: a folder for distilled.npz, grid.png, metrics.jsonl,
    settings.json and checkpoints/ (None: nothing is written); a folder holding results is refused
    unless `resume` (continue from its newest checkpoint) or `overwrite`. settings: a settings object of
    the method's type (default: its preset; `published=True` for the paper's values); overrides: any
    of its fields. final_eval: score the set and random real images of the same size on the test split
    under the same protocol. mesh: a `jax.sharding.Mesh` with a 'data' axis (`jaxdd.parallel.make_mesh`).
    progress: True (a bar on a terminal, else a plain line every steps/20), "lines", "quiet" (start and end
    lines) or False (jaxdd/progress.py). SIGINT and SIGTERM end the current step, checkpoint and raise
    `jaxdd.errors.Interrupted` (a KeyboardInterrupt) saying how to continue (docs/runs.md). track: "tensorboard"
    and / or "wandb": the metrics rows, settings, results and an image grid every `track_images_every` steps
    (default steps/10) also go there (jaxdd/tracking.py).
    """
    report = Progress(progress)
    try:
        run = prepare(dataset, method, ipc, steps, out=out, seed=seed, resume=resume, overwrite=overwrite,
                      settings=settings, published=published, mesh=mesh, cache_dir=cache_dir, log=report.detail_log,
                      track=track, track_images_every=track_images_every, final_eval=final_eval, **overrides)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        raise Interrupted(f"stopped by {signal_name(signum)} while starting, before any step: nothing new was "
                          f"written; run the command again", signum) from None
    loop(run, progress=report)
    return finish(run, final_eval=final_eval, progress=report)
