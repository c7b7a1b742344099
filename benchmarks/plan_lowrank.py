"""AT-BPTT's low-rank Hessian backward against the exact window backward: FLOPs per meta-step by rank K,
window W and width, at the paper's CIFAR-10 IPC 10 setting otherwise (docs/planning.md).

    nice python -m benchmarks.plan_lowrank --out benchmarks/results/plan_lowrank.jsonl

FLOPs only: each step is traced, not compiled (`jaxdd plan`'s count, compile=False), so a row takes
seconds. A `cond` is counted at its costliest branch: the shared source's refresh (Lanczos) is
counted in every step, although it runs every --lowrank-every steps.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks import harness
from jaxdd import plans

WIDTHS = (32, 64, 128, 256)
WINDOWS = (20, 40, 80)
RANKS = (0, 5, 20, 50)


def cases():
    for width in WIDTHS:
        for window in WINDOWS if width == 128 else (40,):
            for k in RANKS:
                yield dict(width=width, window=window, lowrank=k)
            yield dict(width=width, window=window, lowrank=20, lowrank_source="shared")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/plan_lowrank.jsonl")
    a = p.parse_args(argv)
    commit = harness.commit()
    for extra in cases():
        t0 = time.perf_counter()
        step = plans.plan("tfds:cifar10", "at-bptt", 10, published=True, overrides=extra, devices=1,
                          compile=False)["programs"][0]
        r = dict(extra, flops_per_step=step["flops_per_step"], seconds=round(time.perf_counter() - t0, 1),
                 commit=commit, date=time.strftime("%Y-%m-%d %H:%M:%S"), machine="shared 2-core Intel Xeon (KVM)",
                 command="python -m benchmarks.plan_lowrank")
        with open(a.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{extra}: {step['flops_per_step'] / 1e9:,.0f} GFLOP/step ({r['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
