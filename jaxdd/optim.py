"""Inner optimizers to differentiate through: Adam with torch.optim.Adam's forward and a safe backward.

docs/inner_adam.md. optax's `scale_by_adam` puts ``eps_root`` *inside* the square root; with
``eps_root = 0`` the derivative of √v at an exactly-zero second moment is infinite and the
meta-gradient becomes NaN, and with ``eps_root > 0`` the forward differs from torch's Adam (the
denominator is floored at √eps_root). :func:`scale_by_torch_adam` computes torch's forward,

    m ← b1·m + (1 − b1)·g,   v ← b2·v + (1 − b2)·g²,   u = (m / c1) / (√v / √c2 + eps),

with c_i = 1 − b_i^t, and takes √v through :func:`safe_sqrt`, whose derivative is 0 where v = 0 (what
`higher`'s differentiable Adam obtains by masking the gradient of v where v = 0). Updates are the
*direction*: the caller applies ``p − lr · u`` (as optax's scale_by_adam, without the learning rate).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd.errors import require

__all__ = ["INNER_ADAM_KINDS", "safe_sqrt", "bias_correction", "scale_by_torch_adam", "inner_adam_direction",
           "AuthorsAdamState", "with_switch"]

#: Inner Adam variants accepted by :func:`inner_adam_direction`.
INNER_ADAM_KINDS = ("torch", "higher", "optax", "authors")


class AuthorsAdamState(NamedTuple):
    """Adam state of the "authors" kind: optax's fields and the count up to which torch's formula applies."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    switch: jax.Array  # int32: steps with count <= switch use "torch", later ones "higher"


def with_switch(opt_state, switch):
    """An "authors" Adam state switching formula after `switch` steps (the untracked prefix); other states as they are."""
    return opt_state._replace(switch=jnp.asarray(switch, jnp.int32)) if isinstance(opt_state, AuthorsAdamState) \
        else opt_state


def safe_sqrt(x):
    """√x for x ≥ 0 whose derivative is 0 (not ∞) where x = 0 (the double-where trick)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, jnp.ones_like(x))), jnp.zeros_like(x))


def bias_correction(decay: float, count, dtype):
    """1 − decay**count in `dtype`, computed as −expm1(count · log decay) so that float32 keeps
    full relative precision (torch computes it in float64 on the host; 1 − 0.999**t in float32
    is off by up to ~1e-5 relative at small t)."""
    if decay == 0.0:
        return jnp.ones((), dtype)
    return -jnp.expm1(jnp.asarray(count, dtype) * jnp.asarray(math.log(decay), dtype))


def scale_by_torch_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                        eps_before_correction: bool = False, switch: bool = False) -> optax.GradientTransformation:
    """Adam's direction with torch.optim.Adam's forward and a derivative that is finite at v = 0.

    u = m̂ / (√v̂ + eps) with eps outside the root (m̂ = m / c1, √v̂ = √v / √c2). With
    ``eps_before_correction=True`` eps is added to √v before the bias correction,
    u = (m / c1) · √c2 / (√v + eps), the Kingma–Ba "efficient" form used by older torch releases
    and TensorFlow (an effective eps of eps·√c2 early in training). The state is optax's
    ScaleByAdamState; the caller applies ``p − lr · u``. ``switch=True`` (RaT-BPTT's authors: torch.optim.Adam
    over the untracked prefix, `higher` 0.2.1 over the window, one Adam state): the torch formula while the
    count is <= the state's ``switch`` (set by :func:`with_switch`), eps before the correction after it.
    """
    require(0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0, f"Adam betas must lie in [0, 1), got b1={b1}, b2={b2}")
    require(eps > 0.0, f"Adam eps must be positive, got {eps}: the update divides by √v + eps")

    def init_fn(params):
        fields = dict(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                      nu=optax.tree.zeros_like(params))
        if switch:
            return AuthorsAdamState(**fields, switch=jnp.zeros([], jnp.int32))
        return optax.ScaleByAdamState(**fields)

    def direction(m, v, count, before):
        c1 = bias_correction(b1, count, m.dtype)
        sqrt_c2 = jnp.sqrt(bias_correction(b2, count, v.dtype))
        torch_denom = safe_sqrt(v) / sqrt_c2 + eps
        higher_denom = (safe_sqrt(v) + eps) / sqrt_c2
        denom = higher_denom if before is True else torch_denom if before is False else \
            jnp.where(before, higher_denom, torch_denom)
        return (m / denom) / c1

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        before = (count > state.switch) if switch else eps_before_correction
        out = jax.tree.map(lambda m, v: direction(m, v, count, before), mu, nu)
        if switch:
            return out, AuthorsAdamState(count=count, mu=mu, nu=nu, switch=state.switch)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def inner_adam_direction(kind: str = "torch", b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                         eps_root: float = 1e-8) -> optax.GradientTransformation:
    """The inner Adam direction (no learning rate) for `kind` in :data:`INNER_ADAM_KINDS`.

    "torch": :func:`scale_by_torch_adam` (torch.optim.Adam's forward, safe √ at v = 0); "higher":
    the same with eps added before the bias correction; "authors": "torch" over the untracked prefix
    and "higher" over the window (set the prefix with :func:`with_switch`); "optax": ``optax.scale_by_adam`` with
    `eps_root` inside the root (eps_root = 0 gives NaN meta-gradients at exactly-zero gradients).
    """
    require(kind in INNER_ADAM_KINDS, f"unknown inner Adam {kind!r}: use one of {', '.join(INNER_ADAM_KINDS)}")
    if kind == "optax":
        return optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    return scale_by_torch_adam(b1, b2, eps, eps_before_correction=kind == "higher", switch=kind == "authors")
