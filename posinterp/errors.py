"""The exception the CLI prints as a single line (no traceback), and SIGTERM's stand-in for Ctrl-C."""


class PosinterpError(ValueError):
    """Bad input or an unusable model, found before any work starts.

    The message is one line: what was wrong, the value, the limit, and the flag to change.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so every temporary output is removed on the way out; the CLI exits 143."""


def cause(err: BaseException, empty: str = "-") -> str:
    """An exception as one line for a PosinterpError's parenthesis: its type and the first line of its message."""
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text.strip() else empty}"
