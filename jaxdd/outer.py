"""The outer (meta) side: the outer loss's gradient in chunks, and the outer optimizer with its clipping."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd.inner import accuracy, cross_entropy
from jaxdd.models import Model


def outer_grad(model: Model, params, model_state, x, y, *, chunk: int | None = None):
    """λ = ∇_θ mean-CE(θ; x, y), computed over `chunk`-sized pieces of the real batch.

    The outer loss is a mean over examples, so its gradient is the sum of per-chunk gradients of the
    summed loss divided by the batch size: exact, with the memory of one chunk. Returns
    (λ, loss, accuracy). The network runs in training mode (batch statistics per chunk for BN models:
    exact only when chunk equals the batch).
    """
    n = x.shape[0]
    chunk = n if chunk is None or chunk >= n else chunk
    if n % chunk:
        raise ValueError(f"real batch {n} is not a multiple of the outer chunk {chunk}")

    def summed(params, xc, yc):
        logits, _ = model.apply(params, model_state, xc, True)
        return cross_entropy(logits, yc) * xc.shape[0], accuracy(logits, yc) * xc.shape[0]

    if chunk == n:
        (loss, acc), g = jax.value_and_grad(summed, has_aux=True)(params, x, y)
    else:
        xs = x.reshape((n // chunk, chunk) + x.shape[1:])
        ys = y.reshape((n // chunk, chunk) + y.shape[1:])

        def body(carry, xy):
            gsum, lsum, asum = carry
            (loss_c, acc_c), g = jax.value_and_grad(summed, has_aux=True)(params, *xy)
            return (jax.tree.map(jnp.add, gsum, g), lsum + loss_c, asum + acc_c), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (g, loss, acc), _ = jax.lax.scan(body, (zeros, 0.0, 0.0), (xs, ys))
    return jax.tree.map(lambda a: a / n, g), loss / n, acc / n


class EmaClipState(NamedTuple):
    shadow: jax.Array  # EMA of the gradient norm (negative before the first update)


def clip_by_ema_norm(factor: float = 2.0, decay: float = 0.1) -> optax.GradientTransformation:
    """Clip the global norm at ``factor`` × an EMA of past norms (RaT-BPTT's outer clipping).

    shadow ← shadow − decay·(shadow − ‖g‖), updated before clipping; its first value is ‖g‖.
    """

    def init(params):
        del params
        return EmaClipState(jnp.asarray(-1.0, jnp.float32))

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        shadow = jnp.where(state.shadow < 0, norm, state.shadow - decay * (state.shadow - norm))
        scale = jnp.minimum(1.0, factor * shadow / jnp.maximum(norm, 1e-30))
        return jax.tree.map(lambda u: u * scale, updates), EmaClipState(shadow)

    return optax.GradientTransformation(init, update)


def outer_optimizer(theta, *, lr: float, lr_labels: float | None = None, lr_lr: float | None = None,
                    clip: bool = True, clip_factor: float = 2.0, clip_decay: float = 0.1,
                    optimizer: str = "adam", momentum: float = 0.5) -> optax.GradientTransformation:
    """Outer optimizer over the learnable synthetic dict (keys images / labels / lr).

    Images: optional EMA clipping then Adam (or SGD with momentum for trajectory matching); labels and
    the learnable lr get their own instances, unclipped. The whole thing skips non-finite updates
    (optax.apply_if_finite), which also counts them.
    """

    def base(rate):
        if optimizer == "adam":
            return optax.adam(rate)
        return optax.sgd(rate, momentum=momentum)

    transforms = {
        "images": optax.chain(clip_by_ema_norm(clip_factor, clip_decay), base(lr)) if clip else base(lr),
        "labels": base(lr if lr_labels is None else lr_labels),
        "lr": base(1e-5 if lr_lr is None else lr_lr),
    }
    labels = {k: k for k in theta}
    inner = optax.multi_transform({k: transforms[k] for k in theta}, labels)
    return optax.apply_if_finite(inner, max_consecutive_errors=2**30)


def project(theta):
    """Constraints after each outer update: learned labels stay non-negative, a learned lr positive."""
    out = dict(theta)
    if "labels" in out:
        out["labels"] = jnp.maximum(out["labels"], 0.0)
    if "lr" in out:
        out["lr"] = jnp.maximum(out["lr"], 1e-8)
    return out

