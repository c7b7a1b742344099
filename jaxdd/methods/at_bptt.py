"""AT-BPTT (Li et al., NeurIPS 2025): RaT-BPTT's pipeline with an automatic truncation schedule and an
optional low-rank Hessian backward (docs/methods/at_bptt.md).

The window's position and length come from jaxdd/autotrunc.py's schedule: stage-aware timestep
probabilities from a running table of inner-gradient norms filled by the steps every outer step runs
anyway (no probe run), and a window W* ∈ [W − d, W + d] from the gradient variation at the chosen
step, run through the masked window (one compilation for every W*). With `--lowrank K`, the window's
backward multiplies by a rank-K Hessian H ≈ U diag(λ) Uᵀ (Lanczos on HVPs) instead of exact
second derivatives with respect to the parameters, the factors taken as constants: by default each
network's own at its window start; `--lowrank-source shared` keeps one set refreshed every
`--lowrank-every` outer steps or on drift of the gradient table (cheaper). How close either comes to
the exact meta-gradient: docs/methods/at_bptt.md.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxdd import autotrunc, hessian, inner, synthetic
from jaxdd.errors import require
from jaxdd.methods import bptt
from jaxdd.methods.base import MethodSpec, register
from jaxdd.settings import setting
from jaxdd.unroll import run_prefix


@dataclasses.dataclass(frozen=True)
class ATSettings(bptt.BPTTSettings):
    """RaT-BPTT's settings plus the automatic schedule and the low-rank backward."""

    delta: int = setting(5, "d: the window W* ranges over [W - d, W + d]")
    tau: float = setting(1.0, "temperature of the softmax over z-scored gradient norms")
    stage_mode: str = setting("switch", "switch (early/middle/late from accuracy gains) | smooth (annealed) | off")
    window_mode: str = setting("adaptive", "adaptive (W* from the gradient variation) | fixed (W)")
    stats_ema: float = setting(0.9, "decay of the running table of inner-gradient norms")
    lowrank: int = setting(0, "rank K of the Hessian in the window's backward (0: exact backward)")
    lowrank_source: str = setting("window", "low-rank factors from each network's own window start, every step "
                                            "(window), or one shared set refreshed every K steps / on drift (shared)")
    lowrank_every: int = setting(20, "outer steps between refreshes of the low-rank factors")
    lowrank_drift: float = setting(0.1, "refresh the factors when the gradient table moves by this fraction")

    def validate(self, ipc: int) -> "ATSettings":
        super().validate(ipc)
        require(self.window - self.delta >= 1 and self.window + self.delta <= self.unroll_steps,
                f"--window {self.window} ± --delta {self.delta} must stay within [1, --unroll-steps "
                f"{self.unroll_steps}]")
        require(self.stage_mode in autotrunc.STAGE_MODES,
                f"unknown --stage-mode '{self.stage_mode}': use {', '.join(autotrunc.STAGE_MODES)}")
        require(self.window_mode in autotrunc.WINDOW_MODES,
                f"unknown --window-mode '{self.window_mode}': use {', '.join(autotrunc.WINDOW_MODES)}")
        require(self.tau > 0 and 0 <= self.stats_ema < 1, "--tau must be positive and --stats-ema in [0, 1)")
        require(self.lowrank >= 0 and self.lowrank_every >= 1, "--lowrank must be >= 0 and --lowrank-every >= 1")
        require(self.lowrank_source in ("window", "shared"),
                f"unknown --lowrank-source '{self.lowrank_source}': use window or shared")
        return self


def own_factors(model, rank: int):
    """grad_map_at for `bptt.meta_gradient`: the window's gradient map with a rank-`rank` Hessian of the
    inner loss at the network's own window start (Lanczos on HVPs from the member's key, so members draw
    different start vectors and a resumed run the same ones), the factors taken as constants."""
    def at_window_start(carry, theta, consts, key):
        images, labels, _ = synthetic.assemble(theta, consts)
        loss = hessian.inner_loss(model, carry.model_state, jax.lax.stop_gradient(images), labels)
        factors = hessian.low_rank_hessian(loss, carry.params, rank, key)
        return hessian.low_rank_grad_map(model, factors)

    return at_window_start


def build(ctx):
    s, model = ctx.settings, ctx.model
    schedule = autotrunc.at_schedule(
        s.unroll_steps, s.window, s.delta, tau=s.tau, steps_per_pass=bptt.steps_per_pass(s, ctx.dataset), stage_mode=s.stage_mode,
        window_mode=s.window_mode, ema=s.stats_ema, anneal_steps=max(1, ctx.steps) if s.stage_mode == "smooth" else None)
    if not s.lowrank:
        return bptt.build(ctx, schedule, schedule_metrics=autotrunc.schedule_metrics)

    params_like = jax.eval_shape(model.init, jax.random.key(0))[0]
    dim = sum(math.prod(a.shape) for a in jax.tree.leaves(params_like))
    require(s.lowrank <= dim, f"--lowrank {s.lowrank} is larger than the network's {dim} parameters")

    if s.lowrank_source == "window":
        return bptt.build(ctx, schedule, grad_map_at=own_factors(model, s.lowrank),
                          schedule_metrics=autotrunc.schedule_metrics)

    def zero_factors():
        return (jnp.zeros((s.lowrank,), jnp.float32),
                jax.tree.map(lambda a: jnp.zeros((s.lowrank,) + a.shape, a.dtype), params_like))

    def extra_init():
        return {"factors": zero_factors(), "table": autotrunc.init_stats(s.unroll_steps),
                "eigvals": jnp.zeros((s.lowrank,), jnp.float32)}

    def factors_at(state, key):
        """Rank-K Hessian of the inner loss on the whole set at a fresh network trained for the mean
        window start of the last step (a proxy for the window starts of the coming steps)."""
        k_init, k_steps, k_lz = jax.random.split(key, 3)
        images, labels, _ = synthetic.assemble(state.theta, state.consts)
        cfg = bptt.inner_config(s, synthetic.num_rows(state.theta, state.consts) // ctx.num_classes, ctx.num_classes)
        params0, mstate0 = model.init(k_init)
        step = inner.make_step(model, cfg, state.consts)
        carry = run_prefix(step, inner.init_carry(params0, mstate0, cfg), state.theta,
                           jax.random.split(k_steps, s.unroll_steps),
                           jnp.round(state.method_state["prefix"].mean()).astype(jnp.int32))
        loss = hessian.inner_loss(model, carry.model_state, jax.lax.stop_gradient(images), labels)
        return hessian.low_rank_hessian(loss, carry.params, s.lowrank, k_lz)

    base = bptt.build(ctx, schedule, grad_map_fn=lambda st: hessian.low_rank_grad_map(
        model, st.method_state["extra"]["factors"]), extra_init=extra_init,
        schedule_metrics=autotrunc.schedule_metrics)

    def step(state, batch, key):
        k_ref, k_step = jax.random.split(key)
        extra = state.method_state["extra"]
        table = state.method_state["schedule"]["table"]
        due = autotrunc.should_refresh(extra["table"], table, state.step, s.lowrank_drift, s.lowrank_every)
        factors = jax.lax.cond(due, lambda: factors_at(state, k_ref), lambda: extra["factors"])
        extra = {"factors": factors, "eigvals": factors[0],
                 "table": jax.tree.map(lambda new, old: jnp.where(due, new, old), table, extra["table"])}
        state = dataclasses.replace(state, method_state=dict(state.method_state, extra=extra))
        new, metrics = base.step(state, batch, k_step)
        metrics.update(lowrank_refreshed=due.astype(jnp.int32), lowrank_top_eigval=factors[0][0])
        return new, metrics

    return base._replace(step=step)


# The authors' (W, T, d) per data set; the rest as RaT-BPTT's published presets. CPU presets: d = 3.
AUTHORS = {"cifar10": (40, 200, 10), "cifar100": (100, 300, 20), "tiny_imagenet": (100, 300, 30)}
PUBLISHED = {key: dict(values, window=AUTHORS[key[0]][0], unroll_steps=AUTHORS[key[0]][1], delta=AUTHORS[key[0]][2],
                       schedule="")
             for key, values in bptt.preset_table().published.items()}
PRESETS = bptt.preset_table(published=PUBLISHED, source="RaT-BPTT's scripts", cpu_extra=dict(delta=3))

register(MethodSpec(
    name="at-bptt", summary="AT-BPTT: window placed and sized from gradient statistics; optional low-rank backward",
    settings=ATSettings, build=build, presets=PRESETS, evaluation=bptt.evaluation))
