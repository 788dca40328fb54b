"""fedsec.jobs.result: the last completed round's checkpoint becomes the result of a job that did not complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsec.errors import JobError
from fedsec.jobs import result


def workspace(tmp_path: Path, completed: int, suffix: str = ".fsa") -> Path:
    ws = tmp_path / "workspace"
    (ws / "checkpoints").mkdir(parents=True)
    for number in range(completed + 1):  # the round after the last completed one was written but not recorded
        result.checkpoint(ws, number, suffix).write_bytes(f"model after round {number}".encode())
    (ws / "state.json").write_text(json.dumps({"completed_rounds": completed}))
    (ws / "progress.json").write_text(json.dumps({"rounds": [{"round": i} for i in range(completed)]}))
    return ws


@pytest.mark.parametrize("suffix", [".fsa", ".fsh"])
def test_the_last_completed_round_is_kept_plain_or_encrypted(tmp_path: Path, suffix: str) -> None:
    ws = workspace(tmp_path, 2, suffix)
    assert result.kept(ws) is None
    entry = result.keep_last_checkpoint(ws)
    assert entry == {"model": f"global_model{suffix}", "round": 1, "completed_rounds": 2}
    assert (ws / "result" / f"global_model{suffix}").read_bytes() == b"model after round 1"
    progress = json.loads((ws / "progress.json").read_text())
    assert progress["result"] == entry and len(progress["rounds"]) == 2
    assert result.kept(ws) == entry
    assert [p.name for p in (ws / "result").iterdir()] == [f"global_model{suffix}"]  # no temporary file left


def test_no_completed_round_keeps_nothing(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 0)
    assert result.keep_last_checkpoint(ws) is None
    assert not (ws / "result").exists()


def test_a_result_entry_whose_model_is_missing_is_not_kept(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 1)
    entry = result.keep_last_checkpoint(ws)
    assert entry is not None
    (ws / "result" / entry["model"]).unlink()
    assert result.kept(ws) is None


@pytest.mark.parametrize("state", ['{"completed_rounds": -1}', "[]", "{", '{"completed_rounds": true}'])
def test_a_malformed_state_is_a_job_error(tmp_path: Path, state: str) -> None:
    ws = workspace(tmp_path, 1)
    (ws / "state.json").write_text(state)
    with pytest.raises(JobError, match="workspace/state.json"):
        result.keep_last_checkpoint(ws)
