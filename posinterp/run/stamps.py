"""What made each stage's output, and whether it still matches the plan: `stage.json`, the stage's stamp.

A stage writes `stage.json` into its output folder when it completes (atomically, after the verb returns):

    {"stage": "train (PI)",
     "settings": {"steps": 18, "lr": 0.001, "data": "mix", ...},   the config fields that change the result
     "inputs": {"extend": "<its fingerprint>",                      an upstream stage's output it reads, or
                "model": {"source": ..., "files": "<digest>"},       the recipe's model (file names, sizes, times)
                "data files": "<digest>"},                           files named by data / eval_ppl_data
     "versions": {"posinterp": ..., "torch": ..., "transformers": ...},
     "fingerprint": "<sha256 of settings, inputs and versions>"}

The plan's stamps are computed before anything runs, in stage order, each with the fingerprints of the
stamps upstream of it: a hash chain, so a changed upstream stage changes every stage below it. A stage is
done when its stored fingerprint is the planned one; otherwise it reruns, and `Status.line` says why in one
line, naming the first differing keys (`steps 18 → 20, rerunning`). An output without `stage.json` was
made by an earlier posinterp and reruns too.

A fine-tune also stamps its checkpoint folder when it starts (the run its checkpoints belong to). It
continues from its newest checkpoint when that stamp is the planned one (a killed run), or differs only in
more `steps` with the constant schedule (a grown run, e.g. a larger `--budget`): those steps then continue
exactly as an uninterrupted run of the new length would. Any other change starts it over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.atomic import write_json
from posinterp.errors import PosinterpError

STAMP = "stage.json"
BOOKKEEPING = frozenset({"out", "force", "resume", "checkpoint_dir", "save_every", "keep", "tensorboard"})
"""Config fields that say where and how often things are written, not what is computed."""
DATA_KEYS = ("data", "eval_ppl_data")
"""Config fields naming text whose files are fingerprinted (a built-in corpus name names no files)."""
SHOWN = 3
"""Differences named in a rerun's line."""


@dataclass(frozen=True)
class Status:
    """What `run` does with a stage: `done`, `to run` (no output yet), `rerun` or `resume` (a fine-tune
    continuing from its step-`from_step` checkpoint)."""

    kind: str
    why: str = ""
    from_step: int = 0

    @property
    def runs(self) -> bool:
        return self.kind != "done"

    def line(self) -> str:
        """The status in words: 'done', 'steps 18 → 20, rerunning', 'steps 18 → 20, training on from step 18'."""
        if self.kind == "resume":
            return f"{self.why}, training on from step {self.from_step}" if self.why else \
                f"continuing the interrupted fine-tune from step {self.from_step}"
        if self.kind == "rerun":
            return f"{self.why}, rerunning"
        return self.kind


def settings(config: Any) -> dict:
    """The config's fields that change the result, as JSON values (what a stored stamp reads back as)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in BOOKKEEPING}
    return json.loads(json.dumps(fields, default=str))


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _files_digest(paths: list[Path], root: Path | None = None) -> str:
    rows = []
    for p in sorted(paths):
        st = p.stat()
        rows.append([str(p.relative_to(root)) if root else str(p), st.st_size, st.st_mtime_ns])
    return digest(rows)


def model_identity(model: str) -> dict:
    """The recipe's model as found here: where it resolves and its files' names, sizes and modification times
    (cheap: no weights are read; a re-downloaded model counts as changed)."""
    from posinterp.model import refs

    try:
        ref = refs.resolve(model)
    except PosinterpError as err:  # the plan refuses such a model before any stage; a stamp just records it
        return {"source": model, "unresolved": str(err)}
    if ref.gguf_file:
        files, root = [ref.folder / ref.gguf_file], ref.folder
    else:
        root = ref.folder
        files = [p for p in root.rglob("*") if p.is_file() and p.name != STAMP
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return {"source": ref.source, "files": _files_digest(files, root)}


def data_identity(spec: str) -> str | None:
    """A digest of the files a data spec names (folders, files, globs; comma-separated), or None when it names
    none (a built-in corpus)."""
    from posinterp.data.files import expand

    found: list[Path] = []
    for part in str(spec).split(","):
        path = Path(part.strip()).expanduser()
        if path.is_dir():  # every file: a saved dataset's .arrow files count too
            found += [p for p in path.rglob("*") if p.is_file()
                      and not any(x.startswith(".") for x in p.relative_to(path).parts)]
        elif part.strip():
            found += expand(part.strip())
    return _files_digest(found) if found else None


def planned(stages: list) -> dict[str, dict]:
    """The stamp each stage will write, by stage name, in plan order (upstream fingerprints chained in)."""
    from posinterp.versions import result_versions

    versions, produced, out = result_versions(), {}, {}
    models: dict[str, dict] = {}
    for s in stages:
        inputs: dict[str, Any] = {}
        model = getattr(s.config, "model", None)
        if model is not None:
            if str(model) in produced:
                upstream = produced[str(model)]
                inputs[upstream] = out[upstream]["fingerprint"]
            else:
                if str(model) not in models:
                    models[str(model)] = model_identity(str(model))
                inputs["model"] = models[str(model)]
        for key in DATA_KEYS:
            value = getattr(s.config, key, None)
            if value and (found := data_identity(value)) is not None:
                inputs[f"{key} files"] = found
        stamp = {"stage": s.name, "settings": settings(s.config), "inputs": inputs, "versions": versions}
        stamp["fingerprint"] = digest({k: stamp[k] for k in ("settings", "inputs", "versions")})
        out[s.name] = stamp
        produced[str(s.output)] = s.name
    return out


def read(path: Path) -> dict | None:
    """A stored stamp, or None when absent or unreadable (a torn or hand-edited file reruns its stage)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "fingerprint" in data else None


def write(folder: Path, stamp: dict) -> None:
    write_json(Path(folder) / STAMP, stamp)


_MISSING = object()


def _value(v: Any) -> str:
    return "unset" if v is _MISSING else "none" if v is None else str(v)


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two stamps, in words: settings first (`steps 18 → 20`), then inputs
    (`train (PI) changed`), then versions (`torch 2.5.1 → 2.6.0`)."""
    out = []
    before, after = old.get("settings", {}), new["settings"]
    for key in [*after, *(k for k in before if k not in after)]:
        a, b = before.get(key, _MISSING), after.get(key, _MISSING)
        if a != b:
            out.append(f"{key} {_value(a)} → {_value(b)}")
    before, after = old.get("inputs", {}), new["inputs"]
    for key in [*after, *(k for k in before if k not in after)]:
        if before.get(key) != after.get(key):
            out.append("model files changed" if key == "model" else f"{key} changed")
    before, after = old.get("versions", {}), new["versions"]
    out += [f"{k} {before.get(k, 'unknown')} → {after[k]}" for k in after if before.get(k) != after[k]]
    return out or ["stamp differs"]


def _said(diffs: list[str]) -> str:
    more = len(diffs) - SHOWN
    return ", ".join(diffs[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def status(stage: Any, want: dict, force: bool = False) -> Status:
    """Whether `stage` is done, and if not, why it reruns or where it resumes."""
    out = Path(stage.output)
    if force:
        return Status("rerun", "--force")
    stored = read(out / STAMP)
    if stored is not None and stored["fingerprint"] == want["fingerprint"]:
        return Status("done")
    if stored is not None:
        why = _said(differences(stored, want))
    elif out.is_dir() and any(out.iterdir()):
        why = f"{out} has no {STAMP} (an earlier posinterp made it)"
    else:
        why = ""
    if getattr(stage.config, "checkpoint_dir", None) is not None:
        return _fine_tune(stage, want, why)
    return Status("rerun", why) if why else Status("to run")


def _fine_tune(stage: Any, want: dict, why: str) -> Status:
    """A fine-tune that is not done: resume its checkpoints when they are of this run, or of a shorter one
    that more steps continue exactly (constant schedule); else start over."""
    from posinterp.train import checkpoint

    folder = Path(stage.config.checkpoint_dir)
    saved, steps = read(folder / STAMP), [n for n, _ in checkpoint.scan(folder)[0]]
    if not steps:
        return Status("rerun", why) if why else Status("to run")
    if saved is None:
        return Status("rerun", why or f"{folder} has no {STAMP} (an earlier posinterp made its checkpoints)")
    newest, diffs = steps[-1], differences(saved, want) if saved["fingerprint"] != want["fingerprint"] else []
    why = why or _said(diffs)
    if diffs and not all(d.startswith("steps ") for d in diffs):
        return Status("rerun", why)
    if diffs and want["settings"].get("schedule") != "constant":  # LambdaLR restores its total steps
        return Status("rerun", f"{why} (a cosine schedule depends on the steps: starting over)")
    if newest > int(want["settings"]["steps"]):
        return Status("rerun", f"{why} (its newest checkpoint, step {newest}, is past that: starting over)")
    return Status("resume", why, newest)


def statuses(stages: list, force: bool = False, stamps: dict[str, dict] | None = None) -> dict[str, Status]:
    """Every stage's `Status`, by name."""
    stamps = stamps if stamps is not None else planned(stages)
    return {s.name: status(s, stamps[s.name], force) for s in stages}


def start_fine_tune(stage: Any, stamp: dict, st: Status) -> Any:
    """Before a fine-tune runs: forget checkpoints it does not continue, then stamp its checkpoint folder
    with this run (so a kill resumes it); returns the config it runs with."""
    from posinterp.train import checkpoint

    folder = Path(stage.config.checkpoint_dir)
    if st.kind != "resume":
        checkpoint.clear_run(folder)
    write(folder, stamp)
    return dataclasses.replace(stage.config, force=True, resume=st.kind == "resume")
