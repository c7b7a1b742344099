"""Validation-split sweep of trajectory-matching settings: one JSON line per configuration.

    python benchmarks/matching_sweep.py --ipc 1 --steps 50 '{"syn_lr": 0.1}' '{"syn_lr": 0.1, "seed": 1}'

Each argument is a JSON object of `MatchingSettings` overrides (plus "seed"), applied on top of the
method's CPU preset for --dataset. The run distils (no test evaluation), then scores the distilled set
and the run's initial random real images on the validation split under the same protocol (the "mtt"
protocol with the learned lr), so presets are chosen without looking at the test split. Experts come
from the shared cache (trained on first use).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # this checkout's jaxdd
from jaxdd import distillation as d  # noqa: E402


def run(dataset: str, ipc: int, steps: int, seed: int = 0, **overrides) -> dict:
    t0 = time.time()
    r = d.prepare(dataset, "mtt", ipc, steps, seed=seed, **overrides)
    d.loop(r, progress=False)
    arrays = {k: np.asarray(v) for k, v in d._finalize(r, r.state).items()}
    ev = d.evaluate_set(r, arrays, split="val")
    base = d.evaluate_set(r, {"images": r.initial[0], "labels": r.initial[1], "lr": arrays["lr"]}, split="val")
    return dict(dataset=dataset, ipc=ipc, steps=steps, seed=seed, over=overrides, val=ev["accuracy_mean"],
                val_real=base["accuracy_mean"], gap=ev["accuracy_mean"] - base["accuracy_mean"], lr=float(arrays["lr"]),
                loss=float(np.mean([row["loss"] for row in r.rows[-10:]])), seconds=round(time.time() - t0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("configs", nargs="*", default=["{}"], help="JSON objects of setting overrides (and 'seed')")
    args = ap.parse_args()
    for spec in args.configs:
        over = json.loads(spec)
        seed = over.pop("seed", 0)
        print(json.dumps(run(args.dataset, args.ipc, args.steps, seed=seed, **over)), flush=True)


if __name__ == "__main__":
    main()
