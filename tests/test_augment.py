"""Numerical checks of jaxdd.augment (DSA ops, strategies, siamese mode)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment as A
from jaxdd.errors import JaxddError

B, H, W, C = 6, 9, 9, 3
OP_NAMES = tuple(A.OPS)
ALL_STRATEGIES = A.STRATEGIES + ("crop_flip", "color_crop_cutout_flip_scale_rotate", "rotate_scale")


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(42), (B, H, W, C), jnp.float32)


def _np(a):
    return np.asarray(a)


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", OP_NAMES + ("crop_flip",))
def test_op_shape_dtype(name, x):
    fn = A.crop_flip if name == "crop_flip" else A.OPS[name]
    y = fn(x, jax.random.key(0))  # public ops are jitted
    chex.assert_shape(y, x.shape)
    chex.assert_type(y, jnp.float32)
    chex.assert_tree_all_finite(y)


@pytest.mark.parametrize(
    "strategy,siamese", [("none", False), ("dsa", False), ("flip_rotate", False), ("crop_flip", False), ("standard", True), ("rotate", True)]
)
def test_strategy_shape_dtype(strategy, siamese, x):
    y = A.get_augment(strategy, siamese=siamese)(x, jax.random.key(1))
    chex.assert_shape(y, x.shape)
    chex.assert_type(y, jnp.float32)
    chex.assert_tree_all_finite(y)


def test_all_strategy_names_accepted():
    for s in ALL_STRATEGIES:
        assert callable(A.get_augment(s))
    assert A.get_augment("color_crop_cutout_flip_scale_rotate") is A.get_augment("dsa")


def test_none_is_identity(x):
    np.testing.assert_array_equal(_np(A.augment(x, jax.random.key(0), "none")), _np(x))


def test_unknown_strategy_raises(x):
    for bad in ("nope", "flip_nope", "dsa_flip", "color_"):
        with pytest.raises(JaxddError, match="valid strategies"):
            A.augment(x, jax.random.key(0), bad)
    with pytest.raises(JaxddError):
        A.get_augment("rotat")


def test_strategy_ops_names():
    assert A.strategy_ops("dsa") == ("color", "crop", "cutout", "flip", "scale", "rotate")
    assert A.strategy_ops("color_crop_cutout_flip_scale_rotate") == A.strategy_ops("dsa")
    assert A.strategy_ops("flip_rotate") == ("flip", "rotate")
    assert A.strategy_ops("none") == ()


# ---------------------------------------------------------------------------------------------- ops


def test_flip_flips_some_and_keeps_others():
    x = jax.random.normal(jax.random.key(3), (64, 5, 7, 2))
    y = _np(A.flip(x, jax.random.key(4)))
    xn, xf = _np(x), _np(x)[:, :, ::-1]
    flipped = [np.array_equal(y[i], xf[i]) for i in range(64)]
    kept = [np.array_equal(y[i], xn[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is exactly one of the two
    assert 16 < sum(flipped) < 48  # p = 0.5


def _shift(img, dy, dx):
    """out[i, j] = img[i + dy, j + dx], zeros outside (numpy reference)."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[i, j] = img[i + dy, j + dx]
    return out


def test_translate_explicit():
    x = jnp.arange(1, 2 * 6 * 5 * 1 + 1, dtype=jnp.float32).reshape(2, 6, 5, 1)
    y = _np(A.translate(x, jnp.array([2, -1]), jnp.array([-1, 2]), 2))
    np.testing.assert_array_equal(y[0], _shift(_np(x[0]), 2, -1))
    np.testing.assert_array_equal(y[1], _shift(_np(x[1]), -1, 2))
    assert (y[0, -2:] == 0).all() and (y[0, :, 0] == 0).all()  # zeros entered where shifted in


def test_crop_is_a_zero_filled_shift():
    h = 16  # r = round(0.125 * 16) = 2
    x = jnp.arange(1, 32 * h * h + 1, dtype=jnp.float32).reshape(32, h, h, 1)
    y = _np(A.crop(x, jax.random.key(5)))
    shifts = set()
    for i in range(32):
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(y[i], _shift(_np(x[i]), dy, dx))]
        assert len(match) == 1, f"sample {i} is not a shift by at most 2"
        shifts.add(match[0])
    assert len(shifts) > 5


def test_cutout_zeros_a_square():
    h = 12  # side = 6
    ones = jnp.ones((200, h, h, 2))
    y = _np(A.cutout(ones, jax.random.key(6)))
    assert set(np.unique(y)) <= {0.0, 1.0}
    interior = 0
    for i in range(200):
        z = y[i, :, :, 0] == 0
        np.testing.assert_array_equal(z, y[i, :, :, 1] == 0)  # same mask over channels
        rows, cols = np.nonzero(z)
        assert len(rows) > 0
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert z[r0:r1, c0:c1].all() and z.sum() == (r1 - r0) * (c1 - c0)  # a rectangle
        assert r1 - r0 <= 6 and c1 - c0 <= 6
        # sides shorter than 6 only where clipped by a border
        assert r1 - r0 == 6 or r0 == 0 or r1 == h
        assert c1 - c0 == 6 or c0 == 0 or c1 == h
        interior += z.sum() == 36
    assert interior > 25  # P(no clipping) = (7/13)^2: about 58 of 200


def test_identity_affine(x):
    ones = jnp.ones((B,))
    np.testing.assert_allclose(_np(A.affine(x, A.scale_matrix(ones, ones))), _np(x), atol=1e-6)
    np.testing.assert_allclose(_np(A.affine(x, A.rotation_matrix(jnp.zeros((B,))))), _np(x), atol=1e-6)
    np.testing.assert_allclose(_np(A.rotate(x, jax.random.key(0), max_degrees=0.0)), _np(x), atol=1e-6)
    np.testing.assert_allclose(_np(A.scale(x, jax.random.key(0), ratio=1.0)), _np(x), atol=1e-6)


@pytest.mark.parametrize("size", [7, 8])
def test_rotate_90_matches_rot90(size):
    x = jax.random.normal(jax.random.key(7), (3, size, size, 2))
    y = A.affine(x, A.rotation_matrix(jnp.full((3,), math.pi / 2)))
    np.testing.assert_allclose(_np(y), _np(jnp.rot90(x, k=1, axes=(1, 2))), atol=1e-5)


def test_scale_half_samples_centre():
    # theta = diag(0.5, 0.5) reads the central half: on a 9x9 image output pixel (i, j) reads (2 + i/2, 2 + j/2)
    x = jax.random.normal(jax.random.key(8), (2, 9, 9, 1))
    y = _np(A.affine(x, A.scale_matrix(jnp.full((2,), 0.5), jnp.full((2,), 0.5))))
    np.testing.assert_allclose(y[:, ::2, ::2], _np(x)[:, 2:7, 2:7], atol=1e-5)
    np.testing.assert_allclose(y[:, 1, 0], 0.5 * _np(x)[:, 2, 2] + 0.5 * _np(x)[:, 3, 2], atol=1e-5)
    # theta = 2 I reads outside for the border: zeros there
    z = _np(A.affine(x, A.scale_matrix(jnp.full((2,), 2.0), jnp.full((2,), 2.0))))
    assert np.all(z[:, 0] == 0) and np.all(z[:, :, -1] == 0)


def test_bilinear_sample_weights():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    v = A.bilinear_sample(x, jnp.array([[[0.5, 1.25, -0.5, 3.0]]]), jnp.array([[[0.5, 2.0, 0.0, 3.5]]]))
    # (0.5,0.5): mean of 0,1,4,5; (1.25,2): 0.75*6+0.25*10; (-0.5,0): half of x[0,0]; (3,3.5): half of 15
    np.testing.assert_allclose(_np(v).ravel(), [2.5, 7.0, 0.0, 7.5], atol=1e-6)


def _const(vals):
    """Batch of constant images: image b has value vals[b] in every pixel/channel."""
    vals = jnp.asarray(vals, jnp.float32)
    return jnp.broadcast_to(vals[:, None, None, None], (len(vals), 4, 4, 3))


def _u(key, n):
    """The per-sample uniforms an op draws from key (row 1 of the [4, n] draw)."""
    return _np(A._draw(key, n, False))[1]


def test_brightness_formula():
    x = _const([0.0, 1.0, -2.0, 0.5])
    y = _np(A.brightness(x, jax.random.key(9)))
    d = y - _np(x)
    assert np.allclose(d, d[:, :1, :1, :1])  # a per-sample constant offset
    off = d[:, 0, 0, 0]
    assert np.all((off >= -0.5) & (off < 0.5)) and np.ptp(off) > 0
    np.testing.assert_allclose(off, _np(A._draw(jax.random.key(9), 4, False))[1] - 0.5, atol=1e-6)
    np.testing.assert_allclose(_np(A.brightness(x, jax.random.key(9), strength=0.0)), _np(x))


def test_saturation_and_contrast_on_constant_images():
    # constant images equal their own means: both ops leave them unchanged
    x = _const([0.0, 1.0, -2.0, 0.5])
    np.testing.assert_allclose(_np(A.saturation(x, jax.random.key(10))), _np(x), atol=1e-6)
    np.testing.assert_allclose(_np(A.contrast(x, jax.random.key(11))), _np(x), atol=1e-6)


def test_saturation_formula():
    # pixel channels (1, 2, 3): channel mean 2; output = 2 + (c - 2) * 2u
    x = jnp.broadcast_to(jnp.array([1.0, 2.0, 3.0]), (5, 3, 3, 3))
    y = _np(A.saturation(x, jax.random.key(12)))
    g = 2 * _u(jax.random.key(12), 5)
    np.testing.assert_allclose(y[:, 1, 2], 2 + np.outer(g, [-1.0, 0.0, 1.0]), atol=1e-6)
    assert np.allclose(y, y[:, :1, :1])


def test_contrast_formula():
    # left half 0, right half 2: image mean 1; output = 1 + (x - 1) * (u + 0.5)
    x = jnp.concatenate([jnp.zeros((5, 4, 2, 3)), jnp.full((5, 4, 2, 3), 2.0)], axis=2)
    y = _np(A.contrast(x, jax.random.key(13)))
    f = _u(jax.random.key(13), 5) + 0.5
    np.testing.assert_allclose(y[:, 0, 0, 0], 1 - f, atol=1e-6)
    np.testing.assert_allclose(y[:, 0, 3, 0], 1 + f, atol=1e-6)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 1.0, atol=1e-6)


def test_color_composes_three(x):
    # brightness, then saturation, then contrast, with the three per-sample uniforms of the draw
    key = jax.random.key(14)
    u = _np(A._draw(key, B, False))[1:]
    xn = _np(x).astype(np.float64)
    xn = xn + (u[0] - 0.5)[:, None, None, None]
    m = xn.mean(-1, keepdims=True)
    xn = (xn - m) * (2 * u[1])[:, None, None, None] + m
    m = xn.mean((1, 2, 3), keepdims=True)
    xn = (xn - m) * (u[2] + 0.5)[:, None, None, None] + m
    np.testing.assert_allclose(_np(A.color(x, key)), xn, atol=1e-5)
    # on constant images saturation and contrast are identities: color == brightness
    c = _const([0.0, 1.0, -2.0])
    np.testing.assert_allclose(_np(A.color(c, key)), _np(A.brightness(c, key)), atol=1e-6)


def test_crop_flip_standard():
    x = jnp.arange(1, 40 * 8 * 8 + 1, dtype=jnp.float32).reshape(40, 8, 8, 1)
    y = _np(A.crop_flip(x, jax.random.key(15), pad=2))
    n_flipped = 0
    for i in range(40):
        cands = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in (0, 1)
                 if np.array_equal(y[i], (lambda s: s[:, ::-1] if f else s)(_shift(_np(x[i]), dy, dx)))]
        assert len(cands) == 1
        n_flipped += cands[0][2]
    assert 0 < n_flipped < 40


# ---------------------------------------------------------------------------------------------- autodiff, jit, vmap
# Strategies are vmapped over keys: lax.switch with a batched index evaluates every branch and
# selects, so one compilation checks all ops; op_index says which op each key chose.

KEYS = jax.random.split(jax.random.key(30), 24)


def _chosen(strategy, keys=KEYS, batch=B, siamese=False):
    ops = A.strategy_ops(strategy)
    idx = jax.vmap(lambda k: A.op_index(k, strategy, batch, siamese=siamese))(keys)
    return [ops[i] for i in _np(idx)]


@pytest.mark.parametrize("strategy", ("dsa", "brightness_saturation_contrast", "standard"))
def test_gradients_flow_to_x(strategy, x):
    fn = A.get_augment(strategy)
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) ** 2)))
    chosen = _chosen(strategy) if strategy != "standard" else ["standard"]
    first_key = {name: KEYS[chosen.index(name)] for name in set(chosen)}  # one key per op
    if strategy != "standard":
        assert set(first_key) == set(A.strategy_ops(strategy))  # every op is exercised
    for name, k in first_key.items():
        g = grad(x, k)
        chex.assert_shape(g, x.shape)
        chex.assert_tree_all_finite(g)
        assert float(jnp.abs(g).sum()) > 0, name


def test_affine_gradient_matches_finite_differences(x):
    key = jax.random.key(17)
    w = jax.random.normal(jax.random.key(18), x.shape)
    f = jax.jit(lambda x: jnp.sum(w * A.rotate(x, key)))  # linear in x: the gradient is exact under any step
    g = jax.jit(jax.grad(f))(x)
    d = jax.random.normal(jax.random.key(19), x.shape)
    np.testing.assert_allclose(float(jnp.vdot(g, d)), float(f(x + d) - f(x)), rtol=1e-3, atol=1e-3)


def test_jit_and_vmap(x):
    keys = KEYS[:5]
    fn = A.get_augment("dsa")
    ys = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(x, keys)
    chex.assert_shape(ys, (5,) + x.shape)
    for i in range(5):
        np.testing.assert_allclose(_np(ys[i]), _np(fn(x, keys[i])), atol=1e-5)
    # vmap over a population of batches too
    xs = jnp.stack([x, 2 * x])
    chex.assert_shape(jax.vmap(fn)(xs, keys[:2]), xs.shape)


def test_same_key_same_output(x):
    a = A.augment(x, jax.random.key(21), "dsa")
    b = jax.jit(lambda x, k: A.augment(x, k, "dsa"))(x, jax.random.key(21))
    np.testing.assert_allclose(_np(a), _np(b), atol=1e-6)
    np.testing.assert_array_equal(_np(a), _np(A.augment(x, jax.random.key(21), "dsa")))
    assert not np.allclose(_np(a), _np(A.augment(x, jax.random.key(22), "dsa")))


def test_switch_picks_several_ops(x):
    keys = jax.random.split(jax.random.key(23), 50)
    chosen = _chosen("dsa", keys)
    assert len(set(chosen)) >= 4
    # augment really applied that op, with the same parameters as the op called with the key
    for k, name in list(zip(keys, chosen))[:8]:
        np.testing.assert_allclose(_np(A.augment(x, k, "dsa")), _np(A.OPS[name](x, k)), atol=1e-5)


def test_flip_rotate_uses_both_ops(x):
    fn = A.get_augment("flip_rotate")
    xn, xf = _np(x), _np(x)[:, :, ::-1]
    kinds = []
    for k in jax.random.split(jax.random.key(24), 50):
        y = _np(fn(x, k))
        is_flip = all(np.array_equal(y[i], xn[i]) or np.array_equal(y[i], xf[i]) for i in range(B))
        kinds.append("flip" if is_flip else "rotate")
    assert set(kinds) == {"flip", "rotate"}
    assert 10 < kinds.count("flip") < 40


@pytest.mark.parametrize("strategy", ("dsa", "standard"))
def test_siamese_shares_parameters(strategy):
    one = jax.random.normal(jax.random.key(25), (1, 8, 8, 3))
    xb = jnp.repeat(one, 7, axis=0)
    fn = A.get_augment(strategy, siamese=True)
    y = _np(jax.jit(jax.vmap(fn, in_axes=(None, 0)))(xb, KEYS))  # [keys, 7, 8, 8, 3]
    np.testing.assert_allclose(y, np.broadcast_to(y[:, :1], y.shape), atol=1e-6)
    assert not np.allclose(y, np.broadcast_to(y[:1], y.shape))  # but keys differ
    if strategy != "standard":
        assert set(_chosen(strategy, siamese=True)) == set(A.strategy_ops(strategy))


def test_siamese_independent_of_batch_size():
    # a real and a synthetic batch of different sizes get the same transform under the same key
    draw = jax.jit(A._draw, static_argnums=(1, 2))
    k = jax.random.key(27)
    np.testing.assert_array_equal(_np(draw(k, 7, True))[:, :3], _np(draw(k, 3, True)))
    x = jax.random.normal(jax.random.key(28), (7, 8, 8, 3))
    np.testing.assert_allclose(_np(A.rotate(x[:3], k, siamese=True)), _np(A.rotate(x, k, siamese=True))[:3], atol=1e-6)
