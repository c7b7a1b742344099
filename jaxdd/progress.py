"""Progress of a distillation on stderr: a tqdm bar on a terminal, plain lines anywhere else.

Modes (the `progress` argument of `jaxdd.distill`): True — a bar when stderr is a terminal, else a
line every max(1, steps // 20) steps (a log file or a SLURM output file stays readable); "lines" —
always lines; "quiet" — only the start and end lines (`jaxdd distill --no-progress`); False — nothing.
With a bar or lines, the final evaluation says what it is scoring and the accuracies as they come.
"""

from __future__ import annotations

import sys
import time

from jaxdd.errors import require

MODES = (True, False, "lines", "quiet")
LINES_PER_RUN = 20


class Progress:
    """start(...), step(row), detail(text), note(text), close(); every line starts with 'distill: '."""

    def __init__(self, mode, *, stream=None):
        require(any(mode is m or (isinstance(m, str) and mode == m) for m in MODES),
                f"progress must be True, False, 'lines' or 'quiet', got {mode!r}")
        self.stream = stream or sys.stderr
        self.mode = mode
        if mode is True:
            self.mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.bar, self.total, self.every, self.t0 = None, 0, 1, time.perf_counter()

    @property
    def bar_on(self) -> bool:
        """Whether bars (the distillation's, the evaluation's) are drawn."""
        return self.mode == "bar"

    def start(self, start: int, total: int, what: str) -> None:
        self.total, self.every, self.t0 = total, max(1, total // LINES_PER_RUN), time.perf_counter()
        resumed = f" (resuming after step {start})" if start else ""
        self.note(f"{what}: steps {start + 1}-{total}{resumed}" if start < total else f"{what}: all {total} steps "
                  f"already done")
        if self.mode == "bar" and start < total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="distill", unit="step", dynamic_ncols=True,
                            file=self.stream)

    def step(self, row: dict) -> None:
        n = row["step"]
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            self.bar.update(1)
        elif self.mode == "lines" and (n % self.every == 0 or n == self.total):
            extra = f", val accuracy {100 * row['val_accuracy']:.2f} %" if "val_accuracy" in row else ""
            self.note(f"step {n}/{self.total}, loss {row['loss']:.4f}{extra} ({self.elapsed():.1f} s)")

    def detail(self, text: str) -> None:
        """One line of progress (the final evaluation's parts): with the bar or the lines only."""
        if self.mode in ("bar", "lines"):
            self.note(text)

    @property
    def detail_log(self):
        """`detail` where progress lines are shown, else None (nothing to show: long phases draw no bar)."""
        return self.detail if self.mode in ("bar", "lines") else None

    def note(self, text: str) -> None:
        """One line (start, end), in every mode but False."""
        if self.mode is False:
            return
        if self.bar is not None:
            self.bar.write(f"distill: {text}", file=self.stream)
        else:
            print(f"distill: {text}", file=self.stream, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Bar:
    """A long phase's progress (experts, evaluation): a tqdm bar when stderr is a terminal, else a plain line
    ``desc: n/total unit (postfix, t s)`` every total // 20 and at the end, so a piped log stays readable.
    The same calls as tqdm's: update(n), set_postfix(**values), close()."""

    def __init__(self, total: int, desc: str, unit: str, *, initial: int = 0, leave: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.every, self.postfix, self.t0, self.tqdm = max(1, self.total // LINES_PER_RUN), "", time.perf_counter(), None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm  # optional at import time: only a terminal draws a bar

            self.tqdm = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.stream,
                             dynamic_ncols=True)

    def set_postfix(self, **values) -> None:
        if self.tqdm is not None:
            self.tqdm.set_postfix(refresh=False, **values)
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        if self.tqdm is not None:
            self.tqdm.update(n)
            return
        before, self.n = self.n, self.n + int(n)
        if self.n // self.every > before // self.every or self.n >= self.total:
            extra = f"{self.postfix}, " if self.postfix else ""
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({extra}{time.perf_counter() - self.t0:.1f} s)",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None
