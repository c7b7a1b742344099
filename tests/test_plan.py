"""`jaxdd plan`: FLOPs counted through loops, the data set's facts without its data, the step's memory
from the compiled program, the experts' and evaluation networks' programs, --memory advice, --json and
the device check's --tiny path (small: digits, width 4, depth 1, a few inner steps; four compilations
in all, the other methods traced only)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import device_check
from jaxdd import experts, planning, plans
from jaxdd.cli import main
from jaxdd.data.facts import facts
from jaxdd.experts import store

TINY = device_check.TINY["rat-bptt"]  # the device check's --tiny row: one compilation serves both
MTT = dict(width=4, depth=1, syn_steps=3, eval_steps=10, num_experts=3, expert_train_epochs=2, max_start_epoch=1,
           expert_epochs=1)


@pytest.fixture(scope="module")
def rat():
    return plans.plan("digits", "rat-bptt", 2, overrides=TINY, evaluation=False, devices=1)


@pytest.fixture(scope="module")
def mtt():
    """MTT planned with every program, and 1 byte of memory: the advice's first change is compiled."""
    return plans.plan("digits", "mtt", 2, overrides=MTT, devices=1, memory=1, advice_compiles=1)


def test_flops_count_every_loop_trip():
    """XLA's cost_analysis counts a loop body once; the planner's count multiplies by the trip count."""
    def f(x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ c), None), x, None, length=7)[0].sum()

    x = jax.ShapeDtypeStruct((16, 16), jnp.float32)
    flops, dynamic = planning.matmul_flops(jax.make_jaxpr(f)(x))
    assert flops == 7 * 2 * 16**3 and dynamic == 0
    conv = jax.make_jaxpr(lambda a, k: jax.lax.conv_general_dilated(
        a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))(
        jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32), jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32))
    assert planning.matmul_flops(conv)[0] == 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)
    loop = jax.make_jaxpr(lambda a, n: jax.lax.fori_loop(0, n, lambda i, c: c @ c, a))(x, 3)
    assert planning.matmul_flops(loop, dynamic_trips=5.0) == (5 * 2 * 16**3, 1)


def test_facts_without_data_and_zero_cost_stand_in():
    f = facts("tfds:cifar100")
    assert (f.image_shape, f.num_classes, f.num_train) == ((32, 32, 3), 100, 50_000)
    ds = planning.stand_in(f, 0.1)
    assert ds.x_train.shape == (45_000, 32, 32, 3) and ds.x_val.shape == (5_000, 32, 32, 3)
    assert ds.x_train.base.nbytes <= 8  # a zero-stride view: no image is held
    assert np.bincount(ds.y_train).min() == 450


def test_plan_rat_bptt_memory_and_flops(rat):
    step = rat["programs"][0]
    assert step["peak_bytes"] == step["argument_bytes"] + step["output_bytes"] + step["temp_bytes"] \
        - step["alias_bytes"] + step["resident_bytes"]
    assert step["temp_bytes"] > 0 and step["argument_bytes"] > 0
    n_train = 1437 - round(rat["settings"]["val_fraction"] * 1437)
    assert step["resident_bytes"] == n_train * 64 * 4 + n_train * 4  # the training split kept on the device
    assert step["total_flops"] == step["flops_per_step"] * rat["steps"]
    # the trace alone counts the same FLOPs; a longer window differentiates more steps: more FLOPs per step
    traced = plans.plan("digits", "rat-bptt", 2, overrides=TINY, devices=1, compile=False)["programs"]
    assert len(traced) == 1 and traced[0]["flops_per_step"] == step["flops_per_step"] and traced[0]["peak_bytes"] == 0
    longer = plans.plan("digits", "rat-bptt", 2, overrides=dict(TINY, window=3), devices=1, compile=False)
    assert longer["programs"][0]["flops_per_step"] > step["flops_per_step"]


def test_cli_passes_the_options_and_prints_the_plan(rat, monkeypatch, capsys):
    seen = {}

    def fake_plan(source, method, ipc, **kwargs):
        seen.update(kwargs, source=source, method=method, ipc=ipc)
        return rat

    monkeypatch.setattr(plans, "plan", fake_plan)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["plan", "--dataset", "digits", "--method", "rat-bptt", "--ipc", "2", "--devices", "1", "--no-eval",
                 "--memory", "2GiB", "--json", *flags]) == 0
    assert seen["overrides"] == TINY and seen["memory"] == 2 * 2**30 and seen["devices"] == 1
    assert seen["evaluation"] is False and (seen["method"], seen["ipc"]) == ("rat-bptt", 2)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["programs"][0]["flops_per_step"] == rat["programs"][0]["flops_per_step"]
    assert main(["plan", "--dataset", "digits", "--method", "rat-bptt", "--ipc", "2", *flags]) == 0
    table = capsys.readouterr().out
    assert "rat-bptt IPC 2 on digits" in table and "distillation step" in table and "H100 80GB" in table


def test_plan_mtt_experts_evaluation_and_advice(mtt):
    step, expert, evaluation = mtt["programs"]
    assert step["resident_bytes"] == 0 and step["flops_per_step"] > 0 and evaluation["steps"] == 10
    # the experts: FLOPs per expert-epoch = one SGD gradient per training image; experts x epochs of them
    assert expert["steps"] == 3 * 2 and expert["peak_bytes"] > 0
    s = mtt["settings"]
    kw = experts.run_keywords(planning.resolve("digits", facts("digits"), "mtt", 2, overrides=MTT)[0], 0)
    n = 1437 - round(s["val_fraction"] * 1437)
    net = store.network(dict(image_shape=[8, 8, 1], num_classes=10),
                        experts.resolve_settings(planning.stand_in(facts("digits")), **kw))

    def loss(params, state, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(net.apply(params, state, x, train=True)[0], y).mean()

    params, state = net.init(jax.random.key(0))
    one = planning.matmul_flops(jax.make_jaxpr(jax.grad(loss))(params, state, jnp.zeros((1, 8, 8, 1)),
                                                               jnp.zeros((1,), jnp.int32)))[0]
    assert expert["flops_per_step"] == pytest.approx(n * one, rel=1e-9)
    # 1 byte fits nothing: the first change tried is half the synthetic batch, with a smaller step
    assert mtt["fits"] is False and mtt["advice"]["found"] is False
    tried = mtt["advice"]["tried"]
    assert [t["overrides"] for t in tried] == [dict(batch_syn=10)]
    assert tried[0]["peak_bytes"] < step["peak_bytes"] and tried[0]["flops_per_step"] < step["flops_per_step"]


def test_advice_candidates_are_distinct():
    settings = planning.resolve("digits", facts("digits"), "mtt", 2, overrides=MTT)[0]
    assert [c[1] for c in plans.candidates(settings, 1, 2, 10)] == [dict(batch_syn=10)]
    assert [c[1] for c in plans.candidates(settings, 1, 40, 10)] == [dict(batch_syn=b) for b in (200, 100, 50)]


def test_other_methods_traced(rat, mtt):
    """Boost-DD at one block is its inner estimator's step; SelMatch's frozen rows cost no more than
    MTT's step; AT-BPTT's step counts its prefix loop (traced only: the compilation is the same code)."""
    def flops(method, **extra):
        return plans.plan("digits", method, 2, overrides=extra, devices=1, compile=False)["programs"][0]

    assert flops("boost", **TINY, block=2)["flops_per_step"] == rat["programs"][0]["flops_per_step"]
    sel = flops("selmatch", **MTT, alpha=0.5, beta=0.0)
    assert 0 < sel["flops_per_step"] <= mtt["programs"][0]["flops_per_step"]
    at = flops("at-bptt", **TINY, delta=1)
    assert at["flops_per_step"] > 0 and at["dynamic_loops"] == 1


def test_device_check_tiny_writes_a_row(tmp_path):
    """benchmarks/device_check.py --tiny: the GPU script's code path on the CPU (the row and both numbers,
    not their values; the accuracy curve's points)."""
    out = tmp_path / "check"
    assert device_check.main(["--tiny", "--methods", "rat-bptt", "--repeats", "1", "--out", str(out),
                              "--cache-dir", str(tmp_path / "cache"), "--curve", "4"]) == 0
    record = json.loads((out / "device_check.json").read_text())
    rows, acc = record["rows"], record["curve"]
    assert record["seconds"] > 0 and record["command"].startswith("python -m benchmarks.device_check --tiny")
    assert [n for n, _ in acc["val_accuracy"]] == [1, 2, 3]  # every steps/5 = 1 step; the last is scored on test
    assert all(0 <= v <= 1 for _, v in acc["val_accuracy"]) and 0 <= acc["test"] <= 1
    assert [r["method"] for r in rows] == ["rat-bptt"]
    # on the CPU the measure is the rise of resident memory: 0 when the step fits in memory the process already
    # holds (it did on CI), so only its presence is checked there
    assert all(r["planned_bytes"] > 0 and r["measured_bytes"] >= 0 and r["seconds"] > 0 for r in rows)
    assert (out / "device_check.md").read_text().count("\n") == 5  # header, rule, the row, the curve's line
