"""User-facing errors: one line that says what to change."""


class JaxddError(ValueError):
    """Bad input from the user. The CLI prints its message on one line and exits with status 2."""


def require(condition: bool, message: str) -> None:
    """Raise JaxddError(message) unless `condition` holds."""
    if not condition:
        raise JaxddError(message)


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())
