"""The share of wall time the plateau rule's validation evaluations take in a published run.

    python -m benchmarks.plateau_cost [--dataset cifar10 --ipc 10] [--meta-steps 2] [--eval-steps 10,30]

Times, on random data of the published setting's shape (timing does not depend on pixel values):
one meta-step of `jaxdd distill --published` (the last of --meta-steps, after compilation), and one
validation evaluation under the published protocol (--eval-models networks, the preset's --eval-steps),
from two shorter evaluations after a warm-up (per-step slope + fixed part, extrapolated linearly to the
preset's steps). Share = evaluation / (eval_every × meta-step + evaluation). One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jaxdd import distillation, presets
from jaxdd.evaluation import evaluate
from jaxdd.data.dataset import Dataset
from jaxdd.methods.bptt import TRAIN_IMAGES


def random_dataset(key: str, num_classes: int, shape, val_fraction: float, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    n = TRAIN_IMAGES[key]
    n_val = int(round(val_fraction * n))

    def images(count):
        return rng.standard_normal((count, *shape), dtype=np.float32)

    def labels(count):
        return (np.arange(count) % num_classes).astype(np.int32)

    return Dataset(key, images(n - n_val), labels(n - n_val), images(1000), labels(1000), num_classes,
                   tuple(str(c) for c in range(num_classes)), x_val=images(n_val), y_val=labels(n_val))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--meta-steps", type=int, default=2)
    p.add_argument("--eval-steps", default="10,30", help="two short evaluation lengths for the slope")
    args = p.parse_args(argv)
    settings = presets.preset("rat-bptt", args.dataset, args.ipc, published=True)
    classes = {"cifar10": 10, "cifar100": 100, "tiny_imagenet": 200}[args.dataset]
    shape = (64, 64, 3) if args.dataset == "tiny_imagenet" else (32, 32, 3)
    dataset = random_dataset(args.dataset, classes, shape, settings.val_fraction)
    run = distillation.prepare(dataset, "rat-bptt", args.ipc, args.meta_steps, published=True,
                               stop="steps", eval_every=0)  # only the steps here: the evaluation is timed below
    distillation.loop(run, progress=False)
    seconds = [r["seconds"] for r in run.rows]
    step = seconds[-1] - seconds[-2] if len(seconds) > 1 else seconds[0]
    arrays = distillation.finalize_arrays(run, run.state)
    short = [int(s) for s in args.eval_steps.split(",")]
    protocol = dict(run.spec.evaluation(run.settings))

    def timed(steps):
        t = time.perf_counter()
        evaluate(np.asarray(arrays["images"]), np.asarray(arrays["labels"]), dataset, split="val",
                              **dict(protocol, steps=steps))
        return time.perf_counter() - t

    timed(short[0])  # compiles (the step count is traced: one compilation serves every length)
    t1, t2 = timed(short[0]), timed(short[1])
    per_step = (t2 - t1) / (short[1] - short[0])
    evaluation = t1 + per_step * (settings.eval_steps - short[0])
    share = evaluation / (settings.eval_every * step + evaluation)
    print(json.dumps(dict(dataset=args.dataset, ipc=args.ipc, meta_step_s=round(step, 3),
                          eval_models=settings.eval_models, eval_steps=settings.eval_steps,
                          eval_short_s={short[0]: round(t1, 3), short[1]: round(t2, 3)},
                          eval_per_step_s=round(per_step, 4), eval_s=round(evaluation, 2),
                          eval_every=settings.eval_every, share=round(share, 4))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
