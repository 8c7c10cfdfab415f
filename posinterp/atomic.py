"""Outputs appear whole or not at all: write into a temporary sibling, fsync, rename into place."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError


def check_kind(path: Path | str, flag: str, want: str, must_exist: bool = False) -> Path:
    """Refuse in one line a path of the wrong kind before any work: a file where a folder is wanted
    (`want="folder"`) or the other way round (`want="file"`), a path inside a file, or (with `must_exist`)
    a missing one. `flag` names it: `--out`, `--checkpoint-dir`, a recipe key."""
    path = Path(path).expanduser()
    if want == "folder" and path.exists() and not path.is_dir():
        raise PosinterpError(f"{flag} {path} is a file; give a folder")
    if want == "file" and path.is_dir():
        raise PosinterpError(f"{flag} {path} is a folder; give a file")
    if not path.exists():
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise PosinterpError(f"{flag} {path} is inside {above}, which is a file; give a path in a folder")
        if must_exist:
            raise PosinterpError(f"{flag} {path} does not exist")
    return path


def check_out(out: Path, force: bool, flag: str = "--out") -> None:
    """Refuse an output folder of the wrong kind, or an existing non-empty one unless forced (before any work)."""
    out = check_kind(out, flag, "folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PosinterpError(f"{flag} {out} exists and is not empty; choose another path or pass --force")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temporary folder into place, replacing `out` if it exists."""
    _fsync_tree(tmp)
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


@contextmanager
def atomic_dir(out: Path | str, force: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it becomes `out`, on error it vanishes."""
    out = Path(out)
    check_out(out, force, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def write_text(path: Path | str, text: str) -> None:
    """Write a file atomically (temporary sibling + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
