"""`eval original`: does the extended model still work at the source model's own window?

    posinterp eval original runs/smollm2-16k --out results/original  # baseline: posinterp.json's source
    posinterp eval original runs/smollm2-16k --baseline smollm2-135m --passkey-trials 20
    posinterp eval original runs/llama-32k --tasks boolq,piqa,winogrande,race --data-dir ~/lm-eval-data

The paper checks that PI costs little inside the original window L (zero-shot BoolQ, PIQA, RACE,
WinoGrande at L). Here
the extended model and its source run the same checks at L, side by side, with the difference
(extended − baseline) and its uncertainty:

| check | how | uncertainty of the difference |
| --- | --- | --- |
| perplexity | `eval ppl` at window L on `--data` (documents cut to `--max-doc-tokens`) | paired bootstrap over documents |
| passkey | `eval passkey` at length L, `--passkey-trials` trials | binomial standard errors, combined |
| zero-shot | lm-evaluation-harness `simple_evaluate`, HFLM(max_length=L) | paired standard error over questions |

Zero-shot tasks need the optional `lm-eval` package and the tasks' data on this machine: either
`--data-dir D` with `D/<task>/<split>.parquet|.jsonl|.json` (the hub dataset's columns, e.g.
saved with `load_dataset(...)[split].to_parquet(...)` where a network is), or the hub dataset
already in the local Hugging Face cache. Nothing is downloaded (HF_DATASETS_OFFLINE=1).

With `--out`, writes there atomically: results.json, results.md, and each check's own results folder
(ppl-baseline/, passkey-extended/, ...); without, prints the table only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from posinterp.cli import arg, as_config, at_least, to_dict
from posinterp.errors import PosinterpError
from posinterp.evals.common import DTYPE_HELP, DTYPES, dtype_name, resolve_dtype
from posinterp.evals.tasks import PAPER_TASKS, TaskPlan, plan_tasks, zero_shot
from posinterp.model.loader import ModelArgs, pick_device

log = logging.getLogger(__name__)


CHECKS = ("ppl", "passkey")


@dataclass
class OriginalConfig(ModelArgs):
    """The model flags come from `posinterp.model.loader.ModelArgs`: MODEL is the extended checkpoint (a folder
    written by `posinterp extend` or `train`); --rope applies to it only; --original-length is L (= --window)."""

    baseline: str | None = arg(None, help="the source model (default: `source` in the checkpoint's posinterp.json)")
    window: int | None = arg(None, help="the original window L (default: posinterp.json original_length, "
                                        "else the baseline's window)")
    checks: str = arg("ppl,passkey", help="built-in checks to run: ppl, passkey (comma list; empty for none)")
    data: str = arg("gutenberg", help="perplexity corpus (a built-in, files, or a datasets folder)")
    split: str = arg("test", help="corpus split for perplexity")
    text_field: str = arg("text", help="field holding the text in jsonl/parquet/datasets corpora")
    ppl_docs: int | None = arg(None, help="perplexity on the first N documents only")
    max_doc_tokens: int | None = arg(None, help="each perplexity document is cut to this many tokens "
                                                "(default: L, one full window per document, to keep CPU time small)")
    ppl_stride: int | None = arg(None, help="perplexity sliding-window stride (default: eval ppl's, 256)")
    passkey_trials: int = arg(10, help="passkey trials at the original window (paper: 10 per length)")
    tasks: str = arg("", help="zero-shot lm-eval tasks, e.g. boolq,piqa,winogrande,race (the paper's); "
                              "needs `pip install 'posinterp[lm-eval]'` and local data (--data-dir)")
    data_dir: Path | None = arg(None, help="folder with the tasks' data: <task>/<split>.parquet|.jsonl|.json")
    task_limit: int | None = arg(None, help="evaluate only the first N questions of each task")
    batch_size: int = arg(1, help="lm-eval batch size")
    bootstrap: int = arg(2000, help="bootstrap resamples for the perplexity difference")
    dtype: str = arg("auto", help=DTYPE_HELP, choices=DTYPES)
    out: Path | None = arg(None, help="folder for results.json, results.md and each check's own results "
                                      "(none: print only)")
    force: bool = arg(False, help="replace a non-empty --out")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window is None and self.original_length is not None:
            self.window = int(self.original_length)
        self.check_list = [c.strip() for c in str(self.checks or "").split(",") if c.strip()]
        for c in self.check_list:
            if c not in CHECKS:
                raise PosinterpError(f"--checks: unknown check '{c}'; choose from {', '.join(CHECKS)} "
                                     "(zero-shot tasks go in --tasks)")
        self.task_list = [t.strip() for t in str(self.tasks or "").split(",") if t.strip()]
        if not self.check_list and not self.task_list:
            raise PosinterpError("nothing to run: --checks is empty and no --tasks given; "
                                 "e.g. --checks ppl,passkey or --tasks boolq,piqa")
        if self.window is not None and int(self.window) < 16:
            raise PosinterpError(f"--window {self.window} is too small; give the source model's window, e.g. 8192")
        at_least("--ppl-docs", self.ppl_docs, 1, " document")
        at_least("--max-doc-tokens", self.max_doc_tokens, 2, " tokens")
        at_least("--passkey-trials", self.passkey_trials, 1)
        at_least("--task-limit", self.task_limit, 1, " question")
        if int(self.bootstrap) < 100:
            raise PosinterpError(f"--bootstrap {self.bootstrap} is too few resamples; use 100 or more (default 2000)")
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir).expanduser()
        if self.out is not None:
            self.out = Path(self.out)
        self.dtype = dtype_name(self.dtype)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent trials."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def paired_se(a: list[float], b: list[float]) -> float:
    """Standard error of mean(b − a) over paired items (the same questions for both models)."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    if n < 2:
        return float("nan")
    m = sum(d) / n
    return math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1) / n)


def ppl_difference(base: list[tuple[float, int]], ext: list[tuple[float, int]], *, resamples: int,
                   seed: int) -> dict:
    """Perplexity of each model and the difference, with a paired bootstrap over documents.

    `base`/`ext` hold (summed NLL in nats, scored tokens) per document, the same documents in the
    same order for both models. Each resample draws documents with replacement and recomputes
    both corpus perplexities exp(Σ nll / Σ tokens) on that draw, so the spread reflects which
    documents happened to be in the corpus while keeping the two models paired.
    """
    if len(base) != len(ext) or any(nb != ne for (_, nb), (_, ne) in zip(base, ext)):
        raise PosinterpError("the two models scored different tokens (not the same tokenizer or documents); "
                             "a paired comparison needs the same tokenizer")

    def ppl(rows: list[tuple[float, int]], idx: list[int]) -> float:
        return math.exp(sum(rows[i][0] for i in idx) / max(1, sum(rows[i][1] for i in idx)))

    n = len(base)
    every = list(range(n))
    pb, pe = ppl(base, every), ppl(ext, every)
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples if n > 1 else 0):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(ppl(ext, idx) - ppl(base, idx))
    if diffs:
        diffs.sort()
        m = sum(diffs) / len(diffs)
        se = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1))
        ci = (diffs[int(0.025 * len(diffs))], diffs[min(len(diffs) - 1, int(0.975 * len(diffs)))])
    else:
        se, ci = float("nan"), (float("nan"), float("nan"))
    return {"baseline": pb, "extended": pe, "difference": pe - pb, "se": se, "ci95": list(ci), "n": n,
            "tokens": sum(t for _, t in base)}


def _sub_out(tmp: Path | None, name: str) -> Path | None:
    return None if tmp is None else tmp / name


def _ppl_row(cfg: OriginalConfig, pl: Plan, tmp: Path | None, models_) -> dict:
    """`eval ppl` of both models at window L on the same documents; paired bootstrap of the difference."""
    from posinterp.evals.perplexity import PerplexityConfig, perplexity

    max_tokens = int(cfg.max_doc_tokens or pl.window)
    # eval ppl's own stride (the paper's 256) unless the window is too small for it; a document cut
    # to L tokens is one window whatever the stride
    default_stride = int(PerplexityConfig.__dataclass_fields__["stride"].default)
    stride = int(cfg.ppl_stride or min(default_stride, pl.window // 2))
    runs = {}
    for role, ref in models_:
        log.info("perplexity of %s (%s) at window %d", role, ref, pl.window)
        runs[role] = perplexity(PerplexityConfig(
            model=ref, data=cfg.data, split=cfg.split, text_field=cfg.text_field, max_docs=cfg.ppl_docs,
            max_tokens=max_tokens, windows=str(pl.window), stride=stride, dtype=cfg.dtype, device=cfg.device,
            seed=cfg.seed, rope=cfg.rope if role == "extended" else "none",
            out=_sub_out(tmp, f"ppl-{role}")))
    docs = {role: runs[role]["windows"][0]["documents"] for role in runs}
    if [d["name"] for d in docs["baseline"]] != [d["name"] for d in docs["extended"]]:
        raise PosinterpError("perplexity: the two runs scored different documents")
    stats = ppl_difference([(d["nll_sum"], d["scored"]) for d in docs["baseline"]],
                           [(d["nll_sum"], d["scored"]) for d in docs["extended"]],
                           resamples=int(cfg.bootstrap), seed=int(cfg.seed))
    w = runs["baseline"]["windows"][0]
    return {"check": f"perplexity, {runs['baseline']['corpus'].split(' (')[0]}", "kind": "perplexity",
            "baseline": stats["baseline"], "extended": stats["extended"], "difference": stats["difference"],
            "se": stats["se"], "ci95": stats["ci95"], "n": stats["n"],
            "n_text": f"{stats['n']} docs, {stats['tokens']} tokens",
            "uncertainty": f"paired bootstrap over documents ({cfg.bootstrap} resamples; 95% percentile interval)",
            "protocol": {"window": pl.window, "stride": w["stride"], "max_doc_tokens": max_tokens,
                         "corpus": runs["baseline"]["corpus"]},
            "per_document": [{"name": b["name"], "baseline": b["perplexity"], "extended": e["perplexity"],
                              "tokens": b["scored"]} for b, e in zip(docs["baseline"], docs["extended"])]}


def _passkey_row(cfg: OriginalConfig, pl: Plan, tmp: Path | None, models_) -> dict:
    """`eval passkey` of both models at length L (same keys and depths); binomial standard errors."""
    from posinterp.evals.passkey import PasskeyConfig, passkey

    runs = {}
    for role, ref in models_:
        log.info("passkey of %s (%s) at length %d", role, ref, pl.window)
        runs[role] = passkey(PasskeyConfig(model=ref, lengths=str(pl.window), trials=int(cfg.passkey_trials),
                                           rope=cfg.rope if role == "extended" else "none", dtype=cfg.dtype, device=cfg.device, seed=cfg.seed,
                                           out=_sub_out(tmp, f"passkey-{role}")))
    correct = {role: [bool(t["correct"]) for t in runs[role]["trials"]] for role in runs}
    n = len(correct["baseline"])
    acc = {role: sum(v) / len(v) for role, v in correct.items()}
    se_b, se_e = binomial_se(acc["baseline"], n), binomial_se(acc["extended"], n)
    se = math.sqrt(se_b ** 2 + se_e ** 2)
    diff = acc["extended"] - acc["baseline"]
    same_prompts = [t["key"] for t in runs["baseline"]["trials"]] == [t["key"] for t in runs["extended"]["trials"]]
    return {"check": f"passkey retrieval at length {pl.window}", "kind": "accuracy",
            "baseline": acc["baseline"], "extended": acc["extended"], "difference": diff, "se": se,
            "ci95": _interval(diff, se), "n": n, "n_text": f"{n} trials",
            "uncertainty": "binomial standard errors of the two accuracies, combined (√(se_b² + se_e²))",
            "baseline_se": se_b, "extended_se": se_e, "same_keys_and_depths": same_prompts,
            "disagreements": sum(a != b for a, b in zip(correct["baseline"], correct["extended"]))}


@dataclass
class Plan:
    """Everything resolved before any model runs."""

    extended: str
    baseline: str
    window: int
    baseline_from: str
    window_from: str


def plan(cfg: OriginalConfig) -> Plan:
    """Resolve both models and the original window; refuse what cannot be compared, before any work."""
    from posinterp.model import facts, refs
    from posinterp.model.export import read_provenance
    from posinterp.model.rope import window

    ref = refs.resolve(cfg.model)
    prov = read_provenance(ref.folder) or {}
    if cfg.baseline:
        baseline, baseline_from = cfg.baseline, "--baseline"
    elif prov.get("source"):
        baseline, baseline_from = str(prov["source"]), "posinterp.json source"
    else:
        raise PosinterpError(f"{cfg.model} has no posinterp.json naming its source model; give --baseline MODEL")
    try:
        base_ref = refs.resolve(baseline)
    except PosinterpError as err:
        if cfg.baseline:
            raise
        raise PosinterpError(f"{cfg.model}'s posinterp.json names the source '{baseline}', which is not here "
                             f"({err}); give --baseline MODEL") from None
    ext_config, base_config = facts.load_config(ref), facts.load_config(base_ref)
    facts.check_rope(ext_config)
    facts.check_rope(base_config)
    if cfg.window is not None:
        L, window_from = int(cfg.window), "--window"
    elif prov.get("original_length"):
        L, window_from = int(prov["original_length"]), "posinterp.json original_length"
    else:
        L, window_from = facts.original_window(base_config), "the baseline's config"
    for name, config in (("baseline " + baseline, base_config), ("extended model " + cfg.model, ext_config)):
        if L > window(config):
            raise PosinterpError(f"--window {L} exceeds the window {window(config)} of the {name}; "
                                 f"give --window {window(config)} or less")
    if ext_config.vocab_size != base_config.vocab_size:
        raise PosinterpError(f"the extended model's vocabulary ({ext_config.vocab_size}) differs from the baseline's "
                             f"({base_config.vocab_size}): not the same source; check --baseline")
    if "ppl" in cfg.check_list:  # the corpus is there and not empty (the first document is enough)
        from posinterp.data.corpus import load_documents

        load_documents(cfg.data, split=cfg.split, text_field=cfg.text_field, limit=1)
    return Plan(str(cfg.model), baseline, L, baseline_from, window_from)


def _fmt(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}%" if kind == "accuracy" else f"{value:.3f}"


def _fmt_diff(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:+.1f} pt" if kind == "accuracy" else f"{value:+.3f}"


def markdown(result: dict) -> str:
    p = result["plan"]
    lines = [f"# At the original window: {p['extended']} vs {p['baseline']}", "",
             f"window L = {p['window']} (from {p['window_from']}); baseline from {p['baseline_from']}.", "",
             f"| check at L = {p['window']} | n | baseline | extended | extended − baseline | s.e. | 95% interval |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        k = r["kind"]
        ci = r.get("ci95")
        ci_text = f"[{_fmt_diff(ci[0], k)}, {_fmt_diff(ci[1], k)}]" if ci else "–"
        lines.append(f"| {r['check']} | {r['n_text']} | {_fmt(r['baseline'], k)} | {_fmt(r['extended'], k)} | "
                     f"{_fmt_diff(r['difference'], k)} | {_fmt_diff(r['se'], k).lstrip('+')} | {ci_text} |")
    lines += ["", "Uncertainty of the difference: " + "; ".join(f"{r['check']}: {r['uncertainty']}"
                                                                  for r in result["rows"]) + "."]
    lines += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def _interval(diff: float, se: float) -> list[float] | None:
    return None if math.isnan(se) else [diff - 1.96 * se, diff + 1.96 * se]


def original(cfg: OriginalConfig | str | None = None, **kwargs) -> dict:
    """Run the checks on the extended model and its source at the source's window; returns the table.

    `original(OriginalConfig(...))` or `original("runs/smollm2-16k", baseline="smollm2-135m")`.
    """
    cfg = as_config(OriginalConfig, cfg, kwargs)
    from posinterp.atomic import atomic_dir, check_kind, check_out, write_json, write_text
    from posinterp.versions import package_version, versions

    if cfg.out is not None:
        check_out(cfg.out, cfg.force)
    if cfg.data_dir is not None:
        check_kind(cfg.data_dir, "--data-dir", "folder", must_exist=True)
    cfg.device = pick_device(cfg.device)
    cfg.precision = resolve_dtype(cfg)
    pl = plan(cfg)
    notes: list[str] = []
    rows: list[dict] = []
    models_ = (("baseline", pl.baseline), ("extended", pl.extended))
    with contextlib.ExitStack() as stack:
        # with --out, everything (the sub-evals' folders too) appears at once in it; without, only printed
        tmp = stack.enter_context(atomic_dir(cfg.out, force=cfg.force)) if cfg.out is not None else None
        work = tmp or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="posinterp-original-")))
        task_plan = plan_tasks(cfg.task_list, cfg.data_dir, work / "lm-eval-tasks") if cfg.task_list else None
        log.info("original-window check at L = %d: baseline %s vs extended %s", pl.window, pl.baseline, pl.extended)
        if "ppl" in cfg.check_list:
            rows.append(_ppl_row(cfg, pl, tmp, models_))
        if "passkey" in cfg.check_list:
            rows.append(_passkey_row(cfg, pl, tmp, models_))
        if task_plan:
            rows += _task_rows(cfg, pl, models_, task_plan)
        else:
            notes.append(f"zero-shot tasks: none asked (the paper's: --tasks {','.join(PAPER_TASKS)} --data-dir D)")
        result = {"verb": "eval original", "plan": vars(pl), "rows": rows, "notes": notes,
                  "precision": cfg.precision, "config": to_dict(cfg), "versions": {**versions(), "lm_eval": package_version("lm-eval")}}
        table = markdown(result)
        if tmp is not None:
            write_json(tmp / "results.json", result)
            write_text(tmp / "results.md", table)
    print(table, end="")
    if cfg.out is not None:
        log.info("wrote %s", cfg.out)
    return result


def _task_rows(cfg: OriginalConfig, pl: Plan, models_, task_plan: TaskPlan) -> list[dict]:
    import gc

    import torch

    from posinterp.model import loader

    scores = {}
    for role, ref in models_:
        log.info("zero-shot %s on %s (%s)", ",".join(task_plan.tasks), role, ref)
        model, tokenizer, _ = loader.load(ref, dtype=getattr(torch, cfg.dtype), device=cfg.device)
        scores[role] = zero_shot(model, tokenizer, task_plan, window=pl.window, limit=cfg.task_limit,
                                 batch_size=cfg.batch_size, seed=cfg.seed)
        del model
        gc.collect()
    rows = []
    for task in task_plan.tasks:
        b, e = scores["baseline"][task], scores["extended"][task]
        if b["doc_ids"] != e["doc_ids"]:
            raise PosinterpError(f"lm-eval scored different questions of {task} for the two models")
        diff = e["value"] - b["value"]
        se = paired_se(b["scores"], e["scores"])
        rows.append({"check": f"{task} zero-shot {b['metric']} ({b['split']})", "kind": "accuracy",
                     "baseline": b["value"], "extended": e["value"], "difference": diff, "se": se,
                     "ci95": _interval(diff, se), "n": b["n"], "n_text": f"{b['n']} questions",
                     "uncertainty": "paired standard error over the same questions",
                     "baseline_se": b["harness_stderr"], "extended_se": e["harness_stderr"], "data": b["source"]})
    return rows
