"""Full BPTT, T-BPTT and RaT-BPTT: one estimator over the unroll core, and the distillation method.

Per member of the inner-network population: a fresh network θ_0, N prefix steps without gradient,
W differentiated steps, the outer loss's gradient λ on the real batch (in chunks), and one VJP of the
window with λ. Meta-gradients are averaged over the population; the outer optimizer updates the
synthetic set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd import inner, outer, parallel
from jaxdd.models import Model
from jaxdd.presets import Settings
from jaxdd.unroll import run_prefix, run_window


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DistillState:
    """Everything a distillation needs to continue exactly: checkpointed whole."""

    theta: dict  # learnable part of the synthetic set
    consts: dict  # fixed part (hard labels, frozen images)
    opt_state: Any
    step: jax.Array  # int32: outer steps done
    prefixes: jax.Array  # int32 [P]: current RaT-BPTT prefixes (resample="pass")
    key: jax.Array  # uint32 raw key data: the run's base key (step keys are fold_in(key, step))


class Method(NamedTuple):
    """What a method gives the driver: init(key, images, labels) -> state; step(state, batch, key) ->
    (state, metrics); finalize(state) -> dict; members(state, batch, key) -> the population's inputs
    (exposed so tests can check how they are laid out over devices)."""

    init: Callable
    step: Callable
    finalize: Callable
    members: Callable | None = None


def sample_prefix(key, settings: Settings, kind: str):
    """The number of untracked steps N: 0 (full), T − W (fixed) or UniformInt[0, T − W] (random)."""
    span = settings.unroll_steps - settings.window
    if kind == "full":
        return jnp.zeros((), jnp.int32)
    if kind == "fixed":
        return jnp.asarray(span, jnp.int32)
    return jax.random.randint(key, (), 0, span + 1, dtype=jnp.int32)


def inner_config(settings: Settings, ipc: int, num_classes: int) -> inner.InnerConfig:
    return inner.InnerConfig(
        optimizer=settings.inner_optimizer, lr=settings.inner_lr, ipc=ipc, num_classes=num_classes,
        per_class=settings.per_class or None, classes_per_step=settings.classes_per_step or None,
        augment=settings.augment, total_steps=settings.unroll_steps)


def meta_gradient(model: Model, cfg: inner.InnerConfig, theta, consts, params0, model_state0, real_x, real_y,
                  key, prefix, *, window: int, remat="full", chunk=None, grad_map=None, real_augment="none"):
    """One member's meta-gradient d L(θ_{N+W}; real) / d theta, and its metrics.

    The window is differentiated by one VJP whose cotangent λ = ∇_θ L is computed in chunks over the
    real batch (exact; memory of one chunk).
    """
    from jaxdd.augment import get_augment

    k_steps, k_real = jax.random.split(key)
    xs = jax.random.split(k_steps, cfg.total_steps)
    step = inner.make_step(model, cfg, consts, grad_map=grad_map)
    carry = run_prefix(step, inner.init_carry(params0, model_state0, cfg), theta, xs, prefix)

    def window_fn(theta):
        end = run_window(step, carry, theta, xs, start=prefix, window=window, remat=remat)
        return end.params, end

    params_T, vjp_fn, end = jax.vjp(window_fn, theta, has_aux=True)
    real_x = get_augment(real_augment)(real_x, k_real)
    lam, loss, acc = outer.outer_grad(model, params_T, end.model_state, real_x, real_y, chunk=chunk)
    (grads,) = vjp_fn(lam)
    return grads, dict(loss=loss, accuracy=acc, grad_norms=end.grad_norms)


def make(model: Model, settings: Settings, method: str, *, ipc: int, num_classes: int, steps_per_pass: int = 1,
         grad_map=None, mesh=None) -> Method:
    """The BPTT-family method (`method` in bptt / tbptt / rat-bptt) as init / step / finalize.

    steps_per_pass: outer steps per pass over the real data (the prefix is resampled once per pass
    when settings.resample == "pass"). mesh: a device mesh with a 'data' axis; the population (inner
    networks, their real-batch slices, keys, prefixes) is laid out over it (`parallel.constrain_population`).
    """
    kind, window = settings.estimator_window(method)
    cfg = inner_config(settings, ipc, num_classes)
    P = settings.population
    remat = False if settings.remat == "none" else settings.remat
    chunk = settings.outer_chunk or None

    def optimizer(theta):
        return outer.outer_optimizer(theta, lr=settings.outer_lr, lr_labels=settings.label_lr or None,
                                     clip=settings.clip)

    def init(key, images, labels) -> DistillState:
        """State from initial images [N,H,W,C] (class-major) and int labels [N]."""
        theta = {"images": jnp.asarray(images, jnp.float32)}
        consts = {}
        if settings.learn_labels:
            theta["labels"] = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        else:
            consts["labels"] = jnp.asarray(labels, jnp.int32)
        k_prefix = jax.random.fold_in(key, -1 % (2**31))
        prefixes = jax.vmap(lambda k: sample_prefix(k, settings, kind))(jax.random.split(k_prefix, P))
        return DistillState(theta, consts, optimizer(theta).init(theta), jnp.zeros((), jnp.int32), prefixes,
                            jax.random.key_data(key))

    def members(state: DistillState, batch, key):
        """The population's inputs, each with a leading axis P: (params0, model_state0, real_x, real_y,
        keys, prefixes). Member p gets rows [p·B/P, (p+1)·B/P) of the real batch."""
        real_x, real_y = batch
        real_x = real_x.reshape((P, -1) + real_x.shape[1:])
        real_y = real_y.reshape((P, -1) + real_y.shape[1:])
        k_init, k_prefix, k_unroll = jax.random.split(key, 3)
        fresh = jax.vmap(lambda k: sample_prefix(k, settings, kind))(jax.random.split(k_prefix, P))
        if settings.resample == "pass":
            fresh = jnp.where(state.step % steps_per_pass == 0, fresh, state.prefixes)
        params0, model_state0 = jax.vmap(model.init)(jax.random.split(k_init, P))
        inputs = (params0, model_state0, real_x, real_y, jax.random.split(k_unroll, P), fresh)
        return parallel.constrain_population(mesh, inputs, P)

    def step(state: DistillState, batch, key):
        """One outer step: population meta-gradient, outer update. batch = (x [B,...], y [B])."""
        inputs = members(state, batch, key)

        def member(p0, s0, x, y, k, n):
            return meta_gradient(model, cfg, state.theta, state.consts, p0, s0, x, y, k, n, window=window,
                                 remat=remat, chunk=chunk, grad_map=grad_map,
                                 real_augment=settings.real_augment)

        grads, m = jax.vmap(member)(*inputs)
        grads = jax.tree.map(lambda g: g.mean(0), grads)
        return apply_meta_gradient(state, grads, optimizer, inputs[-1], m)

    def finalize(state: DistillState) -> dict:
        out = {"images": state.theta["images"]}
        out["labels"] = state.theta["labels"] if "labels" in state.theta else state.consts["labels"]
        return out

    return Method(init, step, finalize, members)


def apply_meta_gradient(state: DistillState, grads, optimizer, prefixes, member_metrics):
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
        prefix=prefixes.mean(),
    )
    new = DistillState(theta, state.consts, opt_state, state.step + 1, prefixes, state.key)
    return new, metrics
