"""Plot seconds per meta-step and peak memory against the window W, jaxdd beside torch, from meta_step.py JSON lines.

    python -m benchmarks.plot benchmarks/results/cpu.jsonl --table grid -o benchmarks/results/cpu_vs_window.png
    python -m benchmarks.plot benchmarks/results/gpu.jsonl --table w-sweep -o benchmarks/results/gpu_vs_window.png

Lines: full BPTT (W = T, so T grows with W) and truncated BPTT (T-BPTT, fixed T), jaxdd with remat on
and off, torch (which has no remat). Error bars: min and max over the timed repeats. Only the runs of
one (width, IPC, real batch) are drawn: the most frequent one, or the one given by --width/--ipc/--batch.
"""

from __future__ import annotations

import argparse
import collections
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                rec = json.loads(line)
                if rec.get("kind") == "run" and rec.get("status") == "ok":
                    runs.append(rec)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", nargs="+")
    ap.add_argument("-o", "--out", default="benchmarks/results/meta_step_vs_window.png")
    ap.add_argument("--width", type=int)
    ap.add_argument("--ipc", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--title", default=None)
    ap.add_argument("--table", default=None, help="only rows of this table (the 'table' field of cpu.jsonl / gpu.jsonl)")
    args = ap.parse_args()

    runs = [r for r in load(args.jsonl) if r["setting"]["estimator"] in ("bptt", "tbptt")
            and args.table in (None, r.get("table"))]
    group = lambda r: (r["setting"]["width"], r["setting"]["ipc"], r["setting"]["real_batch"])  # noqa: E731
    want = [args.width, args.ipc, args.batch]
    runs = [r for r in runs if all(w is None or w == g for w, g in zip(want, group(r)))]
    if not runs:
        raise SystemExit("no full / truncated BPTT runs in the input")
    width, ipc, batch = collections.Counter(map(group, runs)).most_common(1)[0][0]
    runs = [r for r in runs if group(r) == (width, ipc, batch)]

    series = collections.defaultdict(dict)  # (impl, remat, estimator, T for tbptt) -> {W: run}
    for r in runs:
        s = r["setting"]
        remat = s["remat"] if r["impl"] == "jaxdd" else "-"
        t = s["unroll_steps"] if s["estimator"] == "tbptt" else None
        series[(r["impl"], remat, s["estimator"], t)][s["window"]] = r

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {("jaxdd", "on"): "tab:blue", ("jaxdd", "off"): "tab:cyan", ("jaxdd", "dots"): "tab:purple",
              ("torch", "-"): "tab:red"}
    for (impl, remat, est, t), pts in sorted(series.items(), key=lambda kv: str(kv[0])):
        ws = sorted(pts)
        med = [pts[w]["seconds"] for w in ws]
        lo = [pts[w]["seconds"] - pts[w]["min_seconds"] for w in ws]
        hi = [pts[w]["max_seconds"] - pts[w]["seconds"] for w in ws]
        mem = [pts[w]["peak_bytes"] / 2**20 for w in ws]
        name = "full BPTT (T = W)" if est == "bptt" else f"T-BPTT (T = {t})"
        who = impl if impl == "torch" else f"jaxdd remat {remat}"
        style = dict(color=colors.get((impl, remat), "gray"), marker="o" if est == "bptt" else "s",
                     linestyle="-" if est == "bptt" else "--", label=f"{who}, {name}")
        ax_t.errorbar(ws, med, yerr=[lo, hi], capsize=3, **style)
        ax_m.plot(ws, mem, **style)
    ax_t.set_xlabel("window W (differentiated inner steps)")
    ax_t.set_ylabel("seconds per meta-step (median, min–max)")
    ax_m.set_xlabel("window W (differentiated inner steps)")
    ax_m.set_ylabel("peak memory, MiB")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize=7)
    device = runs[0].get("device_kind", "")
    title = args.title or (f"ConvNet w{width}, IPC {ipc}, 32×32×3, real batch {batch} — {device}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
