"""The paper-scale table: `jaxdd plan` for every published preset (docs/planning.md, benchmarks/results/plan.md).

    nice python -m benchmarks.plan_table --out benchmarks/results/plan.jsonl --md benchmarks/results/plan.md

Each row compiles the run's outer step for this machine's CPU with abstract inputs (no data), and the
evaluation networks' step; --memory 24GB asks for the cheapest change that fits one 24 GB GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks import harness
from jaxdd import methods, plans

SOURCES = {"cifar10": "tfds:cifar10", "cifar100": "tfds:cifar100", "tiny_imagenet": "tfds:tiny_imagenet",
           **{name: name for name in ("imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk",
                                      "imageyellow")}}  # the ImageNet subsets: a folder of that name
# beside the published rows: AT-BPTT's low-rank backward at the CIFAR-10 IPC 10 setting
EXTRA = [("at-bptt", "cifar10", 10, dict(lowrank=k)) for k in (5, 20)] + \
        [("at-bptt", "cifar10", 10, dict(lowrank=20, lowrank_source="shared"))]


def rows(only=None):
    for method in ("rat-bptt", "at-bptt", "mtt", "selmatch", "boost"):
        for key, ipc in methods.get(method).presets.published:
            if method == "boost" and ipc != 50:  # Boost-DD at its largest size only
                continue
            yield method, key, ipc, {}
    yield from EXTRA


# The anchors' reported resources, by (method, data set, IPC): docs/planning.md cites them.
ANCHORS = {
    ("mtt", "cifar100", 10): "MTT authors: 8 x 12 GB GPUs",
    ("mtt", "cifar100", 50): "MTT authors: 2 x 24 GB GPUs",
    ("mtt", "tiny_imagenet", 1): "MTT authors: 4 x 12 GB GPUs",
    ("mtt", "tiny_imagenet", 10): "MTT authors: 6 x 12 GB GPUs",
    ("mtt", "tiny_imagenet", 50): "MTT authors: 6 x 24 GB GPUs",
    ("mtt", "imagenet_subset", 1): "MTT authors: one 24 GB GPU",
    ("mtt", "imagenet_subset", 10): "MTT authors: one 24 GB GPU 'just barely needs a second'",
    ("at-bptt", "cifar10", 10): "AT-BPTT paper (A800): 6.94 GB, 5.5 h; RaT-BPTT there 16.7 GB, 21.6 h",
    ("rat-bptt", "cifar10", 10): "H100 measured (gpu.md): 3,029 MiB, 0.27 s/step; PyTorch 27,387 MiB, 1.54 s/step",
}


def _key(r: dict) -> tuple:
    return r["method"], r["dataset"]["name"], r["ipc"], json.dumps(r.get("extra") or {}, sort_keys=True)


def _program(r: dict, prefix: str):
    return next((p for p in r["programs"] if p["name"].startswith(prefix)), None)


def markdown(path: str) -> str:
    """The table of a plan.jsonl: one row per plan, the anchors beside it."""
    lines = ["| method | data set | IPC | extra | peak GiB / device | GFLOP / step | steps | H100 time | fits 24 / 40 / 80 GB "
             "| 24 GB advice | experts GiB, H100 time | eval GiB, H100 time | anchor |", "|" + "---|" * 13]
    for text in open(path):
        r = json.loads(text)
        s, x, e = r["programs"][0], _program(r, "experts"), _program(r, "evaluation")
        key = r["dataset"]["name"]
        advice = r.get("advice") or {}
        fit = "fits" if r.get("fits") else (advice.get("change", "")[:70] if advice.get("found")
                                             else "none found" if advice else "")
        if advice.get("found"):
            t = advice["tried"][-1]
            fit += f" ({t['peak_bytes'] / 2**30:.1f} GiB, H100 {t['seconds']['H100 80GB'] / 3600:.1f} h)"
        lines.append(f"| {r['method']} | {key} | {r['ipc']} | {r.get('extra') or ''} | {s['peak_bytes'] / 2**30:.2f} | "
                     f"{s['flops_per_step'] / 1e9:,.0f} | {r['steps']:,} | {s['seconds']['H100 80GB'] / 3600:.1f} h | "
                     + " / ".join("yes" if v else "no" for v in s["fits"].values())
                     + f" | {fit} | " + (f"{x['peak_bytes'] / 2**30:.2f}, {x['seconds']['H100 80GB'] / 3600:.1f} h"
                                         if x else "") + " | "
                     + (f"{e['peak_bytes'] / 2**30:.2f}, {e['seconds']['H100 80GB'] / 60:.0f} min" if e else "")
                     + f" | {ANCHORS.get((r['method'], key, r['ipc']), '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/plan.jsonl")
    p.add_argument("--md", default="benchmarks/results/plan.md")
    p.add_argument("--memory", default="24GB")
    p.add_argument("--methods", default="")
    p.add_argument("--only", default="", help="comma-separated METHOD:DATASET:IPC rows (default: every row)")
    p.add_argument("--md-only", action="store_true", help="rewrite the table of --md from --out without planning")
    a = p.parse_args(argv)
    if a.md_only:  # the text around the table (commands, commits, findings) stays; the table is rewritten
        text = open(a.md).read() if os.path.exists(a.md) else ""
        start = text.find("| method | data set |")
        end = text.find("\n\n", start) if start >= 0 else -1
        with open(a.md, "w") as f:
            f.write((text[:start] if start >= 0 else text) + markdown(a.out) + (text[end + 1:] if end >= 0 else ""))
        return
    commit = harness.commit()
    wanted = set(a.methods.split(",")) if a.methods else None
    only = set(a.only.split(",")) if a.only else None
    done = set(_key(json.loads(line)) for line in open(a.out)) if os.path.exists(a.out) else set()
    with open(a.out, "a") as out:
        for method, key, ipc, extra in rows():
            if (wanted and method not in wanted) or (only and f"{method}:{key}:{ipc}" not in only) \
                    or (method, key, ipc, json.dumps(extra, sort_keys=True)) in done:  # rows already planned stay
                continue
            t0 = time.perf_counter()
            r = plans.plan(SOURCES[key], method, ipc, published=True, overrides=extra,
                           memory=plans.parse_size(a.memory), advice_compiles=2)
            r.update(seconds=round(time.perf_counter() - t0, 1), commit=commit, extra=extra,
                     date=time.strftime("%Y-%m-%d %H:%M:%S"), machine="shared 2-core Intel Xeon (KVM), CPU compile",
                     command=f"python -m benchmarks.plan_table --memory {a.memory}")
            out.write(json.dumps(r, sort_keys=True, default=str) + "\n")
            out.flush()
            s = r["programs"][0]
            print(f"{method} {key} IPC {ipc} {extra}: {s['peak_bytes'] / 2**30:.2f} GiB, "
                  f"{s['flops_per_step'] / 1e9:.0f} GFLOP/step, {r['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
