"""RULER's synthetic tasks (Hsieh et al. 2024, arXiv 2404.06654) and the effective context length.

    posinterp eval ruler runs/smollm2-16k --lengths 4096,8192,16384 --out results/ruler
    posinterp eval ruler runs/smollm2-16k --tasks niah_single_1,vt --samples 20 --reference results/orig-ruler

Eleven tasks, named as RULER's: niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue, niah_multiquery,
vt, cwe, fwe (`ruler_tasks`: definitions, templates, scorer; `ruler_prompts`, `ruler_lists`: prompts of
exactly `--lengths` tokens of the model's own tokenizer, chat template and answer prefix included). The
model answers greedily with a KV cache, up to RULER's tokens per task (niah 128, vt 30, cwe 120, fwe 50);
each answer is scored by RULER's string_match_all; `ruler_score` makes the table, the Wilson intervals
and the effective lengths (absolute 85.6 and relative to `--reference`).

Length: a prompt has exactly the length asked; RULER counts the tokens to generate in its length too
(its prompts are shorter by them), so a length here is a little harder than RULER's of the same name,
and at a length equal to the window the answer is decoded past it (as passkey's is).

Speed: the cost is the prefill. The noise and book haystacks are the same token run in every sample of
a task, so samples whose first needle lies deep enough share a prefix (task template + haystack up to
that needle): it is run once, at the deepest one of the task's samples across all lengths, and each such
sample continues from its cache cropped at its own first needle (`--share-prefix`, passkey's
mechanism; the KV of the first m tokens depends only on those tokens, so this is the same computation).
Only samples whose shared part is at least `passkey.BRANCH_FROM` of their prompt branch: a suffix against
a cache runs with an explicit mask, which pays only then. It applies to niah_single_1/2/3 (one needle,
half of them deep) and barely to the four-needle tasks; vt (its worked example differs per sample),
niah_multikey_2/3 (distractors drawn per sample), cwe and fwe (lists drawn per sample) share nothing.
Seconds, prompt tokens and tokens actually prefilled are recorded per task × length in results.json.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg, as_config, at_least
from posinterp.errors import PosinterpError
from posinterp.evals import common, ruler_score
from posinterp.evals import ruler_tasks as rt
from posinterp.evals.progress import priced
from posinterp.evals.ruler_prompts import FORMATS, Builder

log = logging.getLogger(__name__)

LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
"""RULER's lengths; the default is those within the window (or the window alone when it is shorter)."""
SAMPLES = {"short": 10, "long": 5, "long_from": 4096}
"""Default samples per task and length: 10 up to 4096 tokens, 5 above (issue 30's protocol)."""


@dataclass
class RulerConfig(common.EvalConfig):
    tasks: str = arg("all", help=f"comma-separated RULER tasks, or all: {','.join(rt.TASKS)}")
    lengths: str = arg("", help="prompt lengths in the model's tokens (template and answer prefix included): a,b,c "
                                "or start:stop:count (default: RULER's 4096…131072 within the window)")
    samples: int | None = arg(None, help="samples per task and length (default: 10 at lengths up to 4096, 5 above)")
    prompt_format: str = arg("auto", help="chat: the tokenizer's chat template around the task; plain: the text "
                                          "alone; auto: chat when the tokenizer has a template",
                             choices=FORMATS)
    max_new_tokens: int | None = arg(None, help="cap on the tokens decoded per answer (default: RULER's per task: "
                                                "niah 128, vt 30, cwe 120, fwe 50)")
    share_prefix: bool = arg(True, help="run a shared haystack prefix once and branch the samples from its KV cache")
    reference: Path | None = arg(None, help="the original model's eval ruler results.json (or folder), for the "
                                            "relative effective length (0.856 × its average within its window)")

    def __post_init__(self) -> None:
        super().__post_init__()
        # a recipe's YAML lists ([fwe, vt], [4096, 8192]) as the flags' comma-separated text
        self.tasks, self.lengths = (",".join(map(str, v)) if isinstance(v, list | tuple) else v
                                    for v in (self.tasks, self.lengths))
        parse_tasks(self.tasks)
        if self.prompt_format not in FORMATS:
            raise PosinterpError(f"--prompt-format {self.prompt_format!r}: choose one of {', '.join(FORMATS)}")
        at_least("--samples", self.samples, 1, " (the protocol: 10 up to 4096 tokens, 5 above)")
        at_least("--max-new-tokens", self.max_new_tokens, 1)
        if self.lengths:
            common.parse_lengths(self.lengths)
        if self.reference is not None:
            self.reference = Path(self.reference)


def parse_tasks(text: str) -> list[str]:
    """'all' or a comma-separated list of task names (in RULER's order); an unknown name is refused."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names or names == ["all"]:
        return list(rt.TASKS)
    for name in names:
        if name not in rt.TASKS:
            near = difflib.get_close_matches(name, list(rt.TASKS), n=1)
            raise PosinterpError(f"--tasks {name!r} is not a RULER task" + (f" (did you mean {near[0]}?)" if near
                                 else "") + f"; choose from all,{','.join(rt.TASKS)}")
    return [t for t in rt.TASKS if t in names]


def default_lengths(window: int) -> list[int]:
    return [n for n in LENGTHS if n <= window] or [window]


def samples_at(length: int, samples: int | None) -> int:
    if samples is not None:
        return int(samples)
    return SAMPLES["short"] if length <= SAMPLES["long_from"] else SAMPLES["long"]


def build_samples(builder: Any, tasks: list[str], lengths: list[int], samples: int | None, seed: int) -> list:
    return [builder.build(t, n, i, seed) for t in tasks for n in lengths for i in range(samples_at(n, samples))]


def new_tokens(sample: Any, cap: int | None) -> int:
    return new_tokens_of(sample.task, cap)


def new_tokens_of(task: str, cap: int | None) -> int:
    """The tokens decoded per answer of `task`: RULER's, capped by --max-new-tokens."""
    limit = rt.TASKS[task].max_new_tokens
    return min(limit, int(cap)) if cap else limit


def _groups(samples: list, share_prefix: bool, dynamic: bool) -> dict[str, list[int]]:
    """Sample indices that branch from one shared prefix, per group (a group needs two deep-enough samples)."""
    from posinterp.evals.passkey import BRANCH_FROM

    if not share_prefix or dynamic:
        return {}
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.group and s.shared >= BRANCH_FROM * s.length:
            groups.setdefault(s.group, []).append(i)
    out = {}
    for g, members in groups.items():
        longest = max(members, key=lambda i: samples[i].shared)
        prefix = samples[longest].ids[: samples[longest].shared]
        same = [i for i in members if samples[i].ids[: samples[i].shared] == prefix[: samples[i].shared]]
        if len(same) >= 2:
            out[g] = same
    return out


def run_samples(model: Any, tokenizer: Any, samples: list, *, max_new_tokens: int | None = None,
                share_prefix: bool = True, progress: bool = True) -> tuple[list[dict], dict]:
    """Answer and score every sample; returns (one record per sample, in order; timings)."""
    from posinterp.evals.passkey import Decoder, crop

    dec = Decoder(model, 1)
    dynamic = common.rope_parameters(model.config).get("rope_type") == "dynamic"  # rescales with the running length
    groups = _groups(samples, share_prefix, dynamic)
    branched = {i for members in groups.values() for i in members}
    outputs: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    prefilled: dict[int, int] = {}
    shared_runs = []
    # the order the work is done in: own prefills first, then each group's prefix and its branches; a unit is
    # (sample, first token it prefills, tokens of a shared prefix run just before it)
    plan = [(i, 0, 0) for i in range(len(samples)) if i not in branched]
    for members in groups.values():
        ordered = sorted(members, key=lambda i: samples[i].shared)
        plan += [(i, samples[i].shared, max(samples[j].shared for j in members) if k == 0 else 0)
                 for k, i in enumerate(ordered)]

    def price(sp: Any, unit: tuple) -> float:
        i, start, prefix = unit
        s = samples[i]
        prefill = sp.forward_s(s.length) - (sp.forward_s(start) if start else 0.0)
        return prefill + (sp.forward_s(prefix) if prefix else 0.0) + new_tokens(s, max_new_tokens) * sp.decode_token_s(s.length)

    bar = priced("ruler", model, plan, price, lambda u: samples[u[0]].length - u[1] + u[2]
                 + 16 * new_tokens(samples[u[0]], max_new_tokens), enabled=progress)
    full = None
    with common.eval_mode(model):
        for i, start, prefix in plan:
            s = samples[i]
            dec.max_new_tokens = new_tokens(s, max_new_tokens)
            if prefix:  # the first branch of a group: run the group's deepest shared prefix once
                deepest = max(groups[s.group], key=lambda j: samples[j].shared)
                t0 = time.perf_counter()
                full = None
                _, full = dec.forward(list(samples[deepest].ids[:prefix]))
                shared_runs.append({"group": s.group, "tokens": prefix, "samples": len(groups[s.group]),
                                    "tasks": sorted({samples[j].task for j in groups[s.group]}),
                                    "seconds": round(time.perf_counter() - t0, 3)})
            t0 = time.perf_counter()
            if start:
                hidden, cache = dec.forward(list(s.ids[start:]), crop(full, start))
                outputs[i] = dec.continue_greedy(hidden, cache)
            else:
                outputs[i] = dec.generate(list(s.ids))
            seconds[i], prefilled[i] = time.perf_counter() - t0, s.length - start
            bar.done(f"{s.task} {s.length}" + (f", from a shared prefix of {start}" if start else ""))
        del full
    records = [record(s, tokenizer.decode(outputs[i], skip_special_tokens=True), seconds[i], prefilled[i],
                      len(outputs[i])) for i, s in enumerate(samples)]
    per: dict[str, dict[str, dict]] = {}
    for r in records:
        c = per.setdefault(r["task"], {}).setdefault(str(r["length"]), {"samples": 0, "seconds": 0.0,
                                                                          "prompt_tokens": 0, "prefill_tokens": 0,
                                                                          "new_tokens": 0})
        c["samples"] += 1
        c["seconds"] = round(c["seconds"] + r["seconds"], 3)
        c["prompt_tokens"] += r["tokens"]
        c["prefill_tokens"] += r["prefill_tokens"]
        c["new_tokens"] += r["new_tokens"]
    return records, {"per_task_length": per, "shared_prefixes": shared_runs,
                     "note": "seconds: each sample's own prefill and decoding; a shared prefix's one run is "
                             "listed under shared_prefixes, not spread over its samples"}


def record(s: Any, output: str, seconds: float, prefill: int, new: int) -> dict:
    score = rt.string_match_all(output, s.answers)
    return {"task": s.task, "length": s.length, "index": s.index, "tokens": len(s.ids), "answers": s.answers,
            "query": s.query, "output": output, "score": score, "passed": score >= 100.0,
            "needles": [{k: n[k] for k in ("text", "position", "tokens", "depth", "token_depth")} for n in s.needles],
            "info": s.info, "seconds": round(seconds, 3), "prefill_tokens": prefill, "new_tokens": new,
            "shared_prefix": s.length - prefill}


def ruler(cfg: RulerConfig | str | None = None, **kwargs) -> dict:
    """Run RULER's synthetic tasks; returns (and writes to --out) the results dict.

    `ruler("smollm2-135m", tasks="niah_single_1,vt", lengths="4096")` or `ruler(RulerConfig(...))`.
    """
    cfg = as_config(RulerConfig, cfg, kwargs)
    common.check_output(cfg)
    from posinterp.model import refs

    tasks = parse_tasks(cfg.tasks)
    reference = ruler_score.read_reference(cfg.reference, tasks) if cfg.reference is not None else None
    lengths = common.parse_lengths(cfg.lengths) if cfg.lengths else None
    prep = common.prepare(cfg, max(lengths) if lengths else 0, "prompt length", "--lengths")
    lengths = lengths or default_lengths(prep.window)
    timer = common.Timer()
    with timer("build_prompts"):
        tokenizer = refs.load_tokenizer(refs.dense(prep.ref))
        builder = Builder(tokenizer, cfg.prompt_format)
        samples = build_samples(builder, tasks, lengths, cfg.samples, int(cfg.seed))
    if reference and reference["reference_prompt_format"] not in (None, builder.format.kind):
        log.warning("--reference used the %s prompt format, this run %s: the relative rule compares unlike prompts",
                    reference["reference_prompt_format"], builder.format.kind)
    with timer("load"):
        model, tokenizer, _ = common.load(cfg)
    with timer("eval"):
        records, timings = run_samples(model, tokenizer, samples, max_new_tokens=cfg.max_new_tokens,
                                       share_prefix=cfg.share_prefix)
    result = {**common.header("ruler", cfg, prep, model), "tasks": tasks, "lengths": lengths,
              "samples_per_length": {str(n): samples_at(n, cfg.samples) for n in lengths},
              "prompt": builder.format.describe(), "protocol": protocol(tasks, cfg.max_new_tokens),
              "summary": ruler_score.summarize(records, tasks, lengths, reference),
              "timings": {**timer.seconds, **timings}, "samples": records}
    ab = result["summary"]["effective_length"]
    log.info("ruler %s: effective length %s (≥ %s), %s (relative); averages %s", result["label"],
             ab["absolute"]["length"], ruler_score.ABSOLUTE, ab["relative"]["length"], result["summary"]["average"])
    text = ruler_score.markdown(result)
    common.write_results(cfg.out, cfg.force, result, text)
    print(text)
    return result


def protocol(tasks: list[str], cap: int | None) -> dict:
    """What was run, in words and numbers, for results.json."""
    return {
        "source": "NVIDIA RULER (arXiv 2404.06654), scripts/synthetic.yaml; qa_1, qa_2 left out (no data here)",
        "tasks": {t: {**vars(rt.TASKS[t]), "max_new_tokens": min(rt.TASKS[t].max_new_tokens, cap or 10**9)}
                  for t in tasks},
        "templates": {"niah": rt.NIAH_TEMPLATE, "niah_answer": rt.NIAH_ANSWER, "needle": rt.NEEDLE,
                      "vt": rt.VT_TEMPLATE, "vt_answer": rt.VT_ANSWER, "cwe": rt.CWE_TEMPLATE,
                      "cwe_answer": rt.CWE_ANSWER, "fwe": rt.FWE_TEMPLATE, "fwe_answer": rt.FWE_ANSWER,
                      "noise": rt.NOISE},
        "haystacks": {"noise": "the noise line repeated, one per line", "book": "the held-out Gutenberg plays "
                      "(data.sources.TEST_BOOKS) in name order, whitespace collapsed, repeated when needed",
                      "needles": "distractor needles of other keys, one per line"},
        "words": "Gutenberg books' vocabulary (ruler_tasks.word_pool); keys are two words joined by '-'",
        "length": "every prompt has exactly the asked number of the model's tokens (template, answer prefix "
                  "included; generation not counted); cwe may close its last < 3 tokens with newline tokens",
        "decoding": "greedy, KV cache, RULER's tokens per task, stopped at EOS",
        "scoring": "string_match_all: percent of the answers found in the output, case-insensitive; "
                   "pass = score 100; Wilson 95% interval on the pass count",
        "seed": "random.Random('ruler:{seed}:{task}:{length}:{index}') per sample",
    }
