"""``jaxdd evaluate``: train fresh networks on a distilled set (or a baseline) and report their accuracy."""

from __future__ import annotations

import argparse
import json

import numpy as np

from jaxdd import baseline, data, evaluation, presets, rundir
from jaxdd.cli.args import add_data_arguments, add_network_arguments, nonnegative_int, positive_float, positive_int
from jaxdd.errors import JaxddError

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


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``jaxdd evaluate`` subcommand."""
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
                      help="baseline: --ipc random training images per class, --draws draws of them (seeded by "
                           "--seed), each scored by the same networks; as 'jaxdd distill' scores its baseline")
    what.add_argument("--full-data", action="store_true", help="baseline: the whole training split")
    what.add_argument("--ipc", type=positive_int, metavar="N", help="images per class for --random-real")
    what.add_argument("--draws", type=positive_int, default=None, metavar="R",
                      help=f"draws of random real images (default: the --like run's, else {baseline.DRAWS})")
    what.add_argument("--prefix-ipc", type=positive_int, default=None, metavar="K",
                      help="evaluate only the first K images per class of the distilled set (nested sets, Boost-DD)")
    add_data_arguments(p, recorded=True)
    proto = p.add_argument_group("protocol (default: the one the distilled set records; for baselines, the one "
                                 "'jaxdd distill' uses on this data set, or --like's)")
    proto.add_argument("--like", default=None, metavar="DISTILLED.npz",
                       help="score a baseline under the protocol recorded in this distilled set")
    proto.add_argument("--protocol", default=None, metavar="NAME",
                       help="a named protocol instead: ratbptt, mtt or quick; see below")
    add_network_arguments(proto)
    proto.add_argument("--steps", type=nonnegative_int, default=None, metavar="N",
                       help="training steps per network (overrides the protocol's budget)")
    proto.add_argument("--models", type=positive_int, default=None, metavar="K",
                       help="number of networks trained (in parallel, vmapped) from different seeds")
    proto.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                       help="minibatch size (sets with at most this many images train full-batch)")
    proto.add_argument("--lr", type=positive_float, default=None, metavar="LR",
                       help="learning rate (overrides the protocol's and the npz's learned lr)")
    proto.add_argument("--augment", default=None, metavar="STRATEGY",
                       help="augmentation: none, flip_rotate, dsa, standard, or op names joined by '_'")
    proto.add_argument("--split", default="test", choices=("test", "val"),
                       help="where accuracy is measured: test (default) or val (10%% of train, for tuning)")
    proto.add_argument("--seed", type=nonnegative_int, default=None,
                       help="seed for the networks, their batches, --random-real's draws and the validation split "
                            "(default: the run's, else 0)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object (accuracies as fractions) as the last line of stdout")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``jaxdd evaluate``: score a distilled set, random real images or the full data."""
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
    if args.draws is not None and not args.random_real:
        raise JaxddError("--draws only applies to --random-real")

    distilled = rundir.load_distilled(args.path) if args.path is not None else None
    like = rundir.load_distilled(args.like) if args.like is not None else distilled
    record = (like or {}).get("settings") or {}
    if args.dataset is None:
        args.dataset = record.get("dataset") or "digits"
    kwargs, normalize, val_fraction, seed = recorded_protocol(args, record)
    # the validation split is carved with the seed, as `jaxdd distill --seed S` carves it: the same training
    # images, so --random-real draws what the run's baseline drew
    dataset = data.load(args.dataset, normalize=normalize, val_fraction=0.1 if args.split == "val" else val_fraction,
                        seed=seed, cache_dir=args.cache_dir)
    if distilled is not None:
        images, labels, what = distilled["images"], distilled["labels"], distilled["path"]
        if args.prefix_ipc:
            images, labels = evaluation.prefix_ipc(images, labels, args.prefix_ipc, dataset.num_classes)
            what += f" (first {args.prefix_ipc} per class)"
    elif args.random_real:
        draws = args.draws or int(record.get("settings", {}).get("baseline_draws", baseline.DRAWS))
        images, labels = None, None
        what = f"random real, IPC {args.ipc}, {draws} draw{'s' * (draws > 1)}"
    else:
        images, labels = evaluation.full_data(dataset)
        what = "full training data"
    # a protocol with the learned lr ("mtt") takes it from the set, or for a baseline from --like's set,
    # so that `--random-real --like DIR/distilled.npz` scores random real images as `jaxdd distill` did;
    # a baseline's rows are all real images (SelMatch's combined augmentation)
    kwargs["learned_lr"] = (distilled or like or {}).get("lr")
    if distilled is None and not args.random_real:
        kwargs["rows"] = np.ones(len(images), bool)
    elif distilled is not None and not args.prefix_ipc:
        kwargs["rows"] = distilled.get("row_block")
    given = dict(model=args.model, width=args.width, depth=args.depth, norm=args.norm, steps=args.steps,
                 num_models=args.models, batch_size=args.batch_size, lr=args.lr, augment=args.augment)
    kwargs.update({k: v for k, v in given.items() if v is not None})
    if args.random_real:  # the baseline of `jaxdd distill` (its rows are real images)
        result = baseline.random_real(dataset, args.ipc, draws=draws, seed=seed, split=args.split,
                                      progress=not args.no_progress, **kwargs)
    else:
        result = evaluation.evaluate(images, labels, dataset, seed=seed, split=args.split,
                                     progress=not args.no_progress, **kwargs)
    result = {**result, "evaluated": what, "dataset": args.dataset, "normalize": normalize}
    if record:
        result["settings"] = record

    accs = " ".join(f"{100 * a:.2f}" for a in result["accuracies"])
    print(f"{what} ({result['num_images']} images) on {args.dataset}, {result['protocol']} protocol, "
          f"{result['model']}" + (f" w{result['width']}" if result["width"] else "")
          + (f" depth {result['depth']}" if result.get("depth") else "")
          + f", {result['steps']} steps, lr {result['lr']:g}, augment {result['augment']}")
    if args.random_real:
        print(f"{args.split} accuracy: {baseline.describe(result)} in {result['seconds']:.1f} s; by draw "
              + " ".join(f"{100 * m:.2f}" for m in result["draw_means"])
              + f" % (spread over draws ± {100 * result['draws_std']:.2f}, over networks ± "
                f"{100 * result['networks_std']:.2f})")
    else:
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


def recorded_protocol(args, record: dict):
    """(evaluate kwargs, normalize, val_fraction, seed): from --protocol, else the record of a distilled set
    (checked against --dataset / --normalize), else the protocol of 'jaxdd distill' on this data set."""
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
        kwargs = presets.default_protocol(args.dataset, args.ipc or 1)
    normalize = args.normalize or record.get("normalize") or record.get("settings", {}).get("normalize") \
        or "standardize"
    val_fraction = record.get("settings", {}).get("val_fraction", 0.1)
    seed = args.seed if args.seed is not None else int(record.get("seed", 0))
    return kwargs, normalize, val_fraction, seed
