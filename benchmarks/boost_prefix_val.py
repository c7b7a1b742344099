"""Boost-DD's prefixes on the validation split (for choices; never test): one boosted run, every prefix scored.

    nice python benchmarks/boost_prefix_val.py --fresh-init means --seed 0 --ipc 6 [--jsonl F]

Distils `digits` (or --dataset) with `--method boost --block 2`, --steps-per-block meta-steps a block and
the preset otherwise, then scores the first k images per class for k = 2, 4, ..., IPC on the validation
split under the run's own protocol. One JSON line: the fresh-block start, seed, IPC and the accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxdd import distillation
from jaxdd.evaluation import prefix_ipc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--fresh-init", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ipc", type=int, default=6)
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--steps-per-block", type=int, default=200)
    ap.add_argument("--beta", type=float, default=None, help="boost's --beta (default: the method's)")
    ap.add_argument("--jsonl", help="append the result line to this file")
    a = ap.parse_args()
    steps = a.steps_per_block * (a.ipc // a.block)
    run = distillation.prepare(a.dataset, "boost", a.ipc, steps, seed=a.seed, eval_every=0, block=a.block,
                               fresh_init=a.fresh_init, **({} if a.beta is None else {"beta": a.beta}))
    distillation.loop(run, progress=False)
    arrays = distillation._finalize(run, run.state)
    prefix = {}
    for k in range(a.block, a.ipc + 1, a.block):
        images, labels = prefix_ipc(arrays["images"], arrays["labels"], k, run.dataset.num_classes)
        score = distillation.evaluate_set(run, {"images": images, "labels": labels}, split="val")
        prefix[k] = round(100 * score["accuracy_mean"], 2)
    row = dict(fresh=a.fresh_init, beta=run.settings.beta, seed=a.seed, ipc=a.ipc, steps_per_block=a.steps_per_block,
               prefix_val=prefix, command="python " + " ".join(sys.argv), evaluation=run.record["evaluation"])
    print(json.dumps(row), flush=True)
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
