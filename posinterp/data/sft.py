"""Long-document summarization as supervised fine-tuning data: (document, summary) → tokens.

    from posinterp.data import sft
    from posinterp.data import summaries
    pairs = summaries.load_pairs("pydoc-summaries", split="train")            # or GovReport jsonl/parquet
    budget = sft.fit_budget(tokenizer, window=16384, max_summary_tokens=1024)
    for ex in sft.iter_examples(tokenizer, pairs, budget=budget, epochs=10, seed=0):
        loss = causal_lm_loss(hidden_of(ex["input_ids"]), lm_head, ex["input_ids"], labels=ex["labels"])

The prompt is the paper's (GovReport fine-tuning and evaluation): the document, cut to `max_input_tokens`
tokens, between an instruction and "Summary:"; the summary (cut to `max_summary_tokens`, then
EOS) follows. Labels are the input ids on the summary tokens and IGNORE_INDEX (-100) on every
prompt position, so the loss counts only the summary. One example per micro-batch: no padding,
no packing masks (packing would need per-document attention masks that SDPA does not take).

Sources of pairs: a jsonl/json/parquet file, a folder or glob of them (files named by split,
`train*`/`test*`/`validation*`, are chosen by `split`), a `datasets.save_to_disk` folder, or the
built-in smoke set `pydoc-summaries` (see `pydoc_summaries`). Field names default to GovReport's
(`report`, `summary`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from posinterp.data.summaries import PROMPT_HEAD, PROMPT_TAIL, SUMMARY_LEAD, Pair
from posinterp.errors import PosinterpError

IGNORE_INDEX = -100
"""Label of positions left out of the loss (transformers' convention): every prompt token of an example."""


@dataclass(frozen=True)
class Budget:
    """Token budget of one example: prompt overhead + document + summary (+ EOS) ≤ window."""

    window: int
    max_input_tokens: int
    """Document tokens kept (the document is cut at this many tokens)."""
    max_summary_tokens: int
    """Summary tokens kept in training, or new tokens generated in evaluation."""
    overhead: int
    """Tokens of the prompt around the document (instruction, "Summary:", BOS if any)."""


def _leading_specials(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for LLaMA; none for SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return list(full[:i])
    return []


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_overhead(tokenizer: Any) -> int:
    """Tokens of the prompt that are not the document."""
    return len(_leading_specials(tokenizer)) + len(_ids(tokenizer, PROMPT_HEAD)) + len(_ids(tokenizer, PROMPT_TAIL))


def fit_budget(tokenizer: Any, window: int, *, max_summary_tokens: int, max_input_tokens: int | None = None,
               summary_flag: str = "--max-summary-tokens", window_flag: str = "the model's window") -> Budget:
    """Check the token budget against the window before any work; None fills the window.

    prompt overhead + max_input_tokens + max_summary_tokens + 1 (EOS) must fit in `window`.
    """
    window = int(window)
    if int(max_summary_tokens) < 1:
        raise PosinterpError(f"{summary_flag} {max_summary_tokens} must be at least 1 token")
    if int(max_summary_tokens) >= window:
        raise PosinterpError(f"{summary_flag} {max_summary_tokens} is not below {window_flag} {window}: "
                             f"no room for the document; lower {summary_flag} (e.g. {max(1, window // 16)})")
    overhead = prompt_overhead(tokenizer)
    room = window - overhead - int(max_summary_tokens) - 1
    if room < 1:
        raise PosinterpError(f"{summary_flag} {max_summary_tokens} leaves no room for the document in {window_flag} "
                             f"{window} (prompt {overhead} tokens); lower {summary_flag}")
    if max_input_tokens is None:
        max_input_tokens = room
    elif int(max_input_tokens) < 1:
        raise PosinterpError(f"--max-input-tokens {max_input_tokens} must be at least 1 token")
    elif int(max_input_tokens) > room:
        raise PosinterpError(f"--max-input-tokens {max_input_tokens} + {summary_flag} {max_summary_tokens} + prompt "
                             f"{overhead} + EOS exceed {window_flag} {window}; use --max-input-tokens {room} or less")
    return Budget(window, int(max_input_tokens), int(max_summary_tokens), overhead)


def truncate_ids(tokenizer: Any, text: str, max_tokens: int) -> tuple[list[int], bool]:
    """The text's token ids cut to `max_tokens` (in tokens, not characters); (ids, was cut?)."""
    ids = _ids(tokenizer, text)
    return ids[:max_tokens], len(ids) > max_tokens


def prompt_only(tokenizer: Any, document: str, max_input_tokens: int) -> list[int]:
    """Token ids of the paper's prompt with the document cut to `max_input_tokens` tokens."""
    doc, _ = truncate_ids(tokenizer, document, int(max_input_tokens))
    return _leading_specials(tokenizer) + _ids(tokenizer, PROMPT_HEAD) + doc + _ids(tokenizer, PROMPT_TAIL)


def build_example(tokenizer: Any, document: str, summary: str, max_input_tokens: int,
                  max_summary_tokens: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt + summary + EOS; labels are IGNORE_INDEX on every prompt position.

    The summary is cut to `max_summary_tokens` tokens; EOS follows it (and is learned, so the
    model learns to stop). labels[t] = input_ids[t] on the summary and EOS: the usual causal-LM
    convention, the loss shifting by one inside (`posinterp.train.loss.causal_lm_loss`).
    """
    prompt = prompt_only(tokenizer, document, max_input_tokens)
    target, _ = truncate_ids(tokenizer, SUMMARY_LEAD + summary.strip(), int(max_summary_tokens))
    if tokenizer.eos_token_id is not None:
        target = target + [int(tokenizer.eos_token_id)]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which epoch `epoch` visits n pairs: the shuffle of `random.Random(seed + epoch)`."""
    order = list(range(n))
    random.Random(int(seed) + int(epoch)).shuffle(order)
    return order


def iter_examples(tokenizer: Any, pairs: Iterable[Pair], *, budget: Budget, epochs: int = 1, seed: int = 0,
                  shuffle: bool = True, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[dict]:
    """Training examples, one per micro-batch (padding-free): {"input_ids", "labels"} of shape (1, T).

    Epoch e visits the pairs in the order of `random.Random(seed + e)` (or as given when
    shuffle=False), so the sequence is the same on every run; `start` skips that many examples
    (the data position of a resumed run) without tokenizing them. With several processes, process
    `rank` of `world` takes the positions ≡ rank (mod world) of that one sequence. Each dict also
    carries "name", "epoch", "position" (its index in the whole sequence) and "targets" (the
    number of summary tokens the loss counts, for token-weighted accumulation).
    """
    if not 0 <= int(rank) < int(world):
        raise ValueError(f"rank {rank} is not in [0, {world})")
    import torch

    pairs = list(pairs)
    position = 0
    for epoch in range(int(epochs)):
        order = epoch_order(len(pairs), seed, epoch) if shuffle else range(len(pairs))
        for i in order:
            if position < start or position % int(world) != int(rank):
                position += 1
                continue
            pair = pairs[i]
            ids, labels = build_example(tokenizer, pair.document, pair.summary, budget.max_input_tokens,
                                        budget.max_summary_tokens)
            yield {"input_ids": torch.tensor([ids], dtype=torch.long),  # (1, T)
                   "labels": torch.tensor([labels], dtype=torch.long),  # (1, T)
                   "name": pair.name, "epoch": epoch, "position": position,
                   "targets": sum(1 for x in labels if x != IGNORE_INDEX)}
            position += 1


class SummaryExamples:
    """The training stream of `train --task summarize`: endless, deterministic, resumable.

    Example k of the stream is pair `order(epoch)[i]` with (epoch, i) = divmod(k, len(pairs)) and
    order(epoch) = `epoch_order`, the same sequence as `iter_examples`. `take(n)` hands out the next n examples as (input_ids, labels) lists; the
    position (`state()`) is the number handed out, so a resumed run continues the same sequence.
    """

    def __init__(self, tokenizer: Any, pairs: Iterable[Pair], budget: Budget, *, seed: int = 0,
                 state: dict | None = None) -> None:
        self.tokenizer, self.pairs, self.budget, self.seed = tokenizer, list(pairs), budget, int(seed)
        if not self.pairs:
            raise PosinterpError("the summarization data has no (document, summary) pairs")
        self.position = 0
        self._orders: dict[int, list[int]] = {}
        if state is not None:
            self.load_state(state)

    @property
    def epoch(self) -> int:
        return self.position // len(self.pairs)

    def state(self) -> dict:
        return {"position": self.position, "seed": self.seed, "pairs": len(self.pairs)}

    def load_state(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("pairs", len(self.pairs))):
            if key in state and int(state[key]) != mine:
                raise PosinterpError(f"the saved data position was made with {key} {state[key]}, not {mine}; "
                                     "resume with the same --seed and --data")
        self.position = int(state["position"])

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(len(self.pairs), self.seed, epoch)}
        return self._orders[epoch]

    def take(self, n: int) -> list[tuple[list[int], list[int]]]:
        out = []
        for _ in range(int(n)):
            epoch, i = divmod(self.position, len(self.pairs))
            pair = self.pairs[self._order(epoch)[i]]
            out.append(build_example(self.tokenizer, pair.document, pair.summary, self.budget.max_input_tokens,
                                     self.budget.max_summary_tokens))
            self.position += 1
        return out


def scored_tokens(example: tuple[list[int], list[int]]) -> int:
    """Tokens of an (ids, labels) example that the loss scores: labels after the first that are not ignored."""
    return sum(1 for y in example[1][1:] if y != IGNORE_INDEX)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, labels) tensors (B, T) of examples of unequal length, right-padded.

    Padding sits after every real token, so causal attention never lets a real position see it;
    its labels are IGNORE_INDEX, so it adds nothing to the loss.
    """
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)
        labels[row, :len(y)] = torch.tensor(y, dtype=torch.long)
    return ids, labels
