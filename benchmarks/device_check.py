"""One device check: each method's meta-step at its paper setting, planned beside measured (docs/planning.md).

    python -m benchmarks.device_check --out results/      # a lent GPU (never run on one yet: docs/planning.md)
    python -m benchmarks.device_check --tiny --out /tmp/x  # the same code path on a CPU, digits, small settings

Per row: `jaxdd plan`'s peak and FLOPs for the setting (made without data), then the run prepared as the
driver does (CIFAR-10 from the JPEG archive, `--data`; --tiny uses digits), its step compiled ahead of
time and run `--repeats` times: seconds per step (median), peak memory (GPU: the device's
peak_bytes_in_use; CPU: the rise of the process's resident memory during one step, 0 when the step fits in
memory the process holds, beside the planned outputs + temporaries − aliases) and achieved FLOP/s. Then
`--curve N` meta-steps of RaT-BPTT with the validation accuracy every N/5 (the accuracy curve) and, with
`--torch`, `benchmarks.meta_step` (jaxdd's RaT-BPTT meta-step beside the PyTorch reference's, same
setting, one run; `--quick` on the CPU). Writes device_check.json and device_check.md (and
torch_meta_step.jsonl / .md) under --out. Not here: a PyTorch reference of MTT's step (tests/ hold one
at toy size only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax

from benchmarks import harness
from jaxdd import distillation, parallel, plans

ARCHIVE = "cifar10-jpeg.tar.xz"  # the JPEG archive of ../shared/data (the device has no tfds and no network)
DATA = [os.path.join("shared", "data", ARCHIVE), os.path.join(".data", ARCHIVE),
        os.path.join("..", "shared", "data", ARCHIVE)]  # where --data looks by default, in this order
PAPER = [("rat-bptt", 10, {}), ("at-bptt", 10, {}), ("at-bptt", 10, dict(lowrank=20)), ("boost", 10, dict(block=5)),
         ("mtt", 10, {}), ("selmatch", 500, {})]  # (method, IPC, overrides) on CIFAR-10, --published
TINY = {"rat-bptt": dict(width=4, depth=1, unroll_steps=4, window=2, real_batch=32, inner_optimizer="sgd"),
        "at-bptt": dict(width=8, unroll_steps=8, window=3, delta=1, real_batch=64),
        "boost": dict(width=8, unroll_steps=6, window=2, real_batch=64, block=1),
        "mtt": dict(width=8, syn_steps=3, num_experts=1, expert_train_epochs=2, max_start_epoch=1, expert_epochs=1),
        "selmatch": dict(width=8, syn_steps=3, num_experts=1, expert_train_epochs=2, max_start_epoch=1,
                         expert_epochs=1, beta=0.0, alpha=0.5)}


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(source, method, ipc, overrides, *, published: bool, repeats: int, cache_dir=None) -> dict:
    """Seconds per step and peak memory of a run's outer step, prepared as the driver prepares it."""
    mesh = parallel.make_mesh(1)
    run = distillation.prepare(source, method, ipc, steps=repeats + 1, mesh=mesh, published=published,
                               cache_dir=cache_dir, **overrides)
    meth = run.method
    state = parallel.put(run.state, parallel.state_shardings(mesh, run.state))
    step = parallel.jit_step(meth.step, mesh, state, batch_sharding_kind=meth.batch_sharding)
    key = jax.random.wrap_key_data(jax.device_get(state.key))
    k_batch, k_step = jax.random.split(jax.random.fold_in(key, 0))
    batch = jax.block_until_ready(meth.batch(0, k_batch))
    compiled = step.lower(state, batch, k_step).compile()
    device = jax.devices()[0]
    cpu = device.platform == "cpu"
    resident = _status("VmRSS") if cpu else 0
    if cpu:
        with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) from here on
            f.write("5")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(compiled(state, batch, k_step))
        times.append(time.perf_counter() - t0)
    if cpu:  # 0 when the step fits in memory the process already holds
        measured = dict(peak_kind="rise of resident memory", measured_bytes=max(0, _status("VmHWM") - resident))
    else:
        measured = dict(peak_kind="peak_bytes_in_use", measured_bytes=int(device.memory_stats()["peak_bytes_in_use"]))
    return dict(seconds=statistics.median(times), times=times, device=device.device_kind, **measured)


def check(rows, *, published: bool, repeats: int, cache_dir=None, log=print) -> list[dict]:
    out = []
    for method, source, ipc, overrides in rows:
        plan = plans.plan(source, method, ipc, published=published, overrides=overrides, evaluation=False,
                          devices=1)  # measured on one device
        step = plan["programs"][0]
        r = dict(method=method, source=source, ipc=ipc, overrides=overrides, planned_peak=step["peak_bytes"],
                 planned_transient=step["output_bytes"] + step["temp_bytes"] - step["alias_bytes"],
                 flops=step["flops_per_step"])
        r.update(measure(source, method, ipc, overrides, published=published, repeats=repeats, cache_dir=cache_dir))
        planned = r["planned_transient"] if r["peak_kind"] != "peak_bytes_in_use" else r["planned_peak"]
        r.update(planned_bytes=planned, ratio=r["measured_bytes"] / max(planned, 1),
                 flops_per_second=r["flops"] / r["seconds"])
        device = plans.present_device()
        r["share_of_peak"] = r["flops_per_second"] / device.peak if device else None
        log(f"{method} {source} IPC {ipc} {overrides}: {r['seconds']:.3f} s/step, planned {planned / 2**20:.1f} MiB, "
            f"measured {r['measured_bytes'] / 2**20:.1f} MiB")
        out.append(r)
    return out


def curve(source, steps: int, *, published: bool, overrides: dict, cache_dir=None) -> dict:
    """RaT-BPTT for `steps` meta-steps with the validation accuracy every steps/5 (the last step's set is
    scored on test instead), then the test accuracy and random real's under the same protocol."""
    result = distillation.distill(source, "rat-bptt", 10 if published else 2, steps, published=published,
                                  progress="lines", cache_dir=cache_dir, eval_every=max(1, steps // 5), **overrides)
    points = [(m["step"], m["val_accuracy"]) for m in result.metrics if "val_accuracy" in m]
    return dict(steps=steps, overrides=overrides, val_accuracy=points, test=result.evaluation["accuracy_mean"],
                random_real=result.baseline["accuracy_mean"])


def torch_reference(out: str, *, tiny: bool) -> int:
    """`benchmarks.meta_step` in its own process (jaxdd and PyTorch, the same RaT-BPTT step) into `out`."""
    cmd = [sys.executable, "-m", "benchmarks.meta_step", *(["--quick"] if tiny else ["--device", "gpu"]),
           "--repeats", "3", "--out", os.path.join(out, "torch_meta_step.jsonl"),
           "--md", os.path.join(out, "torch_meta_step.md")]
    print(" ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def markdown(rows: list[dict]) -> str:
    lines = ["| method | data | IPC | extra | s/step | planned MiB | measured MiB | measured/planned | GFLOP/s | % peak |",
             "|" + "---|" * 10]
    for r in rows:
        share = f"{100 * r['share_of_peak']:.0f}" if r["share_of_peak"] is not None else "-"
        lines.append(f"| {r['method']} | {r['source']} | {r['ipc']} | {r['overrides'] or ''} | {r['seconds']:.3f} | "
                     f"{r['planned_bytes'] / 2**20:.1f} | {r['measured_bytes'] / 2**20:.1f} | {r['ratio']:.2f} | "
                     f"{r['flops_per_second'] / 1e9:.1f} | {share} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="digits and small settings: the same code path on a CPU")
    p.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/device_check")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--data", default=None, help=f"the CIFAR-10 JPEG archive (default: the first of {', '.join(DATA)})")
    p.add_argument("--curve", type=int, default=None, metavar="N",
                   help="meta-steps of the RaT-BPTT accuracy curve (default 300; --tiny: 0, none)")
    p.add_argument("--torch", action="store_true", help="also benchmarks.meta_step: jaxdd beside PyTorch")
    a = p.parse_args(argv)
    start = time.perf_counter()
    if a.tiny:
        source, rows = "digits", [(m, 2, dict(TINY[m], eval_steps=10)) for m in TINY]
    else:
        source = a.data or next((d for d in DATA if os.path.exists(d)), None)
        if source is None or not os.path.exists(source):
            raise SystemExit(f"device_check: no CIFAR-10 archive at {a.data or ' or '.join(DATA)}: copy "
                             f"../shared/data/{ARCHIVE} to .data/ and carry it, or pass --data")
        rows = PAPER
    if a.methods:
        rows = [r for r in rows if r[0] in a.methods.split(",")]
    result = check([(m, source, ipc, o) for m, ipc, o in rows], published=not a.tiny, repeats=a.repeats,
                   cache_dir=a.cache_dir)
    steps = (0 if a.tiny else 300) if a.curve is None else a.curve
    acc = curve(source, steps, published=not a.tiny, cache_dir=a.cache_dir,
                overrides=dict(TINY["rat-bptt"], eval_steps=10, eval_models=1) if a.tiny
                else dict(eval_models=2, eval_steps=1000)) if steps else None
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "device_check.json"), "w") as f:
        json.dump(dict(rows=result, curve=acc, tiny=a.tiny, data=source, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                       commit=harness.commit(), device=str(jax.devices()[0].device_kind),
                       command="python -m benchmarks.device_check " + " ".join(argv or sys.argv[1:]),
                       seconds=round(time.perf_counter() - start, 1)),
                  f, indent=1, default=str)
    with open(os.path.join(a.out, "device_check.md"), "w") as f:
        f.write(markdown(result))
        if acc:
            f.write(f"\nRaT-BPTT on {source}, {acc['steps']} meta-steps {acc['overrides'] or ''}: validation accuracy "
                    + ", ".join(f"{100 * v:.1f} % at {n}" for n, v in acc["val_accuracy"])
                    + f"; test {100 * acc['test']:.2f} % against random real {100 * acc['random_real']:.2f} %\n")
    return torch_reference(a.out, tiny=a.tiny) if a.torch else 0


if __name__ == "__main__":
    raise SystemExit(main())
