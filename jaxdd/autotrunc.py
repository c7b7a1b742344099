"""AT-BPTT's automatic truncation: gradient statistics, stage-aware window position, adaptive length.

Everything here is a pure function of arrays, jittable with traced keys and statistics; the schedule
state is a pytree of arrays (it lives in the jitted outer step and in checkpoints). The algorithm and
its choices are described in docs/methods/at_bptt.md.

    at_schedule(total, window, delta, ...) -> Schedule(init, sample, update, max_window, masked)
    state = {"table": {"g": f32[T], "count": i32[T]},      EMA of g_t and how often step t was seen
             "stage": i32 (0 early, 1 middle, 2 late),
             "stall_em": i32, "stall_ml": i32,              consecutive passes with a small gain
             "acc_sum": f32, "acc_n": i32,                  accuracy summed over the current pass
             "pass_acc": f32,                               A_e of the last finished pass, in points
             "passes": i32, "updates": i32,                 passes finished, update() calls
             "beta": f32}                                   smooth stage coefficient (1 unless smooth)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdd.errors import require
from jaxdd.truncation import Schedule

STAGES = ("early", "middle", "late")
STAGE_MODES = ("switch", "smooth", "off")
WINDOW_MODES = ("adaptive", "fixed")


# --- gradient statistics ------------------------------------------------------------------------


def init_stats(total: int) -> dict:
    """An empty statistics table for `total` inner steps: g = 0, count = 0 everywhere."""
    return {"g": jnp.zeros((total,), jnp.float32), "count": jnp.zeros((total,), jnp.int32)}


def update_stats(table: dict, grad_norms, steps_run, decay: float) -> dict:
    """EMA of g_t over the steps that ran: grad_norms [P, T], steps_run [P] (steps t < steps_run ran).

    Per step t, the mean over the members that ran it enters ``g ← decay·g + (1 − decay)·mean``; an
    entry seen for the first time takes the mean itself (no bias towards the initial 0); entries no
    member ran are left unchanged. ``count`` counts the updates that saw each entry.
    """
    grad_norms = jnp.atleast_2d(jnp.asarray(grad_norms, jnp.float32))
    steps_run = jnp.atleast_1d(jnp.asarray(steps_run, jnp.int32))
    ran = jnp.arange(grad_norms.shape[1])[None, :] < steps_run[:, None]
    n = ran.sum(0)
    mean = jnp.where(ran, grad_norms, 0.0).sum(0) / jnp.maximum(n, 1)
    seen = n > 0
    g = jnp.where(table["count"] > 0, decay * table["g"] + (1.0 - decay) * mean, mean)
    return {"g": jnp.where(seen, g, table["g"]), "count": table["count"] + seen.astype(jnp.int32)}


def variation(g) -> jax.Array:
    """v_t = |g_t − g_{t−1}|, v_0 = 0."""
    return jnp.concatenate([jnp.zeros_like(g[:1]), jnp.abs(jnp.diff(g))])


def table_stats(table: dict) -> tuple[jax.Array, jax.Array]:
    """(g [T], v [T]) from a table; entries never seen are interpolated linearly between the nearest
    seen ones (held constant beyond the first / last seen entry; all zeros if none was seen)."""
    g, seen = table["g"], table["count"] > 0
    t = jnp.arange(g.shape[0])
    prev = jax.lax.cummax(jnp.where(seen, t, -1))
    nxt = jax.lax.cummin(jnp.where(seen, t, g.shape[0]), reverse=True)
    prev_c = jnp.clip(prev, 0, g.shape[0] - 1)
    nxt_c = jnp.clip(nxt, 0, g.shape[0] - 1)
    w = jnp.where((prev >= 0) & (nxt < g.shape[0]), (t - prev) / jnp.maximum(nxt - prev, 1), 0.0)
    inner = (1 - w) * g[prev_c] + w * g[nxt_c]
    filled = jnp.where(prev >= 0, jnp.where(nxt < g.shape[0], inner, g[prev_c]), g[nxt_c])
    filled = jnp.where(seen.any(), jnp.where(seen, g, filled), 0.0)
    return filled, variation(filled)


def timestep_logits(g, tau: float, beta=1.0, zscore: bool = True) -> jax.Array:
    """Logits β·z(g)/τ of P(t) (z = z-scored g; zscore=False uses raw g, the authors' form)."""
    if zscore:
        g = (g - g.mean()) / (g.std() + 1e-12)
    return beta * g / tau


def adaptive_window(v, t, window: int, delta: int) -> jax.Array:
    """W* = ⌊W − d + 2d·η⌋ with η = #{t': v_t' < v_t} / T (the authors' rank), in [W − d, W + d]."""
    rank = (v < v[t]).sum().astype(jnp.int32)
    return jnp.int32(window - delta) + (2 * delta * rank) // v.shape[0]  # integer floor: no round-off


class Config(NamedTuple):
    """Static settings of an AT schedule (see `at_schedule`)."""

    total: int
    window: int
    delta: int
    tau: float
    steps_per_pass: int
    stage_mode: str
    window_mode: str
    ema: float
    patience_em: int
    patience_ml: int
    gain_em: float
    gain_ml: float
    anneal_steps: int
    zscore: bool


def select(key, g, v, stage, beta, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """(prefix N, length W*) for one member from statistics (g, v), the stage and β (traced).

    switch mode: early: t* ~ softmax(z(g)/τ), N = min(t*, T − W*) with W* adaptive (from v_t*);
    middle: W* = W + d, N ~ U[0, T − W*]; late: W* = W − d, s ~ softmax(z(g)/τ),
    N = max(0, min(T − s − W*, T − W*)). smooth mode: t* ~ softmax(β·z(g)/τ), W* adaptive,
    N = min(t*, T − W*). off: t* ~ U[0, T − W_min], W* adaptive, N = min(t*, T − W*) (with a fixed
    window: RaT-BPTT). window_mode "fixed": W* = W everywhere.
    """
    T, W, d = cfg.total, cfg.window, cfg.delta
    adaptive = cfg.window_mode == "adaptive"
    k_t, k_mid = jax.random.split(key)

    def fit(t):  # window from t* (adaptive or W), prefix clipped so that the window fits
        w = adaptive_window(v, t, W, d) if adaptive else jnp.int32(W)
        return jnp.minimum(t, T - w).astype(jnp.int32), w

    if cfg.stage_mode == "off":
        return fit(jax.random.randint(k_t, (), 0, T - (W - d if adaptive else W) + 1))
    if cfg.stage_mode == "smooth":
        return fit(jax.random.categorical(k_t, timestep_logits(g, cfg.tau, beta, cfg.zscore)).astype(jnp.int32))
    t = jax.random.categorical(k_t, timestep_logits(g, cfg.tau, 1.0, cfg.zscore)).astype(jnp.int32)
    n_early, w_early = fit(t)
    w_mid = jnp.int32(W + d if adaptive else W)
    n_mid = jax.random.randint(k_mid, (), 0, T - w_mid + 1, dtype=jnp.int32)
    w_late = jnp.int32(W - d if adaptive else W)
    n_late = jnp.maximum(0, jnp.minimum(T - t - w_late, T - w_late)).astype(jnp.int32)
    prefix = jnp.select([stage == 0, stage == 1], [n_early, n_mid], n_late)
    length = jnp.select([stage == 0, stage == 1], [w_early, w_mid], w_late)
    return prefix, length


# --- stages -------------------------------------------------------------------------------------


def default_patience(total: int) -> tuple[int, int]:
    """The authors' patience in passes: (⌈0.15·T⌉, ⌈0.125·T⌉) for early→middle and middle→late."""
    return max(1, math.ceil(0.15 * total - 1e-9)), max(1, math.ceil(0.125 * total - 1e-9))


def update_stage(state: dict, accuracy, step, cfg: Config) -> dict:
    """Accumulate the accuracy; at the end of a pass (step + 1 a multiple of steps_per_pass) compare
    A_e (mean accuracy of the pass, in points) with the previous pass's and advance the stage.

    As the authors' code: the previous A starts at 0; early→middle after `patience_em` consecutive
    passes with gain < gain_em; in the pass that switches, the middle stage's own check runs too.
    """
    acc_sum = state["acc_sum"] + jnp.asarray(accuracy, jnp.float32)
    acc_n = state["acc_n"] + 1
    a = 100.0 * acc_sum / acc_n
    gain = a - state["pass_acc"]
    stage = state["stage"]
    stall_em = jnp.where(stage == 0, jnp.where(gain < cfg.gain_em, state["stall_em"] + 1, 0), state["stall_em"])
    stage = jnp.where((stage == 0) & (stall_em >= cfg.patience_em), 1, stage)
    stall_ml = jnp.where(stage == 1, jnp.where(gain < cfg.gain_ml, state["stall_ml"] + 1, 0), state["stall_ml"])
    stage = jnp.where((stage == 1) & (stall_ml >= cfg.patience_ml), 2, stage)
    end = (jnp.asarray(step, jnp.int32) + 1) % cfg.steps_per_pass == 0
    keep = lambda new, old: jnp.where(end, new, old).astype(old.dtype)  # noqa: E731
    return {**state, "stage": keep(stage, state["stage"]), "stall_em": keep(stall_em, state["stall_em"]),
            "stall_ml": keep(stall_ml, state["stall_ml"]), "pass_acc": keep(a, state["pass_acc"]),
            "passes": state["passes"] + end.astype(jnp.int32),
            "acc_sum": jnp.where(end, 0.0, acc_sum), "acc_n": jnp.where(end, 0, acc_n)}


def stage_beta(updates, cfg: Config) -> jax.Array:
    """Smooth stage coefficient after `updates` outer steps: +1 at the start, linearly to −1 at
    `anneal_steps` (constant 1 unless stage_mode is "smooth")."""
    if cfg.stage_mode != "smooth":
        return jnp.ones((), jnp.float32)
    return (1.0 - 2.0 * jnp.clip(updates / cfg.anneal_steps, 0.0, 1.0)).astype(jnp.float32)


# --- the schedule -------------------------------------------------------------------------------


def at_schedule(total: int, window: int, delta: int, *, tau: float = 1.0, steps_per_pass: int = 1,
                stage_mode: str = "switch", window_mode: str = "adaptive", ema: float = 0.9,
                patience_em: int | None = None, patience_ml: int | None = None, gain_em: float = 1.5,
                gain_ml: float = 1.0, anneal_steps: int | None = None, zscore: bool = True) -> Schedule:
    """AT-BPTT's truncation schedule for T = `total` inner steps, base window W, spread d = `delta`.

    tau: softmax temperature on z-scored g (zscore=False: raw g, the authors' τ = 1). steps_per_pass:
    outer steps per pass over the real data (stage checks happen at pass ends). stage_mode: "switch"
    (three stages, accuracy-driven), "smooth" (β from +1 to −1 over `anneal_steps` updates), "off"
    (uniform position). window_mode: "adaptive" (W* ∈ [W − d, W + d]) or "fixed" (W). ema: decay of
    the g table. patience_*: passes (default ⌈0.15·T⌉, ⌈0.125·T⌉); gain_*: thresholds in points.
    max_window is W + d (W with a fixed window, which then needs no masking).
    """
    require(isinstance(total, int) and total >= 1, f"AT-BPTT total steps must be a positive int, got {total!r}")
    require(stage_mode in STAGE_MODES, f"unknown AT stage mode '{stage_mode}': use one of {', '.join(STAGE_MODES)}")
    require(window_mode in WINDOW_MODES,
            f"unknown AT window mode '{window_mode}': use one of {', '.join(WINDOW_MODES)}")
    require(isinstance(delta, int) and delta >= 0, f"AT-BPTT window spread d must be an int >= 0, got {delta!r}")
    require(window - delta >= 1 and window + delta <= total,
            f"AT-BPTT needs 1 <= W - d and W + d <= T, got W {window}, d {delta}, T {total}")
    require(tau > 0, f"AT-BPTT temperature tau must be > 0, got {tau}")
    require(steps_per_pass >= 1, f"steps_per_pass must be at least 1, got {steps_per_pass}")
    require(0.0 <= ema < 1.0, f"AT-BPTT ema decay must be in [0, 1), got {ema}")
    require(stage_mode != "smooth" or (anneal_steps or 0) >= 1,
            "AT-BPTT stage_mode 'smooth' needs anneal_steps >= 1 (outer steps over which beta goes from +1 to -1)")
    em, ml = default_patience(total)
    cfg = Config(total, window, delta, float(tau), steps_per_pass, stage_mode, window_mode, float(ema),
                 patience_em or em, patience_ml or ml, gain_em, gain_ml, anneal_steps or 1, zscore)
    i32 = lambda: jnp.zeros((), jnp.int32)  # noqa: E731

    def init():
        return {"table": init_stats(total), "stage": i32(), "stall_em": i32(), "stall_ml": i32(),
                "acc_sum": jnp.zeros((), jnp.float32), "acc_n": i32(), "pass_acc": jnp.zeros((), jnp.float32),
                "passes": i32(), "updates": i32(), "beta": stage_beta(0, cfg)}

    def sample(state, key):
        g, v = table_stats(state["table"])
        return select(key, g, v, state["stage"], state["beta"], cfg)

    def update(state, stats):
        state = update_stage(state, stats["accuracy"], stats["step"], cfg)
        table = update_stats(state["table"], stats["grad_norms"], stats["steps_run"], cfg.ema)
        updates = state["updates"] + 1
        return {**state, "table": table, "updates": updates, "beta": stage_beta(updates, cfg)}

    adaptive = window_mode == "adaptive" and delta > 0
    return Schedule(init=init, sample=sample, update=update, max_window=window + delta if adaptive else window,
                    masked=adaptive)


def schedule_metrics(state: dict) -> dict:
    """Scalars for metrics.jsonl: stage (0/1/2), β, stall counters, last pass accuracy (points),
    passes, fraction of the g table seen, and the table's mean g and mean v."""
    g, v = table_stats(state["table"])
    return {"at_stage": state["stage"], "at_beta": state["beta"], "at_stall_em": state["stall_em"],
            "at_stall_ml": state["stall_ml"], "at_pass_accuracy": state["pass_acc"], "at_passes": state["passes"],
            "at_seen": (state["table"]["count"] > 0).mean(), "at_g_mean": g.mean(), "at_v_mean": v.mean()}


def should_refresh(old_table: dict, new_table: dict, step, delta: float, every: int) -> jax.Array:
    """Whether to recompute the low-rank Hessian factors: the g table moved by a relative L2 change
    ≥ `delta` since `old_table` (the table at the last refresh), or `step` is a multiple of `every`."""
    g_old, _ = table_stats(old_table)
    g_new, _ = table_stats(new_table)
    change = jnp.linalg.norm(g_new - g_old) / jnp.maximum(jnp.linalg.norm(g_old), 1e-12)
    return (change >= delta) | (jnp.asarray(step) % every == 0)
