"""The exception the CLI prints as a single line (no traceback), and SIGTERM's stand-in for Ctrl-C."""


class PosinterpError(ValueError):
    """Bad input or an unusable model, found before any work starts.

    The message is one line: what was wrong, the value, the limit, and the flag to change.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so every temporary output is removed on the way out; the CLI exits 143."""
