"""SelMatch against mtt, random real subsets and the full data at budgets given as ratios (issue 13).

    nice python -m benchmarks.selmatch_table --dataset ../shared/data/cifar10-jpeg.tar.xz --ratios 0.05 0.1 \
        --steps 50 --beta-step 0.25 --extra "--num-experts 2 --expert-train-epochs 3 --max-start-epoch 2" \
        [--out /tmp/jaxdd-selmatch] [--jsonl benchmarks/results/selmatch_cifar10.jsonl] [--md ...md]

Per ratio, every number from the CLI a user runs, all under the protocol recorded in the selmatch set
(same network, steps, augmentation; the baselines count as real rows):

* `jaxdd distill --method selmatch --ratio R`: β scanned on the validation split (report.json
  `beta_scan`), the set's test accuracy, and random real images of the same size (the run's own baseline);
* `jaxdd distill --method mtt --ipc IPC` with the same experts (the expert cache is shared) and steps;
* `jaxdd evaluate SELMATCH/distilled.npz --full-data` unless --no-full-data.

One JSON line per ratio (--jsonl) and a Markdown table with the β curve (--md).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks.boost_table import jaxdd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--steps", type=int, default=50, help="outer steps of selmatch and of mtt")
    ap.add_argument("--beta-step", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", default="", help="more distill options for both methods, one string")
    ap.add_argument("--no-full-data", action="store_true")
    ap.add_argument("--out", default="/tmp/jaxdd-selmatch", help="run folders (not committed)")
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--md", default=None)
    a = ap.parse_args()
    common = ["--dataset", a.dataset, "--seed", str(a.seed), "--steps", str(a.steps), "--overwrite", *a.extra.split()]
    for ratio in a.ratios:
        sm_dir = os.path.join(a.out, f"selmatch-{ratio:g}")
        sm, sm_s = jaxdd(["distill", "--method", "selmatch", "--ratio", str(ratio), "--beta-step", str(a.beta_step),
                          "--out", sm_dir, *common])
        with open(os.path.join(sm_dir, "report.json")) as f:
            rep = json.load(f)
        ipc = sm["ipc"]
        mtt, mtt_s = jaxdd(["distill", "--method", "mtt", "--ipc", str(ipc), "--out", os.path.join(a.out, f"mtt-{ratio:g}"),
                            *common])
        full = None if a.no_full_data else jaxdd(["evaluate", "--full-data", "--like",
                                                  os.path.join(sm_dir, "distilled.npz"), "--seed", str(a.seed)])[0]
        row = dict(dataset=a.dataset, ratio=ratio, ipc=ipc, steps=a.steps, seed=a.seed, extra=a.extra,
                   beta=rep["beta"], alpha=rep["alpha"],
                   beta_scan=[(r["beta"], round(100 * r["val_accuracy_mean"], 2)) for r in rep["beta_scan"]],
                   selmatch=round(100 * sm["accuracy_mean"], 2), selmatch_std=round(100 * sm["accuracy_std"], 2),
                   mtt=round(100 * mtt["accuracy_mean"], 2), mtt_std=round(100 * mtt["accuracy_std"], 2),
                   random_real=round(100 * sm["random_real_mean"], 2),
                   random_real_std=round(100 * sm["random_real_std"], 2),
                   mtt_random_real=round(100 * mtt["random_real_mean"], 2),
                   full_data=None if full is None else round(100 * full["accuracy_mean"], 2),
                   num_models=sm["num_models"], selmatch_s=round(sm_s, 1), mtt_s=round(mtt_s, 1),
                   date=time.strftime("%Y-%m-%d %H:%M"))
        print(json.dumps(row), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
        if a.md:
            scan = " · ".join(f"β {b:g}: {v:.2f}" for b, v in row["beta_scan"])
            full_txt = "not run" if full is None else f"{row['full_data']:.2f}"
            with open(a.md, "a") as f:
                f.write(f"\n{row['date']}, {a.dataset}, ratio {ratio:g} (IPC {ipc}), {a.steps} outer steps each, "
                        f"options `{a.extra}`, seed {a.seed}, {row['num_models']} networks per score; selmatch "
                        f"{row['selmatch_s']} s, mtt {row['mtt_s']} s (whole commands).\n\n"
                        f"β scan (validation accuracy of the selected real window, %): {scan}; chose β {row['beta']:g}, "
                        f"α {row['alpha']:g}.\n\n| set | test accuracy % |\n|---|---|\n"
                        f"| selmatch | {row['selmatch']:.2f} ± {row['selmatch_std']:.2f} |\n"
                        f"| mtt | {row['mtt']:.2f} ± {row['mtt_std']:.2f} |\n"
                        f"| random real subset | {row['random_real']:.2f} ± {row['random_real_std']:.2f} "
                        f"(mtt run's own: {row['mtt_random_real']:.2f}) |\n"
                        f"| full training split | {full_txt} |\n")


if __name__ == "__main__":
    main()
