"""Reference implementations that only tests use: a Python-loop unroll, the AT-BPTT authors' probe, and
the "shifted" (im2col) and "taps" convolutions that jaxdd.models once offered beside "xla" and "native".

Imported as `from helpers import ...` (pyproject.toml puts tests/ on pytest's pythonpath). A test that needs
one of the convolutions inside a model registers it for the test's duration:
``monkeypatch.setitem(models.CONVS, "shifted", conv_shifted)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdd import inner
from jaxdd.models import make_model
from jaxdd.unroll import run_prefix

# --- unroll -------------------------------------------------------------------------------------


def python_unroll(step, carry, theta, xs, *, prefix=0, window: int):
    """Reference unroll with a Python loop: same semantics as `jaxdd.unroll.unroll`, no remat."""
    carry = jax.lax.stop_gradient(carry)
    theta_c = jax.lax.stop_gradient(theta)
    for t in range(int(prefix)):
        carry = step(carry, theta_c, jax.tree.map(lambda a: a[t], xs))
    for t in range(int(prefix), int(prefix) + window):
        carry = step(carry, theta, jax.tree.map(lambda a: a[t], xs))
    return carry


# --- AT-BPTT ------------------------------------------------------------------------------------


def probe_stats(step, carry, theta, xs) -> tuple[jax.Array, jax.Array]:
    """The AT-BPTT authors' probe: run all T steps of `step` from `carry` (a fresh `jaxdd.inner.InnerState`)
    without gradient, return (g [T], v [T]) from the norms the step writes to ``carry.grad_norms``;
    v_t = |g_t − g_{t−1}|, v_0 = 0."""
    total = carry.grad_norms.shape[0]
    end = run_prefix(step, carry, theta, xs, total)
    g = end.grad_norms.astype(jnp.float32)
    return g, jnp.concatenate([jnp.zeros_like(g[:1]), jnp.abs(jnp.diff(g))])


# --- convolutions (NHWC input, HWIO kernel, symmetric zero padding): fn(x, kernel, stride, padding) ----


def _pad_hw(x, padding):
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x


def _tap(xp, i, j, stride, h_out, w_out):
    """The input window of kernel tap (i, j): xp[:, i + stride·h, j + stride·w, :] for every output (h, w)."""
    return xp[:, i : i + stride * (h_out - 1) + 1 : stride, j : j + stride * (w_out - 1) + 1 : stride, :]


def _taps(x, kernel, stride, padding):
    kh, kw = kernel.shape[:2]
    xp = _pad_hw(x, padding)
    h_out, w_out = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    return [[_tap(xp, i, j, stride, h_out, w_out) for j in range(kw)] for i in range(kh)]


def conv_shifted(x, kernel, stride, padding):
    """im2col: the k·k shifted slices concatenated on channels (a k·k-wide tensor), then one matmul."""
    kh, kw, cin, cout = kernel.shape
    patches = [t for row in _taps(x, kernel, stride, padding) for t in row]
    cols = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
    return cols @ kernel.reshape(kh * kw * cin, cout)


def conv_taps(x, kernel, stride, padding):
    """Σ over the k·k taps of (shifted slice) @ kernel[i, j]: k·k matmuls accumulated, no wide tensor."""
    y = None
    for i, row in enumerate(_taps(x, kernel, stride, padding)):
        for j, tap in enumerate(row):
            t = tap @ kernel[i, j]
            y = t if y is None else y + t
    return y


#: The test-only convolutions by the name a model's `conv` / `conv2d`'s `impl` would use.
TEST_CONVS = {"shifted": conv_shifted, "taps": conv_taps}


def tiny_inner_problem(optimizer, dtype, total, *, width, seed, real):
    """A tiny float64-able inner problem: an MLP on 4x4 images, 3 classes x 2 images, `real` real images;
    (model, cfg, params, state, images, labels, real_x, real_y), all drawn from `seed`."""
    ipc, classes, side = 2, 3, 4
    model = make_model("mlp", image_shape=(side, side, 1), num_classes=classes, width=width, depth=1)
    cfg = inner.InnerConfig(optimizer=optimizer, lr=0.1, ipc=ipc, num_classes=classes, per_class=1, total_steps=total)
    k = jax.random.split(jax.random.key(seed), 4)
    params, state = model.init(k[0])
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    images = jax.random.normal(k[1], (classes * ipc, side, side, 1), dtype)
    labels = jnp.repeat(jnp.arange(classes), ipc)
    real_x = jax.random.normal(k[2], (real, side, side, 1), dtype)
    real_y = jax.random.randint(k[3], (real,), 0, classes)
    return model, cfg, params, state, images, labels, real_x, real_y
