"""The distillation driver: determinism, exact resume, NaN skipping, and learning something real."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import distillation as distill_lib
from jaxdd.errors import JaxddError
from jaxdd.methods import bptt
from jaxdd.models import make_model
from jaxdd.outer import clip_by_ema_norm


@pytest.fixture
def tiny(tiny):
    """The shared tiny settings (the point is exactness, not accuracy), checkpointing every 3 steps and augmenting."""
    return {**tiny, "checkpoint_every": 3, "augment": "flip_rotate", "real_augment": "flip_rotate"}


def _run(digits, tiny, tmp, steps, **kw):
    return distill_lib.distill(digits, "rat-bptt", ipc=2, steps=steps, out=tmp, progress=False, final_eval=False,
                               seed=3, **{**tiny, **kw})


def test_same_seed_gives_identical_outputs(digits, tiny, tmp_path):
    a = _run(digits, tiny, tmp_path / "a", 4)
    b = _run(digits, tiny, tmp_path / "b", 4)
    np.testing.assert_array_equal(a.images, b.images)
    chex.assert_shape(a.images, (20, 8, 8, 1))
    chex.assert_shape(a.labels, (20,))
    np.testing.assert_array_equal(a.labels, np.repeat(np.arange(10), 2))  # class-major
    c = distill_lib.distill(digits, "rat-bptt", ipc=2, steps=4, progress=False, final_eval=False, seed=4, **tiny)
    assert not np.allclose(a.images, c.images)


def test_resume_continues_exactly(digits, tiny, tmp_path):
    full = _run(digits, tiny, tmp_path / "full", 6)
    _run(digits, tiny, tmp_path / "part", 3)  # stops after 3 steps, checkpoint at 3
    with pytest.raises(JaxddError, match="--resume"):
        _run(digits, tiny, tmp_path / "part", 6)
    resumed = distill_lib.distill(digits, "rat-bptt", ipc=2, steps=6, out=tmp_path / "part", resume=True,
                                  progress=False, final_eval=False, seed=3, **tiny)
    np.testing.assert_array_equal(resumed.images, full.images)
    rows = [json.loads(line) for line in open(tmp_path / "part" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    full_rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]
    with np.load(tmp_path / "part" / "distilled.npz") as f:
        np.testing.assert_array_equal(f["images"], full.images)
        assert json.loads(str(f["settings"]))["method"] == "rat-bptt"
    assert os.path.getsize(tmp_path / "part" / "grid.png") > 1000


def test_resume_with_different_settings_is_refused(digits, tiny, tmp_path):
    _run(digits, tiny, tmp_path / "r", 3)
    with pytest.raises(JaxddError, match="different"):
        distill_lib.distill(digits, "rat-bptt", ipc=2, steps=6, out=tmp_path / "r", resume=True, progress=False,
                            final_eval=False, seed=3, **{**tiny, "window": 2})


def test_nan_meta_gradient_is_skipped_and_counted(digits, tiny):
    run = distill_lib.prepare(digits, "rat-bptt", 1, 1, **{**tiny, "init": "noise"})
    meth, state = run.method, run.state
    x = jnp.asarray(digits.x_train[:64])
    y = jnp.asarray(digits.y_train[:64])
    step = jax.jit(meth.step)
    good, m = step(state, (x, y), jax.random.key(2))
    assert m["skipped"] == 0 and not np.allclose(good.theta["images"]["b000"], state.theta["images"]["b000"])
    bad, m = step(good, (x.at[0, 0, 0, 0].set(jnp.nan), y), jax.random.key(3))  # poisons the meta-gradient
    assert m["skipped"] == 1 and m["skipped_total"] == 1
    assert not np.isfinite(float(m["grad_norm"]))
    np.testing.assert_array_equal(bad.theta["images"]["b000"], good.theta["images"]["b000"])  # update skipped
    after, m = step(bad, (x, y), jax.random.key(4))
    assert m["skipped"] == 0 and m["skipped_total"] == 1
    assert np.isfinite(np.asarray(after.theta["images"]["b000"])).all()


def test_ema_clipping_follows_the_rule():
    clip = clip_by_ema_norm(2.0, 0.1)
    st = clip.init(None)
    g1 = {"a": jnp.array([3.0, 4.0])}  # norm 5: first shadow = 5, no clipping
    u, st = clip.update(g1, st)
    np.testing.assert_allclose(u["a"], g1["a"])
    g2 = {"a": jnp.array([30.0, 40.0])}  # norm 50: shadow = 5 - 0.1 (5 - 50) = 9.5 -> clip at 19
    u, st = clip.update(g2, st)
    np.testing.assert_allclose(float(st.shadow), 9.5, rtol=1e-6)
    np.testing.assert_allclose(float(jnp.linalg.norm(u["a"])), 19.0, rtol=1e-6)


def test_learned_labels_stay_non_negative(digits, tiny):
    r = distill_lib.distill(digits, "rat-bptt", ipc=1, steps=3, progress=False, final_eval=False,
                            learn_labels=True, label_lr=0.5, **tiny)
    chex.assert_shape(r.labels, (10, 10))
    assert (r.labels >= 0).all() and not np.allclose(r.labels, np.eye(10))


def test_bad_inputs_give_one_line_errors(digits, tiny):
    cases = [
        (dict(method="nope"), "unknown method"),
        (dict(ipc=10_000), "larger than the smallest class"),
        (dict(window=99), "--window"),
        (dict(real_batch=100_000), "--real-batch"),
        (dict(bogus=1), "unknown setting"),
    ]
    for kw, msg in cases:
        args = dict(method="rat-bptt", ipc=1, steps=1, progress=False, final_eval=False, **tiny)
        args.update(kw)
        with pytest.raises(JaxddError, match=msg) as e:
            distill_lib.distill(digits, **args)
        assert "\n" not in str(e.value)


def test_distilled_digits_beat_random_real_over_seeds(digits):
    """IPC 1 on digits: 100 meta-steps from random real images beat those very images, seed after seed.

    Setting chosen on the validation split (distilled 86-90% vs random real 65-70% over seeds 0-2);
    here both are scored on the test split under the same protocol (4 networks × 300 Adam steps).
    """
    for seed in (0, 1):
        r = distill_lib.distill(digits, "rat-bptt", ipc=1, steps=100, seed=seed, progress=False, width=16, depth=1,
                                unroll_steps=20, window=10, init="real", eval_models=4)
        d, b = r.evaluation, r.baseline
        assert d["num_models"] == b["num_models"] == 4 and d["steps"] == b["steps"]
        assert d["accuracy_mean"] > b["accuracy_mean"] + 0.10, (seed, d["accuracy_mean"], b["accuracy_mean"])
        assert d["accuracy_mean"] > 0.80
