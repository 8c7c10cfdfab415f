"""`train --positions pose` (PoSE): the ids' shape and range, exact under --resume and any batch split, chunks
that attend to each other, plain ids unchanged, evaluation on plain ids, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny

from posinterp.errors import PosinterpError
from posinterp.train import positions
from posinterp.train.config import TrainConfig
from posinterp.train.loop import micro_batches, train

TINY = dict(data="pydoc", seq_len=64, tensorboard=False, precision="fp32")
POSE = dict(positions="pose", rope="pi:2", lr=1e-3, warmup=2, **TINY)  # the tiny model's 256 → a 512 window


# -- the ids -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("length, window, chunks", [(2, 3, 2), (64, 512, 2), (64, 512, 3), (10, 11, 10),
                                                    (100, 4096, 5)])
def test_ids_start_at_zero_rise_in_n_contiguous_chunks_and_stay_below_the_window(length, window, chunks):
    for index in range(50):
        lengths, gaps = positions.draw(length, window, chunks, positions.generator(0, 1, index))
        assert len(lengths) == len(gaps) == chunks and min(lengths) >= 1 and sum(lengths) == length
        assert gaps[0] == 0 and min(gaps) >= 0
        ids = positions.pose_ids(length, window, chunks, seed=0, step=1, index=index)
        assert ids.dtype == np.int64 and ids.shape == (length,) and ids[0] == 0 and ids[-1] < window
        assert (np.diff(ids) >= 1).all()
        starts = np.cumsum([0, *lengths[:-1]])
        for start, n, gap in zip(starts, lengths, gaps, strict=True):
            chunk = ids[start:start + n]
            assert (np.diff(chunk) == 1).all()  # contiguous inside a chunk
            if start:
                assert chunk[0] == ids[start - 1] + 1 + gap  # the skip before it


def test_the_skips_cover_the_window_so_every_distance_is_trained():
    length, window = 4, 8
    draws = [positions.pose_ids(length, window, 2, seed=3, step=s, index=0) for s in range(200)]
    assert {int(d[-1]) for d in draws} == set(range(length - 1, window))  # total skip uniform on 0..W−T
    assert {int(d[0]) for d in draws} == {0}
    assert {len(positions.draw(length, window, 2, positions.generator(3, s, 0))[0]) for s in range(20)} == {2}


def test_the_generator_is_keyed_by_seed_step_and_place():
    same = positions.pose_ids(64, 4096, 2, seed=1, step=5, index=3)
    assert np.array_equal(same, positions.pose_ids(64, 4096, 2, seed=1, step=5, index=3))
    for other in (dict(seed=2, step=5, index=3), dict(seed=1, step=6, index=3), dict(seed=1, step=5, index=4)):
        assert not np.array_equal(same, positions.pose_ids(64, 4096, 2, **other))


def _micro_ids(tmp_path, batch_size, grad_accum, rank=0, world=1, step=7) -> list:
    cfg = TrainConfig("m", out=tmp_path / "o", positions="pose", pose_chunks=3, seq_len=16, seed=4,
                      batch_size=batch_size, grad_accum=grad_accum)
    everyone = [np.full(16, i, dtype=np.int32) for i in range(4)]
    batches, _ = micro_batches(cfg, everyone, rank, world, None, step=step, window=128)
    return [(int(ids[r, 0]), pos[r]) for ids, _, _, pos in batches for r in range(len(ids))]


def test_the_ids_do_not_depend_on_how_the_global_batch_is_split(tmp_path):
    """Every split of a global batch of 4 (processes × micro-batches × batch) gives each sequence the same ids."""
    one = dict(_micro_ids(tmp_path, 4, 1))
    assert sorted(one) == [0, 1, 2, 3]
    splits = [_micro_ids(tmp_path, 1, 4), _micro_ids(tmp_path, 2, 2),
              _micro_ids(tmp_path, 1, 2, rank=0, world=2) + _micro_ids(tmp_path, 1, 2, rank=1, world=2)]
    for split in splits:
        assert sorted(i for i, _ in split) == [0, 1, 2, 3]
        for i, pos in split:
            assert torch.equal(pos, one[i]), i
    assert not torch.equal(one[0], one[1])  # each sequence its own draw
    assert not torch.equal(dict(_micro_ids(tmp_path, 4, 1, step=8))[0], one[0])  # and each step


def test_plain_ids_are_none_and_the_loss_is_the_models_own():
    from posinterp.train import loss
    from posinterp.train.model_setup import _loss_module

    lm = make_tiny(window=256)
    module = _loss_module(lm, 2048)
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = module(ids)
        by_hand = loss.causal_lm_loss(lm.model(input_ids=ids, use_cache=False).last_hidden_state,
                                      lm.get_output_embeddings().weight, ids)  # the forward before PoSE existed
        counted = module(ids, position_ids=torch.arange(32).expand(2, 32))
    assert torch.equal(plain, by_hand) and torch.equal(plain, counted)


def test_the_chunks_attend_to_each_other():
    """A token of the first chunk changes the loss scored in the second: the chunks are one sequence, not two
    packed ones (which transformers would assume from the jump in the ids without the module's mask)."""
    from posinterp.data.sft import IGNORE_INDEX
    from posinterp.train.model_setup import _loss_module

    lm = make_tiny(window=256)
    module = _loss_module(lm, 2048)
    ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    lengths, gaps = positions.draw(32, 256, 2, positions.generator(0, 1, 0))
    assert lengths[0] < 31 and gaps[1] > 0
    pos = torch.from_numpy(positions.ids(lengths, gaps))[None]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, lengths[0] + 1:] = ids[:, lengths[0] + 1:]  # scored: predictions made inside the second chunk
    changed = ids.clone()
    changed[0, 0] += 1
    with torch.no_grad():
        assert module(ids, labels, position_ids=pos) != module(changed, labels, position_ids=pos)
        # the trap the mask avoids: the bare decoder, given only the ids, splits the chunks apart
        bare = [lm.model(input_ids=x, position_ids=pos, use_cache=False).last_hidden_state[0, -1] for x in (ids, changed)]
        assert torch.equal(*bare)


# -- training ------------------------------------------------------------------------------------------
@pytest.fixture
def seen(monkeypatch):
    """Every position-id row the model's rotary embedding receives, as (training?, row)."""
    from transformers.models.llama import modeling_llama

    rows: list = []
    original = modeling_llama.LlamaRotaryEmbedding.forward

    def forward(self, x, position_ids):
        rows.extend((torch.is_grad_enabled(), r.clone()) for r in position_ids.expand(x.shape[0], -1))
        return original(self, x, position_ids)

    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", forward)
    return rows


def _trained(rows: list) -> list:
    return [r for grad, r in rows if grad]


def _weights_equal(a, b) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_draws_the_same_ids_and_gives_bit_equal_weights(tiny_dir, tmp_path, seen):
    model = str(tiny_dir())
    ref = train(model, out=tmp_path / "ref", steps=4, **POSE)
    straight = _trained(seen)
    seen.clear()
    train(model, out=tmp_path / "part", steps=2, **POSE)
    out = train(model, out=tmp_path / "part", steps=4, resume=True, force=True, **POSE)
    resumed = _trained(seen)
    assert len(straight) == len(resumed) == 4
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    _weights_equal(ref, out)
    assert all(r[0] == 0 and r[-1] < 512 and (r.diff() >= 1).all() for r in straight)
    assert any(r[-1] > 63 for r in straight)  # the ids skip: positions beyond --seq-len are trained
    settings = json.loads((out / "settings.json").read_text())
    assert settings["positions"] == "pose" and settings["pose"]["window"] == 512 and settings["pose"]["chunks"] == 2
    assert json.loads((out / "posinterp.json").read_text())["training"]["pose"]["window"] == 512
    with pytest.raises(PosinterpError, match="--positions is 'plain'"):
        train(model, out=tmp_path / "part", steps=6, resume=True, force=True, **{**POSE, "positions": "plain"})
    with pytest.raises(PosinterpError, match="--pose-chunks is 3"):
        train(model, out=tmp_path / "part", steps=6, resume=True, force=True, **{**POSE, "pose_chunks": 3})


def test_a_run_does_not_depend_on_the_batch_split(tiny_dir, tmp_path, seen):
    model = str(tiny_dir())
    train(model, out=tmp_path / "one", steps=2, batch_size=2, grad_accum=1, **POSE)
    one = _trained(seen)
    seen.clear()
    train(model, out=tmp_path / "two", steps=2, batch_size=1, grad_accum=2, **POSE)
    two = _trained(seen)
    assert len(one) == len(two) == 4 and all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    losses = [[json.loads(line)["loss"] for line in (tmp_path / f"{n}-checkpoints" / "metrics.jsonl").read_text()
               .splitlines()] for n in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_plain_training_passes_no_ids(tiny_dir, tmp_path, seen):
    train(str(tiny_dir()), out=tmp_path / "plain", steps=1, **TINY)
    assert [r.tolist() for r in _trained(seen)] == [list(range(64))]
    assert json.loads((tmp_path / "plain" / "settings.json").read_text())["pose"] is None


def test_evaluation_keeps_plain_ids(tiny_dir, tmp_path, seen):
    train(str(tiny_dir()), out=tmp_path / "probed", steps=2, eval_every=2, eval_lengths="96", eval_trials=1,
          eval_ppl_data="pydoc", eval_ppl_tokens=128, eval_heads_length=0, **POSE)
    evaluated = [r for grad, r in seen if not grad]
    assert evaluated and all((r.diff() == 1).all() for r in evaluated if len(r) > 1)
    assert any((r.diff() > 1).any() for r in _trained(seen))


# -- refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(positions="pose", task="summarize"), "--positions pose trains --task lm only"),
    (dict(positions="pose", pose_chunks=1), "--pose-chunks 1 must be at least 2"),
    (dict(pose_chunks=0), "--pose-chunks 0 must be at least 2"),
    (dict(positions="pose", pose_chunks=5, seq_len=4), "--pose-chunks 5 exceeds --seq-len 4"),
    (dict(positions="skip"), "--positions 'skip' is not one of plain, pose"),
])
def test_bad_pose_settings_are_refused_in_one_line(tmp_path, kw, message):
    with pytest.raises(PosinterpError, match=message) as err:
        TrainConfig("m", out=tmp_path / "o", **kw)
    assert "\n" not in str(err.value)


def test_pose_at_the_full_window_is_refused_before_loading(tiny_dir, tmp_path):
    from posinterp.__main__ import main

    model = str(tiny_dir())
    for seq_len in (None, 256):  # --seq-len defaults to the window: nothing to skip
        kw = {k: v for k, v in {**TINY, "seq_len": seq_len}.items() if v is not None}
        with pytest.raises(PosinterpError, match="below the target window 256"):
            train(model, out=tmp_path / "o", positions="pose", **kw)
    with pytest.raises(PosinterpError, match="below the target window 512"):
        train(model, out=tmp_path / "o", positions="pose", rope="pi:2", **{**TINY, "seq_len": 512})
    assert main(["train", model, "--out", str(tmp_path / "o"), "--positions", "pose", "--pose-chunks", "3",
                 "--data", "pydoc"]) == 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "o-checkpoints").exists()
