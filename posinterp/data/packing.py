"""Tokenize documents and pack them into sequences of exactly `seq_len` tokens.

    stream = PackedSequences.from_corpus("gutenberg", tokenizer, seq_len=16384, seed=0)
    seq = next(iter(stream))          # numpy int32 array of length 16384
    state = stream.state()            # JSON-ready; PackedSequences.from_corpus(..., state=state) resumes

The token stream of one epoch is `carry + doc_1 EOS doc_2 EOS ... doc_n EOS`, documents in source
order, read lazily (`posinterp.data.corpus.iter_documents`), so a corpus larger than memory is fine.
It is cut into consecutive `seq_len` pieces; the tail shorter than `seq_len` is carried into the
next epoch instead of being padded or dropped. Within an epoch every token lands in exactly one
sequence. The order of the sequences is shuffled by a buffer of `shuffle_buffer` sequences
(flushed at the end of each epoch) whose random generator is seeded from `seed` and the epoch,
so the stream is a pure function of (corpus, tokenizer, seq_len, seed, shuffle_buffer).

The position is (epoch, sequences already taken in the epoch, the carry the epoch started with);
restoring it replays that epoch's tokenization up to the position, which is exact and costs a
pass over at most one epoch of text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from posinterp.data.tokens import encoder, eos_id
from posinterp.errors import PosinterpError


class PackedSequences:
    """An endless, deterministic stream of `seq_len`-token sequences with a resumable position."""

    def __init__(self, documents: Callable[[], Iterable[str]], encode: Callable[[str], list[int]], eos: int,
                 seq_len: int, *, seed: int = 0, shuffle_buffer: int = 1000, state: dict | None = None) -> None:
        if seq_len < 2:
            raise PosinterpError(f"--seq-len {seq_len} is too short; give at least 2 tokens")
        if shuffle_buffer < 1:
            raise PosinterpError(f"--shuffle-buffer {shuffle_buffer} must be at least 1 (1 = no shuffling)")
        self.documents = documents
        self.encode = encode
        self.eos = int(eos)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.epoch, self.index, self.carry, self.taken = 0, 0, [], 0
        self._next_carry: list[int] = []
        if state is not None:
            self.load_state(state)

    @classmethod
    def from_corpus(cls, spec: str, tokenizer: Any, seq_len: int, *, split: str = "train", text_field: str = "text",
                    seed: int = 0, shuffle_buffer: int = 1000, state: dict | None = None) -> PackedSequences:
        """Stream `spec` (anything `posinterp.data.corpus` reads) through `tokenizer`."""
        from posinterp.data.corpus import iter_documents

        def documents() -> Iterator[str]:
            for doc in iter_documents(spec, split=split, text_field=text_field):
                yield doc.text

        return cls(documents, encoder(tokenizer), eos_id(tokenizer), seq_len, seed=seed,
                   shuffle_buffer=shuffle_buffer, state=state)

    # -- position ---------------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-ready position: the next sequence handed out is the one after the last taken."""
        return {"epoch": self.epoch, "index": self.index, "carry": list(self.carry), "sequences": self.taken,
                "seq_len": self.seq_len, "seed": self.seed, "shuffle_buffer": self.shuffle_buffer}

    def load_state(self, state: dict) -> None:
        for key in ("seq_len", "seed", "shuffle_buffer"):
            if key in state and int(state[key]) != getattr(self, key):
                raise PosinterpError(f"the saved data position was made with {key.replace('_', '-')} {state[key]}, "
                                     f"not {getattr(self, key)}; resume with --{key.replace('_', '-')} {state[key]}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.carry, self.taken = [int(t) for t in state["carry"]], int(state.get("sequences", 0))
        self.__dict__.pop("_it", None)

    # -- the stream ---------------------------------------------------------------------------
    def _epoch(self, epoch: int, carry: list[int]) -> Iterator[Any]:
        """One epoch's sequences in shuffled order; sets `_next_carry` once exhausted."""
        import numpy as np

        rng = random.Random(self.seed * 1_000_003 + epoch)
        buf: list[Any] = []
        pending = list(carry)
        seen_tokens = False
        for text in self.documents():
            ids = self.encode(text)
            if not ids:
                continue
            seen_tokens = True
            pending.extend(ids)
            pending.append(self.eos)
            cut = len(pending) - len(pending) % self.seq_len
            for start in range(0, cut, self.seq_len):
                seq = np.asarray(pending[start:start + self.seq_len], dtype=np.int32)
                if len(buf) < self.shuffle_buffer:
                    buf.append(seq)
                else:
                    i = rng.randrange(self.shuffle_buffer)
                    yield buf[i]
                    buf[i] = seq
            del pending[:cut]
        if not seen_tokens:
            raise PosinterpError("the training data has no non-empty documents; check --data and --split")
        rng.shuffle(buf)
        self._next_carry = pending
        yield from buf

    def __iter__(self) -> Iterator[Any]:
        while True:
            produced = 0
            for seq in self._epoch(self.epoch, self.carry):
                produced += 1
                if produced <= self.index:  # replaying up to a restored position
                    continue
                self.index = produced
                self.taken += 1
                yield seq
            self.epoch, self.index, self.carry = self.epoch + 1, 0, self._next_carry

    def take(self, n: int) -> list[Any]:
        """The next `n` sequences (one iterator is kept, so successive calls continue the stream)."""
        if not hasattr(self, "_it"):
            self._it = iter(self)
        return [next(self._it) for _ in range(n)]


def shard(global_batch: list[Any], rank: int, world: int) -> list[Any]:
    """This process's share of one optimizer step's sequences (all processes read the same stream)."""
    return global_batch[rank::world]
