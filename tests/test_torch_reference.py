"""jaxdd's RaT-BPTT meta-gradient against the PyTorch reference in benchmarks/torch_reference.py.

Both get the same initial weights (jaxdd's, converted NHWC/HWIO -> NCHW/OIHW), the same synthetic set,
real batch and prefix; the meta-gradients d L / d images must agree to 1e-4 relative in float32, both
with optax's inner Adam (eps_root inside the root) and with torch.optim.Adam's semantics (jaxdd.optim
against the reference's `torch_adam_update`, also where inner gradients are exactly zero).
"""

import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import torch_reference as tr  # noqa: E402

from jaxdd.methods import bptt  # noqa: E402
from jaxdd.models import make_model  # noqa: E402
from jaxdd.methods.bptt import BPTTSettings as Settings  # noqa: E402

SHAPE = (8, 8, 1)
C, IPC, WIDTH, DEPTH = 10, 2, 8, 2
T, W, PREFIX, REAL = 6, 3, 2, 32
TOL = 1e-4


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((C * IPC,) + SHAPE).astype(np.float32)
    labels = np.repeat(np.arange(C), IPC).astype(np.int32)  # class-major
    real_x = rng.standard_normal((REAL,) + SHAPE).astype(np.float32)
    real_y = rng.integers(0, C, REAL).astype(np.int32)
    model = make_model("convnet", image_shape=SHAPE, num_classes=C, width=WIDTH, depth=DEPTH)
    params0, state0 = model.init(jax.random.key(1))
    settings = Settings(inner_adam="optax", unroll_steps=T, window=W, per_class=0, classes_per_step=0, augment="none",
                        real_augment="none", width=WIDTH, depth=DEPTH)
    cfg = bptt.inner_config(settings, IPC, C)

    compiled = {}

    def jax_grad(prefix, key, window=W, chunk=None):
        if (window, chunk) not in compiled:  # one compilation per (window, chunk); the prefix is traced
            compiled[window, chunk] = jax.jit(lambda th, co, p, s, x, y, k, n: bptt.meta_gradient(
                model, cfg, th, co, p, s, x, y, k, n, window=window, remat="full", chunk=chunk))
        g, m = compiled[window, chunk]({"images": jnp.asarray(images)}, {"labels": jnp.asarray(labels)}, params0, state0,
                  jnp.asarray(real_x), jnp.asarray(real_y), key, jnp.asarray(prefix, jnp.int32))
        return np.asarray(g["images"]), float(m["loss"])

    tmodel = tr.ConvNet(SHAPE, C, width=WIDTH, depth=DEPTH)
    tparams = tr.params_from_jaxdd(jax.tree.map(np.asarray, params0), SHAPE, width=WIDTH, depth=DEPTH)
    timages = tr.nhwc_to_nchw(images)

    def torch_grad(prefix, window=W, chunk=None):
        g, loss = tr.meta_gradient(tmodel, tparams, timages, torch.from_numpy(labels).long(),
                                   tr.nhwc_to_nchw(real_x), torch.from_numpy(real_y).long(),
                                   prefix=prefix, window=window, lr=cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                   eps_root=cfg.eps_root, chunk=chunk)
        return tr.nchw_to_nhwc(g), loss

    return dict(model=model, params0=params0, state0=state0, tmodel=tmodel, tparams=tparams, real_x=real_x,
                real_y=real_y, jax_grad=jax_grad, torch_grad=torch_grad, images=images)


def test_converted_network_computes_the_same_logits(problem):
    logits, _ = problem["model"].apply(problem["params0"], problem["state0"], jnp.asarray(problem["real_x"]), True)
    tlogits = torch.func.functional_call(problem["tmodel"], problem["tparams"],
                                         (tr.nhwc_to_nchw(problem["real_x"]),)).detach().numpy()
    chex.assert_shape(tlogits, (REAL, C))
    assert rel_err(tlogits, logits) < 1e-5
    assert sum(v.numel() for v in problem["tparams"].values()) == problem["model"].num_params \
        == tr.num_params(SHAPE, C, width=WIDTH, depth=DEPTH)


def test_rat_bptt_meta_gradient_matches_torch(problem):
    g, loss = problem["jax_grad"](PREFIX, jax.random.key(3))
    tg, tloss = problem["torch_grad"](PREFIX)
    chex.assert_shape([g, tg], (C * IPC,) + SHAPE)
    chex.assert_tree_all_finite(g)
    assert np.linalg.norm(g) > 0
    assert rel_err(g, tg) <= TOL, rel_err(g, tg)
    assert abs(loss - tloss) <= 1e-5 * max(1.0, abs(tloss))


def test_keys_do_not_matter_without_augmentation_and_with_full_inner_batches(problem):
    """per_class = ipc, all classes, augment none: sample_inner_batch is arange, the key is unused."""
    g1, l1 = problem["jax_grad"](PREFIX, jax.random.key(3))
    g2, l2 = problem["jax_grad"](PREFIX, jax.random.key(12345))
    np.testing.assert_array_equal(g1, g2)
    assert l1 == l2


def test_full_bptt_and_chunked_outer_gradient_match_torch(problem):
    g, loss = problem["jax_grad"](0, jax.random.key(0), window=T, chunk=8)
    tg, tloss = problem["torch_grad"](0, window=T, chunk=8)
    assert rel_err(g, tg) <= TOL, rel_err(g, tg)
    assert abs(loss - tloss) <= 1e-5 * max(1.0, abs(tloss))
    tg_direct, tloss_direct = problem["torch_grad"](0, window=T)  # chunked λ trick is exact in torch too
    assert rel_err(tg_direct, tg) <= 1e-5
    assert abs(tloss_direct - tloss) <= 1e-5


def test_comparison_detects_a_wrong_prefix(problem):
    """The check can fail: one prefix step more or less changes the meta-gradient far beyond the tolerance."""
    g, _ = problem["jax_grad"](PREFIX, jax.random.key(3))
    for wrong in (PREFIX - 1, PREFIX + 1):
        tg, _ = problem["torch_grad"](wrong)
        assert rel_err(g, tg) > 100 * TOL, (wrong, rel_err(g, tg))


# ------------------------------------------------------------------------------ torch-semantics inner Adam


def _torch_semantics_grads(problem, images, real_x, real_y, params0=None, state0=None, model=None, *,
                           prefix=PREFIX, x64=False):
    """(jaxdd with optim.scale_by_torch_adam, torch reference with adam="torch") meta-gradients, NHWC.

    x64: both sides in float64 (inputs and initial weights are the float32 ones, widened).
    """
    from adam_unroll import meta_loss_fn
    from jaxdd import optim

    model = model or problem["model"]
    params0 = problem["params0"] if params0 is None else params0
    state0 = problem["state0"] if state0 is None else state0
    labels = np.repeat(np.arange(C), IPC)
    dtype, tdtype = (np.float64, torch.float64) if x64 else (np.float32, torch.float32)
    with jax.enable_x64(x64):
        f = meta_loss_fn(model, optim.inner_adam_direction("torch"), lr=1e-3, labels=jnp.asarray(labels),
                         real_x=jnp.asarray(real_x, dtype), real_y=jnp.asarray(real_y), window=W, total=T)
        g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(images, dtype), jax.tree.map(lambda a: jnp.asarray(a, dtype),
                                                                                     params0), state0, prefix))
    shape, depth = images.shape[1:], len(params0["convs"])
    tmodel = tr.ConvNet(shape, C, width=WIDTH, depth=depth).to(tdtype)
    tparams = tr.params_from_jaxdd(jax.tree.map(np.asarray, params0), shape, width=WIDTH, depth=depth)
    tg, _ = tr.meta_gradient(tmodel, {k: v.to(tdtype) for k, v in tparams.items()}, tr.nhwc_to_nchw(images).to(tdtype),
                             torch.from_numpy(labels).long(), tr.nhwc_to_nchw(real_x).to(tdtype),
                             torch.from_numpy(np.asarray(real_y)).long(), prefix=prefix, window=W, lr=1e-3,
                             adam="torch")
    return g, tr.nchw_to_nhwc(tg)


def test_torch_semantics_adam_meta_gradient_matches_torch(problem):
    g, tg = _torch_semantics_grads(problem, problem["images"], problem["real_x"], problem["real_y"])
    chex.assert_tree_all_finite([g, tg])
    assert rel_err(g, tg) <= TOL, rel_err(g, tg)
    # the check can tell the two inner Adams apart: eps_root = 1e-8 gives a different meta-gradient
    g_optax, _ = problem["jax_grad"](PREFIX, jax.random.key(3))
    assert rel_err(g_optax, tg) > 10 * TOL, rel_err(g_optax, tg)


def test_torch_semantics_adam_agrees_at_exact_zeros_in_float64(problem, monkeypatch):
    """A zero second input channel in every synthetic image: exactly-zero inner gradients on both sides.

    In float64 the two agree to round-off (measured 1e-15 overall, 5e-14 on the non-zero channel); in
    float32 each side is ~1e-5 from its float64 value, which is all the 1e-4 checks above allow for.
    """
    rng = np.random.default_rng(1)
    shape = SHAPE[:2] + (2,)
    images = rng.standard_normal((C * IPC,) + shape).astype(np.float32)
    images[..., 1] = 0.0
    real_x = rng.standard_normal((REAL,) + shape).astype(np.float32)
    model = make_model("convnet", image_shape=shape, num_classes=C, width=WIDTH, depth=DEPTH)
    params0, state0 = model.init(jax.random.key(2))
    args = (problem, images, real_x, problem["real_y"], params0, state0, model)
    g, tg = _torch_semantics_grads(*args, x64=True)
    chex.assert_tree_all_finite([g, tg])
    # the zero channel's meta-gradient is ~1/eps larger (d u / d g = 1 / (c1·eps) at g = 0) and dominates
    # the norm: check the other channel on its own too
    assert np.abs(g[..., 1]).max() > 1e3 * np.abs(g[..., 0]).max()
    assert rel_err(g, tg) <= 1e-10, rel_err(g, tg)
    assert rel_err(g[..., 0], tg[..., 0]) <= 1e-10, rel_err(g[..., 0], tg[..., 0])
    # the zeros are real: without the mask the torch reference's meta-gradient is NaN
    monkeypatch.setattr(tr, "_mask_grad_where", lambda mask: (lambda grad: grad))
    _, tg_unmasked = _torch_semantics_grads(*args, x64=True)
    assert not np.isfinite(tg_unmasked).all()
