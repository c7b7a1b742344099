"""Full BPTT, T-BPTT and RaT-BPTT: one estimator over the unroll core, registered as three methods.

Per member of the inner-network population: a fresh network θ_0, N prefix steps without gradient, a
window of W differentiated steps (placed by a truncation schedule, jaxdd/truncation.py), the outer
loss's gradient λ on the real batch (in chunks), and one VJP of the window with λ. Meta-gradients
are averaged over the population; the outer optimizer updates the synthetic set. AT-BPTT and Boost-DD
build on `build` with their own schedule or set. See docs/methods/bptt.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxdd import inner, outer, parallel, synthetic, truncation
from jaxdd.augment import get_augment, strategy_ops
from jaxdd.errors import require
from jaxdd.methods.base import Curriculum, Method, MethodSpec, Presets, new_state, register
from jaxdd.models import Model
from jaxdd.optim import INNER_ADAM_KINDS, with_switch
from jaxdd.settings import CommonSettings, setting
from jaxdd.unroll import REMAT_NAMES, run_prefix, window_vjp


@dataclasses.dataclass(frozen=True)
class BPTTSettings(CommonSettings):
    """Settings of the BPTT family (bptt, tbptt, rat-bptt) on top of the common ones."""

    unroll_steps: int = setting(40, "T: inner steps per meta-step")
    window: int = setting(10, "W: differentiated steps (bptt uses W = T)")
    schedule: str = setting("", "window placement: full | fixed | random | moving (a curriculum: prefix 0, then W, "
                                "2W, ... up to T-W, moved at each --stop plateau) ('' = the method's own)")
    resample: str = setting("step", "random prefix N ~ U[0, T-W] redrawn every outer \"step\" or once per \"pass\" "
                                    "over the real data (the authors' choice)")
    remat: str = setting("full", "rematerialisation of the window step: " + " | ".join(REMAT_NAMES))
    population: int = setting(1, "independent inner networks per meta-step, meta-gradients averaged")
    inner_optimizer: str = setting("adam", "inner optimizer: adam | sgd | momentum")
    inner_adam: str = setting("torch", "inner Adam: torch (torch.optim.Adam's update, safe at zero second "
                                       "moments) | higher (eps before bias correction) | optax (eps_root 1e-8) | "
                                       "authors (torch over the prefix, higher over the window: RaT-BPTT's code)")
    inner_lr: float = setting(1e-3, "inner learning rate (also the evaluation networks' lr)")
    per_class: int = setting(0, "images per class in an inner batch (0: all IPC)")
    classes_per_step: int = setting(0, "classes in an inner batch (0: all)")
    augment: str = setting("flip_rotate", "augmentation of the synthetic inner batches")
    real_batch: int = setting(256, "real images per meta-step (split over the population)")
    outer_chunk: int = setting(0, "real images per chunk of the outer gradient (0: whole batch)")
    real_augment: str = setting("flip_rotate", "augmentation of the real batch")
    clip: bool = setting(True, "clip the image meta-gradient at 2 x its EMA norm")

    def validate(self, ipc: int) -> "BPTTSettings":
        super().validate(ipc)
        truncation.check(self.unroll_steps, self.window)
        require(self.schedule in ("",) + tuple(truncation.SCHEDULES),
                f"unknown --schedule '{self.schedule}': use {', '.join(truncation.SCHEDULES)}")
        require(self.schedule != "moving" or self.stop == "plateau",
                "--schedule moving moves its window at validation plateaus: add --stop plateau (with --eval-every "
                "and --patience)")
        require(self.resample in ("step", "pass"), f"unknown --resample '{self.resample}': use step or pass")
        require(self.remat in REMAT_NAMES, f"unknown --remat '{self.remat}': use {', '.join(REMAT_NAMES)}")
        require(self.population >= 1, "--population must be at least 1")
        require(self.real_batch >= 1, "--real-batch must be at least 1")
        require(self.real_batch % self.population == 0,
                f"--real-batch {self.real_batch} must be a multiple of --population {self.population}")
        per_member = self.real_batch // self.population
        require(self.outer_chunk == 0 or per_member % self.outer_chunk == 0,
                f"--outer-chunk {self.outer_chunk} must divide the real batch per network ({per_member})")
        require(self.per_class <= ipc, f"--per-class {self.per_class} is larger than --ipc {ipc}")
        require(self.inner_lr > 0, "--inner-lr must be positive")
        require(self.inner_adam in INNER_ADAM_KINDS,
                f"unknown --inner-adam '{self.inner_adam}': use {', '.join(INNER_ADAM_KINDS)}")
        require(self.inner_optimizer in inner.INNER_OPTIMIZERS,
                f"unknown --inner-optimizer '{self.inner_optimizer}': use {', '.join(inner.INNER_OPTIMIZERS)}")
        for flag, name in (("--augment", self.augment), ("--real-augment", self.real_augment)):
            try:
                strategy_ops(name)
            except ValueError as err:
                require(False, f"{flag}: {err}")
        return self


def inner_config(settings: BPTTSettings, ipc: int, num_classes: int) -> inner.InnerConfig:
    """The inner loop's static settings for a set of `ipc` images per class (per_class capped at ipc)."""
    return inner.InnerConfig(
        optimizer=settings.inner_optimizer, adam=settings.inner_adam, lr=settings.inner_lr, ipc=ipc, num_classes=num_classes,
        per_class=min(settings.per_class, ipc) or None, classes_per_step=settings.classes_per_step or None,
        augment=settings.augment, total_steps=settings.unroll_steps)


def meta_gradient(model: Model, cfg: inner.InnerConfig, theta, consts, params0, model_state0, real_x, real_y,
                  key, prefix, *, window: int, length=None, remat="full", chunk=None, grad_map=None,
                  real_augment="none", grad_map_at=None):
    """One member's meta-gradient d L(θ_{N+W}; real) / d theta, and its metrics.

    The window (static `window`, or the masked window of traced `length` <= window) is differentiated
    by one VJP whose cotangent λ = ∇_θ L is computed in chunks over the real batch (exact; memory of
    one chunk). grad_map_at(carry, theta, consts, key) -> a gradient map for the window, built from the
    state at the window start (AT-BPTT's low-rank factors there) with a key of this member's own
    (`fold_in(key, 1)`, beside the split that draws the steps); it replaces `grad_map` in the window.
    """
    k_steps, k_real = jax.random.split(key)
    xs = jax.random.split(k_steps, cfg.total_steps)
    step = inner.make_step(model, cfg, consts, grad_map=grad_map)
    carry = inner.init_carry(params0, model_state0, cfg)
    carry = dataclasses.replace(carry, opt_state=with_switch(carry.opt_state, prefix))  # --inner-adam authors
    carry = run_prefix(step, carry, theta, xs, prefix)
    if grad_map_at is not None:
        grad_map = grad_map_at(carry, theta, consts, jax.random.fold_in(key, 1))
        step = inner.make_step(model, cfg, consts, grad_map=grad_map)
    real_x = get_augment(real_augment)(real_x, k_real)

    def cotangent(end):
        lam, loss, acc = outer.outer_grad(model, end.params, end.model_state, real_x, real_y, chunk=chunk)
        return lam, dict(loss=loss, accuracy=acc)

    grads, metrics, end = window_vjp(step, carry, theta, xs, start=prefix, window=window, remat=remat,
                                     length=length, cotangent=cotangent)
    return grads, dict(metrics, grad_norms=end.grad_norms)


def sample_real(x, y, key, step, *, batch: int):
    """The real batch of outer step `step`: a slice of a per-pass permutation of the training set.

    A pass is ``len(x) // batch`` steps; each pass draws a fresh permutation from fold_in(key, pass).
    """
    n = x.shape[0]
    per_pass = max(1, n // batch)
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_pass), n)
    idx = jax.lax.dynamic_slice_in_dim(perm, (step % per_pass) * batch, batch)
    return x[idx], y[idx]


def steps_per_pass(settings: BPTTSettings, dataset) -> int:
    """Outer steps per pass over the real training data (one real batch per step)."""
    return max(1, len(dataset.x_train) // (settings.real_batch or len(dataset.x_train)))


def real_batches(ctx, batch: int):
    """batch(n, key) -> (x, y): the real batch of outer step n, on the mesh (split along 'data')."""
    x_train, y_train = parallel.put_dataset(ctx.mesh, ctx.dataset.x_train, ctx.dataset.y_train)
    split = None if ctx.mesh is None else (parallel.batch_sharding(ctx.mesh),) * 2
    sampler = jax.jit(sample_real, static_argnames="batch", out_shardings=split)
    return lambda n, key: sampler(x_train, y_train, key, n, batch=batch)


def outer_optimizer(settings: BPTTSettings, theta, block_rates=None) -> optax.GradientTransformation:
    """The family's outer optimizer for a set `theta`; block_rates(theta) -> {block: rate} (Boost-DD)."""
    return outer.outer_optimizer(theta, lr=settings.outer_lr, lr_labels=settings.labels_lr(), clip=settings.clip,
                                 block_rates=block_rates(theta) if block_rates else None)


def schedule_for(settings: BPTTSettings, kind: str) -> truncation.Schedule:
    kind = settings.schedule or kind
    if kind == "full":
        return truncation.full(settings.unroll_steps)
    return truncation.SCHEDULES[kind](settings.unroll_steps, settings.window)


def build(ctx, schedule: truncation.Schedule, *, grad_map_fn=None, grad_map_at=None, extra_init=None,
          schedule_metrics=None, block_rates=None) -> Method:
    """The BPTT-family method over `schedule`: init / step / batch / finalize / members.

    grad_map_fn(state) -> a replacement inner-gradient map or None, called inside the traced step
    (AT-BPTT's low-rank backward, whose factors live in the state); grad_map_at(carry, theta, consts, key):
    one built per member at its window start (see meta_gradient); extra_init() -> a pytree kept in
    method_state["extra"] for a method built on this one; schedule_metrics(state) -> dict adds the
    schedule's own numbers to every metrics row; block_rates(theta) -> {block: rate} sets per-block
    outer learning rates (Boost-DD).
    """
    settings, model, mesh = ctx.settings, ctx.model, ctx.mesh
    require(settings.classes_per_step <= ctx.num_classes,
            f"--classes-per-step {settings.classes_per_step} is larger than the number of classes ({ctx.num_classes})")
    require(settings.real_batch <= len(ctx.dataset.x_train),
            f"--real-batch {settings.real_batch} is larger than the training set ({len(ctx.dataset.x_train)} images)")
    parallel.check_divisible(mesh, real_batch=settings.real_batch, population=settings.population)
    P = settings.population
    remat = False if settings.remat == "none" else settings.remat
    chunk = settings.outer_chunk or None
    per_pass = steps_per_pass(settings, ctx.dataset)

    def optimizer(theta):
        return outer_optimizer(settings, theta, block_rates)

    def init(key, theta, consts):
        k_prefix = jax.random.fold_in(key, -1 % (2**31))
        prefix, length = truncation.sample_population(schedule, schedule.init(), jax.random.split(k_prefix, P))
        ms = {"schedule": schedule.init(), "prefix": prefix, "length": length}
        if extra_init is not None:
            ms["extra"] = extra_init()
        return new_state(theta, consts, optimizer, key, ms)

    def members(state, batch, key):
        """The population's inputs, each with a leading axis P (a dict). Member p gets rows
        [p·B/P, (p+1)·B/P) of the real batch."""
        real_x, real_y = batch
        k_init, k_prefix, k_unroll = jax.random.split(key, 3)
        ms = state.method_state
        held = (ms["prefix"], ms["length"]) if settings.resample == "pass" else None
        prefix, length = truncation.sample_population(schedule, ms["schedule"], jax.random.split(k_prefix, P),
                                                      held=held, fresh_now=state.step % per_pass == 0)
        params0, model_state0 = jax.vmap(model.init)(jax.random.split(k_init, P))
        inputs = dict(params0=params0, model_state0=model_state0,
                      real_x=real_x.reshape((P, -1) + real_x.shape[1:]),
                      real_y=real_y.reshape((P, -1) + real_y.shape[1:]),
                      keys=jax.random.split(k_unroll, P), prefix=prefix, length=length)
        return parallel.constrain_population(mesh, inputs, P, rows=("real_x", "real_y"))

    def step(state, batch, key):
        """One outer step: population meta-gradient, outer update, schedule update."""
        m_in = members(state, batch, key)
        cfg = inner_config(settings, synthetic.num_rows(state.theta, state.consts) // ctx.num_classes,
                           ctx.num_classes)  # static: a set that grows (Boost-DD) retraces
        grad_map = grad_map_fn(state) if grad_map_fn is not None else None

        def member(p0, s0, x, y, k, n, w):
            return meta_gradient(model, cfg, state.theta, state.consts, p0, s0, x, y, k, n,
                                 window=schedule.max_window, length=w if schedule.masked else None, remat=remat,
                                 chunk=chunk, grad_map=grad_map, real_augment=settings.real_augment,
                                 grad_map_at=grad_map_at)

        grads, m = jax.vmap(member)(m_in["params0"], m_in["model_state0"], m_in["real_x"], m_in["real_y"],
                                    m_in["keys"], m_in["prefix"], m_in["length"])
        grads = jax.tree.map(lambda g: g.mean(0), grads)
        stats = dict(grad_norms=m["grad_norms"], steps_run=m_in["prefix"] + m_in["length"],
                     accuracy=m["accuracy"].mean(), step=state.step)
        sched = schedule.update(state.method_state["schedule"], stats)
        method_state = dict(state.method_state, schedule=sched, prefix=m_in["prefix"], length=m_in["length"])
        new, metrics = apply_meta_gradient(state, grads, optimizer, m, method_state)
        metrics.update(prefix=m_in["prefix"].mean(), window=m_in["length"].mean())
        if schedule_metrics is not None:
            metrics.update(schedule_metrics(sched))
        return new, metrics

    def at(state, position):
        """The moving window's curriculum at `position` (set between two steps by the plateau rule)."""
        ms = state.method_state
        sched = dict(ms["schedule"], position=jnp.asarray(position, jnp.int32))
        return dataclasses.replace(state, method_state=dict(ms, schedule=sched))

    curriculum = Curriculum(schedule.positions, at) if schedule.positions > 1 else None
    return Method(init, step, real_batches(ctx, settings.real_batch), "data", members=members, curriculum=curriculum)


def apply_meta_gradient(state, grads, optimizer, member_metrics, method_state):
    """Outer update with non-finite meta-gradients skipped (and counted) by optax.apply_if_finite."""
    opt = optimizer(state.theta)
    updates, opt_state = opt.update(grads, state.opt_state, state.theta)
    theta = outer.project(optax.apply_updates(state.theta, updates))
    metrics = dict(
        loss=member_metrics["loss"].mean(),
        accuracy=member_metrics["accuracy"].mean(),
        grad_norm=optax.tree.norm(grads),
        skipped=1 - opt_state.last_finite.astype(jnp.int32),
        skipped_total=opt_state.total_notfinite,
    )
    new = dataclasses.replace(state, theta=theta, opt_state=opt_state, step=state.step + 1,
                              method_state=method_state)
    return new, metrics


# ---------------------------------------------------------------------------------------------------
# presets (the reasons and measurements behind each value: docs/methods/bptt.md, "Presets") and registration

# Published RaT-BPTT settings (Feng et al. 2024): the authors start from Gaussian noise scaled to unit L2
# norm per image on ZCA'd data, redraw the window once per pass over the real data, and use every training
# image for the outer loss and the ZCA fit. Tiny-ImageNet: ConvNet-4 on 64x64, per-channel standardization.
# The end of a run (docs/methods/bptt.md, "When a run ends"): the authors' plateau rule on the validation split
# (10 % of the training images held out), evaluated every `--test_freq` passes of their script, patience 60
# passes, both in meta-steps of the authors' passes (ceil(train images / real batch) steps each).
AUTHORS_PATIENCE_PASSES = 60


def plateau(dataset_key: str, real_batch: int, test_freq: int) -> dict:
    """The plateau rule's settings of a published row: the authors' interval and patience in meta-steps."""
    per_pass = -(-TRAIN_IMAGES[dataset_key] // real_batch)
    return dict(stop="plateau", val_fraction=0.1, eval_every=test_freq * per_pass,
                patience=AUTHORS_PATIENCE_PASSES * per_pass)


TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "tiny_imagenet": 100_000}
_CIFAR = dict(width=128, depth=3, normalize="zca", inner_lr=1e-3, outer_lr=1e-3, real_batch=5000, outer_chunk=500,
              augment="flip_rotate", real_augment="flip_rotate", init="noise", noise_scale="unit", resample="pass",
              eval_steps=1000, eval_models=8, inner_adam="authors", **plateau("cifar10", 5000, 25))
_TINY = dict(_CIFAR, depth=4, normalize="standardize", per_class=1, classes_per_step=50, real_batch=1000,
             outer_chunk=250, outer_lr=3e-4, learn_labels=True, **plateau("tiny_imagenet", 1000, 10))
PUBLISHED = {
    ("cifar10", 10): dict(_CIFAR, window=60, unroll_steps=200, per_class=10),
    ("cifar100", 1): dict(_CIFAR, window=90, unroll_steps=130, schedule="fixed", per_class=1, outer_lr=3e-4,
                          learn_labels=True, **plateau("cifar100", 5000, 50)),
    ("cifar100", 10): dict(_CIFAR, window=100, unroll_steps=300, per_class=1, learn_labels=True),
    ("tiny_imagenet", 10): dict(_TINY, window=100, unroll_steps=300),
}
# The authors' fixed-window scripts (their `--cctype 0`), taken by `--method tbptt --published`.
PUBLISHED_FIXED = {
    ("cifar100", 1): PUBLISHED[("cifar100", 1)],
    ("tiny_imagenet", 10): dict(_TINY, window=90, unroll_steps=270, real_batch=2000, outer_chunk=500,
                                **plateau("tiny_imagenet", 2000, 10)),
}
# Not in the authors' scripts: values from the paper's ranges (W 60-100, T 200-300, 10 per class).
UNPUBLISHED = {
    ("cifar10", 1): dict(_CIFAR, window=60, unroll_steps=200),
    ("cifar10", 50): dict(_CIFAR, window=60, unroll_steps=200, per_class=10),
    ("cifar100", 50): dict(_CIFAR, window=100, unroll_steps=300, per_class=10, learn_labels=True),
    ("tiny_imagenet", 1): dict(_TINY, window=100, unroll_steps=300),
    ("tiny_imagenet", 50): dict(_TINY, window=100, unroll_steps=300, per_class=10),
}
# The authors' budget: `--epoch 60000` passes over the training set, ceil(train images / real batch) steps each.
AUTHORS_PASSES = 60_000
CPU = {
    "digits": dict(unroll_steps=100, window=20, inner_lr=3e-3, real_batch=256, outer_lr=1e-2, init="means",
                   augment="none", real_augment="none"),
    "images32": dict(unroll_steps=40, window=10, real_batch=256, outer_lr=1e-2, init="means", augment="none",
                     real_augment="none"),
}
CPU_AT_IPC = {("digits", 1): dict(depth=1)}
CPU_STEPS = {"digits": 300, "images32": 200}


def authors_steps(dataset_key: str, values: dict) -> int:
    """Meta-steps of the authors' budget for a published row: AUTHORS_PASSES passes over the training set."""
    return AUTHORS_PASSES * -(-TRAIN_IMAGES[dataset_key] // values["real_batch"])


def published_budget(rows: dict) -> str:
    """The --help sentence on how a published run ends, with each row's interval and patience."""
    groups = {}
    for (key, ipc), v in sorted(rows.items()):
        if v.get("stop") == "plateau":
            groups.setdefault((v["eval_every"], v["patience"]), []).append(f"{key} IPC {ipc}")
    rule = "; ".join(f"every {e:,}, patience {p:,} on {', '.join(names)}" for (e, p), names in groups.items())
    return ("A published run ends on a validation plateau (--stop plateau, on a tenth of the training images held out): "
            "evaluated every --eval-every meta-steps, it stops once --patience meta-steps pass without a higher "
            f"validation accuracy, and the best evaluated set is the result ({rule}: the authors' --test_freq and "
            f"{AUTHORS_PATIENCE_PASSES} passes in meta-steps). --steps (default the authors' {AUTHORS_PASSES:,} "
            "passes, 600,000 meta-steps on CIFAR) is only an upper bound. Expected steps: not known; the authors' "
            "scripts never stop by their rule, and the AT-BPTT paper's 21.6 h for CIFAR-10 IPC 10 suggests about "
            "50,000 (docs/methods/bptt.md, 'When a run ends')")


def preset_table(kind: str = "random", *, published: dict | None = None, source: str = "the authors' scripts",
                 steps_factor: int = 1, cpu_extra: dict | None = None) -> Presets:
    """The family's presets for a schedule kind (the authors' fixed-window scripts for 'fixed');
    ``published`` replaces the published rows (AT-BPTT's), ``steps_factor`` scales the CPU budgets (Boost-DD),
    ``cpu_extra`` adds values to the CPU presets (a method's own settings)."""
    rows = published or {**UNPUBLISHED, **PUBLISHED, **(PUBLISHED_FIXED if kind == "fixed" else {})}
    cpu = {name: {**values, **(cpu_extra or {})} for name, values in CPU.items()}
    return Presets(cpu=cpu, cpu_at_ipc=CPU_AT_IPC, cpu_steps={k: steps_factor * v for k, v in CPU_STEPS.items()},
                   published=rows, not_authors=frozenset(UNPUBLISHED), source=source,
                   published_steps=authors_steps,
                   budget=published_budget(rows))


def full_window(settings: BPTTSettings, kind: str) -> BPTTSettings:
    """W = T wherever the window schedule is full (``--schedule full``, or the method's own kind): the one
    place this rule lives, so settings.json records the window the run uses."""
    full = (settings.schedule or kind) == "full"
    return settings.replace(window=settings.unroll_steps) if full else settings


def evaluation(settings: BPTTSettings) -> dict:
    """The set is scored by networks trained as in distillation: same network, inner Adam lr, augmentation."""
    return dict(protocol="quick", model=settings.model, width=settings.width, depth=settings.depth or None,
                norm=settings.norm, steps=settings.eval_steps, num_models=settings.eval_models,
                lr=settings.inner_lr, augment=settings.augment)


def _family(name: str, kind: str, summary: str) -> MethodSpec:
    return register(MethodSpec(
        name=name, summary=summary, settings=BPTTSettings,
        build=lambda ctx: build(ctx, schedule_for(ctx.settings, kind)), evaluation=evaluation,
        presets=preset_table(kind), resolve=lambda s: full_window(s, kind)))


_family("bptt", "full", "full BPTT: all T inner steps differentiated (W = T)")
_family("tbptt", "fixed", "truncated BPTT: the last W of T inner steps differentiated")
_family("rat-bptt", "random", "RaT-BPTT: a window of W steps at a random position N ~ U[0, T-W]")
