"""Time and measure jaxdd's trajectory-matching (MTT) meta-step against the authors'-style PyTorch step.

    python -m benchmarks.matching_step                        CIFAR-10 IPC 10 shape, N 30, width 32, 1 thread each
    python -m benchmarks.matching_step --widths 32,64 --repeats 5 --out benchmarks/results/matching_cpu.jsonl

One meta-step, in both implementations: from a start parameter vector θ_0 (a ConvNet-3 with instance
norm, 32×32×3 inputs, 10 classes) N SGD steps on the whole synthetic set (IPC × 10 images, no
augmentation) with a learnable scalar lr, the loss ‖θ_N − θ*‖² / ‖θ_0 − θ*‖², and its gradient with
respect to the images and the lr. jaxdd runs `jaxdd.methods.matching.match` under `jax.value_and_grad`,
jitted with every array an argument (remat per inner step, as a matching run does); torch runs
`torch_matching.matching_meta_gradient` (one flat parameter vector, create_graph=True at every step,
as GeorgeCazenavette/mtt-distillation). θ* is θ_0 plus a small random move (the timing does not depend on it).

Each implementation runs in its own child process (harness.run_child: one thread each on CPU), so
peak memory is that child's resident set (ru_maxrss; the baseline after imports and data is reported
too). The jaxdd child writes its start, target, images and first gradients; the torch child starts from
the same numbers and reports the relative error of its image gradient and lr gradient (float32).
Times: median of --repeats steps after one warm-up step (jaxdd: after compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks import harness as ms

IMAGE_SHAPE, NUM_CLASSES, DEPTH = (32, 32, 3), 10, 3


def make_images(s: dict, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = s["ipc"] * NUM_CLASSES
    images = rng.standard_normal((n,) + IMAGE_SHAPE).astype(np.float32)
    return images, np.repeat(np.arange(NUM_CLASSES), s["ipc"]).astype(np.int32)


def run_jaxdd(s: dict, a: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from jaxdd import inner
    from jaxdd.methods.matching import match
    from jaxdd.models import make_model

    model = make_model("convnet", image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, width=s["width"], depth=DEPTH,
                       conv=a["conv"])
    params0, state0 = model.init(jax.random.key(a["seed"]))
    start, unravel = ravel_pytree(params0)
    target = start + 0.01 * jax.random.normal(jax.random.key(a["seed"] + 1), start.shape)
    images, labels = make_images(s, a["seed"])
    cfg = inner.InnerConfig(optimizer="sgd", lr=0.01, ipc=s["ipc"], num_classes=NUM_CLASSES, augment="none",
                            total_steps=s["syn_steps"])

    def meta(theta, consts, start, target, state0, key):
        def loss_fn(th):
            return match(model, cfg, th, consts, start, target, unravel, state0, key, remat=s["remat"])[0]

        loss, g = jax.value_and_grad(loss_fn)(theta)
        return g, loss

    args = [{"images": jnp.asarray(images), "lr": jnp.float32(0.01)}, {"labels": jnp.asarray(labels)}, start, target,
            state0, jax.random.key(0)]
    jax.block_until_ready(args)
    baseline = ms.current_rss_bytes()
    t0 = time.perf_counter()
    compiled = jax.jit(meta).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    def on_first(result, _):
        g, loss = result
        np.savez(a["exchange"], images=images, labels=labels, grad=np.asarray(g["images"]),
                 grad_lr=float(g["lr"]), loss=float(loss), **ms.tree_to_npz(unravel(start), "s:"),
                 **ms.tree_to_npz(unravel(target), "t:"))

    timing, (_, loss) = ms.timed_calls(lambda _: jax.block_until_ready(compiled(*args)), range(a["repeats"] + 1),
                                       on_first=on_first)
    return dict(timing, compile_seconds=compile_s, loss=float(loss), **ms.cpu_memory(baseline),
                num_params=int(start.size), backend=jax.default_backend())


def run_torch(s: dict, a: dict) -> dict:
    import numpy as np
    import torch

    from benchmarks import torch_matching as tm
    from benchmarks import torch_reference as tr

    if a.get("threads"):
        torch.set_num_threads(a["threads"])
    ref = np.load(a["exchange"])
    model = tr.ConvNet(IMAGE_SHAPE, NUM_CLASSES, width=s["width"], depth=DEPTH)
    flat = tm.Flat(dict(model.named_parameters()))

    def vec(prefix):
        return flat.flatten(tr.params_from_jaxdd(ms.tree_from_npz(ref, prefix), IMAGE_SHAPE, width=s["width"],
                                                 depth=DEPTH))

    start, target = vec("s:"), vec("t:")
    images, labels = tr.nhwc_to_nchw(ref["images"]), torch.from_numpy(np.array(ref["labels"])).long()
    lr = torch.tensor(0.01)
    baseline = ms.current_rss_bytes()
    check = {}

    def on_first(result, _):
        g, g_lr, _ = result
        gj = ref["grad"].astype(np.float64)
        check.update(grad_rel_err=float(np.linalg.norm(tr.nchw_to_nhwc(g).astype(np.float64) - gj) / np.linalg.norm(gj)),
                     lr_grad_rel_err=abs(float(g_lr) - float(ref["grad_lr"])) / abs(float(ref["grad_lr"])))

    timing, (_, _, loss) = ms.timed_calls(
        lambda _: tm.matching_meta_gradient(model, flat, start, target, images, labels, lr, s["syn_steps"]),
        range(a["repeats"] + 1), on_first=on_first)
    return dict(timing, loss=loss, **check, loss_rel_err=abs(loss - float(ref["loss"])) / abs(float(ref["loss"])),
                **ms.cpu_memory(baseline), torch_threads=torch.get_num_threads())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=ms.csv(int), default=[32])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--syn-steps", type=int, default=30, help="N")
    ap.add_argument("--remat", default="full", help="jaxdd's rematerialisation of the inner step: full | dots | none")
    ap.add_argument("--conv", choices=("auto", "xla", "native"), default="auto")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each child (0: library defaults)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    def log(m):
        print(m, file=sys.stderr, flush=True)

    tmp = tempfile.mkdtemp(prefix="jaxdd-matching-")
    sink = open(args.out, "a") if args.out else None
    meta = ms.record_header(threads=args.threads, repeats=args.repeats)
    rows = ["| setting | jaxdd s/step median [min–max] | torch s/step median [min–max] | speedup torch/jaxdd | "
            "jaxdd compile s | jaxdd peak MiB (above baseline) | torch peak MiB (above baseline) | memory jaxdd/torch "
            "(above baseline) | grad rel err images / lr |", "|" + "---|" * 9]

    def emit(rec):
        if sink:
            sink.write(json.dumps(rec) + "\n")
            sink.flush()

    emit(meta)
    for width in args.widths:
        s = dict(width=width, ipc=args.ipc, syn_steps=args.syn_steps, remat=args.remat)
        a = dict(device="cpu", conv=args.conv, threads=args.threads, seed=args.seed, repeats=args.repeats,
                 exchange=os.path.join(tmp, f"w{width}.npz"))
        name = f"MTT w{width} ipc{args.ipc} N{args.syn_steps} remat {args.remat}"
        log(f"{name}")
        res = {}
        for impl in ("jaxdd", "torch"):
            r = ms.run_child("benchmarks.matching_step", impl, s, a, args.timeout, log)
            r.update(kind="run", impl=impl, setting=s)
            res[impl] = r
            if r.get("status") == "ok":
                log(f"  {impl}: {ms.fmt_s(r)} s/step, peak {ms.mib(r['peak_bytes'])} MiB")
            emit(r)
        j, t = res["jaxdd"], res["torch"]
        if j.get("status") == "ok" and t.get("status") == "ok":
            dj, dt = j["peak_bytes"] - j["baseline_bytes"], t["peak_bytes"] - t["baseline_bytes"]
            pair = dict(kind="pair", setting=s, label=name, speedup=t["seconds"] / j["seconds"],
                        memory_ratio=j["peak_bytes"] / t["peak_bytes"], memory_ratio_above_baseline=dj / dt,
                        jaxdd_seconds=j["seconds"], torch_seconds=t["seconds"], jaxdd_peak_bytes=j["peak_bytes"],
                        torch_peak_bytes=t["peak_bytes"], grad_rel_err=t["grad_rel_err"],
                        lr_grad_rel_err=t["lr_grad_rel_err"])
            emit(pair)
            rows.append(f"| {name} | {ms.fmt_s(j)} | {ms.fmt_s(t)} | {pair['speedup']:.2f} | "
                        f"{j['compile_seconds']:.1f} | "
                        f"{ms.mib(j['peak_bytes'])} ({ms.mib(dj)}) | {ms.mib(t['peak_bytes'])} ({ms.mib(dt)}) | "
                        f"{pair['memory_ratio']:.2f} ({pair['memory_ratio_above_baseline']:.2f}) | "
                        f"{t['grad_rel_err']:.1e} / {t['lr_grad_rel_err']:.1e} |")
    if sink:
        sink.close()
    print("\n".join(rows))


if __name__ == "__main__":
    if not ms.worker_main({"jaxdd": run_jaxdd, "torch": run_torch}):
        main()
