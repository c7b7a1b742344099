"""Choices on the validation split (never test): distil with several settings and score on val.

    nice -n 15 python -m benchmarks.sweep [config] --dataset digits --ipc 1 --steps 300 --eval-every 100 \\
        --config '{}' --config '{"learn_labels": true}' [--jsonl benchmarks/results/sweep_digits.jsonl]
    python -m benchmarks.sweep matching --ipc 1 --steps 50 '{"syn_lr": 0.1}' '{"syn_lr": 0.1, "seed": 1}'
    nice python -m benchmarks.sweep eval-budget --dataset /tmp/jaxdd-sets/cifar10s16 [--steps 300] [--config '{}']
    nice python -m benchmarks.sweep boost-prefix --fresh-init means --seed 0 --ipc 6 [--beta 0] [--jsonl F]

Subcommands (one JSON line per configuration on stdout, appended to --jsonl when given):

config (the default when no subcommand is named): each --config is a JSON object of settings overrides
  on top of the preset (`jaxdd distill` option names with '_'; "steps" may be given too). Per config: the
  overrides, the validation accuracy of the set every --eval-every steps and at the end, random real
  images of the same size on val under the same protocol (jaxdd/baseline.py, --baseline-draws draws), and the wall
  seconds of the distillation alone (evaluations excluded). All in one process, so compilation caches
  are shared between configs.
matching: trajectory matching (`--method mtt`); each positional argument is a JSON object of
  `MatchingSettings` overrides (plus "seed") on top of the method's preset for --dataset. Scores the
  distilled set and the run's initial random real images on val under the same protocol (the "mtt"
  protocol with the learned lr). Experts come from the shared cache (trained on first use).
eval-budget: does the gain over random real images depend on the evaluation budget? Distils IPC 1 with
  the preset (plus --config), then trains the run's evaluation networks for 1000 steps on the distilled
  set and on random real images of the same size (seeds 0-2), scoring both on val at 20 / 40 / 80 / 150 /
  300 / 500 / 1000 steps.
boost-prefix: one boosted run (`--method boost --block B`, --steps-per-block meta-steps a block, the
  preset otherwise), then the first k images per class for k = B, 2B, ..., IPC scored on val under the
  run's own protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from jaxdd import baseline, distillation
from jaxdd.evaluation import evaluate, prefix_ipc, random_real

CHECKPOINTS = (20, 40, 80, 150, 300, 500, 1000)


def val_accuracy(run, arrays) -> float:
    """Mean validation accuracy (%) of a set under the run's own protocol."""
    return 100 * distillation.evaluate_set(run, arrays, split="val")["accuracy_mean"]


def distilled(run) -> dict:
    """Run the distillation loop to run.steps; the set as host arrays."""
    distillation.loop(run, progress=False)
    return {k: np.asarray(v) for k, v in distillation.finalize_arrays(run, run.state).items()}


def config_rows(a):
    for cfg in a.config or ["{}"]:
        overrides = json.loads(cfg)
        steps = int(overrides.pop("steps", a.steps))
        run = distillation.prepare(a.dataset, a.method, a.ipc, steps, seed=a.seed, eval_every=0, **overrides)
        curve, wall, done = {}, 0.0, 0
        for stop in list(range(a.eval_every, steps, a.eval_every)) + [steps] if a.eval_every else [steps]:
            run.steps = stop
            t0 = time.perf_counter()
            arrays = distilled(run)
            wall += time.perf_counter() - t0
            curve[stop] = round(val_accuracy(run, arrays), 2)
            done = stop
        base = 100 * baseline.random_real(run.dataset, a.ipc, draws=a.baseline_draws, seed=run.seed, split="val",
                                          learned_lr=arrays.get("lr"),
                                          **run.spec.evaluation(run.settings))["accuracy_mean"]
        yield dict(dataset=str(a.dataset), method=a.method, ipc=a.ipc, steps=done, seed=a.seed, overrides=overrides,
                   val=curve, random_real_val=round(float(base), 2), distill_seconds=round(wall, 1),
                   evaluation=run.record["evaluation"])


def matching_rows(a):
    for spec in a.configs:
        overrides = json.loads(spec)
        seed = overrides.pop("seed", 0)
        t0 = time.time()
        run = distillation.prepare(a.dataset, "mtt", a.ipc, a.steps, seed=seed, **overrides)
        arrays = distilled(run)
        ev = val_accuracy(run, arrays) / 100
        base = val_accuracy(run, {"images": run.initial[0], "labels": run.initial[1], "lr": arrays["lr"]}) / 100
        yield dict(dataset=a.dataset, ipc=a.ipc, steps=a.steps, seed=seed, over=overrides, val=ev, val_real=base,
                   gap=ev - base, lr=float(arrays["lr"]), loss=float(np.mean([row["loss"] for row in run.rows[-10:]])),
                   seconds=round(time.time() - t0, 1))


def eval_budget_rows(a):
    config = json.loads(a.config)
    run = distillation.prepare(a.dataset, a.method, 1, a.steps, seed=0, eval_every=0, **config)
    arrays = distilled(run)
    kw = dict(run.spec.evaluation(run.settings), steps=max(CHECKPOINTS), checkpoints=CHECKPOINTS)
    kw.pop("use_learned_lr", None)

    def val(images, labels):
        r = evaluate(np.asarray(images), np.asarray(labels), run.dataset, split="val", seed=0, **kw)
        return {s: round(100 * v["mean"], 1) for s, v in r["accuracy_at"].items()}

    d = val(arrays["images"], arrays["labels"])
    rs = [val(*random_real(run.dataset, 1, seed=s)) for s in range(3)]
    rr = {s: round(float(np.mean([x[s] for x in rs])), 1) for s in d}
    yield dict(dataset=a.dataset, config=config, distilled_val=d, random_real_val=rr,
               gain={s: round(d[s] - rr[s], 1) for s in d})


def boost_prefix_rows(a):
    steps = a.steps_per_block * (a.ipc // a.block)
    run = distillation.prepare(a.dataset, "boost", a.ipc, steps, seed=a.seed, eval_every=0, block=a.block,
                               fresh_init=a.fresh_init, **({} if a.beta is None else {"beta": a.beta}))
    arrays = distilled(run)
    prefix = {}
    for k in range(a.block, a.ipc + 1, a.block):
        images, labels = prefix_ipc(arrays["images"], arrays["labels"], k, run.dataset.num_classes)
        prefix[k] = round(val_accuracy(run, {"images": images, "labels": labels}), 2)
    yield dict(fresh=a.fresh_init, beta=run.settings.beta, seed=a.seed, ipc=a.ipc, steps_per_block=a.steps_per_block,
               prefix_val=prefix, command="python -m benchmarks.sweep " + " ".join(sys.argv[1:]),
               evaluation=run.record["evaluation"])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, rows, help, method=None, steps=300, dataset="digits"):
        p = sub.add_parser(name, help=help)
        p.set_defaults(rows=rows)
        p.add_argument("--dataset", default=dataset, required=dataset is None)
        if method:
            p.add_argument("--method", default=method)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--jsonl", help="append the result lines to this file")
        return p

    p = add("config", config_rows, "settings overrides of one method (the default subcommand)", method="rat-bptt")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-draws", type=int, default=baseline.DRAWS)
    p.add_argument("--config", action="append", default=[], help="JSON overrides (repeatable; default: '{}')")
    p = add("matching", matching_rows, "trajectory-matching settings", steps=50)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("configs", nargs="*", default=["{}"], help="JSON objects of setting overrides (and 'seed')")
    p = add("eval-budget", eval_budget_rows, "gain over random real against the evaluation budget", method="rat-bptt",
            dataset=None)
    p.add_argument("--config", default="{}", help="JSON settings overrides")
    p = add("boost-prefix", boost_prefix_rows, "Boost-DD's prefixes of one boosted run")
    p.add_argument("--fresh-init", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ipc", type=int, default=6)
    p.add_argument("--block", type=int, default=2)
    p.add_argument("--steps-per-block", type=int, default=200)
    p.add_argument("--beta", type=float, default=None, help="boost's --beta (default: the method's)")
    return ap


SUBCOMMANDS = ("config", "matching", "eval-budget", "boost-prefix")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["config", *argv]  # the recorded `benchmarks/sweep.py --dataset ...` commands
    a = parser().parse_args(argv)
    for row in a.rows(a):
        line = json.dumps(row)
        print(line, flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
