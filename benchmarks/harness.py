"""The measuring harness shared by the step benchmarks (meta_step, torch_step, matching_step).

Timing: every step runs in its own child process (`run_child`: `python -m MODULE --worker JOB`, one thread
each on CPU unless told otherwise), the first call is the warm-up (and, for jaxdd, after compilation), the
reported time is the median of the timed calls (`timed_calls`), with min / max / IQR, the CPU time of the
process and its scheduler counters beside it. Peak memory: on CPU the child's peak resident set size
(getrusage ru_maxrss, interpreter and libraries included; the baseline after imports and data is reported
too, `cpu_memory`), on GPU each library's own peak counter (in the runners). The machine (`machine`) and
the library versions go into the first JSON line of every output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------
# timing and memory inside a child


def rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return rss_bytes()


def cpu_memory(baseline: int) -> dict:
    """The CPU memory fields of a child's record: peak RSS and the baseline it started from."""
    return dict(peak_bytes=rss_bytes(), baseline_bytes=baseline, memory_source="ru_maxrss of the child")


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


def timed_calls(call: Callable, inputs: Iterable, on_first: Callable | None = None):
    """Run ``call(x)`` for every x (it must return only once the work is done); the first call is the warm-up,
    handed to ``on_first(result, x)`` and not timed. Returns (timing record, the last call's result)."""
    times, cpu_times, waits, switches, first, result = [], [], [], [], None, None
    for i, x in enumerate(inputs):
        result = None  # the previous result is not kept alive during the call
        t0, c0, s0 = time.perf_counter(), time.process_time(), sched_counters()
        result = call(x)
        dt, dc, s1 = time.perf_counter() - t0, time.process_time() - c0, sched_counters()
        if i == 0:
            first = dt
            if on_first is not None:
                on_first(result, x)
        else:
            times.append(dt)
            cpu_times.append(dc)
            waits.append(s1[0] - s0[0])
            switches.append(s1[1] - s0[1])
    return dict(spread(times), first_call_seconds=first, cpu_seconds=statistics.median(cpu_times),
                cpu_times=cpu_times, runqueue_wait_seconds=statistics.median(waits),
                voluntary_switches=statistics.median(switches)), result


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


# ----------------------------------------------------------------------------------------------------
# the machine


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


def commit() -> str | None:
    """The checkout's commit (short hash, '+dirty' when the tree has changes), recorded with every result."""
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty else "")) or None


def record_header(**extra) -> dict:
    """The first JSON line of a step benchmark's output: date, command, commit, machine, versions."""
    return dict(kind="meta", date=time.strftime("%Y-%m-%d %H:%M:%S"), versions=versions(), cpu=cpu_info(),
                command=" ".join(["python", "-m", f"benchmarks.{os.path.basename(sys.argv[0])[:-3]}"] + sys.argv[1:]),
                commit=commit(), machine=platform.node() or None, **extra)


# ----------------------------------------------------------------------------------------------------
# children and competing load


def run_child(module: str, impl: str, s: dict, a: dict, timeout: float, log) -> dict:
    """Run `python -m MODULE --worker JOB` from the repository root in a fresh process (one thread each on
    CPU when a["threads"] == 1); its last JSON line."""
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(dict(impl=impl, setting=s, args=a))]
    env = dict(os.environ)
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
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
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


def worker_main(runners: dict[str, Callable]) -> bool:
    """In a child started by `run_child`: run the job given by --worker and print its record; False when the
    process was not started as a worker."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--worker", default=None)
    known, _ = ap.parse_known_args()
    if not known.worker:
        return False
    job = json.loads(known.worker)
    print(json.dumps(runners[job["impl"]](job["setting"], job["args"])), flush=True)
    return True


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


# ----------------------------------------------------------------------------------------------------
# tables


def fmt_s(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "-")
    return f"{r['seconds']:.2f} [{r['min_seconds']:.2f}–{r['max_seconds']:.2f}]"


def mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def csv(typ):
    """argparse type: a comma-separated list of typ."""
    return lambda v: [typ(x) for x in v.split(",")]
