"""A synthetic passkey task small enough to pretrain a LLaMA on from scratch in seconds on a CPU.

    tok = passkey_tokenizer()
    folder = tiny_passkey_model(Path("runs/tiny"), window=128, seed=0, tokenizer=tok)  # random init
    write_jsonl(passkey_sequences(tok, sequences=1000 * 16, seq_len=128, seed=0), Path("runs/tiny.jsonl"))
    posinterp train runs/tiny --data runs/tiny.jsonl --seq-len 128 --steps 1000 --batch-size 16 --lr 2e-3 \
        --precision fp32 --out runs/tiny-pt

The documents are the passkey eval's own prompts (`posinterp.evals.passkey.PromptBuilder`, the
paper's template: task sentence, filler, the key sentence at a random depth, more filler, the
question) followed by the answer " 12345.", so a model pretrained on them is measured by the real
`passkey` eval on exactly the distribution it learned, at any length.

The tokenizer is a byte-level BPE trained on the template alone (174 entries instead of SmolLM2's
49152, so the embedding and the softmax cost nearly nothing), with every digit its own token: a
key is five tokens that the model copies one by one. Used by tests/train/test_reproduction.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

EOS = "<eos>"
VOCAB = 256
"""BPE vocabulary cap; the template saturates it at 174 entries (its characters and every whole word)."""
INIT_STD = 0.1
"""Weight init std. With LLaMA's 0.02 the copying circuit of a 2-layer, hidden-64 model formed only
after a plateau of about 700 steps (batch 16 × 128 tokens, lr 2e-3); with 0.1, within about 150 for
seed 0, but seeds 1 and 2 had still not formed it after 600; the test pretrains 1000 steps
(tests/train/test_reproduction.py)."""


def passkey_tokenizer(vocab_size: int = VOCAB) -> Any:
    """A `PreTrainedTokenizerFast` trained on the passkey template (digits split one per token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from posinterp.evals.passkey import FILLER, KEY, QUESTION, TASK

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    # every sentence of the template, all ten digits, and the "a" that PromptBuilder probes with
    sample = [TASK, FILLER, " " + FILLER, KEY.format(key="0123456789"), QUESTION + " 12345.", "\n", " \n", "a"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False)
    tok.train_from_iterator(sample * 50, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def tiny_passkey_model(out: Path, *, window: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
                       rope_theta: float = 10000.0, init_std: float = INIT_STD, tokenizer: Any = None,
                       intermediate: int | None = None, head_dim: int | None = None) -> Path:
    """Save a randomly initialised LLaMA (window `window`, MLP width `intermediate`, default 4·hidden; heads of
    `head_dim`, default hidden / heads) with the passkey tokenizer into `out`."""
    import torch
    import transformers as tf

    tokenizer = tokenizer if tokenizer is not None else passkey_tokenizer()
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    cfg = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(intermediate or 4 * hidden),
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=window, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, initializer_range=init_std,
                         head_dim=int(head_dim or hidden // heads))
    model = tf.LlamaForCausalLM(cfg)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.model_max_length = window
    tokenizer.save_pretrained(out)
    return out


def passkey_document(builder: Any, rng: random.Random, length: int) -> list[int]:
    """One passkey document of exactly `length` tokens: the eval's prompt, then the answer " 12345."."""
    key = str(rng.randint(10000, 99999))
    answer = builder.tokenizer(f" {key}.", add_special_tokens=False)["input_ids"]
    return list(builder.build(length - len(answer), rng.random(), key).ids) + answer


def passkey_sequences(tokenizer: Any, *, sequences: int, seq_len: int, seed: int,
                      min_length: int | None = None, max_length: int | None = None) -> list[str]:
    """The documents of `passkey_sequence_groups`, in order, as one list."""
    return [text for group in passkey_sequence_groups(tokenizer, sequences=sequences, seq_len=seq_len, seed=seed,
                                                      min_length=min_length, max_length=max_length) for text in group]


def passkey_sequence_groups(tokenizer: Any, *, sequences: int, seq_len: int, seed: int,
                            min_length: int | None = None, max_length: int | None = None) -> list[list[str]]:
    """Documents that `posinterp.data` packs into exactly `sequences` training sequences of `seq_len` tokens.

    Each sequence is filled with passkey documents of random lengths in [min_length, max_length]
    (default: the shortest the template allows, and seq_len − 1), the first at the sequence's start
    (where the eval's prompts start), each followed by EOS; what is left at the end is filler, so no
    document is ever cut in two. Varying the length keeps the model from finding the question by
    its absolute position. One list of documents per sequence, so that other sequences can be put between them.
    """
    from posinterp.evals.passkey import PromptBuilder

    builder = PromptBuilder(tokenizer)
    shortest = builder.fixed("12345") + 16  # the template, the answer and a little filler
    lo = max(shortest, int(min_length or shortest))
    hi = min(seq_len - 1, int(max_length or seq_len - 1))
    if lo > hi:
        raise ValueError(f"no passkey document fits: lengths [{lo}, {hi}] with seq_len {seq_len}")
    rng = random.Random(f"synthetic-passkey:{seed}:{seq_len}:{lo}:{hi}")
    groups = []
    for _ in range(sequences):
        texts = []
        room = seq_len  # tokens left in this sequence, EOS included
        while room - 1 >= lo:
            length = rng.randint(lo, min(hi, room - 1))
            if room - 1 - length == 1:  # one token left would be a lone EOS, an empty document
                length = length - 1 if length > lo else length + 1
            texts.append(tokenizer.decode(passkey_document(builder, rng, length)))
            room -= length + 1
        if room:
            texts.append(tokenizer.decode(builder.stream(room - 1)))
        groups.append(texts)
    return groups


def write_jsonl(texts: list[str], out: Path) -> Path:
    """One `{"text": ...}` line per document (what `posinterp.data.corpus` reads with the default --text-field)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}) + "\n")
    return out
