"""RULER's aggregation tasks at an exact length: common-words extraction (cwe) and frequent-words extraction (fwe).

Their contexts are lists whose counts are the answer, so they cannot be cut mid-item as a haystack is.
They are filled whole, then the few tokens left are closed exactly:

- cwe: "1. w 2. w …", each of 10 common words 30 times and each uncommon word 3 times (6 and 1 below
  4096 tokens, RULER's switch). As many uncommon words as fit; then uncommon words are swapped for unused
  words of more tokens (each swap adds 3·Δ, or 1·Δ below 4096) while that fits; the last r < 3 tokens
  (a label's tokens fix the total modulo 3) are newline tokens after the list, recorded as `pad_tokens`.
- fwe: coded words, word k of the vocabulary ⌊n·k⁻²/ζ(2)⌋ times, the first of them the noise word '...'.
  The largest n that fits; the tokens left are more '...' (one token each in most tokenizers), which the
  question tells the model to ignore, so the three answers and their order of frequency do not change.

A sample's random choices come from the `rng` that `Builder.build` seeds per task, length and index.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.evals import ruler_tasks as rt
from posinterp.evals.ruler_tasks import TooShort

MIN_UNCOMMON = 10
"""cwe needs at least this many uncommon words (as many as common ones) or the length is refused."""
FWE_MARGIN = 2
"""fwe needs the third answer to occur at least this many times more than the next word, or the length is refused."""


def numbered(builder: Any, items: list[str]) -> list[int]:
    """'1. a 2. b …' as token ids: label ids then word ids, item by item."""
    labels = builder.number_ids(len(items))
    out: list[int] = []
    for i, word_ids in enumerate(builder.word_ids(items), start=1):
        out += labels[i] + word_ids
    return out


def cwe_example(builder: Any, head: str, tail: str, regime: str, rng: random.Random) -> list[int]:
    """RULER's one worked example before the task: a short list, the question, its answer, a newline."""
    size, common_repeats, uncommon_repeats = rt.CWE_EXAMPLE[regime]
    words = rng.sample(rt.word_pool(), size)
    common = words[:rt.CWE_COMMON]
    items = common * common_repeats + words[rt.CWE_COMMON:] * uncommon_repeats
    rng.shuffle(items)
    answer = " ".join(f"{i}. {w}" for i, w in enumerate(common, start=1))
    return builder.enc(head) + numbered(builder, items) + builder.enc(tail + rt.CWE_ANSWER + " " + answer + "\n")


def cwe(builder: Any, task: rt.Task, length: int, index: int, rng: random.Random) -> Any:
    regime = "long" if length >= rt.CWE_LONG_FROM else "short"
    fc, fu = rt.CWE_FREQ[regime]
    head, tail = rt.CWE_TEMPLATE.split("{context}")
    example = cwe_example(builder, head, tail, regime, rng)
    pre, post, budget = builder.frame(length, example, head, tail, rt.CWE_ANSWER)
    pool = rt.word_pool()
    order = rng.sample(pool, len(pool))
    common = order[:rt.CWE_COMMON]
    sizes = dict(zip(order, map(len, builder.word_ids(order))))
    fixed = fc * sum(sizes[w] for w in common)
    uncommon_sums = list(itertools.accumulate((sizes[w] for w in order[rt.CWE_COMMON:]), initial=0))

    def cost(n: int) -> int:
        """Tokens of the list with the first n uncommon words."""
        return builder.label_sums(rt.CWE_COMMON * fc + n * fu)[rt.CWE_COMMON * fc + n * fu] + fixed + fu * uncommon_sums[n]

    if cost(MIN_UNCOMMON) > budget:
        raise TooShort(cost(MIN_UNCOMMON) - budget)
    most = len(pool) - rt.CWE_COMMON
    n = _largest(lambda m: cost(m) <= budget, MIN_UNCOMMON, min(most, budget // (2 * fu) + 1))
    if n == most:
        raise PosinterpError(f"--lengths {length}: cwe needs more than the {len(pool)} words of its word list")
    uncommon = order[rt.CWE_COMMON:rt.CWE_COMMON + n]
    left = _swap_up(uncommon, order[rt.CWE_COMMON + n:], sizes, budget - cost(n), fu)
    items = common * fc + uncommon * fu
    rng.shuffle(items)
    pad = builder.one_token("\n", " ", ".")
    context = numbered(builder, items) + pad * left
    info = {"common_repeats": fc, "uncommon_repeats": fu, "uncommon_words": n, "items": len(items),
            "pad_tokens": left, "example_tokens": len(example)}
    return builder.finish(task, length, index, pre, context, post, common, "", info=info)


def _largest(fits: Any, lo: int, hi: int) -> int:
    """The largest m in [lo, hi] with fits(m), given fits(lo) and fits monotone (true then false)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _swap_up(uncommon: list[str], spare: list[str], sizes: dict[str, int], left: int, repeats: int) -> int:
    """Swap uncommon words (in place) for spare ones of more tokens to use up `left` tokens, each swap adding
    `repeats`·Δ; returns the tokens still left (< repeats unless no swap fits)."""
    by_size: dict[int, list[int]] = {}
    for i, w in enumerate(uncommon):
        by_size.setdefault(sizes[w], []).append(i)
    free: dict[int, list[str]] = {}
    for w in reversed(spare):
        free.setdefault(sizes[w], []).append(w)
    while left >= repeats:
        move = next(((a, delta) for delta in range(left // repeats, 0, -1) for a in sorted(by_size)
                     if by_size[a] and free.get(a + delta)), None)
        if move is None:
            break
        a, delta = move
        i = by_size[a].pop()
        uncommon[i] = free[a + delta].pop()
        by_size.setdefault(a + delta, []).append(i)
        left -= repeats * delta
    return left


def fwe(builder: Any, task: rt.Task, length: int, index: int, rng: random.Random) -> Any:
    head, tail = rt.FWE_TEMPLATE.split("{context}")
    head = head.rstrip(" ")  # every coded word carries its own leading space
    pre, post, budget = builder.frame(length, [], head, tail, rt.FWE_ANSWER)
    size = max(5, length // rt.FWE_TOKENS_PER_WORD)
    vocab = sorted(rt.distinct(lambda: rt.coded_word(rng), size))
    rng.shuffle(vocab)
    vocab[0] = "..."  # the most frequent word is noise (RULER)
    sizes = [len(ids) for ids in builder.word_ids(vocab)]

    def total(n: int) -> int:
        return sum(c * s for c, s in zip(rt.zipf_counts(n, size), sizes))

    def clear(n: int) -> bool:
        c = rt.zipf_counts(n, size)
        return c[3] >= c[4] + FWE_MARGIN

    least = next(n for n in range(1, 100_000) if clear(n))
    if total(least) > budget:
        raise TooShort(total(least) - budget)
    n = _largest(lambda m: total(m) <= budget, least, 2 * budget + 10)
    counts = rt.zipf_counts(n, size)
    left = budget - total(n)
    noise = builder.word_ids(["..."])[0]
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    if len(noise) == 1:
        words += ["..."] * left
        pad: list[int] = []
    else:  # '...' is several tokens here: the remainder is single-token dots or newlines at the end
        pad = builder.one_token(" .", ".", "\n") * left
    rng.shuffle(words)
    context = [t for ids in builder.word_ids(words) for t in ids] + pad
    info = {"words": len(words), "n": n, "vocabulary": size, "counts": dict(zip(vocab[:6], counts[:6])),
            "noise_added": left, "pad_tokens": len(pad)}
    return builder.finish(task, length, index, pre, context, post, vocab[1:4], "", info=info)
