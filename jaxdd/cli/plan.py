"""``jaxdd plan``: a run's memory per device, FLOPs and time, from its compiled programs, without its data."""

from __future__ import annotations

import argparse
import json
import sys

from jaxdd import plans, presets
from jaxdd.cli.args import add_data_arguments, positive_int
from jaxdd.cli.distill import add_method_arguments, add_settings_arguments

PLAN_EPILOG = """\
examples:
  jaxdd plan --dataset tfds:cifar100 --method mtt --ipc 50 --published --memory 24GB
  jaxdd plan --dataset tfds:cifar10 --method at-bptt --ipc 10 --published --json
  jaxdd plan --dataset ../shared/data/cifar10-jpeg.tar.xz --method rat-bptt --ipc 10 --window 40

The run's outer step is compiled exactly as `jaxdd distill` would run it, for the devices present
(simulated CPU devices count: XLA_FLAGS=--xla_force_host_platform_device_count=8), with abstract
inputs: no data is loaded. A tfds set or a known name (cifar10, cifar100, tiny_imagenet,
imagenet_subset, ...) is taken from a table; a folder or archive is listed and one image decoded.
Peak = arguments + outputs + temporaries - donated buffers of the compiled step, plus the training
split the batch sampler keeps on the device. FLOPs: matrix products and convolutions of the step,
loops at their trip counts. Time = FLOPs / (achieved share x FP32 peak), the share calibrated on
measured H100 and CPU rows (docs/planning.md says how far to trust each number).
"""


def add_parser(subparsers, method: str = "rat-bptt") -> argparse.ArgumentParser:
    """The ``jaxdd plan`` subcommand: the options of ``jaxdd distill`` plus --memory and --json."""
    p = subparsers.add_parser(
        "plan", help="predict a run's memory per device, FLOPs and time from its compiled step (no data loaded)",
        description="Plan a distillation run: peak memory per device, FLOPs per meta-step, meta-steps, total "
                    "FLOPs and the time on this machine and on named GPUs, for the distillation step and the "
                    "evaluation networks; with --memory, the cheapest change that fits.",
        epilog=PLAN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    spec = add_method_arguments(p, method)
    p.add_argument("--published", action="store_true",
                   help="the paper's settings for this data set and IPC"
                        + (f"; {presets.published_help(spec.name)}" if spec.presets.published else ""))
    p.add_argument("--devices", type=positive_int, default=None, metavar="N",
                   help="devices the run is sharded over (default: all present)")
    p.add_argument("--memory", type=plans.parse_size, default=None, metavar="SIZE",
                   help="memory per device (e.g. 24GB, 11GiB): say whether the step fits, and if not, the "
                        "cheapest change that does, with its time")
    p.add_argument("--no-eval", action="store_true", help="plan the distillation step only")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object (the same numbers)")
    add_data_arguments(p, normalize=False)
    add_settings_arguments(p, spec)
    p.set_defaults(func=run, settings_type=spec.settings)
    return p


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _time(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h" if s < 172800 \
        else f"{s / 86400:.1f} d"


def table(result: dict) -> str:
    """The plan as a short text table."""
    f = result["dataset"]
    lines = [f"{result['method']} IPC {result['ipc']} on {f['name']} ({f['image_shape'][0]}x{f['image_shape'][1]}x"
             f"{f['image_shape'][2]}, {f['num_classes']} classes, {f['num_train']} training images; {f['how']}), "
             f"{result['devices']} device(s)"]
    names = list(result["programs"][0]["seconds"])
    lines.append(f"{'program':<34} {'peak/device':>12} {'GFLOP/step':>11} {'steps':>8} {'total PFLOP':>11}  "
                 + "  ".join(f"{n:>12}" for n in names))
    for r in result["programs"]:
        lines.append(f"{r['name'][:34]:<34} {_gib(r['peak_bytes']):>12} {r['flops_per_step'] / 1e9:>11.1f} "
                     f"{r['steps']:>8} {r['total_flops'] / 1e15:>11.3f}  "
                     + "  ".join(f"{_time(r['seconds'][n]):>12}" for n in names))
        if r["note"]:
            lines.append(f"  ({r['note']}; fits 24/40/80 GB: "
                         + "/".join("yes" if v else "no" for v in r["fits"].values()) + ")")
    if result["memory"] is not None:
        fits = result["fits"]
        lines.append(f"--memory {_gib(result['memory'])}: the step {'fits' if fits else 'does not fit'}")
        advice = result["advice"]
        if advice:
            for t in advice["tried"]:
                lines.append(f"  {t['change']}: {_gib(t['peak_bytes'])}, {t['flops_per_step'] / 1e9:.1f} GFLOP/step, "
                             f"H100 {_time(t['seconds']['H100 80GB'])}")
            lines.append(("cheapest change that fits: " if advice["found"] else "") + advice["change"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    names = args.settings_type.field_names()
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    result = plans.plan(args.dataset, args.method, args.ipc, published=args.published, steps=args.steps,
                        devices=args.devices, memory=args.memory, overrides=overrides, evaluation=not args.no_eval,
                        log=lambda text: print(f"jaxdd plan: {text}", file=sys.stderr, flush=True))
    print(json.dumps(result, sort_keys=True, default=str) if args.json else table(result))
    return 0
