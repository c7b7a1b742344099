"""The unroll core: a prefix of plain training, then a differentiable, rematerialised window.

Every meta-gradient estimator in jaxdd (full BPTT, T-BPTT, RaT-BPTT, AT-BPTT, trajectory matching)
is `unroll` with a different choice of `prefix` and `window`.
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


def slice_steps(xs, start, length: int):
    """Steps ``[start, start + length)`` of every leaf of `xs` (leading axis = step); start may be traced."""
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, length, axis=0), xs)


def run_prefix(step: Step, carry: Carry, theta, xs, prefix) -> Carry:
    """Run ``prefix`` steps with no gradient to `carry` or `theta`; `prefix` may be a traced integer."""
    carry, theta = jax.lax.stop_gradient((carry, theta))

    def body(t, c):
        return step(c, theta, jax.tree.map(lambda a: a[t], xs))

    return jax.lax.fori_loop(0, prefix, body, carry)


def run_window(step: Step, carry: Carry, theta, xs, *, start=0, window: int, remat: bool | str = True) -> Carry:
    """Run `window` (static) differentiable steps from step index `start`, rematerialising each step.

    remat: True (same as "full"), False, or a key of `REMAT_POLICIES`.
    """
    if remat is True:
        remat = "full"
    if remat:
        if remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy '{remat}': use one of {', '.join(REMAT_POLICIES)}")
        step = jax.checkpoint(step, policy=REMAT_POLICIES[remat])

    def body(c, x):
        return step(c, theta, x), None

    carry, _ = jax.lax.scan(body, carry, slice_steps(xs, start, window))
    return carry


def unroll(step: Step, carry: Carry, theta, xs, *, prefix=0, window: int, remat: bool | str = True) -> Carry:
    """Unroll ``prefix + window`` inner steps; gradients flow only through the last `window` steps.

    step(carry, theta, x) -> carry is one inner step and x is the t-th slice of `xs` (a pytree whose
    leaves have a leading axis of at least prefix + window). The prefix runs in `lax.fori_loop` under
    stop_gradient, so it may be a traced integer (one compilation serves every prefix); the window is a
    `lax.scan` of static length over a `jax.checkpoint`-ed step.
    """
    carry = run_prefix(step, carry, theta, xs, prefix)
    return run_window(step, carry, theta, xs, start=prefix, window=window, remat=remat)


def python_unroll(step: Step, carry: Carry, theta, xs, *, prefix=0, window: int) -> Carry:
    """Reference unroll with a Python loop (for tests): same semantics as `unroll`, no remat."""
    carry = jax.lax.stop_gradient(carry)
    theta_c = jax.lax.stop_gradient(theta)
    for t in range(int(prefix)):
        carry = step(carry, theta_c, jax.tree.map(lambda a: a[t], xs))
    for t in range(int(prefix), int(prefix) + window):
        carry = step(carry, theta, jax.tree.map(lambda a: a[t], xs))
    return carry


def num_steps(xs) -> int:
    """Length of the leading (step) axis of `xs`."""
    return int(jnp.shape(jax.tree.leaves(xs)[0])[0])
