"""The unroll core: a prefix of plain training, then a differentiable, rematerialised window.

Every meta-gradient estimator in jaxdd (full BPTT, T-BPTT, RaT-BPTT, AT-BPTT, trajectory matching)
is `unroll` with a different choice of `prefix` and `window` (docs/methods/bptt.md); where the
window's length changes between outer steps (AT-BPTT), the masked window keeps one compilation.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Carry = Any
Step = Callable[[Carry, Any, Any], Carry]

#: Named rematerialisation policies for the window step (`jax.checkpoint_policies`).
REMAT_POLICIES = {
    "full": None,  # save nothing inside a step: least memory
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}
#: The remat settings every method accepts: a policy, or "none" (no rematerialisation).
REMAT_NAMES = tuple(REMAT_POLICIES) + ("none",)


def slice_steps(xs, start, length: int):
    """Steps ``[start, start + length)`` of every leaf of `xs` (leading axis = step); start may be traced."""
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, length, axis=0), xs)


def run_prefix(step: Step, carry: Carry, theta, xs, prefix) -> Carry:
    """Run ``prefix`` steps with no gradient to `carry` or `theta`; `prefix` may be a traced integer."""
    carry, theta = jax.lax.stop_gradient((carry, theta))

    def body(t, c):
        return step(c, theta, jax.tree.map(lambda a: a[t], xs))

    return jax.lax.fori_loop(0, prefix, body, carry)


def _checkpointed(step: Step, remat: bool | str) -> Step:
    if remat is True:
        remat = "full"
    if not remat or remat == "none":
        return step
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy '{remat}': use one of {', '.join(REMAT_POLICIES)}")
    return jax.checkpoint(step, policy=REMAT_POLICIES[remat])


def run_window(step: Step, carry: Carry, theta, xs, *, start=0, window: int, remat: bool | str = True,
               length=None) -> Carry:
    """Run `window` (static) differentiable steps from step index `start`, rematerialising each step.

    remat: True (same as "full"), False (same as "none"), or a name in `REMAT_NAMES`. length: None, or a (traced)
    number of steps ``<= window`` to run: the scan keeps its static length `window` and its first
    ``window - length`` steps are identities (the masked window), so every length shares one compile;
    the active steps use slices ``start .. start + length - 1`` of `xs`.
    """
    step = _checkpointed(step, remat)
    if length is None:
        def body(c, x):
            return step(c, theta, x), None

        carry, _ = jax.lax.scan(body, carry, slice_steps(xs, start, window))
        return carry

    offset = window - length

    def masked(c, i):
        t = jnp.maximum(start + i - offset, 0)
        new = step(c, theta, jax.tree.map(lambda a: a[t], xs))
        return jax.tree.map(lambda n, o: jnp.where(i >= offset, n, o), new, c), None

    carry, _ = jax.lax.scan(masked, carry, jnp.arange(window))
    return carry


def window_vjp(step: Step, carry: Carry, theta, xs, *, start=0, window: int, remat: bool | str = True,
               length=None, cotangent: Callable):
    """Meta-gradient of an outer loss through the window, by one VJP.

    cotangent(end_carry) -> (λ, metrics) gives the outer loss's gradient with respect to the window's
    final parameters ``end_carry.params`` (computed however suits the loss: in chunks over a real batch,
    or in closed form for a parameter distance). Returns (d loss / d theta, metrics, end_carry).
    """
    def window_fn(theta):
        end = run_window(step, carry, theta, xs, start=start, window=window, remat=remat, length=length)
        return end.params, end

    _, vjp_fn, end = jax.vjp(window_fn, theta, has_aux=True)
    lam, metrics = cotangent(end)
    (grads,) = vjp_fn(lam)
    return grads, metrics, end


def unroll(step: Step, carry: Carry, theta, xs, *, prefix=0, window: int, remat: bool | str = True,
           length=None) -> Carry:
    """Unroll ``prefix + window`` inner steps; gradients flow only through the last `window` steps.

    step(carry, theta, x) -> carry is one inner step and x is the t-th slice of `xs` (a pytree whose
    leaves have a leading axis of at least prefix + window). The prefix runs in `lax.fori_loop` under
    stop_gradient, so it may be a traced integer (one compilation serves every prefix); the window is a
    `lax.scan` of static length over a `jax.checkpoint`-ed step. With `length` (may be traced, at most
    `window`) only ``prefix + length`` steps run: the masked window of `run_window`.
    """
    carry = run_prefix(step, carry, theta, xs, prefix)
    return run_window(step, carry, theta, xs, start=prefix, window=window, remat=remat, length=length)
