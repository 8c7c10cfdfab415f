from __future__ import annotations

import pytest

from posinterp.atomic import atomic_dir, write_json
from posinterp.errors import PosinterpError


def test_atomic_dir_success_and_failure(tmp_path):
    with atomic_dir(tmp_path / "a") as tmp:
        (tmp / "f").write_text("1")
        assert not (tmp_path / "a").exists()
    assert (tmp_path / "a" / "f").read_text() == "1"
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "b") as tmp:
            (tmp / "f").write_text("1")
            raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_refuses_non_empty_unless_force(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").touch()
    with pytest.raises(PosinterpError, match="--force"):
        with atomic_dir(tmp_path / "a"):
            pass
    with atomic_dir(tmp_path / "a", force=True) as tmp:
        (tmp / "y").touch()
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["y"]


def test_write_json(tmp_path):
    write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").read_text().strip().startswith("{")
