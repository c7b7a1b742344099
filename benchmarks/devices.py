"""Wall-clock speed-up of the distillation step from 1 to N devices (data-parallel population).

Each configuration runs `jaxdd distill` in its own process (the device count is fixed when jax is
imported), with the same seed, population and settings, and reports the median seconds per
meta-step after compilation (from metrics.jsonl). On a CPU, devices are simulated with
``--xla_force_host_platform_device_count``: they share the machine's cores, so the speed-up is bounded
by the cores the single-device run leaves idle.

    python -m benchmarks.devices --devices 1 2 --population 2 --steps 40 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(devices: int, args) -> dict:
    out = tempfile.mkdtemp(prefix=f"jaxdd-devices{devices}-")
    env = dict(os.environ)
    if args.platform == "cpu":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(args.devices)}"
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "jaxdd", "distill", "--dataset", args.dataset, "--ipc", str(args.ipc),
           "--steps", str(args.steps), "--out", out, "--devices", str(devices), "--population",
           str(args.population), "--no-eval", "--no-progress", "--seed", "0", *args.extra]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        seconds = [json.loads(line)["seconds"] for line in f]
    per_step = [b - a for a, b in zip(seconds[1:], seconds[2:])]  # skip step 1 (compilation)
    return {"devices": devices, "median_s": statistics.median(per_step), "min_s": min(per_step),
            "max_s": max(per_step), "compile_and_first_step_s": seconds[0], "steps": len(seconds)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--population", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--platform", default="cpu", choices=("cpu", "gpu", "tpu"))
    p.add_argument("--json", action="store_true")
    p.add_argument("extra", nargs="*", help="more `jaxdd distill` options, after --")
    args = p.parse_args(argv)
    rows = [run(n, args) for n in args.devices]
    base = rows[0]["median_s"]
    print("| devices | median s/step | min | max | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = base / r["median_s"]
        print(f"| {r['devices']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['speedup']:.2f}× |")
    if args.json:
        print(json.dumps({"rows": rows, "population": args.population, "dataset": args.dataset}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
