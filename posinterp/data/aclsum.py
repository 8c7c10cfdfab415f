"""The built-in summarization set `aclsum`: 250 ACL papers (full text → abstract), from the PyPI wheel `aclsum==0.1.2`.

The wheel (MIT, 5.2 MB) ships each paper as an S2ORC parse, `aclsum/dataset/paper_jsons/<Anthology id>.json`.
`make setup` fetches it once with `pip download --no-deps` (a registry, not a hub) into the cache, checking
its pinned size and sha256 (`fetch`); it is read straight from the zip, never installed, and nothing is
downloaded at run time: a missing or damaged wheel is refused in one line naming the command that fetches it.

One pair per paper (`paper`): document = the title, then the body's paragraphs in order, each section's
heading (with its number) on its own line before its first paragraph; summary = the abstract. The abstract
never enters the document: a body paragraph headed "Abstract", or whose text is the abstract or a piece of
it (PIECE_MIN_WORDS words or more; S2ORC parses sometimes repeat it in the body), is dropped. Back matter
(acknowledgements, appendices), figures and references are left out.

Split: a paper is in the test split when the SHA-1 of its Anthology id falls in the first TEST_SHARE of
hashes (52 of the 250 papers; train 198), so it never depends on file order, and a paper keeps its side
whatever other papers come or go. (ACLSum's own train/val/test files are for its aspect summaries, not used.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from posinterp.data.files import reading
from posinterp.data.sources import corpus_cache
from posinterp.errors import PosinterpError

NAME = "aclsum"
REQUIREMENT = "aclsum==0.1.2"
WHEEL = "aclsum-0.1.2-py3-none-any.whl"
WHEEL_SIZE = 5_152_165
WHEEL_SHA256 = "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213"
"""The pin: `pip download --no-deps aclsum==0.1.2` from PyPI, measured once; a different file is refused."""
PAPERS = 250
"""Papers in the pinned wheel."""
TEST_SHARE = 0.2
"""A paper is held out (split test) when int(SHA-1(Anthology id)[:8], 16) < TEST_SHARE × 16⁸."""
TEST_PAPERS = 52
"""Papers the pinned wheel puts in the test split (the other 198 are train)."""
ENV = "POSINTERP_ACLSUM"
"""Names the user's own copy instead of the cache: a wheel/zip, or a folder holding `paper_jsons/*.json`
(not pin-checked: a stand-in, e.g. the tests' tiny wheel)."""
PIECE_MIN_WORDS = 8
"""A body paragraph of at least this many words found verbatim inside the abstract is dropped as a repeat of it
(shorter ones, like a lone ")" or "where" that a parse split off an equation, are kept)."""
MEMBERS = re.compile(r"(^|/)paper_jsons/([^/]+)\.json$")
FETCH = 'python -c "from posinterp.data.aclsum import fetch; fetch()"'


@dataclass(frozen=True)
class Paper:
    """One paper: its ACL Anthology id, title, the document built from its body, and its abstract."""

    id: str
    title: str
    document: str
    abstract: str


# -- the wheel ------------------------------------------------------------------------------------
def cached_wheel() -> Path:
    return corpus_cache() / WHEEL


def check_pin(path: Path) -> None:
    """Refuse, in one line, a wheel whose size or sha256 is not the pinned one (truncated, damaged, replaced)."""
    size = path.stat().st_size
    if size != WHEEL_SIZE:
        raise PosinterpError(f"{path}: {size:,} bytes, not the pinned {WHEEL_SIZE:,} of {REQUIREMENT} (a damaged or "
                             f"partial download); delete it and fetch it again: {FETCH}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise PosinterpError(f"{path}: sha256 {digest[:16]}…, not the pinned {WHEEL_SHA256[:16]}… of {REQUIREMENT}; "
                             f"delete it and fetch it again: {FETCH}")


def source() -> Path:
    """What `papers` reads: $POSINTERP_ACLSUM, or the cached wheel (pin-checked); never fetched here."""
    env = os.environ.get(ENV)
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise PosinterpError(f"{ENV}={env} does not exist; point it at {WHEEL} or a folder of paper_jsons, "
                                 "or unset it to use the cache")
        return path
    path = cached_wheel()
    if not path.is_file():
        raise PosinterpError(f"the aclsum papers are not fetched ({path} is missing); run `make setup` or {FETCH}")
    check_pin(path)
    return path


def fetch() -> Path:
    """Fetch the pinned wheel into the cache once (`pip download --no-deps`), check it, return its path.

    A no-op when the cached wheel passes the pin; the download lands in a temporary folder beside the
    cache and is moved into place only after its size and sha256 check, so nothing partial is left.
    """
    target = cached_wheel()
    if target.is_file():
        check_pin(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".aclsum-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
               REQUIREMENT, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL
        if result.returncode != 0 or not got.is_file():
            raise PosinterpError(f"could not fetch {REQUIREMENT} with pip download ({result.stderr.strip()[-200:]}); "
                                 f"check the network to PyPI, or set {ENV} to a copy of {WHEEL}")
        check_pin(got)
        os.replace(got, target)
    return target


def _raw(path: Path) -> Iterator[tuple[str, bytes]]:
    """(Anthology id, JSON bytes) of every paper in a wheel/zip or a folder, in the order stored."""
    if path.is_dir():
        for f in path.rglob("*.json"):
            if MEMBERS.search(f.relative_to(path).as_posix()) or f.parent == path:
                with reading(f):
                    data = f.read_bytes()
                yield f.stem, data
        return
    try:
        with zipfile.ZipFile(path) as whl:
            for name in whl.namelist():
                match = MEMBERS.search(name)
                if match:
                    yield match.group(2), whl.read(name)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        fix = f"delete it and fetch it again: {FETCH}" if path == cached_wheel() else f"replace it, or unset {ENV}"
        raise PosinterpError(f"{path}: a damaged zip ({err}); {fix}") from None


# -- one paper --------------------------------------------------------------------------------------
def _flat(text: str) -> str:
    return " ".join(str(text or "").split())


def paper(paper_id: str, data: dict) -> Paper:
    """An S2ORC parse → Paper: title, headed body paragraphs without the abstract, and the abstract."""
    where = f"aclsum paper {paper_id}"
    try:
        title, abstract = _flat(data["title"]), str(data["abstract"] or "").strip()
        body = data["pdf_parse"]["body_text"]
        parsed_abstract = [_flat(p["text"]) for p in data["pdf_parse"].get("abstract") or []]
        paragraphs = [(str(p.get("sec_num") or "").strip(), _flat(p.get("section")), _flat(p["text"])) for p in body]
    except (KeyError, TypeError, AttributeError) as err:
        raise PosinterpError(f"{where}: not an S2ORC parse (no {err}); use the pinned {WHEEL}") from None
    if not title or not abstract:
        raise PosinterpError(f"{where}: no {'title' if not title else 'abstract'}; use the pinned {WHEEL}")
    flat_abstract = _flat(abstract)
    lines, heading = [title], None
    for number, section, text in paragraphs:
        repeat = text in parsed_abstract or (len(text.split()) >= PIECE_MIN_WORDS and text in flat_abstract)
        if not text or section.lower() == "abstract" or repeat:
            continue  # the abstract, or a piece of it, repeated in the body
        lines.append("")
        if (number, section) != heading:  # a new section: its heading on its own line (none for an unnamed one)
            heading = (number, section)
            if section:
                lines.append(f"{number} {section}" if number else section)
        lines.append(text)
    if len(lines) == 1:
        raise PosinterpError(f"{where}: no body text besides the abstract; use the pinned {WHEEL}")
    return Paper(paper_id, title, "\n".join(lines), abstract)


def held_out(paper_id: str) -> bool:
    """The fixed test split: the SHA-1 of the Anthology id (e.g. `P01-1040`) falls in the first TEST_SHARE."""
    return int(hashlib.sha1(paper_id.encode()).hexdigest()[:8], 16) < TEST_SHARE * 16**8


def papers(split: str = "test") -> Iterator[Paper]:
    """The papers of a split (`train`, `test` or `all`), sorted by Anthology id."""
    if split not in ("train", "test", "all"):
        raise PosinterpError(f"--split {split!r}: aclsum has train ({PAPERS - TEST_PAPERS} papers) and test "
                             f"({TEST_PAPERS}) only; choose train, test or all")
    path = source()
    chosen = {pid: raw for pid, raw in _raw(path) if split == "all" or (split == "test") == held_out(pid)}
    if not chosen:
        raise PosinterpError(f"{path}: no paper_jsons/*.json papers in split {split}; use the pinned {WHEEL}")
    for pid in sorted(chosen):
        try:
            data = json.loads(chosen[pid])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PosinterpError(f"{path}: paper {pid} is not valid JSON ({err}); use the pinned {WHEEL}") from None
        yield paper(pid, data)


def describe(split: str) -> str:
    """A name for results: the set, its split and origin (a stand-in named by $POSINTERP_ACLSUM says so)."""
    env = os.environ.get(ENV)
    if env:
        return f"{NAME}:{split} (a stand-in from {ENV}={env}, not the pinned {REQUIREMENT})"
    count = {"train": PAPERS - TEST_PAPERS, "test": TEST_PAPERS}.get(split, PAPERS)
    return (f"{NAME}:{split} ({count} of {PAPERS} ACL papers, full text → abstract; PyPI {REQUIREMENT}, MIT; "
            "test held out by SHA-1 of the Anthology id)")
