"""Argument helpers shared by the subcommands: number types, the data options, one-line usage errors."""

from __future__ import annotations

import argparse

from jaxdd import models
from jaxdd.data import hf_source
from jaxdd.errors import require

EXIT_USAGE = 2


def number(kind, accept, expected: str):
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


positive_int = number(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a positive number")
positive_or_zero_float = number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


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
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="CPU only: XLA worker threads (default: one per core; 1 runs faster on a busy or 2-core "
                            "machine, see benchmarks/RESULTS.md 'Busy machine')")
    group.add_argument("--hf-image-column", default=None, metavar="COLUMN",
                       help="hf:NAME sources: the image column (default: the first Image feature, else image / img)")
    group.add_argument("--hf-label-column", default=None, metavar="COLUMN",
                       help="hf:NAME sources: the label column (default: the first ClassLabel, else label / labels / "
                            "fine_label)")
    group.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="where decoded archives / downloads are cached (default: the loader's choice)")


def fold_hf_columns(args: argparse.Namespace) -> None:
    """--hf-image-column / --hf-label-column into the hf: source (hf:NAME?image=..&label=..), so the run records
    the whole source and `jaxdd evaluate` reloads the same columns."""
    image, label = getattr(args, "hf_image_column", None), getattr(args, "hf_label_column", None)
    if image is None and label is None:
        return
    require(str(getattr(args, "dataset", "") or "").startswith("hf:"),
            "--hf-image-column and --hf-label-column apply to --dataset hf:NAME")
    args.dataset = hf_source.source(args.dataset[len("hf:"):], image, label)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (`jaxdd: error: ...`), like every other error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"jaxdd: error: {' '.join(message.split())} (see '{self.prog} --help')\n")




def add_network_arguments(group, *, default_model: str | None = None) -> None:
    """--model, --width, --depth, --norm (None: the network's defaults for the image size)."""
    group.add_argument("--model", default=default_model, metavar="NAME",
                       help="network: convnet (default), convnet_bn, convnet_nonorm, resnet18, mlp")
    group.add_argument("--width", type=positive_int, default=None, metavar="N",
                       help=f"network width (default: {models.WIDTH_RULE})")
    group.add_argument("--depth", type=positive_int, default=None, metavar="N",
                       help=f"network depth (default: {models.DEPTH_RULE})")
    group.add_argument("--norm", default=None, metavar="KIND", help="ConvNet norm: instance (default), batch, none")
