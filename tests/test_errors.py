"""How an underlying exception is quoted in a one-line PosinterpError."""

from __future__ import annotations

from posinterp.errors import cause


def test_cause_is_the_type_and_the_first_line_only():
    assert cause(ValueError("bad header\nTraceback detail\nmore")) == "ValueError: bad header"
    assert cause(KeyError()) == "KeyError: -"
    assert cause(OSError(""), "no message") == "OSError: no message"
    assert "\n" not in cause(RuntimeError("\n\n"))
