"""Time from launch to the first meta-step of a small distillation, with a cold and a warm compilation cache.

    python -m benchmarks.startup [--repeats 3] [--out benchmarks/results/startup.jsonl]

Each run is a fresh process executing the CLI command

    python -m jaxdd distill --dataset digits --ipc 1 --steps 3 --no-eval --no-progress --out DIR

with the CLI's default compilation cache moved to a directory of this script (JAXDD_CACHE_DIR). This
script polls DIR/metrics.jsonl and records the moment its first row appears (= the first outer step
is done, compilation included) and the moment the process exits. "cold": a new, empty cache
directory; "warm": the directory the previous run filled; "off": `--no-compile-cache`. Cold, warm
and off runs alternate, so that a changing load on a shared machine affects all of them alike.
(Earlier versions set the cache with `compile_cache.enable` in the child before calling the CLI,
whose own `enable(None)` then re-enabled the default directory in the "off" runs.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ARGS = ["distill", "--dataset", "digits", "--ipc", "1", "--steps", "3", "--no-eval", "--no-progress"]

def run_once(cache: str, out: str, timeout: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    env.pop("JAXDD_NO_COMPILE_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache != "off":  # the CLI's default cache, moved to a directory of this benchmark's
        env["JAXDD_CACHE_DIR"] = cache
    metrics = os.path.join(out, "metrics.jsonl")
    t0 = time.perf_counter()
    off = ["--no-compile-cache"] if cache == "off" else []
    proc = subprocess.Popen([sys.executable, "-m", "jaxdd"] + ARGS + ["--out", out] + off, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        if first is None and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            first = time.perf_counter() - t0
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    err = proc.communicate()[1]
    total = time.perf_counter() - t0
    if first is None and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        first = total
    return dict(first_step_seconds=first, total_seconds=total, returncode=proc.returncode,
                error=None if proc.returncode == 0 else err.strip().splitlines()[-1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="jaxdd-startup-")
    res = {"cold": [], "warm": [], "off": []}
    try:
        for r in range(args.repeats):
            cache = os.path.join(tmp, f"cache{r}")
            for mode in ("cold", "warm", "off"):
                rec = run_once("off" if mode == "off" else cache, os.path.join(tmp, "out"), args.timeout)
                rec.update(mode=mode, repeat=r, load=os.getloadavg()[0])
                res[mode].append(rec)
                print(json.dumps(rec), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(dict(rec, kind="startup", command="jaxdd " + " ".join(ARGS))) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for mode, recs in res.items():
        firsts = [x["first_step_seconds"] for x in recs if x["first_step_seconds"] is not None]
        totals = [x["total_seconds"] for x in recs]
        if firsts:
            print(f"{mode:5s}: launch to first meta-step {statistics.median(firsts):.1f} s "
                  f"[{min(firsts):.1f}-{max(firsts):.1f}], whole command {statistics.median(totals):.1f} s")


if __name__ == "__main__":
    main()
