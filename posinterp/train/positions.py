"""Position ids of the training sequences: plain (0..T−1) or PoSE's skip-wise ids (`train --positions pose`).

    posinterp train smollm2-135m --rope pi:4 --seq-len 2048 --positions pose --out runs/pose-ft
    # 2048-token sequences whose ids skip within the ×4 window (8192): every distance up to 8191 is trained

PoSE (Zhu et al., "PoSE: Efficient Context Window Extension of LLMs via Positional Skip-wise Training",
arXiv 2309.10400) trains at the target window W with sequences of T < W tokens: the sequence is cut
into N chunks and each chunk's ids are shifted by a skip, so the relative positions seen in training
reach W − 1 while the attention only ever spans T tokens.

The ids of one packed sequence of T tokens (`draw`, then `ids`), given W and N:

1. chunk lengths: N − 1 cut points drawn without replacement from 1..T−1, so every chunk holds at least
   one token and every split into N non-empty chunks is equally likely;
2. total skip S: uniform on 0..W−T, so the last id, T − 1 + S, is at most W − 1;
3. the N − 1 gaps before chunks 2..N: a uniform split of S into N − 1 non-negative parts (stars and
   bars: N − 2 bars among S + N − 2 slots); chunk 1 starts at id 0;
4. the ids run on by one inside a chunk and jump by the gap between chunks: strictly increasing.

Every draw comes from its own generator seeded by (the run's --seed, the optimizer step, the sequence's
place in the global batch), so the ids are a pure function of where the sequence sits in the run: the
same after --resume, and whatever the split of the global batch into processes and micro-batches.
Nothing is kept in the checkpoint. Evaluation (`--eval-every`, every eval verb) calls the model without
position ids, i.e. plain ones; only the training forward receives these (`model_setup`'s loss module).

How this differs from the references:

- PoSE's own code (`train_preprocess_function_pose`, dwzhu-pku/PoSE) has 2 chunks: the first chunk's
  length uniform on 1..⌈T/2⌉, the second chunk's bias uniform on 0..W−T, and it also skips *text*
  (the second chunk is read from further on in a document of up to 5T tokens). The paper's N-chunk
  form draws each bias uniformly between the previous one and W−T. Here the text is the packed
  sequence as is (no text skipping), the first chunk may be longer than half, and for N > 2 the total
  skip is uniform and split uniformly at random, instead of the paper's nested draws (under which the
  earlier gaps are the larger). For N = 2 the skip distribution is the reference's.
- axolotl's `use_pose` (`add_pose_position_ids`, with `pose_max_context_len`, `pose_num_chunks`,
  `pose_split_on_token_ids`) cuts at equal lengths T // N or before given token ids, draws each skip
  sequentially (uniform on what is left, so the first gap tends to take most of it), draws once per
  *document* when the dataset is prepared (the same ids every epoch) from the global `random` state,
  and applies PoSE to the eval set too when eval sample packing is on. Here the cuts are random, the
  ids are drawn afresh for each packed sequence of each step from a seeded generator, and evaluation
  always keeps plain ids.

The loss module passes an all-ones attention mask with these ids: without a mask, transformers reads
a jump in `position_ids` as the start of another packed sequence and stops the chunks attending to
each other (`masking_utils.find_packed_sequence_indices`), which would train no long distance at all.
"""

from __future__ import annotations

import random
from typing import Any

from posinterp.errors import PosinterpError

MODES = ("plain", "pose")
DEFAULT_CHUNKS = 2
"""Chunks per sequence (the paper's default, and its best trade-off)."""


def check(positions: str, chunks: int, task: str, seq_len: int | None, window: int | None = None) -> None:
    """Refuse, in one line, a PoSE setting with nothing to skip (window None: the checks that need no model)."""
    if positions not in MODES:
        raise PosinterpError(f"--positions {positions!r} is not one of {', '.join(MODES)}")
    if int(chunks) < 2:
        raise PosinterpError(f"--pose-chunks {chunks} must be at least 2 (one chunk has nowhere to skip to)")
    if positions != "pose":
        return
    if task != "lm":
        raise PosinterpError(f"--positions pose trains --task lm only (--task {task} scores one right-padded "
                             "example per sequence); use --positions plain")
    if window is not None and seq_len is not None and int(seq_len) >= int(window):
        raise PosinterpError(f"--positions pose needs --seq-len below the target window {window} (got {seq_len}): "
                             f"at the full window there is nothing to skip; lower --seq-len (e.g. {max(2, window // 4)}) "
                             "or extend further with --rope")
    if seq_len is not None and int(chunks) > int(seq_len):
        raise PosinterpError(f"--pose-chunks {chunks} exceeds --seq-len {seq_len}: every chunk needs a token")


def generator(seed: int, step: int, index: int) -> random.Random:
    """The generator of sequence `index` of the global batch of optimizer step `step` (a str seed: stable
    across processes and Python runs, unlike hash())."""
    return random.Random(f"posinterp-pose:{int(seed)}:{int(step)}:{int(index)}")


def draw(length: int, window: int, chunks: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(chunk lengths, the gap before each chunk): lengths ≥ 1 summing to `length`, gaps ≥ 0 with gap[0] = 0
    and length − 1 + sum(gaps) < window (see the module doc for the distributions)."""
    cuts = sorted(rng.sample(range(1, length), chunks - 1))
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
    total = rng.randint(0, window - length)
    bars = sorted(rng.sample(range(total + chunks - 2), chunks - 2))
    gaps = [b - a - 1 for a, b in zip([-1, *bars], [*bars, total + chunks - 2], strict=True)]
    return lengths, [0, *gaps]


def ids(lengths: list[int], gaps: list[int]) -> Any:
    """The position ids (int64 numpy array): 0, 1, … inside a chunk, + the gaps so far before it."""
    import numpy as np

    offsets = np.cumsum(np.asarray(gaps, dtype=np.int64))
    return np.arange(sum(lengths), dtype=np.int64) + np.repeat(offsets, lengths)


def pose_ids(length: int, window: int, chunks: int, *, seed: int, step: int, index: int) -> Any:
    """PoSE position ids (int64 numpy array of `length`) of one sequence of the run."""
    return ids(*draw(length, window, chunks, generator(seed, step, index)))


def batch(length: int, window: int, chunks: int, *, seed: int, step: int, indices: list[int]) -> Any:
    """(len(indices), length) int64 tensor: the ids of the global-batch sequences `indices` of `step`."""
    import numpy as np
    import torch

    rows = [pose_ids(length, window, chunks, seed=seed, step=step, index=i) for i in indices]
    return torch.from_numpy(np.stack(rows))


def describe(positions: str, chunks: int, seq_len: int, window: int) -> dict | None:
    """settings.json's `pose` entry (None with plain ids)."""
    if positions != "pose":
        return None
    return {"chunks": int(chunks), "window": int(window), "seq_len": int(seq_len),
            "max_skip": int(window) - int(seq_len),
            "note": f"PoSE: {seq_len}-token sequences in {chunks} chunks whose position ids skip within the "
                    f"target window {window} (ids up to {window - 1}); evaluation keeps plain ids"}
