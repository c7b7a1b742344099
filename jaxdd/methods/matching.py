"""Trajectory matching (MTT, Cazenavette et al. CVPR 2022; DATM refinements): docs/methods/matching.md.

Each outer step picks an expert trajectory (networks trained on the real data, jaxdd/experts/) and a
start epoch t; from θ_0 = τ_t it trains N SGD steps on the synthetic set with a learnable scalar lr
and matches the expert M epochs later: L = ‖θ_N − τ_{t+M}‖² / ‖τ_t − τ_{t+M}‖². The N steps are the
unroll core's window (full BPTT with remat); images and lr are updated by SGD with momentum.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdd import experts, inner, outer, synthetic
from jaxdd.errors import require
from jaxdd.methods.base import Method, MethodSpec, Presets, new_state, register
from jaxdd.settings import LABEL_LR_HELP, CommonSettings, setting
from jaxdd.unroll import REMAT_NAMES, run_window


@dataclasses.dataclass(frozen=True)
class MatchingSettings(CommonSettings):
    """Trajectory matching settings on top of the common ones (outer_lr is the images' SGD rate)."""

    syn_steps: int = setting(20, "N: inner SGD steps on the synthetic set per outer step")
    expert_epochs: int = setting(2, "M: the target is the expert M epochs after the start")
    min_start_epoch: int = setting(0, "smallest start epoch t")
    max_start_epoch: int = setting(10, "T+: start epochs t ~ U[min_start_epoch, T+)")
    max_start_epoch_end: int = setting(0, "DATM: grow T+ linearly to this value over the run (0: constant)")
    max_loss: float = setting(0.0, "DATM: skip updates whose matching loss exceeds this (0: never skip)")
    soft_labels: str = setting("", "DATM: '' hard labels | expert: soft targets softmax(logits / --label-temp) of "
                                   "the first expert's last snapshot on the initial images")
    label_temp: float = setting(1.0, "temperature of the expert soft labels")
    label_lr: float = setting(2.0, LABEL_LR_HELP)
    lr_lr: float = setting(1e-5, "SGD rate of the learnable inner lr")
    syn_lr: float = setting(0.01, "initial value of the learnable inner lr")
    momentum: float = setting(0.5, "momentum of the outer SGD (images and lr)")
    batch_syn: int = setting(0, "synthetic images per inner step (0: the whole set), drawn by --syn-batches")
    syn_batches: str = setting("chunks", "chunks: the authors' (the set shuffled once, chunks of --batch-syn taken "
                                         "without replacement, not class-balanced) | balanced: --batch-syn // C "
                                         "of each class, drawn afresh each step")
    eval_by_epochs: bool = setting(False, "train evaluation networks for the mtt protocol's 1000 epochs at batch 256, "
                                          "lr x 0.1 at epoch 500 (the authors'), not --eval-steps steps")
    augment: str = setting("dsa", "augmentation of the synthetic inner batches (per-sample DSA)")
    remat: str = setting("full", "rematerialisation of the inner step: " + " | ".join(REMAT_NAMES))
    experts: str = setting("", "folder of expert trajectories ('': train them, cached by data set and settings)")
    num_experts: int = setting(5, "experts to train when --experts is not given")
    expert_train_epochs: int = setting(15, "epochs of each expert when they are trained here")
    expert_dtype: str = setting("float32", "storage of expert snapshots: float32 | float16 | bfloat16 | float64")
    expert_augment: str = setting("dsa", "augmentation of the experts' training batches")
    expert_lr: float = setting(0.01, "SGD rate of the experts (the papers' 0.01)")
    expert_batch: int = setting(256, "minibatch of the experts (the papers' 256; smaller for small data sets)")

    def validate(self, ipc: int) -> "MatchingSettings":
        super().validate(ipc)
        require(self.syn_steps >= 1, "--syn-steps must be at least 1")
        require(self.expert_epochs >= 1, "--expert-epochs must be at least 1")
        require(0 <= self.min_start_epoch < self.max_start_epoch,
                f"--min-start-epoch {self.min_start_epoch} must be below --max-start-epoch {self.max_start_epoch}")
        require(self.syn_lr > 0 and self.lr_lr >= 0, "--syn-lr must be positive and --lr-lr non-negative")
        require(0 <= self.momentum < 1, f"--momentum must lie in [0, 1), got {self.momentum}")
        require(self.num_experts >= 1, f"--num-experts must be at least 1, got {self.num_experts}")
        require(self.remat in REMAT_NAMES, f"unknown --remat '{self.remat}': use {', '.join(REMAT_NAMES)}")
        require(self.expert_dtype in experts.DTYPES,
                f"unknown --expert-dtype '{self.expert_dtype}': use {', '.join(experts.DTYPES)}")
        require(self.soft_labels in ("", "expert"), f"unknown --soft-labels '{self.soft_labels}': use expert or ''")
        require(self.label_temp > 0, "--label-temp must be positive")
        require(self.syn_batches in ("chunks", "balanced"),
                f"unknown --syn-batches '{self.syn_batches}': use chunks or balanced")
        return self


def expert_soft_labels(model, params, model_state, images, temperature: float = 1.0):
    """DATM's label initialisation: softmax(logits / temperature) of an expert network on the images
    (batch statistics where the network has BatchNorm, as inside the unroll)."""
    logits = model.apply(params, model_state, images, True)[0]
    return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def matching_loss(end_flat, start_flat, target_flat):
    """‖θ_N − θ*‖² / ‖θ_0 − θ*‖² over flat parameter vectors."""
    return jnp.sum((end_flat - target_flat) ** 2) / jnp.sum((start_flat - target_flat) ** 2)


def match(model, cfg: inner.InnerConfig, theta, consts, start_flat, target_flat, unravel, model_state0, key, *,
          remat="full"):
    """(loss, end parameters) of N = cfg.total_steps inner SGD steps from the expert's start point."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32, or float64 under x64
    start_flat, target_flat = start_flat.astype(dtype), target_flat.astype(dtype)
    if cfg.chunk is not None:  # the authors' sampler: one shuffle of the set per outer step
        consts = dict(consts, chunk_key=jax.random.fold_in(key, 1))
    step = inner.make_step(model, cfg, consts)
    params0 = unravel(start_flat)
    carry = inner.init_carry(params0, model_state0, cfg)
    xs = jax.random.split(key, cfg.total_steps)
    end = run_window(step, carry, theta, xs, start=0, window=cfg.total_steps, remat=False if remat == "none" else remat)
    end_flat, _ = ravel_pytree(end.params)
    return matching_loss(end_flat, start_flat, target_flat), end


def start_bound(settings: MatchingSettings, n, total_steps: int) -> int:
    """T+ at outer step n: constant, or grown linearly to max_start_epoch_end (DATM)."""
    if not settings.max_start_epoch_end or total_steps <= 1:
        return settings.max_start_epoch
    grow = (settings.max_start_epoch_end - settings.max_start_epoch) * n / (total_steps - 1)
    return int(round(settings.max_start_epoch + grow))


def build(ctx, store=None) -> Method:
    """The matching method; store: the experts (default `experts.for_run(ctx)`; `jaxdd plan` passes a
    stand-in of their shapes)."""
    s, model = ctx.settings, ctx.model
    store = experts.for_run(ctx) if store is None else store
    # start epochs t < T+ and the target t + M <= E: T+ - 1 + M <= E (the authors run T+ 4, M 2 on 5-epoch experts)
    require(s.max_start_epoch - 1 + s.expert_epochs <= store.num_epochs,
            f"--max-start-epoch {s.max_start_epoch} - 1 + --expert-epochs {s.expert_epochs} exceeds the experts' "
            f"{store.num_epochs} epochs: lower them or train longer experts")
    params_like, state_like = model.init(jax.random.key(0))  # the state's values start every student
    _, unravel = ravel_pytree(params_like)
    balanced = s.batch_syn and s.syn_batches == "balanced"
    per_class = max(1, s.batch_syn // ctx.num_classes) if balanced else None
    chunk = s.batch_syn if s.batch_syn and not balanced and s.batch_syn < ctx.ipc * ctx.num_classes else None
    cfg = inner.InnerConfig(optimizer="sgd", lr=s.syn_lr, ipc=ctx.ipc, num_classes=ctx.num_classes,
                            per_class=min(per_class, ctx.ipc) if per_class else None, chunk=chunk, augment=s.augment,
                            total_steps=s.syn_steps)

    def optimizer(theta):
        return outer.outer_optimizer(theta, lr=s.outer_lr, lr_labels=s.labels_lr(), lr_lr=s.lr_lr, clip=False,
                                     kind="sgd", momentum=s.momentum)

    def init(key, theta, consts):
        theta = dict(theta, lr=jnp.asarray(s.syn_lr, jax.dtypes.canonicalize_dtype(jnp.float64)))
        if s.soft_labels == "expert":  # resumed runs restore their labels from the checkpoint over these
            expert = unravel(jnp.asarray(store.snapshot(0, store.num_epochs)))
            soft = expert_soft_labels(model, expert, state_like, synthetic.images(theta, consts), s.label_temp)
            theta, consts = (dict(theta, labels=soft), consts) if s.learn_labels else (theta, dict(consts, labels=soft))
        return new_state(theta, consts, optimizer, key, jnp.zeros((), jnp.int32))

    def step(state, batch, key):
        start, target = batch

        def loss_fn(theta):
            loss, _ = match(model, cfg, theta, state.consts, start, target, unravel, state_like, key, remat=s.remat)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(state.theta)
        opt = optimizer(state.theta)
        updates, opt_state = opt.update(grads, state.opt_state, state.theta)
        theta = outer.project(optax.apply_updates(state.theta, updates))
        keep = (loss <= s.max_loss) if s.max_loss > 0 else jnp.asarray(True)
        theta, opt_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), (theta, opt_state),
                                        (state.theta, state.opt_state))
        skipped = 1 - (keep & opt_state.last_finite).astype(jnp.int32)
        new = dataclasses.replace(state, theta=theta, opt_state=opt_state, step=state.step + 1,
                                  method_state=state.method_state + skipped)
        return new, dict(loss=loss, grad_norm=optax.tree.norm(grads), syn_lr=theta["lr"], skipped=skipped,
                         skipped_total=new.method_state)

    def batch(n, key):
        """(τ_t, τ_{t+M}) of a random expert and start epoch, read from the store (host side)."""
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
        upper = min(start_bound(s, n, ctx.steps), store.num_epochs - s.expert_epochs + 1)
        expert = int(rng.integers(store.num_experts))
        t = int(rng.integers(s.min_start_epoch, max(s.min_start_epoch + 1, upper)))
        return (jnp.asarray(store.snapshot(expert, t)), jnp.asarray(store.snapshot(expert, t + s.expert_epochs)))

    return Method(init, step, batch, batch_sharding=None)


def evaluation(s: MatchingSettings) -> dict:
    """The MTT protocol (SGD momentum 0.9, wd 5e-4, the learned lr, lr x 0.1 at half) at the run's budget."""
    kwargs = dict(protocol="mtt", model=s.model, width=s.width, depth=s.depth or None, norm=s.norm,
                  steps=s.eval_steps, num_models=s.eval_models, augment="none" if s.augment == "none" else "dsa",
                  use_learned_lr=True)
    if s.eval_by_epochs:  # the protocol's own epochs: 1000 · ⌈N / 256⌉ steps
        del kwargs["steps"]
    return kwargs


# Published MTT rows: (dataset, ipc) -> (N, M, T+, zca, lr_img, lr_lr). CIFAR: the paper's table; Tiny-ImageNet:
# the authors' table as DC-BENCH's methods/tm/readme.md writes it out (the table itself is an image); the ImageNet
# subsets: the authors' issue #1 (one setting for every subset, 5000 steps). Sources: docs/methods/matching.md.
_MTT_ROWS = {
    ("cifar10", 1): (50, 2, 2, True, 1e3, 1e-7),
    ("cifar10", 10): (30, 2, 20, True, 1e3, 1e-5),
    ("cifar10", 50): (30, 2, 40, False, 1e3, 1e-5),
    ("cifar100", 1): (20, 3, 20, True, 1e3, 1e-5),
    ("cifar100", 10): (20, 2, 20, False, 1e3, 1e-5),
    ("cifar100", 50): (80, 2, 40, True, 1e3, 1e-5),
    ("tiny_imagenet", 1): (10, 2, 10, False, 1e4, 1e-4),
    ("tiny_imagenet", 10): (20, 2, 40, False, 1e4, 1e-4),
    ("tiny_imagenet", 50): (20, 2, 40, False, 1e4, 1e-4),
}
# MTT's ImageNet subsets (their utils.Config; the class ids: docs/methods/matching.md), each a 128 px folder or
# archive named after the subset: ConvNetD5, N 20, M 2, T+ 10, lr_img 1e5, lr_lr 1e-6 at IPC 1 and 10.
IMAGENET_SUBSETS = ("imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk", "imageyellow")
_MTT_ROWS.update({(subset, ipc): (20, 2, 10, False, 1e5, 1e-6) for subset in IMAGENET_SUBSETS for ipc in (1, 10)})
# batch_syn where the authors set it (per inner step; the whole set elsewhere)
_BATCH_SYN = {("cifar100", 50): 125, ("tiny_imagenet", 10): 200, ("tiny_imagenet", 50): 300,
              **{(subset, 10): 20 for subset in IMAGENET_SUBSETS}}
# ConvNet depth: 3 on CIFAR's 32 px, 4 on Tiny's 64 px, 5 on the subsets' 128 px (ConvNetD4 / ConvNetD5)
_DEPTH = {"cifar10": 3, "cifar100": 3, "tiny_imagenet": 4, **{subset: 5 for subset in IMAGENET_SUBSETS}}
# non-ZCA inputs: the authors' fixed constants, CIFAR's for both CIFAR sets and ImageNet's for the rest
_STANDARDIZE = {"cifar10": "standardize-cifar", "cifar100": "standardize-cifar"}
PUBLISHED = {key: dict(syn_steps=n, expert_epochs=m, max_start_epoch=t_max,
                       normalize="zca-mtt" if zca else _STANDARDIZE.get(key[0], "standardize-imagenet"),
                       outer_lr=lr_img, lr_lr=lr_lr, syn_lr=0.01, width=128, depth=_DEPTH[key[0]], num_experts=100,
                       expert_train_epochs=50, expert_dtype="float16", init="real", eval_by_epochs=True,
                       eval_models=5, val_fraction=0.0, batch_syn=_BATCH_SYN.get(key, 0))
             for key, (n, m, t_max, zca, lr_img, lr_lr) in _MTT_ROWS.items()}
# CPU sizes: a handful of short experts (the reasons: docs/methods/matching.md, "Presets").
CPU = {
    "digits": dict(syn_steps=40, expert_epochs=2, max_start_epoch=4, outer_lr=30.0, lr_lr=1e-5, syn_lr=0.05,
                   num_experts=5, expert_train_epochs=15, augment="none", expert_augment="none", init="real",
                   expert_batch=32, expert_lr=0.05),
    "images32": dict(syn_steps=20, expert_epochs=2, max_start_epoch=8, outer_lr=100.0, lr_lr=1e-5, syn_lr=0.01,
                     num_experts=5, expert_train_epochs=15, augment="dsa", expert_augment="dsa", init="real"),
}
CPU_STEPS = {"digits": 300, "images32": 200}
# published: the authors' distill.py default --Iteration 5000
PRESETS = Presets(cpu=CPU, cpu_steps=CPU_STEPS, published=PUBLISHED, published_steps=5000,
                  source="the MTT authors' table and issue #1")

register(MethodSpec(
    name="mtt", summary="trajectory matching: N SGD steps on the set match an expert's M epochs",
    settings=MatchingSettings, build=build, presets=PRESETS, evaluation=evaluation))
