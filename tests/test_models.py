"""Convolution implementations and the fused instance norm: same numbers as the plain formulas, to third order."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import TEST_CONVS
from jaxdd import models, xla_options
from jaxdd.models import conv2d, instance_norm, make_model


def derivatives(f, x, w):
    """f(x, w), its gradient, and gradients of functions of the gradients (second and third order)."""
    def loss(x, w):
        return jnp.sum(jnp.sin(f(x, w)))

    g = jax.grad(loss, (0, 1))
    h = jax.grad(lambda x, w: sum(jnp.sum(jnp.cos(t)) for t in g(x, w)), (0, 1))
    h3 = jax.grad(lambda x, w: sum(jnp.sum(jnp.sin(t)) for t in h(x, w)), (0, 1))
    return f(x, w), g(x, w), h(x, w), h3(x, w)


def max_rel_err(a, b):
    return max(float(jnp.max(jnp.abs(p - q)) / jnp.max(jnp.abs(q))) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("impl", ["native", *TEST_CONVS])
@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 0, 1), (1, 0, 3), (1, 2, 3)])
def test_conv_impls_match_xla_to_third_order(impl, stride, padding, k, monkeypatch):
    """The library's "native" convolution, and the tests' im2col ("shifted") and per-tap ("taps") references
    looked up by name through `models.CONVS` as a model would, against XLA's."""
    if impl in TEST_CONVS:
        monkeypatch.setitem(models.CONVS, impl, TEST_CONVS[impl])
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((2, 9, 9, 3)))
        w = jnp.asarray(rng.standard_normal((k, k, 3, 5)))
        got = derivatives(lambda x, w: conv2d(x, w, stride=stride, padding=padding, impl=impl), x, w)
        ref = derivatives(lambda x, w: conv2d(x, w, stride=stride, padding=padding, impl="xla"), x, w)
        assert max_rel_err(got, ref) < 1e-11


def test_fused_instance_norm_matches_autodiff_to_third_order():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((3, 5, 4, 6)))
        scale, shift = jnp.asarray(rng.standard_normal(6)), jnp.asarray(rng.standard_normal(6))

        def plain(x, s):
            xhat, _ = models._instance_norm_parts(x, 1e-5)
            return xhat * s + shift

        got = derivatives(lambda x, s: instance_norm(x, s, shift, 1e-5), x, scale)
        ref = derivatives(plain, x, scale)
        assert max_rel_err(got, ref) < 1e-10
        # the shift gradient too
        gs = jax.grad(lambda b: jnp.sum(jnp.sin(instance_norm(x, scale, b, 1e-5))))(shift)
        gr = jax.grad(lambda b: jnp.sum(jnp.sin(plain(x, scale) - shift + b)))(shift)
        np.testing.assert_allclose(gs, gr, rtol=1e-12)


def test_native_conv_keeps_every_convolution_forward_shaped_in_a_differentiated_scan():
    """The kernel-gradient convolutions of lax.conv's own VJP run as a naive loop inside XLA:CPU loops
    (jax-ml/jax#12868); "native" must leave only forward-shaped (b01f_01io->b01f) convolutions."""
    model = make_model("convnet", image_shape=(8, 8, 1), num_classes=10, width=4, depth=2, conv="native")
    params, state = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
    y = jnp.arange(6) % 10

    def inner_loss(p, x):
        return jnp.mean(jax.nn.log_softmax(model.apply(p, state, x)[0])[jnp.arange(6), y])

    def unrolled(x):
        def body(p, _):
            g = jax.grad(inner_loss)(p, x)
            return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), None
        p, _ = jax.lax.scan(body, params, None, length=3)
        return inner_loss(p, x)

    text = jax.jit(jax.grad(unrolled)).lower(x).compile().as_text()
    labels = re.findall(r"dim_labels=([\w>-]+)", text)
    assert labels and set(labels) == {"b01f_01io->b01f"}


def test_auto_is_native_on_cpu_and_fused_norm_follows_it():
    assert models.resolve_conv_impl("auto") == ("native" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(Exception, match="unknown conv implementation"):
        models.resolve_conv_impl("winograd")
    # fused norm or not, the same logits
    shape = (8, 8, 1)
    a = make_model("convnet", image_shape=shape, num_classes=10, width=4, depth=2, conv="native")
    b = make_model("convnet", image_shape=shape, num_classes=10, width=4, depth=2, conv="xla", fused_norm=False)
    params, state = a.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5,) + shape)
    np.testing.assert_allclose(a.apply(params, state, x)[0], b.apply(params, state, x)[0], rtol=1e-5, atol=1e-6)


def test_xla_options(monkeypatch):
    opts = xla_options.compiler_options("cpu")
    assert opts in ({}, xla_options.CPU_COMPILER_OPTIONS)  # {} only if this jaxlib rejects the option
    assert xla_options.compiler_options("gpu") == {}
    monkeypatch.setenv(xla_options.ENV_OFF, "0")
    assert xla_options.compiler_options("cpu") == {}
    f = xla_options.jit(lambda v: v * 2)
    assert float(f(jnp.float32(3))) == 6.0


def test_configure_cpu_sets_the_thread_pool_size(monkeypatch):
    monkeypatch.delenv("NPROC", raising=False)
    done = xla_options.configure_cpu(threads=1, malloc=False)
    assert done == {"NPROC": 1}
    import os
    assert os.environ["NPROC"] == "1"
