"""The synthetic set as a value: class-major layout, learned blocks with their own outer rates, frozen rows."""

import chex
import jax
import numpy as np

from jaxdd import distillation, methods, synthetic, truncation
from jaxdd.methods import bptt
from jaxdd.models import make_model


def test_synthetic_set_layout_and_frozen_rows_stay_bit_identical(digits):
    """Frozen rows never move, learned blocks do; block at outer rate 0 does not move; layout class-major."""
    images = np.asarray(jax.random.normal(jax.random.key(0), (10 * 3, 8, 8, 1)), np.float32)
    labels = np.repeat(np.arange(10), 3)
    row_block = np.tile([-1, 0, 1], 10)  # per class: frozen, block 0, block 1
    theta, consts = synthetic.make(images, labels, 10, row_block=row_block)
    np.testing.assert_array_equal(synthetic.images(theta, consts), images)
    chex.assert_shape([theta["images"]["b000"], theta["images"]["b001"], consts["frozen"]], [(10, 8, 8, 1)] * 3)

    run = distillation.prepare(digits, "rat-bptt", 3, 10, width=4, depth=1, unroll_steps=4, window=2, real_batch=64)
    model = make_model("convnet", image_shape=(8, 8, 1), num_classes=10, width=4, depth=1)
    ctx = methods.Context(run.settings, model, run.dataset, 3, 10)
    meth = bptt.build(ctx, truncation.random(4, 2), block_rates=lambda th: {"b001": 0.0})
    state = meth.init(jax.random.key(1), theta, consts)
    step = jax.jit(meth.step)
    for n in range(10):
        k_batch, k_step = jax.random.split(jax.random.key(100 + n))
        state, m = step(state, meth.batch(n, k_batch), k_step)
        assert m["skipped"] == 0
    after = np.asarray(synthetic.images(state.theta, state.consts))
    frozen, b0, b1 = (row_block == -1), (row_block == 0), (row_block == 1)
    np.testing.assert_array_equal(after[frozen], images[frozen])
    np.testing.assert_array_equal(after[b1], images[b1])  # outer rate 0
    assert np.abs(after[b0] - images[b0]).max() > 1e-3
