"""The unroll core and the BPTT estimators: meta-gradients checked against numbers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import python_unroll, tiny_inner_problem
from jaxdd import inner, outer
from jaxdd.methods import bptt
from jaxdd.models import make_model
from jaxdd.unroll import run_prefix, run_window, unroll

IPC, C, HW = 2, 3, 4


def _problem(optimizer, dtype=jnp.float64, total=6):
    return tiny_inner_problem(optimizer, dtype, total, width=8, seed=3, real=12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("prefix", [0, 2])
def test_window_meta_gradient_matches_finite_differences(optimizer, prefix):
    with jax.enable_x64(True):
        model, cfg, params, state, images, labels, real_x, real_y = _problem(optimizer)
        window = 3
        # the library's estimator (VJP with chunked λ) against central differences of f
        grads, _ = bptt.meta_gradient(model, cfg, {"images": images}, {"labels": labels}, params, state, real_x,
                                      real_y, jax.random.key(7), prefix, window=window, remat="full", chunk=4)
        # meta_gradient splits its key: rebuild the same per-step keys for the reference
        k_steps, _ = jax.random.split(jax.random.key(7))
        xs = jax.random.split(k_steps, cfg.total_steps)
        step = inner.make_step(model, cfg, {"labels": labels})
        carry_n = run_prefix(step, inner.init_carry(params, state, cfg), {"images": images}, xs, prefix)

        def g(imgs):
            end = run_window(step, carry_n, {"images": imgs}, xs, start=prefix, window=window, remat=False)
            logits, _ = model.apply(end.params, end.model_state, real_x, True)
            return inner.cross_entropy(logits, real_y)

        rng = np.random.default_rng(0)
        for _ in range(3):
            v = jnp.asarray(rng.normal(size=images.shape))
            eps = 1e-6  # 5-point central stencil; Adam is very curved where inner gradients are tiny
            fd = (-g(images + 2 * eps * v) + 8 * g(images + eps * v) - 8 * g(images - eps * v)
                  + g(images - 2 * eps * v)) / (12 * eps)
            an = jnp.vdot(grads["images"], v)
            np.testing.assert_allclose(an, fd, rtol=1e-7, atol=1e-9)  # f ≈ 2: round-off/eps ≈ 2e-10
        assert float(jnp.abs(grads["images"]).max()) > 0


def test_scan_unroll_equals_python_loop_and_remat_is_exact():
    with jax.enable_x64(True):
        model, cfg, params, state, images, labels, real_x, real_y = _problem("adam")
        xs = jax.random.split(jax.random.key(1), cfg.total_steps)
        step = inner.make_step(model, cfg, {"labels": labels})
        carry0 = inner.init_carry(params, state, cfg)

        def loss(images, unroller, **kw):
            end = unroller(step, carry0, {"images": images}, xs, prefix=2, window=4, **kw)
            logits, _ = model.apply(end.params, end.model_state, real_x, True)
            return inner.cross_entropy(logits, real_y)

        ref = jax.grad(loss)(images, python_unroll)
        for remat in (True, False, "dots"):
            got = jax.grad(loss)(images, unroll, remat=remat)
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)
        chex.assert_shape(ref, images.shape)


def test_tbptt_with_full_window_equals_full_bptt():
    from jaxdd import truncation

    with jax.enable_x64(True):
        model, cfg, params, state, images, labels, real_x, real_y = _problem("adam", total=5)
        full, fixed = truncation.full(5), truncation.fixed(5, 5)
        assert fixed.sample(fixed.init(), jax.random.key(0))[0] == 0
        g_full, _ = bptt.meta_gradient(model, cfg, {"images": images}, {"labels": labels}, params, state, real_x,
                                       real_y, jax.random.key(2), full.sample(full.init(), None)[0], window=5)
        g_fixed, _ = bptt.meta_gradient(model, cfg, {"images": images}, {"labels": labels}, params, state,
                                        real_x, real_y, jax.random.key(2), fixed.sample(fixed.init(), None)[0],
                                        window=5)
        np.testing.assert_allclose(g_full["images"], g_fixed["images"], rtol=1e-12)


def test_random_prefix_does_not_recompile():
    model, cfg, params, state, images, labels, real_x, real_y = _problem("adam", dtype=jnp.float32, total=8)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def meta(images, prefix):
        g, _ = bptt.meta_gradient(model, cfg, {"images": images}, {"labels": labels}, params, state, real_x,
                                  real_y, jax.random.key(0), prefix, window=3)
        return g["images"]

    outs = [meta(images, jnp.int32(n)) for n in (0, 3, 5)]
    assert meta._cache_size() == 1
    # different prefixes give different meta-gradients (the prefix really ran)
    assert not np.allclose(outs[0], outs[2])


def test_chunked_outer_gradient_equals_unchunked():
    model = make_model("convnet", image_shape=(8, 8, 1), num_classes=C, width=4, depth=2)
    params, state = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (24, 8, 8, 1))
    y = jax.random.randint(jax.random.key(2), (24,), 0, C)
    full = outer.outer_grad(model, params, state, x, y)
    for chunk in (4, 12):
        part = outer.outer_grad(model, params, state, x, y, chunk=chunk)
        chex.assert_trees_all_close(part, full, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal_shapes(full[0], params)


def test_adam_with_zero_eps_root_gives_nan_meta_gradient_and_safe_variants_do_not():
    """Why eps_root > 0 (optax) or a safe square root (jaxdd.optim): an exactly-zero inner gradient entry.

    The zeros are built on purpose: the second input channel is zero in every synthetic image, so the
    first conv's weights on it get an exactly-zero gradient on any machine (conv biases before instance
    norm are zero only up to round-off, which differs between CPUs).
    """
    from adam_unroll import meta_loss_fn
    from jaxdd import optim

    model = make_model("convnet", image_shape=(8, 8, 2), num_classes=C, width=4, depth=1)
    params, state = model.init(jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (C * IPC, 8, 8, 2)).at[..., 1].set(0.0)
    labels = jnp.repeat(jnp.arange(C), IPC)
    rx = jax.random.normal(jax.random.key(2), (6, 8, 8, 2))
    ry = jnp.arange(6) % C
    for eps_root, finite in ((0.0, False), (1e-8, True)):
        cfg = inner.InnerConfig(optimizer="adam", adam="optax", eps_root=eps_root, ipc=IPC, num_classes=C,
                                total_steps=3)
        g, _ = bptt.meta_gradient(model, cfg, {"images": images}, {"labels": labels}, params, state, rx, ry,
                                  jax.random.key(0), 0, window=3)
        assert bool(jnp.isfinite(g["images"]).all()) == finite, eps_root
    for kind, eps_root, finite in (("optax", 0.0, False), ("torch", 0.0, True), ("higher", 0.0, True)):
        f = meta_loss_fn(model, optim.inner_adam_direction(kind, eps_root=eps_root), lr=1e-3, labels=labels,
                         real_x=rx, real_y=ry, window=3, total=3)
        g = jax.grad(f)(images, params, state, 0)
        assert bool(jnp.isfinite(g).all()) == finite, kind
        assert not finite or float(jnp.abs(g[..., 0]).max()) > 0


def test_inner_batch_sampling_is_class_major_and_without_replacement():
    cfg = inner.InnerConfig(ipc=5, num_classes=4, per_class=3, classes_per_step=2)
    idx = np.asarray(inner.sample_inner_batch(jax.random.key(0), cfg))
    chex.assert_shape(idx, (6,))
    classes = idx // 5
    assert len(set(classes.tolist())) == 2
    for c in set(classes.tolist()):
        rows = idx[classes == c]
        assert len(set(rows.tolist())) == 3  # without replacement within a class


def test_grad_norm_statistics_are_recorded_per_step():
    model, cfg, params, state, images, labels, real_x, real_y = _problem("sgd", dtype=jnp.float32)
    _, m = bptt.meta_gradient(model, cfg, {"images": images}, {"labels": labels}, params, state, real_x, real_y,
                              jax.random.key(0), 2, window=3)
    norms = np.asarray(m["grad_norms"])
    chex.assert_shape(norms, (cfg.total_steps,))
    assert (norms[:5] > 0).all() and norms[5] == 0  # 2 prefix + 3 window steps ran, step 5 did not
