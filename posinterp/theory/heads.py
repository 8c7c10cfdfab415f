"""The `theory heads` verb: where each attention head looks, by relative offset, and which heads copy.

    flock /tmp/posinterp-cpu.lock posinterp theory heads smollm2-135m --length 2048 --out runs/heads/none
    flock /tmp/posinterp-cpu.lock posinterp theory heads smollm2-135m --rope pi:2 \
        --reference runs/heads/none/heads.json --out runs/heads/pi2

Why. PI ×s divides every position by s, so the rotation a head saw at offset 1 during training is the
rotation at offset s afterwards. A head that finds "one token back" by that rotation would then look
s tokens back; a copy circuit built on it would continue a copied key from the digit after next
(the hypothesis of issue 13 for answers like 52537 → 5557). This verb measures it.

Method. The model is loaded with eager attention (`--rope` applied to its config on the fly, as the
evals do) and forward hooks on the attention modules reduce each layer's (heads, T, T) weights as the
pass goes, so memory stays one layer's T² per head. Three probes of exactly `--length` tokens:

- text: the first `--length` tokens of `--data` (held-out Gutenberg: hamlet first);
- passkey: `--trials` prompts of `posinterp.evals.passkey` (keys at depths spread over 0..1), each
  followed by its correct answer (" 52537" is ' ', '5', '2', … in SmolLM2), teacher-forced;
- repeat: random tokens r_0 … r_{n−1} twice (n = length // 2, seeded).

Per head: the attention mass at relative offsets 0..K (`--max-offset`), on the first key (the
"sink", when it is farther than K) and on everything else (tail), averaged over the queries i > K,
on text and on passkey prompts; the peak offset is the argmax over 0..K. On the repeat probe, queries
in the second copy at position n + j give the standard induction score, attention on j + 1 (the token
after the earlier occurrence of the current token), with the duplicate-token score (on j) and the
skip score (on j + 2, the token after next) beside it. On the passkey prompts, the queries whose next
token is a key digit give the same three scores against the key's earlier occurrences in the prompt
(the key appears twice): copy (the digit to write), skip (the digit after it), duplicate (the current
digit). The model's teacher-forced argmax there tells whether it would write the digit or skip it.

Previous-token heads are heads peaking at offset 1 with at least PEAK_MIN of their mass there; copy
heads are the `--top` heads by induction (or passkey copy) score. With `--reference heads.json` (the
same model measured with `--rope none`, say), those head sets are taken from the reference, so the
summary follows the original previous-token and copy heads into the model measured here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from posinterp.cli import arg, as_config, at_least
from posinterp.errors import PosinterpError
from posinterp.evals import common
from posinterp.theory.head_measure import PEAK_MIN, PROBES, Probes, figures, head_sets, measure, summarize
from posinterp.theory.heads_plots import plot_heads

log = logging.getLogger(__name__)


HEADS_JSON = "heads.json"
HEADS_PNG = "heads.png"


TRIALS = 3
"""Passkey probes per measurement (`--trials`, and train --eval-every's heads figures)."""
MAX_OFFSET = 16
"""Offsets 0..K measured per head (`--max-offset`): PI ×s moves a head's offset-1 rotation to offset s, so
16 follows the previous-token heads up to the paper's largest factor."""
TOP = 10
"""Copy heads summarized (`--top`)."""


@dataclass
class HeadsConfig(common.EvalConfig):
    length: int = arg(2048, help="tokens in each probe sequence (text window, passkey prompt with its answer, "
                                 "repeated random tokens)")
    data: str = arg("gutenberg", help="natural text probe: gutenberg, pydoc, or files/globs")
    split: str = arg("test", help="corpus split of the text probe", choices=("train", "test", "all"))
    trials: int = arg(TRIALS, help="passkey prompts, keys at depths spread over 0..1")
    max_offset: int = arg(MAX_OFFSET, help="relative offsets 0..K get a bucket each; the first key and the rest get one each")
    top: int = arg(TOP, help="copy heads summarized: the top-k heads by induction / passkey copy score")
    reference: Path | None = arg(None, help="heads.json of a reference measurement (e.g. --rope none): follow its "
                                            "previous-token and copy heads here (default: this model's own)")
    out: Path | None = arg(None, help=f"folder for {HEADS_JSON} and {HEADS_PNG} (none: print only)")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("--length", self.length, 2, " tokens")
        at_least("--max-offset", self.max_offset, 2, " (offsets 1 and 2 are the point)")
        if int(self.length) < 2 * (int(self.max_offset) + 2):
            raise PosinterpError(f"--length {self.length} must be at least {2 * (int(self.max_offset) + 2)} for "
                                 f"--max-offset {self.max_offset} (the repeat probe needs two copies longer than it)")
        at_least("--trials", self.trials, 1)
        at_least("--top", self.top, 1, " heads")
        if self.reference is not None:
            self.reference = reference_file(self.reference, "--reference")


def reference_file(path: Path | str, flag: str) -> Path:
    """The heads.json of an earlier measurement (a folder means its heads.json); refused in one line if absent."""
    from posinterp.atomic import check_kind

    path = Path(path)
    if path.is_dir() and not (path / HEADS_JSON).is_file():
        raise PosinterpError(f"{flag} {path} is a folder without {HEADS_JSON}; give the {HEADS_JSON} of an earlier "
                             "`posinterp theory heads --out` run")
    return check_kind(path / HEADS_JSON if path.is_dir() else path, flag, "file", must_exist=True)


def heads(cfg: HeadsConfig | str | None = None, **kwargs) -> dict:
    """Per layer and head: attention mass by offset (text, passkey), induction and passkey copy scores.

    `heads("smollm2-135m", rope="pi:2", length=2048, out="runs/heads/pi2")` → dict (printed; JSON + PNG in `out`).
    """
    import numpy as np
    import torch

    from posinterp.atomic import atomic_dir, write_json
    from posinterp.data.corpus import describe
    from posinterp.model import loader, refs

    cfg = as_config(HeadsConfig, cfg, kwargs)
    started = time.perf_counter()
    common.check_output(cfg)
    prep = common.prepare(cfg, int(cfg.length), "probe length", "--length")
    n_layers, n_heads = int(prep.config.num_hidden_layers), int(prep.config.num_attention_heads)
    reference = load_reference(cfg.reference, n_layers, n_heads, cfg.max_offset)
    tokenizer = refs.load_tokenizer(refs.dense(prep.ref))
    length, k = int(cfg.length), int(cfg.max_offset)
    # every probe is built (and refused, if it cannot be) before the weights are loaded
    probes = Probes.build(tokenizer, prep.config.vocab_size, length, int(cfg.trials), int(cfg.seed), cfg.data, cfg.split)
    timer = common.Timer()
    with timer("load"):
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
        model, _ = loader.load_model(refs.dense(prep.ref), rope=cfg.rope_spec, original_length=cfg.original_length,
                                     dtype=dtype, device=loader.pick_device(cfg.device), attn_implementation="eager")
    measured = measure(model, probes, k, timer, progress=True)
    del model
    arrays, trials = measured.arrays, measured.trials
    for t in trials:
        t["written"] = tokenizer.decode(t.pop("predicted"))

    own = head_sets(arrays, k, int(cfg.top))
    sets = reference["head_sets"] if reference is not None else own
    digits = sum(t["digits"] for t in trials)
    result = {
        **common.header("theory_heads", cfg, prep),
        "length": length, "max_offset": k, "peak_min": PEAK_MIN, "buckets": [str(d) for d in range(k + 1)]
        + ["sink", "tail"],
        "layers": n_layers, "heads": n_heads,
        "probes": {"text": {"data": describe(cfg.data, cfg.split), "documents": probes.documents,
                            "tokens": len(probes.text_ids)},
                   "repeat": {"start": probes.repeat_start, "period": probes.period, "seed": int(cfg.seed),
                              "loss": measured.repeat_loss},
                   "passkey": {"trials": trials, "teacher_forced_digit_accuracy": sum(t["digits_right"] for t in trials)
                               / digits, "teacher_forced_skip_share": sum(t["digits_skipped"] for t in trials) / digits}},
        "reference": str(cfg.reference) if cfg.reference is not None else None,
        "head_sets": own, "followed_head_sets": sets,
        "summary": summarize(arrays, sets, k),
        "figures": figures(measured, sets, k),
        "per_head": {name: np.round(a, 6).tolist() for name, a in arrays.items()},
        "timings": {**timer.seconds, "total": round(time.perf_counter() - started, 3)},
    }
    print_table(result)
    if cfg.out is not None:
        with atomic_dir(cfg.out, cfg.force) as tmp:
            write_json(tmp / HEADS_JSON, result)
            plot_heads(tmp / HEADS_PNG, result)
        log.info("wrote %s", cfg.out)
    return result


def load_reference(path: Path | None, n_layers: int, n_heads: int, max_offset: int) -> dict | None:
    if path is None:
        return None
    try:
        ref = json.loads(Path(path).read_text())
        shape = (int(ref["layers"]), int(ref["heads"]))
        ref["head_sets"]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError):
        raise PosinterpError(f"--reference {path} is not a {HEADS_JSON} written by `posinterp theory heads`") from None
    if shape != (n_layers, n_heads):
        raise PosinterpError(f"--reference {path} measured {shape[0]} layers × {shape[1]} heads; this model has "
                             f"{n_layers} × {n_heads}: give a reference of the same architecture")
    return ref


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def table_rows(result: dict) -> list[tuple[str, str]]:
    """(figure, value) rows of the short table, shared by the verb's print and the experiment script."""
    s = result["summary"]
    pk = result["probes"]["passkey"]
    rows = []
    for probe in PROBES:
        c = s[probe]["heads_peaking_at"]
        prev = s[probe]["previous_token_heads"]
        rows += [(f"{probe}: heads peaking at offset 0 / 1 / 2 / 3+", f"{c['0']} / {c['1']} / {c['2']} / "
                  f"{sum(v for d, v in c.items() if int(d) >= 3)}"),
                 (f"{probe}: prev-token heads ({prev['count']}) mass at 1 / 2", f"{_f(prev['mass_at_1'])} / "
                  f"{_f(prev['mass_at_2'])}"),
                 (f"{probe}: prev-token heads' peak offsets", ", ".join(f"{d}: {n}" for d, n in
                                                                        prev["peak_offsets"].items()) or "—")]
    r, c = s["repeat"], s["passkey_copy"]
    rows += [("repeat: top induction heads, induction / skip / dup", f"{_f(r['top_induction'])} / {_f(r['top_skip'])} / "
              f"{_f(r['top_duplicate'])}"),
             ("passkey: top copy heads, copy / skip / dup", f"{_f(c['top_copy'])} / {_f(c['top_skip'])} / "
              f"{_f(c['top_duplicate'])}"),
             ("passkey: teacher-forced digits right / skipped", f"{pk['teacher_forced_digit_accuracy']:.2f} / "
              f"{pk['teacher_forced_skip_share']:.2f}")]
    return rows


def print_table(result: dict) -> None:
    follow = f"heads of {result['reference']}" if result["reference"] else "its own heads"
    print(f"{result['label']} ({result['rope']}, {result['config']['dtype']}): {result['layers']} layers × "
          f"{result['heads']} heads, probes of {result['length']} tokens; following {follow}")
    rows = table_rows(result)
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")
    print(f"  seconds: {result['timings']}")
