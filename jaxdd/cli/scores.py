"""``jaxdd scores``: difficulty scores of the training images (forgetting, EL2N, C-score)."""

from __future__ import annotations

import argparse
import json

from jaxdd import data, rundir
from jaxdd import scores as scores_lib
from jaxdd.cli.args import add_data_arguments, positive_float, positive_int
from jaxdd.errors import require

SCORES_EPILOG = """\
examples:
  jaxdd scores --dataset digits --kind forgetting --from runs/experts-digits --out runs/forgetting.npz
  jaxdd scores --dataset digits --kind el2n --out runs/el2n.npz --batch-size 32 --lr 0.05 --epochs 10
  jaxdd scores --dataset /data/cifar10-jpeg.tar.xz --kind cscore --from cifar10-cscores-orig-order.npz --out c.npz

The output npz holds 'scores' (higher = harder), 'labels' (the training labels, checked against the
data set) and 'kind'. C-score files (low = hard) are converted to 1 - C.
"""


def add_parser(subparsers):
    """The ``jaxdd scores`` subcommand."""
    p = subparsers.add_parser("scores", help="difficulty scores of the training images (forgetting, EL2N, C-score)",
                              description="Per-example difficulty scores of a training split (higher = harder).", epilog=SCORES_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    g = p.add_argument_group("scores")
    g.add_argument("--kind", required=True, choices=scores_lib.KINDS, help="which score")
    g.add_argument("--from", dest="source", default=None, metavar="PATH",
                   help="forgetting: the experts folder (or its forgetting.npz); cscore: the C-score npz")
    g.add_argument("--out", required=True, metavar="FILE", help="where to write the scores (.npz)")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.add_argument("--models", type=positive_int, default=4, metavar="K", help="el2n: networks averaged (default 4)")
    g.add_argument("--epochs", type=positive_int, default=20, metavar="E", help="el2n: training epochs (default 20)")
    g.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="el2n: minibatch (default 256)")
    g.add_argument("--lr", type=positive_float, default=0.01, metavar="LR", help="el2n: SGD lr, momentum 0.9")
    g.add_argument("--width", type=positive_int, default=None, metavar="N", help="el2n: network width")
    g.add_argument("--seed", type=int, default=0, help="el2n: seed of the networks")
    g.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """``jaxdd scores``: compute or convert difficulty scores and write them to --out."""
    require(args.kind == "el2n" or args.source, f"--kind {args.kind} needs --from PATH")
    require(args.kind != "el2n" or not args.source, "--kind el2n computes the scores: drop --from")
    require(args.out.endswith(".npz"), f"--out {args.out}: give a file name ending in .npz")
    rundir.check_output_file(args.out, args.overwrite)
    dataset = data.load(args.dataset, normalize=args.normalize or "standardize", cache_dir=args.cache_dir)
    if args.kind == "el2n":
        scores = scores_lib.el2n_scores(dataset, num_models=args.models, epochs=args.epochs, width=args.width,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    else:
        scores = scores_lib.load_scores(args.source, dataset, kind=args.kind)
    scores_lib.save_scores(args.out, scores, dataset.y_train, args.kind)
    summary = dict(out=args.out, kind=args.kind, num_scores=int(scores.size), min=float(scores.min()),
                   max=float(scores.max()), mean=float(scores.mean()))
    print(f"{args.kind} scores of {scores.size} training images of {args.dataset} (higher = harder; min "
          f"{summary['min']:.4g}, mean {summary['mean']:.4g}, max {summary['max']:.4g}) written to {args.out}")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
