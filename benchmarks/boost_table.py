"""Boost-DD's prefix table beside direct distillation at every size (issue 14).

    nice python -m benchmarks.boost_table --dataset digits --ipc 10 --block 2 --steps 200 \
        [--out /tmp/jaxdd-boost] [--jsonl benchmarks/results/boost.jsonl] [--md benchmarks/results/boost.md]

One boosted run (`--method boost --block B --block-steps S`: every block gets S meta-steps) and, for
every prefix size k = B, 2B, ..., IPC, a directly distilled set at IPC k with S meta-steps (the same
per-block budget), all with the data set's default settings otherwise. Every number comes from the
CLI a user runs: the boosted run's own prefix table (report.json; random real images of each size under
the same protocol), `jaxdd distill --json` for each direct run, and `jaxdd evaluate DIRECT_IPC/distilled.npz
--prefix-ipc k` for the directly distilled full-size set cut to k images per class. All sets are scored
by the protocol recorded in their distilled.npz (the same for all of them: same data set, same
network, same inner lr).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def jaxdd(args: list[str]) -> tuple[dict, float]:
    """`python -m jaxdd ARGS --json --no-progress`: (its last JSON line, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxdd", *args, "--json", "--no-progress"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"jaxdd {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--beta", type=float, default=None, help="boost's --beta (default: the method's)")
    ap.add_argument("--steps", type=int, default=200, help="meta-steps per block and per direct run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", default="", help="more distill options for every run, one string")
    ap.add_argument("--out", default="/tmp/jaxdd-boost", help="run folders (not committed)")
    ap.add_argument("--resume-boost", action="store_true",
                    help="continue the boosted run in OUT/boost (--resume; e.g. a finished run re-scored with other "
                         "--eval-steps / --eval-models, which a resume may change) instead of starting it again")
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--md", default=None)
    a = ap.parse_args()
    common = ["--dataset", a.dataset, "--seed", str(a.seed), "--overwrite", *a.extra.split()]
    sizes = list(range(a.block, a.ipc + 1, a.block))

    boost_cmd = ["distill", "--method", "boost", "--ipc", str(a.ipc), "--block", str(a.block),
                 "--block-steps", str(a.steps), "--steps", str(a.steps * len(sizes)),
                 "--out", os.path.join(a.out, "boost"), *common]
    if a.resume_boost:
        boost_cmd[boost_cmd.index("--overwrite")] = "--resume"
    if a.beta is not None:
        boost_cmd += ["--beta", str(a.beta)]
    _, boost_s = jaxdd(boost_cmd)
    with open(os.path.join(a.out, "boost", "report.json")) as f:
        prefix = {r["ipc"]: r for r in json.load(f)["prefix_table"]}

    rows, direct = [], {}
    for k in sizes:
        d, secs = jaxdd(["distill", "--ipc", str(k), "--steps", str(a.steps), "--out", os.path.join(a.out, f"direct{k}"),
                         *common])
        direct[k] = (d, secs)
    top = os.path.join(a.out, f"direct{a.ipc}", "distilled.npz")
    for k in sizes:
        cut = jaxdd(["evaluate", top, "--dataset", a.dataset, "--prefix-ipc", str(k)])[0] if k < a.ipc else direct[k][0]
        p, (d, secs) = prefix[k], direct[k]
        rows.append(dict(ipc=k, boosted_prefix=round(100 * p["distilled_mean"], 2),
                         boosted_prefix_std=round(100 * p["distilled_std"], 2),
                         direct=round(100 * d["accuracy_mean"], 2), direct_std=round(100 * d["accuracy_std"], 2),
                         direct_ipc_cut=round(100 * cut["accuracy_mean"], 2),
                         random_real=round(100 * p["random_real_mean"], 2),
                         random_real_direct_run=round(100 * d["random_real_mean"], 2), direct_seconds=round(secs, 1)))
    meta = dict(dataset=a.dataset, ipc=a.ipc, block=a.block, beta=a.beta, steps_per_block=a.steps, seed=a.seed,
                extra=a.extra, boost_seconds=round(boost_s, 1), boost_command="jaxdd " + " ".join(boost_cmd),
                date=time.strftime("%Y-%m-%d %H:%M"))
    for r in rows:
        print(json.dumps(r), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(dict(meta, **r)) + "\n")
    lines = [f"| IPC | boosted prefix | direct at this IPC | direct IPC {a.ipc} cut to this IPC | random real |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['ipc']} | {r['boosted_prefix']:.2f} ± {r['boosted_prefix_std']:.2f} | {r['direct']:.2f} ± "
              f"{r['direct_std']:.2f} | {r['direct_ipc_cut']:.2f} | {r['random_real']:.2f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if a.md:
        with open(a.md, "a") as f:
            f.write(f"\n{meta['date']}: `{meta['boost_command']}` ({meta['boost_seconds']} s) and direct runs of "
                    f"{a.steps} steps at every size ({sum(s for _, s in direct.values()):.0f} s in all):\n\n{table}\n")


if __name__ == "__main__":
    main()
