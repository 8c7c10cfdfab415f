"""Long-document summarization pairs: (document, summary) read from files or the built-in sets.

Sources: a jsonl/json/parquet file, a folder or glob of them (files named by split, `train*`/`test*`/
`validation*`, are chosen by `split`), a `datasets.save_to_disk` folder, the built-in set `aclsum` (250 ACL
papers, body → abstract; `posinterp.data.aclsum`), or the built-in smoke set `pydoc-summaries` (see
`pydoc_summaries`). Field names default to GovReport's (`report`, `summary`).
The prompt around them is the paper's (`PROMPT`); `posinterp.data.sft` turns pairs into tokens.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from posinterp.data import aclsum
from posinterp.errors import PosinterpError

PROMPT_HEAD = "Read the following article and then summarize it.\n\n"
PROMPT_TAIL = "\n\nNow summarize the above article.\nSummary:"
PROMPT = PROMPT_HEAD + "{document}" + PROMPT_TAIL
"""The paper's summarization prompt (arXiv 2306.15595, GovReport); `{document}` is the input."""
SUMMARY_LEAD = " "
"""The summary follows "Summary:" after one space, as a writer would continue the line."""
SPLITS = ("train", "validation", "test", "all")
SPLIT_FILE_PREFIXES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}

BUILTIN_NAME = "pydoc-summaries"
BUILTIN_SETS = (aclsum.NAME, BUILTIN_NAME)
"""The built-in sets: `--split` train, test or all (they have no validation split)."""
PYDOC_MIN_BODY_CHARS = 3000
"""A topic is kept when its body (the topic without its lead) has at least this many characters."""
PYDOC_MIN_SUMMARY_WORDS = 12
"""…and its lead has at least this many words."""
PYDOC_LEAD_PARAGRAPHS = 3
"""At most this many opening prose paragraphs form the reference summary."""
PYDOC_TEST_EVERY = 4
"""A topic is in the test split when crc32(topic name) % PYDOC_TEST_EVERY == 0 (stable across versions)."""
_NOTE = re.compile(r"^(New in version|Added in version|Changed in version|Deprecated|\*\*Source code:\*\*)")
_UNDERLINE = re.compile(r"^([=*\-~^\"'`#+])\1{2,}\s*$")


@dataclass(frozen=True)
class Pair:
    """One summarization example: where it came from, the document, the reference summary."""

    name: str
    document: str
    summary: str


def _unwrap(paragraph: str) -> str:
    """One line of single spaces; a word hyphenated across lines ("non-\\nnumeric") is rejoined."""
    return " ".join(re.sub(r"-\n(?=\w)", "-", paragraph).split())


def _is_prose(paragraph: str) -> bool:
    """A plain paragraph of sentences: not indented (code, grammar), not a heading, list or note."""
    lines = paragraph.split("\n")
    if not paragraph.strip() or paragraph[0].isspace() or any(_UNDERLINE.match(x) for x in lines):
        return False
    if re.match(r"^(\*|-|\d+\.)\s", paragraph) or _NOTE.match(paragraph):
        return False
    return len(paragraph.split()) >= 5 and paragraph.rstrip().endswith((".", ":"))


def split_topic(text: str) -> tuple[str, str, str] | None:
    """A pydoc topic → (title, lead, body without the lead), or None when it has no prose lead.

    The lead is the run of prose paragraphs right after the title (version notes and "Source
    code" lines skipped), at most PYDOC_LEAD_PARAGRAPHS of them: the authors' own overview of
    the section, which the rest of the section develops. The body keeps the title and every
    other paragraph in order, so the lead's sentences are not in the document to copy.
    """
    paragraphs = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip())
    head = paragraphs[0].split("\n")
    if len(head) < 2 or not _UNDERLINE.match(head[1]):
        return None
    title = head[0].strip()
    i = 1
    while i < len(paragraphs) and _NOTE.match(paragraphs[i].strip()):
        i += 1
    start = i
    while i < len(paragraphs) and i - start < PYDOC_LEAD_PARAGRAPHS and _is_prose(paragraphs[i]):
        i += 1
    lead = " ".join(_unwrap(p) for p in paragraphs[start:i])
    if not lead:
        return None
    body = "\n\n".join([paragraphs[0], *paragraphs[1:start], *paragraphs[i:]])
    return title, lead, body


def pydoc_summaries(split: str = "test") -> Iterator[Pair]:
    """The built-in SMOKE set (not a benchmark): Python's documentation topics, lead → summary.

    Each topic of `pydoc_data.topics` (shipped with every Python) whose lead has at least
    PYDOC_MIN_SUMMARY_WORDS words and whose remaining body has at least PYDOC_MIN_BODY_CHARS
    characters becomes one pair: document = the topic without its lead, reference summary = the
    lead (`split_topic`). Deterministic for a given Python version (the topics differ slightly
    between versions; results name the version). Split by a hash of the topic name, so a topic
    stays on its side when other topics come or go. It checks that the wiring runs end to end on
    real long text; its ROUGE says little about summarization quality.
    """
    from pydoc_data.topics import topics

    for name in sorted(topics):
        parts = split_topic(topics[name])
        if parts is None:
            continue
        _, lead, body = parts
        if len(lead.split()) < PYDOC_MIN_SUMMARY_WORDS or len(body) < PYDOC_MIN_BODY_CHARS:
            continue
        in_test = zlib.crc32(name.encode()) % PYDOC_TEST_EVERY == 0
        if split == "all" or (split == "test") == in_test:
            yield Pair(f"{BUILTIN_NAME}/{name}", body, lead)


def describe_pairs(data: str, split: str) -> str:
    """A name for results; the built-in set says what it is."""
    if str(data) == BUILTIN_NAME:
        return (f"{BUILTIN_NAME}:{split} (SMOKE SET, not a benchmark: Python "
                f"{sys.version_info.major}.{sys.version_info.minor} pydoc_data topics, lead paragraph as summary)")
    if str(data) == aclsum.NAME:
        return aclsum.describe(split)
    return f"{data}:{split}"


def _split_files(files: list[Path], split: str) -> list[Path]:
    """Files named by split (`train-0000.parquet`, `test.jsonl`) are chosen by `split`."""
    if split == "all":
        return files

    def split_of(path: Path) -> str | None:
        stem = path.name.lower()
        for name, prefixes in SPLIT_FILE_PREFIXES.items():
            if any(re.match(rf"^{p}([._\-]|$)", stem) for p in prefixes):
                return name
        return None

    named = {f: split_of(f) for f in files}
    if not any(named.values()):
        return files
    return [f for f, s in named.items() if s == split]


def _rows(spec: str, split: str) -> Iterator[tuple[str, dict]]:
    from posinterp.data.files import expand, is_saved_dataset, records

    path = Path(spec).expanduser()
    if is_saved_dataset(path):
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise PosinterpError(f"--data {spec}: no split '{split}' (splits: {', '.join(ds)}); set --split")
            ds = ds[split]
        for i, row in enumerate(ds):
            yield f"{path.name}:{i}", row
        return
    files = [f for f in expand(spec) if f.suffix.lower() in (".jsonl", ".json", ".parquet")]
    if not files:
        raise PosinterpError(f"--data {spec!r} matches no .jsonl/.json/.parquet file or datasets folder; "
                             f"give one, or a built-in set: --data {aclsum.NAME}, or the smoke set --data {BUILTIN_NAME}")
    if path.is_dir():
        files = _split_files(files, split)
        if not files:
            raise PosinterpError(f"--data {spec}: no file for split '{split}' (files are named by split); set --split")
    for f in files:
        yield from records(f, "")


def _text(row: dict, field: str, flag: str, where: str) -> str:
    if field not in row:
        raise PosinterpError(f"{where}: no field '{field}' (fields: {', '.join(map(str, row))}); "
                             f"set {flag} to the one holding it")
    value = row[field]
    return "" if value is None else str(value)


def iter_pairs(data: str, *, split: str = "train", document_field: str = "report",
               summary_field: str = "summary") -> Iterator[Pair]:
    """Stream the pairs of a source; a missing field or an empty text stops with one line."""
    if split not in SPLITS:
        raise PosinterpError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if str(data) in BUILTIN_SETS and split == "validation":
        raise PosinterpError(f"--data {data} --split validation: the built-in sets have train and test only; "
                             "choose --split train, test or all")
    if str(data) == BUILTIN_NAME:
        yield from pydoc_summaries(split)
        return
    if str(data) == aclsum.NAME:
        for paper in aclsum.papers(split):
            yield Pair(f"{aclsum.NAME}/{paper.id}", paper.document, paper.abstract)
        return
    for where, row in _rows(str(data), split):
        doc = _text(row, document_field, "--document-field", where)
        summary = _text(row, summary_field, "--summary-field", where)
        if not doc.strip():
            raise PosinterpError(f"{where}: the document (field '{document_field}') is empty; "
                                 "remove the record or set --document-field")
        if not summary.strip():
            raise PosinterpError(f"{where}: the summary (field '{summary_field}') is empty; "
                                 "remove the record or set --summary-field")
        yield Pair(where, doc, summary)


def load_pairs(data: str, *, split: str = "train", document_field: str = "report", summary_field: str = "summary",
               limit: int | None = None) -> list[Pair]:
    """All (or the first `limit`) pairs; every record is checked, and an empty set is an error."""
    if limit is not None and int(limit) < 1:
        raise PosinterpError(f"--limit {limit} must be at least 1 document")
    pairs = []
    for pair in iter_pairs(data, split=split, document_field=document_field, summary_field=summary_field):
        pairs.append(pair)
        if limit is not None and len(pairs) >= int(limit):
            break
    if not pairs:
        raise PosinterpError(f"--data {data!r} (split {split}) has no (document, summary) pairs")
    return pairs
