"""The ``jaxdd`` command line (``jaxdd ...`` or ``python -m jaxdd ...``).

One argparse subparser per subcommand, each handled by one ``cmd_<name>(args) -> int`` function.
User mistakes (JaxddError, a usage error, a missing or unwritable file) print ``jaxdd: error: <message>``
on one line of stderr and exit with status 2; warnings are one ``jaxdd: warning: ...`` line each.
SIGINT (Ctrl-C) and SIGTERM print one line saying what was kept and exit with 130 and 143 (128 +
the signal's number; a distillation checkpoints first, docs/runs.md). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import warnings
from typing import Sequence

from jaxdd.errors import Interrupted, JaxddError, JaxddWarning, signal_name

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128  # + the signal's number: 130 for SIGINT, 143 for SIGTERM

EVALUATE_EPILOG = """\
examples:
  jaxdd evaluate runs/digits-ipc10/distilled.npz --dataset digits
  jaxdd evaluate --random-real --ipc 10 --dataset digits --protocol quick --json
  jaxdd evaluate --full-data --dataset digits --protocol quick
  jaxdd evaluate --random-real --ipc 1 --steps 20 --models 2 --json
  jaxdd evaluate --random-real --ipc 10 --dataset /data/cifar10-jpeg.tar.xz --width 32 --steps 500

protocols (docs/evaluation.md; options given on the command line override their fields):
  ratbptt  Adam 1e-3, flip/rotate augmentation, batch = whole set if <= 256 else 256, 1000 steps, 8 models
  mtt      SGD momentum 0.9, wd 5e-4, lr = the learned lr stored in the npz (else 0.01, or --lr),
           lr x 0.1 at half the steps, batch 256, DSA augmentation, 1000 epochs, 5 models
  quick    CPU preset: Adam 1e-3, no augmentation, batch 256, 300 steps, 4 models

Accuracy is measured on the test split (--split val: a 10% validation split carved from train,
for tuning). The printed accuracies are percent; --json reports fractions in [0, 1].
"""


def _number(kind, accept, expected: str):
    """An argparse type: `kind(text)` that must satisfy `accept`, else "expected <expected>, got ..."."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
_positive_or_zero_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def add_data_arguments(parser: argparse.ArgumentParser, *, normalize: bool = True, recorded: bool = False) -> None:
    """--dataset, --cache-dir and (unless the subcommand has its own) --normalize. recorded: --dataset defaults
    to the data set a distilled set records (resolved by the subcommand), else digits."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=None if recorded else "digits", metavar="SOURCE",
                       help="data set: 'digits' (bundled with scikit-learn, the default), 'tfds:NAME', or a path "
                            "to a folder or archive (.tar, .tar.gz, .tar.xz, .zip) holding train/<class>/<image> "
                            "and test/<class>/<image>" + ("; default: the one the distilled set (or --like) was "
                                                           "made on, else digits" if recorded else ""))
    if normalize:
        group.add_argument("--normalize", default=None, metavar="KIND",
                           help="pixel preprocessing: standardize, none, zca (KIP/RaT-BPTT) or zca-mtt (default: the "
                                "one the distilled set records, else standardize)")
    group.add_argument("--no-compile-cache", action="store_true",
                       help="do not keep compiled programs between runs (default: kept under the user's cache "
                            "directory, so a repeated command starts in seconds; JAXDD_NO_COMPILE_CACHE=1 too)")
    group.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="CPU only: XLA worker threads (default: one per core; 1 runs faster on a busy or 2-core "
                            "machine, see benchmarks/RESULTS.md 'Busy machine')")
    group.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="where decoded archives / downloads are cached (default: the loader's choice)")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (`jaxdd: error: ...`), like every other error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"jaxdd: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxdd",
        description="Dataset distillation in pure-functional JAX.",
        epilog="run 'jaxdd COMMAND --help' for the options of one command",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_distill_parser(subparsers, _method_from(argv))
    add_evaluate_parser(subparsers)
    from jaxdd import experts, scores
    experts.add_parser(subparsers)
    scores.add_parser(subparsers)
    return parser


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


def _method_from(argv) -> str:
    """The --method named on the command line (before the full parse), default rat-bptt."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="rat-bptt")
    known, _ = pre.parse_known_args(list(argv or []))
    return known.method


def add_distill_parser(subparsers, method: str = "rat-bptt") -> argparse.ArgumentParser:
    import dataclasses

    from jaxdd import methods

    listing = "\n".join(f"  {name:10s} {methods.get(name).summary}" for name in methods.available())
    p = subparsers.add_parser(
        "distill",
        help="learn a small synthetic training set (" + ", ".join(methods.available()) + ")",
        description="Distil a data set into --ipc synthetic images per class; then report the distilled set's "
                    "test accuracy beside random real images at the same IPC, under the same evaluation.",
        epilog=DISTILL_EPILOG + "\nmethods:\n" + listing + "\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    spec = methods.get(method) if method in methods.available() else methods.get("rat-bptt")
    p.add_argument("--method", default="rat-bptt", metavar="METHOD",
                   help=f"one of: {', '.join(methods.available())} (default rat-bptt; see below)")
    p.add_argument("--ipc", type=_positive_int, default=1, metavar="N", help="synthetic images per class (default 1)")
    p.add_argument("--steps", type=_nonnegative_int, default=None, metavar="N",
                   help="outer (meta) steps in total, counting those of a resumed run (default: the preset's)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default runs/DATASET-METHOD-ipcN)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of everything random in the run (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--published", action="store_true",
                   help="start from the paper's settings for this data set and IPC instead of the CPU preset"
                        + (f"; {spec.published_help}" if spec.published_help else ""))
    p.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                   help="devices to shard the population, real batch and evaluation over (default: all)")
    p.add_argument("--distributed", action="store_true",
                   help="several processes / hosts: call jax.distributed.initialize() first (SLURM and TPU pod "
                        "slices need nothing more; elsewhere add the three options below; see README)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="with --distributed: address of process 0's coordinator service")
    p.add_argument("--num-processes", type=_positive_int, default=None, metavar="N",
                   help="with --distributed: number of processes in the run")
    p.add_argument("--process-id", type=_nonnegative_int, default=None, metavar="I",
                   help="with --distributed: this process's index in [0, N)")
    add_data_arguments(p, normalize=False)  # --normalize is one of the settings below
    settings = p.add_argument_group(f"settings of --method {spec.name} (default: the preset's value)")
    for field in dataclasses.fields(spec.settings):
        flag = "--" + field.name.replace("_", "-")
        kind = type(field.default)
        if kind is bool:
            settings.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                  help=field.metadata.get("help"))
        else:
            parse = {int: _nonnegative_int, float: _positive_or_zero_float}.get(kind, str)
            if field.metadata.get("minimum", 0) < 0:  # a negative value means something (e.g. -1: scan)
                least = field.metadata["minimum"]
                parse = _number(kind, lambda v, least=least: least <= v < float("inf"), f"a number >= {least}")
            metavar = {int: "N", float: "X"}.get(kind, "NAME")
            settings.add_argument(flag, dest=field.name, type=parse, default=None, metavar=metavar,
                                  help=field.metadata.get("help"))
    out = p.add_argument_group("output")
    out.add_argument("--no-eval", action="store_true", help="skip the final evaluation of the set and the baseline")
    out.add_argument("--json", action="store_true", help="print one JSON summary object as the last line of stdout")
    out.add_argument("--no-progress", action="store_true",
                     help="no progress bar or progress lines on stderr, only the start and end lines")
    p.set_defaults(func=cmd_distill, settings_type=spec.settings)
    return p


def cmd_distill(args: argparse.Namespace) -> int:
    import re

    from jaxdd import parallel, presets
    from jaxdd.distillation import distill

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
                     **overrides)
    import jax

    if jax.process_index() != 0:  # several processes: process 0 reports
        return 0
    last = result.metrics[-1] if result.metrics else {}
    print(f"{args.method} IPC {result.settings['ipc']} on {args.dataset}: {len(result.metrics)} steps recorded, last outer loss "
          f"{last.get('loss', float('nan')):.4f}, {int(last.get('skipped_total', 0))} skipped updates; wrote {out}/")
    summary = {"out": out, "method": args.method, "ipc": result.settings["ipc"], "dataset": args.dataset,
               "steps": result.settings["steps"], "devices": parallel.num_devices(mesh)}
    if result.evaluation:
        d, b = result.evaluation, result.baseline
        print(f"test accuracy: distilled {100 * d['accuracy_mean']:.2f} ± {100 * d['accuracy_std']:.2f} %, "
              f"random real {100 * b['accuracy_mean']:.2f} ± {100 * b['accuracy_std']:.2f} % "
              f"({d['num_models']} networks each, {d['steps']} training steps, same protocol)")
        summary.update(accuracy_mean=d["accuracy_mean"], accuracy_std=d["accuracy_std"], num_models=d["num_models"],
                       random_real_mean=b["accuracy_mean"], random_real_std=b["accuracy_std"])
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="train fresh networks on a distilled set (or a baseline) and report test accuracy",
        description="Train K fresh networks (vmapped over seeds) on a distilled set, on random real images "
                    "(--random-real --ipc N) or on the full training data (--full-data), and report their "
                    "test accuracy as mean ± std over the K networks.",
        epilog=EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to evaluate (one of)")
    what.add_argument("path", nargs="?", metavar="DISTILLED.npz",
                      help="a distilled set written by 'jaxdd distill': arrays 'images' [N,H,W,C], 'labels' "
                           "(int [N] or float [N,C]), optionally 'lr' and 'settings' (JSON)")
    what.add_argument("--random-real", action="store_true",
                      help="baseline: --ipc random training images per class (seeded by --seed)")
    what.add_argument("--full-data", action="store_true", help="baseline: the whole training split")
    what.add_argument("--ipc", type=_positive_int, metavar="N", help="images per class for --random-real")
    what.add_argument("--prefix-ipc", type=_positive_int, default=None, metavar="K",
                      help="evaluate only the first K images per class of the distilled set (nested sets, Boost-DD)")
    add_data_arguments(p, recorded=True)
    proto = p.add_argument_group("protocol (default: the one the distilled set records; for baselines, the one "
                                 "'jaxdd distill' uses on this data set, or --like's)")
    proto.add_argument("--like", default=None, metavar="DISTILLED.npz",
                       help="score a baseline under the protocol recorded in this distilled set")
    proto.add_argument("--protocol", default=None, metavar="NAME",
                       help="a named protocol instead: ratbptt, mtt or quick; see below")
    proto.add_argument("--model", default=None, metavar="NAME",
                       help="network: convnet (default), convnet_bn, convnet_nonorm, resnet18, mlp")
    proto.add_argument("--width", type=_positive_int, default=None, metavar="N",
                       help="network width (ConvNet default: 128 for images >= 16 px, 32 for smaller ones)")
    proto.add_argument("--depth", type=_positive_int, default=None, metavar="N",
                       help="network depth (ConvNet default: pool while features keep >= 4x4 px: 3 for 32 px, "
                            "2 for 16-31 px, 1 for 8-15 px, 4 for 64 px)")
    proto.add_argument("--norm", default=None, metavar="KIND", help="ConvNet norm: instance (default), batch, none")
    proto.add_argument("--steps", type=_nonnegative_int, default=None, metavar="N",
                       help="training steps per network (overrides the protocol's budget)")
    proto.add_argument("--models", type=_positive_int, default=None, metavar="K",
                       help="number of networks trained (in parallel, vmapped) from different seeds")
    proto.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                       help="minibatch size (sets with at most this many images train full-batch)")
    proto.add_argument("--lr", type=_positive_float, default=None, metavar="LR",
                       help="learning rate (overrides the protocol's and the npz's learned lr)")
    proto.add_argument("--augment", default=None, metavar="STRATEGY",
                       help="augmentation: none, flip_rotate, dsa, standard, or op names joined by '_'")
    proto.add_argument("--split", default="test", choices=("test", "val"),
                       help="where accuracy is measured: test (default) or val (10%% of train, for tuning)")
    proto.add_argument("--seed", type=_nonnegative_int, default=None,
                       help="seed for the networks, their batches and --random-real (default: the run's, else 0)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object (accuracies as fractions) as the last line of stdout")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    chosen = [name for name, on in (("a distilled set path", args.path is not None),
                                     ("--random-real", args.random_real), ("--full-data", args.full_data)) if on]
    if args.prefix_ipc is not None and args.path is None:
        raise JaxddError("--prefix-ipc applies to a distilled set: give its path")
    if len(chosen) != 1:
        raise JaxddError("give exactly one of: a distilled.npz path, --random-real --ipc N, or --full-data"
                         + (f" (got {' and '.join(chosen)})" if chosen else ""))
    if args.random_real and args.ipc is None:
        raise JaxddError("--random-real needs --ipc N (images per class)")
    if args.ipc is not None and not args.random_real:
        raise JaxddError("--ipc only applies to --random-real (a distilled set has its own IPC)")

    from jaxdd import data, evaluation as ev, rundir

    distilled = rundir.load_distilled(args.path) if args.path is not None else None
    like = rundir.load_distilled(args.like) if args.like is not None else distilled
    record = (like or {}).get("settings") or {}
    if args.dataset is None:
        args.dataset = record.get("dataset") or "digits"
    kwargs, normalize, val_fraction, seed = _recorded_protocol(args, record)
    dataset = data.load(args.dataset, normalize=normalize, val_fraction=0.1 if args.split == "val" else val_fraction,
                        seed=0, cache_dir=args.cache_dir)
    if distilled is not None:
        images, labels, what = distilled["images"], distilled["labels"], distilled["path"]
        if args.prefix_ipc:
            images, labels = ev.prefix_ipc(images, labels, args.prefix_ipc, dataset.num_classes)
            what += f" (first {args.prefix_ipc} per class)"
    elif args.random_real:
        images, labels = ev.random_real(dataset, args.ipc, seed=seed)
        what = f"random real, IPC {args.ipc}"
    else:
        images, labels = ev.full_data(dataset)
        what = "full training data"
    # a protocol with the learned lr ("mtt") takes it from the set, or for a baseline from --like's set,
    # so that `--random-real --like DIR/distilled.npz` scores random real images as `jaxdd distill` did
    learned = kwargs.pop("use_learned_lr", ev.get_protocol(kwargs.get("protocol", "ratbptt")).use_learned_lr)
    learned_lr = (distilled or like or {}).get("lr")
    if learned and args.lr is None and learned_lr is not None:
        kwargs["lr"] = learned_lr
    if kwargs.get("select_augment") is not None:  # combined augmentation: real rows (row_block -1) get their own
        import numpy as np

        recorded = distilled["row_block"] if distilled is not None and not args.prefix_ipc else None
        kwargs["rows"] = np.asarray(recorded) == -1 if recorded is not None else np.full(len(images), distilled is None)
    given = dict(model=args.model, width=args.width, depth=args.depth, norm=args.norm, steps=args.steps,
                 num_models=args.models, batch_size=args.batch_size, lr=args.lr, augment=args.augment)
    kwargs.update({k: v for k, v in given.items() if v is not None})
    result = ev.evaluate(images, labels, dataset, seed=seed, split=args.split, progress=not args.no_progress,
                         **kwargs)
    result = {**result, "evaluated": what, "dataset": args.dataset, "normalize": normalize}
    if record:
        result["settings"] = record

    accs = " ".join(f"{100 * a:.2f}" for a in result["accuracies"])
    print(f"{what} ({result['num_images']} images) on {args.dataset}, {result['protocol']} protocol, "
          f"{result['model']}" + (f" w{result['width']}" if result["width"] else "")
          + (f" depth {result['depth']}" if result.get("depth") else "")
          + f", {result['steps']} steps, lr {result['lr']:g}, augment {result['augment']}")
    print(f"{args.split} accuracy: {100 * result['accuracy_mean']:.2f} ± {100 * result['accuracy_std']:.2f} % "
          f"over {result['num_models']} networks [{accs}] in {result['seconds']:.1f} s")
    at = result.get("accuracy_at") or {}
    if len(at) > 1:
        print("by training steps: " + ", ".join(f"{step}: {100 * a['mean']:.2f} %" for step, a in at.items())
              + (f"; chosen on the validation split: {result['chosen_steps']} steps, "
                 f"{100 * result['accuracy_chosen']['mean']:.2f} %" if result.get("chosen_steps") else ""))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def _recorded_protocol(args, record: dict):
    """(evaluate kwargs, normalize, val_fraction, seed): from --protocol, else the record of a distilled set
    (checked against --dataset / --normalize), else the protocol of 'jaxdd distill' on this data set."""
    from jaxdd import presets

    if record:
        made_on = record.get("dataset")
        if made_on is not None and presets.dataset_key(made_on) != presets.dataset_key(args.dataset):
            raise JaxddError(f"the set was made on '{made_on}', not '{args.dataset}': evaluate with --dataset {made_on}")
        made_with = record.get("normalize") or record.get("settings", {}).get("normalize")
        if made_with and args.normalize not in (None, made_with):
            raise JaxddError(f"the set was made with --normalize {made_with}, not {args.normalize}: drop --normalize "
                             f"or pass --normalize {made_with}")
    if args.protocol is not None:
        kwargs = {"protocol": args.protocol}
    elif record.get("evaluation"):
        kwargs = dict(record["evaluation"])
    else:
        spec = presets.methods.get("rat-bptt")
        kwargs = dict(spec.evaluation(presets.preset("rat-bptt", args.dataset, args.ipc or 1)))
    normalize = args.normalize or record.get("normalize") or record.get("settings", {}).get("normalize") \
        or "standardize"
    val_fraction = record.get("settings", {}).get("val_fraction", 0.1)
    seed = args.seed if args.seed is not None else int(record.get("seed", 0))
    return kwargs, normalize, val_fraction, seed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxdd`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or an argparse usage error (2, message already printed)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    try:
        with _one_line_warnings(), _terminate_as_interrupt():
            from jaxdd import compile_cache, xla_options

            # before JAX's first computation: the size of XLA's CPU thread pool (jaxdd/xla_options.py). The
            # allocator setting the benchmarks also measure (no mmap for large blocks, ~2 % faster) is not
            # applied here: with mmap off, glibc cannot serve large blocks in threads' arenas, and the
            # test suite, which calls this in one long process with 8 simulated devices, aborted once.
            xla_options.configure_cpu(threads=getattr(args, "threads", None), malloc=False)
            compile_cache.enable(False if getattr(args, "no_compile_cache", False) else None)
            return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"jaxdd: {str(err) or f'stopped by {signal_name(signum)}'}", file=sys.stderr)
        return EXIT_INTERRUPTED + signum
    except JaxddError as err:
        print(f"jaxdd: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a missing, unreadable or unwritable file, a full disk
        where = f": {err.filename}" if err.filename else ""
        print(f"jaxdd: error: {err.strerror or ' '.join(str(err).split()) or type(err).__name__}{where}",
              file=sys.stderr)
        return EXIT_USAGE


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises `Interrupted` like Ctrl-C (a distillation's loop installs its own, gentler handler)."""

    def interrupt(signum, frame):
        raise Interrupted("", signum)

    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _one_line_warnings():
    """Every warning of jaxdd on one `jaxdd: warning: ...` line of stderr (others as Python prints them)."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if issubclass(category, JaxddWarning) or text.startswith("jaxdd:"):
            text = text[len("jaxdd:"):].strip() if text.startswith("jaxdd:") else text
            print(f"jaxdd: warning: {text}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
