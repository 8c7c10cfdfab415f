"""Pinned behaviour: the losses of a few training steps and the config `extend` writes for each method.

These values were recorded from the code before the set-up/train refactor (issue 15) and must not
move: a change here means the refactor changed what a user gets. One deliberate change since: the
legacy `rope_scaling` of linear and dynamic is exactly {type, factor}, which transformers 4.40–4.44
require (they refused the extra `rope_type` key; issue 16). fp32 throughout, so the figures do
not depend on the CPU's bf16 support (fp32 matmuls agree across CPUs to ~1e-6 relative).
"""

from __future__ import annotations

import json

import pytest

from posinterp import extend
from posinterp.train import train

LM_LOSSES = [10.76064395904541, 10.780533790588379, 10.787397384643555]
SUMMARIZE_LOSSES = [10.796072959899902, 10.790390014648438, 10.725687980651855]

WRITTEN = {
    "pi": {"max_position_embeddings": 512,
           "rope_parameters": {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "linear"},
           "rope_scaling": {"factor": 2.0, "type": "linear"}, "rope_theta": 10000.0},
    "ntk": {"max_position_embeddings": 512,
            "rope_parameters": {"rope_theta": 22081.790273476247, "rope_type": "default"},
            "rope_scaling": None, "rope_theta": 22081.790273476247},
    "dynamic": {"max_position_embeddings": 256,
                "rope_parameters": {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "dynamic"},
                "rope_scaling": {"factor": 2.0, "type": "dynamic"}, "rope_theta": 10000.0},
    "yarn": {"max_position_embeddings": 512,
             "rope_parameters": {"factor": 2.0, "original_max_position_embeddings": 256, "rope_theta": 10000.0,
                                 "rope_type": "yarn"},
             "rope_scaling": {"factor": 2.0, "original_max_position_embeddings": 256, "rope_type": "yarn",
                              "type": "yarn"}, "rope_theta": 10000.0},
    "llama3": {"max_position_embeddings": 512,
               "rope_parameters": {"factor": 2.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                   "original_max_position_embeddings": 256, "rope_theta": 10000.0, "rope_type": "llama3"},
               "rope_scaling": {"factor": 2.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                "original_max_position_embeddings": 256, "rope_type": "llama3", "type": "llama3"},
               "rope_theta": 10000.0},
}


def _losses(folder) -> list[float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("kind", "train") == "train"]


def _pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as fh:
        for i in range(4):
            fh.write(json.dumps({"report": (f"Document number {i} about python. ") * (5 + 3 * i),
                                 "summary": f"Short summary {i} of the text."}) + "\n")
    return path


def test_lm_losses_are_pinned(tiny_dir, tmp_path):
    train(str(tiny_dir(window=256)), out=tmp_path / "lm", steps=3, data="pydoc", seq_len=64, precision="fp32",
          tensorboard=False, lr=1e-3, grad_accum=2, batch_size=1)
    assert _losses(tmp_path / "lm-checkpoints") == pytest.approx(LM_LOSSES, rel=1e-5)


def test_summarize_losses_are_pinned(tiny_dir, tmp_path):
    train(str(tiny_dir(window=256)), out=tmp_path / "sum", steps=3, task="summarize", data=str(_pairs(tmp_path)),
          seq_len=128, max_summary_tokens=16, precision="fp32", tensorboard=False, lr=1e-3, batch_size=2)
    assert _losses(tmp_path / "sum-checkpoints") == pytest.approx(SUMMARIZE_LOSSES, rel=1e-5)


@pytest.mark.parametrize("method", sorted(WRITTEN))
def test_written_rope_config_is_pinned(tiny_dir, tmp_path, method):
    out = extend(str(tiny_dir(window=256)), factor=2, method=method, out=tmp_path / method)
    config = json.loads((out / "config.json").read_text())
    written = {k: config.get(k) for k in WRITTEN[method]}
    assert written == WRITTEN[method]
