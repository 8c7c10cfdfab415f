"""RULER prompts of an exact length in the model's own tokens: the chat template or plain text, the haystacks,
and the needle tasks (niah_*, vt); cwe and fwe are in `ruler_lists`.

A prompt is assembled from token ids, piece by piece, as `passkey.PromptBuilder` does:

    [chat template before the user turn | BOS] [worked example] head CONTEXT tail [chat template after] answer prefix

where head and tail are the task template around its `{context}` and the answer prefix is RULER's (it
follows the assistant's turn, as RULER appends it after its model templates). Everything but the context
has a fixed size for a sample, so the context gets exactly the tokens left: a haystack (the noise line
repeated, the held-out plays' sentences, or distractor needles) is a run of units, each tokenized after its
separator; needles go in at unit boundaries, and the run is cut at the exact token where the budget ends
(RULER cuts its essay at a word count too). The ids, decoded and tokenized afresh, come within a few tokens
of the length (tests/evals/test_ruler.py measures it).

Depths: in the book haystack each needle takes its own RULER depth d (0–100 %, `ruler_tasks.DEPTHS`) and goes
at the sentence boundary nearest to d of the haystack's tokens (RULER: d of its sentences, the same up to
how sentence lengths vary); in the noise and distractor haystacks, needles go at random line boundaries,
in order, as RULER's do.

Every random choice of a sample comes from `random.Random("ruler:{seed}:{task}:{length}:{index}")`, so keys,
values and depths depend on neither the other tasks and lengths asked nor the tokenizer (the line a needle
falls on does, through the line lengths).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.evals import ruler_lists
from posinterp.evals import ruler_tasks as rt
from posinterp.evals.ruler_tasks import TooShort

FORMATS = ("auto", "chat", "plain")
"""`--prompt-format`: auto is chat when the tokenizer has a chat template, else plain."""
MIN_HAYSTACK = 64
"""A haystack gets at least this many tokens (and, with random slots, one line per needle); less is refused."""
_MARK = "RULERCONTENT7f3a"


@dataclass
class Sample:
    task: str
    length: int
    index: int
    ids: array
    """the prompt's token ids, exactly `length` of them."""
    answers: list[str]
    """the strings the output must contain (RULER's references)."""
    query: str
    context_start: int
    context_tokens: int
    needles: list[dict] = field(default_factory=list)
    """niah and vt: each inserted sentence with its prompt position, tokens, RULER depth (book) and token depth."""
    shared: int = 0
    """leading tokens that every sample of `group` shares (head + haystack up to the first needle): a KV cache
    of them can be reused; 0 when the sample shares nothing."""
    group: str = ""
    info: dict = field(default_factory=dict)


class Format:
    """The frame of every prompt: the tokenizer's chat template around the user turn, or plain text after BOS."""

    def __init__(self, tokenizer: Any, kind: str = "auto") -> None:
        template = getattr(tokenizer, "chat_template", None)
        if kind not in FORMATS:
            raise PosinterpError(f"--prompt-format {kind!r}: choose one of {', '.join(FORMATS)}")
        if kind == "chat" and not template:
            raise PosinterpError("--prompt-format chat: this model's tokenizer has no chat template; "
                                 "use --prompt-format plain (or auto)")
        self.kind = ("chat" if template else "plain") if kind == "auto" else kind
        enc = self.enc = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        if self.kind == "chat":
            try:
                text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False,
                                                     add_generation_prompt=True)
            except Exception as err:
                raise PosinterpError(f"the tokenizer's chat template fails on one user turn ({err}); "
                                     "use --prompt-format plain") from None
            if text.count(_MARK) != 1:
                raise PosinterpError("the tokenizer's chat template does not keep the user's text as given; "
                                     "use --prompt-format plain")
            self.before_text, self.after_text = text.split(_MARK)
            self.before, self.after = enc(self.before_text), enc(self.after_text)
        else:
            # whatever the tokenizer puts before text (a BOS for LLaMA, nothing for SmolLM2), as passkey does
            special, plain = list(tokenizer("a")["input_ids"]), enc("a")
            self.before = special[: len(special) - len(plain)] if special[len(special) - len(plain):] == plain else []
            self.before_text, self.after_text, self.after = tokenizer.decode(self.before), "", []

    def describe(self) -> dict:
        return {"kind": self.kind, "before": self.before_text, "after": self.after_text,
                "rule": "chat: the tokenizer's chat template around one user turn holding the task, with "
                        "add_generation_prompt, then RULER's answer prefix; plain: BOS (if the tokenizer adds "
                        "one), the task, the answer prefix"}


class Stream:
    """A haystack as token ids: units joined by `sep` (each tokenized with its separator, the first bare),
    grown from `units` on demand. `shared`: the same stream for every sample (noise, book)."""

    def __init__(self, builder: Builder, name: str, sep: str, units: Iterator[str], shared: bool) -> None:
        self.builder, self.name, self.sep, self.units, self.shared = builder, name, sep, units, shared
        first = next(units)
        self.first_bare, self.first_sep = builder.enc(first), builder.enc(sep + first)
        self.flat: list[int] = list(self.first_bare)
        self.bounds = [0, len(self.flat)]
        """token offsets of the unit boundaries: where a needle may go."""

    def grow(self, n: int) -> None:
        while len(self.flat) < n:
            chunk = [self.sep + u for u in itertools.islice(self.units, 512)]
            if not chunk:
                raise PosinterpError(f"the {self.name} haystack ran out")
            unique = sorted(set(chunk))
            ids = dict(zip(unique, self.builder.enc_many(unique)))
            for text in chunk:
                self.flat += ids[text]
                self.bounds.append(len(self.flat))

    def take(self, n: int, bare_first: bool = True) -> tuple[list[int], list[int]]:
        """The first n tokens and the unit boundaries within them; `bare_first=False`: the first unit with its
        separator too (when a needle comes before it)."""
        shift = 0 if bare_first else len(self.first_sep) - len(self.first_bare)
        self.grow(n - shift + 1)
        ids = self.flat[:n] if bare_first else (self.first_sep + self.flat[len(self.first_bare): n - shift])[:n]
        k = bisect.bisect_right(self.bounds, n - shift)
        return ids, [0] + [b + shift for b in self.bounds[1:k]]


def random_slots(rng: random.Random, count: int) -> Callable[[list[int], int], list[int]]:
    """Needles at `count` different unit boundaries drawn uniformly, in order (RULER's noise and needle haystacks)."""
    def choose(bounds: list[int], hay: int) -> list[int]:
        return sorted(rng.sample(range(len(bounds)), count))
    return choose


def depth_slots(depths: list[int]) -> Callable[[list[int], int], list[int]]:
    """Needle i at the boundary nearest to depths[i] % of the haystack's tokens."""
    def choose(bounds: list[int], hay: int) -> list[int]:
        out = []
        for d in depths:
            target = d / 100 * hay
            j = bisect.bisect_left(bounds, target)
            out.append(min((i for i in (j - 1, j) if 0 <= i < len(bounds)), key=lambda i: abs(bounds[i] - target)))
        return sorted(out)
    return choose


def sentences(text: str) -> list[str]:
    """Whitespace collapsed (as RULER does to its essays), then split after . ! ? followed by a space."""
    return [s for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text).strip()) if s]


class Builder:
    """Builds every RULER sample for one tokenizer and prompt format (streams and encodings cached)."""

    def __init__(self, tokenizer: Any, prompt_format: str = "auto") -> None:
        self.tokenizer = tokenizer
        self.format = Format(tokenizer, prompt_format)
        self._streams: dict[str, Stream] = {}
        self._words: dict[str, list[int]] = {}
        self._numbers: list[list[int]] = [[]]
        self._label_sums = [0]

    def enc(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def enc_many(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def word_ids(self, words: list[str]) -> list[list[int]]:
        """Each word as it tokenizes after a space (cached)."""
        missing = sorted({w for w in words if w not in self._words})
        self._words.update(zip(missing, self.enc_many([" " + w for w in missing])))
        return [self._words[w] for w in words]

    def number_ids(self, n: int) -> list[list[int]]:
        """Item labels of a numbered list: '1.' then ' 2.', ' 3.', … up to n (index i is label i)."""
        if len(self._numbers) <= n:
            start = len(self._numbers)
            self._numbers += self.enc_many([f"{i}." if i == 1 else f" {i}." for i in range(start, n + 1000)])
        return self._numbers

    def label_sums(self, n: int) -> list[int]:
        """sums[i]: the tokens of labels 1..i (sums[0] = 0), for i up to at least n."""
        labels = self.number_ids(n)
        while len(self._label_sums) < len(labels):
            self._label_sums.append(self._label_sums[-1] + len(labels[len(self._label_sums)]))
        return self._label_sums

    def one_token(self, *texts: str) -> list[int]:
        """The first of `texts` that is a single token (a pad that adds exactly one)."""
        for text in texts:
            ids = self.enc(text)
            if len(ids) == 1:
                return ids
        return self.enc(".")[-1:]

    def stream(self, name: str) -> Stream:
        if name not in self._streams:
            if name == "noise":
                self._streams[name] = Stream(self, "noise", "\n", itertools.repeat(rt.NOISE), shared=True)
            else:  # the held-out plays, in name order, repeated when a prompt needs more (as RULER repeats its essays)
                from posinterp.data.sources import gutenberg

                units = [s for doc in gutenberg("test") for s in sentences(doc.text)]
                self._streams[name] = Stream(self, "book", " ", itertools.cycle(units), shared=True)
        return self._streams[name]

    def distractors(self, task: rt.Task, rng: random.Random, taken: set[str]) -> Stream:
        """niah_multikey_2/3's haystack: needles of other keys, one per line."""
        def lines() -> Iterator[str]:
            while True:
                key = rt.random_value(task.key, rng)
                if key not in taken:
                    yield rt.needle(task, key, rt.random_value(task.value, rng))
        return Stream(self, "needles", "\n", lines(), shared=False)

    # --- assembly --------------------------------------------------------------------------------

    def frame(self, length: int, example: list[int], head: str, tail: str, answer: str) -> tuple[list, list, int]:
        """(ids before the context, ids after it, tokens left for the context)."""
        pre = self.format.before + example + self.enc(head)
        post = self.enc(tail) + self.format.after + self.enc(answer)
        return pre, post, length - len(pre) - len(post)

    def fill(self, stream: Stream, budget: int, pieces: list[str], choose: Callable,
             lines: int = 0) -> tuple[list[int], list[dict]]:
        """Exactly `budget` tokens: `stream` with `pieces` inserted, in order, at the boundaries `choose` picks
        (which needs at least `lines` whole units of haystack)."""
        ids_of = self.enc_many([stream.sep + p for p in pieces])
        hay = budget - sum(map(len, ids_of))
        stream.grow(hay + 1)
        need = max(MIN_HAYSTACK, stream.bounds[min(lines, len(stream.bounds) - 1)])
        if hay < need:
            raise TooShort(need - hay)
        ids, bounds = stream.take(hay)
        slots = choose(bounds, hay)
        if slots and slots[0] == 0:  # the first needle opens the context: it is bare, the stream's first unit is not
            ids_of[0] = self.enc(pieces[0])
            hay = budget - sum(map(len, ids_of))
            ids, bounds = stream.take(hay, bare_first=False)
            slots = [min(s, len(bounds) - 1) for s in slots]
        out: list[int] = []
        records, prev = [], 0
        for slot, text, piece in zip(slots, pieces, ids_of):
            cut = bounds[slot]
            out += ids[prev:cut]
            records.append({"text": text, "offset": len(out), "tokens": len(piece), "token_depth": round(cut / hay, 4)})
            out += piece
            prev = cut
        out += ids[prev:]
        assert len(out) == budget, (len(out), budget)
        return out, records

    def finish(self, task: rt.Task, length: int, index: int, pre: list[int], context: list[int], post: list[int],
               answers: list[str], query: str, needles: list[dict] | None = None, stream: Stream | None = None,
               info: dict | None = None) -> Sample:
        ids = pre + context + post
        assert len(ids) == length, (task.name, len(ids), length)
        needles = needles or []
        for n in needles:
            n["position"] = len(pre) + n.pop("offset")
        shared, group = 0, ""
        if stream is not None and stream.shared and needles and needles[0]["position"] > len(pre):
            shared = needles[0]["position"]
            group = f"{stream.name}:{hashlib.sha1(array('i', pre).tobytes()).hexdigest()[:16]}"
        return Sample(task.name, length, index, array("i", ids), list(answers), query, len(pre), len(context),
                      needles, shared, group, dict(info or {}))

    def build(self, name: str, length: int, index: int, seed: int) -> Sample:
        """Sample `index` of task `name` at `length` tokens; a length too short is refused in one line."""
        task = rt.TASKS[name]
        rng = random.Random(f"ruler:{seed}:{name}:{length}:{index}")
        make = {"niah": Builder.niah, "vt": Builder.vt, "cwe": ruler_lists.cwe, "fwe": ruler_lists.fwe}[task.kind]
        try:
            return make(self, task, length, index, rng)
        except TooShort as err:
            raise PosinterpError(f"--lengths {length} is too short for {name}: its {self.format.kind} prompt needs at "
                                 f"least {length + err.missing} tokens; give longer lengths or drop it from --tasks") from None

    # --- the needle tasks ------------------------------------------------------------------------

    def niah(self, task: rt.Task, length: int, index: int, rng: random.Random) -> Sample:
        count = max(task.keys, task.queries)
        keys = rt.distinct(lambda: rt.random_value(task.key, rng), count)
        flat = rt.distinct(lambda: rt.random_value(task.value, rng), count * task.values)
        values = [flat[i * task.values:(i + 1) * task.values] for i in range(count)]
        pairs = [(k, v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(pairs)
        asked = rng.sample(range(count), task.queries)
        answers = [v for i in asked for v in values[i]]
        query = rt.join_query([keys[i] for i in asked])
        head, tail, answer = rt.niah_texts(task, query)
        texts = [rt.needle(task, k, v) for k, v in pairs]
        depths: list[int | None] = [None] * len(texts)
        if task.haystack == "book":
            depths = sorted(rng.sample(rt.DEPTHS, len(texts)))
            stream, choose = self.stream("book"), depth_slots(depths)
        elif task.haystack == "noise":
            stream, choose = self.stream("noise"), random_slots(rng, len(texts))
        else:
            hay_rng = random.Random(f"{rng.random()}:distractors")
            stream, choose = self.distractors(task, hay_rng, set(keys)), random_slots(rng, len(texts))
        pre, post, budget = self.frame(length, [], head, tail, answer)
        context, needles = self.fill(stream, budget, texts, choose, 0 if task.haystack == "book" else len(texts))
        for n, d in zip(needles, depths):
            n["depth"] = d
        return self.finish(task, length, index, pre, context, post, answers, query, needles, stream,
                           {"keys": keys, "values": values})

    def vt_example(self, rng: random.Random) -> list[int]:
        """vt's worked example (3-letter names), its answer after it, sized to VT_EXAMPLE_TOKENS as RULER's."""
        names = rt.distinct(lambda: rt.variable(rng, 3), rt.VT_HOPS + 1)
        value = str(rng.randint(10000, 99998))
        chain = _chain(names, value)
        head, tail = rt.VT_TEMPLATE.format(context="\x01", query=value).split("\x01")
        answer = rt.VT_ANSWER.format(num_v=len(names), query=value)
        head_ids, end_ids = self.enc(head), self.enc(tail + answer + " ".join(names) + "\n\n")
        noise = self.stream("noise")
        pieces = sum(len(x) for x in self.enc_many(["\n" + c for c in chain]))
        room = rt.VT_EXAMPLE_TOKENS - len(head_ids) - len(self.enc(tail + answer)) - pieces
        line = len(noise.first_sep)
        lines = max(len(chain), 1 + max(0, room - len(noise.first_bare)) // line)
        budget = len(noise.first_bare) + (lines - 1) * line + pieces
        slots = sorted(rng.sample(range(1, lines + 1), len(chain)))  # never before the first line: it stays bare
        context, _ = self.fill(noise, budget, chain, lambda bounds, hay: slots)
        return head_ids + context + end_ids

    def vt(self, task: rt.Task, length: int, index: int, rng: random.Random) -> Sample:
        example = self.vt_example(rng)
        names = rt.distinct(lambda: rt.variable(rng), rt.VT_HOPS + 1)
        value = str(rng.randint(10000, 99998))
        chain = _chain(names, value)
        head, tail = rt.VT_TEMPLATE.format(context="\x01", query=value).split("\x01")
        answer = rt.VT_ANSWER.format(num_v=len(names), query=value)
        pre, post, budget = self.frame(length, example, head, tail, answer)
        stream = self.stream("noise")
        context, needles = self.fill(stream, budget, chain, random_slots(rng, len(chain)), len(chain))
        for n in needles:
            n["depth"] = None
        return self.finish(task, length, index, pre, context, post, names, value, needles, stream,
                           {"chain": chain, "example_tokens": len(example)})


def _chain(names: list[str], value: str) -> list[str]:
    """'VAR A = 12345', 'VAR B = VAR A', …: each name takes the value through the one before it."""
    return [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])]
