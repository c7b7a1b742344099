"""Orbax save / restore of the whole distillation state (PRNG key included)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def manager(directory, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager over `directory` (created if missing) keeping the newest `max_to_keep`."""
    directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(mgr: ocp.CheckpointManager, step: int, state) -> None:
    """Write `state` at `step` and wait for it (a run may be interrupted right after)."""
    if step in mgr.all_steps():
        return
    mgr.save(int(step), args=ocp.args.StandardSave(state), force=True)
    mgr.wait_until_finished()


def restore_latest(mgr: ocp.CheckpointManager, like):
    """(step, state) of the newest checkpoint restored into the structure of `like`; (None, like) if none.

    Arrays come back on the sharding of `like`'s arrays, so a state written with 8 devices restores on 1
    and the reverse.
    """
    step = mgr.latest_step()
    if step is None:
        return None, like

    def abstract(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return ocp.utils.to_shape_dtype_struct(x)

    state = mgr.restore(step, args=ocp.args.StandardRestore(jax.tree.map(abstract, like)))
    return step, state


def latest_step_in(directory) -> int | None:
    """The newest finished checkpoint step under `directory` (None if there is none), without creating it."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None
