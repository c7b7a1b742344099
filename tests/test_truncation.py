"""Window placement: the masked window (one trace for every window length), the random schedule's
distribution inside jit, and the per-pass redraw of the window position."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from helpers import tiny_inner_problem
from jaxdd import distillation, truncation
from jaxdd.methods.bptt import meta_gradient

IPC, C, HW = 2, 3, 4


def _problem(total=6, dtype=jnp.float64):
    return tiny_inner_problem("adam", dtype, total, width=6, seed=5, real=8)


def test_masked_window_equals_plain_window_for_every_length():
    """unroll(..., window=W_max, length=w) == unroll(..., window=w): values and meta-gradients, one trace."""
    w_max, prefix = 4, 1
    with jax.enable_x64(True):
        model, cfg, params, state, images, labels, rx, ry = _problem(total=prefix + w_max)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def masked(images, length):
            return meta_gradient(model, cfg, {"images": images}, {"labels": labels}, params, state, rx, ry,
                                 jax.random.key(1), prefix, window=w_max, length=length)

        for w in range(1, w_max + 1):
            g_ref, m_ref = jax.jit(lambda im: meta_gradient(model, cfg, {"images": im}, {"labels": labels}, params,
                                                            state, rx, ry, jax.random.key(1), prefix, window=w))(images)
            g, m = masked(images, jnp.int32(w))
            np.testing.assert_allclose(g["images"], g_ref["images"], rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-12)
            np.testing.assert_allclose(m["grad_norms"], m_ref["grad_norms"], rtol=1e-12)
            assert float(jnp.abs(g["images"]).max()) > 0


def test_random_schedule_inside_jit_follows_its_distribution():
    """N ~ UniformInt[0, T − W]: every value within 5 sigma of its expected count, nothing outside."""
    T, W, n = 10, 4, 7000
    sched = truncation.random(T, W)
    keys = jax.random.split(jax.random.key(0), n)
    prefix, length = jax.jit(lambda k: truncation.sample_population(sched, sched.init(), k))(keys)
    assert set(np.asarray(length).tolist()) == {W}
    counts = np.bincount(np.asarray(prefix), minlength=T - W + 2)
    assert counts[T - W + 1:].sum() == 0
    p = 1 / (T - W + 1)
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts[: T - W + 1] - n * p) < 5 * sigma), counts
    held = (jnp.full((3,), 2, jnp.int32), jnp.full((3,), W, jnp.int32))
    kept, _ = truncation.sample_population(sched, {}, keys[:3], held=held, fresh_now=False)
    np.testing.assert_array_equal(kept, 2)


def test_per_pass_redraw_holds_the_prefix_within_a_pass(digits):
    """resample='pass': the window position changes only on a pass's first step."""
    r = distillation.distill(digits, "rat-bptt", ipc=1, steps=12, progress=False, final_eval=False, width=4,
                             depth=1, unroll_steps=12, window=2, real_batch=400, resample="pass", population=1)
    per_pass = len(digits.x_train) // 400
    prefixes = [row["prefix"] for row in r.metrics]
    for n, p in enumerate(prefixes):
        if n % per_pass:
            assert p == prefixes[n - 1], (n, prefixes)
    assert len(set(prefixes[::per_pass])) > 1  # redrawn across passes
