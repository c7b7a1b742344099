"""``jaxdd experts``: train expert trajectories and the forgetting scores of the training images."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jaxdd import data, experts, parallel, rundir
from jaxdd import scores as scores_lib
from jaxdd.cli.args import add_data_arguments, add_network_arguments, positive_float, positive_int
from jaxdd.experts.store import check_folder, storage_dtype

EXPERTS_EPILOG = """\
examples:
  jaxdd experts --dataset digits --experts 5 --epochs 15 --out runs/experts-digits
  jaxdd experts --dataset digits --experts 5 --epochs 15 --out runs/experts-digits --resume
  jaxdd experts --dataset /data/cifar10-jpeg.tar.xz --experts 100 --epochs 50 --width 128 --dtype float16

Every expert: plain SGD (lr 0.01, no momentum), batch 256, one DSA op per batch, a new shuffle per
epoch; parameters saved at init and after every epoch. Forgetting scores of the training images
are written to forgetting.npz once every expert is done. Ctrl-C keeps the finished epochs: run the
same command with --resume to continue.
"""


def add_parser(subparsers):
    """The ``jaxdd experts`` subcommand."""
    p = subparsers.add_parser("experts", help="train expert trajectories (for trajectory matching) and forgetting "
                                              "scores", description="Train expert trajectories (for trajectory matching) and forgetting scores.", epilog=EXPERTS_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    g = p.add_argument_group("experts")
    g.add_argument("--experts", type=positive_int, default=10, metavar="N", help="number of experts (default 10)")
    g.add_argument("--epochs", type=positive_int, default=50, metavar="E", help="epochs per expert (default 50)")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: a cache folder keyed by data set and settings, under --cache-dir, "
                        "$JAXDD_CACHE_DIR or ~/.cache/jaxdd)")
    g.add_argument("--dtype", default="float32", choices=experts.DTYPES, help="storage of the snapshots (default float32)")
    add_network_arguments(g, default_model="convnet")
    g.add_argument("--lr", type=positive_float, default=0.01, metavar="LR", help="SGD learning rate (default 0.01)")
    g.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="minibatch size (default 256)")
    g.add_argument("--augment", default="dsa", metavar="STRATEGY", help="augmentation per batch (default dsa)")
    g.add_argument("--seed", type=int, default=0, help="seed: expert e's randomness depends on (seed, e, epoch)")
    g.add_argument("--group-size", type=positive_int, default=None, metavar="G",
                   help="experts trained at once, vmapped (default 8, a multiple of --devices)")
    g.add_argument("--devices", type=int, default=None, metavar="N", help="split each group over N devices")
    g.add_argument("--resume", action="store_true", help="continue the experts already in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """``jaxdd experts``: train (or resume) the experts, print where they are and how they trained."""
    if args.out:
        check_folder(args.out)
        rundir.check_writable(args.out)
    dataset = data.load(args.dataset, normalize=args.normalize or "standardize", cache_dir=args.cache_dir)
    settings = dict(num_experts=args.experts, epochs=args.epochs, model=args.model, width=args.width,
                    depth=args.depth, norm=args.norm, lr=args.lr, batch_size=args.batch_size, augment=args.augment,
                    seed=args.seed, dtype=args.dtype)
    out = args.out or experts.default_expert_dir(dataset, experts.resolve_settings(dataset, **settings), args.cache_dir)
    mesh = parallel.make_mesh(args.devices) if args.devices is not None else None
    start = time.perf_counter()
    # the cache folder is keyed by the settings: continuing it is always safe
    store = experts.train(dataset, out_dir=out, group_size=args.group_size, resume=args.resume or args.out is None,
                  progress=not args.no_progress, mesh=mesh, **settings)
    metrics = store.metrics()
    scores, _ = store.forgetting()
    summary = dict(out=str(out), num_experts=store.num_experts, epochs=store.num_epochs, num_params=store.num_params,
                   dtype=store.dtype, bytes_per_expert=(store.num_epochs + 1) * store.num_params
                   * storage_dtype(store.dtype).itemsize, final_loss=float(metrics["loss"][:, -1].mean()),
                   final_train_accuracy=float(metrics["accuracy"][:, -1].mean()),
                   never_learned=int(np.sum(scores >= store.num_experts * store.num_epochs)),
                   seconds=round(time.perf_counter() - start, 2))
    print(f"{store.num_experts} experts × {store.num_epochs} epochs ({store.num_params} parameters, {store.dtype}) "
          f"in {out}: last-epoch training loss {summary['final_loss']:.4f}, accuracy "
          f"{100 * summary['final_train_accuracy']:.2f} %; forgetting scores in {out}/{scores_lib.FORGETTING_FILE}")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
