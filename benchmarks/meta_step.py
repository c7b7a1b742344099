"""Time and measure jaxdd's BPTT-family meta-step against the same step in PyTorch (torch_reference.py).

    python benchmarks/meta_step.py --quick [--json]              one small setting, < 2 min on a 2-core CPU
    python benchmarks/meta_step.py --grid cpu --out benchmarks/results/cpu.jsonl
    python benchmarks/meta_step.py --device gpu --out benchmarks/results/gpu.jsonl   (paper setting)
    python benchmarks/meta_step.py --widths 32,64 --ipcs 10 --unroll-steps 40 --windows 10 \\
        --real-batches 256 --remat on,off --estimators bptt,tbptt,rat-bptt --repeats 5

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
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
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
# helpers shared by the children


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


def rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return rss_bytes()


def tree_to_npz(tree, prefix: str) -> dict:
    """A params pytree as flat npz entries named prefix + 'a/b/c' (read back by `tree_from_npz`, without JAX)."""
    import jax
    import numpy as np

    return {prefix + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def tree_from_npz(ref, prefix: str) -> dict:
    """The nested dict of arrays saved by `tree_to_npz` under `prefix`."""
    tree: dict = {}
    for k in ref.files:
        if k.startswith(prefix):
            node = tree
            *path, leaf = k[len(prefix):].split("/")
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = ref[k]
    return tree


def sched_counters() -> tuple[float, int]:
    """(seconds all threads of this process spent runnable but waiting for a CPU, voluntary context switches)."""
    wait = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                wait += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return wait / 1e9, resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def spread(times: list[float]) -> dict:
    qs = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return dict(seconds=statistics.median(times), min_seconds=min(times), max_seconds=max(times),
                iqr_seconds=qs[2] - qs[0], times=times)


# ----------------------------------------------------------------------------------------------------
# the jaxdd child


def run_jaxdd(s: dict, a: dict) -> dict:
    import numpy as np
    import jax
    import jax.numpy as jnp

    from jaxdd import inner, outer, xla_options
    from jaxdd.methods import at_bptt, bptt
    from jaxdd.models import make_model, resolve_conv_impl
    from jaxdd.presets import Settings

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
    settings = Settings(inner_adam=a.get("inner_adam", "torch"), unroll_steps=s["unroll_steps"], window=s["window"], remat=remat_name,
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
    baseline = current_rss_bytes()

    t0 = time.perf_counter()
    compiled = jax.jit(meta, compiler_options=copts or None).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    rss_after_compile = rss_bytes()

    prefixes = a["prefixes"]
    times, cpu_times, waits, switches, first = [], [], [], [], None
    for i, n in enumerate(prefixes):
        args[-1] = jnp.asarray(n, jnp.int32)
        t0, c0, s0 = time.perf_counter(), time.process_time(), sched_counters()
        g, loss = compiled(*args)
        jax.block_until_ready((g, loss))
        dt, dc, s1 = time.perf_counter() - t0, time.process_time() - c0, sched_counters()
        if i == 0:
            first, first_grad = dt, g
            if a.get("exchange"):
                np.savez(a["exchange"], grad=np.asarray(g), loss=float(loss), prefix=n, **tree_to_npz(params0, "p:"))
        else:
            times.append(dt)
            cpu_times.append(dc)
            waits.append(s1[0] - s0[0])
            switches.append(s1[1] - s0[1])
    if rank:  # the low-rank backward's cosine to the exact meta-gradient of the same window, first prefix
        args[-1] = jnp.asarray(prefixes[0], jnp.int32)
        exact = np.asarray(jax.jit(functools.partial(meta, rank=0))(*args)[0]).ravel()
        approx = np.asarray(first_grad).ravel()
        cosine = float(approx @ exact / (np.linalg.norm(approx) * np.linalg.norm(exact)))
    out = dict(spread(times), first_call_seconds=first, compile_seconds=compile_s, loss=float(loss),
               cpu_seconds=statistics.median(cpu_times), cpu_times=cpu_times, runtime=runtime,
               runqueue_wait_seconds=statistics.median(waits), voluntary_switches=statistics.median(switches),
               compiler_options=copts, fused_norm=a.get("fused_norm", "auto"))
    if rank:
        out.update(cosine_to_exact=cosine)
    if gpu:
        stats = dev.memory_stats() or {}
        out.update(peak_bytes=int(stats.get("peak_bytes_in_use", 0)), memory_source="jax peak_bytes_in_use")
    else:
        out.update(peak_bytes=rss_bytes(), baseline_bytes=baseline, rss_after_compile_bytes=rss_after_compile,
                   memory_source="ru_maxrss of the child")

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


# ----------------------------------------------------------------------------------------------------
# the torch child


def run_torch(s: dict, a: dict) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    import torch_reference as tr

    gpu = a["device"] == "gpu"
    dev = torch.device("cuda" if gpu else "cpu")
    if a.get("threads"):
        torch.set_num_threads(a["threads"])
    depth = 3
    images, labels, real_x, real_y = make_data(s, a["seed"])
    ref = None
    if a.get("exchange") and os.path.exists(a["exchange"]):
        ref = np.load(a["exchange"])
        tree = tree_from_npz(ref, "p:")
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
    baseline = current_rss_bytes()

    times, cpu_times, waits, switches, first, err = [], [], [], [], None, None
    for i, n in enumerate(a["prefixes"]):
        t0, c0, s0 = time.perf_counter(), time.process_time(), sched_counters()
        g, loss = tr.meta_gradient(model, params, timages, tlabels, treal_x, treal_y, prefix=n, window=window, chunk=chunk,
                                  adam=a.get("inner_adam", "torch"))
        if gpu:
            torch.cuda.synchronize()
        dt, dc, s1 = time.perf_counter() - t0, time.process_time() - c0, sched_counters()
        if i == 0:
            first = dt
            if ref is not None and int(ref["prefix"]) == n:
                gj = ref["grad"].astype(np.float64)
                gt = tr.nchw_to_nhwc(g).astype(np.float64)
                err = float(np.linalg.norm(gt - gj) / np.linalg.norm(gj))
                loss_err = abs(loss - float(ref["loss"]))
        else:
            times.append(dt)
            cpu_times.append(dc)
            waits.append(s1[0] - s0[0])
            switches.append(s1[1] - s0[1])
        del g
    out = dict(spread(times), first_call_seconds=first, compile_seconds=0.0, loss=loss, grad_rel_err=err,
               torch_threads=torch.get_num_threads(), torch_chunk=chunk, cpu_seconds=statistics.median(cpu_times),
               cpu_times=cpu_times, runqueue_wait_seconds=statistics.median(waits),
               voluntary_switches=statistics.median(switches))
    if err is not None:
        out["loss_abs_err"] = loss_err
    if gpu:
        out.update(peak_bytes=int(torch.cuda.max_memory_allocated()), memory_source="torch.cuda.max_memory_allocated",
                   device_kind=torch.cuda.get_device_name(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        out.update(peak_bytes=rss_bytes(), baseline_bytes=baseline, memory_source="ru_maxrss of the child",
                   device_kind=platform.processor() or "cpu")
    return out


# ----------------------------------------------------------------------------------------------------
# the parent


def versions() -> dict:
    out = dict(python=platform.python_version())
    for name in ("jax", "jaxlib", "torch", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing package is just not reported
            out[name] = None
    return out


def cpu_info() -> dict:
    info = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    mhz = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz = float(line.split(":")[1])
                    break
    except OSError:
        pass
    flags = info.get("Flags", "")
    cores = os.cpu_count() or 1
    ghz = (mhz or float(info.get("CPU max MHz", 0) or 0)) / 1000.0
    # fp32 FLOPs per cycle per core: 2 FMA units × SIMD lanes × 2. Zen 4 (family 25, model ≥ 16) runs
    # AVX-512 on 256-bit datapaths, so it peaks like AVX2 with two FMA pipes: 2 × 8 × 2 = 32.
    if "avx512f" in flags and not (info.get("Vendor ID") == "AuthenticAMD"):
        per_cycle, simd = 64, "AVX-512, 2 FMA units"
    elif "fma" in flags:
        per_cycle, simd = 32, "256-bit FMA datapath × 2 FMA units (Zen 4 executes AVX-512 as 2 × 256-bit)"
    else:
        per_cycle, simd = 8, "SSE"
    return dict(model=info.get("Model name", platform.processor()), cores=cores, ghz=ghz, flops_per_cycle=per_cycle,
                simd=simd, peak_gflops=cores * ghz * per_cycle)


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


def start_load(n: int, max_seconds: float) -> list[subprocess.Popen]:
    """n busy-looping Python processes (a competing load on the shared CPU), each ending by itself after
    max_seconds even if this process dies; stop them with `stop_load`."""
    code = f"import time\nend = time.monotonic() + {float(max_seconds)}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:  # only the processes started by start_load, by their own handles
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def run_child(impl: str, s: dict, a: dict, timeout: float, log, script: str = __file__) -> dict:
    """Run `script --worker JOB` in a fresh process (one thread each on CPU when a["threads"] == 1); its last JSON line."""
    cmd = [sys.executable, os.path.abspath(script), "--worker", json.dumps(dict(impl=impl, setting=s, args=a))]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if a["device"] == "gpu":
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    else:
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        threads = a.get("jaxdd_threads", a.get("threads")) if impl == "jaxdd" else a.get("threads")
        if threads == 1:
            # one XLA worker thread (NPROC sizes XLA:CPU's thread pool, also set by xla_options.configure_cpu
            # in the child) and single-threaded Eigen matmuls / convolutions
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
            env["NPROC"] = "1"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", wall_seconds=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        log(f"  {impl} failed (rc {proc.returncode}): {' | '.join(tail)}")
        return dict(status="error", returncode=proc.returncode, error=" | ".join(tail), wall_seconds=wall)
    out = json.loads(lines[-1])
    out.update(status="ok", wall_seconds=wall)
    return out


def fmt_s(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "-")
    return f"{r['seconds']:.2f} [{r['min_seconds']:.2f}–{r['max_seconds']:.2f}]"


def mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


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
            r = run_child(impl, s, a, args.timeout, log)
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
    csv = lambda typ: (lambda v: [typ(x) for x in v.split(",")])  # noqa: E731
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
    ap.add_argument("--conv", choices=("auto", "xla", "native", "shifted", "taps"), default="auto",
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

    if args.worker:
        job = json.loads(args.worker)
        fn = run_jaxdd if job["impl"] == "jaxdd" else run_torch
        print(json.dumps(fn(job["setting"], job["args"])), flush=True)
        return

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    repeats = args.repeats or 3
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    settings = setting_list(args)
    cpu = cpu_info()
    peak = args.peak_gflops or (67000.0 if args.device == "gpu" else cpu["peak_gflops"])
    meta = dict(kind="meta", date=time.strftime("%Y-%m-%d %H:%M:%S"), versions=versions(), cpu=cpu, device=args.device,
                peak_gflops=peak, command=" ".join([os.path.basename(sys.executable)] + sys.argv), repeats=repeats)
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
    load = start_load(args.load, args.load_max_seconds) if args.load else []
    if load:  # a SIGTERM (e.g. from `timeout`) must still run the finally below that stops the load
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        log(f"# competing load: {args.load} busy-looping processes (pids {[q.pid for q in load]})")
    try:
        measure_all(args, settings, repeats, tmp, log, emit, pairs, torch_cache)
    finally:
        stop_load(load)
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
    main()
