"""llama.cpp runs an exported GGUF as posinterp runs the checkpoint: `llama-perplexity` against `posinterp eval ppl`
on the same tokens, window and stride (issue 16, item 3's slow check; not in CI: the build takes minutes).

    .venv/bin/python experiments/llama_cpp_perplexity.py --out docs/results/readers/llama_cpp_ppl.json

1. **llama.cpp**: the pinned llama-cpp-python sdist (`posinterp.model.gguf.LLAMA_CPP_SDIST`, fetched with
   `pip download --no-deps`) is unpacked whole under `<cache>/llama.cpp/src-<version>` and only the
   `llama-perplexity` tool is built with CMake under `<cache>/llama.cpp/build-<version>` (once; `--binary`
   uses one you have).
2. **The checkpoints**: the embedded SmolLM2-135M as it is (`none`), and `posinterp extend` with `pi:2` and
   `yarn:2`, each exported with `posinterp export gguf --outtype f32` (the weights as they are).
3. **The text**: the first `--tokens` tokens of the held-out Gutenberg book (posinterp's `test` split), written
   to a .txt file that re-tokenizes to exactly that many tokens; both tools read that file.
4. **The same tokens scored**: `llama-perplexity --ppl-stride S` scores, in chunks of W tokens starting every
   S, the last S tokens of each chunk, so tokens [W − S, N − S). `posinterp eval ppl --windows W --stride S`
   scores every token; its NLL over [W − S, N − S) is its sum at `--max-tokens N − S` minus its sum at
   `--max-tokens W − S` (causal windows starting at multiples of S score a prefix the same way). Both run
   in fp32 on the CPU.

Writes one row per (checkpoint, window): both perplexities, the relative difference, the token counts and
the GGUF's rope keys. A reader that ignored the rope scaling would show PI's 0-step perplexity at the
original model's (they differ by ~2.4× at 2048 tokens).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("none", "pi:2", "yarn:2")
TOLERANCE = 0.005
"""Relative perplexity difference accepted as the same reading (fp32 both sides; summation order differs)."""


def source(version: str) -> Path:
    """vendor/llama.cpp of the pinned sdist, unpacked whole (the converter's cache keeps only its own files)."""
    from posinterp.atomic import atomic_dir
    from posinterp.cache import cache_dir
    from posinterp.model.gguf import fetch_sdist, unpack

    target = cache_dir() / "llama.cpp" / f"src-{version}"
    if (target / "CMakeLists.txt").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as download:
        archive = fetch_sdist(Path(download))
        with atomic_dir(target, force=True) as tmp:
            unpack(archive, tmp)
    return target


def build(version: str, jobs: int) -> tuple[Path, float | None]:
    """llama-perplexity and llama-tokenize, built once (CPU only, no network code); the seconds it took, or None."""
    from posinterp.cache import cache_dir

    src = source(version)
    out = cache_dir() / "llama.cpp" / f"build-{version}"
    binary = out / "bin" / "llama-perplexity"
    if binary.is_file() and (out / "bin" / "llama-tokenize").is_file():
        return binary, None
    t0 = time.time()
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_NATIVE=ON"]
    subprocess.run(["cmake", "-S", str(src), "-B", str(out), "-G", "Ninja", *flags], check=True)
    subprocess.run(["cmake", "--build", str(out), "--target", "llama-perplexity", "llama-tokenize", "-j", str(jobs)],
                   check=True)
    return binary, round(time.time() - t0, 1)


def same_token_ids(binary: Path, gguf: Path, text: Path, model: str) -> dict:
    """llama.cpp's tokenizer (llama-tokenize, built beside llama-perplexity) against transformers' on the file."""
    import ast

    from posinterp.model.refs import load_tokenizer, resolve

    tool = binary.with_name("llama-tokenize")
    r = subprocess.run([str(tool), "-m", str(gguf), "-f", str(text), "--ids", "--log-disable"],
                       capture_output=True, text=True)
    theirs = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    ours = list(load_tokenizer(resolve(model))(text.read_text())["input_ids"])
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    return {"transformers": len(ours), "llama_tokenize": len(theirs), "identical": ours == theirs,
            "first_difference": first}


def held_out_text(model: str, tokens: int, path: Path) -> int:
    """`tokens` tokens of the held-out book, from the start or a few tokens in, as text that re-tokenizes to exactly
    that many and does not end in a newline (llama-perplexity drops a file's final newline when it reads -f:
    common/arg.cpp). Returns the offset."""
    from posinterp.data.corpus import load_documents
    from posinterp.model.refs import load_tokenizer, resolve

    tok = load_tokenizer(resolve(model))
    doc = load_documents("gutenberg", split="test", limit=1)[0]
    ids = tok(doc.text[: tokens * 8], add_special_tokens=False)["input_ids"]
    for start in range(64):  # the first cut that qualifies, starting 0, 1, … tokens into the book
        text = tok.decode(ids[start:start + tokens])
        if not text.endswith("\n") and len(tok(text, add_special_tokens=False)["input_ids"]) == tokens:
            path.write_text(text)
            return start
    raise SystemExit(f"no cut of the held-out book re-tokenizes to {tokens} tokens")


def llama_ppl(binary: Path, gguf: Path, text: Path, window: int, stride: int, threads: int) -> dict:
    """`llama-perplexity --ppl-stride`: it widens -c by stride/2, so -c is window − stride/2."""
    cmd = [str(binary), "-m", str(gguf), "-f", str(text), "-c", str(window - stride // 2), "--ppl-stride",
           str(stride), "-b", str(window), "-t", str(threads), "--no-warmup"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    log = r.stdout + r.stderr
    found = re.findall(r"\[(\d+)\]([0-9.]+),", log)
    have = re.search(r"have (\d+) tokens", log)
    if r.returncode != 0 or not found:
        raise SystemExit(f"llama-perplexity failed ({r.returncode}):\n{log[-3000:]}")
    chunks, ppl = int(found[-1][0]), float(found[-1][1])
    return {"perplexity": ppl, "chunks": chunks, "tokens_scored": chunks * stride,
            "tokens_in_file": int(have.group(1)) if have else None, "seconds": round(time.time() - t0, 1),
            "command": " ".join(Path(c).name if c.startswith("/") else c for c in cmd)}


def posinterp_ppl(checkpoint: Path, text: Path, window: int, stride: int, tokens: int) -> dict:
    """`eval ppl`'s NLL over [window − stride, tokens − stride), the tokens llama-perplexity scores."""
    import math

    from posinterp.evals.perplexity import perplexity

    t0 = time.time()
    parts = []
    for limit in (tokens - stride, window - stride):
        r = perplexity(str(checkpoint), data=str(text), windows=str(window), stride=str(stride), dtype="float32",
                       max_tokens=limit, allow_beyond_window=False)
        w = r["windows"][0]
        parts.append((w["nll_sum"], w["tokens_scored"], r["config"]["dtype"]))
    nll, n = parts[0][0] - parts[1][0], parts[0][1] - parts[1][1]
    return {"perplexity": math.exp(nll / n), "tokens_scored": n, "dtype": parts[0][2],
            "whole_file_scored": parts[0][1], "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--windows", default="2048", help="comma-separated; beyond the model's window for the extended methods only")
    p.add_argument("--tokens", type=int, default=16384, help="tokens of held-out text (N ≥ 2 × the largest window)")
    p.add_argument("--methods", default=",".join(METHODS), help="of " + ", ".join(METHODS))
    p.add_argument("--runs", default="/work/exp/llamacpp-runs", help="checkpoints, GGUFs, the text")
    p.add_argument("--binary", default="", help="a llama-perplexity you built (default: build the pinned one)")
    p.add_argument("--out", default="docs/results/readers/llama_cpp_ppl.json")
    args = p.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",")]
    if args.tokens < 2 * max(windows):  # llama-perplexity --ppl-stride refuses fewer
        p.error(f"--tokens {args.tokens}: llama-perplexity needs at least 2 × the window ({2 * max(windows)})")
    methods = args.methods.split(",")
    if not set(methods) <= set(METHODS):
        p.error(f"--methods {args.methods}: choose from {', '.join(METHODS)}")

    from posinterp.atomic import write_json
    from posinterp.cache import cache_dir
    from posinterp.model.extend import extend
    from posinterp.model.facts import load_config, original_window
    from posinterp.model.gguf import LLAMA_CPP_VERSION, export_gguf, read_keys
    from posinterp.model.refs import dense, resolve

    threads = len(os.sched_getaffinity(0))
    binary, build_s = (Path(args.binary), None) if args.binary else build(LLAMA_CPP_VERSION, threads)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    text = runs / f"held-out-{args.tokens}-v2.txt"  # v2: no final newline
    offset = held_out_text(args.model, args.tokens, text)
    ref = dense(resolve(args.model))  # the embedded GGUF as the safetensors folder extend starts from
    original, trained = ref.folder, original_window(load_config(ref))
    rows, tokens_check = [], None
    for method in methods:
        name = method.replace(":", "")
        ckpt = original if method == "none" else runs / name
        if method != "none" and not (ckpt / "config.json").is_file():
            m, f = method.split(":")
            extend(args.model, method=m, factor=float(f), out=ckpt, force=True)  # weights saved as loaded
        gguf = runs / f"{name}.gguf"
        if not gguf.is_file():
            export_gguf(ckpt, out=gguf, outtype="f32")
        keys = {k: v for k, v in read_keys(gguf).items() if "rope" in k or "context" in k}
        tokens_check = tokens_check or same_token_ids(binary, gguf, text, args.model)
        for window in windows:
            if method == "none" and window > trained:
                continue
            stride = window // 2
            ours = posinterp_ppl(ckpt, text, window, stride, args.tokens)
            theirs = llama_ppl(binary, gguf, text, window, stride, threads)
            rel = theirs["perplexity"] / ours["perplexity"] - 1
            row = {"method": method, "window": window, "stride": stride, "posinterp": ours, "llama_cpp": theirs,
                   "relative_difference": rel, "agree": abs(rel) <= TOLERANCE,
                   "gguf_keys": keys}
            rows.append(row)
            print(f"{method:7s} W={window:6d}: posinterp {ours['perplexity']:.4f} ({ours['tokens_scored']} tokens), "
                  f"llama.cpp {theirs['perplexity']:.4f} ({theirs['tokens_scored']} tokens): {rel:+.3%}", flush=True)
    import torch

    result = {"command": "experiments/llama_cpp_perplexity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "llama_cpp": {"sdist": f"llama-cpp-python=={LLAMA_CPP_VERSION}", "binary": str(binary.relative_to(
                  cache_dir())) if binary.is_relative_to(cache_dir()) else str(binary), "build_s": build_s},
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                          "torch": torch.__version__},
              "text": {"source": "gutenberg test split, first document", "tokens": args.tokens, "offset": offset,
                       "token_ids": tokens_check},
              "tolerance": TOLERANCE, "rows": rows, "all_agree": all(r["agree"] for r in rows)}
    write_json(Path(args.out), result)
    print(f"wrote {args.out}: {'all agree' if result['all_agree'] else 'DISAGREE'} within {TOLERANCE:.1%}")


if __name__ == "__main__":
    main()
