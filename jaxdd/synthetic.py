"""The synthetic set as a value: image blocks learned at their own rates, frozen rows, labels, and an
optional learnable inner learning rate (docs/architecture.md).

A set is two dicts. `theta` holds what the outer optimizer learns:

    theta = {"images": {"b000": [n0, H, W, C], "b001": [n1, ...], ...},   # learned image blocks
             "labels": [N, classes] (learned soft labels, optional), "lr": [] (optional)}

`consts` holds the rest: ``frozen`` [m, H, W, C] (absent when m = 0; rows that never move: SelMatch's selected real
images, a Boost-DD block at rate 0), ``order`` int32 [N] (class-major row r of the set is row
order[r] of concat(frozen, b000, b001, ...)), ``row_block`` int32 [N] (−1 for a frozen row, else the
block index) and ``labels`` int32 [N] when labels are hard. The set is always seen class-major
(row = class · IPC + j) through :func:`assemble`; the outer optimizer sees only `theta`, so frozen rows
are untouched by construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FROZEN = -1


def block_name(index: int) -> str:
    return f"b{index:03d}"


def make(images, labels, num_classes: int, *, row_block=None, learn_labels: bool = False, lr=None):
    """(theta, consts) of a class-major set. row_block: int [N], −1 = frozen, b >= 0 = learned block b
    (default: one learned block). labels: int [N] or soft [N, C]. lr: a learnable inner lr (or None).
    Floats are JAX's default float: float32, float64 under jax_enable_x64."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    images = np.asarray(images, dtype)
    n = len(images)
    row_block = np.zeros(n, np.int32) if row_block is None else np.asarray(row_block, np.int32)
    groups = sorted(set(row_block.tolist()))
    frozen_rows = np.flatnonzero(row_block == FROZEN)
    stacked = [frozen_rows] + [np.flatnonzero(row_block == g) for g in groups if g != FROZEN]
    order = np.empty(n, np.int32)
    order[np.concatenate(stacked)] = np.arange(n, dtype=np.int32)
    theta = {"images": {block_name(g): jnp.asarray(images[row_block == g]) for g in groups if g != FROZEN}}
    consts = {"order": jnp.asarray(order), "row_block": jnp.asarray(row_block)}
    if len(frozen_rows):  # (absent when empty: checkpoints hold no zero-size arrays)
        consts["frozen"] = jnp.asarray(images[frozen_rows])
    labels = np.asarray(labels)
    if labels.ndim == 2 or learn_labels:
        soft = labels if labels.ndim == 2 else np.eye(num_classes, dtype=dtype)[labels]
        if learn_labels:
            theta["labels"] = jnp.asarray(soft, dtype)
        else:
            consts["labels"] = jnp.asarray(soft, dtype)
    else:
        consts["labels"] = jnp.asarray(labels, jnp.int32)
    if lr is not None:
        theta["lr"] = jnp.asarray(lr, dtype)
    return theta, consts


def images(theta, consts):
    """The class-major images [N, H, W, C]. (A plain array in theta["images"] is taken as it is.)"""
    if not isinstance(theta["images"], dict):
        return theta["images"]
    parts = [consts["frozen"]] if "frozen" in consts else []
    parts += [theta["images"][k] for k in sorted(theta["images"])]
    return jnp.concatenate(parts)[consts["order"]]


def num_rows(theta, consts) -> int:
    """Rows of the set (static: read from the shapes)."""
    return int(consts["order"].shape[0]) if "order" in consts else int(theta["images"].shape[0])


def assemble(theta, consts):
    """(images, labels, lr or None) of the set, class-major: what an inner step trains on."""
    labels = theta["labels"] if "labels" in theta else consts["labels"]
    return images(theta, consts), labels, theta.get("lr")


def export(theta, consts) -> dict:
    """Host numpy arrays for distilled.npz: images, labels, row_block, and lr where it is learned."""
    imgs, labels, lr = assemble(theta, consts)
    out = {"images": np.asarray(imgs), "labels": np.asarray(labels), "row_block": np.asarray(consts["row_block"])}
    if lr is not None:
        out["lr"] = np.float32(lr)
    return out
