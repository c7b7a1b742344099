"""Time and measure jaxdd's BPTT-family meta-step against the same step in PyTorch (torch_step.py).

    python -m benchmarks.meta_step --quick [--json]              one small setting, < 2 min on a 2-core CPU
    python -m benchmarks.meta_step --grid cpu --out benchmarks/results/cpu.jsonl
    python -m benchmarks.meta_step --device gpu --out benchmarks/results/gpu.jsonl   (paper setting)
    python -m benchmarks.meta_step --widths 32,64 --ipcs 10 --unroll-steps 40 --windows 10 \\
        --real-batches 256 --remat on,off --estimators bptt,tbptt,rat-bptt --repeats 5

This module is the parent (settings, pairs, tables) and the jaxdd runner; `benchmarks/torch_step.py` is the
PyTorch runner and `benchmarks/harness.py` the timing, memory and child-process harness both use.

What one meta-step is, in both implementations: a fresh inner Adam (lr 1e-3, eps_root 1e-8) on a
given initial ConvNet (instance norm), N inner steps without gradient, W differentiated inner steps,
each inner batch the whole synthetic set (32×32×3, 10 classes, class-major, no augmentation), the mean
cross-entropy on a real batch and its gradient with respect to the synthetic images. jaxdd runs
`jaxdd.methods.bptt.meta_gradient` jitted with every array as an argument (the prefix N is traced: one
compilation serves every N); torch runs `torch_reference.meta_gradient` (torch.func + create_graph,
as the authors' `higher`). Estimators: full BPTT (N = 0, W = T), T-BPTT (N = T − W), RaT-BPTT
(N ~ UniformInt[0, T − W], the same seeded sequence of N for both implementations).

Every (implementation, setting) runs in its own child process, jaxdd and torch alternating setting by
setting, so that peak memory is that child's alone: on CPU the child's peak resident set size
(getrusage ru_maxrss, which includes the interpreter and libraries; the baseline after imports and data
is reported too), on GPU jax's ``peak_bytes_in_use`` and ``torch.cuda.max_memory_allocated``. The
jaxdd child saves its initial weights and first meta-gradient; the torch child starts from the same
weights and reports the relative error between the two meta-gradients.

FLOPs come from XLA's cost analysis of the compiled jaxdd step. XLA counts a loop body once, whatever
its trip count, so the total is assembled from the compiled pieces: whole step (each loop body once)
+ (N − 1) × one inner step + (W − 1) × one window step (forward + backward, with its remat recompute)
+ (B/chunk − 1) × one outer chunk. "model FLOPs" leaves out remat's recomputation (one inner step per
window step), i.e. the work torch does; achieved FLOP/s = model FLOPs / median time for both.

Output: one JSON line per child ("kind": "run"), one per compared pair ("kind": "pair"), to --out
(appended) and to stdout with --json; a Markdown table (stdout, or stderr with --json; also --md FILE).
With --json the last line of stdout is one JSON object summarising the first pair (jaxdd_seconds,
torch_seconds, speedup = torch/jaxdd, jaxdd_peak_bytes, torch_peak_bytes, memory_ratio = jaxdd/torch).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time

from benchmarks import harness
from benchmarks.harness import csv, fmt_s, mib

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
ESTIMATORS = ("bptt", "tbptt", "rat-bptt")
ESTIMATOR_NAMES = {"bptt": "full BPTT", "tbptt": "T-BPTT", "rat-bptt": "RaT-BPTT", "at-bptt": "AT-BPTT"}
# AT-BPTT rows: the masked window of W + d steps (one compile for every W* in [W - d, W + d]) run at
# W* = W, with the exact backward (lowrank 0) or the rank-k Hessian at each network's window start
# (jaxdd/methods/at_bptt.py `own_factors`); torch runs the RaT-BPTT step of window W it replaces.
AT_DELTA = 3

# The grid: ConvNet width 32/64/128, IPC 1/10/50, W 10/60, T 40/200, real batch 256/5000,
# remat on/off, three estimators (W > T combinations are skipped; full BPTT ignores W).
FULL_GRID = dict(widths=[32, 64, 128], ipcs=[1, 10, 50], windows=[10, 60], unroll_steps=[40, 200],
                 real_batches=[256, 5000], remat=["on", "off"], estimators=list(ESTIMATORS))

QUICK = dict(width=32, ipc=1, unroll_steps=40, window=10, real_batch=256, chunk=0, remat="on", estimator="rat-bptt")

# The subset measured on the shared 2-core CPU (benchmarks/RESULTS.md): width 32, IPC 1, T 40, real batch 256
# unless said otherwise; a W sweep (T-BPTT at T = 40, full BPTT at T = W) with and without remat for the
# plot; RaT-BPTT W 10 at IPC 10, at width 64 and with real batch 5000 (outer chunk 500) one at a time.
def cpu_grid():
    base = dict(width=32, ipc=1, unroll_steps=40, window=10, real_batch=256, chunk=0)
    out = []
    for remat in ("on", "off"):
        for w in (5, 10, 20):
            out.append(dict(base, window=w, estimator="tbptt", remat=remat))
        for t in (10, 20, 40):
            out.append(dict(base, unroll_steps=t, window=t, estimator="bptt", remat=remat))
    out.append(dict(base, estimator="rat-bptt", remat="on"))
    out.append(dict(base, ipc=10, estimator="rat-bptt", remat="on"))
    out.append(dict(base, width=64, estimator="rat-bptt", remat="on"))
    out.append(dict(base, real_batch=5000, chunk=500, estimator="rat-bptt", remat="on"))
    for k in (0, 8, 32):
        out.append(dict(base, estimator="at-bptt", remat="on", delta=AT_DELTA, lowrank=k))
    return out


# The paper's CIFAR-10 IPC 10 setting (docs/methods/bptt.md): width 128, W 60, T 200, real batch 5000.
def gpu_grid():
    base = dict(width=128, ipc=10, unroll_steps=200, window=60, real_batch=5000, chunk=500, estimator="rat-bptt")
    return [dict(base, remat="on"), dict(base, remat="off")]


# ----------------------------------------------------------------------------------------------------
# the problem both runners solve


def prefixes_for(s: dict, count: int, seed: int) -> list[int]:
    """The sequence of prefixes N fed to both implementations (first one: warm-up and gradient check)."""
    import random

    t, w = s["unroll_steps"], s["window"]
    if s["estimator"] == "bptt":
        return [0] * count
    if s["estimator"] == "tbptt":
        return [t - w] * count
    rng = random.Random(seed)
    return [rng.randint(0, t - w - s.get("delta", 0)) for _ in range(count)]


def make_data(s: dict, seed: int):
    """Synthetic set (noise, each image unit L2 norm, class-major) and a real batch (noise, random labels)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = s["ipc"] * NUM_CLASSES
    images = rng.standard_normal((n,) + IMAGE_SHAPE).astype(np.float32)
    images /= np.linalg.norm(images.reshape(n, -1), axis=1).reshape(n, 1, 1, 1)
    labels = np.repeat(np.arange(NUM_CLASSES), s["ipc"]).astype(np.int32)
    real_x = rng.standard_normal((s["real_batch"],) + IMAGE_SHAPE).astype(np.float32)
    real_y = rng.integers(0, NUM_CLASSES, s["real_batch"]).astype(np.int32)
    return images, labels, real_x, real_y


# ----------------------------------------------------------------------------------------------------
# the jaxdd child


def run_jaxdd(s: dict, a: dict) -> dict:
    import numpy as np
    import jax
    import jax.numpy as jnp

    from jaxdd import inner, outer, xla_options
    from jaxdd.methods import at_bptt, bptt
    from jaxdd.models import make_model, resolve_conv_impl
    from jaxdd.methods.bptt import BPTTSettings

    gpu = a["device"] == "gpu"
    runtime = {}
    if not gpu:  # what jaxdd's CLI does on CPU before JAX starts (the thread count comes from --threads)
        runtime = xla_options.configure_cpu(threads=1 if a.get("jaxdd_threads", a.get("threads")) == 1 else None,
                                            malloc=a.get("malloc", "on") == "on")
    copts = xla_options.compiler_options() if a.get("xla_options", "on") == "on" else {}
    if a.get("compile_cache"):  # jaxdd's persistent compilation cache (warm on a second run with the same DIR)
        from jaxdd import compile_cache
        compile_cache.enable(a["compile_cache"], min_compile_seconds=0)
    depth = 3
    remat_name = {"on": "full", "off": "none"}.get(s["remat"], s["remat"])  # or a jaxdd policy name (dots, ...)
    settings = BPTTSettings(inner_adam=a.get("inner_adam", "torch"), unroll_steps=s["unroll_steps"], window=s["window"], remat=remat_name,
                        per_class=0, classes_per_step=0, augment="none", real_augment="none",
                        real_batch=s["real_batch"], outer_chunk=s["chunk"], width=s["width"], depth=depth)
    settings.validate(s["ipc"])  # the torch reference runs the same inner Adam (--inner-adam): same semantics
    window = settings.unroll_steps if s["estimator"] == "bptt" else settings.window
    delta, rank = s.get("delta", 0), s.get("lowrank", 0)
    length = jnp.asarray(window, jnp.int32) if s["estimator"] == "at-bptt" else None  # W* = W in a W + d window
    fused = {"auto": None, "on": True, "off": False}[a.get("fused_norm", "auto")]
    model = make_model("convnet", image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, width=s["width"], depth=depth,
                       conv=a["conv"], fused_norm=fused)
    cfg = bptt.inner_config(settings, s["ipc"], NUM_CLASSES)
    remat = False if settings.remat == "none" else settings.remat
    chunk = settings.outer_chunk or None

    def meta(theta, consts, params0, state0, real_x, real_y, key, prefix, rank=rank):
        grad_map_at = at_bptt.own_factors(model, rank) if rank else None
        grads, m = bptt.meta_gradient(model, cfg, theta, consts, params0, state0, real_x, real_y, key, prefix,
                                      window=window + delta, length=length, remat=remat, chunk=chunk,
                                      grad_map_at=grad_map_at)
        return grads["images"], m["loss"]

    images, labels, real_x, real_y = make_data(s, a["seed"])
    dev = jax.devices()[0]
    params0, state0 = model.init(jax.random.key(a["seed"]))
    args = [{"images": jnp.asarray(images)}, {"labels": jnp.asarray(labels)}, params0, state0, jnp.asarray(real_x),
            jnp.asarray(real_y), jax.random.key(a["seed"] + 1), jnp.asarray(0, jnp.int32)]
    args = jax.device_put(args, dev)
    jax.block_until_ready(args)
    baseline = harness.current_rss_bytes()

    t0 = time.perf_counter()
    compiled = jax.jit(meta, compiler_options=copts or None).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    rss_after_compile = harness.rss_bytes()

    prefixes = a["prefixes"]
    first_grad = None

    def on_first(result, n):
        nonlocal first_grad
        first_grad = result[0]
        if a.get("exchange"):
            np.savez(a["exchange"], grad=np.asarray(result[0]), loss=float(result[1]), prefix=int(n),
                     **harness.tree_to_npz(params0, "p:"))

    steps = [jnp.asarray(n, jnp.int32) for n in prefixes]
    timing, (_, loss) = harness.timed_calls(lambda n: jax.block_until_ready(compiled(*args[:-1], n)), steps,
                                            on_first=on_first)
    if rank:  # the low-rank backward's cosine to the exact meta-gradient of the same window, first prefix
        args[-1] = jnp.asarray(prefixes[0], jnp.int32)
        exact = np.asarray(jax.jit(functools.partial(meta, rank=0))(*args)[0]).ravel()
        approx = np.asarray(first_grad).ravel()
        cosine = float(approx @ exact / (np.linalg.norm(approx) * np.linalg.norm(exact)))
    out = dict(timing, compile_seconds=compile_s, loss=float(loss), runtime=runtime, compiler_options=copts,
               fused_norm=a.get("fused_norm", "auto"))
    if rank:
        out.update(cosine_to_exact=cosine)
    if gpu:
        stats = dev.memory_stats() or {}
        out.update(peak_bytes=int(stats.get("peak_bytes_in_use", 0)), memory_source="jax peak_bytes_in_use")
    else:
        out.update(harness.cpu_memory(baseline), rss_after_compile_bytes=rss_after_compile)

    # FLOPs from XLA's cost analysis (loop bodies are counted once: assemble the total from pieces)
    if not a.get("no_flops"):
        # On GPU the compiled module's convolutions and GEMMs are cuDNN / cuBLAS custom calls that the cost
        # analysis does not count: there the same functions are compiled for the host CPU and analysed.
        host = jax.devices("cpu")[0] if gpu else None

        def flops(fn, *xs):
            if host is not None:
                xs = jax.device_put(xs, host)
            c = jax.jit(fn).lower(*xs).compile().cost_analysis()
            c = c[0] if isinstance(c, (list, tuple)) else c
            return float((c or {}).get("flops", float("nan")))

        if gpu:
            f_whole = flops(meta, *args)
        else:
            c = compiled.cost_analysis()
            f_whole = float((c[0] if isinstance(c, (list, tuple)) else c).get("flops", float("nan")))
        carry = inner.init_carry(params0, state0, cfg)
        f_step = flops(lambda c, th, co, k: inner.make_step(model, cfg, co)(c, th, k), carry, args[0], args[1], args[6])
        b, ch = s["real_batch"], chunk or s["real_batch"]
        f_chunk = flops(lambda p, st, x, y: outer.outer_grad(model, p, st, x, y)[0], params0, state0, args[4][:ch], args[5][:ch])
        f_window_step = f_whole - f_step - f_chunk
        n_mean = statistics.mean(prefixes)
        total = f_whole + (n_mean - 1) * f_step + (window - 1) * f_window_step + (b // ch - 1) * f_chunk
        model_flops = total - (window * f_step if remat == "full" else 0.0)
        out.update(flops=total, model_flops=model_flops, flops_inner_step=f_step, flops_window_step=f_window_step,
                   flops_outer_chunk=f_chunk, flops_whole_counted_once=f_whole,
                   flops_source="compiled for the host CPU" if gpu else "compiled HLO")
    out.update(conv=resolve_conv_impl(a["conv"]), device_kind=dev.device_kind, backend=jax.default_backend(),
               num_params=model.num_params)
    return out


def setting_list(args) -> list[dict]:
    if args.quick:
        return [dict(QUICK)]
    product_opts = [args.widths, args.ipcs, args.windows, args.unroll_steps, args.real_batches, args.remat, args.estimators]
    if args.device == "gpu" and args.grid is None and all(o is None for o in product_opts):
        return gpu_grid()
    if args.grid == "cpu" and all(o is None for o in product_opts):
        return cpu_grid()
    if args.grid == "gpu" and all(o is None for o in product_opts):
        return gpu_grid()
    g = dict(FULL_GRID) if args.grid == "full" else dict(widths=[32], ipcs=[10], windows=[10], unroll_steps=[40],
                                                         real_batches=[256], remat=["on"], estimators=["rat-bptt"])
    for name in g:
        v = getattr(args, name)
        if v is not None:
            g[name] = v
    out, seen = [], set()
    for width, ipc, w, t, b, remat, est in itertools.product(g["widths"], g["ipcs"], g["windows"], g["unroll_steps"],
                                                             g["real_batches"], g["remat"], g["estimators"]):
        if w > t:
            continue
        if est == "bptt":
            w = t
        chunk = args.chunk if (args.chunk and b > args.chunk) else 0
        s = dict(width=width, ipc=ipc, unroll_steps=t, window=w, real_batch=b, chunk=chunk, remat=remat, estimator=est)
        variants = [dict(s, delta=AT_DELTA, lowrank=k) for k in (args.lowranks or [0])] if est == "at-bptt" else [s]
        for v in variants:
            key = json.dumps(v, sort_keys=True)
            if key not in seen and not (est == "at-bptt" and w + AT_DELTA > t):
                seen.add(key)
                out.append(v)
    return out


def label(s: dict) -> str:
    est = ESTIMATOR_NAMES[s["estimator"]]
    chunk = f"/{s['chunk']}" if s.get("chunk") else ""
    at = f" d{s.get('delta', 0)} lowrank {s.get('lowrank') or 'off'}" if s["estimator"] == "at-bptt" else ""
    return (f"{est} w{s['width']} ipc{s['ipc']} T{s['unroll_steps']} W{s['window']} B{s['real_batch']}{chunk} "
            f"remat {s['remat']}{at}")


def markdown(pairs: list[dict], peak_gflops: float) -> str:
    head = ("| setting | jaxdd s/step median [min–max] | torch s/step median [min–max] | speedup torch/jaxdd | "
            "CPU-time speedup | jaxdd compile s | jaxdd peak MiB | torch peak MiB | memory jaxdd/torch | "
            "memory above baseline jaxdd/torch | jaxdd GFLOP (model) | jaxdd GFLOP/s (% peak) | torch GFLOP/s (% peak) | "
            "grad rel err (AT-BPTT low-rank: cosine to exact) |")
    rows = [head, "|" + "---|" * 14]
    for p in pairs:
        j, t = p["jaxdd"], p["torch"]
        gj = gt = "-"
        if j.get("status") == "ok" and j.get("model_flops"):
            mf = j["model_flops"]
            gj = f"{mf / j['seconds'] / 1e9:.1f} ({100 * mf / j['seconds'] / 1e9 / peak_gflops:.0f}%)"
            if t.get("status") == "ok":
                gt = f"{mf / t['seconds'] / 1e9:.1f} ({100 * mf / t['seconds'] / 1e9 / peak_gflops:.0f}%)"
        flops = f"{j['flops'] / 1e9:.0f} ({j['model_flops'] / 1e9:.0f})" if j.get("flops") else "-"
        err = t.get("grad_rel_err")
        rows.append("| " + " | ".join([
            label(p["setting"]), fmt_s(j), fmt_s(t),
            f"{p['speedup']:.2f}" if p.get("speedup") else "-",
            f"{p['cpu_speedup']:.2f}" if p.get("cpu_speedup") else "-",
            f"{j['compile_seconds']:.1f}" if j.get("status") == "ok" else "-",
            mib(j.get("peak_bytes")), mib(t.get("peak_bytes")),
            f"{p['memory_ratio']:.2f}" if p.get("memory_ratio") else "-",
            f"{p['memory_ratio_above_baseline']:.2f}" if p.get("memory_ratio_above_baseline") else "-",
            flops, gj, gt, ("-" if err is None else f"{err:.1e}")
            + (f" (cos {j['cosine_to_exact']:.3f})" if j.get("cosine_to_exact") is not None else "")]) + " |")
    return "\n".join(rows)


def measure_all(args, settings, repeats, tmp, log, emit, pairs, torch_cache) -> None:
    """Measure every setting: jaxdd and torch children alternating; appends to `pairs`."""
    for i, s in enumerate(settings):
        prefixes = prefixes_for(s, repeats + 1, args.seed + i)
        a = dict(device=args.device, conv=args.conv, fused_norm=args.fused_norm, xla_options=args.xla_options,
                 malloc=args.malloc, compile_cache=args.compile_cache, threads=args.threads,
                 jaxdd_threads=args.threads if args.jaxdd_threads is None else args.jaxdd_threads, seed=args.seed,
                 prefixes=prefixes, torch_chunk=args.torch_chunk, no_flops=args.no_flops, inner_adam=args.inner_adam,
                 exchange=os.path.join(tmp, f"s{i}.npz"))
        log(f"[{i + 1}/{len(settings)}] {label(s)}  prefixes {prefixes}")
        res = {}
        for impl in args.impls:
            # torch has no remat: measure it once per setting (remat on/off share it), right after jaxdd
            tkey = json.dumps(dict(s, remat=None, prefixes=prefixes), sort_keys=True)
            if impl == "torch" and tkey in torch_cache:
                res[impl] = dict(torch_cache[tkey], reused=True)
                log("  torch: same setting as above, measured once")
                continue
            module = "benchmarks.meta_step" if impl == "jaxdd" else "benchmarks.torch_step"
            r = harness.run_child(module, impl, s, a, args.timeout, log)
            r.update(kind="run", impl=impl, setting=s, prefixes=prefixes)
            emit(r)
            res[impl] = r
            if impl == "torch" and r.get("status") == "ok":
                torch_cache[tkey] = r
            if r.get("status") == "ok":
                extra = f", compile {r['compile_seconds']:.1f} s" if impl == "jaxdd" else ""
                extra += f", grad rel err {r['grad_rel_err']:.1e}" if r.get("grad_rel_err") is not None else ""
                log(f"  {impl}: {fmt_s(r)} s/step, peak {mib(r['peak_bytes'])} MiB{extra} (child {r['wall_seconds']:.0f} s)")
        if "jaxdd" in res and "torch" in res:
            j, t = res["jaxdd"], res["torch"]
            p = dict(kind="pair", setting=s, label=label(s), jaxdd=j, torch=t)
            if j.get("status") == "ok" and t.get("status") == "ok":
                p.update(speedup=t["seconds"] / j["seconds"], memory_ratio=j["peak_bytes"] / t["peak_bytes"])
                if j.get("cpu_seconds") and t.get("cpu_seconds"):
                    p["cpu_speedup"] = t["cpu_seconds"] / j["cpu_seconds"]
                if j.get("baseline_bytes") and t.get("baseline_bytes"):
                    dj, dt = j["peak_bytes"] - j["baseline_bytes"], t["peak_bytes"] - t["baseline_bytes"]
                    p["memory_ratio_above_baseline"] = dj / dt if dt > 0 else None
            pairs.append(p)
            emit({k: v for k, v in p.items() if k not in ("jaxdd", "torch")} | dict(
                jaxdd_seconds=j.get("seconds"), torch_seconds=t.get("seconds"), jaxdd_peak_bytes=j.get("peak_bytes"),
                torch_peak_bytes=t.get("peak_bytes")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small setting (w32, IPC 1, T 40, W 10, B 256, RaT-BPTT)")
    ap.add_argument("--json", action="store_true", help="JSON lines on stdout; the last line summarises the first pair")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: the paper's CIFAR-10 IPC 10 setting unless a grid is given")
    ap.add_argument("--grid", choices=("cpu", "gpu", "full"), default=None,
                    help="cpu: the subset measured on the 2-core CPU; gpu: the paper setting; full: the issue's whole grid")
    ap.add_argument("--widths", type=csv(int))
    ap.add_argument("--ipcs", type=csv(int))
    ap.add_argument("--windows", type=csv(int))
    ap.add_argument("--unroll-steps", type=csv(int))
    ap.add_argument("--real-batches", type=csv(int))
    ap.add_argument("--remat", type=csv(str), help="on,off (full / none) or jaxdd policies: dots, dots_no_batch")
    ap.add_argument("--estimators", type=csv(str), help="bptt,tbptt,rat-bptt,at-bptt")
    ap.add_argument("--lowranks", type=csv(int), help="AT-BPTT rows: ranks of the Hessian in the backward (0: exact)")
    ap.add_argument("--chunk", type=int, default=500, help="outer chunk for real batches larger than it (0: none)")
    ap.add_argument("--torch-chunk", choices=("same", "none"), default="same",
                    help="same: torch computes λ in the same chunks as jaxdd; none: one backward of the whole batch")
    ap.add_argument("--conv", choices=("auto", "xla", "native"), default="auto",
                    help="jaxdd convolution (auto: native on CPU, xla on GPU)")
    ap.add_argument("--fused-norm", choices=("auto", "on", "off"), default="auto",
                    help="jaxdd instance norm through its fused custom VJP (auto: with the native convolution)")
    ap.add_argument("--xla-options", choices=("on", "off"), default="on",
                    help="jaxdd's per-jit XLA options (jaxdd.xla_options.compiler_options) or XLA's defaults")
    ap.add_argument("--compile-cache", default=None, metavar="DIR",
                    help="jaxdd child: persistent compilation cache in DIR (run twice: the second run loads the "
                         "executables, as a repeated jaxdd command does; compile_seconds and peak memory drop)")
    ap.add_argument("--malloc", choices=("on", "off"), default="on",
                    help="jaxdd child: xla_options.configure_cpu's malloc setting (large blocks from the heap)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for both (0: library defaults; 1, the CPU default: torch.set_num_threads(1), and XLA with "
                         "one worker thread (NPROC=1) and single-threaded Eigen; before this option set NPROC, XLA ran "
                         "independent operations on 2 worker threads even with --threads 1)")
    ap.add_argument("--jaxdd-threads", type=int, default=None,
                    help="jaxdd's threads when they should differ from --threads (0: XLA's default pool of one "
                         "worker per core and multi-threaded Eigen)")
    ap.add_argument("--load", type=int, default=0,
                    help="run N busy-looping processes (python: while True: pass) during the measurement, as a "
                         "competing load; they are killed afterwards and end by themselves after --load-max-seconds")
    ap.add_argument("--load-max-seconds", type=float, default=3600.0)
    ap.add_argument("--inner-adam", choices=("torch", "optax"), default="torch",
                    help="inner Adam semantics on both sides (default torch: jaxdd's default, eps outside the root)")
    ap.add_argument("--impls", type=csv(str), default=["jaxdd", "torch"])
    ap.add_argument("--repeats", type=int, default=None, help="timed meta-steps after the warm-up (default 3, quick 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    ap.add_argument("--peak-gflops", type=float, default=None, help="device peak fp32 GFLOP/s (default: CPU from lscpu; "
                    "GPU 67000 = H100 SXM fp32 without tensor cores)")
    ap.add_argument("--no-flops", action="store_true", help="skip the cost analysis (saves compile time)")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--md", default=None, help="write the Markdown table here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    repeats = args.repeats or 3
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    settings = setting_list(args)
    meta = harness.record_header(device=args.device, repeats=repeats)
    peak = args.peak_gflops or (67000.0 if args.device == "gpu" else meta["cpu"]["peak_gflops"])
    meta["peak_gflops"] = peak
    log(f"# {len(settings)} settings, {repeats} timed repeats each (+1 warm-up); peak {peak:.0f} GFLOP/s assumed")
    sink = open(args.out, "a") if args.out else None

    meta["threads"] = args.threads
    meta["env_xla_flags"] = os.environ.get("XLA_FLAGS")  # extra XLA flags given by the caller (both children get them)
    meta["load"] = args.load

    def emit(rec):
        line = json.dumps(rec)
        if sink:
            sink.write(line + "\n")
            sink.flush()
        if args.json:
            print(line, flush=True)

    emit(meta)
    tmp = tempfile.mkdtemp(prefix="jaxdd-bench-")
    pairs, torch_cache = [], {}
    load = harness.start_load(args.load, args.load_max_seconds) if args.load else []
    if load:  # a SIGTERM (e.g. from `timeout`) must still run the finally below that stops the load
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        log(f"# competing load: {args.load} busy-looping processes (pids {[q.pid for q in load]})")
    try:
        measure_all(args, settings, repeats, tmp, log, emit, pairs, torch_cache)
    finally:
        harness.stop_load(load)
    table = markdown(pairs, peak)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    log("")
    log(table)
    if sink:
        sink.close()
    if args.json:
        summary = {}
        if pairs:
            p = pairs[0]
            j, t = p["jaxdd"], p["torch"]
            summary = dict(setting=p["label"], jaxdd_seconds=j.get("seconds"), torch_seconds=t.get("seconds"),
                           speedup=p.get("speedup"), cpu_speedup=p.get("cpu_speedup"),
                           jaxdd_cpu_seconds=j.get("cpu_seconds"), torch_cpu_seconds=t.get("cpu_seconds"),
                           jaxdd_runqueue_wait_seconds=j.get("runqueue_wait_seconds"),
                           torch_runqueue_wait_seconds=t.get("runqueue_wait_seconds"),
                           jaxdd_voluntary_switches=j.get("voluntary_switches"),
                           torch_voluntary_switches=t.get("voluntary_switches"),
                           jaxdd_peak_bytes=j.get("peak_bytes"),
                           torch_peak_bytes=t.get("peak_bytes"), memory_ratio=p.get("memory_ratio"),
                           memory_ratio_above_baseline=p.get("memory_ratio_above_baseline"),
                           jaxdd_compile_seconds=j.get("compile_seconds"), jaxdd_flops=j.get("flops"),
                           jaxdd_model_flops=j.get("model_flops"), grad_rel_err=t.get("grad_rel_err"),
                           peak_gflops=peak, device=args.device, load=args.load, threads=args.threads,
                           versions=meta["versions"])
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    if not harness.worker_main({"jaxdd": run_jaxdd}):
        main()
