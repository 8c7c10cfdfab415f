"""Text to token ids, in pieces small enough for a fast tokenizer, and the end-of-document id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from posinterp.errors import PosinterpError

TOKENIZE_CHARS = 1_000_000
"""Documents longer than this are tokenized in pieces cut at line ends, to bound memory."""


def encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """The tokenizer as text → ids, no special tokens, no over-length warnings, long texts in pieces."""

    def encode(text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        while start < len(text):
            end = len(text) if len(text) - start <= TOKENIZE_CHARS else text.rfind("\n", start, start + TOKENIZE_CHARS) + 1
            if end <= start:  # no line end in the window: cut anywhere
                end = start + TOKENIZE_CHARS
            ids.extend(tokenizer(text[start:end], add_special_tokens=False, verbose=False)["input_ids"])
            start = end
        return ids

    return encode


def eos_id(tokenizer: Any) -> int:
    token = getattr(tokenizer, "eos_token_id", None)
    if token is None:
        raise PosinterpError("the tokenizer has no EOS token to join documents with; "
                             "use a model whose tokenizer defines eos_token")
    return int(token)
