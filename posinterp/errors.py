"""The one exception type that the CLI prints as a single line (no traceback)."""


class PosinterpError(ValueError):
    """Bad input or an unusable model, found before any work starts.

    The message is one line: what was wrong, the value, the limit, and the flag to change.
    """
