"""Sharding over 8 fake CPU devices: same numbers as one device, arrays really split, checkpoints portable."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdd import distillation, evaluation, outer, parallel
from jaxdd.errors import JaxddError
from jaxdd.methods import bptt
from jaxdd.models import make_model

# every test on several devices runs in a process of its own (tests/conftest.py): an abort of XLA's CPU runtime
# fails that test with its message instead of ending the whole run
pytestmark = pytest.mark.isolated


@pytest.fixture
def tiny(tiny):
    """The shared tiny settings, checkpointing every 2 steps and augmenting."""
    return {**tiny, "checkpoint_every": 2, "augment": "flip_rotate", "real_augment": "flip_rotate"}


def _method(digits, tiny, mesh, population, **kw):
    run = distillation.prepare(digits, "rat-bptt", 1, 1, mesh=mesh, **{**tiny, "init": "noise",
                                                                        "population": population, **kw})
    batch = (jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64]))
    return run.settings, run.method, run.state, batch


def _images(state):
    return state.theta["images"]["b000"]


def _sharded_step(meth, mesh, state, batch, key):
    state = jax.device_put(state, parallel.replicated(mesh))
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    return parallel.jit_step(meth.step, mesh, state)(state, batch, key)


@pytest.mark.parametrize("population", [8, 2])
def test_sharded_step_equals_single_device(digits, tiny, population):
    """Population 8 (one network per device) and 2 (networks replicated, real batch rows split)."""
    mesh = parallel.make_mesh(8)
    key = jax.random.key(7)
    _, single, state, batch = _method(digits, tiny, None, population)
    ref_state, ref_m = jax.jit(single.step)(state, batch, key)
    _, sharded, state, batch = _method(digits, tiny, mesh, population)
    before = np.asarray(_images(state))  # the step donates its state
    new_state, m = _sharded_step(sharded, mesh, state, batch, key)
    chex.assert_trees_all_close(jax.device_get(m), jax.device_get(ref_m), rtol=1e-5, atol=1e-6)
    _same_set(_images(new_state), _images(ref_state))  # Adam's first step amplifies summation order
    assert not np.allclose(_images(new_state), before)  # it did update
    assert _images(new_state).sharding.is_fully_replicated


def test_arrays_are_split_as_intended(digits, tiny):
    mesh = parallel.make_mesh(8)
    _, meth, state, batch = _method(digits, tiny, mesh, 8)
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    assert batch[0].sharding.spec == P("data")
    chex.assert_shape([s.data for s in batch[0].addressable_shards], [(8, 8, 8, 1)] * 8)  # 64 rows / 8 devices
    out_sh = NamedSharding(mesh, P("data"))
    m = jax.jit(meth.members, out_shardings=None)(state, batch, jax.random.key(0))
    real_x = m["real_x"]
    for leaf in jax.tree.leaves(m["params0"]) + [real_x, m["prefix"]]:
        assert leaf.sharding.is_equivalent_to(out_sh, leaf.ndim), leaf.sharding
        assert leaf.addressable_shards[0].data.shape[0] == 1  # one member per device
    chex.assert_shape(real_x, (8, 8, 8, 8, 1))
    # population not a multiple of the devices: members replicated, their real batch rows split
    _, meth2, state2, _ = _method(digits, tiny, mesh, 2)
    real_x2 = jax.jit(meth2.members)(state2, batch, jax.random.key(0))["real_x"]
    assert real_x2.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "data")), 5)
    chex.assert_shape(real_x2.addressable_shards[0].data, (2, 4, 8, 8, 1))


def test_population_one_is_the_single_network_estimator(digits, tiny):
    s, meth, state, batch = _method(digits, tiny, None, 1)
    key = jax.random.key(3)
    new_state, m = jax.jit(meth.step)(state, batch, key)
    m_in = meth.members(state, batch, key)
    params0, state0, rx, ry, keys, prefixes = (m_in[k] for k in ("params0", "model_state0", "real_x", "real_y",
                                                                  "keys", "prefix"))
    cfg = bptt.inner_config(s, 1, 10)
    model = make_model("convnet", image_shape=(8, 8, 1), num_classes=10, width=4, depth=1)
    grads, _ = jax.jit(lambda: bptt.meta_gradient(
        model, cfg, state.theta, state.consts, jax.tree.map(lambda a: a[0], params0),
        jax.tree.map(lambda a: a[0], state0), rx[0], ry[0], keys[0], prefixes[0], window=s.window,
        real_augment=s.real_augment))()
    opt = outer.outer_optimizer(state.theta, lr=s.outer_lr, clip=s.clip)
    updates, _ = opt.update(grads, state.opt_state, state.theta)
    expected = outer.project(jax.tree.map(jnp.add, state.theta, updates))
    chex.assert_trees_all_close(new_state.theta, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(m["grad_norm"]), float(jnp.linalg.norm(grads["images"]["b000"])), rtol=1e-5)


def _same_set(a, b):
    """Equal up to float32 reduction order: summing the population's meta-gradients in another order
    changes them by ~1e-7 relative, and Adam's g / sqrt(v) turns that into up to ~1e-3 of a pixel where
    a gradient is near zero (outer lr 1e-2). A different seed differs by O(1)."""
    diff = np.abs(np.asarray(a) - np.asarray(b))
    assert diff.max() < 2e-3 and diff.mean() < 2e-5, (diff.max(), diff.mean())


def _distill(digits, tiny, out, steps, mesh, resume=False, population=8):
    return distillation.distill(digits, "rat-bptt", ipc=1, steps=steps, out=out, resume=resume, progress=False,
                                final_eval=False, seed=5, mesh=mesh, **{**tiny, "population": population})


def test_population_8_same_on_8_devices_and_1(digits, tiny):
    a = _distill(digits, tiny, None, 2, parallel.make_mesh(8))
    b = _distill(digits, tiny, None, 2, parallel.make_mesh(1))
    _same_set(a.images, b.images)


@pytest.mark.parametrize("first,second", [(8, 1), (1, 8)])
def test_checkpoint_moves_between_device_counts(digits, tiny, tmp_path, first, second):
    ref = _distill(digits, tiny, None, 4, None)
    _distill(digits, tiny, tmp_path, 2, parallel.make_mesh(first) if first > 1 else None)
    resumed = _distill(digits, tiny, tmp_path, 4, parallel.make_mesh(second) if second > 1 else None, resume=True)
    _same_set(resumed.images, ref.images)


def test_images_sharded_along_the_image_axis(digits, tiny):
    """shard_images splits the set and its Adam moments over the devices; the result is unchanged."""
    mesh = parallel.make_mesh(2)
    _, meth, state, batch = _method(digits, tiny, mesh, 2, shard_images=True)
    sh = parallel.state_shardings(mesh, state, num_images=10)
    assert _images(sh).spec == P("data") and sh.consts["labels"].spec == P("data")
    assert sh.method_state["prefix"].spec == P()
    state = jax.device_put(state, sh)
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    new_state, _ = parallel.jit_step(meth.step, mesh, state, num_images=10)(state, batch, jax.random.key(7))
    assert _images(new_state).addressable_shards[0].data.shape[0] == 5
    _, single, state1, batch1 = _method(digits, tiny, None, 2)
    ref, _ = jax.jit(single.step)(state1, batch1, jax.random.key(7))
    _same_set(_images(new_state), _images(ref))  # float32 summation order, amplified by Adam's first step


def test_evaluation_sharded_over_models(digits):
    images, labels = evaluation.random_real(digits, 2, seed=0)
    kw = dict(protocol="quick", width=8, depth=1, steps=30, num_models=8)
    a = evaluation.evaluate(images, labels, digits, **kw)
    b = evaluation.evaluate(images, labels, digits, mesh=parallel.make_mesh(8), **kw)
    np.testing.assert_allclose(a["accuracies"], b["accuracies"], atol=2 / len(digits.y_test))


def test_bad_device_settings(digits, tiny):
    with pytest.raises(JaxddError, match="--devices 9 is not available"):
        parallel.make_mesh(9)
    with pytest.raises(JaxddError, match="multiple of --devices 8"):
        distillation.distill(digits, "rat-bptt", ipc=1, steps=1, progress=False, final_eval=False,
                             mesh=parallel.make_mesh(8), **{**tiny, "real_batch": 60, "population": 2})


def test_an_abort_fails_one_test_not_the_run():
    """An isolated test whose process aborts (as XLA's runtime does) fails alone; the next tests still run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/isolated_abort_case.py"], cwd=root, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items()
                                                         if k not in ("JAXDD_TEST_CHILD", "JAXDD_TEST_REPORT")})
    # an ordinary failure is reported from the isolated process, which goes on; the aborting test failed; the
    # isolated test after it passed in a new process, and so did the plain one
    assert proc.stdout.startswith("FF.."), proc.stdout[-2000:]
    assert "from the isolated process" in proc.stdout
    assert "killed by signal 6" in proc.stdout
