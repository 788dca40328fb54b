"""fedsec._fs.atomic_file: the one way fedsec replaces a file (write_atomic, join_atomic, model and sum files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec import _fs


def test_a_finished_block_replaces_the_file_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "model.fsa"
    with _fs.atomic_file(path) as f:
        f.write(b"new")
        assert not path.exists()  # nothing at path until the block ends
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.fsa"]


def test_an_error_in_the_block_leaves_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "model.fsa"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk"), _fs.atomic_file(path) as f:
        f.write(b"half")
        raise RuntimeError("disk went away")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fsa"]


def test_join_atomic_concatenates_bytes_and_files(tmp_path: Path) -> None:
    part = tmp_path / "part"
    part.write_bytes(b"-middle-")
    _fs.join_atomic(tmp_path / "out", [b"head", part, b"tail"])
    assert (tmp_path / "out").read_bytes() == b"head-middle-tail"
