"""Wall time for AT-BPTT to reach RaT-BPTT's final accuracy (issue 11), measured on the validation split.

    nice python -m benchmarks.time_to_accuracy --dataset digits --ipc 1 --steps 300 --eval-every 25 \
        [--extra "..."] [--jsonl benchmarks/results/at_bptt_time.jsonl]

Both methods run with the data set's default settings (AT-BPTT's CPU preset: W ± 3 around RaT-BPTT's
W) from the same seed, scoring the set on the validation split every --eval-every meta-steps
(metrics.jsonl's `val_accuracy`; the clock `seconds` includes those evaluations, which cost the same
for both). Reported: each method's final validation and test accuracy (test: the run's own final
evaluation, never used for a choice), its loop time, and the first time and step at which AT-BPTT's
validation accuracy reaches RaT-BPTT's final one, as a fraction of RaT-BPTT's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run(method: str, a) -> dict:
    out = os.path.join(a.out, f"{method}-ipc{a.ipc}")
    cmd = [sys.executable, "-m", "jaxdd", "distill", "--method", method, "--dataset", a.dataset, "--ipc", str(a.ipc),
           "--steps", str(a.steps), "--eval-every", str(a.eval_every), "--seed", str(a.seed), "--out", out,
           "--overwrite", "--json", "--no-progress", *a.extra.split()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    curve = [(r["step"], r["seconds"], r["val_accuracy"]) for r in rows if "val_accuracy" in r]
    return dict(method=method, command=" ".join(["jaxdd", *cmd[3:]]), curve=curve, loop_seconds=rows[-1]["seconds"],
                test=summary["accuracy_mean"], test_std=summary["accuracy_std"], random_real=summary["random_real_mean"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", default="", help="more distill options for both runs, one string")
    ap.add_argument("--out", default="/tmp/jaxdd-tta")
    ap.add_argument("--jsonl", default=None)
    a = ap.parse_args()
    rat, at = run("rat-bptt", a), run("at-bptt", a)
    # the last curve point is before the end (eval-every skips the final step): the final score is the max
    # of the last two points, a conservative target
    target = max(v for _, _, v in rat["curve"][-2:])
    hit = next(((s, t) for s, t, v in at["curve"] if v >= target), None)
    row = dict(dataset=a.dataset, ipc=a.ipc, steps=a.steps, seed=a.seed, extra=a.extra, target_val=target,
               rat_bptt=rat, at_bptt=at, at_step_to_target=hit and hit[0], at_seconds_to_target=hit and hit[1],
               fraction_of_rat_time=hit and round(hit[1] / rat["loop_seconds"], 3), date=time.strftime("%Y-%m-%d %H:%M"))
    print(json.dumps(row))
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
