"""The method interface: masked windows, schedules, synthetic sets with frozen rows and blocks, a toy
method registered from a test, and the refactor's behaviour fixture."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import distillation, inner, methods, outer, synthetic, truncation
from jaxdd.cli import main
from jaxdd.methods.base import Method, MethodSpec, new_state
from jaxdd.methods import bptt
from jaxdd.methods.bptt import meta_gradient
from jaxdd.models import make_model
from jaxdd.settings import CommonSettings

IPC, C, HW = 2, 3, 4
FIXTURE = os.path.join(os.path.dirname(__file__), "data", "ratbptt_digits_ipc1_seed0_20steps.npz")


def _problem(total=6, dtype=jnp.float64):
    model = make_model("mlp", image_shape=(HW, HW, 1), num_classes=C, width=6, depth=1)
    cfg = inner.InnerConfig(optimizer="adam", lr=0.1, ipc=IPC, num_classes=C, per_class=1, total_steps=total)
    k = jax.random.split(jax.random.key(5), 4)
    params, state = model.init(k[0])
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    images = jax.random.normal(k[1], (C * IPC, HW, HW, 1), dtype)
    labels = jnp.repeat(jnp.arange(C), IPC)
    real_x = jax.random.normal(k[2], (8, HW, HW, 1), dtype)
    real_y = jax.random.randint(k[3], (8,), 0, C)
    return model, cfg, params, state, images, labels, real_x, real_y


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


def test_behaviour_fixture_from_before_the_refactor(monkeypatch):
    """digits, rat-bptt, IPC 1, seed 0, 20 meta-steps moves the images as recorded on main before the method
    interface existed, with that time's settings: optax Adam (eps_root 1e-8), T 40, W 10, inner lr 1e-3,
    and the CPU convolution and compiler options of then ("shifted", no per-jit XLA options).

    Compared as the images' displacement from their start, not element by element: Adam turns round-off into
    steps of size lr wherever a gradient entry is near zero, so over 20 steps other CPUs (other XLA kernels,
    other summation orders) land up to 0.016 away per pixel (CI's machine); on an AMD EPYC 0.011 per pixel and
    3.5 % relative error of the displacement. Small real changes move it far more (measured: inner Adam
    'torch' 12 %, outer lr +10 % 14 %, inner lr +20 % 22 %, window 11 instead of 10 37 %)."""
    from jaxdd import models

    monkeypatch.setenv("JAXDD_XLA_OPTIONS", "0")
    resolve = models.resolve_conv_impl
    monkeypatch.setattr(models, "resolve_conv_impl", lambda conv: "shifted" if conv == "auto" else resolve(conv))
    run = distillation.prepare("digits", "rat-bptt", 1, 20, seed=0, **_FIXTURE_SETTINGS)  # what distill() runs
    start = np.asarray(distillation._finalize(run, run.state)["images"])
    distillation.loop(run, progress=False)
    r = distillation.finish(run, final_eval=False)
    with np.load(FIXTURE) as f:
        recorded = f["images"] - start
        moved = np.asarray(r.images) - start
        chex.assert_shape(moved, recorded.shape)
        rel = np.linalg.norm(moved - recorded) / np.linalg.norm(recorded)
        assert np.linalg.norm(recorded) > 1.0  # the recorded run moved the images (norm 2.34)
        assert rel < 0.08, f"displacement differs from the recording by {rel:.1%}"
        np.testing.assert_array_equal(r.labels, f["labels"])


_FIXTURE_SETTINGS = dict(inner_adam="optax", unroll_steps=40, window=10, inner_lr=1e-3, init="real",
                         depth=2)  # the preset when recorded


# ---------------------------------------------------------------------------------------------------
# a toy method defined here, registered, run through jaxdd.distill and the CLI, checkpointed, resumed


def toy_build(ctx):
    """Moves every image by `toy_step` along the sign of (mean real image − image): 9 lines of method."""
    s = ctx.settings

    def init(key, theta, consts):
        return new_state(theta, consts, lambda th: outer.outer_optimizer(th, lr=s.outer_lr, clip=False, kind="sgd",
                                                                          momentum=0.0), key, jnp.zeros(()))

    def step(state, batch, key):
        target = batch.mean(0)
        theta = jax.tree.map(lambda a: a + s.toy_step * jnp.sign(target - a), state.theta)
        import dataclasses
        return dataclasses.replace(state, theta=theta, step=state.step + 1,
                                   method_state=state.method_state + 1), {"loss": jnp.mean(target)}

    x = jnp.asarray(ctx.dataset.x_train)
    return Method(init, step, lambda n, key: jax.random.choice(key, x, (32,)), batch_sharding=None)


import dataclasses  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ToySettings(CommonSettings):
    toy_step: float = dataclasses.field(default=0.01, metadata={"help": "how far every pixel moves per step"})


@pytest.fixture
def toy():
    spec = methods.register(MethodSpec("toy", "a toy: images walk towards the mean real image", ToySettings,
                                       toy_build, evaluation=lambda s: dict(protocol="quick", width=4, depth=1,
                                                                            steps=10, num_models=2)))
    yield spec
    methods.unregister("toy")


def test_toy_method_runs_checkpoints_and_resumes(toy, digits, tmp_path, capsys):
    assert "toy" in methods.available()
    full = distillation.distill(digits, "toy", ipc=1, steps=6, progress=False, final_eval=False, width=4, depth=1)
    part = distillation.distill(digits, "toy", ipc=1, steps=3, out=tmp_path / "t", progress=False,
                                final_eval=False, width=4, depth=1, checkpoint_every=2)
    resumed = distillation.distill(digits, "toy", ipc=1, steps=6, out=tmp_path / "t", resume=True, progress=False,
                                   final_eval=False, width=4, depth=1, checkpoint_every=2)
    assert not np.allclose(part.images, full.images)
    np.testing.assert_array_equal(resumed.images, full.images)
    rows = [json.loads(line) for line in open(tmp_path / "t" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]

    assert main(["distill", "--help"]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["distill", "--method", "toy", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--toy-step" in help_text and "--window" not in help_text
    code = main(["distill", "--method", "toy", "--steps", "2", "--out", str(tmp_path / "cli"), "--toy-step", "0.1",
                 "--no-progress", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["method"] == "toy" and "accuracy_mean" in summary
    with np.load(tmp_path / "cli" / "distilled.npz") as f:
        assert json.loads(str(f["settings"]))["settings"]["toy_step"] == 0.1


def test_at_bptt_distils_digits_better_than_random_real(digits):
    """at-bptt through the method registry, the masked window and the same evaluation as every method.

    Cheap setting (ConvNet w16 d1, T 20, W 10 ± 3, 150 steps): measured 87.2 % against 71.9 % for the
    same random real images (seed 0); the 20-point comparison of the issue is made at the preset in the
    issue note. Asserted with room: +10 points."""
    r = distillation.distill(digits, "at-bptt", ipc=1, steps=150, progress=False, width=16, depth=1,
                             unroll_steps=20, window=10, delta=3, eval_models=4)
    windows = {row["window"] for row in r.metrics}
    assert len(windows) > 1 and min(windows) >= 7 and max(windows) <= 13, windows
    assert all(row["prefix"] + row["window"] <= 20 for row in r.metrics)
    assert r.evaluation["accuracy_mean"] > r.baseline["accuracy_mean"] + 0.10, (r.evaluation, r.baseline)
