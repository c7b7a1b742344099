"""RaT-BPTT's inner Adam against its authors' executed code: jaxdd's meta-gradient beside theirs, float64.

    python -m benchmarks.authors_bptt --repo PATH [--out benchmarks/results/authors_bptt.md]

PATH is a checkout of fengyzpku/Simple_Dataset_Distillation; their environment pins `higher` 0.2.1, which
must be importable (e.g. a scratch venv with --system-site-packages, for torch, and ``pip install
higher==0.2.1``). Without either the script says so in one line and exits 0. Not a test: CI has neither.

Their code is imported from PATH at run time, not copied: `framework/distill_higher.py`'s `Distill.forward`
(a fresh network, `curriculum` untracked steps of `torch.optim.Adam`, then `window` steps of `higher`'s
differentiable Adam carrying that optimizer's state over, then the network on the real batch) and the
outer loss of `framework/base.py`'s `train` (mean cross-entropy on the real batch, backward to the
synthetic images; the gradient is read before their clipping and outer Adam). What is replaced, so that
only the inner optimizer can differ: their `framework.config` (its `get_arch`, which needs torchvision,
h5py, ...) by a stub that returns the ConvNet of benchmarks/torch_reference.py with jaxdd's initial
weights (every call, as their forward builds a fresh network), and ``.cuda()`` by the identity (CPU).
Their inner batch with batch_per_class = images per class and all classes is the whole set in
class-major order, as jaxdd's with per_class 0; the synthetic and real augmentations are the identity.

jaxdd's side: `bptt.meta_gradient` with each `--inner-adam` kind on the same weights, images and real
batch. Reported: relative error ‖g_jaxdd − g_authors‖ / ‖g_authors‖ and the outer losses.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import types

import numpy as np

# (T, W, prefix): the unroll, the window, the untracked steps before it (T = prefix + W)
CASES = ((6, 3, 3), (40, 10, 30), (10, 10, 0))
KINDS = ("authors", "torch", "higher")
SHAPE, CLASSES, IPC, WIDTH, DEPTH, REAL = (8, 8, 3), 3, 2, 8, 2, 16


def missing(repo: str | None) -> str | None:
    """Why the comparison cannot run here, or None."""
    if not repo or not os.path.isfile(os.path.join(repo, "framework", "distill_higher.py")):
        return f"no checkout of fengyzpku/Simple_Dataset_Distillation at {repo!r} (give --repo PATH)"
    if importlib.util.find_spec("higher") is None:
        return "the `higher` package is not importable (their environment.yml pins higher==0.2.1)"
    if importlib.util.find_spec("torch") is None:
        return "torch is not importable"
    return None


def problem(seed: int = 0):
    """The tiny float64 problem: images, class-major labels, a real batch and jaxdd's initial ConvNet."""
    import jax

    from jaxdd.models import make_model

    rng = np.random.default_rng(seed)  # float32 values (torch_reference's NCHW converter rounds to float32), held in float64
    images = rng.standard_normal((CLASSES * IPC,) + SHAPE).astype(np.float32).astype(np.float64)
    labels = np.repeat(np.arange(CLASSES), IPC).astype(np.int32)
    real_x = rng.standard_normal((REAL,) + SHAPE).astype(np.float32).astype(np.float64)
    real_y = rng.integers(0, CLASSES, REAL).astype(np.int32)
    model = make_model("convnet", image_shape=SHAPE, num_classes=CLASSES, width=WIDTH, depth=DEPTH)
    params0, state0 = model.init(jax.random.key(1))
    return dict(images=images, labels=labels, real_x=real_x, real_y=real_y, model=model, params0=params0,
                state0=state0)


def jaxdd_gradient(p, kind: str, unroll: int, window: int, prefix: int, lr: float):
    import jax
    import jax.numpy as jnp

    from jaxdd.methods import bptt

    settings = bptt.BPTTSettings(inner_adam=kind, inner_lr=lr, unroll_steps=unroll, window=window, per_class=0,
                                 classes_per_step=0, augment="none", real_augment="none", width=WIDTH, depth=DEPTH)
    cfg = bptt.inner_config(settings, IPC, CLASSES)
    grads, metrics = jax.jit(lambda th, co, n: bptt.meta_gradient(
        p["model"], cfg, th, co, p["params0"], p["state0"], jnp.asarray(p["real_x"]), jnp.asarray(p["real_y"]),
        jax.random.key(0), n, window=window, remat="full"))(
        {"images": jnp.asarray(p["images"])}, {"labels": jnp.asarray(p["labels"])}, jnp.asarray(prefix, jnp.int32))
    return np.asarray(grads["images"]), float(metrics["loss"])


def authors_gradient(repo: str, p, window: int, prefix: int, lr: float):
    """Their Distill.forward + base.train's outer loss on the problem (see the module's docstring)."""
    import jax
    import torch
    from torch import nn

    from benchmarks import torch_reference as tr

    torch.set_default_dtype(torch.float64)  # their Adam step counter and the Embedding follow it
    template = tr.ConvNet(SHAPE, CLASSES, width=WIDTH, depth=DEPTH)
    template.load_state_dict(tr.params_from_jaxdd(jax.tree.map(np.asarray, p["params0"]), SHAPE, width=WIDTH,
                                                  depth=DEPTH, dtype=np.float64))

    class Net(nn.Module):  # their networks return (logits, features)
        def __init__(self):
            super().__init__()
            self.body = copy.deepcopy(template)

        def forward(self, x):
            return self.body(x), None

        def cuda(self, *args, **kwargs):
            return self

    config = types.ModuleType("framework.config")
    config.get_arch = lambda *args, **kwargs: Net()
    sys.modules["framework.config"] = config
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from framework.distill_higher import Distill

    def identity(x, dtype=None, seed=None):
        return x

    n = CLASSES * IPC
    h, w, c = SHAPE
    y_init = torch.from_numpy(p["labels"]).long()
    model = Distill(torch.zeros(n, c * h * w), y_init, "ConvNet", window, lr, 1, img_pc=IPC, batch_pc=IPC,
                    num_classes=CLASSES, task_sampler_nc=CLASSES, channel=c, im_size=(h, w), inner_optim="Adam",
                    syn_intervention=identity, real_intervention=identity)
    model.data.weight.data = tr.nhwc_to_nchw(p["images"]).double().reshape(n, -1).clone()
    model.dd_type, model.curriculum = "curriculum", prefix
    outer = torch.optim.Adam([model.data.weight], lr=1e-3)  # base.py's outer optimizer (its lr is not used here)
    out, _ = model(tr.nhwc_to_nchw(p["real_x"]).double())
    loss = nn.CrossEntropyLoss(reduction="mean")(out, torch.from_numpy(p["real_y"]).long())
    # base.train: zero_grad after the forward, so the images' gradients that the untracked prefix's
    # loss.backward() left on them are dropped, then backward
    outer.zero_grad()
    loss.backward()
    grad = model.data.weight.grad.reshape(n, c, h, w)
    return tr.nchw_to_nhwc(grad), float(loss.detach())


def rel_err(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def git_commit(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=None, help="checkout of fengyzpku/Simple_Dataset_Distillation")
    parser.add_argument("--lr", type=float, default=1e-3, help="inner lr (jaxdd's --inner-lr, their --inner_lr)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    why = missing(args.repo)
    if why:
        print(f"authors_bptt: skipped: {why}")
        return 0
    import jax

    jax.config.update("jax_enable_x64", True)
    import higher
    import torch

    p = problem()
    rows = []
    for unroll, window, prefix in CASES:
        theirs, their_loss = authors_gradient(args.repo, p, window, prefix, args.lr)
        errs = {}
        for kind in KINDS:
            ours, our_loss = jaxdd_gradient(p, kind, unroll, window, prefix, args.lr)
            errs[kind] = (rel_err(ours, theirs), abs(our_loss - their_loss) / abs(their_loss))
        rows.append((unroll, window, prefix, their_loss, errs))
    lines = ["| T | W | prefix | their outer loss | " + " | ".join(f"`{k}`: grad rel err (loss rel err)" for k in KINDS)
             + " |", "|---" * (4 + len(KINDS)) + "|"]
    for unroll, window, prefix, loss, errs in rows:
        lines.append(f"| {unroll} | {window} | {prefix} | {loss:.12f} | "
                     + " | ".join(f"{g:.1e} ({lo:.1e})" for g, lo in errs.values()) + " |")
    higher_version = getattr(higher, "__version__", None) or _dist_version("higher")
    head = [f"command: python -m benchmarks.authors_bptt --repo {args.repo} --lr {args.lr}",
            f"jaxdd commit {git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}, "
            f"their commit {git_commit(args.repo)}, higher {higher_version}, torch {torch.__version__}, "
            f"jax {jax.__version__}, float64",
            f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, machine {platform.machine()} "
            f"{platform.system()}, {os.cpu_count()} CPUs",
            f"problem: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} images, {CLASSES} classes, IPC {IPC}, ConvNet w{WIDTH} "
            f"d{DEPTH} (instance norm), real batch {REAL}, inner lr {args.lr}"]
    title = ["# RaT-BPTT's inner Adam against its authors' executed code (float64)", "",
             "Their `Distill.forward` (torch.optim.Adam over the untracked prefix, higher's differentiable Adam over "
             "the window) and `train`'s outer loss beside jaxdd's `bptt.meta_gradient` with each `--inner-adam` kind; "
             "how: benchmarks/authors_bptt.py's docstring.", ""]
    text = "\n".join(title + head + [""] + lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
