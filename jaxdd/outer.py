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


def outer_optimizer(theta, *, lr: float, lr_labels: float | None = None, lr_lr: float = 1e-5, clip: bool = True,
                    block_rates: dict | None = None, kind: str = "adam",
                    momentum: float = 0.5) -> optax.GradientTransformation:
    """Outer optimizer over a synthetic set's `theta` (jaxdd/synthetic.py).

    Every image block gets its own optimizer instance (its own Adam moments and step count) at
    ``lr · block_rates[block]`` (default rate 1): scaling Adam's learning rate, not the gradient. The
    image meta-gradient of all blocks together is first clipped at 2 × its EMA norm (``clip``); learned
    labels and a learnable lr get their own, unclipped instances. ``kind``: "adam" (BPTT family) or
    "sgd" (SGD with `momentum`, trajectory matching). Non-finite updates are skipped and counted
    (optax.apply_if_finite).
    """
    rates = block_rates or {}

    def base(rate):
        return optax.adam(rate) if kind == "adam" else optax.sgd(rate, momentum=momentum)

    transforms = {name: base(lr * rates.get(name, 1.0)) for name in theta["images"]}
    labels = {"images": {name: name for name in theta["images"]}}
    for part, rate in (("labels", lr if lr_labels is None else lr_labels), ("lr", lr_lr)):
        if part in theta:
            transforms[part], labels[part] = base(rate), part
    tx = optax.multi_transform(transforms, labels)
    if clip:
        tx = optax.chain(optax.masked(clip_by_ema_norm(), {k: k == "images" for k in theta}), tx)
    return optax.apply_if_finite(tx, max_consecutive_errors=2**30)


def project(theta):
    """Constraints after each outer update: learned labels stay non-negative, a learned lr positive."""
    out = dict(theta)
    if "labels" in out:
        out["labels"] = jnp.maximum(out["labels"], 0.0)
    if "lr" in out:
        out["lr"] = jnp.maximum(out["lr"], 1e-8)
    return out

