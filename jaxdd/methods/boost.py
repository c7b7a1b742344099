"""Boost-DD: nested distilled sets that are good at every size (docs/methods/boost.md).

The set grows block by block: block 1 (B images per class) is distilled with a BPTT-family estimator;
then a fresh block joins and the union is distilled, the older blocks at outer rate β·lr with their
own Adam states (the new block at lr). Every prefix of blocks is then a distilled set of its own
size. The images stay class-major (row = class · IPC_active + j, blocks in order within a class), so
the first k·B images of every class are the first k blocks.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxdd import synthetic
from jaxdd.errors import require
from jaxdd.evaluation import prefix_ipc
from jaxdd.initial import initial_set, means_beside
from jaxdd.methods import bptt
from jaxdd.methods.base import MethodSpec, register
from jaxdd.settings import setting

INNER_METHODS = {"rat-bptt": "random", "tbptt": "fixed", "bptt": "full"}


@dataclasses.dataclass(frozen=True)
class BoostSettings(bptt.BPTTSettings):
    """BPTT-family settings plus the block structure."""

    block: int = setting(1, "B: images per class added by each block (--ipc must be a multiple)")
    beta: float = setting(0.1, "outer learning rate of the older blocks, as a fraction of --outer-lr (0: frozen)")
    inner_method: str = setting("rat-bptt", "estimator used inside each block: rat-bptt | tbptt | bptt")
    block_steps: int = setting(0, "meta-steps per block (0: --steps split evenly over the blocks)")
    fresh_init: str = setting("auto", "how a fresh block starts: noise | real | means (k-means centroids beside "
                                      "the existing images) | auto (by --init)")

    def validate(self, ipc: int) -> "BoostSettings":
        super().validate(ipc)
        require(self.block >= 1, f"--block must be at least 1 (images per class per block), got {self.block}")
        require(ipc % self.block == 0,
                f"--ipc {ipc} must be a multiple of --block {self.block}: e.g. --ipc {self.block * max(1, ipc // self.block)}")
        require(0 <= self.beta <= 1, f"--beta must lie in [0, 1], got {self.beta}")
        require(self.inner_method in INNER_METHODS,
                f"unknown --inner-method '{self.inner_method}': use {', '.join(INNER_METHODS)}")
        require(self.fresh_init in FRESH_INITS,
                f"unknown --fresh-init '{self.fresh_init}': use {', '.join(FRESH_INITS)}")
        return self


def block_rows(num_classes: int, blocks: int, block: int) -> np.ndarray:
    """row_block of a class-major set of `blocks` blocks of `block` images per class."""
    return np.tile(np.repeat(np.arange(blocks, dtype=np.int32), block), num_classes)


def carry_over(old, new):
    """`new` with every leaf whose key path and shape also exist in `old` taken from `old` (the older
    blocks' Adam moments and counts, the clipping EMA, the skip counters)."""
    old_leaves = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(old)[0]}

    def pick(p, v):
        o = old_leaves.get(jax.tree_util.keystr(p))
        return o if o is not None and np.shape(o) == np.shape(v) else v

    return jax.tree_util.tree_map_with_path(pick, new)


# How a fresh block starts; auto: as --init says (docs/methods/boost.md, "Fresh blocks").
FRESH_INITS = ("auto", "noise", "real", "means")


def block_rates(s: BoostSettings):
    """rates(theta) -> {block: outer rate}: the newest block at 1, the older ones at beta."""
    def rates(theta):
        newest = max(theta["images"])
        return {b: 1.0 if b == newest else s.beta for b in theta["images"]}

    return rates


def base_method(ctx):
    """The BPTT-family method every block is distilled with (its step is Boost-DD's step at any size)."""
    s = ctx.settings
    return bptt.build(ctx, bptt.schedule_for(s, INNER_METHODS[s.inner_method]), block_rates=block_rates(s))


def build(ctx):
    s, C = ctx.settings, ctx.num_classes
    num_blocks = ctx.ipc // s.block
    per_block = s.block_steps or max(1, ctx.steps // num_blocks)
    need = per_block * (num_blocks - 1) + 1  # the last block starts at step per_block·(blocks − 1)
    require(not (s.block_steps and ctx.final_eval) or ctx.steps >= need,
            f"--block-steps {s.block_steps} over {num_blocks} blocks (IPC {ctx.ipc} / --block {s.block}) needs "
            f"--steps >= {need} for the last block to start, got {ctx.steps}: give --steps "
            f"{per_block * num_blocks} or a smaller --block-steps")
    rates = block_rates(s)
    base = base_method(ctx)

    def init(key, theta, consts):
        """Start with block 1 only: the first B images per class of the initial set."""
        images, labels, _ = synthetic.assemble(theta, consts)
        keep = np.asarray(block_rows(C, num_blocks, s.block) == 0)
        th, co = synthetic.make(np.asarray(images)[keep], np.asarray(labels)[keep], C,
                                row_block=block_rows(C, 1, s.block), learn_labels=s.learn_labels)
        return base.init(key, th, co)

    def grow(state, n):
        """Before step n: add blocks until the set has block(n) + 1 of them (fresh ones from the init
        strategy, seeded by the block index); older blocks keep their values and optimizer states."""
        want = min(n // per_block, num_blocks - 1) + 1
        have = len(state.theta["images"])
        if want <= have:
            return state
        images, labels, _ = jax.device_get(synthetic.assemble(state.theta, state.consts))
        ipc_now = len(images) // C
        key = jax.random.wrap_key_data(np.asarray(jax.device_get(state.key)))
        how = s.fresh_init if s.fresh_init != "auto" else (s.init if s.init in FRESH_INITS else "noise")
        key_new = jax.random.fold_in(key, 1000 + have)
        if how == "means":
            fresh, _ = means_beside(ctx.dataset, np.asarray(images), (want - have) * s.block, key_new)
        else:
            fresh, _ = initial_set(ctx.dataset, (want - have) * s.block, how, key_new, noise_scale=s.noise_scale)
        ipc_new = want * s.block
        new_images = np.concatenate([np.asarray(images).reshape((C, ipc_now) + images.shape[1:]),
                                     fresh.reshape((C, ipc_new - ipc_now) + fresh.shape[1:])], 1)
        new_labels = np.repeat(np.arange(C, dtype=np.int32), ipc_new)
        if np.ndim(labels) == 2:  # learned labels: old rows kept, new rows one-hot
            soft = np.eye(C, dtype=np.float32)[new_labels].reshape(C, ipc_new, C)
            soft[:, :ipc_now] = np.asarray(labels).reshape(C, ipc_now, C)
            new_labels = soft.reshape(-1, C)
        theta, consts = synthetic.make(new_images.reshape((-1,) + images.shape[1:]), new_labels, C,
                                       row_block=block_rows(C, want, s.block), learn_labels=s.learn_labels)
        opt_state = carry_over(state.opt_state, bptt.outer_optimizer(s, theta, rates).init(theta))
        return dataclasses.replace(state, theta=theta, consts=consts, opt_state=opt_state)

    def report(arrays, score, real):
        """Test accuracy of every prefix of blocks beside random real images of the same size (the run's
        baseline: its draws and protocol)."""
        rows = []
        for j in range(1, num_blocks + 1):
            k = j * s.block
            images, labels = prefix_ipc(arrays["images"], arrays["labels"], k, C)
            d, b = score(images, labels), real(k)
            rows.append(dict(ipc=k, blocks=j, distilled_mean=d["accuracy_mean"], distilled_std=d["accuracy_std"],
                             random_real_mean=b["accuracy_mean"], random_real_std=b["accuracy_std"]))
            ctx.log(f"boost prefix IPC {k} ({j} block{'s' * (j > 1)}): distilled {100 * d['accuracy_mean']:.2f} "
                    f"± {100 * d['accuracy_std']:.2f} %, random real {100 * b['accuracy_mean']:.2f} %")
        return {"prefix_table": rows}

    return base._replace(init=init, grow=grow, report=report)


register(MethodSpec(
    name="boost", summary="Boost-DD: blocks of B images per class added one at a time; every prefix is a good set",
    settings=BoostSettings, build=build, presets=bptt.preset_table(steps_factor=2), evaluation=bptt.evaluation,
    resolve=lambda s: bptt.full_window(s, INNER_METHODS.get(s.inner_method, ""))))  # unknown: validate says
