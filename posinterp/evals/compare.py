"""Merge eval results (passkey, perplexity and RULER runs) into one table per kind and one set of plots.

    posinterp eval compare "results/*/" --out results/summary
    posinterp eval compare results/pk,results/pk-yarn,results/ppl,results/ruler --out results/summary
    posinterp eval compare "runs/demo/eval/*/*/" --reference runs/demo/eval/original/ruler --out results/summary

Each run is a folder written by `eval passkey`, `eval ppl` or `eval ruler` (its `results.json`); globs are
expanded here, so quote them. Writes summary.md, summary.json, passkey.png and perplexity.png. RULER runs get
their average per length and their effective lengths, absolute (≥ 85.6) and relative: against `--reference`
(the original model's RULER results) when given, else each run's own `eval ruler --reference`. With RULER
runs, one more table puts, per model (model and rope), passkey k_max beside RULER's effective lengths.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from posinterp.atomic import atomic_dir, check_out, write_json, write_text
from posinterp.cli import arg, as_config
from posinterp.errors import PosinterpError
from posinterp.evals import common, ruler_score

log = logging.getLogger(__name__)


@dataclass
class CompareConfig:
    out: Path = arg(help="folder for summary.md, summary.json and the plots")
    runs: list[str] = arg([], help="result folders (or their results.json): comma- or space-separated, "
                                   "globs allowed (quote them)", positional=True)
    force: bool = arg(False, help="replace a non-empty --out")
    reference: Path | None = arg(None, help="the original model's eval ruler results.json (or folder): every RULER "
                                            "run's relative effective length against it (default: each run's own "
                                            "--reference, if it had one)")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.reference = Path(self.reference) if self.reference is not None else None
        items = [self.runs] if isinstance(self.runs, str | Path) else list(self.runs or [])
        self.runs = [p for item in items for p in str(item).replace(",", " ").split() if p]
        if not self.runs:
            raise PosinterpError("eval compare: give result folders, e.g. posinterp eval compare \"results/*/\" --out results/summary")


def find_results(patterns: list[str], exclude: Path | None = None) -> list[Path]:
    """results.json files named by folders, files or globs, in the order given (duplicates dropped)."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        if not matches:
            raise PosinterpError(f"eval compare: {pattern!r} matches nothing; give folders written by eval passkey/ppl/ruler")
        for m in matches:
            path = Path(m)
            if exclude is not None and path.resolve() == exclude.resolve():
                continue
            file = path / common.RESULTS_JSON if path.is_dir() else path
            if not file.is_file():
                if len(matches) == 1:
                    raise PosinterpError(f"eval compare: {path} has no {common.RESULTS_JSON}; give folders written by eval "
                                         "passkey/ppl/ruler")
                log.info("skipping %s (no %s)", path, common.RESULTS_JSON)
                continue
            if file.resolve() not in [f.resolve() for f in found]:
                found.append(file)
    if not found:
        raise PosinterpError(f"eval compare: no {common.RESULTS_JSON} in {' '.join(patterns)}")
    return found


def load_results(files: list[Path]) -> list[dict]:
    runs = []
    for file in files:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as err:  # not JSON, not UTF-8 text
            raise PosinterpError(f"eval compare: cannot read {file}: {str(err).splitlines()[0]}") from None
        kind = data.get("kind") if isinstance(data, dict) else f"none: a JSON {type(data).__name__}"
        if kind not in ("passkey", "perplexity", "ruler"):
            raise PosinterpError(f"eval compare: {file} is not a passkey or perplexity result, nor a ruler one "
                                 f"(kind {kind!r})")
        data["source"] = str(file.parent)
        runs.append(data)
    # two runs with the same label (e.g. one model on two corpora) get their folder name added
    labels = [(r["kind"], r["label"]) for r in runs]
    for r in runs:
        if labels.count((r["kind"], r["label"])) > 1:
            r["label"] = f"{r['label']} [{Path(r['source']).name}]"
    return runs


def passkey_table(runs: list[dict]) -> str:
    lengths = sorted({row["length"] for r in runs for row in r["summary"]["per_length"]})
    rows = []
    for r in runs:
        acc = {row["length"]: row["accuracy"] for row in r["summary"]["per_length"]}
        rows.append([r["label"], r["rope"], r["window"], r["summary"]["k_max"], r["config"]["trials"]]
                    + [f"{acc[n]:.0%}" if n in acc else "" for n in lengths])
    return common.md_table(["run", "rope", "window", "k_max", "trials"] + [str(n) for n in lengths], rows)


def perplexity_table(runs: list[dict]) -> str:
    windows = sorted({w["window"] for r in runs for w in r["windows"]})
    rows = []
    for r in runs:
        ppl = {w["window"]: w["perplexity"] for w in r["windows"]}
        rows.append([r["label"], r["rope"], r["window"], r["corpus"], r["config"]["stride"]]
                    + [ppl.get(n) for n in windows])
    return common.md_table(["run", "rope", "model window", "corpus", "stride"] + [f"ppl @ {n}" for n in windows], rows)


def effective(run: dict, reference: dict | None) -> dict:
    """A RULER run's effective lengths: absolute (its own), relative against `reference` (read by
    `ruler_score.read_reference`) when given, else its own relative one (None when it had no --reference)."""
    own = run["summary"]["effective_length"]
    if reference is None:
        return {"absolute": own["absolute"]["length"], "relative": own["relative"]["length"],
                "relative_threshold": own["relative"]["threshold"], "reference": own["relative"].get("reference")}
    averages = {int(n): float(a) for n, a in run["summary"]["average"].items()}
    threshold = ruler_score.RELATIVE_SHARE * reference["base"]
    return {"absolute": own["absolute"]["length"], "relative": ruler_score.effective_length(averages, threshold),
            "relative_threshold": round(threshold, 2), "reference": reference["reference"]}


def ruler_table(runs: list[dict]) -> str:
    lengths = sorted({int(n) for r in runs for n in r["summary"]["average"]})
    rows = []
    for r in runs:
        avg, eff = r["summary"]["average"], r["effective"]
        rows.append([r["label"], r["rope"], r["window"], ",".join(r["tasks"]),
                     "/".join(map(str, sorted(set(r["samples_per_length"].values()))))]
                    + [f"{avg[str(n)]:.1f}" if str(n) in avg else "" for n in lengths]
                    + [eff["absolute"], _relative(eff)])
    return common.md_table(["run", "rope", "window", "tasks", "samples"] + [f"avg @ {n}" for n in lengths]
                           + [f"effective (≥ {ruler_score.ABSOLUTE})", "effective (relative)"], rows)


def _relative(eff: dict) -> str:
    return "—" if eff["relative"] is None else f"{eff['relative']} (≥ {eff['relative_threshold']})"


def by_model_table(runs: list[dict]) -> str:
    """One row per model (model and rope): passkey k_max and RULER's effective length, absolute / relative."""
    models: dict[tuple, dict] = {}
    for r in runs:
        if r["kind"] in ("passkey", "ruler"):
            models.setdefault((r["model"], r["rope"]), {"passkey": [], "ruler": []})[r["kind"]].append(r)
    labels = [common.label(model, rope) for model, rope in models]
    rows = [[label if labels.count(label) == 1 else f"{label} [{model}]",
             ", ".join(str(r["summary"]["k_max"]) for r in m["passkey"]) or "—",
             ", ".join(f"{r['effective']['absolute']} / {_relative(r['effective'])}" for r in m["ruler"]) or "—"]
            for label, ((model, _), m) in zip(labels, models.items())]
    return common.md_table(["model", "passkey k_max", f"RULER effective length (≥ {ruler_score.ABSOLUTE} / "
                                                     "relative)"], rows)


def summary(runs: list[dict]) -> dict:
    out = []
    for r in runs:
        item = {"label": r["label"], "kind": r["kind"], "source": r["source"], "model": r["model"], "rope": r["rope"],
                "window": r["window"], "allow_beyond_window": r.get("allow_beyond_window")}
        if r["kind"] == "passkey":
            item.update(k_max=r["summary"]["k_max"], per_length=r["summary"]["per_length"])
        elif r["kind"] == "ruler":
            item.update(tasks=r["tasks"], average=r["summary"]["average"], effective_length=r["effective"])
        else:
            item.update(corpus=r["corpus"], perplexity={str(w["window"]): w["perplexity"] for w in r["windows"]})
        out.append(item)
    return {"runs": out}


def compare(cfg: CompareConfig | str | None = None, **kwargs) -> dict:
    """Merge result folders into summary.md/summary.json and plots in --out; returns the summary."""
    cfg = as_config(CompareConfig, cfg, kwargs)
    check_out(cfg.out, cfg.force)
    runs = load_results(find_results(cfg.runs, exclude=cfg.out))
    passkeys = [r for r in runs if r["kind"] == "passkey"]
    ppls = [r for r in runs if r["kind"] == "perplexity"]
    rulers = [r for r in runs if r["kind"] == "ruler"]
    for r in rulers:  # a --reference that does not fit a run is refused here, before anything is written
        r["effective"] = effective(r, ruler_score.read_reference(cfg.reference, r["tasks"]) if cfg.reference else None)
    parts = ["# Eval summary\n", f"{len(runs)} runs: " + ", ".join(f"`{r['source']}`" for r in runs) + "\n"]
    if passkeys:
        parts += ["## Passkey retrieval (k_max: largest length with every length up to it ≥ 20% retrieved)\n",
                  passkey_table(passkeys)]
    if ppls:
        parts += ["## Sliding-window perplexity\n", perplexity_table(ppls)]
    if rulers:
        parts += ["## RULER (average score per length over the tasks; effective length: the largest length whose "
                  "average, and every shorter one's, is ≥ the threshold)\n", ruler_table(rulers),
                  "## Passkey and RULER per model\n", by_model_table(runs)]
    text = "\n".join(parts)
    result = summary(runs)
    from posinterp.evals import plots

    with atomic_dir(cfg.out, force=cfg.force) as tmp:
        if passkeys:
            plots.passkey_accuracy(passkeys, tmp / "passkey.png")
        if ppls:
            plots.perplexity_by_window(ppls, tmp / "perplexity.png")
        write_json(tmp / "summary.json", result)
        write_text(tmp / "summary.md", text)
    print(text)
    return result
