"""fedsec.jobs.result: the last completed round's checkpoint becomes the result of a job that did not complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.jobs import result


def workspace(tmp_path: Path, completed: int, suffix: str = ".fsa") -> Path:
    ws = tmp_path / "workspace"
    (ws / "checkpoints").mkdir(parents=True)
    for number in range(completed + 1):  # the round after the last completed one was written but not recorded
        result.checkpoint(ws, number, suffix).write_bytes(f"model after round {number}".encode())
    return ws


@pytest.mark.parametrize("suffix", [".fsa", ".fsh"])
def test_the_last_completed_round_is_kept_plain_or_encrypted(tmp_path: Path, suffix: str) -> None:
    ws = workspace(tmp_path, 2, suffix)
    assert result.kept_model(ws, f"global_model{suffix}") is None
    entry = result.keep_last_checkpoint(ws, 2)
    assert entry == {"model": f"global_model{suffix}", "round": 1, "completed_rounds": 2}
    assert (ws / "result" / f"global_model{suffix}").read_bytes() == b"model after round 1"
    assert result.kept_model(ws, entry["model"]) == ws / "result" / entry["model"]
    assert [p.name for p in (ws / "result").iterdir()] == [f"global_model{suffix}"]  # no temporary file left
    assert not (ws / "progress.json").exists() and not (ws / "state.json").exists()  # the state is the parent's


def test_no_completed_round_keeps_nothing(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 0)
    assert result.keep_last_checkpoint(ws, 0) is None
    assert not (ws / "result").exists()


def test_a_missing_checkpoint_keeps_nothing(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 1)
    assert result.keep_last_checkpoint(ws, 5) is None


@pytest.mark.parametrize("name", ["../job.zip", "global_model.fsa/..", "state.json", "global_model.pt"])
def test_a_name_this_module_did_not_make_is_never_a_kept_model(tmp_path: Path, name: str) -> None:
    ws = workspace(tmp_path, 1)
    result.keep_last_checkpoint(ws, 1)
    assert result.kept_model(ws, name) is None
