"""The inventory of refusals: every verb, on bad input, prints one line, exits 2 and writes nothing.

One row per case (`CASES`): the row builds its inputs in a fresh folder, runs `posinterp.__main__.main(argv)`
and asserts three things: exactly one line `posinterp: error: ...` on stderr naming what was wrong (no
traceback), exit code 2, and nothing written (no file or folder added, changed or removed in the case's folder,
the cache or the shared inputs; the named --out does not appear). The rows cover paths of the wrong kind
(a file where a folder is wanted and the other way round, as flags and as recipe keys), a second run into a
complete output, bad values, a pickled checkpoint holding more than tensors, a corpus too short for one
sequence, $POSINTERP_CACHE naming a file, and the damaged downloads of tests/test_faults.py. At the end: SIGINT and
SIGTERM delivered mid-train and mid-eval to a subprocess leave one line, no traceback and no output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_faults import NAMES, TRAIN, _damage

from posinterp.__main__ import VERBS, main

ROOT = Path(__file__).resolve().parents[1]
EVAL = ["--dtype", "float32", "--device", "cpu"]  # no precision probe: the refusals stay fast


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smol_tokenizer) -> Path:
    """Shared, never written by a case: tiny (window 256) and sharded (test_faults' damage sources), extended
    (a complete `extend` output, also an extended model with posinterp.json), ft-checkpoints (2 saved steps)."""
    from conftest import make_tiny, save_tiny

    root = tmp_path_factory.mktemp("refusals")
    model = make_tiny(window=256)
    save_tiny(root / "tiny", smol_tokenizer, model=model)
    model.save_pretrained(root / "sharded", max_shard_size="1MB")
    smol_tokenizer.save_pretrained(root / "sharded")
    assert main(["extend", str(root / "tiny"), "--factor", "2", "--out", str(root / "extended")]) == 0
    assert main(["train", str(root / "tiny"), "--out", str(root / "ft"), "--steps", "2", "--save-every", "1",
                 "--keep", "2", *TRAIN]) == 0
    return root


@dataclass
class Ctx:
    """A case's folder (`tmp`) and the shared inputs; helpers make the bad paths inside `tmp`."""

    tmp: Path
    inputs: Path
    env: dict[str, str | None] = field(default_factory=dict)
    """environment variables the case sets (None: unset) once its inputs are built"""

    @property
    def model(self) -> str:
        return str(self.inputs / "tiny")

    @property
    def complete(self) -> str:
        """A complete output of an earlier run (extend's)."""
        return str(self.inputs / "extended")

    def out(self, name: str = "out") -> str:
        return str(self.tmp / name)

    def file(self, name: str = "a_file", data: str | bytes = "not a folder\n") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        return str(path)

    def folder(self, name: str = "a_folder") -> str:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return str(self.tmp / name)

    def inside_file(self) -> str:
        return self.file() + "/sub"

    def cache_is_a_file(self) -> None:
        """$POSINTERP_CACHE names a file (and no POSINTERP_GUTENBERG steers the corpus around the cache)."""
        self.env.update(POSINTERP_CACHE=self.file("cache"), POSINTERP_GUTENBERG=None)

    def pickled(self) -> str:
        """The tiny model with only a pytorch_model.bin whose pickle holds more than tensors."""
        import torch
        from safetensors.torch import load_file

        folder = shutil.copytree(self.inputs / "tiny", self.tmp / "pickled")
        state = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        torch.save({**state, "extra": NotATensor()}, folder / "pytorch_model.bin")
        return str(folder)

    def unknown_rope(self) -> str:
        """The tiny model whose config.json names a rope type transformers does not know."""
        folder = shutil.copytree(self.inputs / "tiny", self.tmp / "foo-rope")
        config = json.loads((folder / "config.json").read_text())
        config["rope_parameters"] = {**(config.get("rope_parameters") or {}), "rope_type": "foo"}
        (folder / "config.json").write_text(json.dumps(config))
        return str(folder)

    def recipe(self, **keys: object) -> str:
        """A tiny recipe with dotted keys changed (`train__lr="abc"`; None removes a key)."""
        data = {"name": "refusal", "model": self.model, "out": self.out("run"),
                "extend": {"factor": 2},
                "train": {"data": "pydoc", "seq_len": 32, "steps": 1, "precision": "fp32", "tensorboard": False},
                "eval": {"rows": ["pi"], "windows": [64], "ppl": {"data": "pydoc", "max_docs": 1, "stride": 32,
                                                                  "dtype": "float32"},
                         "passkey": {"trials": 1, "dtype": "float32"}}}
        for dotted, value in keys.items():
            *path, key = dotted.split("__")
            node = data
            for part in path:
                node = node[part]
            if value is None:
                node.pop(key)
            else:
                node[key] = value
        return self.file("recipe.yaml", yaml.safe_dump(data, sort_keys=False))


# -- the verbs' argv with defaults that pass: a case changes one thing ------------------------------------------
def extend(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["extend", model or c.model, "--factor", "2", "--out", out or c.out(), *extra]


def train(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["train", model or c.model, "--out", out or c.out(), "--steps", "1", *TRAIN, *extra]


def passkey(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["eval", "passkey", model or c.model, "--lengths", "160", "--trials", "1", *EVAL, "--out", out or c.out(),
            *extra]


def ppl(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["eval", "ppl", model or c.model, "--data", "pydoc", "--max-docs", "1", "--windows", "64", "--stride", "32",
            *EVAL, "--out", out or c.out(), *extra]


def original(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["eval", "original", model or c.complete, "--window", "64", "--checks", "ppl", "--data", "pydoc",
            "--ppl-docs", "1", *EVAL, "--out", out or c.out(), *extra]


def summarize(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["eval", "summarize", model or c.model, "--limit", "1", "--max-new-tokens", "16", *EVAL, "--out",
            out or c.out(), *extra]


def measure(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["theory", "measure", model or c.model, "--data", "pydoc", "--out", out or c.out(), *extra]


def heads(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["theory", "heads", model or c.model, "--length", "64", "--max-offset", "4", "--trials", "1", "--data",
            "pydoc", *EVAL, "--out", out or c.out(), *extra]


def ruler(c: Ctx, *extra: str, model: str | None = None, out: str | None = None) -> list[str]:
    return ["eval", "ruler", model or c.model, "--tasks", "fwe", "--lengths", "256", "--samples", "1", *EVAL,
            "--out", out or c.out(), *extra]


def compare(c: Ctx, *runs: str, out: str | None = None) -> list[str]:
    return ["eval", "compare", *runs, "--out", out or c.out()]


def export(c: Ctx, checkpoint: str | None = None, out: str | None = None) -> list[str]:
    return ["export", "gguf", checkpoint or c.complete, "--out", out or c.out("model.gguf")]


Build = Callable[[Ctx], list[str]]
CASES: list[tuple[str, str, Build, str]] = [
    # (verb, case, argv built in the case's folder, what the one line must say)
    ("extend", "--out is a file", lambda c: extend(c, out=c.file()), "is a file; give a folder"),
    ("extend", "source rope type unknown to transformers", lambda c: extend(c, model=c.unknown_rope()),
     "is 'foo', which transformers does not know (known: default"),
    ("extend", "--out inside a file", lambda c: extend(c, out=c.inside_file()), "which is a file"),
    ("extend", "--out is a complete output", lambda c: extend(c, out=c.complete), "exists and is not empty"),
    ("extend", "model is a file, not a .gguf", lambda c: extend(c, model=c.file("model.bin")),
     "is a file but not a .gguf"),
    ("extend", "model is missing", lambda c: extend(c, model=c.out("nope")), "not found"),
    ("extend", "model folder has no config.json", lambda c: extend(c, model=c.folder()), "no config.json"),
    ("extend", "no --factor", lambda c: ["extend", c.model, "--out", c.out()], "give --factor"),
    ("extend", "--factor 1", lambda c: extend(c, "--factor", "1"), "must be a finite number > 1"),
    ("extend", "--method none", lambda c: extend(c, "--method", "none"), "--method none"),
    ("extend", "pytorch_model.bin holds more than tensors", lambda c: extend(c, model=c.pickled()),
     "pytorch_model.bin: not a plain tensor file (torch weights_only refused it: "),
    ("extend", "--target-length inside the window", lambda c: ["extend", c.model, "--target-length", "128", "--out",
                                                               c.out()], "must be larger than the original window"),

    ("train", "--out is a file", lambda c: train(c, out=c.file()), "is a file; give a folder"),
    ("train", "--out inside a file", lambda c: train(c, out=c.inside_file()), "which is a file"),
    ("train", "--out is a complete output", lambda c: train(c, out=c.complete), "exists and is not empty"),
    ("train", "--checkpoint-dir is a file", lambda c: train(c, "--checkpoint-dir", c.file()),
     "--checkpoint-dir"),
    ("train", "--checkpoint-dir is a file, --resume", lambda c: train(c, "--checkpoint-dir", c.file(), "--resume"),
     "is a file; give a folder"),
    ("train", "--checkpoint-dir inside a file", lambda c: train(c, "--checkpoint-dir", c.inside_file()),
     "which is a file"),
    ("train", "--checkpoint-dir is --out", lambda c: train(c, "--checkpoint-dir", c.out()), "must differ from --out"),
    ("train", "--checkpoint-dir of another run, no --resume",
     lambda c: train(c, "--checkpoint-dir", str(c.inputs / "ft-checkpoints")), "already holds checkpoints"),
    ("train", "--resume from a damaged checkpoint", lambda c: train(c, "--checkpoint-dir", _damaged_checkpoints(c),
                                                                    "--resume"), "optimizer.pt is truncated"),
    ("train", "--eval-heads-reference is a folder without heads.json",
     lambda c: train(c, "--eval-heads-reference", c.folder()), "is a folder without heads.json"),
    ("train", "--eval-heads-reference is missing", lambda c: train(c, "--eval-heads-reference", c.out("h.json")),
     "does not exist"),
    ("train", "--data is missing", lambda c: train(c, "--data", c.out("none.txt")), "matches no file"),
    ("train", "--data is a folder with no text", lambda c: train(c, "--data", c.folder()),
     "holds no file of a readable type"),
    ("train", "--data is binary", lambda c: train(c, "--data", c.file("x.txt", b"\x00\x01" * 64)), "binary data"),
    ("train", "--seq-len beyond the window", lambda c: train(c, "--seq-len", "512"), "exceeds the model's window"),
    ("train", "--lr -1", lambda c: train(c, "--lr", "-1"), "--lr -1"),
    ("train", "model is a file", lambda c: train(c, model=c.file("w.safetensors")), "is a file but not a .gguf"),
    ("train", "--data shorter than one sequence", lambda c: train(c, "--data", c.file("short.txt", "a few words\n"),
                                                                 "--seq-len", "64"),
     "tokens (1 document, EOS included), fewer than the 64 one sequence needs (--seq-len 64)"),
    ("train", "POSINTERP_CACHE is a file", lambda c: c.cache_is_a_file() or train(c, "--data", "gutenberg"),
     "POSINTERP_CACHE"),
    ("train", "pytorch_model.bin holds more than tensors", lambda c: train(c, model=c.pickled()),
     "pytorch_model.bin: not a plain tensor file (torch weights_only refused it: "),

    ("eval passkey", "--out is a file", lambda c: passkey(c, out=c.file()), "is a file; give a folder"),
    ("eval passkey", "--out inside a file", lambda c: passkey(c, out=c.inside_file()), "which is a file"),
    ("eval passkey", "--out is a complete output", lambda c: passkey(c, out=c.complete), "exists and is not empty"),
    ("eval passkey", "model is a file", lambda c: passkey(c, model=c.file("m.pt")), "is a file but not a .gguf"),
    ("eval passkey", "--lengths beyond the window", lambda c: passkey(c, "--lengths", "1000"),
     "is beyond the window"),
    ("eval passkey", "--lengths not numbers", lambda c: passkey(c, "--lengths", "abc"), "not a list of token counts"),
    ("eval passkey", "--trials 0", lambda c: passkey(c, "--trials", "0"), "--trials 0"),

    ("eval ppl", "--out is a file", lambda c: ppl(c, out=c.file()), "is a file; give a folder"),
    ("eval ppl", "--out is a complete output", lambda c: ppl(c, out=c.complete), "exists and is not empty"),
    ("eval ppl", "--data is missing", lambda c: ppl(c, "--data", c.out("none")), "matches no file"),
    ("eval ppl", "--data is a folder with no text", lambda c: ppl(c, "--data", c.folder()),
     "holds no file of a readable type"),
    ("eval ppl", "--data is binary", lambda c: ppl(c, "--data", c.file("x.txt", b"\x00" * 64)), "binary data"),
    ("eval ppl", "--windows beyond the window", lambda c: ppl(c, "--windows", "1024"), "is beyond the window"),
    ("eval ppl", "--stride 0", lambda c: ppl(c, "--stride", "0"), "--stride"),
    ("eval ppl", "pytorch_model.bin holds more than tensors", lambda c: ppl(c, model=c.pickled()),
     "convert it to safetensors"),

    ("eval original", "--out is a file", lambda c: original(c, out=c.file()), "is a file; give a folder"),
    ("eval original", "--out is a complete output", lambda c: original(c, out=str(c.inputs / "ft")),
     "exists and is not empty"),
    ("eval original", "--baseline is a file", lambda c: original(c, "--baseline", c.file("b.bin")),
     "is a file but not a .gguf"),
    ("eval original", "--baseline is missing", lambda c: original(c, "--baseline", c.out("nope")), "not found"),
    ("eval original", "no --baseline and no posinterp.json", lambda c: original(c, model=c.model),
     "give --baseline MODEL"),
    ("eval original", "--data-dir is a file", lambda c: original(c, "--tasks", "boolq", "--data-dir", c.file()),
     "--data-dir"),
    ("eval original", "--data-dir is missing", lambda c: original(c, "--tasks", "boolq", "--data-dir", c.out("d")),
     "does not exist"),
    ("eval original", "--checks unknown", lambda c: original(c, "--checks", "rouge"), "unknown check"),
    ("eval original", "--data is missing", lambda c: original(c, "--data", c.out("none")), "matches no file"),

    ("eval summarize", "--out is a file", lambda c: summarize(c, out=c.file()), "is a file; give a folder"),
    ("eval summarize", "--out is a complete output", lambda c: summarize(c, out=c.complete), "exists and is not empty"),
    ("eval summarize", "model is a file", lambda c: summarize(c, model=c.file("m.bin")), "is a file but not a .gguf"),
    ("eval summarize", "--data is missing", lambda c: summarize(c, "--data", c.out("none.jsonl")), "none.jsonl"),
    ("eval summarize", "--temperature 0", lambda c: summarize(c, "--temperature", "0"), "--temperature 0"),
    ("eval ruler", "--tasks not a RULER task", lambda c: ruler(c, "--tasks", "niah_singel_1"), "did you mean niah_single_1"),
    ("eval ruler", "--lengths too short for a task", lambda c: ruler(c, "--tasks", "vt"), "too short for vt"),
    ("eval ruler", "--lengths beyond the window", lambda c: ruler(c, "--lengths", "1000"), "allow-beyond-window"),
    ("eval ruler", "--samples 0", lambda c: ruler(c, "--samples", "0"), "--samples 0"),
    ("eval ruler", "--reference not a ruler result", lambda c: ruler(c, "--reference", c.file("r.json", "{}")),
     "not an `eval ruler` result"),
    ("eval ruler", "--out is a file", lambda c: ruler(c, out=c.file()), "is a file; give a folder"),

    ("eval compare", "--out is a file", lambda c: compare(c, c.folder(), out=c.file()), "is a file; give a folder"),
    ("eval compare", "--out is a complete output", lambda c: compare(c, c.folder(), out=c.complete),
     "exists and is not empty"),
    ("eval compare", "a run is missing", lambda c: compare(c, c.out("nope")), "matches nothing"),
    ("eval compare", "a run folder has no results.json", lambda c: compare(c, c.folder()), "has no results.json"),
    ("eval compare", "results.json is not JSON", lambda c: compare(c, c.file("r/results.json", "{")), "cannot read"),
    ("eval compare", "results.json is binary", lambda c: compare(c, c.file("r/results.json", b"\xff\xfe\x00")),
     "cannot read"),
    ("eval compare", "results.json is a JSON list", lambda c: compare(c, c.file("r/results.json", "[1, 2]")),
     "not a passkey or perplexity result"),
    ("eval compare", "results.json of another verb", lambda c: compare(c, c.file("r/results.json",
                                                                                 '{"kind": "summarize"}')),
     "not a passkey or perplexity result"),

    ("theory bound", "--out is a folder", lambda c: ["theory", "bound", "--out", c.folder()],
     "is a folder; give a file"),
    ("theory bound", "--out inside a file", lambda c: ["theory", "bound", "--out", c.inside_file() + ".json"],
     "which is a file"),
    ("theory bound", "--head-dim odd", lambda c: ["theory", "bound", "--head-dim", "7"], "--head-dim 7"),
    ("theory bound", "--span 0", lambda c: ["theory", "bound", "--span", "0"], "--span 0"),

    ("theory figure2", "--out is a folder", lambda c: ["theory", "figure2", "--out", c.folder("f.png")],
     "is a folder; give a file"),
    ("theory figure2", "--out not a .png", lambda c: ["theory", "figure2", "--out", c.out("f.txt")],
     "must end in .png"),
    ("theory figure2", "--out inside a file", lambda c: ["theory", "figure2", "--out", c.inside_file() + ".png"],
     "which is a file"),
    ("theory figure2", "--extent 1", lambda c: ["theory", "figure2", "--extent", "1"], "--extent 1"),

    ("theory measure", "--out is a file", lambda c: measure(c, out=c.file()), "is a file; give a folder"),
    ("theory measure", "--out is a complete output", lambda c: measure(c, out=c.complete), "exists and is not empty"),
    ("theory measure", "model is a file", lambda c: measure(c, model=c.file("m.bin")), "is a file but not a .gguf"),
    ("theory measure", "--data is missing", lambda c: measure(c, "--data", c.out("none")), "matches no file"),
    ("theory measure", "--factor 1", lambda c: measure(c, "--factor", "1"), "must be a finite number > 1"),

    ("theory heads", "--out is a file", lambda c: heads(c, out=c.file()), "is a file; give a folder"),
    ("theory heads", "--out is a complete output", lambda c: heads(c, out=c.complete), "exists and is not empty"),
    ("theory heads", "--reference is a folder without heads.json", lambda c: heads(c, "--reference", c.folder()),
     "is a folder without heads.json"),
    ("theory heads", "--reference is missing", lambda c: heads(c, "--reference", c.out("h.json")), "does not exist"),
    ("theory heads", "--reference is not a heads.json", lambda c: heads(c, "--reference", c.file("h.json", "{}")),
     "is not a heads.json written by"),
    ("theory heads", "--length too short", lambda c: heads(c, "--length", "8"), "--length 8"),

    ("export gguf", "checkpoint is missing", lambda c: export(c, checkpoint=c.out("nope")), "does not exist"),
    ("export gguf", "checkpoint is a file", lambda c: export(c, checkpoint=c.file()), "is a file"),
    ("export gguf", "checkpoint has no config.json", lambda c: export(c, checkpoint=c.folder()), "no config.json"),
    ("export gguf", "--out is a folder", lambda c: export(c, out=c.folder()), "is a folder; give a file"),
    ("export gguf", "--out inside a file", lambda c: export(c, out=c.inside_file() + ".gguf"), "which is a file"),
    ("export gguf", "--out exists", lambda c: export(c, out=c.file("old.gguf")), "exists; choose another path"),

    ("run", "recipe is missing", lambda c: ["run", c.out("none.yaml")], "does not exist"),
    ("run", "recipe is a folder", lambda c: ["run", c.folder()], "is a folder; give a file"),
    ("run", "recipe is not YAML", lambda c: ["run", c.file("r.yaml", "a: [")], "is not valid YAML"),
    ("run", "unknown top-level key", lambda c: ["run", c.recipe(trian={"steps": 1})], "did you mean 'train'"),
    ("run", "out is a file", lambda c: ["run", c.recipe(out=c.file())], ": out "),
    ("run", "out inside a file", lambda c: ["run", c.recipe(out=c.inside_file())], "which is a file"),
    ("run", "extend.factor -1", lambda c: ["run", c.recipe(extend__factor=-1)], "extend.factor"),
    ("run", "train.lr is a word", lambda c: ["run", c.recipe(train__lr="abc")], "train.lr 'abc' must be a number"),
    ("run", "eval.rows unknown", lambda c: ["run", c.recipe(eval__rows=["pii"])], "eval.rows"),
    ("run", "train.out is the pipeline's", lambda c: ["run", c.recipe(train__out=c.out("x"))], "set by the pipeline"),
    ("run", "train.eval_heads_reference is a folder", lambda c: ["run", c.recipe(
        train__eval_heads_reference=c.folder())], "train.eval_heads_reference"),
    ("run", "eval.ppl.data is missing", lambda c: ["run", c.recipe(eval__ppl__data=c.out("none"))], "eval.ppl.data"),
    ("run", "train.data is missing", lambda c: ["run", c.recipe(train__data=c.out("none"), eval__rows=["pi_ft"])],
     "train.data"),
    ("run", "model is a file", lambda c: ["run", c.recipe(model=c.file("m.bin"))], "is a file but not a .gguf"),
    ("run", "override without a value", lambda c: ["run", c.recipe(), "--train.steps"], "has no value"),
    ("run", "eval.ruler key unknown", lambda c: ["run", c.recipe(eval__ruler={"tasks": "fwe", "samles": 1})],
     "unknown key 'eval.ruler.samles'; did you mean 'samples'"),
    ("run", "eval.summarize key unknown", lambda c: ["run", c.recipe(eval__summarize={"data": "pydoc-summaries",
                                                                                      "limt": 2})],
     "unknown key 'eval.summarize.limt'; did you mean 'limit'"),

    ("fetch", "unknown model", lambda c: ["fetch", "llama-9000"], "not a fetchable model"),
    ("fetch", "a near miss", lambda c: ["fetch", "qwen2.5-coder-1.5"], "did you mean"),
    ("fetch", "POSINTERP_CACHE is a file", lambda c: c.cache_is_a_file() or ["fetch", "qwen2.5-coder-1.5b"],
     "POSINTERP_CACHE"),
    ("fetch", "POSINTERP_CACHE inside a file", lambda c: c.env.update(POSINTERP_CACHE=c.inside_file())
     or ["fetch", "qwen2.5-coder-1.5b"], "which is a file"),
]

# test_faults' damaged downloads, each once here, the core verbs taking turns (there: every kind × every verb)
_ROTATION = {"extend": extend, "train": train, "eval ppl": ppl, "eval passkey": passkey}
for _i, _kind in enumerate(NAMES):
    _verb = list(_ROTATION)[_i % len(_ROTATION)]
    CASES.append((_verb, f"damaged model: {_kind}",
                  lambda c, k=_kind, f=_ROTATION[_verb]: f(c, model=str(_damage(k, c.inputs, c.tmp))), NAMES[_kind]))
for _verb, _build in (("eval original", original), ("eval summarize", summarize), ("theory measure", measure),
                      ("theory heads", heads)):
    CASES.append((_verb, "damaged model: truncated-safetensors",
                  lambda c, f=_build: f(c, model=str(_damage("truncated-safetensors", c.inputs, c.tmp))),
                  NAMES["truncated-safetensors"]))


class NotATensor:
    """What a pickled checkpoint may hold besides tensors (torch's weights_only refuses it)."""


def _damaged_checkpoints(c: Ctx) -> str:
    ckpts = shutil.copytree(c.inputs / "ft-checkpoints", c.tmp / "ft-checkpoints")
    os.truncate(ckpts / "step-00000002" / "optimizer.pt", 100)
    return str(ckpts)


def _tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under `root`: (is a folder, size, mtime) — what 'nothing written' compares."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def _out_of(argv: list[str]) -> str | None:
    return argv[argv.index("--out") + 1] if "--out" in argv else None


@pytest.fixture(autouse=True)
def _no_converter(monkeypatch):
    """export gguf refuses before llama.cpp's converter is fetched."""
    from posinterp.model import gguf

    monkeypatch.setattr(gguf, "converter", lambda *a, **k: pytest.fail("fetched the converter"))


@pytest.mark.parametrize(("verb", "build", "match"), [pytest.param(v, b, m, id=f"{v}: {case}")
                                                      for v, case, b, m in CASES])
def test_refused_in_one_line_with_exit_2_and_nothing_written(verb, build, match, inputs, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))  # a dense copy or a token cache would show
    c = Ctx(tmp_path / "case", inputs)
    c.tmp.mkdir()
    argv = build(c)
    for name, value in c.env.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    assert " ".join(argv[:len(verb.split())]) == verb
    out = _out_of(argv)
    out_existed = out is not None and Path(out).exists()
    before, shared = _tree(tmp_path), _tree(inputs)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and "\n" not in err and err.startswith("posinterp: error: "), err
    assert match in err, err
    assert _tree(tmp_path) == before and _tree(inputs) == shared  # nothing written, nothing removed
    assert out is None or out_existed or not Path(out).exists()


def test_the_inventory_covers_every_verb():
    per_verb = Counter(v for v, *_ in CASES)
    assert {" ".join(words) for words in VERBS} == set(per_verb), per_verb
    assert len(CASES) >= 60 and min(per_verb.values()) >= 2, per_verb


# -- interrupts: SIGINT and SIGTERM mid-train and mid-eval --------------------------------------------------------
def _env(tmp: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "POSINTERP_CACHE": str(tmp / "cache")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _interrupt(argv: list[str], tmp: Path, started: Callable[[str], bool], sig: int) -> tuple[int, str]:
    """Run `posinterp argv` in a subprocess, send `sig` once `started(stderr so far)` holds; (exit code, stderr)."""
    log = tmp / "stderr.txt"
    with open(log, "w") as err:
        # a suite started in the background (`make test &`) hands its children SIGINT ignored, and Python then keeps
        # it ignored; the child gets the default back, as from a terminal, so Ctrl-C is what is tested
        proc = subprocess.Popen([sys.executable, "-m", "posinterp", *argv], env=_env(tmp), cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 240
            while not started(log.read_text()):
                assert proc.poll() is None, f"finished before the signal: {log.read_text()[-2000:]}"
                assert time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, log.read_text()


EXIT = {signal.SIGINT: (130, "posinterp: interrupted"), signal.SIGTERM: (143, "posinterp: terminated")}


def _one_clean_line(code: int, err: str, sig: int) -> None:
    """The signal's exit code; its one `posinterp:` line last on stderr; no traceback, no error line."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == EXIT[sig][0], err[-2000:]
    assert "Traceback" not in err and [ln for ln in lines if ln.startswith("posinterp:")] == [EXIT[sig][1]], err[-2000:]
    assert lines[-1] == EXIT[sig][1], err[-2000:]


def _no_output(out: Path) -> None:
    assert not out.exists(), f"{out} was written"
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())  # no temporary folder left


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_train_saves_a_checkpoint_and_writes_no_output(sig, inputs, tmp_path):
    from posinterp.train import checkpoint

    out = tmp_path / "ft"
    metrics = tmp_path / "ft-checkpoints" / "metrics.jsonl"
    argv = ["train", str(inputs / "tiny"), "--out", str(out), "--steps", "2000", "--save-every", "0", *TRAIN]
    code, err = _interrupt(argv, tmp_path, lambda _: metrics.is_file() and bool(metrics.read_text().strip()), sig)
    _one_clean_line(code, err, sig)
    _no_output(out)
    assert "continue with --resume" in err and checkpoint.latest(tmp_path / "ft-checkpoints") is not None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("verb", ["passkey", "original"])
def test_a_signal_mid_eval_leaves_no_output(verb, sig, inputs, tmp_path):
    """Mid-trial, after the first passkey prompt; eval original holds its temporary --out folder by then."""
    out = tmp_path / "out"
    argv = {"passkey": ["eval", "passkey", str(inputs / "tiny"), "--lengths", "140:256:8", "--trials", "100"],
            "original": ["eval", "original", str(inputs / "extended"), "--window", "128", "--checks", "passkey",
                         "--passkey-trials", "1000"]}[verb] + [*EVAL, "--out", str(out)]
    code, err = _interrupt(argv, tmp_path, lambda text: "passkey 1/" in text, sig)
    _one_clean_line(code, err, sig)
    _no_output(out)


def test_the_inputs_are_sound(inputs, tmp_path, capsys):
    """The shared inputs pass where the cases fail: the refusals are about the one thing each case changes."""
    prov = json.loads((inputs / "extended" / "posinterp.json").read_text())
    assert prov["factor"] == 2 and Path(prov["source"]) == inputs / "tiny"
    assert main(["run", Ctx(tmp_path, inputs).recipe(), "--dry-run"]) == 0, capsys.readouterr().err
