"""The planner against measurement on this CPU: each method's step at three sizes (docs/planning.md).

    nice python -m benchmarks.plan_check --out benchmarks/results/plan_check.jsonl

Per case, a fresh process prepares the run as the driver does (digits, data loaded), compiles its outer
step ahead of time, notes its resident memory (VmRSS: state, data, compiled code), resets the peak
(/proc/self/clear_refs 5), runs one step and reads the peak (VmHWM): `device_check.measure`. The
measured transient, peak − resident, is set beside the planner's (outputs + temporaries − donated aliases) from `jaxdd plan`,
made in the parent without the data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks import device_check, harness

CASES = {
    "rat-bptt": [dict(width=w, unroll_steps=20, window=10, real_batch=256) for w in (64, 128, 256)],
    "at-bptt": [dict(width=w, unroll_steps=20, window=10, delta=2, real_batch=256) for w in (64, 128, 256)],
    "boost": [dict(width=w, unroll_steps=20, window=10, real_batch=256, block=5) for w in (64, 128, 256)],
    "mtt": [dict(width=w, syn_steps=20, num_experts=1, expert_train_epochs=3, max_start_epoch=1, expert_epochs=1)
            for w in (64, 128, 256)],
    "selmatch": [dict(width=w, syn_steps=20, num_experts=1, expert_train_epochs=3, max_start_epoch=1,
                      expert_epochs=1, beta=0.0, alpha=0.5) for w in (64, 128, 256)],
}
IPC = 10


def child(method: str, overrides: dict) -> dict:
    m = device_check.measure("digits", method, IPC, overrides, published=False, repeats=1,
                             cache_dir="/tmp/jaxdd-plan-check")
    return dict(measured=m["measured_bytes"], seconds=m["seconds"])


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/plan_check.jsonl")
    p.add_argument("--methods", default=",".join(CASES))
    p.add_argument("--child", default=None)
    a = p.parse_args(argv)
    if a.child:
        method, overrides = json.loads(a.child)
        print(json.dumps(child(method, overrides)))
        return
    from jaxdd import plans

    commit = harness.commit()
    for method in a.methods.split(","):
        for overrides in CASES[method]:
            step = plans.plan("digits", method, IPC, overrides=overrides, evaluation=False)["programs"][0]
            planned = step["output_bytes"] + step["temp_bytes"] - step["alias_bytes"]
            out = subprocess.run([sys.executable, "-m", "benchmarks.plan_check", "--child",
                                  json.dumps([method, overrides])], capture_output=True, text=True)
            if out.returncode:
                print(method, overrides, "failed:", out.stderr[-500:], flush=True)
                continue
            m = json.loads(out.stdout.strip().splitlines()[-1])
            r = dict(method=method, ipc=IPC, overrides=overrides, planned=planned, planned_peak=step["peak_bytes"], **m,
                     ratio=m["measured"] / planned, commit=commit, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                     machine="shared 2-core Intel Xeon (KVM)", command="python -m benchmarks.plan_check")
            with open(a.out, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{method} {overrides.get('width')}: planned {planned / 2**20:.1f} MiB, measured "
                  f"{m['measured'] / 2**20:.1f} MiB, ratio {r['ratio']:.2f}", flush=True)


if __name__ == "__main__":
    main()
