"""A side environment with transformers 4.x and this environment's torch: do old readers load our checkpoints?

    python -m posinterp.compat_env                          # build it once (cached), print its python
    python -m posinterp.compat_env --transformers 4.57.6

The environment is a plain venv with `pip install torch==<this torch> transformers==<pinned>` (pip
takes torch from local disk when it lies there, so both sides run the same kernels). It lives under
`<cache>/side-envs/transformers-X-torch-Y-pyZ`, keyed by those versions, is built in a temporary
sibling and renamed into place (an interrupted build never looks finished), and is built by one
process at a time (a file lock). `probe` runs `read_checkpoints` in that interpreter.

This file is also the script the side interpreter runs (`python -I compat_env.py probe ...`), so the
top level imports only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

TRANSFORMERS4 = "4.57.6"
"""The transformers 4.x release checked (the last 4.x line; llama.cpp's converter pins it too)."""
READY = ".posinterp-ready"
PIP_TIMEOUT_S = 1800


class SideEnvUnavailable(RuntimeError):
    """pip could not install the side environment's packages (no network, no such release)."""


def _cache() -> Path:
    return Path(os.environ.get("POSINTERP_CACHE", Path.home() / ".cache" / "posinterp")).expanduser() / "side-envs"


def _torch_version() -> str:
    from importlib import metadata

    return metadata.version("torch")


def env_dir(transformers: str = TRANSFORMERS4, torch: str | None = None) -> Path:
    torch = torch or _torch_version()
    return _cache() / f"transformers-{transformers}-torch-{torch}-py{sys.version_info[0]}.{sys.version_info[1]}"


def _python(root: Path) -> Path:
    return root / "bin" / "python"


def side_env(transformers: str = TRANSFORMERS4, *, build: bool = True) -> Path:
    """The side environment's python, built once (72–90 s on this machine) and then reused."""
    root = env_dir(transformers)
    if (root / READY).is_file():
        return _python(root)
    if not build:
        raise SideEnvUnavailable(f"no side environment at {root}; build it with python -m posinterp.compat_env")
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then reuse its work
        if (root / READY).is_file():
            return _python(root)
        tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, text=True)
            specs = [f"torch=={_torch_version()}", f"transformers=={transformers}"]
            result = subprocess.run([str(_python(tmp)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                     *specs], capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            if result.returncode != 0:
                lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
                raise SideEnvUnavailable(f"pip could not install {' '.join(specs)}: "
                                         f"{lines[-1] if lines else 'exit ' + str(result.returncode)}")
            (tmp / READY).write_text(json.dumps({"packages": specs, "build_s": round(time.perf_counter() - started, 1)}))
            tmp.rename(root)  # a venv runs from its new place: bin/python finds pyvenv.cfg beside it
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _python(root)


def probe(python: Path | str, checkpoints: list[Path], ids: list[int], text: str, out: Path,
          timeout: float = 600) -> dict:
    """Run `read_checkpoints` in `python`; returns its report (logits saved under `out`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    request = out / "request.json"
    request.write_text(json.dumps({"checkpoints": [str(c) for c in checkpoints], "ids": list(ids), "text": text}))
    # -I: no script folder on sys.path (posinterp's own module names must not shadow a library's)
    result = subprocess.run([str(python), "-I", str(Path(__file__).resolve()), "probe", str(request), str(out)],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"the side interpreter failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return json.loads((out / "report.json").read_text())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else '-'}"


def read_checkpoints(request: Path, out: Path) -> None:
    """In the side interpreter: config, tokenizer and logits of each checkpoint, as that transformers sees them."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    spec = json.loads(Path(request).read_text())
    ids = torch.tensor([spec["ids"]])
    report: dict = {"transformers": transformers.__version__, "torch": torch.__version__, "checkpoints": []}
    for index, folder in enumerate(spec["checkpoints"]):
        entry: dict = {"folder": folder}
        try:
            config = AutoConfig.from_pretrained(folder)
            entry["config"] = {"model_type": config.model_type,
                               "max_position_embeddings": config.max_position_embeddings,
                               "rope_scaling": getattr(config, "rope_scaling", None),
                               "rope_theta": getattr(config, "rope_theta", None)}
        except Exception as err:
            entry["config_error"] = _first_line(err)
        try:
            tok = AutoTokenizer.from_pretrained(folder)
            entry["tokenizer"] = {"class": type(tok).__name__, "model_max_length": tok.model_max_length,
                                  "ids": tok(spec["text"])["input_ids"],
                                  "special": [tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token]}
            if getattr(tok, "chat_template", None):
                chat = [{"role": "user", "content": spec["text"]}]
                entry["tokenizer"]["chat"] = tok.apply_chat_template(chat, tokenize=False)
        except Exception as err:
            entry["tokenizer_error"] = _first_line(err)
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
            with torch.no_grad():
                logits = model(ids).logits[0].contiguous()
            path = Path(out) / f"logits-{index}.safetensors"
            save_file({"logits": logits}, str(path))
            entry["logits"] = str(path)
        except Exception as err:
            entry["model_error"] = _first_line(err)
        report["checkpoints"].append(entry)
    (Path(out) / "report.json").write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        read_checkpoints(Path(argv[1]), Path(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m posinterp.compat_env", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transformers", default=TRANSFORMERS4, help="the transformers 4.x release to install")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        python = side_env(args.transformers)
    except SideEnvUnavailable as err:  # not fatal for `make`: the tests that need it skip with this reason
        print(f"side environment not built: {err}")
        return 0
    print(f"side environment: {python} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
