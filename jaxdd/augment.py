"""Differentiable augmentations (DSA, Zhao & Bilen 2021; RaT-BPTT's flip/rotate), as pure jnp functions.

Every op has the signature ``op(x, key, <strength>, *, siamese=False) -> x`` on float NHWC batches
``[B, H, W, C]`` (already normalised, so "zero fill" means 0 in normalised units, as in DSA). Ops are
jittable, vmappable and differentiable w.r.t. ``x`` (the geometric ops sample bilinearly with a
gather, so gradients flow to every input pixel that was read). Randomness comes only from ``key``;
parameters are drawn per sample, or once and broadcast to the whole batch with ``siamese=True`` (so a
real and a synthetic batch augmented with the same key get the same transform, whatever their sizes).

Strategies (:func:`augment`, :func:`get_augment`) pick ONE op per batch uniformly at random with
``lax.switch`` inside the traced function (DSA mode "S"):

* ``"none"``: identity.
* ``"flip_rotate"``: one of {flip, rotate ±15°} (RaT-BPTT).
* ``"dsa"``: DSA's default ``"color_crop_cutout_flip_scale_rotate"``.
* ``"standard"``: not DSA: random crop with zero padding 4 and a horizontal flip, both applied
  (:func:`crop_flip`, used by SelMatch's combined augmentation).
* any op name, or any ``"_"``-joined list of op names (e.g. ``"crop_flip"`` = one of crop or flip).

Randomness: one call ``u = uniform(key, [4, B])`` (``[4]`` broadcast if siamese) per augmentation;
``u[0, 0]`` chooses the op, ``u[1:]`` are the op's per-sample parameters. So the same key gives the
chosen op the same parameters whichever strategy chose it:
``augment(x, key, s) == OPS[strategy_ops(s)[op_index(key, s)]](x, key)``. (One threefry call per
graph also keeps XLA:CPU compile times down: each call costs ~0.1-0.5 s of compilation.)
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxdd.errors import JaxddError

__all__ = [
    "STRATEGIES",
    "OPS",
    "augment",
    "get_augment",
    "strategy_ops",
    "op_index",
    "brightness",
    "saturation",
    "contrast",
    "color",
    "crop",
    "cutout",
    "flip",
    "scale",
    "rotate",
    "crop_flip",
    "combined",
    "affine",
    "bilinear_sample",
    "translate",
    "rotation_matrix",
    "scale_matrix",
]

Array = jax.Array
AugmentFn = Callable[[Array, Array], Array]

_ROWS = 4  # row 0: op choice; rows 1..3: up to three per-sample parameters of the op


# ----------------------------------------------------------------------------------------------
# parameter draws


def _draw(key: Array, batch: int, siamese: bool) -> Array:
    """U[0, 1) of shape [_ROWS, batch]; with siamese one column is drawn and broadcast over the batch."""
    if siamese:
        u = jax.random.uniform(key, (_ROWS,), jnp.float32)
        return jnp.broadcast_to(u[:, None], (_ROWS, batch))
    return jax.random.uniform(key, (_ROWS, batch), jnp.float32)


def _int(u: Array, lo: int, hi: int) -> Array:
    """Map U[0, 1) to integers uniform in [lo, hi] (inclusive)."""
    n = hi - lo + 1
    return lo + jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _check_images(x: Array) -> None:
    if x.ndim != 4:
        raise JaxddError(f"augmentations expect NHWC image batches [B, H, W, C]; got shape {tuple(x.shape)}")


def _b(v: Array) -> Array:
    """[B] -> [B, 1, 1, 1] for broadcasting against NHWC."""
    return v[:, None, None, None]


# ----------------------------------------------------------------------------------------------
# op cores: (x, p) with p the [3, B] parameter uniforms


def _brightness(x, u, strength=1.0):
    return (x + _b((u - 0.5) * strength)).astype(x.dtype)


def _saturation(x, u, strength=2.0):
    m = jnp.mean(x, axis=-1, keepdims=True)
    return ((x - m) * _b(u * strength) + m).astype(x.dtype)


def _contrast(x, u, strength=0.5):
    m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return ((x - m) * _b(u + strength) + m).astype(x.dtype)


def _color(x, p):
    return _contrast(_saturation(_brightness(x, p[0]), p[1]), p[2])


def _crop(x, p, ratio=0.125):
    _, h, w, _ = x.shape
    ry, rx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    return translate(x, _int(p[0], -ry, ry), _int(p[1], -rx, rx), max(ry, rx))


def _cutout(x, p, ratio=0.5):
    _, h, w, _ = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # DSA: centre uniform in [0, H - (side % 2)], square rows [centre - side // 2, + side), clipped
    y0 = (_int(p[0], 0, h - sy % 2) - sy // 2)[:, None]
    x0 = (_int(p[1], 0, w - sx % 2) - sx // 2)[:, None]
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_y = (rows >= y0) & (rows < y0 + sy)  # [B, H]
    in_x = (cols >= x0) & (cols < x0 + sx)  # [B, W]
    mask = ~(in_y[:, :, None] & in_x[:, None, :])  # [B, H, W]
    return x * mask[..., None].astype(x.dtype)


def _flip(x, u, prob=0.5):
    return jnp.where(_b(u < prob), x[:, :, ::-1, :], x)


def _rotate(x, p, max_degrees=15.0):
    angle = (2.0 * p[0] - 1.0) * (max_degrees * math.pi / 180.0)
    return affine(x, rotation_matrix(angle))


def _scale(x, p, ratio=1.2):
    lo = 1.0 / ratio
    return affine(x, scale_matrix(lo + p[0] * (ratio - lo), lo + p[1] * (ratio - lo)))


def _crop_flip(x, p, pad=4):
    return _flip(translate(x, _int(p[0], -pad, pad), _int(p[1], -pad, pad), pad), p[2])


# ----------------------------------------------------------------------------------------------
# public ops


def _public(core, row_arg: bool = False):
    """Public op from a core: draws the parameters from ``key``; ``row_arg`` cores take one row."""

    def op(x, key, *args, siamese=False):
        _check_images(x)
        p = _draw(key, x.shape[0], siamese)[1:]
        return core(x, p[0] if row_arg else p, *args)

    return op


@functools.partial(jax.jit, static_argnames=("siamese",))
def brightness(x: Array, key: Array, strength: float = 1.0, *, siamese: bool = False) -> Array:
    """DSA brightness: ``x + (u - 0.5) * strength``, u ~ U[0, 1) per sample."""
    return _public(_brightness, True)(x, key, strength, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("siamese",))
def saturation(x: Array, key: Array, strength: float = 2.0, *, siamese: bool = False) -> Array:
    """DSA saturation: ``(x - m) * (u * strength) + m``, m the per-pixel mean over channels."""
    return _public(_saturation, True)(x, key, strength, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("siamese",))
def contrast(x: Array, key: Array, strength: float = 0.5, *, siamese: bool = False) -> Array:
    """DSA contrast: ``(x - m) * (u + strength) + m``, m the mean of each image over (H, W, C)."""
    return _public(_contrast, True)(x, key, strength, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("siamese",))
def color(x: Array, key: Array, *, siamese: bool = False) -> Array:
    """DSA "color": brightness, then saturation, then contrast (independent per-sample draws)."""
    return _public(_color)(x, key, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("ratio", "siamese"))
def crop(x: Array, key: Array, ratio: float = 0.125, *, siamese: bool = False) -> Array:
    """DSA crop: integer translation by up to ``round(ratio * H)`` rows / ``round(ratio * W)`` columns,
    shifts uniform in [-r, r] per sample, zero fill."""
    return _public(_crop)(x, key, ratio, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("ratio", "siamese"))
def cutout(x: Array, key: Array, ratio: float = 0.5, *, siamese: bool = False) -> Array:
    """DSA cutout: zero a ``round(ratio * H)`` × ``round(ratio * W)`` square at a random centre per
    sample, clipped at the image borders (DSA's centre range)."""
    return _public(_cutout)(x, key, ratio, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("siamese",))
def flip(x: Array, key: Array, prob: float = 0.5, *, siamese: bool = False) -> Array:
    """DSA flip: mirror width-wise with probability ``prob`` per sample."""
    return _public(_flip, True)(x, key, prob, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("siamese",))
def rotate(x: Array, key: Array, max_degrees: float = 15.0, *, siamese: bool = False) -> Array:
    """DSA rotate: angle U[-max_degrees, max_degrees] per sample, bilinear, zeros outside."""
    return _public(_rotate)(x, key, max_degrees, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("siamese",))
def scale(x: Array, key: Array, ratio: float = 1.2, *, siamese: bool = False) -> Array:
    """DSA scale: per-axis factors U[1/ratio, ratio] per sample, bilinear, zeros outside."""
    return _public(_scale)(x, key, ratio, siamese=siamese)


@functools.partial(jax.jit, static_argnames=("pad", "siamese"))
def crop_flip(x: Array, key: Array, pad: int = 4, *, siamese: bool = False) -> Array:
    """Standard (non-DSA) augmentation: random crop of the zero-padded (by ``pad``) image back to
    H × W, then a horizontal flip with p = 0.5; both applied, per sample."""
    return _public(_crop_flip)(x, key, pad, siamese=siamese)


def combined(x: Array, key: Array, real: Array, distilled_aug: Callable, real_aug: Callable) -> Array:
    """SelMatch's combined augmentation: rows where ``real`` (bool [B]) is set get ``real_aug`` (crop + flip
    on its selected real images), the others ``distilled_aug`` (DSA on its distilled images), each
    ``aug(x, key)`` with its own half of ``key``."""
    k_distilled, k_real = jax.random.split(key)
    return jnp.where(real[:, None, None, None], real_aug(x, k_real), distilled_aug(x, k_distilled))


# ----------------------------------------------------------------------------------------------
# integer-grid and affine samplers


@functools.partial(jax.jit, static_argnames=("max_shift",))
def translate(x: Array, dy: Array, dx: Array, max_shift: int) -> Array:
    """Per-sample integer translation with zero fill: ``out[b, i, j] = x[b, i + dy[b], j + dx[b]]``.

    ``dy``, ``dx``: int arrays [B] with values in [-max_shift, max_shift] (static bound; clipped).
    """
    _check_images(x)
    _, h, w, c = x.shape
    r = int(max_shift)
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    dy = jnp.clip(jnp.asarray(dy, jnp.int32), -r, r)
    dx = jnp.clip(jnp.asarray(dx, jnp.int32), -r, r)
    one = lambda img, oy, ox: jax.lax.dynamic_slice(img, (oy, ox, 0), (h, w, c))
    return jax.vmap(one)(xp, dy + r, dx + r)


def bilinear_sample(x: Array, rows: Array, cols: Array) -> Array:
    """Sample ``x`` [B, H, W, C] bilinearly at float pixel coordinates ``rows``, ``cols`` [B, Ho, Wo];
    taps outside the image read 0 (PyTorch ``grid_sample(padding_mode='zeros')``). Differentiable
    w.r.t. ``x`` (and w.r.t. the coordinates within a cell)."""
    b, h, w, c = x.shape
    r0f = jnp.floor(rows)
    c0f = jnp.floor(cols)
    wr1 = (rows - r0f).astype(x.dtype)
    wc1 = (cols - c0f).astype(x.dtype)
    wr0 = 1 - wr1
    wc0 = 1 - wc1
    r0 = r0f.astype(jnp.int32)
    c0 = c0f.astype(jnp.int32)
    xf = x.reshape(b, h * w, c)
    out_shape = rows.shape

    def tap(r, col, wgt):
        valid = (r >= 0) & (r < h) & (col >= 0) & (col < w)
        idx = (jnp.clip(r, 0, h - 1) * w + jnp.clip(col, 0, w - 1)).reshape(b, -1, 1)
        v = jnp.take_along_axis(xf, idx, axis=1, mode="clip").reshape(*out_shape, c)
        return v * jnp.where(valid, wgt, 0)[..., None]

    return (
        tap(r0, c0, wr0 * wc0)
        + tap(r0, c0 + 1, wr0 * wc1)
        + tap(r0 + 1, c0, wr1 * wc0)
        + tap(r0 + 1, c0 + 1, wr1 * wc1)
    )


@jax.jit
def affine(x: Array, theta: Array) -> Array:
    """Warp ``x`` [B, H, W, C] by per-sample affine matrices ``theta`` [B, 2, 3] (or one [2, 3]).

    Same convention as PyTorch ``grid_sample(x, affine_grid(theta, align_corners=True))``, which DSA
    uses: the output pixel at normalised (u, v) ∈ [-1, 1]² (u along width, v along height, the corners
    at the corner pixels' centres) reads the input at ``theta @ (u, v, 1)``, bilinearly, zeros outside.
    """
    _check_images(x)
    b, h, w, _ = x.shape
    theta = jnp.broadcast_to(jnp.asarray(theta, jnp.float32), (b, 2, 3))
    v = jnp.linspace(-1.0, 1.0, h) if h > 1 else jnp.zeros((1,))
    u = jnp.linspace(-1.0, 1.0, w) if w > 1 else jnp.zeros((1,))
    uu, vv = jnp.meshgrid(u, v)  # [H, W]; uu varies along width
    grid = jnp.stack([uu, vv, jnp.ones_like(uu)], axis=-1)  # [H, W, 3]
    src = jnp.einsum("bij,hwj->bhwi", theta, grid)  # [B, H, W, 2] = (u_in, v_in)
    cols = (src[..., 0] + 1) * 0.5 * (w - 1)
    rows = (src[..., 1] + 1) * 0.5 * (h - 1)
    return bilinear_sample(x, rows, cols).astype(x.dtype)


def rotation_matrix(angle: Array) -> Array:
    """DSA's rotation matrices [B, 2, 3] for angles [B] (radians): [[cos, -sin, 0], [sin, cos, 0]]."""
    angle = jnp.asarray(angle, jnp.float32)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    zero = jnp.zeros_like(angle)
    return jnp.stack([jnp.stack([cos, -sin, zero], -1), jnp.stack([sin, cos, zero], -1)], -2)


def scale_matrix(sx: Array, sy: Array) -> Array:
    """DSA's scaling matrices [B, 2, 3]: [[sx, 0, 0], [0, sy, 0]] (sx along width, sy along height)."""
    sx, sy = jnp.asarray(sx, jnp.float32), jnp.asarray(sy, jnp.float32)
    zero = jnp.zeros_like(sx)
    return jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], -2)


# ----------------------------------------------------------------------------------------------
# strategies

OPS: dict[str, Callable[..., Array]] = {
    "color": color,
    "crop": crop,
    "cutout": cutout,
    "flip": flip,
    "scale": scale,
    "rotate": rotate,
    "brightness": brightness,
    "saturation": saturation,
    "contrast": contrast,
}

# cores taking (x, p[3, B]) with default strengths, for lax.switch branches
_CORES: dict[str, Callable[[Array, Array], Array]] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": lambda x, p: _flip(x, p[0]),
    "scale": _scale,
    "rotate": _rotate,
    "brightness": lambda x, p: _brightness(x, p[0]),
    "saturation": lambda x, p: _saturation(x, p[0]),
    "contrast": lambda x, p: _contrast(x, p[0]),
}

_NAMED = {
    "none": (),
    "dsa": ("color", "crop", "cutout", "flip", "scale", "rotate"),
    "flip_rotate": ("flip", "rotate"),
    "standard": ("standard",),
}

STRATEGIES: tuple[str, ...] = tuple(_NAMED) + tuple(OPS)


def strategy_ops(strategy: str) -> tuple[str, ...]:
    """The op names one batch chooses from under ``strategy`` (``()`` for "none"); validates names."""
    if not isinstance(strategy, str):
        raise JaxddError(f"augmentation strategy must be a string; got {strategy!r}")
    s = strategy.strip().lower()
    if s in ("", "none"):
        return ()
    if s in _NAMED:
        return _NAMED[s]
    names = tuple(s.split("_"))
    bad = [n for n in names if n not in OPS]
    if bad:
        raise JaxddError(
            f"unknown augmentation {', '.join(map(repr, bad))} in strategy {strategy!r}; valid strategies: "
            f"{', '.join(_NAMED)}, or op names joined by '_' from: {', '.join(OPS)}"
        )
    return names


def op_index(key: Array, strategy: str, batch_size: int = 1, *, siamese: bool = False) -> Array:
    """Index into ``strategy_ops(strategy)`` of the op that ``augment(x, key, strategy,
    siamese=siamese)`` applies to a batch of ``batch_size`` (with the default partitionable threefry
    the choice does not depend on ``batch_size``)."""
    n = max(len(strategy_ops(strategy)), 1)
    return _int(_draw(key, batch_size, siamese)[0, 0], 0, n - 1)


def _identity(x: Array, key: Array) -> Array:
    return x


@functools.lru_cache(maxsize=None)
def _build(names: tuple[str, ...], siamese: bool) -> AugmentFn:
    if not names:
        return _identity
    if len(names) == 1:  # the public op itself (shares its jit cache)
        op = crop_flip if names[0] == "standard" else OPS[names[0]]
        return functools.partial(op, siamese=True) if siamese else op
    branches = [_CORES[n] for n in names]

    @jax.jit
    def fn(x: Array, key: Array) -> Array:
        _check_images(x)
        u = _draw(key, x.shape[0], siamese)
        i = _int(u[0, 0], 0, len(branches) - 1)
        return jax.lax.switch(i, branches, x, u[1:])

    return fn


def get_augment(strategy: str = "flip_rotate", *, siamese: bool = False) -> AugmentFn:
    """Return a jitted ``fn(x, key) -> x`` applying ``strategy`` (see the module doc); names are
    validated now (``JaxddError``). Cached per (strategy, siamese)."""
    return _build(strategy_ops(strategy), bool(siamese))


def augment(x: Array, key: Array, strategy: str = "flip_rotate", *, siamese: bool = False) -> Array:
    """Augment the NHWC batch ``x`` with ONE op of ``strategy`` chosen per batch (``lax.switch``),
    parameters drawn per sample (shared by all samples if ``siamese``). Same shape and dtype."""
    return get_augment(strategy, siamese=siamese)(x, key)
