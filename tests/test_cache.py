"""The cache folder: $POSINTERP_CACHE, or ~/.cache/posinterp; a file there is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from posinterp.cache import cache_dir
from posinterp.errors import PosinterpError


def test_the_variable_chooses_the_folder_and_empty_means_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"  # need not exist yet: a verb makes it when it writes
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("POSINTERP_CACHE", "")
    assert cache_dir() == tmp_path / ".cache" / "posinterp"
    monkeypatch.delenv("POSINTERP_CACHE")
    assert cache_dir() == tmp_path / ".cache" / "posinterp"


def test_a_file_or_a_path_inside_a_file_is_refused_naming_the_variable(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("not a folder")
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "f"))
    with pytest.raises(PosinterpError, match=rf"^POSINTERP_CACHE {tmp_path / 'f'} is a file; give a folder$"):
        cache_dir()
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "f" / "sub"))
    with pytest.raises(PosinterpError, match=r"^POSINTERP_CACHE .*/f/sub is inside .*/f, which is a file"):
        cache_dir()
    monkeypatch.delenv("POSINTERP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache").write_text("a file where the default cache goes")
    with pytest.raises(PosinterpError, match=r"^the default cache \(set POSINTERP_CACHE for another\) "):
        cache_dir()


def test_fetch_refuses_it_before_any_download(tmp_path, monkeypatch, capsys):
    from posinterp.__main__ import main
    from posinterp.model import fetch

    monkeypatch.setattr(fetch, "download", lambda *a, **k: pytest.fail("downloaded"))
    (tmp_path / "f").write_text("not a folder")
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "f"))
    assert main(["fetch", "qwen2.5-coder-1.5b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"posinterp: error: POSINTERP_CACHE {tmp_path / 'f'} is a file; give a folder"
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["f"]
