"""Orbax save / restore of the whole distillation state (PRNG key included).

A run may be stopped at any moment (SIGKILL included), so: Orbax writes a checkpoint under a
temporary name and renames it when complete; `manager` removes what an interrupted write left
behind (one warning line instead of absl's); `restore_latest` falls back from a damaged newest
checkpoint to the newest one that restores, sets the damaged ones aside as ``<step>.damaged`` and
says so in one line.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp

from jaxdd.errors import JaxddError, one_line, warn

UNFINISHED = ".orbax-checkpoint-tmp"  # Orbax's suffix of a checkpoint being written
DAMAGED = ".damaged"


def manager(directory, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager over `directory` (created if missing) keeping the newest `max_to_keep`;
    checkpoints left unfinished by a killed run are removed first."""
    directory = os.path.abspath(os.fspath(directory))
    _quiet_orbax()
    if os.path.isdir(directory) and jax.process_index() == 0:
        for name in sorted(os.listdir(directory)):
            if UNFINISHED in name:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                warn(f"removed the unfinished checkpoint {name.split('.')[0]} in {directory} (the run was stopped "
                     f"while writing it)")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(mgr: ocp.CheckpointManager, step: int, state) -> None:
    """Write `state` at `step` and wait for it (a run may be interrupted right after)."""
    if step in mgr.all_steps():
        return
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)  # a failed write is one jaxdd line, not Orbax's threads' tracebacks
    _quiet_stragglers()  # before the write: its stragglers may print while the save is still failing
    try:
        mgr.save(int(step), args=ocp.args.StandardSave(state), force=True)
        mgr.wait_until_finished()
    except Exception as err:  # noqa: BLE001 - Orbax / TensorStore raise many types for one failed write
        directory = os.fspath(mgr.directory)
        try:
            mgr.close()  # its threads stop writing before their folder goes
        except Exception:  # noqa: BLE001 - the same failure again
            pass
        _remove_unfinished(directory)
        kept = [s for s in mgr.all_steps() if s != step]
        raise JaxddError(f"cannot write the checkpoint of step {step} in {directory} ({_reason(err)}){full(err)}: "
                         f"{'the checkpoint of step ' + str(max(kept)) + ' is kept; ' if kept else ''}free space and "
                         f"run the same command with --resume") from None
    finally:
        absl.setLevel(level)


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over a file-size limit


def full(err: BaseException) -> str:
    """'; the disk or quota is full' when `err` (or what caused it) is a full disk, quota or file-size limit."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in FULL or any(
                text in str(err) for text in ("No space left", "Disk quota", "File too large")):
            return "; the disk or quota is full"
        err = err.__cause__ or err.__context__
    return ""


def _remove_unfinished(directory: str) -> None:
    if os.path.isdir(directory) and jax.process_index() == 0:
        for name in os.listdir(directory):
            if UNFINISHED in name:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def restore_latest(mgr: ocp.CheckpointManager, like):
    """(step, state, mgr) of the newest checkpoint that restores, into the structure of `like` (a pytree,
    or a function step -> pytree for states whose shape depends on the step); (None, like, mgr) if there
    is none. Use the returned manager from then on.

    A checkpoint that fails to restore (truncated or garbled files) is renamed ``<step>.damaged`` and
    reported in one warning line once an older one restores; if none does, a one-line JaxddError (and
    nothing is renamed). Each attempt after a failure uses a fresh `manager(directory)` (a failed restore leaves
    Orbax's manager unable to restore any step). Arrays come back on the sharding of `like`'s arrays, so
    a state written with 8 devices restores on 1 and the reverse.
    """
    like_at = like if callable(like) else (lambda step: like)
    steps = sorted(mgr.all_steps(), reverse=True)
    if not steps:
        return None, like_at(None), mgr

    def abstract(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return ocp.utils.to_shape_dtype_struct(x)

    directory = os.fspath(mgr.directory)
    damaged = []
    for step in steps:
        if damaged:
            mgr.close()
            mgr = manager(directory)
        try:
            state = mgr.restore(step, args=ocp.args.StandardRestore(jax.tree.map(abstract, like_at(step))))
        except Exception as err:  # noqa: BLE001 - Orbax / TensorStore raise many types for damaged files
            _quiet_stragglers()
            damaged.append((step, err))
            continue
        if damaged:
            _set_aside(directory, [s for s, _ in damaged])
            mgr.reload()
            warn(f"checkpoint(s) at step {', '.join(str(s) for s, _ in damaged)} in {directory} could not be read "
                 f"({_reason(damaged[0][1])}): resuming from step {step}; the damaged ones are kept as "
                 f"<step>{DAMAGED}")
        return step, state, mgr
    mgr.close()
    raise JaxddError(f"no checkpoint in {directory} can be read (step {', '.join(str(s) for s, _ in damaged)}: "
                     f"{_reason(damaged[0][1])}): start again with --overwrite, or use another --out")


def latest_step_in(directory) -> int | None:
    """The newest finished checkpoint step under `directory` (None if there is none), without creating it."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None


def _set_aside(directory: str, steps) -> None:
    if jax.process_index() != 0:
        return
    for step in steps:
        target = os.path.join(directory, f"{step}{DAMAGED}")
        shutil.rmtree(target, ignore_errors=True)  # an older damaged copy of the same step
        os.replace(os.path.join(directory, str(step)), target)


def _reason(err: Exception, limit: int = 160) -> str:
    """The root cause's type and the first line of its message, shortened (TensorStore's run to pages)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    first = one_line(str(err).strip().splitlines()[0] if str(err).strip() else "")
    first = first if len(first) <= limit else first[: limit - 3] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


class _UnfinishedFilter(logging.Filter):
    """Orbax's absl warning about an unfinished checkpoint it removes becomes one jaxdd warning; its errors
    about a metadata file it cannot parse (a damaged checkpoint, logged once per reading) are dropped:
    `restore_latest` says in one line which checkpoint could not be read and which one it resumes from."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to json parse"):
            return False
        if "not finalized" in str(record.msg):
            where = record.args[0] if record.args else "left by a stopped run"
            warn(f"removed the unfinished checkpoint {where}")
            return False
        return True


def _quiet_orbax() -> None:
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _UnfinishedFilter) for f in logger.filters):
        logger.addFilter(_UnfinishedFilter())


def _quiet_stragglers() -> None:
    """Keep the stragglers of a failed Orbax write out of the terminal (installed once, before the first
    write or read: they can print before the failure reaches `save`).

    Orbax runs each save in a fresh asyncio loop and closes it as soon as one TensorStore write fails (a
    full disk); the writes still in flight finish later on TensorStore's threads, whose callback
    (`loop.call_soon_threadsafe`) meets the closed loop: Python prints that RuntimeError as an
    unraisable exception once per write (a page of tracebacks around jaxdd's one line), and asyncio logs
    "Task was destroyed but it is pending!" for the tasks left waiting and "Task exception was never
    retrieved" for Orbax's other failed writes. Only those are dropped; every other unraisable exception
    goes to the previous hook and every other asyncio record is logged.
    """
    if getattr(sys.unraisablehook, "jaxdd_closed_loop", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.jaxdd_closed_loop = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(lambda record: not (
        str(record.msg).startswith("Task was destroyed but it is pending")
        or str(record.msg).startswith("Task exception was never retrieved") and "orbax" in str(record.msg)))
