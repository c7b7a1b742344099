"""AT-BPTT building blocks: gradient statistics, stage-aware window selection, stage switches, the
adaptive window, and the low-rank Hessian backward, checked against numbers."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdd
from helpers import probe_stats
from jaxdd import autotrunc as at
from jaxdd import distillation, hessian, inner
from jaxdd.models import make_model
from jaxdd.unroll import run_prefix


# --- statistics ---------------------------------------------------------------------------------


def test_update_stats_by_hand():
    table = at.init_stats(5)
    norms = jnp.array([[1.0, 2.0, 9.0, 9.0, 9.0], [3.0, 4.0, 5.0, 6.0, 9.0]])
    table = at.update_stats(table, norms, jnp.array([2, 4]), 0.5)  # step 4 ran nowhere
    np.testing.assert_allclose(table["g"], [2.0, 3.0, 5.0, 6.0, 0.0])  # first sight: the mean itself
    np.testing.assert_array_equal(table["count"], [1, 1, 1, 1, 0])
    table = at.update_stats(table, jnp.array([[4.0, 1.0, 2.0, 0.0, 0.0]]), jnp.array([3]), 0.5)
    np.testing.assert_allclose(table["g"], [3.0, 2.0, 3.5, 6.0, 0.0])
    np.testing.assert_array_equal(table["count"], [2, 2, 2, 1, 0])
    g, v = at.table_stats(table)
    np.testing.assert_allclose(g, [3.0, 2.0, 3.5, 6.0, 6.0])  # unseen tail held at the last seen value
    np.testing.assert_allclose(v, [0.0, 1.0, 1.5, 2.5, 0.0])
    # unseen entries inside are interpolated, before the first seen one held constant
    g, _ = at.table_stats({"g": jnp.array([0.0, 2.0, 0.0, 0.0, 8.0]), "count": jnp.array([0, 1, 0, 0, 3])})
    np.testing.assert_allclose(g, [2.0, 2.0, 4.0, 6.0, 8.0])
    g, v = at.table_stats(at.init_stats(4))
    np.testing.assert_allclose(g, 0.0)
    np.testing.assert_allclose(v, 0.0)


def _digits_problem(digits, *, classes=10, ipc=2, total=16, width=8, optimizer="adam", lr=0.01, per_class=1):
    """Digits pooled to 4×4, a small MLP, the first `ipc` training images of each class as S."""
    x = np.asarray(digits.x_train).reshape(-1, 4, 2, 4, 2, 1).mean((2, 4))
    y = np.asarray(digits.y_train)
    order = np.concatenate([np.where(y == c)[0][:ipc] for c in range(classes)])
    model = make_model("mlp", image_shape=(4, 4, 1), num_classes=classes, width=width, depth=1)
    cfg = inner.InnerConfig(optimizer=optimizer, lr=lr, ipc=ipc, num_classes=classes, per_class=per_class,
                            total_steps=total)
    real = np.isin(y, np.arange(classes))
    return model, cfg, jnp.asarray(x[order]), jnp.asarray(y[order]), jnp.asarray(x[real]), jnp.asarray(y[real])


def test_ema_table_approaches_probe_statistics(digits):
    model, cfg, images, labels, _, _ = _digits_problem(digits)
    T = cfg.total_steps
    step = inner.make_step(model, cfg, {"labels": labels})
    theta = {"images": images}

    def probe(k):
        k_init, k_steps = jax.random.split(k)
        params, state = model.init(k_init)
        return probe_stats(step, inner.init_carry(params, state, cfg), theta, jax.random.split(k_steps, T))

    probes = jax.jit(jax.vmap(probe))
    # same networks and keys: full-length runs fill the table with exactly the probe's statistics
    g, v = probe(jax.random.key(0))
    chex.assert_shape((g, v), (T,))
    assert float(v[0]) == 0.0 and float(g.min()) > 0
    table = at.update_stats(at.init_stats(T), g[None], jnp.array([T]), 0.9)
    table = at.update_stats(table, g[None], jnp.array([T]), 0.9)
    g_tab, v_tab = at.table_stats(table)
    np.testing.assert_allclose(g_tab, g, rtol=1e-6)
    np.testing.assert_allclose(v_tab, v, rtol=1e-5, atol=1e-7)
    # different keys: the EMA over 16 outer steps of 4 full-length members sits within 5 standard
    # errors of the mean probe curve (64 other probes); the standard error uses the EMA's weights
    K, P, steps, decay = 64, 4, 16, 0.9
    g_ref, _ = probes(jax.random.split(jax.random.key(1), K))
    g_run, _ = probes(jax.random.split(jax.random.key(2), P * steps))
    table = at.init_stats(T)
    for i in range(steps):
        table = at.update_stats(table, g_run[i * P:(i + 1) * P], jnp.full((P,), T), decay)
    g_tab, _ = at.table_stats(table)
    weights = np.array([decay ** (steps - 1)] + [(1 - decay) * decay ** j for j in range(steps - 1)])
    se = np.asarray(g_ref.std(0)) * np.sqrt((weights ** 2).sum() / P + 1.0 / K)
    assert np.all(np.abs(np.asarray(g_tab - g_ref.mean(0))) <= 5 * se)


# --- selection ----------------------------------------------------------------------------------

T, W, D, TAU = 20, 6, 2, 0.7
G = jnp.asarray(1.0 + np.exp(-np.arange(T) / 4.0) + 0.05 * np.cos(np.arange(T)), jnp.float32)


def _state(schedule, stage=0, beta=1.0):
    state = schedule.init()
    table = {"g": G, "count": jnp.ones((T,), jnp.int32)}
    return {**state, "table": table, "stage": jnp.int32(stage), "beta": jnp.float32(beta)}


def _expected(kind, beta=1.0):
    """Exact distribution of (N, W*) as a [T + 1, T + 1] table, from P(t) and the selection rules."""
    g = np.asarray(G, np.float64)
    z = (g - g.mean()) / g.std()
    v = np.concatenate([[0.0], np.abs(np.diff(g))])

    def softmax(b):
        e = np.exp(b * z / TAU - (b * z / TAU).max())
        return e / e.sum()

    def adaptive(t):
        return W - D + (2 * D * int((v < v[t]).sum())) // T

    out = np.zeros((T + 1, T + 1))
    if kind in ("early", "smooth", "off"):
        p = {"early": softmax(1.0), "smooth": softmax(beta)}.get(kind)
        ts = range(T) if p is not None else range(T - (W - D) + 1)
        for t in ts:
            w = adaptive(t)
            out[min(t, T - w), w] += p[t] if p is not None else 1.0 / len(ts)
    elif kind == "middle":
        out[: T - (W + D) + 1, W + D] = 1.0 / (T - (W + D) + 1)
    else:
        for t, pt in enumerate(softmax(1.0)):
            out[max(0, min(T - t - (W - D), T - (W - D))), W - D] += pt
    return out


@pytest.mark.parametrize("kind,mode,stage,beta", [("early", "switch", 0, 1.0), ("middle", "switch", 1, 1.0),
                                                  ("late", "switch", 2, 1.0), ("smooth", "smooth", 0, -0.6),
                                                  ("off", "off", 0, 1.0)])
def test_sampled_windows_match_probabilities(kind, mode, stage, beta):
    schedule = at.at_schedule(T, W, D, tau=TAU, stage_mode=mode, anneal_steps=10)
    state = _state(schedule, stage, beta)
    n = 40_000
    prefix, length = jax.jit(jax.vmap(schedule.sample, (None, 0)))(state, jax.random.split(jax.random.key(1), n))
    freq = np.zeros((T + 1, T + 1))
    np.add.at(freq, (np.asarray(prefix), np.asarray(length)), 1.0 / n)
    p = _expected(kind, beta)
    np.testing.assert_allclose(p.sum(), 1.0)
    assert np.all(freq[p == 0] == 0), "a (N, W*) the rules cannot produce was sampled"
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("mode,window_mode", [("switch", "adaptive"), ("smooth", "adaptive"), ("off", "adaptive"),
                                              ("switch", "fixed"), ("off", "fixed")])
def test_window_always_fits(mode, window_mode):
    schedule = at.at_schedule(T, W, D, tau=0.3, stage_mode=mode, window_mode=window_mode, anneal_steps=10)
    assert schedule.max_window == (W + D if window_mode == "adaptive" else W)
    assert schedule.masked == (window_mode == "adaptive")
    rng = np.random.default_rng(0)
    for i in range(12):  # random tables (some never seen), every stage, β from +1 to −1
        table = {"g": jnp.asarray(rng.exponential(size=T), jnp.float32),
                 "count": jnp.asarray(rng.integers(0, 2, size=T), jnp.int32)}
        state = {**schedule.init(), "table": table, "stage": jnp.int32(i % 3), "beta": jnp.float32(1 - i / 6)}
        prefix, length = jax.vmap(schedule.sample, (None, 0))(state, jax.random.split(jax.random.key(i), 500))
        lo, hi = (W - D, W + D) if window_mode == "adaptive" else (W, W)
        assert prefix.dtype == jnp.int32 and length.dtype == jnp.int32
        assert np.all((lo <= length) & (length <= hi) & (length <= schedule.max_window))
        assert np.all((prefix >= 0) & (prefix + length <= T))
        if mode == "off" and window_mode == "fixed":  # RaT-BPTT: N uniform on [0, T − W]
            assert set(np.unique(prefix)) == set(range(T - W + 1))


def test_one_trace_over_fifty_steps_with_changing_window():
    P = 4
    schedule = at.at_schedule(T, W, D, tau=0.5, steps_per_pass=5, patience_em=2, patience_ml=2)
    curve = jnp.asarray(1.0 + np.exp(-np.arange(T) / 3.0), jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def outer_step(state, key, accuracy, step):
        prefix, length = jax.vmap(schedule.sample, (None, 0))(state, jax.random.split(key, P))
        steps_run = prefix + length
        # the masked window: a scan of static length max_window, the first max_window − length steps idle
        active = jax.lax.scan(lambda c, i: (c + (i >= schedule.max_window - length), None),
                              jnp.zeros((P,), jnp.int32), jnp.arange(schedule.max_window))[0]
        norms = jnp.where(jnp.arange(T) < steps_run[:, None], curve * (1.0 + 0.1 * jnp.sin(step + 0.0)), 0.0)
        stats = dict(grad_norms=norms, steps_run=steps_run, accuracy=accuracy, step=step)
        return schedule.update(state, stats), prefix, length, active

    chex.clear_trace_counter()
    state = schedule.init()
    lengths, stages = [], []
    for s in range(50):
        accuracy = jnp.float32(min(0.1 + 0.05 * s, 0.6))  # rises, then plateaus: stages advance
        state, prefix, length, active = outer_step(state, jax.random.key(s), accuracy, jnp.int32(s))
        np.testing.assert_array_equal(active, length)
        assert np.all(np.asarray(prefix + length) <= T)
        lengths += np.asarray(length).tolist()
        stages.append(int(state["stage"]))
    assert len(set(lengths)) >= 3
    assert stages[0] == 0 and stages[-1] == 2
    metrics = at.schedule_metrics(state)
    assert int(metrics["at_passes"]) == 10 and float(metrics["at_seen"]) == 1.0


def test_stage_switches_on_scripted_accuracy():
    """Per-pass accuracies (points): gains 20, 20, 5, 1, 1 → middle after the 5th pass (2 small gains);
    then 3, 0.5, 0.5, 0.5 → late after the 9th pass (3 gains < 1)."""
    passes = [20.0, 40.0, 45.0, 46.0, 47.0, 50.0, 50.5, 51.0, 51.5, 60.0, 61.0]
    schedule = at.at_schedule(T, W, D, steps_per_pass=2, patience_em=2, patience_ml=3)
    update = jax.jit(schedule.update)
    state = schedule.init()
    stats = dict(grad_norms=jnp.ones((1, T)), steps_run=jnp.array([T]))
    stage_after_pass = []
    step = 0
    for a in passes:
        for acc in (a - 1.0, a + 1.0):  # the pass mean is `a`
            before = int(state["stage"])
            state = update(state, {**stats, "accuracy": jnp.float32(acc / 100), "step": jnp.int32(step)})
            if step % 2 == 0:
                assert int(state["stage"]) == before, "stages change only at the end of a pass"
            step += 1
        stage_after_pass.append(int(state["stage"]))
        np.testing.assert_allclose(float(state["pass_acc"]), a, rtol=1e-5)
    assert stage_after_pass == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert int(state["passes"]) == len(passes)
    assert at.default_patience(200) == (30, 25) and at.default_patience(300) == (45, 38)


def test_smooth_beta_and_schedule_errors():
    schedule = at.at_schedule(T, W, D, stage_mode="smooth", anneal_steps=4)
    state = schedule.init()
    stats = dict(grad_norms=jnp.ones((1, T)), steps_run=jnp.array([T]), accuracy=jnp.float32(0.5))
    betas = [float(state["beta"])]
    for s in range(6):
        state = schedule.update(state, {**stats, "step": jnp.int32(s)})
        betas.append(float(state["beta"]))
    np.testing.assert_allclose(betas, [1.0, 0.5, 0.0, -0.5, -1.0, -1.0, -1.0])
    for kwargs, match in [(dict(window=20, delta=2), "W \\+ d <= T"), (dict(delta=6), "1 <= W - d"),
                          (dict(stage_mode="smooth"), "anneal_steps"), (dict(stage_mode="x"), "stage mode"),
                          (dict(tau=0.0), "tau")]:
        args = dict(window=W, delta=D) | kwargs
        with pytest.raises(jaxdd.JaxddError, match=match):
            at.at_schedule(T, args.pop("window"), args.pop("delta"), **args)


def test_should_refresh():
    old = {"g": jnp.ones(10), "count": jnp.ones(10, jnp.int32)}
    near = {"g": jnp.ones(10) * 1.05, "count": jnp.ones(10, jnp.int32)}
    far = {"g": jnp.ones(10) * 1.3, "count": jnp.ones(10, jnp.int32)}
    assert not bool(at.should_refresh(old, near, 3, 0.1, 20))
    assert bool(at.should_refresh(old, far, 3, 0.1, 20))
    assert bool(at.should_refresh(old, near, 40, 0.1, 20))
    assert bool(at.should_refresh(at.init_stats(10), near, 3, 0.1, 20))  # nothing yet: refresh


# --- low-rank Hessian ---------------------------------------------------------------------------


def test_lanczos_with_key_matches_eigh():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
        a = jnp.asarray((q * np.array([9.0, 4.0, 2.0, 1.0, 0.5, 0, 0, 0, 0, 0])) @ q.T)  # rank 5: restarts
        ref = np.linalg.eigvalsh(np.asarray(a))[::-1]
        base, _ = jaxdd.lanczos(lambda v: a @ v, jnp.ones(10), 10)
        for key in (None, jax.random.key(3), jax.random.key(11)):
            vals, vecs = jax.jit(hessian.lanczos, static_argnums=(0, 2))(lambda v: a @ v, jnp.ones(10), 10, key)
            np.testing.assert_allclose(vals, ref, atol=1e-10)
            np.testing.assert_allclose(vecs @ a.T, vals[:, None] * vecs, atol=1e-9)
            np.testing.assert_allclose(vecs @ vecs.T, np.eye(10), atol=1e-9)
        np.testing.assert_array_equal(jaxdd.lanczos(lambda v: a @ v, jnp.ones(10), 10, key=None)[0], base)


def _tiny(digits, ipc=2):
    """3 classes of digits pooled to 4×4, an MLP of width 2 (43 parameters), float64."""
    model, cfg, images, labels, real_x, real_y = _digits_problem(digits, classes=3, ipc=ipc, total=12, width=2,
                                                                 optimizer="sgd", lr=0.3, per_class=None)
    f64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)  # noqa: E731
    for k in range(1, 20):  # the first init whose two ReLUs are both live on the set (a dead one zeroes gradients)
        params, state = model.init(jax.random.key(k))
        layer = params["layers"][0]
        if bool(((images.reshape(len(images), -1) @ layer["kernel"] + layer["bias"]) > 0).any(0).all()):
            break
    return model, cfg, f64(params), state, f64(images), labels, f64(real_x[:90]), real_y[:90]


def test_low_rank_hessian_full_rank_is_exact(digits):
    with jax.enable_x64(True):
        model, _, params, state, images, labels, _, _ = _tiny(digits)
        n = model.num_params
        assert n == 43
        loss = hessian.inner_loss(model, state, images, labels)
        vals, vecs = hessian.low_rank_hessian(loss, params, n, jax.random.key(2))
        chex.assert_shape(vals, (n,))
        chex.assert_shape(vecs["head"]["kernel"], (n, 2, 3))
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        dense = jax.hessian(lambda f: loss(unravel(f)))(flat)
        u = jax.vmap(lambda t: jax.flatten_util.ravel_pytree(t)[0])(vecs)
        np.testing.assert_allclose(u.T @ jnp.diag(vals) @ u, dense, atol=1e-12)
        top, _ = hessian.low_rank_hessian(loss, params, 3, jax.random.key(2))
        np.testing.assert_allclose(np.sort(np.abs(top)), np.sort(np.abs(np.linalg.eigvalsh(dense)))[-3:], rtol=1e-8)


def test_low_rank_grad_map_vjp(digits):
    """k = dim: the VJP equals the exact VJP of the inner gradient map; any k: x and y exact."""
    with jax.enable_x64(True):
        model, _, params, state, images, labels, _, _ = _tiny(digits)
        soft = 0.8 * jax.nn.one_hot(labels, 3, dtype=jnp.float64) + 0.2 / 3
        loss = hessian.inner_loss(model, state, images, soft)
        rng = np.random.default_rng(0)
        u = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)

        def vjp(grad_map):
            out, fn = jax.vjp(lambda p, x, y: (lambda g, aux: (g, aux[0]))(*grad_map(p, state, x, y)),
                              params, images, soft)
            return out, fn((u, 0.7))

        out, ref = vjp(inner.default_grad_map(model))
        for k in (model.num_params, 4):
            got_out, got = vjp(hessian.low_rank_grad_map(model, hessian.low_rank_hessian(loss, params, k,
                                                                                          jax.random.key(k))))
            chex.assert_trees_all_close(got_out, out, rtol=0, atol=0)  # the forward is the exact one
            chex.assert_trees_all_close(got[1:], ref[1:], rtol=1e-12, atol=1e-12)
            if k == model.num_params:
                chex.assert_trees_all_close(got[0], ref[0], rtol=1e-8, atol=1e-10)
        assert float(hessian.tree_cosine(got[0], ref[0])) < 1 - 1e-6  # rank 4 is an approximation


def test_meta_gradient_through_low_rank_window(digits):
    """Window 1: equal to the exact meta-gradient (1e-8). Window 3 (factors from the window start):
    cosine to the exact one, reported by `low_rank_cosines`, high at k = dim."""
    with jax.enable_x64(True):
        model, cfg, params, state, images, labels, real_x, real_y = _tiny(digits)
        consts = {}
        theta = {"images": images, "labels": 0.9 * jax.nn.one_hot(labels, 3, dtype=jnp.float64) + 0.1 / 3}
        xs = jax.random.split(jax.random.key(4), cfg.total_steps)
        step = inner.make_step(model, cfg, consts)
        carry = run_prefix(step, inner.init_carry(params, state, cfg), theta, xs, 2)
        loss = hessian.inner_loss(model, carry.model_state, theta["images"], theta["labels"])
        n = model.num_params
        factors = hessian.low_rank_hessian(loss, carry.params, n, jax.random.key(5))
        args = (model, cfg, theta, consts, carry, xs[2:], real_x, real_y)
        exact = hessian.window_meta_gradient(*args, window=1)
        approx = hessian.window_meta_gradient(*args, window=1, grad_map=hessian.low_rank_grad_map(model, factors))
        chex.assert_trees_all_close(approx, exact, rtol=1e-8, atol=1e-12)
        assert float(jnp.abs(exact["images"]).max()) > 0 and float(jnp.abs(exact["labels"]).max()) > 0
        cos = hessian.low_rank_cosines(*args, (theta["images"], theta["labels"]), window=3, ranks=(2, 8, n),
                                       key=jax.random.key(5))
        assert cos[n] > 0.99 and cos[2] > 0.9, cos


def test_hvp_with_the_native_convolution_and_low_rank_distillation(digits):
    """The CPU default convolution and fused norm are custom VJPs, which forward mode cannot enter: the
    Hessian goes through the model's plain-JAX twin. Checked against reverse-over-reverse on the native
    model itself, then a low-rank AT-BPTT run with the default convolution stays finite."""
    native = make_model("convnet", image_shape=(8, 8, 1), num_classes=10, width=4, depth=1, conv="native")
    assert native.forward_mode is not None
    assert make_model("convnet", image_shape=(8, 8, 1), num_classes=10, width=4, depth=1, conv="xla",
                      fused_norm=False).forward_mode is None
    params, state = native.init(jax.random.key(0))
    x, y = jnp.asarray(digits.x_train[:40]), jnp.asarray(digits.y_train[:40])
    rng = np.random.default_rng(1)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)
    got = hessian.hvp(hessian.inner_loss(native, state, x, y), params, v)
    plain = lambda p: inner.cross_entropy(native.apply(p, state, x, True)[0], y)  # noqa: E731 (custom VJPs inside)
    ref = jax.grad(lambda p: optax_tree_vdot(jax.grad(plain)(p), v))(params)
    chex.assert_trees_all_close(got, ref, rtol=2e-3, atol=2e-4)
    assert float(hessian.tree_cosine(got, ref)) > 1 - 1e-5

    r = jaxdd.distill("digits", method="at-bptt", ipc=1, steps=2, width=4, depth=1, unroll_steps=8, window=3,
                      delta=1, lowrank=4, real_batch=64, final_eval=False, progress=False)
    assert np.isfinite(r.images).all() and np.isfinite(r.metrics[-1]["loss"])


def optax_tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


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


def test_lanczos_start_vectors_come_from_the_members_key(monkeypatch):
    """own_factors hands the member's key to Lanczos (not fold_in(key(0), t)): two member keys give two start
    keys and the same key the same one (a resumed run replays its step keys); bptt.meta_gradient derives it
    from the member key."""
    from jaxdd.methods import at_bptt, bptt

    seen = []
    monkeypatch.setattr(hessian, "low_rank_hessian", lambda loss, params, k, key: seen.append(key) or (None, None))
    monkeypatch.setattr(hessian, "low_rank_grad_map", lambda model, factors: None)
    model = make_model("convnet", image_shape=(4, 4, 1), num_classes=2, width=2, depth=1)
    params, state = model.init(jax.random.key(0))
    cfg = inner.InnerConfig(optimizer="sgd", lr=0.1, ipc=1, num_classes=2, total_steps=3)
    carry = inner.init_carry(params, state, cfg)
    theta, consts = {"images": jnp.zeros((2, 4, 4, 1))}, {"labels": jnp.arange(2)}
    at_window_start = at_bptt.own_factors(model, 2)
    for k in (1, 2, 1):
        at_window_start(carry, theta, consts, jax.random.key(k))
    data = [np.asarray(jax.random.key_data(k)) for k in seen]
    assert not np.array_equal(data[0], data[1]) and np.array_equal(data[0], data[2])
    keys = []
    bptt.meta_gradient(model, cfg, theta, consts, params, state, jnp.zeros((2, 4, 4, 1)), jnp.arange(2),
                       jax.random.key(5), 1, window=2, grad_map_at=lambda c, t, k_, key: keys.append(key))
    np.testing.assert_array_equal(jax.random.key_data(keys[0]), jax.random.key_data(jax.random.fold_in(jax.random.key(5), 1)))
