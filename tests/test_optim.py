"""jaxdd.optim: torch.optim.Adam's forward, and meta-gradients that stay finite at exactly-zero gradients.

The exact zeros are built on purpose (an input feature that is zero in every synthetic image, and a
parameter that does not enter the loss), so no check depends on where round-off happens to land.
"""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adam_unroll import meta_loss_fn
from jaxdd import optim
from jaxdd.errors import JaxddError

LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8


def _gradient_sequence(steps=8):
    """Gradients for a pytree {'a': [6], 'b': [2, 3]}: exact zeros, entries that start at zero, tiny and large ones."""
    rng = np.random.default_rng(0)
    seq = []
    for t in range(steps):
        a = rng.standard_normal(6) * np.array([0.0, 1.0, 1e-9, 1e-12, 1e3, 1.0])
        a[5] = 0.0 if t < 3 else a[5]  # zero for three steps, then non-zero
        b = rng.standard_normal((2, 3)) * 10.0 ** rng.integers(-10, 2, (2, 3))
        seq.append({"a": a, "b": b})
    return seq


def _run(tx, p0, grads):
    """Parameters after each step of p ← p − LR · u (float64)."""
    p, state, out = jax.tree.map(jnp.asarray, p0), tx.init(jax.tree.map(jnp.asarray, p0)), []
    for g in grads:
        u, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = jax.tree.map(lambda a, b: a - LR * b, p, u)
        out.append(jax.tree.map(np.asarray, p))
    return out


def test_forward_equals_torch_adam_in_float64():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = {"a": rng.standard_normal(6), "b": rng.standard_normal((2, 3))}
    grads = _gradient_sequence()
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p0.items()}
    opt = torch.optim.Adam(list(tp.values()), lr=LR, betas=(B1, B2), eps=EPS)
    expected = []
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k], dtype=torch.float64)
        opt.step()
        expected.append({k: t.detach().numpy().copy() for k, t in tp.items()})
    with jax.enable_x64(True):
        ours = _run(optim.scale_by_torch_adam(B1, B2, EPS), p0, grads)
        plain = _run(optax.scale_by_adam(B1, B2, EPS, eps_root=0.0), p0, grads)
        floored = _run(optax.scale_by_adam(B1, B2, EPS, eps_root=1e-8), p0, grads)
    for got, want in zip(ours, expected):
        chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-14)
    # optax with eps_root = 0 has the same forward (its backward is the problem) ...
    chex.assert_trees_all_close(plain[-1], expected[-1], rtol=1e-12, atol=1e-14)
    # ... eps_root = 1e-8 does not: the 1e-9 entry moves ~1e3 times less than torch moves it
    moved_torch = abs(expected[-1]["a"][2] - p0["a"][2])
    moved_floored = abs(floored[-1]["a"][2] - p0["a"][2])
    assert moved_torch > 100 * moved_floored, (moved_torch, moved_floored)
    np.testing.assert_array_equal(ours[-1]["a"][0], p0["a"][0])  # an exactly-zero gradient never moves it


def test_higher_variant_adds_eps_before_the_bias_correction():
    rng = np.random.default_rng(2)
    p0 = {"a": rng.standard_normal(6), "b": rng.standard_normal((2, 3))}
    grads = _gradient_sequence()
    p, m, v = dict(p0), {k: 0 * x for k, x in p0.items()}, {k: 0 * x for k, x in p0.items()}
    expected = []
    for t, g in enumerate(grads, 1):  # Kingma & Ba's "efficient" form: lr · √c2 / c1 · m / (√v + eps)
        for k in p:
            m[k] = B1 * m[k] + (1 - B1) * g[k]
            v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
            p[k] = p[k] - LR * np.sqrt(1 - B2**t) / (1 - B1**t) * m[k] / (np.sqrt(v[k]) + EPS)
        expected.append(dict(p))
    with jax.enable_x64(True):
        got = _run(optim.inner_adam_direction("higher", B1, B2, EPS), p0, grads)
        torch_kind = _run(optim.inner_adam_direction("torch", B1, B2, EPS), p0, grads)
    for a, b in zip(got, expected):
        chex.assert_trees_all_close(a, b, rtol=1e-12, atol=1e-14)
    # the two forms differ only where √v̂ is comparable to eps: the 1e-9-gradient entry
    assert abs(got[-1]["a"][2] - torch_kind[-1]["a"][2]) > 1e-4 * abs(torch_kind[-1]["a"][2] - p0["a"][2])
    np.testing.assert_allclose(got[-1]["a"][1], torch_kind[-1]["a"][1], rtol=1e-7)


def test_bias_correction_is_accurate_in_float32():
    for decay in (0.9, 0.999):
        for count in (1, 2, 10, 1000):
            got = optim.bias_correction(decay, jnp.int32(count), jnp.float32)
            assert got.dtype == jnp.float32
            np.testing.assert_allclose(float(got), 1.0 - decay**count, rtol=3e-7)
    assert float(optim.bias_correction(0.0, jnp.int32(1), jnp.float32)) == 1.0


def test_safe_sqrt_value_and_derivative():
    with jax.enable_x64(True):
        x = jnp.array([0.0, 1e-300, 4.0])
        np.testing.assert_allclose(optim.safe_sqrt(x), jnp.sqrt(x), rtol=1e-15)
        d = jax.vmap(jax.grad(optim.safe_sqrt))(x)
        assert float(d[0]) == 0.0 and bool(jnp.isfinite(d).all())
        np.testing.assert_allclose(d[2], 0.25, rtol=1e-15)


# ------------------------------------------------------------------------------------ meta-gradients

D, ZERO, H, C, N, REAL = 6, 2, 5, 3, 6, 8  # the last ZERO input features are zero in every synthetic image
TOTAL, PREFIX, WINDOW, INNER_LR = 4, 0, 4, 0.05  # prefix 0: finite differences see every step


def _mlp(d):
    def apply(params, state, x, train=True):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return h @ params["w2"] + params["b2"], state

    return types.SimpleNamespace(apply=apply, d=d)


def _meta_problem():
    rng = np.random.default_rng(3)
    params = {"w1": rng.standard_normal((D, H)) / 2, "b1": rng.standard_normal(H) / 4,
              "w2": rng.standard_normal((H, C)) / 2, "b2": np.zeros(C), "unused": rng.standard_normal(4)}
    images = rng.standard_normal((N, D))
    images[:, D - ZERO:] = 0.0
    labels = np.arange(N) % C
    real_x, real_y = rng.standard_normal((REAL, D)), rng.integers(0, C, REAL)
    return jax.tree.map(jnp.asarray, (params, images, labels, real_x, real_y))


def _meta_grad(kind, params, images, labels, real_x, real_y, eps_root=1e-8):
    f = meta_loss_fn(_mlp(images.shape[1]), optim.inner_adam_direction(kind, eps_root=eps_root), lr=INNER_LR,
                     labels=labels, real_x=real_x, real_y=real_y, window=WINDOW, total=TOTAL)
    return f, jax.grad(f)(images, params, {}, PREFIX)


@pytest.mark.parametrize("kind", ["torch", "higher"])
def test_meta_gradient_is_finite_at_exact_zeros_and_matches_finite_differences(kind):
    with jax.enable_x64(True):
        params, images, labels, real_x, real_y = _meta_problem()
        # the zeros are real: optax's Adam with eps_root = 0 gives NaN on this problem
        _, g_nan = _meta_grad("optax", params, images, labels, real_x, real_y, eps_root=0.0)
        assert not bool(jnp.isfinite(g_nan).all())

        f, g = _meta_grad(kind, params, images, labels, real_x, real_y)
        chex.assert_shape(g, images.shape)
        chex.assert_tree_all_finite(g)
        rng = np.random.default_rng(4)
        for _ in range(3):
            v = rng.standard_normal(images.shape)
            v[:, D - ZERO:] = 0.0  # perturb the non-zero part only: the zero features stay exactly zero
            v = jnp.asarray(v)
            h = 1e-5
            fd = (-f(images + 2 * h * v, params, {}, PREFIX) + 8 * f(images + h * v, params, {}, PREFIX)
                  - 8 * f(images - h * v, params, {}, PREFIX) + f(images - 2 * h * v, params, {}, PREFIX)) / (12 * h)
            np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=1e-7, atol=1e-12)


def test_inner_adam_direction_kinds_and_errors():
    for kind in optim.INNER_ADAM_KINDS:
        tx = optim.inner_adam_direction(kind)
        u, _ = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.zeros(3)}))
        np.testing.assert_allclose(u["w"], 1.0, rtol=1e-3)  # first Adam step: m̂/√v̂ = sign(g)
    for call, match in [(lambda: optim.inner_adam_direction("adamw"), r"unknown inner Adam 'adamw': use one of torch"),
                        (lambda: optim.scale_by_torch_adam(b2=1.0), r"betas must lie in \[0, 1\)"),
                        (lambda: optim.scale_by_torch_adam(eps=0.0), r"eps must be positive")]:
        with pytest.raises(JaxddError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


def test_authors_kind_is_torch_within_the_prefix_and_higher_after_in_float64():
    """--inner-adam authors against a plain numpy re-computation of RaT-BPTT's authors' mix: torch.optim.Adam's
    formula (eps after the bias correction) for Adam counts 1..prefix, higher 0.2.1's (eps before it) after, one
    state throughout; for prefix 0 it is "higher", for prefix >= T "torch"."""
    b1, b2, eps, steps = 0.9, 0.999, 1e-3, 7  # a large eps, so that the two formulas differ visibly
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(5) * 10.0 ** rng.uniform(-4, 0, 5) for _ in range(steps)]
    with jax.enable_x64(True):
        for prefix in (0, 3, steps):
            opt = optim.inner_adam_direction("authors", b1, b2, eps)
            state = optim.with_switch(opt.init(jnp.zeros(5)), prefix)
            m, v = np.zeros(5), np.zeros(5)
            for t, g in enumerate(grads, start=1):
                out, state = opt.update(jnp.asarray(g), state)
                m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                c1, c2 = 1 - b1 ** t, 1 - b2 ** t
                want = (m / c1) / (np.sqrt(v / c2) + eps) if t <= prefix else (m / c1) * np.sqrt(c2) / (np.sqrt(v) + eps)
                np.testing.assert_allclose(np.asarray(out), want, rtol=1e-12, atol=0)
        torch_out = optim.inner_adam_direction("torch", b1, b2, eps).update(jnp.asarray(grads[0]),
                                                                            optim.inner_adam_direction("torch", b1, b2, eps).init(jnp.zeros(5)))[0]
        higher_out = optim.inner_adam_direction("higher", b1, b2, eps).update(jnp.asarray(grads[0]),
                                                                              optim.inner_adam_direction("higher", b1, b2, eps).init(jnp.zeros(5)))[0]
        assert float(jnp.abs(torch_out - higher_out).max()) > 1e-6  # the check can tell the formulas apart


def test_authors_kind_switches_at_the_members_prefix_inside_the_meta_gradient():
    """bptt.meta_gradient sets the switch to the member's prefix (one compile for every prefix): with prefix 0 the
    "authors" meta-gradient is "higher"'s; with a prefix it is neither "higher"'s nor "torch"'s."""
    from jaxdd import inner
    from jaxdd.methods.bptt import meta_gradient
    from jaxdd.models import make_model

    with jax.enable_x64(True):
        model = make_model("convnet", image_shape=(4, 4, 1), num_classes=2, width=2, depth=1)
        params, state = model.init(jax.random.key(0))
        rng = np.random.default_rng(0)
        theta = {"images": jnp.asarray(rng.standard_normal((4, 4, 4, 1)))}
        consts = {"labels": jnp.array([0, 0, 1, 1])}
        x, y = jnp.asarray(rng.standard_normal((6, 4, 4, 1))), jnp.array([0, 1, 0, 1, 0, 1])

        def grad(kind, prefix):
            cfg = inner.InnerConfig(adam=kind, lr=1e-2, eps=1e-3, ipc=2, num_classes=2, total_steps=5)
            fn = jax.jit(lambda p: meta_gradient(model, cfg, theta, consts, params, state, x, y, jax.random.key(1), p,
                                                 window=2)[0]["images"])
            return np.asarray(fn(prefix))

        np.testing.assert_allclose(grad("authors", 0), grad("higher", 0), rtol=1e-12, atol=1e-15)
        mixed, torch_g, higher_g = grad("authors", 3), grad("torch", 3), grad("higher", 3)
        assert np.abs(mixed - torch_g).max() > 1e-9 * np.abs(mixed).max()
        assert np.abs(mixed - higher_g).max() > 1e-9 * np.abs(mixed).max()
    from jaxdd import presets

    assert presets.preset("rat-bptt", "cifar10", 10, published=True).inner_adam == "authors"  # the published default
