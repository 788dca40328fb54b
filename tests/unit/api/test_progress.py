"""The one-line status of a job that RoundPrinter, monitor_job's callers and the shell's wait_job print."""

from __future__ import annotations

import pytest

from fedsec.api.progress import status_line
from fedsec.api.session import JobInfo


def _info(status: str, current_round: int, num_rounds: int = 5) -> JobInfo:
    return JobInfo(
        job_id="j1", name="demo", status=status, submitter="a", submitter_org="o", submit_time=0.0,
        start_time=None, end_time=None, reason="", current_round=current_round, num_rounds=num_rounds,
        meta={}, progress={},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "current_round", "line"),
    [
        ("submitted", 0, "job j1: submitted, waiting to be started"),
        ("running", 0, "job j1: running, round 1/5"),
        ("running", 4, "job j1: running, round 5/5"),
        ("running", 5, "job j1: running, evaluating the final model"),  # never "round 6/5"
        ("finished:completed", 5, "job j1: finished:completed"),
    ],
)
def test_status_line(status: str, current_round: int, line: str) -> None:
    assert status_line(_info(status, current_round)) == line


def test_round_printer_prints_each_refusal_once_as_it_happens() -> None:
    import io

    from fedsec.api.progress import RoundPrinter

    out, status = io.StringIO(), io.StringIO()
    printer = RoundPrinter(out, status)
    refused = {"round": 0, "site": "site-2", "reason": "tensor 'w' has shape (9, 1), the model has (8, 1)"}
    running = _info("running", 0)
    printer(JobInfo(**{**running.__dict__, "progress": {"refused": [refused]}}))
    printer(JobInfo(**{**running.__dict__, "progress": {"refused": [refused], "rounds": []}}))
    lines = status.getvalue().splitlines()
    line = "site-2 round 0: update refused: tensor 'w' has shape (9, 1), the model has (8, 1)"
    assert lines.count(line) == 1
    assert out.getvalue() == ""  # stdout holds only the rounds
