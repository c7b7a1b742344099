"""The PyTorch runner of the meta-step benchmark: the same step as jaxdd's, in `torch_reference.py`.

Started by `python -m benchmarks.meta_step` as `python -m benchmarks.torch_step --worker JOB` (one child
process per setting, see benchmarks/harness.py). It starts from the initial weights the jaxdd child of the
same setting saved (the exchange file) when there is one, runs `torch_reference.meta_gradient` (torch.func
+ create_graph, as the authors' `higher`) for every prefix N, and reports the times, the peak memory and
the relative error between its first meta-gradient and jaxdd's.
"""

from __future__ import annotations

import os
import platform

from benchmarks import harness
from benchmarks.meta_step import IMAGE_SHAPE, NUM_CLASSES, make_data


def run_torch(s: dict, a: dict) -> dict:
    import numpy as np
    import torch

    from benchmarks import torch_reference as tr

    gpu = a["device"] == "gpu"
    dev = torch.device("cuda" if gpu else "cpu")
    if a.get("threads"):
        torch.set_num_threads(a["threads"])
    depth = 3
    images, labels, real_x, real_y = make_data(s, a["seed"])
    ref = None
    if a.get("exchange") and os.path.exists(a["exchange"]):
        ref = np.load(a["exchange"])
        tree = harness.tree_from_npz(ref, "p:")
        params = tr.params_from_jaxdd(tree, IMAGE_SHAPE, width=s["width"], depth=depth)
    else:
        params = tr.init_params(IMAGE_SHAPE, NUM_CLASSES, width=s["width"], depth=depth, seed=a["seed"])
    model = tr.ConvNet(IMAGE_SHAPE, NUM_CLASSES, width=s["width"], depth=depth).to(dev)
    params = {k: v.to(dev) for k, v in params.items()}
    timages = tr.nhwc_to_nchw(images).to(dev)
    tlabels = torch.from_numpy(labels).long().to(dev)
    treal_x = tr.nhwc_to_nchw(real_x).to(dev)
    treal_y = torch.from_numpy(real_y).long().to(dev)
    window = s["unroll_steps"] if s["estimator"] == "bptt" else s["window"]
    chunk = (s["chunk"] or None) if a["torch_chunk"] == "same" else None
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = harness.current_rss_bytes()

    def step(n):
        g, loss = tr.meta_gradient(model, params, timages, tlabels, treal_x, treal_y, prefix=n, window=window,
                                   chunk=chunk, adam=a.get("inner_adam", "torch"))
        if gpu:
            torch.cuda.synchronize()
        return g, loss

    check = {}

    def on_first(result, n):
        if ref is not None and int(ref["prefix"]) == n:
            gj = ref["grad"].astype(np.float64)
            gt = tr.nchw_to_nhwc(result[0]).astype(np.float64)
            check.update(grad_rel_err=float(np.linalg.norm(gt - gj) / np.linalg.norm(gj)),
                         loss_abs_err=abs(result[1] - float(ref["loss"])))

    timing, (_, loss) = harness.timed_calls(step, a["prefixes"], on_first=on_first)
    out = dict(timing, compile_seconds=0.0, loss=loss, grad_rel_err=check.pop("grad_rel_err", None),
               torch_threads=torch.get_num_threads(), torch_chunk=chunk, **check)
    if gpu:
        out.update(peak_bytes=int(torch.cuda.max_memory_allocated()), memory_source="torch.cuda.max_memory_allocated",
                   device_kind=torch.cuda.get_device_name(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        out.update(harness.cpu_memory(baseline), device_kind=platform.processor() or "cpu")
    return out


if __name__ == "__main__":
    if not harness.worker_main({"torch": run_torch}):
        raise SystemExit("a worker of `python -m benchmarks.meta_step`; run that instead")
