"""Packing: exact lengths, EOS joins, no token lost or repeated in an epoch, seeded order, resumable."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from posinterp.data.packing import PackedSequences, shard
from posinterp.data.tokens import encoder
from posinterp.errors import PosinterpError

EOS = 0


def _docs(n=7, seed=0):
    """Documents of distinct token ids so every token can be traced (ids 1..)."""
    rng = np.random.default_rng(seed)
    out, nxt = [], 1
    for _ in range(n):
        k = int(rng.integers(1, 40))
        out.append(list(range(nxt, nxt + k)))
        nxt += k
    return out


def _stream(docs, seq_len=16, seed=0, buffer=4, state=None):
    texts = [" ".join(map(str, d)) for d in docs]
    return PackedSequences(lambda: iter(texts), lambda t: [int(x) for x in t.split()], EOS, seq_len,
                           seed=seed, shuffle_buffer=buffer, state=state)


def _epoch_tokens(docs):
    return [t for d in docs for t in d + [EOS]]


def test_exact_length_and_no_token_lost_or_repeated_within_an_epoch():
    docs = _docs()
    stream = _stream(docs, seq_len=16)
    total = len(_epoch_tokens(docs))
    n_full = total // 16
    seqs = stream.take(n_full)
    assert all(s.shape == (16,) and s.dtype == np.int32 for s in seqs)
    assert stream.state()["epoch"] == 0 and stream.state()["index"] == n_full
    got = Counter(int(t) for s in seqs for t in s)
    want = Counter(_epoch_tokens(docs)[:n_full * 16])  # the tail is carried, not dropped
    assert got == want
    # every non-EOS token exactly once; EOS once per document (minus those in the carried tail)
    assert all(got[t] == 1 for d in docs for t in d if t in got)


def test_eos_joins_documents_and_the_tail_carries_into_the_next_epoch():
    docs = _docs()
    stream = _stream(docs, seq_len=16, buffer=1)  # buffer 1 = source order
    flat = _epoch_tokens(docs)
    n = (2 * len(flat)) // 16
    seqs = stream.take(n)
    joined = [int(t) for s in seqs for t in s]
    assert joined == (flat + flat)[:n * 16]  # epoch 2 continues exactly where epoch 1 left its tail


def test_seed_fixes_the_order():
    docs = _docs(20)
    a = [s.tolist() for s in _stream(docs, seed=1, buffer=8).take(10)]
    b = [s.tolist() for s in _stream(docs, seed=1, buffer=8).take(10)]
    c = [s.tolist() for s in _stream(docs, seed=2, buffer=8).take(10)]
    assert a == b and a != c
    assert sorted(a) != a or sorted(c) != c  # actually shuffled


@pytest.mark.parametrize("cut", [0, 1, 5, 9, 13])
def test_restored_position_continues_the_identical_stream(cut):
    docs = _docs(12)
    ref = [s.tolist() for s in _stream(docs, seed=3, buffer=5).take(30)]  # spans several epochs
    first = _stream(docs, seed=3, buffer=5)
    head = [s.tolist() for s in first.take(cut)]
    import json

    state = json.loads(json.dumps(first.state()))  # as it travels through a checkpoint
    rest = [s.tolist() for s in _stream(docs, seed=3, buffer=5, state=state).take(30 - cut)]
    assert head + rest == ref


def test_position_from_another_seq_len_is_refused():
    docs = _docs()
    state = _stream(docs, seq_len=16).state()
    with pytest.raises(PosinterpError, match="seq-len 16"):
        _stream(docs, seq_len=8, state=state)


def test_empty_corpus_is_an_error():
    with pytest.raises(PosinterpError, match="no non-empty documents"):
        _stream([[]]).take(1)


def test_shard_splits_a_global_batch_between_processes():
    batch = list(range(8))
    assert shard(batch, 0, 2) + shard(batch, 1, 2) == [0, 2, 4, 6, 1, 3, 5, 7]
    assert shard(batch, 0, 1) == batch


def test_real_tokenizer_and_corpus(tmp_path, smol_tokenizer):
    (tmp_path / "a.txt").write_text("Hello world. " * 50)
    (tmp_path / "b.txt").write_text("The quick brown fox. " * 30)
    enc = encoder(smol_tokenizer)
    want = enc("Hello world. " * 50) + [smol_tokenizer.eos_token_id] + enc("The quick brown fox. " * 30) + [smol_tokenizer.eos_token_id]
    stream = PackedSequences.from_corpus(str(tmp_path), smol_tokenizer, seq_len=32, shuffle_buffer=1)
    n = len(want) // 32
    assert [int(t) for s in stream.take(n) for t in s] == want[: n * 32]


def test_long_text_is_tokenized_in_pieces_at_line_ends(monkeypatch, smol_tokenizer):
    from posinterp.data import tokens as data

    text = "".join(f"line {i} of a long document\n" for i in range(300))
    whole = encoder(smol_tokenizer)(text)
    monkeypatch.setattr(data, "TOKENIZE_CHARS", 1000)
    assert encoder(smol_tokenizer)(text) == whole
