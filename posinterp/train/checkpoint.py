"""Training checkpoints: written whole or not at all, marked complete, and enough to resume exactly.

One checkpoint is a folder `step-00000100/` under the run's checkpoint folder:

| file                        | what                                                           | written by |
| --------------------------- | -------------------------------------------------------------- | ---------- |
| model.safetensors, config.json, tokenizer…, posinterp.json | the model as `extend` writes it (PI config incl. legacy keys) | rank 0 |
| trainable.safetensors       | with --lora: the trainable tensors (adapters, embeddings, norms) instead | rank 0 |
| optimizer.pt / optimizer/   | optimizer state (a sharded DCP folder under FSDP)              | rank 0 / all |
| scheduler.pt                | learning-rate scheduler state                                  | rank 0 |
| rng-<rank>.pt               | python, numpy, torch (and CUDA) generator states, per process  | every rank |
| state.json                  | step, data position, token count                               | rank 0 |
| settings.json               | the resolved run settings                                      | rank 0 |
| COMPLETE                    | written last, after the folder is renamed into place           | rank 0 |

Writing goes to `.step-00000100.tmp` (the same name on every rank), is fsynced, renamed into
place, then marked complete; a folder without the marker (a kill between rename and marker, a
partial copy) is skipped with a warning on resume. A folder *with* the marker whose files are
missing or unreadable (`damage`) is refused on resume, naming the folder: delete it to resume from
the previous complete checkpoint, or start over with --force (see `latest` for why it does not fall
back silently). Pickled files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from posinterp.atomic import replace_dir, write_json, write_text
from posinterp.errors import PosinterpError, cause

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STATE = "state.json"
SETTINGS = "settings.json"
TRAINABLE = "trainable.safetensors"
_NAME = re.compile(r"^step-(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def _tmp_dir(root: Path, step: int) -> Path:
    return Path(root) / f".step-{step:08d}.tmp"


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def scan(root: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(complete checkpoints sorted by step, incomplete step folders)."""
    root = Path(root)
    complete, incomplete = [], []
    if not root.is_dir():
        return complete, incomplete
    for path in root.iterdir():
        m = _NAME.match(path.name)
        if m and path.is_dir():
            (complete.append((int(m.group(1)), path)) if is_complete(path) else incomplete.append(path))
    return sorted(complete), sorted(incomplete)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones are skipped with a warning, a damaged one refused.

    A folder without the marker is what a kill while saving leaves, so it is skipped. A folder *with*
    the marker was fsynced whole before it was marked, so a missing or unreadable file in it means
    something else went wrong (a bad disk, a partial copy, a hand edit): resuming from the previous
    checkpoint silently would hide that, so the run stops and names the folder; deleting it resumes
    from the previous complete checkpoint.
    """
    complete, incomplete = scan(root)
    for path in incomplete:
        log.warning("warning: skipping incomplete checkpoint %s (no %s marker; interrupted while saving)", path, MARKER)
    if not complete:
        return None
    newest = complete[-1][1]
    problem = damage(newest)
    if problem:
        then = (f"delete that folder to resume from {complete[-2][1].name}" if len(complete) > 1 else
                "delete that folder to resume from step 0 (no earlier complete checkpoint)")
        raise PosinterpError(f"checkpoint {newest} is marked complete but damaged ({problem}); {then}, "
                             "or start over with --force instead of --resume")
    return newest


def damage(folder: Path) -> str | None:
    """What is missing or unreadable in a checkpoint folder, or None when every file is sound.

    Cheap checks, nothing is loaded: state.json and settings.json parse; config.json and the
    safetensors headers of the model (or trainable.safetensors with --lora) are intact
    (`refs.resolve`); optimizer.pt, scheduler.pt and rng-*.pt are whole zip archives (what
    `torch.save` writes), or the sharded optimizer folder (FSDP) has its .metadata.
    """
    import zipfile

    folder = Path(folder)
    try:
        state = read_state(folder)
        if not isinstance(state, dict) or not {"step", "tokens", "data"} <= set(state):
            return f"{STATE} lacks step, tokens or data"
        read_settings(folder)
    except FileNotFoundError as err:
        return f"{Path(err.filename).name} is missing"
    except (OSError, ValueError) as err:
        return f"{STATE} or {SETTINGS} is not readable JSON: {str(err).splitlines()[0]}"
    if (folder / TRAINABLE).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(folder / TRAINABLE), "pt"):
                pass
        except Exception as err:
            return f"{TRAINABLE} is damaged: {str(err).splitlines()[0]}"
    else:
        from posinterp.model import refs

        if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
            return "model.safetensors is missing"
        try:
            refs.resolve(folder)
        except PosinterpError as err:
            return str(err).split("; ")[0]
    pickles = [folder / "scheduler.pt", *sorted(folder.glob("rng-*.pt"))]
    if (folder / "optimizer").is_dir():  # FSDP: accelerate's torch.distributed.checkpoint folder optimizer_0/
        if not any((folder / "optimizer").glob("*/.metadata")) and not (folder / "optimizer" / ".metadata").is_file():
            return "optimizer/optimizer_0/.metadata is missing"
    else:
        pickles.insert(0, folder / "optimizer.pt")
    for path in pickles:
        if not path.is_file():
            return f"{path.name} is missing"
        try:
            with zipfile.ZipFile(path):
                pass
        except (OSError, zipfile.BadZipFile) as err:
            return f"{path.name} is truncated or damaged: {err}"
    return None


def read_state(folder: Path) -> dict:
    return json.loads((Path(folder) / STATE).read_text())


def read_settings(folder: Path) -> dict:
    path = Path(folder) / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else {}


# -- random generators ---------------------------------------------------------------------------
def rng_state() -> dict:
    """Every generator this process draws from, as tensors/ints (loadable with weights_only=True)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- model files -----------------------------------------------------------------------------------
class _WithStateDict:
    """A model whose `save_pretrained` writes a given (gathered) state dict, for `export.write_into`."""

    def __init__(self, model: Any, state_dict: dict) -> None:
        self._model, self._state_dict = model, state_dict

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def save_pretrained(self, folder: Any, **kwargs: Any) -> Any:
        return self._model.save_pretrained(folder, state_dict=self._state_dict, **kwargs)


def write_model(lm: Any, tokenizer: Any, folder: Path, provenance: dict, state_dict: dict | None = None) -> None:
    """A standard extended checkpoint (safetensors + PI config with legacy keys) into `folder`."""
    from posinterp.model.export import write_into

    write_into(lm if state_dict is None else _WithStateDict(lm, state_dict), tokenizer, folder, provenance)


def trainable_state(model: Any) -> dict:
    """Tensors of the parameters that train (LoRA adapters, embeddings, norms), by name."""
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, folder: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / TRAINABLE))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
    unknown = [n for n in saved if n not in params]
    if missing or unknown:
        raise RuntimeError(f"{folder / TRAINABLE} does not match the model: missing {missing[:3]}, unknown {unknown[:3]}")
    import torch

    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


# -- save / restore --------------------------------------------------------------------------------
def _mark_complete(folder: Path) -> None:
    write_text(Path(folder) / MARKER, "complete\n")
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(root: Path, step: int, *, accelerator: Any, model: Any, lm: Any, tokenizer: Any, optimizer: Any,
         scheduler: Any, state: dict, settings: dict, provenance: dict, lora: bool, keep: int) -> Path:
    """Write checkpoint `step` (collective: every process calls it) and prune to the last `keep`."""
    import torch
    from accelerate.utils import DistributedType

    root = Path(root)
    final, tmp = step_dir(root, step), _tmp_dir(root, step)
    main = accelerator.is_main_process
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    # gathering a sharded model/optimizer is collective: every rank takes part, rank 0 writes
    full = accelerator.get_state_dict(model) if fsdp else None
    if full is not None:
        full = {k.removeprefix("lm."): v for k, v in full.items()}
    if fsdp:
        from accelerate.utils import save_fsdp_optimizer

        save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(tmp / "optimizer"))
    if main:
        if lora:
            from safetensors.torch import save_file

            save_file(trainable_state(lm), str(tmp / TRAINABLE))
        else:
            write_model(lm, tokenizer, tmp, provenance, state_dict=full)
        if not fsdp:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        write_json(tmp / STATE, state)
        write_json(tmp / SETTINGS, settings)
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if main:
        if final.exists():  # an incomplete leftover of an earlier, killed save
            shutil.rmtree(final)
        replace_dir(tmp, final)
        _mark_complete(final)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; drop older ones, stale temporaries, old incomplete ones."""
    complete, incomplete = scan(root)
    if not complete:
        return
    newest = complete[-1][0]
    for _step, path in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for path in incomplete:
        if int(_NAME.match(path.name).group(1)) < newest:
            shutil.rmtree(path, ignore_errors=True)
    for path in Path(root).glob(".step-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


def restore(folder: Path, *, accelerator: Any, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Load optimizer, scheduler and this process's generators; returns state.json (weights load earlier)."""
    import torch
    from accelerate.utils import DistributedType

    folder = Path(folder)
    what = "optimizer"
    try:  # `latest` checked the files are whole; a failure here is damage inside one of them
        if accelerator.distributed_type == DistributedType.FSDP:
            from accelerate.utils import load_fsdp_optimizer

            load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(folder / "optimizer"))
        else:
            optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
        what = "scheduler.pt"
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        rng = folder / f"rng-{accelerator.process_index}.pt"
        what = rng.name
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        else:
            log.warning("warning: %s has no generator state for process %d (saved with fewer processes); "
                        "this process keeps its fresh seed", folder, accelerator.process_index)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, IndexError) as err:
        raise PosinterpError(f"checkpoint {folder}: {what} cannot be loaded ({cause(err)}); delete that folder to resume from "
                             "the previous checkpoint, or start over with --force instead of --resume") from None
    return read_state(folder)


def save_final(out: Path, *, accelerator: Any, model: Any, tokenizer: Any, lora: bool, provenance: dict,
               force: bool, extra_files: dict | None = None) -> None:
    """The trained model as a standard extended checkpoint in `out` (collective: every process calls it).

    A sharded (FSDP) model is gathered on every rank and written by rank 0; LoRA adapters are merged in.
    """
    from accelerate.utils import DistributedType

    from posinterp.model.export import save_checkpoint

    full = None
    if accelerator.distributed_type == DistributedType.FSDP:
        full = {k.removeprefix("lm."): v for k, v in accelerator.get_state_dict(model).items()}
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model).lm
        if lora:
            final = final.merge_and_unload()
        if full is not None:
            final = _WithStateDict(final, full)
        save_checkpoint(final, tokenizer, out, provenance, force=force, extra_files=extra_files)


def clear_run(root: Path) -> None:
    """Forget a run (`train --force`): its checkpoints, temporaries, metrics.jsonl and TensorBoard logs."""
    root = Path(root)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if _NAME.match(path.name) or path.name.startswith(".step-") or path.name == "tensorboard":
            shutil.rmtree(path, ignore_errors=True)
        elif path.name == "metrics.jsonl":
            path.unlink()
