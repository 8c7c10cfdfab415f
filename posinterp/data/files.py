"""Text from the user's files: plain text, jsonl/json/parquet records, folders and globs, `save_to_disk` datasets.

Every reader names the file in its error (`reading`), and a `Document` is the unit every corpus yields.
"""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError, cause

SPLITS = ("train", "test", "all")


RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
FOLDER_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go",
                   ".java", ".js", ".ts", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".dat") + RECORD_SUFFIXES
"""The files a folder given with --data contributes (also as NAME.gz); a file named explicitly or by a glob
is read whatever its suffix."""


@dataclass(frozen=True)
class Document:
    name: str
    text: str


# -- files ------------------------------------------------------------------------------------------
@contextmanager
def reading(path: Path) -> Iterator[None]:
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


def file_kind(path: Path) -> str:
    """The suffix that says how to read a file (`a.jsonl.gz` → `.jsonl`)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def open_file(path: Path, mode: str = "r"):
    """A data file, decompressed when it ends in .gz; text mode is strict UTF-8."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, mode + "t" if mode == "r" else mode, encoding="utf-8" if mode == "r" else None)
    return open(path, mode, encoding="utf-8" if mode == "r" else None)


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a BOM dropped, line ends normalised); binary or non-UTF-8 files are refused."""
    with reading(path), open_file(path, "rb") as fh:
        text = fh.read().decode("utf-8-sig")
    if "\x00" in text:
        raise PosinterpError(f"{path}: binary data (NUL bytes), not text; leave it out of --data")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def records(path: Path, text_field: str) -> Iterator[tuple[str, dict]]:
    """(name, row) of each record of a .jsonl/.json/.parquet file (optionally .gz)."""
    kind = file_kind(path)
    if kind in (".jsonl", ".json"):
        with reading(path), open_file(path) as fh:
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

        with reading(path), open(path, "rb") as fh:
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


def saved_dataset(path: Path, split: str, text_field: str) -> Iterator[Document]:
    """A `save_to_disk` folder: a Dataset (split ignored) or a DatasetDict (the split must exist)."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as err:  # datasets and pyarrow raise many types for a damaged folder
        raise PosinterpError(f"{path}: not a readable datasets folder ({cause(err, '')}); re-save it with save_to_disk") from None
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
                      and file_kind(p) in FOLDER_SUFFIXES)
    if path.is_file():
        return [path]
    return [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]


def file_documents(f: Path, text_field: str) -> Iterator[Document]:
    if file_kind(f) in RECORD_SUFFIXES:
        for where, row in records(f, text_field):
            yield Document(where, _field(row, text_field, where))
    else:
        yield Document(str(f), read_text(f))
