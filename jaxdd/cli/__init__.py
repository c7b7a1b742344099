"""The ``jaxdd`` command line (``jaxdd ...`` or ``python -m jaxdd ...``).

One module per subcommand (distill, evaluate, experts, scores), each with ``add_parser(subparsers)``
and ``run(args) -> int``; argument helpers in jaxdd/cli/args.py. No library module imports this package.
User mistakes (JaxddError, a usage error, a missing or unwritable file) print ``jaxdd: error: <message>``
on one line of stderr and exit with status 2; warnings are one ``jaxdd: warning: ...`` line each.
SIGINT (Ctrl-C) and SIGTERM print one line saying what was kept and exit with 130 and 143 (128 +
the signal's number; a distillation checkpoints first, docs/runs.md). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import warnings
from typing import Sequence

from jaxdd import compile_cache, xla_options
from jaxdd.checkpoint import FULL
from jaxdd.cli import distill, evaluate, experts, export, plan, scores
from jaxdd.cli.args import EXIT_USAGE, Parser, fold_hf_columns
from jaxdd.errors import Interrupted, JaxddError, JaxddWarning, signal_name

EXIT_INTERRUPTED = 128  # + the signal's number: 130 for SIGINT, 143 for SIGTERM


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``jaxdd`` parser; ``argv`` picks the method whose settings ``distill`` lists."""
    parser = Parser(
        prog="jaxdd",
        description="Dataset distillation in pure-functional JAX.",
        epilog="run 'jaxdd COMMAND --help' for the options of one command",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    distill.add_parser(subparsers, distill.method_from(argv))
    evaluate.add_parser(subparsers)
    experts.add_parser(subparsers)
    scores.add_parser(subparsers)
    export.add_parser(subparsers)
    plan.add_parser(subparsers, distill.method_from(argv))
    return parser


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
            # before JAX's first computation: the size of XLA's CPU thread pool (jaxdd/xla_options.py). The
            # allocator setting stays off here: with mmap off, glibc cannot serve large blocks in the
            # threads' arenas of a long process with many (simulated) devices.
            xla_options.configure_cpu(threads=getattr(args, "threads", None), malloc=False)
            compile_cache.enable(False if getattr(args, "no_compile_cache", False) else None)
            fold_hf_columns(args)
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
        full = "; the disk or quota is full: free space (a run continues with --resume)" if err.errno in FULL else ""
        print(f"jaxdd: error: {err.strerror or ' '.join(str(err).split()) or type(err).__name__}{where}{full}",
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
