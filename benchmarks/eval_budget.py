"""Does the gain over random real images depend on the evaluation budget? Validation split only.

    nice python benchmarks/eval_budget.py --dataset /tmp/jaxdd-sets/cifar10s16 [--steps 300] [--config '{}']

Distils IPC 1 with the preset (plus --config overrides), then trains the run's evaluation networks for
1000 steps on the distilled set and on random real images of the same size (seeds 0-2), scoring both on
the validation split at 20 / 40 / 80 / 150 / 300 / 500 / 1000 steps. One JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from jaxdd import distillation
from jaxdd.evaluation import evaluate, random_real

CHECKPOINTS = (20, 40, 80, 150, 300, 500, 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--method", default="rat-bptt")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--config", default="{}", help="JSON settings overrides")
    a = ap.parse_args()
    run = distillation.prepare(a.dataset, a.method, 1, a.steps, seed=0, eval_every=0, **json.loads(a.config))
    distillation.loop(run, progress=False)
    arrays = distillation._finalize(run, run.state)
    kw = dict(run.spec.evaluation(run.settings), steps=max(CHECKPOINTS), checkpoints=CHECKPOINTS)
    kw.pop("use_learned_lr", None)

    def val(images, labels):
        r = evaluate(np.asarray(images), np.asarray(labels), run.dataset, split="val", seed=0, **kw)
        return {s: round(100 * v["mean"], 1) for s, v in r["accuracy_at"].items()}

    d = val(arrays["images"], arrays["labels"])
    rs = [val(*random_real(run.dataset, 1, seed=s)) for s in range(3)]
    rr = {s: round(float(np.mean([x[s] for x in rs])), 1) for s in d}
    print(json.dumps(dict(dataset=a.dataset, config=json.loads(a.config), distilled_val=d, random_real_val=rr,
                          gain={s: round(d[s] - rr[s], 1) for s in d})), flush=True)


if __name__ == "__main__":
    main()
