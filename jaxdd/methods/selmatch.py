"""SelMatch (Lee & Chung, ICML 2024): selection-based initialisation and partial updates by trajectory
matching, for large budgets (docs/methods/selmatch.md).

Per class the training examples are sorted hardest first by a difficulty score (forgetting scores of
the experts, EL2N, or a score file); a class-balanced window of IPC consecutive examples starting at β
is the initial set. The harder (1 − α) part of each class's window stays real and frozen (D_select,
row_block −1); the easier α part (D_distill) starts as those real images and is learned by the
matching method of jaxdd/methods/matching.py, whose unroll trains on the union. β is scanned on the
validation split unless given. Evaluation: DSA on D_distill rows, crop + flip on D_select rows.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxdd import experts, scores, synthetic
from jaxdd.evaluation import evaluate
from jaxdd.errors import require
from jaxdd.methods import matching
from jaxdd.methods.base import MethodSpec, Presets, default_finalize, register
from jaxdd.settings import setting

READINGS = ("fraction", "ipc")


@dataclasses.dataclass(frozen=True)
class SelMatchSettings(matching.MatchingSettings):
    """Trajectory matching settings plus the selection and the partial update."""

    alpha: float = setting(0.2, "fraction of each class's window that is distilled (D_distill); the rest stays real")
    beta: float = setting(-1.0, "window start, hardest first (see --beta-reading); -1: scan on the validation split",
                          minimum=-1)
    beta_reading: str = setting("fraction", "fraction: start = round(beta * class size) (the paper); "
                                            "ipc: start = round(beta * IPC) (the released code)")
    beta_step: float = setting(0.1, "spacing of the beta scan (from 0 while the windows fit in every class)")
    scores: str = setting("forgetting", "difficulty scores: forgetting (the experts') | el2n | a score npz file")
    ratio: float = setting(0.0, "the budget as a fraction of the training split (sets --ipc; 0: use --ipc)")
    select_augment: str = setting("standard", "evaluation augmentation of the selected real rows "
                                              "(standard: crop pad 4 + flip; 'same': as the distilled rows)")
    eval_protocol: str = setting("mtt", "evaluation: mtt (ConvNet, the run's budget) | selmatch (the paper's ResNet-18)")

    def validate(self, ipc: int) -> "SelMatchSettings":
        super().validate(ipc)
        require(0 <= self.alpha <= 1, f"--alpha must lie in [0, 1], got {self.alpha}")
        require(self.beta == -1 or self.beta >= 0, f"--beta must be >= 0 (or -1 to scan), got {self.beta}")
        require(self.beta_reading in READINGS, f"unknown --beta-reading '{self.beta_reading}': use fraction or ipc")
        require(self.beta <= 1 or self.beta_reading != "fraction", f"--beta {self.beta} is past the easiest image "
                f"(--beta-reading fraction: a share of the class, in [0, 1]); use --beta <= 1 or -1 to scan")
        require(self.beta_step > 0, "--beta-step must be positive")
        require(0 <= self.ratio < 1, f"--ratio must lie in [0, 1), got {self.ratio}")
        require(self.eval_protocol in ("mtt", "selmatch"), f"unknown --eval-protocol '{self.eval_protocol}': "
                                                           "use mtt or selmatch")
        return self


def _round(x: float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return int(math.floor(x + 0.5))


def window_start(class_size: int, ipc: int, beta: float, reading: str = "fraction") -> int:
    """Offset of a class's window in its hardest-first list: round(β·n_c) or round(β·IPC), moved back so
    that the IPC examples fit (start <= n_c − IPC)."""
    start = _round(beta * (class_size if reading == "fraction" else ipc))
    return max(0, min(start, class_size - ipc))


def hardest_first(scores, labels, num_classes: int) -> list[np.ndarray]:
    """Per class, the indices of its training examples sorted by score, highest (hardest) first; ties in
    the data set's order."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    out = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        out.append(rows[np.argsort(-scores[rows], kind="stable")])
    return out


def select(scores, labels, num_classes: int, ipc: int, beta: float, reading: str = "fraction") -> np.ndarray:
    """Indices int [C·IPC] of the selected examples, class-major, each class's window hardest first."""
    sorted_rows = hardest_first(scores, labels, num_classes)
    small = min(len(r) for r in sorted_rows)
    require(ipc <= small, f"--ipc {ipc} is larger than the smallest class ({small} training images): "
                          f"use --ipc <= {small}")
    return np.concatenate([r[window_start(len(r), ipc, beta, reading):][:ipc] for r in sorted_rows]).astype(np.int64)


def partial_rows(num_classes: int, ipc: int, alpha: float) -> np.ndarray:
    """row_block of a class-major selection: per class the first (hardest) IPC − round(α·IPC) rows frozen
    (−1, D_select), the remaining round(α·IPC) learned (0, D_distill)."""
    distilled = _round(alpha * ipc)
    one = np.r_[np.full(ipc - distilled, synthetic.FROZEN), np.zeros(distilled)].astype(np.int32)
    return np.tile(one, num_classes)


def scan_betas(class_sizes, ipc: int, step: float, reading: str = "fraction") -> list[float]:
    """β = 0, step, 2·step, ... while the window still fits in every class without being moved back."""
    betas, k = [], 0
    while True:
        beta = round(k * step, 10)
        if any(_round(beta * (n if reading == "fraction" else ipc)) + ipc > n for n in class_sizes):
            return betas or [0.0]
        betas.append(beta)
        k += 1


def difficulty(ctx) -> np.ndarray:
    """Difficulty scores (higher = harder) of the run's training split, checked against it."""
    s = ctx.settings
    if s.scores == "forgetting":
        return scores.load_scores(experts.for_run(ctx).path, ctx.dataset, kind="forgetting")
    if s.scores == "el2n":
        return scores.el2n_scores(ctx.dataset, model=s.model, width=s.width, depth=s.depth or None, norm=s.norm,
                                  batch_size=s.expert_batch, lr=s.expert_lr, seed=ctx.seed)
    return scores.load_scores(s.scores, ctx.dataset)


def build(ctx):
    s, C = ctx.settings, ctx.num_classes
    base = matching.build(ctx)  # finds or trains the experts (and their forgetting scores)
    hard = difficulty(ctx)
    y = np.asarray(ctx.dataset.y_train)
    x = np.asarray(ctx.dataset.x_train, np.float32)
    labels = np.repeat(np.arange(C, dtype=np.int32), ctx.ipc)
    curve = []
    if s.beta >= 0:
        beta = s.beta
    else:
        require(getattr(ctx.dataset, "x_val", None) is not None and len(ctx.dataset.x_val) > 0,
                "--beta -1 scans the window on the validation split: set --val-fraction above 0 or give --beta")
        sizes = [int((y == c).sum()) for c in range(C)]
        for b in scan_betas(sizes, ctx.ipc, s.beta_step, s.beta_reading):
            idx = select(hard, y, C, ctx.ipc, b, s.beta_reading)
            r = evaluate(x[idx], labels, ctx.dataset, split="val", seed=ctx.seed, rows=np.ones(len(idx), bool),
                         learned_lr=s.syn_lr, mesh=ctx.mesh, **evaluation(s))
            curve.append(dict(beta=b, val_accuracy_mean=r["accuracy_mean"], val_accuracy_std=r["accuracy_std"]))
            ctx.log(f"selmatch beta scan: beta {b:g}: validation accuracy of the selected real images "
                    f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} %")
        beta = max(curve, key=lambda row: (row["val_accuracy_mean"], -row["beta"]))["beta"]
        ctx.log(f"selmatch beta scan: chose beta {beta:g}")
    index = select(hard, y, C, ctx.ipc, beta, s.beta_reading)
    row_block = partial_rows(C, ctx.ipc, s.alpha)

    def init(key, theta, consts):
        """The selected window instead of the driver's initial set: D_select frozen, D_distill learned."""
        th, co = synthetic.make(x[index], labels, C, row_block=row_block)
        return base.init(key, th, co)

    def finalize(state):
        return dict(default_finalize(state), selected_index=index, beta=np.float32(beta))

    def report(arrays, score, real):
        return {"beta": beta, "beta_reading": s.beta_reading, "beta_scan": curve,
                "alpha": s.alpha, "distilled_rows_per_class": int((row_block == 0).sum() // C)}

    return base._replace(init=init, finalize=finalize, report=report)


def evaluation(s: SelMatchSettings) -> dict:
    """The matching protocol (or the paper's ResNet-18 one) with the combined augmentation."""
    if s.eval_protocol == "selmatch":
        kwargs = dict(protocol="selmatch", num_models=s.eval_models)
    else:
        kwargs = matching.evaluation(s)
    distilled = kwargs.get("augment", "dsa")
    kwargs["select_augment"] = distilled if s.select_augment == "same" else s.select_augment
    return kwargs


# (dataset, IPC) -> (alpha, beta) of the paper's table (5/10/20/30 % of CIFAR-10 and CIFAR-100, 10/20 % of Tiny)
_ALPHA_BETA = {
    ("cifar10", 250): (0.6, 0.5), ("cifar10", 500): (0.2, 0.3), ("cifar10", 1000): (0.1, 0.2),
    ("cifar10", 1500): (0.1, 0.2),
    ("cifar100", 25): (0.8, 0.8), ("cifar100", 50): (0.6, 0.7), ("cifar100", 100): (0.3, 0.6),
    ("cifar100", 150): (0.2, 0.4),
    ("tiny_imagenet", 50): (0.6, 0.8), ("tiny_imagenet", 100): (0.5, 0.7),
}
# N = 55 (Tiny: 20) and the image lr (1e4 for CIFAR-10 at 20 % and more): docs/methods/selmatch.md
PUBLISHED = {(key, ipc): dict(alpha=alpha, beta=beta, beta_reading="fraction", syn_steps=20 if key == "tiny_imagenet" else 55,
                              expert_epochs=2, max_start_epoch=80, batch_syn=125,
                              outer_lr=1e4 if key == "cifar10" and ipc >= 1000 else 1e3, lr_lr=1e-5, syn_lr=1e-3,
                              width=128, depth=4 if key == "tiny_imagenet" else 3, norm="batch", num_experts=100,
                              expert_train_epochs=100, expert_dtype="float16", init="real", eval_protocol="selmatch",
                              eval_models=3, val_fraction=0.0)
             for (key, ipc), (alpha, beta) in _ALPHA_BETA.items()}
# CPU: the matching preset; alpha from the paper's large-ratio rows, beta scanned; digits are neither flip- nor
# 4-pixel-shift-invariant, so their selected rows are not augmented.
CPU = {name: dict(values, alpha=0.2, beta=-1.0) for name, values in matching.CPU.items()}
CPU["digits"].update(select_augment="none")
# published: SelMatch's 10k iterations (docs/methods/selmatch.md)
PRESETS = Presets(cpu=CPU, cpu_steps=matching.CPU_STEPS, published=PUBLISHED, published_steps=10_000,
                  source="the SelMatch paper")


def ipc_from_ratio(settings: SelMatchSettings, facts, ipc: int) -> int:
    """--ratio: the budget as a fraction of the training data (train + validation), per class, rounded."""
    if not settings.ratio:
        return ipc
    return max(1, int(np.floor(settings.ratio * facts.num_train / facts.num_classes + 0.5)))


register(MethodSpec(
    name="selmatch", summary="SelMatch: a difficulty window of real images, its easier part learned by matching",
    settings=SelMatchSettings, build=build, presets=PRESETS, evaluation=evaluation, ipc=ipc_from_ratio))
