"""Build the notebooks from the cell lists below and execute them (outputs kept small).

    python notebooks/make.py            # write and execute every notebook (full budgets)
    python notebooks/make.py --no-run   # write only
    python notebooks/make.py --markdown-only 02_methods.ipynb   # new wording, outputs kept

tests/test_notebooks.py executes them with JAXDD_NOTEBOOK_SMALL=1 (tiny budgets) so a notebook that
breaks fails the build.
"""

from __future__ import annotations

import argparse
import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''import os
SMALL = os.environ.get("JAXDD_NOTEBOOK_SMALL") == "1"   # CI: tiny budgets
def budget(full, small):
    return small if SMALL else full'''

QUICKSTART = [
    new_markdown_cell("""# jaxdd quick start: distil the digits set

Distil scikit-learn's 8×8 handwritten digits into 1 and 10 images per class with RaT-BPTT, look at
them, follow the learning curve, and compare with random real images and the full training set
under one evaluation protocol.

Run time on a 2-core CPU at these settings: about 3 minutes (CI runs it with `JAXDD_NOTEBOOK_SMALL=1`
in well under a minute)."""),
    new_code_cell(SETUP + '''
import jaxdd, numpy as np
from IPython.display import Image, display
ds = jaxdd.data.load("digits", val_fraction=0.1)
print(ds.x_train.shape, ds.num_classes, "classes")'''),
    new_markdown_cell("Distil at IPC 1 (the digits preset at IPC 1: ConvNet width 32 depth 1, T 100, W 20, inner lr 3e-3, outer lr 1e-2, from the class means)."),
    new_code_cell('''r1 = jaxdd.distill(ds, method="rat-bptt", ipc=1, steps=budget(300, 20), out="runs/nb-quick-ipc1",
                   overwrite=True, progress=False, eval_models=budget(4, 2), eval_steps=budget(300, 50))
print(f"distilled {100*r1.evaluation['accuracy_mean']:.1f} %  vs random real {100*r1.baseline['accuracy_mean']:.1f} %")
display(Image("runs/nb-quick-ipc1/grid.png"))'''),
    new_code_cell('''import matplotlib.pyplot as plt
steps = [m["step"] for m in r1.metrics]
fig, ax = plt.subplots(1, 2, figsize=(8, 2.6))
ax[0].plot(steps, [m["loss"] for m in r1.metrics]); ax[0].set_title("outer loss"); ax[0].set_xlabel("meta-step")
ax[1].plot(steps, [m["prefix"] for m in r1.metrics], "."); ax[1].set_title("window start N"); ax[1].set_xlabel("meta-step")
plt.tight_layout(); plt.show()'''),
    new_markdown_cell("IPC 10, then each set beside random real images of its size under its preset's protocol (the "
                      "network it was distilled with: ConvNet depth 1 at IPC 1, depth 2 at IPC 10), and the full data "
                      "under both."),
    new_code_cell('''r10 = jaxdd.distill(ds, method="rat-bptt", ipc=10, steps=budget(300, 10), out="runs/nb-quick-ipc10",
                    overwrite=True, progress=False, eval_models=budget(4, 2), eval_steps=budget(300, 50))
for name, ipc, r in [("IPC 1", 1, r1), ("IPC 10", 10, r10)]:
    protocol = jaxdd.methods.get("rat-bptt").evaluation(jaxdd.presets.resolve("rat-bptt", "digits", ipc,
                                                        overrides=dict(eval_models=budget(4, 2), eval_steps=budget(300, 50))))
    full = jaxdd.evaluate(*jaxdd.evaluation.full_data(ds), ds, **protocol)
    print(f"{name:7s} distilled {100*r.evaluation['accuracy_mean']:5.1f} ± {100*r.evaluation['accuracy_std']:.1f} %"
          f"   random real {100*r.baseline['accuracy_mean']:5.1f} ± {100*r.baseline['accuracy_std']:.1f} %"
          f"   full data ({len(ds.x_train)} images, depth {protocol['depth']}) {100*full['accuracy_mean']:.1f} %")'''),
    new_markdown_cell("The same numbers from the command line: `jaxdd evaluate runs/nb-quick-ipc1/distilled.npz --dataset digits` "
                      "uses the protocol recorded in the file, and `jaxdd evaluate --random-real --ipc 1 --dataset digits` "
                      "the one `jaxdd distill` uses on digits."),
]

METHODS = [
    new_markdown_cell("""# Every method on the same data and budget

Each registered method (`jaxdd.methods.available()`) distils digits at the same IPC with the same
number of meta-steps, and every set is scored under its method's protocol beside random real images
scored the same way. Then the AT-BPTT schedule over the run, the Boost-DD prefix table, and
SelMatch's frozen and learned rows where those methods exist.

Run time on a 2-core CPU: about 3½ minutes (197 s measured with empty caches, the experts for trajectory
matching trained included; they are cached for later runs)."""),
    new_code_cell(SETUP + '''
import jaxdd, numpy as np, matplotlib.pyplot as plt
from IPython.display import Image, display
ds = jaxdd.data.load("digits", val_fraction=0.1)
IPC, STEPS = 2, budget(200, 6)
common = dict(eval_models=budget(4, 2), eval_steps=budget(300, 40), progress=False, overwrite=True)
extra = {"bptt": dict(unroll_steps=20), "boost": dict(block=1), "selmatch": dict(alpha=0.5, beta=0.5),
         "mtt": dict(num_experts=budget(5, 2), expert_train_epochs=budget(15, 4), max_start_epoch=budget(8, 2))}
results = {}
for name in jaxdd.methods.available():
    kw = {**common, **extra.get(name, {})}
    results[name] = jaxdd.distill(ds, method=name, ipc=IPC, steps=STEPS, out=f"runs/nb-methods/{name}", **kw)
    r = results[name]
    print(f"{name:10s} distilled {100*r.evaluation['accuracy_mean']:5.1f} %   random real {100*r.baseline['accuracy_mean']:5.1f} %")'''),
    new_code_cell('''names = list(results)
d = [100 * results[n].evaluation["accuracy_mean"] for n in names]
b = [100 * results[n].baseline["accuracy_mean"] for n in names]
x = np.arange(len(names))
plt.figure(figsize=(7, 2.8))
plt.bar(x - 0.2, d, 0.4, label="distilled"); plt.bar(x + 0.2, b, 0.4, label="random real (same protocol)")
plt.xticks(x, names, rotation=20); plt.ylabel("test accuracy (%)"); plt.legend(fontsize=8); plt.tight_layout(); plt.show()'''),
    new_markdown_cell("AT-BPTT: the chosen stage, window start and window length over the run."),
    new_code_cell('''if "at-bptt" in results:
    m = results["at-bptt"].metrics
    fig, ax = plt.subplots(1, 3, figsize=(10, 2.5))
    for a, k in zip(ax, ("at_stage", "prefix", "window")):
        a.plot([r["step"] for r in m], [r.get(k, np.nan) for r in m], "."); a.set_title(k); a.set_xlabel("meta-step")
    plt.tight_layout(); plt.show()'''),
    new_markdown_cell("Boost-DD: every prefix of blocks beside random real images of the same size."),
    new_code_cell('''if "boost" in results and results["boost"].report:
    for row in results["boost"].report["prefix_table"]:
        print(f"IPC {row['ipc']}: boosted prefix {100*row['distilled_mean']:.1f} %, random real {100*row['random_real_mean']:.1f} %")'''),
    new_markdown_cell("SelMatch: the frozen (selected real) rows and the learned rows of the set."),
    new_code_cell('''if "selmatch" in results:
    r = results["selmatch"]
    frozen = r.arrays["row_block"] < 0
    print(f"{frozen.sum()} frozen selected rows, {(~frozen).sum()} learned rows")
    display(Image("runs/nb-methods/selmatch/grid.png"))'''),
]

CIFAR = [
    new_markdown_cell("""# CIFAR-10 from the archive: ZCA, a small distillation, and the paper-scale commands

Loads CIFAR-10 from the JPEG archive beside the repository (`../shared/data/cifar10-jpeg.tar.xz`;
`tfds:cifar10` works the same where tensorflow-datasets has prepared it), whitens it with ZCA (shown
un-whitened with the inverse), and distils IPC 1 at a CPU budget.

Run time on a 2-core CPU: about 4 minutes (237 s measured with empty caches: the first load decodes
the archive, then it is cached; 400 meta-steps at ~0.37 s; 4 evaluation networks for each set)."""),
    new_code_cell(SETUP + '''
import jaxdd, numpy as np, matplotlib.pyplot as plt
from IPython.display import Image, display
ARCHIVE = os.path.join("..", "shared", "data", "cifar10-jpeg.tar.xz")
if not os.path.exists(ARCHIVE):
    ARCHIVE = os.path.join("..", "..", "shared", "data", "cifar10-jpeg.tar.xz")  # run from notebooks/
ds = jaxdd.data.load(ARCHIVE, normalize="zca", val_fraction=0.1)
print(ds.x_train.shape, ds.class_names)'''),
    new_code_cell('''pre = ds.preprocessing
shown = np.clip(pre.inverse(ds.x_train[:8]), 0, 1)
fig, ax = plt.subplots(1, 8, figsize=(10, 1.5))
for a, im in zip(ax, shown):
    a.imshow(im); a.axis("off")
plt.suptitle("training images after ZCA, shown through the inverse"); plt.show()'''),
    new_code_cell('''r = jaxdd.distill(ds, method="rat-bptt", ipc=1, steps=budget(400, 3), out="runs/nb-cifar-ipc1", overwrite=True,
                  progress=False, normalize="zca", eval_models=budget(4, 1), eval_steps=budget(300, 20))
print(f"distilled {100*r.evaluation['accuracy_mean']:.1f} %  vs random real {100*r.baseline['accuracy_mean']:.1f} %")
display(Image("runs/nb-cifar-ipc1/grid.png"))
plt.figure(figsize=(5, 2.5)); plt.plot([m["step"] for m in r.metrics], [m["loss"] for m in r.metrics])
plt.xlabel("meta-step"); plt.ylabel("outer loss on real images"); plt.show()'''),
    new_markdown_cell("""Paper scale needs a GPU (ConvNet width 128, T 200, W 60, real batch 5000). The published presets hold
the authors' settings; without `--steps` they run the authors' nominal budget (60,000 passes over the
training set, 600,000 meta-steps at batch 5000, which the authors cut short by hand), so give the
length you can afford; runs checkpoint and continue with `--resume`:

    jaxdd distill --dataset tfds:cifar10 --method rat-bptt --ipc 10 --published --steps 20000 --out runs/c10-ipc10
    jaxdd distill --dataset tfds:cifar10 --method at-bptt  --ipc 10 --published --steps 20000 --out runs/c10-at
    jaxdd distill --dataset tfds:cifar10 --method mtt      --ipc 10 --published --steps 5000  --out runs/c10-mtt

Published test accuracies to compare with (ConvNet, CIFAR-10 IPC 10): RaT-BPTT 69.4 %, AT-BPTT 72.4 %,
MTT 65.4 %, random real images 31.0 %. These runs were not made here (no GPU was lent to this work)."""),
]

SCALING = [
    new_markdown_cell("""# Scaling: a device mesh on simulated CPU devices, and the benchmarks against PyTorch

Eight CPU devices are simulated (`XLA_FLAGS` before JAX starts); a population of inner networks is
sharded over a `'data'` mesh axis inside one jitted outer step, and the result equals the
single-device one up to float32 summation order. Then the benchmark tables of `benchmarks/results`.

Run time on a 2-core CPU: about 2 minutes."""),
    new_code_cell('''import os
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
''' + SETUP + '''
import jax, jaxdd, numpy as np
from jaxdd import parallel
print(jax.devices())'''),
    new_code_cell('''ds = jaxdd.data.load("digits", val_fraction=0.1)
kw = dict(ipc=1, steps=budget(20, 3), progress=False, final_eval=False, population=8, width=8, depth=1,
          unroll_steps=10, window=4, real_batch=256)
one = jaxdd.distill(ds, "rat-bptt", mesh=None, **kw)
eight = jaxdd.distill(ds, "rat-bptt", mesh=parallel.make_mesh(8), **kw)
print("max |difference| between 1 and 8 devices:", float(np.abs(one.images - eight.images).max()))'''),
    new_code_cell('''import json, glob
import matplotlib.pyplot as plt
root = os.path.join("..", "benchmarks", "results") if os.path.isdir(os.path.join("..", "benchmarks")) else os.path.join("benchmarks", "results")
for name in ("cpu.md", "gpu.md"):
    path = os.path.join(root, name)
    if os.path.exists(path):
        print(open(path).read())'''),
]

NOTEBOOKS = {"01_quickstart.ipynb": QUICKSTART, "02_methods.ipynb": METHODS, "03_cifar10.ipynb": CIFAR,
             "04_scaling.ipynb": SCALING}


def write(name: str) -> str:
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = os.path.join(HERE, name)
    nbformat.write(nb, path)
    return path


def execute(path: str, timeout: int = 1800, cwd: str | None = None) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": cwd or os.path.dirname(HERE)}}).execute()
    nbformat.write(nb, path)


def restate(name: str) -> None:
    """Copy the markdown cells of `name` from the lists above into the stored notebook, keeping its
    executed code cells and their outputs (for wording and measured run times; code must be re-run)."""
    path = os.path.join(HERE, name)
    nb = nbformat.read(path, as_version=4)
    fresh = NOTEBOOKS[name]
    assert [c.cell_type for c in nb.cells] == [c.cell_type for c in fresh], f"{name}: cells changed, re-run it"
    for old, new in zip(nb.cells, fresh):
        if old.cell_type == "code":
            assert old.source == new.source, f"{name}: a code cell changed, re-run it"
        else:
            old.source = new.source
    nbformat.write(nb, path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--markdown-only", action="store_true",
                        help="update the markdown cells of the stored notebooks, keep their outputs")
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS))
    args = parser.parse_args()
    for name in args.names:
        if args.markdown_only:
            restate(name)
            continue
        path = write(name)
        if not args.no_run:
            print("executing", name, flush=True)
            execute(path)
    sys.exit(0)
