"""`jaxdd plan`'s answer: a run's programs, their time on named GPUs, and what to change to fit memory.

jaxdd/planning.py compiles the programs (the distillation step, the evaluation networks' step, the
experts' training step); this module adds the device table, the time estimates and the advice
(docs/planning.md says how the numbers are made and how far to trust them).
"""

from __future__ import annotations

import dataclasses
import re

import jax

from jaxdd import methods, parallel, planning
from jaxdd.data.facts import facts as data_facts
from jaxdd.errors import require

GB = 10**9


@dataclasses.dataclass(frozen=True)
class Device:
    """A GPU by its dense FP32 peak (FLOP/s) and memory (bytes)."""

    name: str
    peak: float
    memory: int


# Dense FP32 (non-tensor-core) peaks, the unit of benchmarks/results/gpu.md's "% peak" (H100 SXM: 67 TFLOP/s).
DEVICES = (
    Device("H100 80GB", 67e12, 80 * GB),
    Device("A100 80GB", 19.5e12, 80 * GB),
    Device("A800 80GB", 19.5e12, 80 * GB),
    Device("RTX 3090 24GB", 35.6e12, 24 * GB),
    Device("RTX 2080 Ti 11GB", 13.4e12, 11 * GB),
)
# Achieved share of the FP32 peak and a fixed latency per meta-step, fitted to the three RaT-BPTT rows of
# benchmarks/results/gpu.md at width 128 (CIFAR-10 IPC 1 / 10 / 50, T 200, W 60, real batch 5000 / 500: 0.15 /
# 0.265 / 0.88 s per step on an H100) against this planner's FLOP count of the same steps (2,449 / 10,791 /
# 47,867 GFLOP); assumed the same on every GPU (docs/planning.md, "Calibration"). The latency applies to the
# distillation step (hundreds of small sequential inner steps); the evaluation networks' step gets none.
GPU_ACHIEVED = 0.90
GPU_STEP_LATENCY = 0.09
# Achieved FLOP/s of one thread of the 2-core Xeon of benchmarks/results/cpu.md (RaT-BPTT at the images32 CPU
# preset: w32 IPC 1 0.47 s, w64 IPC 1 1.22 s, w32 IPC 10 3.80 s per step; this planner counts 17.9 / 64.2 /
# 125.5 GFLOP: 38 / 53 / 33 GFLOP/s); a CPU elsewhere is not known to it.
CPU_ACHIEVED = 38e9
FIT_SIZES = (24 * GB, 40 * GB, 80 * GB)


def parse_size(text: str) -> int:
    """'24GB', '24G', '24 GiB', '500MB', '2e10' -> bytes (GB = 10^9, GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    require(m is not None, f"--memory {text!r} is not a size: use e.g. 24GB, 11GiB or 500MB")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " kmgt".index(m.group(2) or " "))


def seconds(program: planning.Program, device: Device | None) -> float:
    """Estimated seconds for all the program's calls on one device of the kind (None: this machine's CPU)."""
    if device is None:
        return program.total_flops / CPU_ACHIEVED
    latency = GPU_STEP_LATENCY if program.name == planning.STEP else 0.0
    return program.steps * (latency + program.flops / (GPU_ACHIEVED * device.peak))


def present_device() -> Device | None:
    """The table's entry for the accelerator present (None: a CPU, or a GPU the table does not name)."""
    kind = jax.devices()[0].device_kind.lower()
    for device in DEVICES:
        if device.name.split()[0].lower() in kind and device.name.split()[1].lower() in kind:
            return device
    return None


def row(program: planning.Program) -> dict:
    """A program's numbers (the JSON row and the printed table's source)."""
    present = present_device()
    return dict(name=program.name, peak_bytes=program.peak_bytes, argument_bytes=program.argument_bytes,
                output_bytes=program.output_bytes, temp_bytes=program.temp_bytes, alias_bytes=program.alias_bytes,
                resident_bytes=program.resident_bytes, flops_per_step=program.flops, steps=program.steps,
                total_flops=program.total_flops, devices=program.devices, dynamic_loops=program.dynamic_loops,
                compile_seconds=program.compile_seconds,
                note=program.note, seconds={"present" if present is None else present.name: seconds(program, present),
                                            **{d.name: seconds(program, d) for d in DEVICES}},
                fits={f"{size // GB}GB": program.peak_bytes <= size for size in FIT_SIZES})


def candidates(settings, devices: int, ipc: int = 1, num_classes: int = 1) -> list[tuple[str, dict]]:
    """Changes that lower the step's memory per device, cheapest in time first: (description, overrides)."""
    out = []
    if getattr(settings, "remat", "full") != "full":
        out.append(("--remat full (recompute the whole inner step in the backward)", dict(remat="full")))
    if hasattr(settings, "outer_chunk"):
        per_member = settings.real_batch // settings.population
        chunk = settings.outer_chunk or per_member
        for smaller in (chunk // 2, chunk // 4, chunk // 8):
            if smaller >= 1 and per_member % smaller == 0:
                out.append((f"--outer-chunk {smaller} (the outer gradient in smaller chunks)", dict(outer_chunk=smaller)))
                break
    if getattr(settings, "population", 1) > devices:
        fewer = max(devices, settings.population // 2)
        out.append((f"--population {fewer} (fewer inner networks per device; a noisier meta-gradient)",
                    dict(population=fewer)))
    if hasattr(settings, "batch_syn"):  # trajectory matching: a class-balanced part of the set per inner step
        whole = ipc * num_classes
        current = settings.batch_syn or whole
        tried = {current}
        for part in (2, 4, 8):
            smaller = max(num_classes, current // part // num_classes * num_classes)
            if smaller < current and smaller not in tried:
                tried.add(smaller)
                out.append((f"--batch-syn {smaller} (synthetic images per inner step, of {whole})",
                            dict(batch_syn=smaller)))
    return out


def plan(source: str, method: str, ipc: int = 1, *, published: bool = False, steps: int | None = None,
         devices: int | None = None, memory: int | None = None, overrides: dict | None = None,
         evaluation: bool = True, advice_compiles: int = 3, compile: bool = True, log=lambda text: None) -> dict:
    """The plan of a `jaxdd distill` run (same arguments) as a dict: the data set's facts, the resolved
    settings, one row per program (:func:`row`) and, where the step does not fit `memory` bytes per device,
    the cheapest change that does (at most `advice_compiles` more compilations). compile=False: the
    distillation step's FLOPs only (traced, not compiled: no bytes, no other program, no advice)."""
    spec = methods.get(method)
    facts = data_facts(source)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    mesh = parallel.make_mesh(devices)
    settings, ipc, dataset, steps = planning.resolve(source, facts, method, ipc, published=published, steps=steps,
                                                     overrides=overrides)
    log(f"compiling the {method} step for {dataset.num_classes} classes x IPC {ipc} of {facts.image_shape} images")
    step = planning.distill_program(spec, settings, planning.run_model(settings, dataset), dataset, ipc, steps, mesh,
                                    compile=compile)
    rows = [row(step)]
    evaluation, memory = (evaluation, memory) if compile else (False, None)
    if compile and planning.HOOKS.get(spec.name, planning.Hook()).experts and not getattr(settings, "experts", ""):
        log(f"compiling the experts' training epoch ({settings.num_experts} x {settings.expert_train_epochs} epochs)")
        rows.append(row(planning.expert_program(settings, dataset)))
    if evaluation:
        protocol = spec.evaluation(settings)
        log(f"compiling the evaluation networks' step ({protocol.get('protocol')})")
        rows.append(row(planning.evaluation_program(protocol, dataset, ipc * dataset.num_classes)))
    result = dict(dataset=dict(dataclasses.asdict(facts)), method=method, ipc=int(ipc), published=published,
                  steps=int(steps), devices=parallel.num_devices(mesh), settings=dataclasses.asdict(settings),
                  programs=rows, memory=memory, fits=None, advice=None)
    if memory is not None:
        result["fits"] = step.peak_bytes <= memory
        if not result["fits"]:
            result["advice"] = advise(spec, source, facts, method, ipc, published, steps, mesh, memory, overrides,
                                      settings, advice_compiles, log)
    return result


def advise(spec, source, facts, method, ipc, published, steps, mesh, memory, overrides, settings, budget, log) -> dict:
    """The first change of :func:`candidates` (each on top of the ones before) whose step fits `memory`."""
    tried, changes = [], dict(overrides)
    options = candidates(settings, parallel.num_devices(mesh), ipc, facts.num_classes)
    for text, change in options[:budget]:
        changes = dict(overrides, **change)  # each alone: the batch_syn halvings replace one another
        log(f"trying {text}")
        s, i, ds, n = planning.resolve(source, facts, method, ipc, published=published, steps=steps, overrides=changes)
        program = planning.distill_program(spec, s, planning.run_model(s, ds), ds, i, n, mesh)
        tried.append(dict(change=text, overrides=dict(change), **row(program)))
        if program.peak_bytes <= memory:
            return dict(found=True, change=text, overrides=dict(changes), tried=tried)
    if not hasattr(settings, "population"):
        return dict(found=False, tried=tried, change="none of the changes tried fits (the matching step runs on one "
                                                    "device): a smaller --batch-syn, --syn-steps or a larger device")
    more = max(2, settings.population)
    return dict(found=False, tried=tried,
                change=f"none of the single-device changes fits; more devices split the population (e.g. --devices "
                       f"{more} --population {more}; on a CPU plan them with XLA_FLAGS="
                       f"--xla_force_host_platform_device_count={more})")


def published_rows(method: str) -> list[tuple[str, int]]:
    """(data set key, IPC) of a method's published presets."""
    return list(methods.get(method).presets.published)

