"""``jaxdd export``: a distilled set as PNG folders, NCHW numpy or a PyTorch file (jaxdd/export.py)."""

from __future__ import annotations

import argparse

from jaxdd import data, export, rundir
from jaxdd.cli.args import add_data_arguments
from jaxdd.errors import require

EXPORT_EPILOG = """\
examples:
  jaxdd export runs/digits-ipc10/distilled.npz --format png --out exported/digits-png
  jaxdd export runs/digits-ipc10 --format torch --out exported/digits-pt

png: DIR/<class>/<n>.png (pixels: the preprocessing undone, clipped, 8 bits), labels.json for soft
labels, lr.json for a learned lr. npz / torch: DIR/distilled_nchw.npz or DIR/distilled.pt with the exact
NCHW model inputs, labels, lr, class names, the evaluation protocol and the preprocessing to apply to
real test images (mean/std, or the ZCA matrix in NCHW order). README "Use a distilled set elsewhere".
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``jaxdd export`` subcommand."""
    p = subparsers.add_parser("export", help="write a distilled set as PNG folders, NCHW numpy or a PyTorch file",
                              description="Write a distilled set for use outside jaxdd.", epilog=EXPORT_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="DISTILLED.npz", help="a distilled.npz written by 'jaxdd distill' (or its run folder)")
    p.add_argument("--format", required=True, choices=export.FORMATS, help="png, npz or torch")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    add_data_arguments(p, recorded=True)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the set and the data set's preprocessing as `jaxdd evaluate` does, then export."""
    distilled = rundir.load_distilled(args.path)
    record = distilled.get("settings") or {}
    made_with = record.get("normalize") or record.get("settings", {}).get("normalize")
    require(args.normalize in (None, made_with) or not made_with,
            f"the set was made with --normalize {made_with}, not {args.normalize}: drop --normalize")
    dataset = data.load(args.dataset or record.get("dataset") or "digits",
                        normalize=args.normalize or made_with or "standardize",
                        val_fraction=record.get("settings", {}).get("val_fraction", 0.1),
                        seed=int(record.get("seed", 0)), cache_dir=args.cache_dir)  # the run's split and statistics
    done = export.export(distilled, args.format, args.out, dataset.class_names, dataset.preprocessing)
    print(f"wrote {done['images']} images of {distilled['path']} to {done.get('file', args.out)} ({args.format}, "
          f"preprocessing {dataset.preprocessing.name})")
    return 0
