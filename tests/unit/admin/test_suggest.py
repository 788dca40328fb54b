"""'Did you mean': the closest command name or job id."""

from __future__ import annotations

import pytest

from fedsec.admin.commands import COMMANDS
from fedsec.admin.suggest import closest, closest_job

IDS = ["3f2a9c0e-1111-4a4a-9b9b-000000000001", "3f2b0000-2222-4b4b-8c8c-000000000002", "a0c1d2e3-0000-4000-8000-0"]


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("lst_jobs", "list_jobs"),
        ("list_job", "list_jobs"),
        ("submitjob", "submit_job"),
        ("show_stat", "show_stats"),
        ("chek_status", "check_status"),
        ("abrot_job", "abort_job"),
        ("frobnicate", None),
        ("", None),
    ],
)
def test_closest_command(typed: str, meant: str | None) -> None:
    assert closest(typed, COMMANDS) == meant


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("3f2a9c1e", IDS[0]),  # one character wrong
        ("3F2A9C1E", IDS[0]),  # ids are lower case
        ("3f2b0001-2222", IDS[1]),
        ("a0c1d2f3", IDS[2]),
        ("zzzzzzzz", None),
        ("", None),
    ],
)
def test_closest_job(typed: str, meant: str | None) -> None:
    assert closest_job(typed, IDS) == meant


def test_closest_job_with_no_jobs() -> None:
    assert closest_job("3f2a9c1e", []) is None
