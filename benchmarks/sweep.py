"""Choose preset values on the validation split: distil with several settings, score on val (never test).

    nice -n 15 python benchmarks/sweep.py --dataset digits --ipc 1 --steps 300 --eval-every 100 \
        --config '{}' --config '{"learn_labels": true}' [--jsonl benchmarks/results/sweep.jsonl]

Each --config is a JSON object of settings overrides on top of the preset (`jaxdd distill` option names
with '_'; "steps" may be given too). Per config one JSON line: the overrides, the validation accuracy of
the set every --eval-every steps and at the end, random real images of the same size on val under the
same protocol (mean over --baseline-seeds seeds), and the wall seconds of the distillation alone
(evaluations excluded). All in one process, so compilation caches are shared between configs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jaxdd import distillation
from jaxdd.evaluation import random_real


def run_config(dataset, method, ipc, steps, eval_every, seed, overrides, baseline_seeds):
    overrides = dict(overrides)
    steps = int(overrides.pop("steps", steps))
    run = distillation.prepare(dataset, method, ipc, steps, seed=seed, eval_every=0, **overrides)
    curve, wall = {}, 0.0
    done = 0
    for stop in list(range(eval_every, steps, eval_every)) + [steps] if eval_every else [steps]:
        run.steps = stop
        t0 = time.perf_counter()
        distillation.loop(run, progress=False)
        wall += time.perf_counter() - t0
        arrays = distillation._finalize(run, run.state)
        curve[stop] = round(100 * distillation.evaluate_set(run, arrays, split="val")["accuracy_mean"], 2)
        done = stop
    base = [100 * distillation.evaluate_set(run, dict(zip(("images", "labels"), random_real(run.dataset, ipc, seed=s))),
                                            split="val")["accuracy_mean"] for s in range(baseline_seeds)]
    return dict(dataset=str(dataset), method=method, ipc=ipc, steps=done, seed=seed, overrides=overrides,
                val=curve, random_real_val=round(float(np.mean(base)), 2), distill_seconds=round(wall, 1),
                evaluation=run.record["evaluation"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--method", default="rat-bptt")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-seeds", type=int, default=3)
    ap.add_argument("--config", action="append", default=[], help="JSON overrides (repeatable; default: '{}')")
    ap.add_argument("--jsonl", help="append the result lines to this file")
    args = ap.parse_args()
    for cfg in args.config or ["{}"]:
        row = run_config(args.dataset, args.method, args.ipc, args.steps, args.eval_every, args.seed,
                         json.loads(cfg), args.baseline_seeds)
        line = json.dumps(row)
        print(line, flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
