"""User-facing errors, warnings and interruptions: one line that says what to change."""

import numbers
import signal
import warnings


class JaxddError(ValueError):
    """Bad input from the user. The CLI prints its message on one line and exits with status 2."""


class JaxddWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints `jaxdd: warning: ...`)."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM, with a message saying what was kept and how to go
    on. The CLI prints it on one line and exits with 128 + signum (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    """'SIGINT (Ctrl-C)' or 'SIGTERM' (the name of any other signal)."""
    name = signal.Signals(signum).name
    return name + " (Ctrl-C)" if signum == signal.SIGINT else name


def require(condition: bool, message: str) -> None:
    """Raise JaxddError(message) unless `condition` holds."""
    if not condition:
        raise JaxddError(message)


def require_count(name: str, value, flag: str) -> None:
    """Raise JaxddError unless `value` is a positive integer (not a bool); the message names `flag`."""
    require(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1,
            f"{name} must be a positive integer, got {value!r}: use {flag} N")


def warn(message: str) -> None:
    """Issue a one-line JaxddWarning."""
    warnings.warn(one_line(message), JaxddWarning, stacklevel=2)


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())
