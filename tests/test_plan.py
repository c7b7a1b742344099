"""`jaxdd plan`: FLOPs counted through loops, the data set's facts without its data, the step's memory
from the compiled program, --memory advice and --json (small: digits, width 8, a few inner steps)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import planning, plans
from jaxdd.cli import main
from jaxdd.data.facts import facts

SMALL = dict(width=8, unroll_steps=6, window=2, real_batch=64, eval_steps=10)


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


def test_plan_rat_bptt_numbers_and_json(capsys):
    base = plans.plan("digits", "rat-bptt", 2, overrides=SMALL, evaluation=False)
    step = base["programs"][0]
    assert step["peak_bytes"] == step["argument_bytes"] + step["output_bytes"] + step["temp_bytes"] \
        - step["alias_bytes"] + step["resident_bytes"]
    n_train = 1437 - round(base["settings"]["val_fraction"] * 1437)
    assert step["resident_bytes"] == n_train * 64 * 4 + n_train * 4  # the training split kept on the device
    assert step["total_flops"] == step["flops_per_step"] * base["steps"]
    # a longer window differentiates more steps: more FLOPs per step (prefix counted at its expectation)
    longer = plans.plan("digits", "rat-bptt", 2, overrides=dict(SMALL, window=4), evaluation=False)
    assert longer["programs"][0]["flops_per_step"] > step["flops_per_step"]
    assert main(["plan", "--dataset", "digits", "--method", "rat-bptt", "--ipc", "2", "--no-eval", "--json",
                 *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["programs"][0]["flops_per_step"] == step["flops_per_step"]
    assert printed["programs"][0]["peak_bytes"] == step["peak_bytes"]


def test_plan_mtt_needs_no_experts_and_advice_fits():
    result = plans.plan("digits", "mtt", 2, overrides=dict(width=8, syn_steps=4, eval_steps=10), memory=10**4)
    step, evaluation = result["programs"]
    assert step["resident_bytes"] == 0 and step["flops_per_step"] > 0 and evaluation["steps"] == 10
    assert result["fits"] is False and result["advice"]["found"] is False  # 10 kB fits nothing


@pytest.mark.parametrize("method", ["boost", "selmatch", "at-bptt"])
def test_plan_every_method_compiles(method):
    extra = dict(block=1) if method == "boost" else dict(alpha=0.5, beta=0.0) if method == "selmatch" else {}
    small = dict(width=8, eval_steps=10, **({"syn_steps": 3} if method == "selmatch" else
                                            dict(unroll_steps=8, window=3, real_batch=64, delta=1)), **extra)
    small.pop("delta", None) if method != "at-bptt" else None
    result = plans.plan("digits", method, 2, overrides=small, evaluation=False)
    assert result["programs"][0]["peak_bytes"] > 0 and result["programs"][0]["flops_per_step"] > 0


def test_device_check_tiny_writes_every_row(tmp_path):
    """benchmarks/device_check.py --tiny: the GPU script's code path on the CPU (rows and both numbers, not
    their values)."""
    from benchmarks import device_check

    out = tmp_path / "check"
    assert device_check.main(["--tiny", "--methods", "rat-bptt,mtt", "--repeats", "1", "--out", str(out),
                              "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = json.loads((out / "device_check.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["rat-bptt", "mtt"]
    assert all(r["planned_bytes"] > 0 and r["measured_bytes"] > 0 and r["seconds"] > 0 for r in rows)
    assert (out / "device_check.md").read_text().count("\n") == 4
