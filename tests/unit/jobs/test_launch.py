"""The line a site hands its warm job process: round trip, and a table of bad lines refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import JobError
from fedsec.jobs.launch import JobSpec, decode_spec


def test_round_trip() -> None:
    spec = JobSpec(Path("/k/jobs/j/job/app/custom/train.py"), ("--lr", "0.1"), {"FEDSEC_JOB_TOKEN": "t"})
    assert decode_spec(spec.encode()) == spec


def test_oversize_is_refused_before_it_is_written() -> None:
    spec = JobSpec(Path("/s.py"), ("x" * limits.MAX_WARM_SPEC_BYTES,), {})
    with pytest.raises(JobError, match="is over"):
        spec.encode()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"script": "/s.py", "args": [], "env": {}}', "not one line"),
        (b"[1]\n", "exactly script, args and env"),
        (b"{\n", "not JSON"),
        (b'{"script": "s.py", "args": [], "env": {}}\n', "absolute path"),
        (b'{"script": "/s.py", "args": [1], "env": {}}\n', "list of strings"),
        (b'{"script": "/s.py", "args": [], "env": {"A": 1}}\n', "map strings to strings"),
        (b'{"script": "/s.py", "args": [], "env": {}, "more": 1}\n', "exactly script, args and env"),
        (b"x" * (limits.MAX_WARM_SPEC_BYTES + 1) + b"\n", "not one line of at most"),
    ],
)
def test_bad_lines(line: bytes, message: str) -> None:
    with pytest.raises(JobError, match=message):
        decode_spec(line)
