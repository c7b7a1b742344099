"""``jaxdd distill``: one option per setting of the chosen method, then the one driver."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re

import jax

from jaxdd import baseline, methods, parallel, presets
from jaxdd.cli.args import (add_data_arguments, nonnegative_int, number, positive_int,
                            positive_or_zero_float)
from jaxdd.distillation import distill
from jaxdd.errors import JaxddError

DISTILL_EPILOG = """\
examples:
  jaxdd distill --dataset digits --method rat-bptt --ipc 1
  jaxdd distill --dataset digits --method rat-bptt --ipc 10 --steps 600 --out runs/digits-ipc10
  jaxdd distill --dataset digits --method rat-bptt --ipc 10 --out runs/digits-ipc10 --steps 1200 --resume
  jaxdd distill --dataset ../shared/data/cifar10-jpeg.tar.xz --method rat-bptt --ipc 1 --steps 300
  jaxdd distill --dataset tfds:cifar10 --method rat-bptt --ipc 10 --published --devices 8 --population 8

presets: digits and any other small image set get CPU-sized values; --published takes the paper's
settings where the method has them (a GPU job). Every preset value is overridden by the option of the
same name below; `jaxdd distill --method M --help` lists the settings of method M.

outputs in --out: distilled.npz (images, labels, lr, settings JSON), grid.png, metrics.jsonl,
settings.json and checkpoints/. An --out that holds results is refused unless --resume (continue
from its newest checkpoint; settings that change the result must be the same) or --overwrite. Ctrl-C
and SIGTERM (SLURM, kill) finish the current step, save a checkpoint and exit with 130 / 143; --resume
continues exactly (docs/runs.md). On a terminal a progress bar, elsewhere a line every steps/20.
"""


def method_from(argv) -> str:
    """The --method named on the command line (before the full parse), default rat-bptt."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="rat-bptt")
    known, _ = pre.parse_known_args(list(argv or []))
    return known.method


def add_parser(subparsers, method: str = "rat-bptt") -> argparse.ArgumentParser:
    """The ``jaxdd distill`` subcommand, with the settings of ``method`` as options."""
    listing = "\n".join(f"  {name:10s} {methods.get(name).summary}" for name in methods.available())
    p = subparsers.add_parser(
        "distill",
        help="learn a small synthetic training set (" + ", ".join(methods.available()) + ")",
        description="Distil a data set into --ipc synthetic images per class; then report the distilled set's "
                    "test accuracy beside random real images at the same IPC, under the same evaluation.",
        epilog=DISTILL_EPILOG + "\nmethods:\n" + listing + "\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    spec = add_method_arguments(p, method, "; see below", ", counting those of a resumed run")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default runs/DATASET-METHOD-ipcN)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of everything random in the run (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--published", action="store_true",
                   help="start from the paper's settings for this data set and IPC instead of the CPU preset"
                        + (f"; {presets.published_help(spec.name)}" if spec.presets.published else ""))
    p.add_argument("--devices", type=positive_int, default=None, metavar="N",
                   help="devices to shard the population, real batch and evaluation over (default: all)")
    p.add_argument("--distributed", action="store_true",
                   help="several processes / hosts: call jax.distributed.initialize() first (SLURM and TPU pod "
                        "slices need nothing more; elsewhere add the three options below; see README)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="with --distributed: address of process 0's coordinator service")
    p.add_argument("--num-processes", type=positive_int, default=None, metavar="N",
                   help="with --distributed: number of processes in the run")
    p.add_argument("--process-id", type=nonnegative_int, default=None, metavar="I",
                   help="with --distributed: this process's index in [0, N)")
    add_data_arguments(p, normalize=False)  # --normalize is one of the settings below
    add_settings_arguments(p, spec)
    out = p.add_argument_group("output")
    out.add_argument("--no-eval", action="store_true", help="skip the final evaluation of the set and the baseline")
    out.add_argument("--json", action="store_true", help="print one JSON summary object as the last line of stdout")
    out.add_argument("--no-progress", action="store_true",
                     help="no progress bar or progress lines on stderr, only the start and end lines")
    out.add_argument("--log", action="append", choices=("tensorboard", "wandb"), default=None,
                     help="also log the metrics, settings, results and image grids to TensorBoard (DIR/tensorboard) "
                          "or Weights & Biases (DIR/wandb, offline unless WANDB_MODE is set); repeatable; needs "
                          "the extra jaxdd[tensorboard] / jaxdd[wandb] (docs/runs.md 'Watch a run')")
    out.add_argument("--log-images-every", type=positive_int, default=None, metavar="N",
                     help="with --log: an image grid every N steps (default: steps/10) and at the last step")
    p.set_defaults(func=run, settings_type=spec.settings)
    return p


def add_method_arguments(p: argparse.ArgumentParser, method: str, method_note: str = "", steps_note: str = ""):
    """--method, --ipc and --steps (shared by distill and plan); returns the spec of ``method`` (its settings
    become options), rat-bptt's for an unknown name (the parser refuses it later)."""
    spec = methods.get(method) if method in methods.available() else methods.get("rat-bptt")
    p.add_argument("--method", default="rat-bptt", metavar="METHOD",
                   help=f"one of: {', '.join(methods.available())} (default rat-bptt{method_note})")
    p.add_argument("--ipc", type=positive_int, default=1, metavar="N", help="synthetic images per class (default 1)")
    p.add_argument("--steps", type=nonnegative_int, default=None, metavar="N",
                   help=f"outer (meta) steps in total{steps_note} (default: the preset's)")
    return spec


def add_settings_arguments(p: argparse.ArgumentParser, spec) -> None:
    """One option per setting of the method `spec` (default None: the preset's value)."""
    settings = p.add_argument_group(f"settings of --method {spec.name} (default: the preset's value)")
    for field in dataclasses.fields(spec.settings):
        flag = "--" + field.name.replace("_", "-")
        kind = type(field.default)
        if kind is bool:
            settings.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                  help=field.metadata.get("help"))
        else:
            parse = {int: nonnegative_int, float: positive_or_zero_float}.get(kind, str)
            if field.metadata.get("minimum", 0) < 0:  # a negative value means something (e.g. -1: scan)
                least = field.metadata["minimum"]
                parse = number(kind, lambda v, least=least: least <= v < float("inf"), f"a number >= {least}")
            metavar = {int: "N", float: "X"}.get(kind, "NAME")
            settings.add_argument(flag, dest=field.name, type=parse, default=None, metavar=metavar,
                                  help=field.metadata.get("help"))


def run(args: argparse.Namespace) -> int:
    """``jaxdd distill``: distil, then print the set's accuracy beside random real images."""
    if args.distributed:
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    elif any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
        raise JaxddError("--coordinator, --num-processes and --process-id need --distributed")
    names = args.settings_type.field_names()
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    out = args.out or os.path.join("runs", re.sub(r"[^A-Za-z0-9_.]+", "_", presets.dataset_key(args.dataset))
                                   + f"-{args.method}-" + (f"ratio{args.ratio:g}" if getattr(args, "ratio", None)
                                                           else f"ipc{args.ipc}"))
    mesh = parallel.make_mesh(args.devices)
    result = distill(args.dataset, args.method, args.ipc, args.steps, out=out, seed=args.seed, resume=args.resume,
                     overwrite=args.overwrite, progress="quiet" if args.no_progress else True,
                     final_eval=not args.no_eval, published=args.published, mesh=mesh, cache_dir=args.cache_dir,
                     track=args.log or (), track_images_every=args.log_images_every, **overrides)
    if jax.process_index() != 0:  # several processes: process 0 reports
        return 0
    last = result.metrics[-1] if result.metrics else {}
    print(f"{args.method} IPC {result.settings['ipc']} on {args.dataset}: {len(result.metrics)} steps recorded, last outer loss "
          f"{last.get('loss', float('nan')):.4f}, {int(last.get('skipped_total', 0))} skipped updates; wrote {out}/")
    summary = {"out": out, "method": args.method, "ipc": result.settings["ipc"], "dataset": args.dataset,
               "steps": result.settings["steps"], "devices": parallel.num_devices(mesh)}
    if "best_step" in result.settings:  # --stop plateau: the steps run and the evaluation whose set is the result
        summary.update({k: result.settings[k] for k in ("steps_done", "best_step", "best_val_accuracy")})
        print(f"--stop plateau: {result.settings['steps_done']} steps run; the result is the set of step "
              f"{result.settings['best_step']} (validation accuracy {100 * result.settings['best_val_accuracy']:.2f} %)")
    if result.evaluation:
        d, b = result.evaluation, result.baseline
        g = baseline.gain(d, b)
        print(f"test accuracy: distilled {baseline.describe(d)}; random real {baseline.describe(b)}; "
              f"{d['steps']} training steps, same protocol")
        print(f"gain {100 * g['gain']:+.2f} points, {100 * baseline.LEVEL:.0f} % interval [{100 * g['low']:+.2f}, "
              f"{100 * g['high']:+.2f}]; random real by draw "
              + " ".join(f"{100 * m:.2f}" for m in b["draw_means"])
              + f" % (spread over draws ± {100 * b['draws_std']:.2f}, over networks ± {100 * b['networks_std']:.2f})")
        summary.update(accuracy_mean=d["accuracy_mean"], accuracy_std=d["accuracy_std"], num_models=d["num_models"],
                       random_real_mean=b["accuracy_mean"], random_real_std=b["accuracy_std"],
                       random_real_draws_std=b["draws_std"], random_real_networks_std=b["networks_std"],
                       random_real_draw_means=b["draw_means"], random_real_baseline=b["baseline"],
                       gain=g["gain"], gain_low=g["low"], gain_high=g["high"])
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
